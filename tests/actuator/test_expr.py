"""The condition language: parsing, errors that point at the text, vectorised evaluation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.actuator.expr import Condition, EvalError, ExprError, parse, paths

COLUMNS = {
    "score": np.array([0.1, 0.85, np.nan, 0.95]),
    "label": np.array(["ok", "anomaly", "ok", "anomaly"]),
    "probs": np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5], [0.0, 1.0]]),
    "alarm": np.array([0, 1, 0, 1]),
    "model.version": "3",
}


def ev(text: str) -> list[bool]:
    out: list[bool] = Condition.compile(text)(COLUMNS, 4).tolist()
    return out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("score > 0.8", [False, True, False, True]),
        ("score >= 0.85 and score < 0.9", [False, True, False, False]),
        ("not score > 0.8", [True, False, True, False]),  # NaN > 0.8 is false, so not is true
        ("score < 0.2 or label == 'anomaly'", [True, True, False, True]),
        ('outputs.label != "ok"', [False, True, False, True]),
        ("probs.1 > 0.7", [False, True, False, True]),
        ("alarm", [False, True, False, True]),
        ("true", [True] * 4),
        ("not (false or score > 2)", [True] * 4),
        ("model.version == '3' and -1 < score", [True, True, False, True]),
        ("score > 1e-1", [False, True, False, True]),
    ],
)
def test_evaluates_whole_columns(text: str, expected: list[bool]) -> None:
    assert ev(text) == expected


@pytest.mark.parametrize(
    ("text", "column", "what"),
    [
        ("score >", 8, "expected a number"),
        ("score > 0.8 and", 16, "expected a number"),
        ("score = 1", 7, "unexpected character '='"),
        ("0 < score < 1", 11, "chained comparisons"),
        ("(score > 1", 11, "expected ')'"),
        ("1", 1, "not a condition"),
        ("score > 1 and 2", 15, "not a condition"),
        ("", 1, "empty"),
        ("__import__('os').system('x')", 17, "unexpected character '.'"),
        ("score > 1 score", 11, "expected 'and', 'or' or the end"),
        ("1 < 2", 3, "at least one result field"),
        ("(a > 1) == true", 9, "cannot compare a condition"),
    ],
)
def test_a_bad_expression_names_itself_and_the_column(text: str, column: int, what: str) -> None:
    with pytest.raises(ExprError) as err:
        parse(text)
    assert repr(text) in str(err.value)
    assert f"column {column}:" in str(err.value)
    assert what in str(err.value)


def test_a_missing_field_is_an_evaluation_error_naming_it() -> None:
    with pytest.raises(EvalError, match="'scroe' is not in the results"):
        ev("scroe > 1")
    with pytest.raises(EvalError, match="shape"):
        ev("probs.2 > 1")
    assert paths(parse("a.b > 1 and not (c or d == 2)")) == {"a.b", "c", "d"}


@given(
    st.lists(st.floats(allow_nan=True, allow_infinity=False, width=64), min_size=1, max_size=50),
    st.floats(-10, 10),
)
def test_comparison_matches_numpy_and_nan_never_fires(values: list[float], k: float) -> None:
    arr = np.array(values)
    got = Condition.compile(f"x > {k!r}")({"x": arr}, len(arr))
    with np.errstate(invalid="ignore"):
        assert got.tolist() == (arr > k).tolist()
    assert not got[np.isnan(arr)].any()
