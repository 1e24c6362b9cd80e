"""The exception tree every edgefleet service raises from.

Each message says what was expected and what came, so a log line is enough to act on.
"""

from __future__ import annotations


class EdgefleetError(Exception):
    """Base of every error edgefleet raises on purpose."""


class ConfigError(EdgefleetError):
    """A configuration file or value is invalid; the message names the file and the key."""


class ProtocolError(EdgefleetError):
    """A device or broker broke the protocol, refused us, or did not answer."""


class Refused(EdgefleetError):
    """A well-formed request the service cannot carry out (no such point, the device said no);
    the answer says why."""


class PayloadError(EdgefleetError):
    """A message could not be decoded or does not fit its schema."""


class ModelError(EdgefleetError):
    """A model file is unreadable or does not fit the flow it is meant for."""


class TopicError(EdgefleetError):
    """A topic or an id inside a topic is malformed."""
