"""The condition language of actions: a tokenizer and a recursive-descent parser, no `eval`.

    expr    := or
    or      := and ("or" and)*
    and     := not ("and" not)*
    not     := "not" not | compare
    compare := operand (("<" | "<=" | ">" | ">=" | "==" | "!=") operand)?
    operand := NUMBER | STRING | "true" | "false" | PATH | "(" expr ")"
    PATH    := NAME ("." (NAME | INTEGER))*

Why a parser of our own rather than `ast.parse(mode="eval")` with a whitelist: the grammar is
ten lines, every error points at a column of the text the user wrote, and nothing of Python's
meaning leaks in (chained comparisons, `is`, truthiness of strings, calls, attribute access on
objects). A parsed expression is compiled to a closure that evaluates a whole result batch at
once with numpy: each comparison is one vectorised operation over a column.

Paths name result fields: an output (`score`, or `outputs.score`), a column of a 2-D output
(`probs.1`), `t`, `latency_us`, `model.name`, `model.version`, `model.sha256`. A comparison with
NaN is false, so a missing value never fires a rule. A bare path is true where it is non-zero.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.errors import ConfigError

Columns = Mapping[str, Any]  # path -> array (one row per result) or scalar

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<number>-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
      | (?P<string>"[^"\\]*"|'[^'\\]*')
      | (?P<op><=|>=|==|!=|<|>|\(|\))
      | (?P<path>[A-Za-z_][A-Za-z0-9_]*(?:\.(?:[A-Za-z_][A-Za-z0-9_]*|\d+))*)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "true", "false"}
_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}


class ExprError(ConfigError):
    """An expression that does not parse; the message shows where."""


class EvalError(Exception):
    """An expression that parsed but cannot be evaluated on this batch (a missing field)."""


@dataclass(frozen=True)
class Token:
    kind: str  # number, string, op, path, keyword, end
    text: str
    pos: int


def tokenize(text: str) -> list[Token]:
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.lastgroup is None:
            column = pos + len(text[pos:]) - len(text[pos:].lstrip())
            raise ExprError(_where(text, column, f"unexpected character {text[column]!r}"))
        group = m.lastgroup
        kind, value = group, m.group(group)
        if kind == "path" and value in _KEYWORDS:
            kind = "keyword"
        tokens.append(Token(kind, value, m.start(group)))
        pos = m.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


def _where(text: str, pos: int, message: str) -> str:
    return f"in expression {text!r} at column {pos + 1}: {message}"


# --------------------------------------------------------------------------- syntax tree


@dataclass(frozen=True)
class Node:
    boolean: bool  # whether the node yields a truth value (comparisons, and/or/not, true/false)


@dataclass(frozen=True)
class Const(Node):
    value: Any


@dataclass(frozen=True)
class Path(Node):
    path: str


@dataclass(frozen=True)
class Compare(Node):
    op: str
    left: Node
    right: Node


@dataclass(frozen=True)
class Not(Node):
    operand: Node


@dataclass(frozen=True)
class Logic(Node):
    op: str  # and / or
    operands: tuple[Node, ...]


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def fail(self, token: Token, message: str) -> ExprError:
        return ExprError(_where(self.text, token.pos, message))

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise self.fail(self.peek(), "the expression is empty")
        node = self.logic("or")
        token = self.peek()
        if token.kind != "end":
            raise self.fail(token, f"expected 'and', 'or' or the end, got {token.text!r}")
        return self.truth(node, self.tokens[0])

    def truth(self, node: Node, token: Token) -> Node:
        if isinstance(node, Const) and not node.boolean:
            raise self.fail(token, f"{node.value!r} is not a condition (compare it with something)")
        return node

    def logic(self, op: str) -> Node:
        inner: Callable[[], Node] = self.conjunction if op == "or" else self.negation
        first = self.peek()
        operands = [self.truth(inner(), first)]
        while self.peek().kind == "keyword" and self.peek().text == op:
            self.take()
            token = self.peek()
            operands.append(self.truth(inner(), token))
        return operands[0] if len(operands) == 1 else Logic(True, op, tuple(operands))

    def conjunction(self) -> Node:
        return self.logic("and")

    def negation(self) -> Node:
        token = self.peek()
        if token.kind == "keyword" and token.text == "not":
            self.take()
            operand_token = self.peek()
            return Not(True, self.truth(self.negation(), operand_token))
        return self.compare()

    def compare(self) -> Node:
        left = self.operand()
        token = self.peek()
        if token.kind == "op" and token.text in _COMPARE:
            self.take()
            right = self.operand()
            nxt = self.peek()
            if nxt.kind == "op" and nxt.text in _COMPARE:
                raise self.fail(nxt, "chained comparisons are not allowed: join them with 'and'")
            for side in (left, right):
                if isinstance(side, (Compare, Logic, Not)):
                    raise self.fail(token, "cannot compare a condition: use 'and'/'or'/'not'")
            if isinstance(left, Const) and isinstance(right, Const):
                raise self.fail(token, "a comparison needs at least one result field")
            return Compare(True, token.text, left, right)
        return left

    def operand(self) -> Node:
        token = self.take()
        if token.kind == "number":
            value = float(token.text)
            return Const(
                False, int(value) if value.is_integer() and "." not in token.text else value
            )
        if token.kind == "string":
            return Const(False, token.text[1:-1])
        if token.kind == "keyword" and token.text in ("true", "false"):
            return Const(True, token.text == "true")
        if token.kind == "path":
            return Path(False, token.text)
        if token.kind == "op" and token.text == "(":
            node = self.logic("or")
            close = self.take()
            if close.text != ")":
                raise self.fail(close, f"expected ')', got {close.text or 'the end'!r}")
            return node
        got = "the end" if token.kind == "end" else repr(token.text)
        raise self.fail(
            token, f"expected a number, a string, true, false, a field or '(', got {got}"
        )


def parse(text: str) -> Node:
    """Parse a condition; raise `ExprError` (a ConfigError) naming the expression and column."""
    if not isinstance(text, str):
        raise ExprError(f"an expression must be a string, got {text!r}")
    return _Parser(text).parse()


def paths(node: Node) -> set[str]:
    """Every field an expression reads."""
    if isinstance(node, Path):
        return {node.path}
    if isinstance(node, Compare):
        return paths(node.left) | paths(node.right)
    if isinstance(node, Not):
        return paths(node.operand)
    if isinstance(node, Logic):
        return set().union(*(paths(o) for o in node.operands))
    return set()


# --------------------------------------------------------------------------- evaluation


def lookup(columns: Columns, path: str) -> Any:
    """A field by path: `score`, `outputs.score`, `probs.1` (a column of a 2-D output)."""
    if path in columns:
        return columns[path]
    parts = path.split(".")
    if parts[0] == "outputs" and len(parts) > 1:
        return lookup(columns, ".".join(parts[1:]))
    for cut in range(len(parts) - 1, 0, -1):
        head, rest = ".".join(parts[:cut]), parts[cut:]
        if head in columns and all(p.isdigit() for p in rest):
            arr = np.asarray(columns[head])
            if arr.ndim != 1 + len(rest) or any(
                int(p) >= arr.shape[k + 1] for k, p in enumerate(rest)
            ):
                raise EvalError(f"field {path!r}: {head!r} has shape {arr.shape}")
            index: tuple[Any, ...] = (slice(None), *(int(p) for p in rest))
            return arr[index]
    raise EvalError(f"field {path!r} is not in the results (fields: {', '.join(sorted(columns))})")


def _truthy(value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind == "b":
        return arr
    if arr.dtype.kind in "iuf":
        with np.errstate(invalid="ignore"):
            return np.asarray((arr != 0) & ~np.isnan(arr.astype(np.float64)))
    raise EvalError(f"a field of type {arr.dtype} is not a condition: compare it with something")


def _value(node: Node, columns: Columns) -> Any:
    if isinstance(node, Const):
        return node.value
    assert isinstance(node, Path)
    return lookup(columns, node.path)


def _eval(node: Node, columns: Columns) -> Any:
    if isinstance(node, Const):
        return np.bool_(node.value)
    if isinstance(node, Path):
        return _truthy(lookup(columns, node.path))
    if isinstance(node, Not):
        return np.logical_not(_eval(node.operand, columns))
    if isinstance(node, Logic):
        combine = np.logical_and if node.op == "and" else np.logical_or
        out = _eval(node.operands[0], columns)
        for operand in node.operands[1:]:
            out = combine(out, _eval(operand, columns))
        return out
    assert isinstance(node, Compare)
    left, right = _value(node.left, columns), _value(node.right, columns)
    try:
        with np.errstate(invalid="ignore"):
            out = _COMPARE[node.op](np.asarray(left), np.asarray(right))
    except (TypeError, np.exceptions.DTypePromotionError) as exc:
        raise EvalError(f"cannot compare {node.left} {node.op} {node.right}: {exc}") from None
    out = np.asarray(out)
    if out.dtype.kind != "b":
        raise EvalError(f"comparison {node.op} gave {out.dtype}, not a truth value")
    return out


@dataclass(frozen=True)
class Condition:
    """A parsed condition, evaluated over every row of a batch at once."""

    text: str
    tree: Node

    @classmethod
    def compile(cls, text: str) -> Condition:
        return cls(text, parse(text))

    def __call__(self, columns: Columns, n: int) -> np.ndarray:
        """One truth value per row (`n` rows); raises `EvalError` for a missing field."""
        return np.broadcast_to(np.asarray(_eval(self.tree, columns), dtype=bool), (n,))

    def __str__(self) -> str:
        return self.text
