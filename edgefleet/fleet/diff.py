"""`flow diff NAME@A NAME@B`: one view over everything that changed between two flow versions.

The flow file as a unified diff; the pinned library resources (which version, which digest);
the model (digest, inputs and outputs with their dtypes and shapes, opsets and producer,
features added, removed or reordered, training statistics per feature, threshold, classes);
the scripts as unified diffs. Pure functions: the caller reads the versions from its store and
gets a typed result, its JSON (pydantic) and a rendering for a terminal (rich).
"""

from __future__ import annotations

import difflib
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from services.inference.signature import (
    CLASSES_KEY,
    FEATURES_KEY,
    THRESHOLD_KEY,
    TRAIN_STATS_KEY,
    FeatureStats,
    ModelSignature,
    TensorSpec,
)

Status = Literal["added", "removed", "changed"]
_PARSED_KEYS = {FEATURES_KEY, TRAIN_STATS_KEY, THRESHOLD_KEY, CLASSES_KEY}


@dataclass(frozen=True)
class FlowVersion:
    """One flow version as the fleet stores it."""

    ref: str  # "pump-anomaly@3"
    text: str  # the flow file as the user wrote it
    pins: dict[str, str]  # every pinned library resource: {"pump-ae@3": sha256}
    model: ModelSignature | None = None  # the signature of the pinned model, if the flow has one
    scripts: dict[str, str] = field(default_factory=dict)  # library name → script text


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PinChange(_Frozen):
    """A library resource pinned at another version or digest, added or dropped."""

    name: str
    status: Status
    old: str | None = None  # name@N
    new: str | None = None
    old_sha256: str | None = None
    new_sha256: str | None = None


class TensorChange(_Frozen):
    side: Literal["input", "output"]
    name: str
    status: Status
    old: TensorSpec | None = None
    new: TensorSpec | None = None


class FieldChange(_Frozen):
    """A scalar part of the signature: an opset, the producer, the IR version, a metadata key."""

    field: str
    old: str | None
    new: str | None


class FeatureChange(_Frozen):
    old: list[str] | None
    new: list[str] | None
    added: list[str]
    removed: list[str]
    reordered: bool  # the features both name are in another order: inputs would be swapped


class StatDelta(_Frozen):
    """The training statistics of one feature in both versions."""

    feature: str
    old: FeatureStats
    new: FeatureStats
    mean_delta: float | None
    std_delta: float | None
    shift_sigma: float | None  # (new mean - old mean) / old std: how far the training data moved


class ThresholdChange(_Frozen):
    old: float | None
    new: float | None
    delta: float | None


class ModelDiff(_Frozen):
    old_ref: str | None  # the pin whose digest is the model's
    new_ref: str | None
    old_sha256: str | None
    new_sha256: str | None
    tensors: list[TensorChange]
    fields: list[FieldChange]
    features: FeatureChange | None  # None: the same features (or none on either side)
    train_stats: list[StatDelta]  # every feature with statistics on both sides
    threshold: ThresholdChange | None  # None: the same threshold

    @property
    def digest_changed(self) -> bool:
        return self.old_sha256 != self.new_sha256

    @property
    def changed(self) -> bool:
        stats = any(d.old != d.new for d in self.train_stats)
        return self.digest_changed or bool(
            self.tensors or self.fields or self.features or self.threshold or stats
        )


class ScriptDiff(_Frozen):
    name: str
    status: Status
    old_ref: str | None
    new_ref: str | None
    diff: str  # unified diff


class FlowDiff(_Frozen):
    """Everything that changed from `old` to `new`; `model_dump_json()` is its JSON form."""

    v: Literal[1] = 1
    old: str
    new: str
    flow_file: str  # unified diff of the flow file; "" when the text is the same
    pins: list[PinChange]
    model: ModelDiff | None  # None when neither version has a model
    scripts: list[ScriptDiff]

    @property
    def changed(self) -> bool:
        model = self.model is not None and self.model.changed
        return bool(self.flow_file or self.pins or self.scripts) or model


# --- computing ------------------------------------------------------------------------------


def diff_flows(old: FlowVersion, new: FlowVersion) -> FlowDiff:
    model = None
    if old.model is not None or new.model is not None:
        model = diff_models(old.model, new.model, _model_ref(old), _model_ref(new))
    return FlowDiff(
        old=old.ref,
        new=new.ref,
        flow_file=unified(old.text, new.text, old.ref, new.ref),
        pins=diff_pins(old.pins, new.pins),
        model=model,
        scripts=diff_scripts(old, new),
    )


def unified(old: str, new: str, old_name: str, new_name: str) -> str:
    """A unified diff of two texts ("" when equal); a missing final newline is shown as such."""
    if old == new:
        return ""
    lines = difflib.unified_diff(
        _lines(old), _lines(new), fromfile=old_name, tofile=new_name, lineterm=""
    )
    return "\n".join(lines) + "\n"


def _lines(text: str) -> list[str]:
    lines = text.splitlines()
    if text and not text.endswith("\n"):
        lines[-1] += "  (no newline at end of file)"
    return lines


def diff_pins(old: dict[str, str], new: dict[str, str]) -> list[PinChange]:
    a, b = _by_name(old), _by_name(new)
    out = []
    for name in _union(a, b):
        (ra, sa), (rb, sb) = a.get(name, (None, None)), b.get(name, (None, None))
        if (ra, sa) == (rb, sb):
            continue
        status: Status = "added" if ra is None else "removed" if rb is None else "changed"
        out.append(
            PinChange(name=name, status=status, old=ra, new=rb, old_sha256=sa, new_sha256=sb)
        )
    return out


def diff_scripts(old: FlowVersion, new: FlowVersion) -> list[ScriptDiff]:
    pins_a, pins_b = _by_name(old.pins), _by_name(new.pins)
    out = []
    for name in _union(old.scripts, new.scripts):
        ta, tb = old.scripts.get(name), new.scripts.get(name)
        if ta == tb:
            continue
        ref_a, ref_b = pins_a.get(name, (None, None))[0], pins_b.get(name, (None, None))[0]
        status: Status = "added" if ta is None else "removed" if tb is None else "changed"
        text = unified(
            ta or "", tb or "", ref_a or f"{old.ref}:{name}", ref_b or f"{new.ref}:{name}"
        )
        out.append(ScriptDiff(name=name, status=status, old_ref=ref_a, new_ref=ref_b, diff=text))
    return out


def diff_models(
    old: ModelSignature | None,
    new: ModelSignature | None,
    old_ref: str | None = None,
    new_ref: str | None = None,
) -> ModelDiff:
    return ModelDiff(
        old_ref=old_ref,
        new_ref=new_ref,
        old_sha256=old.sha256 if old else None,
        new_sha256=new.sha256 if new else None,
        tensors=[
            *_tensors("input", old.inputs if old else [], new.inputs if new else []),
            *_tensors("output", old.outputs if old else [], new.outputs if new else []),
        ],
        fields=_fields(old, new),
        features=diff_features(old.features if old else None, new.features if new else None),
        train_stats=diff_train_stats(
            old.train_stats if old else None, new.train_stats if new else None
        ),
        threshold=_threshold(old.threshold if old else None, new.threshold if new else None),
    )


def diff_features(old: list[str] | None, new: list[str] | None) -> FeatureChange | None:
    if old == new:
        return None
    a, b = old or [], new or []
    common_a = [f for f in a if f in b]
    common_b = [f for f in b if f in a]
    return FeatureChange(
        old=old,
        new=new,
        added=[f for f in b if f not in a],
        removed=[f for f in a if f not in b],
        reordered=common_a != common_b,
    )


def diff_train_stats(
    old: dict[str, FeatureStats] | None, new: dict[str, FeatureStats] | None
) -> list[StatDelta]:
    a, b = old or {}, new or {}
    out = []
    for name in [f for f in b if f in a]:
        sa, sb = a[name], b[name]
        shift = None
        if sa.mean is not None and sb.mean is not None and sa.std:
            shift = (sb.mean - sa.mean) / sa.std
        out.append(
            StatDelta(
                feature=name,
                old=sa,
                new=sb,
                mean_delta=_delta(sa.mean, sb.mean),
                std_delta=_delta(sa.std, sb.std),
                shift_sigma=shift,
            )
        )
    return out


def _threshold(old: float | None, new: float | None) -> ThresholdChange | None:
    return None if old == new else ThresholdChange(old=old, new=new, delta=_delta(old, new))


def _delta(old: float | None, new: float | None) -> float | None:
    return None if old is None or new is None else new - old


def _tensors(
    side: Literal["input", "output"], old: list[TensorSpec], new: list[TensorSpec]
) -> list[TensorChange]:
    a, b = {t.name: t for t in old}, {t.name: t for t in new}
    out = []
    for name in _union(a, b):
        ta, tb = a.get(name), b.get(name)
        if ta == tb:
            continue
        status: Status = "added" if ta is None else "removed" if tb is None else "changed"
        out.append(TensorChange(side=side, name=name, status=status, old=ta, new=tb))
    return out


def _fields(old: ModelSignature | None, new: ModelSignature | None) -> list[FieldChange]:
    def scalars(sig: ModelSignature | None) -> dict[str, str]:
        if sig is None:
            return {}
        out = {f"opset {d}": str(v) for d, v in sig.opset.items()}
        out["ir_version"] = str(sig.ir_version)
        out["producer"] = f"{sig.producer_name} {sig.producer_version}".strip()
        if sig.model_version is not None:
            out["model_version"] = str(sig.model_version)
        if sig.classes is not None:
            out["classes"] = str(sig.classes)
        for key, value in sig.metadata.items():
            if key not in _PARSED_KEYS:  # those have their own sections
                out[f"metadata {key}"] = value
        return out

    a, b = scalars(old), scalars(new)
    return [
        FieldChange(field=k, old=a.get(k), new=b.get(k))
        for k in _union(a, b)
        if a.get(k) != b.get(k)
    ]


def _model_ref(version: FlowVersion) -> str | None:
    if version.model is None:
        return None
    return next((ref for ref, sha in version.pins.items() if sha == version.model.sha256), None)


def _by_name(pins: dict[str, str]) -> dict[str, tuple[str, str]]:
    """{"pump-ae@3": sha} → {"pump-ae": ("pump-ae@3", sha)}."""
    return {ref.rpartition("@")[0] or ref: (ref, sha) for ref, sha in pins.items()}


def _union(a: Iterable[str], b: Iterable[str]) -> list[str]:
    """Keys of both, in first-seen order: the order the user wrote them in."""
    return list(dict.fromkeys([*a, *b]))


# --- rendering ------------------------------------------------------------------------------


def render_text(diff: FlowDiff, width: int = 100, color: bool = False) -> str:
    """The terminal rendering as a string (ANSI colours with `color`)."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system="standard" if color else None)
    console.print(render(diff))
    return buffer.getvalue()


def render(diff: FlowDiff) -> RenderableType:
    """rich renderables, for a console the caller owns: `Console().print(render(diff))`."""
    parts: list[RenderableType] = [Text(f"flow {diff.old} → {diff.new}", style="bold")]
    if not diff.changed:
        parts.append(Text("no changes"))
        return Group(*parts)
    parts.append(_section("flow file"))
    parts.append(_unified(diff.flow_file) if diff.flow_file else Text("  unchanged"))
    if diff.pins:
        parts.append(_section("library pins"))
        parts.append(_pins_table(diff.pins))
    if diff.model is not None:
        parts.append(_section("model"))
        parts.extend(_model(diff.model))
    if diff.scripts:
        parts.append(_section("scripts"))
        for s in diff.scripts:
            parts.append(Text(f"  {s.name}: {s.status} ({s.old_ref or '-'} → {s.new_ref or '-'})"))
            parts.append(_unified(s.diff))
    return Group(*parts)


def _section(title: str) -> Text:
    return Text(f"\n{title}", style="bold underline")


def _unified(text: str) -> Text:
    out = Text()
    for line in text.splitlines():
        style = (
            "bold"
            if line.startswith(("+++", "---"))
            else "green"
            if line.startswith("+")
            else "red"
            if line.startswith("-")
            else "cyan"
            if line.startswith("@@")
            else ""
        )
        out.append(line + "\n", style=style)
    return out


def _pins_table(pins: list[PinChange]) -> Table:
    table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
    for col in ("resource", "change", "old", "new"):
        table.add_column(col)
    for p in pins:
        old = f"{p.old} {_short(p.old_sha256)}" if p.old else "-"
        new = f"{p.new} {_short(p.new_sha256)}" if p.new else "-"
        table.add_row(p.name, p.status, old, new)
    return table


def _model(m: ModelDiff) -> list[RenderableType]:
    parts: list[RenderableType] = []
    if m.digest_changed:
        parts.append(
            Text(
                f"  {m.old_ref or 'no model'} {_short(m.old_sha256)} → "
                f"{m.new_ref or 'no model'} {_short(m.new_sha256)}"
            )
        )
    else:
        parts.append(Text(f"  same model {m.new_ref or ''} {_short(m.new_sha256)}".rstrip()))
    if m.tensors or m.fields:
        table = Table(box=None, pad_edge=False, header_style="bold")
        for col in ("signature", "old", "new"):
            table.add_column(col)
        for t in m.tensors:
            table.add_row(f"{t.side} {t.name}", _tensor(t.old), _tensor(t.new))
        for f in m.fields:
            table.add_row(f.field, f.old or "-", f.new or "-")
        parts.append(table)
    if m.features is not None:
        fc = m.features
        lines = [f"  features: {fc.old} → {fc.new}"]
        if fc.added:
            lines.append(f"    added: {', '.join(fc.added)}")
        if fc.removed:
            lines.append(f"    removed: {', '.join(fc.removed)}")
        if fc.reordered:
            lines.append("    reordered: the features both versions name are in another order")
        parts.append(Text("\n".join(lines)))
    changed_stats = [d for d in m.train_stats if d.old != d.new]
    if changed_stats:
        table = Table(box=None, pad_edge=False, header_style="bold", title_justify="left")
        for col in ("train stats", "mean", "Δ mean", "std", "Δ std", "shift"):
            table.add_column(col, justify="left" if col == "train stats" else "right")
        for d in changed_stats:
            table.add_row(
                d.feature,
                f"{_num(d.old.mean)} → {_num(d.new.mean)}",
                _signed(d.mean_delta),
                f"{_num(d.old.std)} → {_num(d.new.std)}",
                _signed(d.std_delta),
                f"{_signed(d.shift_sigma, 2)}σ" if d.shift_sigma is not None else "-",
            )
        parts.append(table)
    if m.threshold is not None:
        th = m.threshold
        delta = f" (Δ {_signed(th.delta)})" if th.delta is not None else ""
        parts.append(Text(f"  threshold: {_num(th.old)} → {_num(th.new)}{delta}"))
    return parts


def _tensor(t: TensorSpec | None) -> str:
    if t is None:
        return "-"
    dims = ", ".join("?" if d is None else str(d) for d in t.shape)
    return f"{t.dtype} [{dims}]"


def _short(sha: str | None) -> str:
    return f"sha256:{sha[:12]}" if sha else ""


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def _signed(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:+.{digits}g}"
