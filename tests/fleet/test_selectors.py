"""Label selectors: parsing, matching, explanations, errors with their column."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.fleet.selectors import Requirement, SelectorError, explain, parse

PUMP = {"role": "pump", "plant": "p1", "line": "2"}


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ("role=pump", PUMP, True),
        ("role==pump", PUMP, True),
        ("role=fan", PUMP, False),
        ("env!=dev", PUMP, True),  # absent key: != holds, as in Kubernetes
        ("role!=pump", PUMP, False),
        ("plant in (p1,p2)", PUMP, True),
        ("plant in (p2, p3)", PUMP, False),
        ("plant notin (p3)", PUMP, True),
        ("plant notin (p1)", PUMP, False),
        ("retired", PUMP, False),
        ("retired", {**PUMP, "retired": "yes"}, True),
        ("!retired", PUMP, True),
        ("!retired", {**PUMP, "retired": ""}, False),
        ("role=pump,plant in (p1,p2),!retired", PUMP, True),
        ("role=pump,plant in (p1,p2),!retired", {**PUMP, "retired": "1"}, False),
        (" role = pump , line=2 ", PUMP, True),
        ("", PUMP, True),
        ("example.com/tier=edge", {"example.com/tier": "edge"}, True),
        ("role=", {"role": ""}, True),
    ],
)
def test_matches(text: str, labels: dict[str, str], expected: bool) -> None:
    assert parse(text).matches(labels) is expected


def test_parse_gives_requirements() -> None:
    sel = parse("role=pump,plant in (p1,p2),!retired,env!=dev,plant notin (p3),retired")
    assert sel.requirements == (
        Requirement("role", "=", ("pump",)),
        Requirement("plant", "in", ("p1", "p2")),
        Requirement("retired", "!exists"),
        Requirement("env", "!=", ("dev",)),
        Requirement("plant", "notin", ("p3",)),
        Requirement("retired", "exists"),
    )
    assert str(sel) == "role=pump,plant in (p1,p2),!retired,env!=dev,plant notin (p3),retired"


@pytest.mark.parametrize(
    ("text", "column", "words"),
    [
        ("role=pump,", 11, "a label key"),
        ("role=pump plant=p1", 11, "','"),
        ("plant in p1", 10, "'('"),
        ("plant in (p1", 13, "')'"),
        ("plant in ()", 11, "a label value"),
        ("role>3", 5, "after the key"),
        ("!=dev", 1, "before '!='"),
        ("-role=pump", 1, "a label key"),
        ("role=pu$mp", 8, "','"),
    ],
)
def test_bad_syntax_names_the_column(text: str, column: int, words: str) -> None:
    with pytest.raises(SelectorError) as info:
        parse(text)
    assert info.value.column == column, str(info.value)
    assert words in str(info.value)
    assert f"column {column}" in str(info.value)


def test_explain_says_why_for_each_requirement() -> None:
    why = explain("role=pump,plant in (p2,p3),!retired", PUMP)
    assert [(e.requirement, e.ok) for e in why] == [
        ("role=pump", True),
        ("plant in (p2,p3)", False),
        ("!retired", True),
    ]
    assert why[1].reason == "plant=p1, not one of p2, p3"
    assert why[2].reason == "no label retired"
    assert explain("line=3", {})[0].reason == "no label line"


words = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True)
labelsets = st.dictionaries(words, words, max_size=4)


OPS = st.sampled_from(["=", "!=", "in", "notin", "x", "!x"])
REQS = st.lists(st.tuples(words, OPS, st.lists(words, min_size=1, max_size=3)), max_size=4)


@given(REQS, labelsets)
def test_round_trip_and_conjunction(
    reqs: list[tuple[str, str, list[str]]], labels: dict[str, str]
) -> None:
    parts = []
    for key, op, values in reqs:
        if op == "x":
            parts.append(key)
        elif op == "!x":
            parts.append("!" + key)
        elif op in ("in", "notin"):
            parts.append(f"{key} {op} ({','.join(values)})")
        else:
            parts.append(f"{key}{op}{values[0]}")
    sel = parse(",".join(parts))
    assert parse(str(sel)).requirements == sel.requirements
    # a selector is the conjunction of its requirements, and `explain` agrees with `matches`
    assert sel.matches(labels) == all(parse(p).matches(labels) for p in parts)
    assert sel.matches(labels) == all(e.ok for e in explain(sel, labels))
