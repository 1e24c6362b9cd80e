"""Read a site.yaml and its flow files; collect every error with its file, line and key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgefleet.flow import FlowSpec, load_flow
from edgefleet.site.derive import Instance, Origin, build, derive, validate_instance
from edgefleet.site.model import SiteSpec
from shared.config import read_yaml, validate
from shared.errors import ConfigError


@dataclass
class LoadedSite:
    """A validated site: the spec, its flows (paths made absolute) and where each came from."""

    path: Path
    spec: SiteSpec
    flows: list[FlowSpec]
    origin: Origin

    def instances(self) -> dict[str, Instance]:
        """Every instance with its validated config (`ConfigError` lists every error)."""
        return derive(self.spec, self.flows, self.origin)


def _read(path: Path) -> tuple[SiteSpec | None, list[FlowSpec], Origin, list[str]]:
    errors: list[str] = []
    origin = Origin(site_file=str(path), site_dir=path.resolve().parent)
    try:
        data, lines = read_yaml(path)
        origin.lines[str(path)] = lines
        spec = validate(SiteSpec, data if data is not None else {}, str(path), lines)
    except ConfigError as exc:
        return None, [], origin, [str(exc)]
    flows: list[FlowSpec] = []
    for i, rel in enumerate(spec.flows):
        file = rel if rel.is_absolute() else origin.site_dir / rel
        shown = str(file if rel.is_absolute() else path.parent / rel)
        if not file.exists():
            line = lines.get(("flows", str(i)))
            errors.append(f"{path}:{line}: flows.{i}: no such flow file: {shown}")
            continue
        try:
            flow = load_flow(file)
        except ConfigError as exc:
            errors.append(str(exc).replace(str(file), shown))
            continue
        if flow.name in origin.flow_files:
            errors.append(
                f"{shown}: name: flow {flow.name!r} is also the name of "
                f"{origin.flow_files[flow.name]}"
            )
            continue
        origin.flow_files[flow.name] = shown
        origin.lines[shown] = read_yaml(file)[1]
        flows.append(flow)
    return spec, flows, origin, errors


def check_site(path: Path) -> list[str]:
    """Every error of site.yaml, its flow files and the instance configs derived from them,
    one line each: `file:line: key: what is wrong`. Empty when the site is valid."""
    spec, flows, origin, errors = _read(path)
    if spec is None:
        return errors
    try:
        instances = build(spec, flows, origin)
    except ConfigError as exc:
        return [*errors, str(exc)]
    names = [i.name for i in instances]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        errors.append(f"{path}: instance names repeat: {dup} (rename a source or a flow)")
    for inst in instances:
        errors.extend(validate_instance(inst, origin)[1])
    return errors


def load_site(path: Path) -> LoadedSite:
    """Read and validate site.yaml and its flows; `ConfigError` lists every error."""
    path = Path(path)
    spec, flows, origin, errors = _read(path)
    if spec is None or errors:
        raise ConfigError("\n".join(errors))
    return LoadedSite(path, spec, flows, origin)
