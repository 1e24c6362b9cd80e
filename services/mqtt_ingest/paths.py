"""Field paths into decoded payloads: `a.b[2].c` → ("a", "b", 2, "c")."""

from __future__ import annotations

import re
from typing import Any

_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")

Path = tuple[str | int, ...]


def parse_path(text: str) -> Path:
    """Compile a path once; raise ValueError naming what is wrong."""
    parts: list[str | int] = []
    pos = 0
    while pos < len(text):
        if text[pos] == "." and parts and pos + 1 < len(text) and text[pos + 1] != "[":
            pos += 1
        match = _PART.match(text, pos)
        if not match:
            raise ValueError(f"bad field path {text!r} at character {pos + 1}")
        parts.append(match.group(1) if match.group(1) is not None else int(match.group(2)))
        pos = match.end()
    if not parts:
        raise ValueError("empty field path")
    return tuple(parts)


_MISSING = object()


def resolve(data: Any, path: Path) -> Any:
    """The value at `path`, or raise KeyError naming the first part that is absent."""
    node = data
    for part in path:
        if isinstance(part, int):
            if not isinstance(node, (list, tuple)) or part >= len(node):
                raise KeyError(f"[{part}]")
            node = node[part]
        else:
            if not isinstance(node, dict):
                raise KeyError(part)
            node = node.get(part, _MISSING)
            if node is _MISSING:
                raise KeyError(part)
    return node


def render(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out
