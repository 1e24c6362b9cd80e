"""The one table of the fleet's commands, and `dispatch`: envelope in, envelope out.

Each entry maps a command name to a typed handler (pydantic request → pydantic result). No
transport here: service.py serves the table over MQTT v5 request/response, a web console can
serve the same table over HTTP. Handlers block (SQLite, S3): call `dispatch` from a thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from edgefleet.fleet import api, debug, deploy, flows, library, nodes, rollout, rotation, shadow
from edgefleet.fleet.errors import FleetError
from edgefleet.fleet.library import Fleet
from shared.config import format_errors
from shared.messages import FleetAnswer, FleetCommand, FleetErrorBody


@dataclass(frozen=True)
class Command:
    name: str
    request: type[BaseModel]
    result: type[BaseModel]
    handler: Callable[[Fleet, Any], BaseModel]
    doc: str
    example: dict[str, Any]  # the args of an example request, for the wire contract


SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command(
            "library.upload_url",
            api.UploadUrlRequest,
            api.UploadUrlResult,
            library.upload_url,
            "A presigned PUT URL to upload one file to, before `library.commit`. With "
            "`sha256` declared and an S3 server that checks checksums, the digest is signed "
            "into the URL: the PUT must send `headers` as given, and the server refuses other "
            "bytes. With `kind: model`, the process that will load the model starts now.",
            {"name": "pump-ae", "size": 48213, "sha256": SHA, "kind": "model"},
        ),
        Command(
            "library.commit",
            api.CommitRequest,
            api.CommitResult,
            library.commit,
            "Verify the uploaded file (size, sha256), inspect it (a model is loaded in "
            "onnxruntime in a separate process; a script is compiled and must define "
            "preprocess or postprocess), and commit it as the next version of `name`; "
            "identical bytes give back the existing version.",
            {
                "upload_id": "4f1c0d6e9a8b4c2d8e7f6a5b4c3d2e1f",
                "name": "pump-ae",
                "kind": "model",
                "sha256": SHA,
                "size": 48213,
                "note": "retrained on March data",
                "author": "ana@laptop",
            },
        ),
        Command(
            "library.list",
            api.ListRequest,
            api.ListResult,
            library.list_resources,
            "Every resource name: latest version, number of versions, kind, size, created.",
            {"kind": "model"},
        ),
        Command(
            "library.show",
            api.RefRequest,
            api.ShowResult,
            library.show,
            "One version (`name@N`, or `name` for the latest) with its signature, and the "
            "name's versions.",
            {"ref": "pump-ae@3"},
        ),
        Command(
            "library.download_url",
            api.DownloadUrlRequest,
            api.DownloadUrlResult,
            library.download_url,
            "A presigned GET URL of one version's blob, with the digest to verify; asked "
            "from a site's agent reply topic (`ef/fleet/reply/{site}-agent`, or with `site`), "
            "only for a version one of that site's desired states pins (a `site` naming "
            "another site than the reply topic's is refused).",
            {"ref": "pump-ae@3", "site": "plant1"},
        ),
        Command(
            "library.archive",
            api.ArchiveRequest,
            api.ArchiveResult,
            library.archive,
            "No new flow version may pin it; flow versions that pin it keep it. The author is "
            "kept with the version (`archived_by`).",
            {"ref": "pump-ae@2", "author": "ana@laptop"},
        ),
        Command(
            "library.delete",
            api.RefRequest,
            api.DeleteResult,
            library.delete,
            "Remove a version no flow version pins (its number is never given again).",
            {"ref": "pump-ae@1"},
        ),
        Command(
            "flow.push",
            api.FlowPushRequest,
            api.FlowPushResult,
            flows.push,
            "Store the flow file as the next version of its flow, every library reference "
            "pinned; refused when it names local files or does not fit its model.",
            {
                "text": "name: pump-anomaly\nalign: {...}\nmodel: {ref: pump-ae}\n",
                "filename": "pump-anomaly.yaml",
                "note": "threshold 0.8",
                "author": "ana@laptop",
            },
        ),
        Command(
            "flow.list",
            api.FlowListRequest,
            api.FlowListResult,
            flows.list_flows,
            "Every flow: latest version, number of versions, the model it pins, created.",
            {},
        ),
        Command(
            "flow.show",
            api.RefRequest,
            api.FlowShowResult,
            flows.show,
            "One flow version: text as written, pins with digests, the resolved flow.",
            {"ref": "pump-anomaly@4"},
        ),
        Command(
            "flow.history",
            api.FlowHistoryRequest,
            api.FlowHistoryResult,
            flows.history,
            "The versions of one flow: when, who, note, model.",
            {"name": "pump-anomaly"},
        ),
        Command(
            "flow.diff",
            api.FlowDiffRequest,
            api.FlowDiffResult,
            flows.diff,
            "Everything that changed between two flow versions: the flow file and the scripts "
            "as unified diffs, the pins, the model (digest, signature, features added, removed "
            "or reordered, train stats and threshold deltas); `text` renders it for a terminal.",
            {"a": "pump-anomaly@3", "b": "pump-anomaly@4"},
        ),
        Command(
            "node.list",
            api.NodeListRequest,
            api.NodeListResult,
            nodes.node_list,
            "Every node the fleet knows (or those a label selector matches): labels, online, "
            "desired and reported revision, the flows it should run.",
            {"selector": "role=pump"},
        ),
        Command(
            "node.show",
            api.NodeRequest,
            api.NodeShowResult,
            nodes.node_show,
            "One node: labels (the agent's and the fleet's), versions, groups, last report.",
            {"site": "plant1"},
        ),
        Command(
            "node.label",
            api.NodeLabelRequest,
            api.NodeLabelResult,
            nodes.node_label,
            "Set (`k=v`) or remove (`k-`) fleet labels; a fleet label wins over the agent's.",
            {"site": "plant1", "changes": ["role=pump", "retired-"]},
        ),
        Command(
            "node.history",
            api.NodeRequest,
            api.NodeHistoryResult,
            nodes.node_history,
            "Every desired revision of a node: when, which deployment, what changed, and "
            "what the node reported for it.",
            {"site": "plant1"},
        ),
        Command(
            "group.create",
            api.GroupCreateRequest,
            api.GroupResult,
            nodes.group_create,
            "A named label selector (Kubernetes syntax); its members are the nodes it "
            "matches at any moment.",
            {"name": "pumps", "selector": "role=pump,plant in (p1,p2),!retired"},
        ),
        Command(
            "group.list",
            api.GroupListRequest,
            api.GroupListResult,
            nodes.group_list,
            "Every group with its selector and members.",
            {},
        ),
        Command(
            "group.show",
            api.GroupShowRequest,
            api.GroupShowResult,
            nodes.group_show,
            "A group's members; with `node`, why that node is or is not a member, "
            "requirement by requirement.",
            {"name": "pumps", "node": "plant3"},
        ),
        Command(
            "group.delete",
            api.GroupDeleteRequest,
            api.GroupDeleteResult,
            nodes.group_delete,
            "Remove a group (deployments made to it keep their record).",
            {"name": "pumps"},
        ),
        Command(
            "deploy",
            api.DeployRequest,
            api.DeployResult,
            deploy.deploy,
            "Flow versions to a group, a selector or named nodes: one deployment record and, "
            "per node, a new signed desired state (every flow it should run, pinned with "
            "digests; revision + 1) published retained; `dry_run` publishes nothing. With a "
            "`strategy`, in stages: the first stage's nodes only, the next once it held "
            "(each node applied within timeout_s, failures within abort_above); beyond the "
            "threshold the deployment aborts and its nodes go back. With `shadow` (a model "
            "name@N), the one flow's nodes run that model beside the live one, acting on "
            "nothing (checked to fit the flow first).",
            {
                "flows": ["pump-anomaly@5"],
                "group": "pumps",
                "timeout_s": 120,
                "strategy": {"stages": ["1", "10%", "100%"], "abort_above": "20%", "soak_s": 60},
            },
        ),
        Command(
            "deployment.list",
            api.DeploymentListRequest,
            api.DeploymentListResult,
            deploy.deployment_list,
            "The latest deployments, newest first, with their state and nodes per state.",
            {"limit": 20},
        ),
        Command(
            "deployment.show",
            api.DeploymentRequest,
            api.DeploymentShowResult,
            deploy.deployment_show,
            "One deployment; per node: revision, state, error, timings.",
            {"id": "3f2a9c1b7d4e"},
        ),
        Command(
            "deployment.cancel",
            api.DeploymentCancelRequest,
            api.DeploymentShowResult,
            deploy.deployment_cancel,
            "Stop a deployment: each node still in progress gets a new revision with the "
            "flows it had before it; nodes that applied it keep it. The author is kept with "
            "the deployment (`cancelled_by`).",
            {"id": "3f2a9c1b7d4e", "author": "ana@laptop"},
        ),
        Command(
            "deployment.pause",
            api.DeploymentRequest,
            api.DeploymentShowResult,
            rollout.pause,
            "Hold a staged deployment: the stage in progress goes on (and may still abort), "
            "the next stage waits for `deployment.resume`.",
            {"id": "3f2a9c1b7d4e"},
        ),
        Command(
            "deployment.resume",
            api.DeploymentRequest,
            api.DeploymentShowResult,
            rollout.resume,
            "Let a paused staged deployment go on: a stage that held meanwhile advances now.",
            {"id": "3f2a9c1b7d4e"},
        ),
        Command(
            "keys.rotate",
            api.KeyRotateRequest,
            api.KeyStatusResult,
            rotation.rotate,
            "Rotate the signing key to the private key at `new_key` (a path on the fleet's "
            "host): every node is told, under the old key, to trust old and new; once all "
            "confirmed the fleet signs with the new key and tells them to trust it only; "
            "once all confirmed that, the old key is retired.",
            {"new_key": "/etc/edgefleet/fleet-2026.key"},
        ),
        Command(
            "keys.status",
            api.KeyStatusRequest,
            api.KeyStatusResult,
            rotation.status,
            "The key the fleet signs with, and the latest rotation: phase, nodes confirmed.",
            {},
        ),
        Command(
            "rollback",
            api.RollbackRequest,
            api.DeployResult,
            deploy.rollback,
            "Deploy FLOW@N to every node whose latest desired state runs FLOW.",
            {"flow": "pump-anomaly", "to": 4},
        ),
        Command(
            "shadow.report",
            api.ShadowReportRequest,
            api.ShadowReportResult,
            shadow.report,
            "How the shadow model of FLOW compares with the live one, per node (from each "
            "node's inference status: label agreement, decisions that differ, score "
            "correlation and difference, run time of both) and over the nodes.",
            {"flow": "pump-anomaly", "group": "pumps"},
        ),
        Command(
            "shadow.stop",
            api.ShadowStopRequest,
            api.ShadowStopResult,
            shadow.stop,
            "Remove FLOW's shadow model: the same flow version deployed again without it, to "
            "the target's nodes that run one.",
            {"flow": "pump-anomaly", "group": "pumps"},
        ),
        Command(
            "promote",
            api.PromoteRequest,
            api.PromoteResult,
            shadow.promote,
            "Make FLOW's shadow model live: a new flow version with the shadow model as its "
            "model, deployed to the nodes that run the shadow (with `strategy`, in stages, "
            "as `deploy`); the version it replaces is the rollback target.",
            {
                "flow": "pump-anomaly",
                "group": "pumps",
                "timeout_s": 120,
                "strategy": {"stages": ["1", "100%"]},
            },
        ),
        Command(
            "debug.open",
            api.DebugOpenRequest,
            api.DebugOpenResult,
            debug.debug_open,
            "Ask a node's agent to forward some of its site topics (`results/#`, `samples/pump`, "
            "`raw/+`) for `seconds`, at most `rate_hz` messages per second per topic (the "
            "latest of each interval): a signed request retained on "
            "`ef/{node}/debug/session/{session}` with that message expiry; the data arrives on "
            "`topic`, the session's states on `state_topic`. Refused: `not_found` (unknown "
            "node), `too_many_sessions`, `too_long`, `too_fast`, `bad_filter`.",
            {"node": "plant1", "topics": ["results/pump-anomaly"], "rate_hz": 2, "seconds": 60},
        ),
        Command(
            "debug.close",
            api.DebugCloseRequest,
            api.DebugCloseResult,
            debug.debug_close,
            "End a debug session now (its retained request is cleared); it ends by itself at "
            "its expiry anyway.",
            {"session": "5e0c7a41b2d9"},
        ),
        Command(
            "debug.list",
            api.DebugListRequest,
            api.DebugListResult,
            debug.debug_list,
            "The debug sessions open (of one node), with what its agent says of each (sent, "
            "dropped).",
            {"node": "plant1"},
        ),
    )
}


# What an agent asks the fleet (edgefleet/agent/agent.py); from a site, everything else is refused.
SITE_COMMANDS = frozenset({"library.download_url"})


def run(fleet: Fleet, cmd: str, args: dict[str, Any], asker: str | None = None) -> BaseModel:
    """Parse `args` for `cmd` and run its handler; `FleetError` for a refusal.

    `asker`: the site the request comes from by its reply topic (`shared.requests.asking_site`);
    for a download URL it is the site, and a `site` that names another one is refused."""
    command = COMMANDS.get(cmd)
    if command is None:
        raise FleetError(
            "unknown_command", f"unknown command {cmd!r}; known: {', '.join(sorted(COMMANDS))}"
        )
    try:
        request = command.request.model_validate(args)
    except ValidationError as exc:
        raise FleetError("invalid", format_errors(exc, cmd)) from None
    if asker is not None and cmd not in SITE_COMMANDS:
        # every site may publish to the commands topic (cloud ACL); what a site's agent may ask
        # is its own blobs, nothing that changes the fleet or reads another site's
        raise FleetError(
            "not_allowed",
            f"{cmd} asked from site {asker}'s reply topic: a site may ask only "
            f"{', '.join(sorted(SITE_COMMANDS))}",
        )
    if asker is not None and isinstance(request, api.DownloadUrlRequest):
        if request.site not in (None, asker):
            raise FleetError(
                "not_allowed",
                f"asked from site {asker}'s reply topic for site {request.site}: "
                "a site asks for its own blobs only",
            )
        request = request.model_copy(update={"site": asker})
    return command.handler(fleet, request)


def dispatch(fleet: Fleet, command: FleetCommand) -> FleetAnswer:
    """One command envelope in, one answer envelope out; only a bug raises."""
    try:
        result = run(fleet, command.cmd, command.args)
    except FleetError as exc:
        return refusal(exc.code, exc.message)
    return FleetAnswer(ok=True, result=result.model_dump(mode="json"))


def refusal(code: str, message: str) -> FleetAnswer:
    return FleetAnswer(ok=False, error=FleetErrorBody(code=code, message=message))
