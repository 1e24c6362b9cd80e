"""The one module that builds and parses edgefleet topics (the README's "Topics" table).

No other code writes topic strings by hand: services ask a `Topics` for them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from shared.errors import TopicError

DEFAULT_PREFIX = "ef"

# Printable, no MQTT wildcards, no level separator, no leading '$' (reserved by brokers).
_ID_RE = re.compile(r"^[^\x00-\x1f\x7f+#/$][^\x00-\x1f\x7f+#/]*$")
MAX_ID_LENGTH = 128


class Kind(StrEnum):
    """The topic kinds under `{prefix}/{site}/`."""

    RAW = "raw"
    SAMPLES = "samples"
    RESULTS = "results"
    SHADOW = "shadow"
    EVENTS = "events"
    CMD = "cmd"
    STATUS = "status"
    CONFIG = "config"
    ERRORS = "errors"
    DESIRED = "desired"
    REPORTED = "reported"
    REPLY = "reply"
    BRIDGE = "bridge"


# What the last level names, for error messages.
_ENTITY = {
    Kind.RAW: "source",
    Kind.CMD: "source",
    Kind.SAMPLES: "flow",
    Kind.RESULTS: "flow",
    Kind.SHADOW: "flow",
    Kind.EVENTS: "flow",
}

# Kinds that name no entity after the kind.
_SITE_LEVEL = {Kind.DESIRED, Kind.REPORTED, Kind.BRIDGE}
FLEET_SITE = "fleet"  # `{prefix}/fleet/commands` is the fleet service's own topic

# Debug sessions (docs/debug.md) live under `{prefix}/{site}/debug/`: `session/{id}` (the
# fleet's signed request, retained, bridged in), `state/{id}` and `data/{id}/{kind}/{name}`
# (the agent's, bridged out). Not a `Kind`: these topics have more levels than the rest.
DEBUG = "debug"
# What a debug session may look at: the data plane and the services' own reports; never the
# debug tree itself (a session would capture its own output), desired states or replies.
DEBUG_KINDS = frozenset(
    {
        Kind.RAW,
        Kind.SAMPLES,
        Kind.RESULTS,
        Kind.SHADOW,
        Kind.EVENTS,
        Kind.CMD,
        Kind.STATUS,
        Kind.CONFIG,
        Kind.ERRORS,
    }
)


def validate_id(value: str, what: str = "id") -> str:
    """Return `value` if it can be one topic level; raise `TopicError` saying why not."""
    if not isinstance(value, str) or not value:
        raise TopicError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > MAX_ID_LENGTH:
        raise TopicError(f"{what} must be at most {MAX_ID_LENGTH} characters, got {len(value)}")
    if not _ID_RE.match(value):
        raise TopicError(
            f"{what} {value!r} may not contain '+', '#', '/', control characters or start with '$'"
        )
    return value


@dataclass(frozen=True)
class ParsedTopic:
    prefix: str
    site: str
    kind: Kind
    name: str | None  # source, flow or instance; None for site-level kinds


@dataclass(frozen=True)
class Topics:
    """Builds every topic of one site. `Topics("plant1").raw("plc1")` → `ef/plant1/raw/plc1`."""

    site: str
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        validate_id(self.prefix, "prefix")
        validate_id(self.site, "site")
        if self.site == FLEET_SITE:
            raise TopicError(f"site may not be named {FLEET_SITE!r}: the fleet service owns it")

    def _named(self, kind: Kind, name: str) -> str:
        validate_id(name, _ENTITY.get(kind, "instance"))
        return f"{self.prefix}/{self.site}/{kind.value}/{name}"

    def raw(self, source: str) -> str:
        return self._named(Kind.RAW, source)

    def samples(self, flow: str) -> str:
        return self._named(Kind.SAMPLES, flow)

    def results(self, flow: str) -> str:
        return self._named(Kind.RESULTS, flow)

    def shadow(self, flow: str) -> str:
        return self._named(Kind.SHADOW, flow)

    def events(self, flow: str) -> str:
        return self._named(Kind.EVENTS, flow)

    def cmd(self, source: str) -> str:
        return self._named(Kind.CMD, source)

    def status(self, instance: str) -> str:
        return self._named(Kind.STATUS, instance)

    def config(self, instance: str) -> str:
        return self._named(Kind.CONFIG, instance)

    def errors(self, instance: str) -> str:
        return self._named(Kind.ERRORS, instance)

    def desired(self) -> str:
        return f"{self.prefix}/{self.site}/{Kind.DESIRED.value}"

    def reported(self) -> str:
        return f"{self.prefix}/{self.site}/{Kind.REPORTED.value}"

    def bridge(self) -> str:
        """Retained, written by the site broker's bridge on the cloud broker (mosquitto's bridge
        notification, not JSON): `1` once connected, `0` as its last will. Outside `status/+`,
        whose consumers expect a JSON status; never bridged (the bridge writes it remotely)."""
        return f"{self.prefix}/{self.site}/{Kind.BRIDGE.value}"

    def reply(self, instance: str) -> str:
        """Where `instance` receives responses to its requests (the MQTT v5 response topic)."""
        return self._named(Kind.REPLY, instance)

    def all_of(self, kind: Kind) -> str:
        """Subscription filter for every entity of one kind on this site."""
        if kind in _SITE_LEVEL:
            return f"{self.prefix}/{self.site}/{kind.value}"
        return f"{self.prefix}/{self.site}/{kind.value}/+"

    def everything(self) -> str:
        return f"{self.prefix}/{self.site}/#"

    # ------------------------------------------------------------------ debug sessions

    def _debug(self, part: str, session: str) -> str:
        validate_id(session, "session")
        return f"{self.prefix}/{self.site}/{DEBUG}/{part}/{session}"

    def debug_session(self, session: str) -> str:
        """Retained, fleet → agent: the session's signed request (empty: closed)."""
        return self._debug("session", session)

    def debug_sessions(self) -> str:
        """Subscription filter for every session request of this site."""
        return f"{self.prefix}/{self.site}/{DEBUG}/session/+"

    def debug_state(self, session: str) -> str:
        """Agent → fleet and watchers: the session opened, was refused, closed or expired."""
        return self._debug("state", session)

    def debug_data(self, session: str, topic: str) -> str:
        """Agent → watchers: one message of `topic` (a topic of this site), decimated:
        `{prefix}/{site}/debug/data/{session}/{kind}/{name}`."""
        head = f"{self.prefix}/{self.site}/"
        if not topic.startswith(head):
            raise TopicError(f"{topic!r} is not a topic of site {self.site!r}")
        return f"{self._debug('data', session)}/{topic[len(head) :]}"

    def debug_watch(self, session: str) -> list[str]:
        """What a watcher of one session subscribes: its state and its data."""
        return [self.debug_state(session), f"{self._debug('data', session)}/#"]

    def debug_filter(self, text: str) -> str:
        """A topic filter a debug session may ask for, made absolute (`results/#` →
        `ef/plant1/results/#`); `TopicError` saying why not otherwise."""
        head = f"{self.prefix}/{self.site}/"
        full = text if text.startswith(head) else head + text
        rest = full[len(head) :].split("/")
        if text.startswith(f"{self.prefix}/") and not text.startswith(head):
            raise TopicError(f"{text!r}: a session of site {self.site!r} sees only {head}...")
        kinds = ", ".join(sorted(k.value for k in DEBUG_KINDS))
        if rest[0] not in {k.value for k in DEBUG_KINDS}:
            raise TopicError(f"{text!r}: the kind level must be one of {kinds}, got {rest[0]!r}")
        if len(rest) != 2:
            raise TopicError(f"{text!r}: expected {{kind}}/{{name}}, {{kind}}/+ or {{kind}}/#")
        if rest[1] not in ("+", "#"):
            validate_id(rest[1], _ENTITY.get(Kind(rest[0]), "instance"))
        return full

    def bridged(self) -> list[tuple[str, str, int]]:
        """(pattern, direction, qos) of what the site broker's bridge carries: the control
        plane only. Debug data goes out only while a session is open because the agent
        publishes it only then."""
        return [
            (self.desired(), "in", 1),
            (self.debug_sessions(), "in", 1),
            (self.all_of(Kind.STATUS), "out", 1),
            (self.reported(), "out", 1),
            (f"{self.prefix}/{self.site}/{DEBUG}/state/+", "out", 1),
            (f"{self.prefix}/{self.site}/{DEBUG}/data/#", "out", 0),
        ]


def covers(wide: str, narrow: str) -> bool:
    """Whether every topic `narrow` matches is matched by `wide` (filters without `$share`)."""
    w, n = wide.split("/"), narrow.split("/")
    for i, part in enumerate(w):
        if part == "#":
            return True
        if i >= len(n) or n[i] == "#" or (part != "+" and (n[i] == "+" or part != n[i])):
            return False
    return len(w) == len(n)


def debug_of(topic: str) -> tuple[str, str, str]:
    """(site, part, session) of a debug topic (`part`: session, state or data)."""
    parts = topic.split("/")
    if len(parts) < 5 or parts[2] != DEBUG or parts[3] not in ("session", "state", "data"):
        raise TopicError(f"expected '{{prefix}}/{{site}}/debug/{{part}}/{{id}}', got {topic!r}")
    return validate_id(parts[1], "site"), parts[3], validate_id(parts[4], "session")


def every_site(kind: Kind, prefix: str = DEFAULT_PREFIX, name: str | None = None) -> str:
    """Subscription filter for one kind on every site (a cloud broker's view): every entity of
    the kind, or the one `name` (`ef/+/status/agent`); a site-level kind has no name level
    (`ef/+/reported`)."""
    validate_id(prefix, "prefix")
    if kind in _SITE_LEVEL:
        if name is not None:
            raise TopicError(f"{kind.value} topics have no name level")
        return f"{prefix}/+/{kind.value}"
    if name is None:
        return f"{prefix}/+/{kind.value}/#"
    return f"{prefix}/+/{kind.value}/{validate_id(name, _ENTITY.get(kind, 'instance'))}"


def every_debug_session(prefix: str = DEFAULT_PREFIX) -> str:
    """Every site's debug session requests (the fleet's view of what it opened)."""
    validate_id(prefix, "prefix")
    return f"{prefix}/+/{DEBUG}/session/+"


def fleet_commands(prefix: str = DEFAULT_PREFIX) -> str:
    validate_id(prefix, "prefix")
    return f"{prefix}/{FLEET_SITE}/commands"


def fleet_deployments(prefix: str = DEFAULT_PREFIX) -> str:
    """Where the fleet announces how staged deployments go (`DeploymentEvent`), not retained."""
    validate_id(prefix, "prefix")
    return f"{prefix}/{FLEET_SITE}/deployments"


def fleet_replies(client: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Where one client of the fleet (a command-line run, a console) gets its answers."""
    validate_id(prefix, "prefix")
    validate_id(client, "client")
    return f"{prefix}/{FLEET_SITE}/reply/{client}"


def parse(topic: str) -> ParsedTopic:
    """Split an edgefleet topic into its parts; raise `TopicError` for anything else."""
    parts = topic.split("/")
    if len(parts) not in (3, 4):
        raise TopicError(f"expected '{{prefix}}/{{site}}/{{kind}}[/{{name}}]', got {topic!r}")
    prefix, site, kind_text = parts[0], parts[1], parts[2]
    validate_id(prefix, "prefix")
    validate_id(site, "site")
    try:
        kind = Kind(kind_text)
    except ValueError:
        raise TopicError(f"unknown topic kind {kind_text!r} in {topic!r}") from None
    if kind in _SITE_LEVEL:
        if len(parts) != 3:
            raise TopicError(f"{kind.value} topics have no name level, got {topic!r}")
        return ParsedTopic(prefix, site, kind, None)
    if len(parts) != 4:
        raise TopicError(f"{kind.value} topics end with a name, got {topic!r}")
    return ParsedTopic(prefix, site, kind, validate_id(parts[3], _ENTITY.get(kind, "instance")))


def matches(topic: str, topic_filter: str) -> bool:
    """MQTT filter matching (`+` one level, `#` the rest); `$share/{group}/` is ignored."""
    if topic_filter.startswith("$share/"):
        topic_filter = topic_filter.split("/", 2)[2]
    t_parts, f_parts = topic.split("/"), topic_filter.split("/")
    for i, part in enumerate(f_parts):
        if part == "#":
            return True
        if i >= len(t_parts) or (part != "+" and part != t_parts[i]):
            return False
    return len(t_parts) == len(f_parts)


# ---------------------------------------------------------------- Sparkplug B (spBv1.0)

SPARKPLUG_NAMESPACE = "spBv1.0"


class SparkplugType(StrEnum):
    """The message types of the Sparkplug B topic namespace (Sparkplug 3.0, chapter 4)."""

    NBIRTH = "NBIRTH"
    NDEATH = "NDEATH"
    DBIRTH = "DBIRTH"
    DDEATH = "DDEATH"
    NDATA = "NDATA"
    DDATA = "DDATA"
    NCMD = "NCMD"
    DCMD = "DCMD"


_DEVICE_TYPES = {
    SparkplugType.DBIRTH,
    SparkplugType.DDEATH,
    SparkplugType.DDATA,
    SparkplugType.DCMD,
}


@dataclass(frozen=True)
class SparkplugTopic:
    """`spBv1.0/{group}/{type}/{node}[/{device}]`: a device level exactly for the D types."""

    group: str
    type: SparkplugType
    node: str
    device: str | None = None

    def __post_init__(self) -> None:
        validate_id(self.group, "Sparkplug group id")
        validate_id(self.node, "Sparkplug edge node id")
        if (self.device is not None) != (self.type in _DEVICE_TYPES):
            raise TopicError(
                f"Sparkplug {self.type.value} topics take a device id exactly for D types"
            )
        if self.device is not None:
            validate_id(self.device, "Sparkplug device id")

    def __str__(self) -> str:
        base = f"{SPARKPLUG_NAMESPACE}/{self.group}/{self.type.value}/{self.node}"
        return base if self.device is None else f"{base}/{self.device}"


def sparkplug(group: str, type: SparkplugType, node: str, device: str | None = None) -> str:
    """A Sparkplug B topic: `sparkplug("g1", NBIRTH, "edge1")` → `spBv1.0/g1/NBIRTH/edge1`."""
    return str(SparkplugTopic(group, type, node, device))


def sparkplug_filter(group: str = "+", node: str = "+") -> str:
    """Every Sparkplug message of one group (or all) and one edge node (or all)."""
    for value, what in ((group, "Sparkplug group id"), (node, "Sparkplug edge node id")):
        if value != "+":
            validate_id(value, what)
    return f"{SPARKPLUG_NAMESPACE}/{group}/+/{node}/#"


def parse_sparkplug(topic: str) -> SparkplugTopic:
    """Split a Sparkplug B topic; `TopicError` for anything else (STATE included: no node)."""
    parts = topic.split("/")
    if len(parts) not in (4, 5) or parts[0] != SPARKPLUG_NAMESPACE:
        raise TopicError(
            f"expected '{SPARKPLUG_NAMESPACE}/{{group}}/{{type}}/{{node}}[/{{device}}]', "
            f"got {topic!r}"
        )
    try:
        kind = SparkplugType(parts[2])
    except ValueError:
        raise TopicError(f"unknown Sparkplug message type {parts[2]!r} in {topic!r}") from None
    return SparkplugTopic(parts[1], kind, parts[3], parts[4] if len(parts) == 5 else None)
