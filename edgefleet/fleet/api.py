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


class UploadUrlResult(Api):
    upload_id: str
    url: str  # presigned PUT
    expires_s: int


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
    deployed: list[str] = []  # where it runs: filled by deployments


class ListResult(Api):
    resources: list[ResourceSummary]


class RefRequest(Api):
    ref: Ref  # name (the latest) or name@N


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
