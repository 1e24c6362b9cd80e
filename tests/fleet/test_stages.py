"""Stage plans and abort thresholds: pure functions."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edgefleet.fleet import api, stages


def strategy(*shares: str, **kw: object) -> api.Strategy:
    return api.Strategy.model_validate({"stages": list(shares), **kw})


def test_stages_are_cumulative_shares_rounded_up_and_never_empty() -> None:
    sites = [f"n{i:02d}" for i in range(15)]
    plan = stages.plan(sites, strategy("1", "10%", "100%"))
    assert [len(s) for s in plan] == [1, 1, 13]  # 10 % of 15 rounds up to 2: one more
    assert plan[0] == ["n00"] and [s for st in plan for s in st] == sorted(sites)
    # a stage adding nothing is dropped; the last stage takes the rest whatever the list says
    assert stages.plan(["a", "b"], strategy("1", "50%", "2")) == [["a"], ["b"]]
    assert stages.plan(["a", "b", "c"], strategy("1")) == [["a"], ["b", "c"]]
    assert stages.plan(["a"], strategy("10%", "100%")) == [["a"]]


def test_a_seed_gives_a_stable_shuffled_order() -> None:
    sites = [f"plant1-{i}" for i in range(20)]
    one = stages.plan(sites, strategy("3", seed="spring"))
    assert one == stages.plan(list(reversed(sites)), strategy("3", seed="spring"))
    assert one[0] != sites[:3] and sorted(s for st in one for s in st) == sorted(sites)
    assert stages.plan(sites, strategy("3", seed="autumn"))[0] != one[0]


def test_abort_thresholds() -> None:
    assert stages.allowed_failures(strategy("1"), 10) == 0
    assert stages.allowed_failures(strategy("1", abort_above="2"), 10) == 2
    assert stages.allowed_failures(strategy("1", abort_above="20%"), 10) == 2
    assert stages.allowed_failures(strategy("1", abort_above="20%"), 4) == 0
    for bad in ("ten", "-1", "150%", "1.5"):
        with pytest.raises(ValidationError):
            strategy(bad)
