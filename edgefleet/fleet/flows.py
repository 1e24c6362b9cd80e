"""Flow versions: `flow push` pins every library reference and checks the flow against the
model's stored signature with the inference service's own `check_fits`.

How a flow names library resources (the same file format as a site's flow files):

    model:
      ref: pump-ae            # the latest active version at push time; or pump-ae@3
      preprocess: {ref: scaler}        # a library script; or {ref: scaler@2}
      postprocess: {ref: to-alarm}
      shadow: {ref: pump-ae@4}         # a candidate model, pinned like the live one

A local `path` for the model or a script path is refused with a hint to push the file first.
The stored version keeps the text as written and the flow with each reference pinned
(`ref: pump-ae@3`), and records each pin's digest.
"""

from __future__ import annotations

import copy
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import yaml

from edgefleet.fleet import api
from edgefleet.fleet.blobs import blob_key
from edgefleet.fleet.diff import FlowVersion, diff_flows, render_text
from edgefleet.fleet.errors import FleetError
from edgefleet.fleet.library import Fleet, deployed_of
from edgefleet.fleet.store import Row
from edgefleet.flow import FlowSpec, parse_flow
from services.inference.config import InferenceSettings, ShadowSpec
from services.inference.isolated import run_isolated
from services.inference.signature import ModelSignature, check_fits
from services.inference.swap import shadow_settings
from shared.errors import EdgefleetError
from shared.messages import iso

SCRIPT_ROLES = ("preprocess", "postprocess")
PLACEHOLDER_DIR = Path("/library")  # where the check pretends pinned scripts are
CHECK_TIMEOUT_S = 30.0  # running a preprocess script once on zeros, in a separate process


def push(fleet: Fleet, req: api.FlowPushRequest) -> api.FlowPushResult:
    data = _parse_yaml(req.text, req.filename)
    model = data.get("model")
    if model is not None and not isinstance(model, dict):
        raise FleetError("invalid", f"{req.filename}: model: expected a mapping of keys")
    pins, resolved = _resolve(fleet, data, req.filename)
    flow = _validate(resolved, req.filename)
    if not _valid_name(flow.name):
        _bad_flow_name(flow.name)
    if "model" in pins:
        _check_fits(fleet, flow, pins, req.filename)
    digest = hashlib.sha256(
        json.dumps({"text": req.text, "pins": {r: p["sha256"] for r, p in pins.items()}}).encode()
    ).hexdigest()
    row, created = fleet.store.add_flow(
        flow.name,
        req.text,
        resolved,
        digest,
        {role: p["id"] for role, p in pins.items()},
        req.note,
        req.author,
    )
    return api.FlowPushResult(flow=flow_view(fleet, row), created=created)


def _valid_name(name: str) -> bool:
    return bool(api.NAME_RE.match(name))


def _bad_flow_name(name: str) -> None:
    raise FleetError(
        "invalid",
        f"flow name {name!r} is not a valid name: 1-64 letters, digits, '.', '_' or '-'",
    )


def _parse_yaml(text: str, filename: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{filename}:{mark.line + 1}" if mark else filename
        raise FleetError(
            "invalid", f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}"
        ) from None
    if not isinstance(data, dict):
        raise FleetError("invalid", f"{filename}: expected a flow (a mapping of keys)")
    return data


def _local_path(filename: str, key: str, value: Any) -> FleetError:
    return FleetError(
        "local_path",
        f"{filename}: {key}: {value!r} is a local file; the fleet deploys library versions "
        f"only: push it first (edgefleet library push {value} --name NAME) and write "
        f"{{ref: NAME}} instead",
    )


def _resolve(
    fleet: Fleet, data: dict[str, Any], filename: str
) -> tuple[dict[str, Row], dict[str, Any]]:
    """Pin each reference: role → resource row; the flow with `ref: name@N` everywhere."""
    resolved = copy.deepcopy(data)
    model = resolved.get("model")
    pins: dict[str, Row] = {}
    if not isinstance(model, dict):
        return pins, resolved
    if model.get("path") is not None:
        raise _local_path(filename, "model.path", model["path"])
    if model.get("ref") is not None:
        pins["model"] = _pin(fleet, model["ref"], "model", filename, "model.ref")
        model["ref"] = _ref(pins["model"])
    for role in SCRIPT_ROLES:
        value = model.get(role)
        if value is None:
            continue
        if not (isinstance(value, dict) and set(value) == {"ref"}):
            raise _local_path(filename, f"model.{role}", value)
        pins[role] = _pin(fleet, value["ref"], "script", filename, f"model.{role}.ref")
        model[role] = {"ref": _ref(pins[role])}
    shadow = model.get("shadow")
    if isinstance(shadow, dict):
        if shadow.get("path") is not None:
            raise _local_path(filename, "model.shadow.path", shadow["path"])
        if shadow.get("ref") is not None:
            pins["shadow"] = _pin(fleet, shadow["ref"], "model", filename, "model.shadow.ref")
            shadow["ref"] = _ref(pins["shadow"])
    return pins, resolved


def _ref(row: Row) -> str:
    return f"{row['name']}@{row['version']}"


def _pin(fleet: Fleet, ref: Any, kind: str, filename: str, key: str) -> Row:
    if not isinstance(ref, str):
        raise FleetError("invalid", f"{filename}: {key}: expected name or name@N, got {ref!r}")
    try:
        api.check_ref(ref)
    except ValueError as exc:
        raise FleetError("invalid", f"{filename}: {key}: {exc}") from None
    name, version = api.split_ref(ref)
    try:
        row = fleet.store.resource(name, version, active=version is None)
    except FleetError as exc:
        raise FleetError(exc.code, f"{filename}: {key}: {exc.message}") from None
    if row["kind"] != kind:
        raise FleetError(
            "invalid", f"{filename}: {key}: {_ref(row)} is a {row['kind']}, not a {kind}"
        )
    if row["archived_ns"] is not None:
        raise FleetError(
            "archived",
            f"{filename}: {key}: {_ref(row)} is archived; no new flow version may use it "
            f"(name a newer version, or {name} alone for the latest active one)",
        )
    return row


def _validate(resolved: dict[str, Any], filename: str) -> FlowSpec:
    """The flow model's own validation; pinned scripts stand in as paths."""
    data = copy.deepcopy(resolved)
    model = data.get("model")
    if isinstance(model, dict):
        for role in SCRIPT_ROLES:
            if isinstance(model.get(role), dict):
                model[role] = str(PLACEHOLDER_DIR / f"{model[role]['ref']}.py")
    try:
        return parse_flow(data, filename)
    except EdgefleetError as exc:
        raise FleetError("invalid", str(exc)) from None


def _check_fits(fleet: Fleet, flow: FlowSpec, pins: dict[str, Row], filename: str) -> None:
    """The live model, and a pinned shadow model, against the flow: what inference checks
    before serving either (the shadow with the settings inference gives a candidate)."""
    settings = InferenceSettings.model_validate(flow.inference_settings())
    _fits(fleet, settings.model_copy(update={"shadow": None}), pins["model"], pins, filename)
    if "shadow" in pins and settings.shadow is not None:
        _fits(fleet, shadow_settings(settings, settings.shadow), pins["shadow"], pins, filename)


def check_shadow(fleet: Fleet, flow_row: Row, model: Row) -> None:
    """A library model as the shadow of a flow version: does_not_fit unless it would serve."""
    pins = fleet.store.flow_refs(flow_row["id"])
    flow = _validate(json.loads(flow_row["resolved"]), _ref(flow_row))
    settings = InferenceSettings.model_validate(flow.inference_settings())
    spec = ShadowSpec(ref=_ref(model))
    _fits(fleet, shadow_settings(settings, spec), model, pins, f"{_ref(model)} as shadow of")


def _fits(
    fleet: Fleet, settings: InferenceSettings, model: Row, pins: dict[str, Row], filename: str
) -> None:
    signature = ModelSignature.model_validate(json.loads(model["signature"]))
    origin = _ref(model)
    if "preprocess" not in pins:
        try:
            check_fits(signature, settings, origin=origin)
        except EdgefleetError as exc:
            raise FleetError("does_not_fit", f"{filename}: {exc}") from None
        return
    # What the preprocess script hands the model is known only by running it: in a child
    # process, so a script that hangs or crashes costs that process only.
    with tempfile.TemporaryDirectory(dir=fleet.config.work_dir) as tmp:
        script = Path(tmp) / "preprocess.py"
        script.write_bytes(fleet.blobs.read(blob_key(pins["preprocess"]["sha256"])))
        settings = settings.model_copy(update={"preprocess": script})
        error = _run_check_isolated(signature, settings, origin)
    if error is not None:
        raise FleetError("does_not_fit", f"{filename}: {error}")


def _check_child(arg: tuple[dict[str, Any], dict[str, Any], str]) -> None:
    signature, settings, origin = arg
    check_fits(
        ModelSignature.model_validate(signature),
        InferenceSettings.model_validate(settings),
        origin=origin,
    )


def _run_check_isolated(
    signature: ModelSignature, settings: InferenceSettings, origin: str
) -> str | None:
    arg = (signature.model_dump(mode="json"), settings.model_dump(mode="json"), origin)
    try:
        run_isolated(_check_child, arg, CHECK_TIMEOUT_S, "the preprocess script", "its check")
    except EdgefleetError as exc:
        return str(exc)
    return None


# ---------------------------------------------------------------------------- views


def flow_view(fleet: Fleet, row: Row) -> api.FlowView:
    pins = {
        role: api.Pin(ref=_ref(r), kind=r["kind"], sha256=r["sha256"], size=r["size"])
        for role, r in fleet.store.flow_refs(row["id"]).items()
    }
    return api.FlowView(
        ref=f"{row['name']}@{row['version']}",
        name=row["name"],
        version=row["version"],
        note=row["note"] or "",
        author=row["author"] or "",
        created=iso(row["created_ns"]),
        digest=row["digest"],
        pins=pins,
        text=row["text"],
        resolved=json.loads(row["resolved"]),
    )


def list_flows(fleet: Fleet, req: api.FlowListRequest) -> api.FlowListResult:
    out = []
    counts = fleet.store.deployed()
    for name in fleet.store.flow_names():
        versions = fleet.store.flow_versions(name)
        latest = versions[-1]
        model = fleet.store.flow_refs(latest["id"]).get("model")
        out.append(
            api.FlowSummary(
                name=name,
                latest=latest["version"],
                versions=len(versions),
                model=_ref(model) if model else None,
                created=iso(latest["created_ns"]),
                deployed=deployed_of(counts, name),
            )
        )
    return api.FlowListResult(flows=out)


def show(fleet: Fleet, req: api.RefRequest) -> api.FlowShowResult:
    name, version = api.split_ref(req.ref)
    return api.FlowShowResult(flow=flow_view(fleet, fleet.store.flow(name, version)))


def history(fleet: Fleet, req: api.FlowHistoryRequest) -> api.FlowHistoryResult:
    rows = fleet.store.flow_versions(req.name)
    if not rows:
        fleet.store.flow(req.name, None)  # raises not_found with the hint
    entries = []
    for row in rows:
        model = fleet.store.flow_refs(row["id"]).get("model")
        entries.append(
            api.HistoryEntry(
                version=row["version"],
                created=iso(row["created_ns"]),
                author=row["author"] or "",
                note=row["note"] or "",
                model=_ref(model) if model else None,
            )
        )
    return api.FlowHistoryResult(name=req.name, versions=entries)


def _version_for_diff(fleet: Fleet, ref: str) -> FlowVersion:
    name, version = api.split_ref(ref)
    row = fleet.store.flow(name, version)
    pinned = fleet.store.flow_refs(row["id"])
    model = pinned.get("model")
    scripts = {
        r["name"]: fleet.blobs.read(blob_key(r["sha256"])).decode(errors="replace")
        for role, r in pinned.items()
        if r["kind"] == "script"
    }
    return FlowVersion(
        ref=f"{row['name']}@{row['version']}",
        text=row["text"],
        pins={_ref(r): r["sha256"] for r in pinned.values()},
        model=ModelSignature.model_validate(json.loads(model["signature"])) if model else None,
        scripts=scripts,
    )


def diff(fleet: Fleet, req: api.FlowDiffRequest) -> api.FlowDiffResult:
    old, new = _version_for_diff(fleet, req.a), _version_for_diff(fleet, req.b)
    result = diff_flows(old, new)
    return api.FlowDiffResult(
        a=old.ref, b=new.ref, diff=result.model_dump(mode="json"), text=render_text(result)
    )
