"""Label selectors in the syntax Kubernetes users know: `role=pump,plant in (p1,p2),!retired`.

Requirements are joined by commas and must all hold (an empty selector matches every node):

    key=value  key==value  key!=value  key in (a,b)  key notin (a,b)  key  !key

`!=` and `notin` also match a node without the key, as in Kubernetes. Keys and values are
label words: letters, digits, '-', '_', '.' (a key may have a `prefix/`); a value may be empty.
`SelectorError` names the column (1-based) where the text stops making sense.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from shared.errors import EdgefleetError

Op = Literal["=", "!=", "in", "notin", "exists", "!exists"]

_WORD = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?")
_KEY = re.compile(r"([A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?/)?" + _WORD.pattern)
MAX_WORD = 63


class SelectorError(EdgefleetError):
    def __init__(self, text: str, column: int, message: str) -> None:
        super().__init__(f"selector {text!r}, column {column}: {message}")
        self.column = column


@dataclass(frozen=True)
class Requirement:
    key: str
    op: Op
    values: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.op == "exists":
            return self.key
        if self.op == "!exists":
            return f"!{self.key}"
        if self.op in ("in", "notin"):
            return f"{self.key} {self.op} ({','.join(self.values)})"
        return f"{self.key}{self.op}{self.values[0]}"

    def matches(self, labels: dict[str, str]) -> bool:
        return self.why(labels)[0]

    def why(self, labels: dict[str, str]) -> tuple[bool, str]:
        """Whether the labels satisfy this requirement, and a few words saying why."""
        has = self.key in labels
        value = labels.get(self.key)
        shown = f"{self.key}={value}" if has else f"no label {self.key}"
        if self.op == "exists":
            return has, f"has {shown}" if has else shown
        if self.op == "!exists":
            return not has, shown if not has else f"has {shown}"
        if self.op in ("=", "in"):
            ok = has and value in self.values
            return ok, shown + ("" if ok or not has else f", not {_alternatives(self.values)}")
        ok = not has or value not in self.values  # != and notin
        return ok, shown + (" (the label is absent)" if not has else "")


def _alternatives(values: tuple[str, ...]) -> str:
    return values[0] if len(values) == 1 else "one of " + ", ".join(values)


@dataclass(frozen=True)
class Selector:
    text: str
    requirements: tuple[Requirement, ...]

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)

    def matches(self, labels: dict[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)


@dataclass(frozen=True)
class Explained:
    requirement: str
    ok: bool
    reason: str


def explain(selector: Selector | str, labels: dict[str, str]) -> list[Explained]:
    """For each requirement: does the node satisfy it, and why."""
    sel = parse(selector) if isinstance(selector, str) else selector
    out = []
    for r in sel.requirements:
        ok, reason = r.why(labels)
        out.append(Explained(str(r), ok, reason))
    return out


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, message: str, pos: int | None = None) -> SelectorError:
        return SelectorError(self.text, (self.pos if pos is None else pos) + 1, message)

    def skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def at_end(self) -> bool:
        self.skip()
        return self.pos >= len(self.text)

    def peek(self, token: str) -> bool:
        self.skip()
        return self.text.startswith(token, self.pos)

    def take(self, token: str) -> bool:
        if self.peek(token):
            self.pos += len(token)
            return True
        return False

    def word(self, pattern: re.Pattern[str], what: str) -> str:
        self.skip()
        m = pattern.match(self.text, self.pos)
        if m is None:
            found = self.text[self.pos : self.pos + 1] or "the end"
            raise self.fail(f"expected {what}, found {found!r}")
        name = m.group(0).rsplit("/", 1)[-1]
        if len(name) > MAX_WORD:
            raise self.fail(f"{what} longer than {MAX_WORD} characters")
        self.pos = m.end()
        return m.group(0)

    def value(self) -> str:
        self.skip()
        if self.pos >= len(self.text) or self.text[self.pos] in ",)":
            return ""  # an empty value is allowed (k8s)
        return self.word(_WORD, "a label value")

    def values(self) -> tuple[str, ...]:
        if not self.take("("):
            raise self.fail("expected '(' and a list of values, e.g. (p1,p2)")
        values = [self.word(_WORD, "a label value")]
        while self.take(","):
            values.append(self.word(_WORD, "a label value"))
        if not self.take(")"):
            raise self.fail("expected ',' or ')' in the list of values")
        return tuple(values)


def parse(text: str) -> Selector:
    s = _Scanner(text)
    requirements: list[Requirement] = []
    if s.at_end():
        return Selector(text, ())
    while True:
        requirements.append(_requirement(s))
        if s.at_end():
            return Selector(text, tuple(requirements))
        if not s.take(","):
            raise s.fail("expected ',' between requirements or the end of the selector")


def _requirement(s: _Scanner) -> Requirement:
    if s.peek("!"):
        bang = s.pos
        s.pos += 1
        if s.peek("="):
            raise s.fail("expected a label key before '!='", bang)
        return Requirement(s.word(_KEY, "a label key after '!'"), "!exists")
    key = s.word(_KEY, "a label key")
    if s.take("=="):
        return Requirement(key, "=", (s.value(),))
    if s.take("!="):
        return Requirement(key, "!=", (s.value(),))
    if s.take("="):
        return Requirement(key, "=", (s.value(),))
    s.skip()
    start = s.pos
    if s.at_end() or s.peek(","):
        return Requirement(key, "exists")
    m = re.compile(r"(notin|in)\b").match(s.text, s.pos)
    if m is None:
        raise s.fail("expected '=', '!=', 'in', 'notin', ',' or the end after the key", start)
    s.pos = m.end()
    op: Op = "in" if m.group(1) == "in" else "notin"
    return Requirement(key, op, s.values())
