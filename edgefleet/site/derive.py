"""From a site and its flows to one config per service instance (pure: no I/O, no processes).

| instance | service | from |
|---|---|---|
| `modbus-{source}` / `opcua-{source}` / `ingest-{source}` | the adapter | a source of site.yaml |
| `aligner-{flow}` | aligner | the flow's `name`, `align`; site, then flow `aligner` |
| `inference-{flow}` | inference | the flow's `model` (only if it has one) |
| `actuator-{flow}` | actuator | the flow's `actions` (only if it has some) + site `actuator` |
| `forwarder` | forwarder | every flow's `sinks` (only if one has some) + site `forwarder` |

Every config is validated with its service's config model (`SPEC.config`); an error is reported
at the line and key of site.yaml or of the flow file the value came from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from edgefleet.flow import FlowSpec
from edgefleet.site.model import ADAPTERS, SiteSpec, SourceSpec, service_config_model
from services.aligner.config import FLOW_KEYS
from shared.config import resolve_paths
from shared.errors import ConfigError

Loc = tuple[str, ...]
# A key of an instance config -> (the file it came from, the key in that file).
Locate = Callable[[Loc], tuple[str, Loc]]


@dataclass
class Instance:
    """One service instance to run: `service` (a key of SERVICES) and its config as a dict."""

    name: str
    service: str
    config: dict[str, Any]
    locate: Locate = field(repr=False, compare=False)


@dataclass
class Origin:
    """Where a site's files are and the line of each of their keys (for error messages)."""

    site_file: str = "site.yaml"
    site_dir: Path = field(default_factory=Path.cwd)
    flow_files: dict[str, str] = field(default_factory=dict)  # flow name -> its file
    lines: dict[str, Mapping[Loc, int]] = field(default_factory=dict)  # file -> key lines


def _common(site: SiteSpec, instance: str, log_level: str | None = None) -> dict[str, Any]:
    broker = site.broker.model_dump(mode="json", exclude_unset=True, exclude={"start_local"})
    return {
        "site": site.site,
        "instance": instance,
        "prefix": site.prefix,
        "broker": broker,
        "timings": site.timings.model_dump(mode="json", exclude_unset=True),
        "log_level": log_level or site.log_level,
    }


def _source(site: SiteSpec, index: int, src: SourceSpec, origin: Origin) -> Instance:
    service, _ = ADAPTERS[src.kind]
    keys = src.adapter_keys
    if src.kind == "mqtt":  # an input's `source` defaults to the source's name
        inputs = keys.get("inputs")
        if isinstance(inputs, list):
            keys["inputs"] = [
                {"source": src.name, **i} if isinstance(i, dict) else i for i in inputs
            ]
    else:
        keys["source"] = src.name
    config = {**_common(site, src.instance, src.log_level), **keys}
    here: Loc = ("sources", str(index))

    def locate(loc: Loc) -> tuple[str, Loc]:
        if loc[:1] == ("source",):
            return origin.site_file, (*here, "name")
        if loc and loc[0] in keys:
            return origin.site_file, (*here, *loc)
        return origin.site_file, here

    return Instance(src.instance, service, config, locate)


def _in_flow(origin: Origin, flow: FlowSpec, mapping: Callable[[Loc], Loc]) -> Locate:
    def locate(loc: Loc) -> tuple[str, Loc]:
        return origin.flow_files.get(flow.name, f"flow {flow.name}"), mapping(loc)

    return locate


def _flow_instances(site: SiteSpec, flow: FlowSpec, origin: Origin) -> list[Instance]:
    out = []
    own = flow.aligner.model_dump(mode="json", exclude_unset=True) if flow.aligner else {}
    aligner = {
        **_common(site, f"aligner-{flow.name}"),
        **site.aligner.model_dump(mode="json", exclude_unset=True),
        **own,
        "flow": _flow_dict(flow),
    }

    def aligner_loc(loc: Loc) -> Loc:
        if loc[:1] == ("flow",):
            return loc[1:]
        return ("aligner", *loc) if loc[:1] and loc[0] in own else ()

    out.append(
        Instance(f"aligner-{flow.name}", "aligner", aligner, _in_flow(origin, flow, aligner_loc))
    )
    if flow.model is not None:
        settings = flow.inference_settings()

        def model_loc(loc: Loc) -> Loc:
            if loc[:1] == ("features",):
                return ("align", "features", *loc[1:])
            if loc[:1] == ("window",):
                return ("align", "window")
            if loc[:1] == ("model",) or (loc and loc[0] in settings and loc[0] != "flow"):
                return ("model", *loc[1:]) if loc[:1] == ("model",) else ("model", *loc)
            return ()

        out.append(
            Instance(
                f"inference-{flow.name}",
                "inference",
                {**_common(site, f"inference-{flow.name}"), **settings},
                _in_flow(origin, flow, model_loc),
            )
        )
    if flow.actions:
        switch = site.actuator.model_dump(mode="json", exclude_unset=True)
        state_dir = Path(switch.get("state_dir", "var/actuator"))  # holds survive restarts here
        switch["state_dir"] = str(
            state_dir if state_dir.is_absolute() else origin.site_dir / state_dir
        )
        actions = [a.model_dump(mode="json", exclude_unset=True) for a in flow.actions]
        config = {
            **_common(site, f"actuator-{flow.name}"),
            **switch,
            "flow": flow.name,
            "actions": actions,
        }
        out.append(
            Instance(
                f"actuator-{flow.name}",
                "actuator",
                config,
                _in_flow(origin, flow, lambda loc: loc if loc[:1] == ("actions",) else ()),
            )
        )
    return out


def _flow_dict(flow: FlowSpec) -> dict[str, Any]:
    """The part of the flow the aligner takes inline: its name and align section."""
    return flow.model_dump(mode="json", exclude_unset=True, include=set(FLOW_KEYS))


def _forwarder(site: SiteSpec, flows: Sequence[FlowSpec], origin: Origin) -> Instance | None:
    with_sinks = [f for f in flows if f.sinks]
    if not with_sinks:
        return None
    sinks: dict[str, tuple[FlowSpec, int, dict[str, Any]]] = {}
    for flow in with_sinks:
        for j, sink in enumerate(flow.sinks):
            data = sink.model_dump(mode="json", exclude_unset=True)
            data["name"] = sink.name
            seen = sinks.get(sink.name)
            if seen is None:
                sinks[sink.name] = (flow, j, data)
            elif seen[2] != data:
                where = origin.flow_files.get(flow.name, flow.name)
                first = origin.flow_files.get(seen[0].name, seen[0].name)
                raise ConfigError(
                    f"{where}: sinks.{j}.name: sink {sink.name!r} is also declared, "
                    f"differently, in {first}; give each sink its own name"
                )
    settings = site.forwarder.model_dump(mode="json", exclude_unset=True)
    queue_dir = Path(settings.get("queue_dir", "var/forwarder"))
    settings["queue_dir"] = str(
        queue_dir if queue_dir.is_absolute() else origin.site_dir / queue_dir
    )
    config = {
        **_common(site, "forwarder"),
        **settings,
        "flows": [f.name for f in with_sinks],
        "sinks": [data for _, _, data in sinks.values()],
    }
    order = list(sinks.values())

    def locate(loc: Loc) -> tuple[str, Loc]:
        if loc[:1] == ("sinks",) and len(loc) > 1 and loc[1].isdigit() and int(loc[1]) < len(order):
            flow, j, _ = order[int(loc[1])]
            return origin.flow_files.get(flow.name, flow.name), ("sinks", str(j), *loc[2:])
        if loc and loc[0] in settings:
            return origin.site_file, ("forwarder", *loc)
        return origin.site_file, ()

    return Instance("forwarder", "forwarder", config, locate)


def build(
    site: SiteSpec, flows: Sequence[FlowSpec], origin: Origin | None = None
) -> list[Instance]:
    """Every instance of the site, its config not yet validated."""
    origin = origin or Origin()
    out = [_source(site, i, src, origin) for i, src in enumerate(site.sources)]
    for flow in flows:
        out.extend(_flow_instances(site, flow, origin))
    forwarder = _forwarder(site, flows, origin)
    if forwarder is not None:
        out.append(forwarder)
    return out


def validate_instance(inst: Instance, origin: Origin) -> tuple[BaseModel | None, list[str]]:
    """Validate one instance config with its service's model; errors point into the user's
    files. Relative paths in a source's keys start at site.yaml's folder."""
    model = service_config_model(inst.service)
    if model is None:
        file, loc = inst.locate(("kind",))
        line = _line(origin, file, loc)
        return None, [
            f"{file}:{line}: {'.'.join(loc)}: the {inst.service} service is not part "
            "of this edgefleet build"
        ]
    try:
        config = model.model_validate(inst.config)
    except ValidationError as exc:
        return None, [_mapped(err, inst, origin) for err in exc.errors()]
    resolve_paths(config, origin.site_dir)
    return config, []


def _line(origin: Origin, file: str, loc: Loc) -> int | None:
    lines = origin.lines.get(file, {})
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def _mapped(err: Any, inst: Instance, origin: Origin) -> str:
    loc = tuple(str(p) for p in err["loc"])
    file, file_loc = inst.locate(loc)
    line = _line(origin, file, file_loc)
    where = f"{file}:{line}" if line else file
    key = ".".join(file_loc) or "(top level)"
    message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
    message = message.removeprefix("Value error, ")
    return f"{where}: {key}: {message} ({inst.name})"


def derive(
    site: SiteSpec, flows: Sequence[FlowSpec], origin: Origin | None = None
) -> dict[str, Instance]:
    """Every instance of the site with a validated config; `ConfigError` lists every error."""
    origin = origin or Origin()
    instances = build(site, flows, origin)
    errors: list[str] = []
    names = [i.name for i in instances]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        errors.append(f"{origin.site_file}: instance names repeat: {dup} (rename a source or flow)")
    out: dict[str, Instance] = {}
    for inst in instances:
        config, errs = validate_instance(inst, origin)
        errors.extend(errs)
        if config is not None:
            dumped = config.model_dump(mode="json", exclude_unset=True)
            out[inst.name] = Instance(inst.name, inst.service, dumped, inst.locate)
    if errors:
        raise ConfigError("\n".join(errors))
    return out
