"""The fleet's commands as typed requests and results (pydantic), independent of transport.

Each command of `commands.COMMANDS` takes one `*Request` and returns one `*Result`; the MQTT
transport (service.py) and a later HTTP one carry them as JSON. Unknown keys are refused.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

Kind = Literal["model", "script"]


def check_name(value: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid name: 1-64 letters, digits, '.', '_' or '-', starting "
            "with a letter or digit (e.g. pump-ae)"
        )
    return value


def check_ref(value: str) -> str:
    """`name` or `name@N`."""
    name, at, version = value.partition("@")
    check_name(name)
    if at and not (version.isdigit() and int(version) > 0):
        raise ValueError(f"{value!r}: the version after '@' must be a positive number (pump-ae@3)")
    return value


def split_ref(ref: str) -> tuple[str, int | None]:
    name, at, version = ref.partition("@")
    return name, int(version) if at else None


Name = Annotated[str, AfterValidator(check_name)]
Ref = Annotated[str, AfterValidator(check_ref)]
Sha256 = Annotated[str, Field(pattern=SHA256_RE.pattern)]


class Api(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------- library


class UploadUrlRequest(Api):
    """Ask where to PUT a file before `library.commit`."""

    name: Name
    size: int = Field(ge=0, description="bytes the client will upload")
    sha256: Sha256 | None = Field(
        default=None,
        description="the file's digest, when known before the upload: an S3 server that "
        "checks checksums then refuses other bytes, and the fleet need not read them back to "
        "verify them",
    )
    kind: Kind | None = Field(
        default=None,
        description="what `library.commit` will say it is, when known: for a model the fleet "
        "starts the process that will load it while the upload runs",
    )


class UploadUrlResult(Api):
    upload_id: str
    url: str  # presigned PUT
    expires_s: int
    # Headers the PUT must carry exactly so (they are signed into the URL): the declared
    # digest as `x-amz-checksum-sha256`, when the fleet's S3 server checks it.
    headers: dict[str, str] = Field(default_factory=dict)


class CommitRequest(Api):
    """Check what was uploaded and commit it as the next version of `name`."""

    upload_id: str
    name: Name
    kind: Kind
    sha256: Sha256
    size: int = Field(ge=0)
    note: str = ""
    author: str = ""


class ResourceView(Api):
    ref: str  # name@N
    name: str
    version: int
    kind: Kind
    sha256: str
    size: int
    note: str
    author: str
    created: str  # ISO-8601 UTC
    archived: str | None = None  # when, if archived
    archived_by: str | None = None  # who, if archived
    signature: dict[str, Any]  # a model's signature; a script's functions
    used_by: list[str] = []  # flow versions that pin it


class CommitResult(Api):
    resource: ResourceView
    created: bool  # False: the same bytes were already this version


class ListRequest(Api):
    kind: Kind | None = None


class ResourceSummary(Api):
    name: str
    latest: int  # the latest active version (the latest archived one if all are)
    versions: int
    kind: Kind
    size: int  # of the latest
    created: str  # of the latest
    deployed: list[str] = []  # `name@N (nodes)` in nodes' latest desired states


class ListResult(Api):
    resources: list[ResourceSummary]


class RefRequest(Api):
    ref: Ref  # name (the latest) or name@N


class ArchiveRequest(RefRequest):
    author: str = ""  # who archives it, kept with the version


class DownloadUrlRequest(Api):
    ref: Ref
    # The asking node: the URL is given only for a version one of its desired states pins.
    site: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")] | None = None


class VersionBrief(Api):
    version: int
    sha256: str
    size: int
    created: str
    author: str
    note: str
    archived: str | None = None


class ShowResult(Api):
    resource: ResourceView
    versions: list[VersionBrief]


class DownloadUrlResult(Api):
    ref: str
    url: str  # presigned GET
    sha256: str
    size: int
    expires_s: int


class ArchiveResult(Api):
    resource: ResourceView


class DeleteResult(Api):
    ref: str
    blob_removed: bool  # False: the same bytes are another version's too


# ---------------------------------------------------------------------------- flows


class FlowPushRequest(Api):
    text: str = Field(description="the flow file as written")
    filename: str = "flow.yaml"  # for messages only
    note: str = ""
    author: str = ""


class Pin(Api):
    """As a desired state's `PinnedResource` names it."""

    ref: str  # name@N
    kind: Kind
    sha256: str
    size: int


class FlowView(Api):
    ref: str
    name: str
    version: int
    note: str
    author: str
    created: str
    digest: str  # over the text and the pinned digests
    pins: dict[str, Pin]  # role (model, preprocess, postprocess, shadow) → pinned resource
    text: str
    resolved: dict[str, Any]  # the flow with every reference pinned to name@N


class FlowPushResult(Api):
    flow: FlowView
    created: bool


class FlowListRequest(Api):
    pass


class FlowSummary(Api):
    name: str
    latest: int
    versions: int
    model: str | None  # name@N the latest pins
    created: str
    deployed: list[str] = []


class FlowListResult(Api):
    flows: list[FlowSummary]


class FlowShowResult(Api):
    flow: FlowView


class FlowHistoryRequest(Api):
    name: Name


class HistoryEntry(Api):
    version: int
    created: str
    author: str
    note: str
    model: str | None


class FlowHistoryResult(Api):
    name: str
    versions: list[HistoryEntry]


class FlowDiffRequest(Api):
    a: Ref
    b: Ref


class FlowDiffResult(Api):
    a: str
    b: str
    diff: dict[str, Any]  # see edgefleet/fleet/diff.py
    text: str  # the same, rendered for a terminal


# ---------------------------------------------------------------------------- nodes and groups

Site = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
LABEL_CHANGE = r"^[A-Za-z0-9][A-Za-z0-9_./-]*(=[A-Za-z0-9_.-]*|-)$"


class NodeView(Api):
    site: str
    labels: dict[str, str]  # effective: the agent's, overridden by the fleet's
    agent_labels: dict[str, str]
    fleet_labels: dict[str, str]
    # online | stale (online, but not heard from for node_stale_after_s) | offline | stopped |
    # unknown (never heard from)
    online: str
    bridge: str | None = None  # up | down (its last will): the site bridge; None: not seen
    first_seen: str | None
    last_seen: str | None
    seen_ago_s: float | None = None  # seconds since the fleet last heard from it (at this answer)
    desired_revision: int
    reported_revision: int | None
    reported_state: str | None
    flows: list[str]  # what its latest desired state names, flow@N
    agent: dict[str, Any] = Field(default_factory=dict)  # versions and the rest the agent says


class NodeListRequest(Api):
    selector: str | None = None  # only the nodes it matches


class NodeListResult(Api):
    nodes: list[NodeView]


class NodeRequest(Api):
    site: Site


class NodeShowResult(Api):
    node: NodeView
    groups: list[str]  # the groups it is a member of
    reported: dict[str, Any] | None  # the last ReportedState as it came


class NodeLabelRequest(Api):
    site: Site
    changes: list[Annotated[str, Field(pattern=LABEL_CHANGE)]] = Field(min_length=1)  # k=v, k-


class NodeLabelResult(Api):
    node: NodeView


class NodeEvent(Api):
    state: str  # received, downloading, verifying, activating, applied, failed, rolled_back,
    # rollback_failed
    at: str  # when the node reported it (ISO-8601 UTC, the node's clock)
    error: str | None = None


class DesiredEntry(Api):
    revision: int
    deployment: str | None
    issued: str
    flows: list[str]
    changes: str
    state: str | None  # what the node reported for this revision, if anything
    events: list[NodeEvent] = []  # every step the node reported for it, with times


class NodeHistoryResult(Api):
    site: str
    revisions: list[DesiredEntry]


class GroupCreateRequest(Api):
    name: Name
    selector: str
    author: str = ""


class GroupView(Api):
    name: str
    selector: str
    author: str
    created: str
    members: list[str]


class GroupResult(Api):
    group: GroupView


class GroupListRequest(Api):
    pass


class GroupListResult(Api):
    groups: list[GroupView]


class GroupShowRequest(Api):
    name: Name
    node: Site | None = None  # also explain why this node is or is not a member


class Why(Api):
    requirement: str
    ok: bool
    reason: str


class Membership(Api):
    site: str
    member: bool
    labels: dict[str, str]
    why: list[Why]


class GroupShowResult(Api):
    group: GroupView
    nodes: list[NodeView]
    explain: Membership | None = None


class GroupDeleteRequest(Api):
    name: Name


class GroupDeleteResult(Api):
    name: str


# ---------------------------------------------------------------------------- deployments


def check_share(value: str) -> str:
    """A count of nodes (`2`) or a percentage (`10%`, up to 100)."""
    text = value.strip()
    if text.endswith("%"):
        try:
            ok = 0 <= float(text[:-1]) <= 100
        except ValueError:
            ok = False
    else:
        ok = text.isdigit()
    if not ok:
        raise ValueError(f"{value!r}: give a count of nodes (2) or a percentage (10%)")
    return text


Share = Annotated[str, AfterValidator(check_share)]


class Strategy(Api):
    """How a deployment goes out (edgefleet/fleet/rollout.py): stages, each a count or a
    percentage of the target, cumulative; a stage goes only when the one before held."""

    stages: list[Share] = Field(default_factory=lambda: ["100%"], min_length=1)
    # a stage aborts the deployment when more of its nodes fail than this (count or % of it)
    abort_above: Share = "0"
    soak_s: float = Field(0.0, ge=0, le=7 * 24 * 3600)  # wait after a stage held
    seed: str | None = None  # None: nodes in site order; else a stable order drawn from it


class DeployRequest(Api):
    """Exactly one of `group`, `nodes`, `selector` names the target."""

    flows: list[Ref] = Field(min_length=1)  # flow@N (flow alone: its latest version)
    group: Name | None = None
    nodes: list[Site] | None = None
    selector: str | None = None
    timeout_s: float = Field(120.0, gt=0, le=7 * 24 * 3600)  # per node, until applied
    strategy: Strategy | None = None  # None: every node at once
    dry_run: bool = False
    note: str = ""
    author: str = ""
    # A library model (name@N) run in shadow beside the live model of the one flow deployed.
    shadow: Ref | None = None


class NodePlan(Api):
    site: str
    revision: int  # for a later stage: the revision it would get if issued now
    flows: list[str]
    changes: str
    superseded: str | None = None  # the deployment in progress on this node it replaces
    stage: int = 0


class DeploymentNode(Api):
    site: str
    revision: int  # 0 while it waits for its stage
    state: str
    error: str | None
    timings_ms: dict[str, float]
    updated: str
    events: list[NodeEvent] = []  # every step the node reported for this revision, with times
    stage: int = 0


class StageView(Api):
    index: int
    sites: list[str]
    state: str  # waiting | in_progress | held | failed | skipped
    counts: dict[str, int]


class DeploymentView(Api):
    id: str
    flows: list[str]
    target: dict[str, Any]
    author: str
    note: str
    created: str
    timeout_s: float
    state: str  # in_progress | paused | succeeded | failed | aborted | cancelled | superseded
    counts: dict[str, int]  # nodes per state
    cancelled: str | None = None
    cancelled_by: str | None = None
    strategy: Strategy | None = None  # a staged rollout's
    stage: int | None = None  # the stage in progress
    stages: list[StageView] = Field(default_factory=list)
    paused: str | None = None
    aborted: str | None = None
    reason: str | None = None  # why it aborted


class DeployResult(Api):
    deployment: DeploymentView | None  # None for a dry run
    plan: list[NodePlan]
    dry_run: bool


class DeploymentListRequest(Api):
    limit: int = Field(20, ge=1, le=1000)


class DeploymentListResult(Api):
    deployments: list[DeploymentView]


class DeploymentRequest(Api):
    id: str


class DeploymentCancelRequest(DeploymentRequest):
    author: str = ""  # who cancels it, kept with the deployment


class DeploymentShowResult(Api):
    deployment: DeploymentView
    nodes: list[DeploymentNode]


class RollbackRequest(Api):
    flow: Name
    to: int = Field(ge=1)
    timeout_s: float = Field(120.0, gt=0, le=7 * 24 * 3600)
    dry_run: bool = False
    author: str = ""


# ---------------------------------------------------------------------------- shadow


class ShadowTarget(Api):
    """A flow, and the nodes to act on: a group, a selector, named nodes, or (none of them)
    every node whose latest desired state runs the flow."""

    flow: Name
    group: Name | None = None
    nodes: list[Site] | None = None
    selector: str | None = None


class ShadowReportRequest(ShadowTarget):
    pass


class ShadowNode(Api):
    """One node's shadow figures, from its inference instance's retained status."""

    site: str
    flow: str  # flow@N in the node's latest desired state
    desired_shadow: str | None  # name@N the fleet asked for
    running_shadow: str | None  # what the instance runs now (name version)
    shadow_sha256: str | None
    live_model: str | None
    state: str  # the instance's status: online | offline | stopped | unknown
    compared: int = 0
    window_samples: int = 0
    label_agreement: float | None = None
    decisions_differ: int = 0
    score_corr: float | None = None
    score_diff: dict[str, float | None] = {}  # p50 p90 p99 max of |live - shadow|
    live_run_us: dict[str, float | None] = {}
    shadow_run_us: dict[str, float | None] = {}
    live_latency_us: dict[str, float | None] = {}
    skipped_batches: int = 0
    score_sums: dict[str, float] | None = None  # n, Σx, Σy, Σx², Σy², Σxy: pooled over nodes
    updated: str | None = None


class ShadowOverall(Api):
    """Over the nodes: agreement weighted by samples compared in each window, the score
    correlation pooled from each node's sums, the worst p99s."""

    nodes: int
    reporting: int  # nodes whose instance runs the shadow asked for and compared samples
    compared: int
    label_agreement: float | None
    decisions_differ: int
    score_corr: float | None
    score_diff_p99: float | None
    live_run_us_p99: float | None
    shadow_run_us_p99: float | None


class ShadowReportResult(Api):
    flow: str
    nodes: list[ShadowNode]
    overall: ShadowOverall


class ShadowStopRequest(ShadowTarget):
    timeout_s: float = Field(120.0, gt=0, le=7 * 24 * 3600)
    dry_run: bool = False
    author: str = ""


class ShadowStopResult(Api):
    deployments: list[DeployResult]


class PromoteRequest(ShadowTarget):
    timeout_s: float = Field(120.0, gt=0, le=7 * 24 * 3600)
    strategy: Strategy | None = None  # as a deploy's; None: every node at once
    dry_run: bool = False
    note: str = ""
    author: str = ""


class PromoteResult(Api):
    flow: str  # the new flow version: the shadow model live
    previous: str  # the flow version it replaces: `rollback FLOW --to N` goes back to it
    model: str  # the model promoted
    deploy: DeployResult


# ---------------------------------------------------------------------------- signing keys


class KeyRotateRequest(Api):
    """Rotate the fleet's signing key to `new_key` (edgefleet/fleet/rotation.py)."""

    # the new private key's path on the fleet's own host, as fleet.yaml's signing_key
    new_key: str = Field(min_length=1)
    timeout_s: float = Field(3600.0, gt=0, le=30 * 24 * 3600)  # per node, for the record
    author: str = ""


class KeyNode(Api):
    site: str
    revision: int  # the revision of the current phase that node must confirm
    confirmed: bool


class KeyRotationView(Api):
    id: str
    phase: str  # announcing | switching | retired
    old_key_id: str
    new_key_id: str
    started: str
    retired: str | None
    deployment: str | None  # the current phase's (deployment show)
    nodes: list[KeyNode]


class KeyStatusRequest(Api):
    pass


class KeyStatusResult(Api):
    signing_key_id: str | None
    trust: list[str] | None  # what desired states tell nodes to trust, during a rotation
    rotation: KeyRotationView | None  # the latest one


# ---------------------------------------------------------------------------- debug sessions


class DebugOpenRequest(Api):
    """Look at some of a node's site topics from here for a while (docs/debug.md)."""

    node: Site
    topics: list[str] = Field(min_length=1)  # `results/#`, `samples/pump`, `ef/plant1/raw/+`
    rate_hz: float = Field(2.0, gt=0)  # messages per second per topic, at most
    seconds: float = Field(60.0, gt=0)  # it ends by itself after this
    author: str = ""


class DebugSessionView(Api):
    session: str
    node: str
    topics: list[str]  # absolute filters
    rate_hz: float
    issued: str
    expires_at: str  # ISO-8601 UTC
    expires_ns: int
    author: str
    topic: str  # where its data arrives: `ef/{node}/debug/data/{session}/#`
    state_topic: str  # open / refused / closed / expired: `ef/{node}/debug/state/{session}`
    agent: dict[str, Any] | None = None  # what the node's agent last said of it (sent, dropped)


class DebugOpenResult(Api):
    session: str
    node: str
    expires_at: str
    topic: str
    state_topic: str
    topics: list[str]
    rate_hz: float


class DebugCloseRequest(Api):
    session: str


class DebugCloseResult(Api):
    session: str
    node: str


class DebugListRequest(Api):
    node: Site | None = None


class DebugListResult(Api):
    sessions: list[DebugSessionView]
