"""The fleet's refusals: a code a program can branch on and a message a person can act on."""

from __future__ import annotations

from typing import Literal

from shared.errors import EdgefleetError

ErrorCode = Literal[
    "invalid",  # the request or the file does not fit: the message says what and where
    "unknown_command",
    "not_found",  # no such resource, flow, version or upload
    "conflict",  # a name already used by another kind
    "archived",  # archived resources may not be pinned by a new flow version
    "in_use",  # pinned by a flow version: archive instead of delete
    "digest_mismatch",  # the uploaded bytes are not the ones declared
    "size_mismatch",
    "invalid_model",  # not ONNX, truncated, corrupt, or onnxruntime will not load it
    "invalid_script",  # does not compile or defines neither preprocess nor postprocess
    "does_not_fit",  # a flow the node's inference would refuse for this model
    "local_path",  # a flow names a local file: push it to the library first
    "storage",  # S3 refused or is unreachable
    "not_allowed",  # a site asked for a blob none of its desired states names
    "no_nodes",  # a deployment's target matches no node
    "own_site",  # a deployment names the fleet's own site id (fleet.yaml `site`)
    "no_signing_key",  # deploy needs signing_key in fleet.yaml
    "too_many_sessions",  # the node has as many debug sessions open as the fleet allows
    "too_long",  # a debug session longer than debug.max_seconds
    "too_fast",  # a debug session faster than debug.max_rate_hz
    "bad_filter",  # a debug session's topic filter the agent may not look at
    "publish_failed",  # the broker refused a desired state (it is stored; restart republishes)
    "internal",  # a bug: the fleet's log has the traceback
]

CODES: tuple[str, ...] = ErrorCode.__args__  # type: ignore[attr-defined]


class FleetError(EdgefleetError):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message


class FleetUnreachable(FleetError):
    """The fleet's broker cannot be reached, or the fleet did not answer in time."""

    def __init__(self, message: str) -> None:
        super().__init__("internal", message)
