from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import TopicError
from shared.topics import Kind, Topics, every_site, fleet_commands, matches, parse, validate_id

ids = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="+#/$"),
    min_size=1,
    max_size=40,
)
NAMED = [k for k in Kind if k not in (Kind.DESIRED, Kind.REPORTED, Kind.BRIDGE)]


@given(site=ids, name=ids, kind=st.sampled_from(NAMED))
def test_build_then_parse_gives_the_parts_back(site: str, name: str, kind: Kind) -> None:
    topics = Topics(site) if site != "fleet" else Topics(site + "x")
    topic = getattr(topics, kind.value)(name)
    parsed = parse(topic)
    assert (parsed.prefix, parsed.site, parsed.kind, parsed.name) == (
        "ef",
        topics.site,
        kind,
        name,
    )
    assert matches(topic, topics.all_of(kind))
    assert matches(topic, topics.everything())


@given(site=ids)
def test_site_level_topics(site: str) -> None:
    topics = Topics(site, prefix="acme") if site != "fleet" else Topics("plant", prefix="acme")
    assert parse(topics.desired()).kind is Kind.DESIRED
    assert parse(topics.reported()).name is None
    assert topics.desired().startswith("acme/")
    assert parse(topics.bridge()).kind is Kind.BRIDGE


@pytest.mark.parametrize("bad", ["", "a/b", "a+", "#", "$SYS", "tab\there", "x" * 129])
def test_bad_ids_are_refused_with_the_reason(bad: str) -> None:
    with pytest.raises(TopicError, match="source"):
        Topics("plant").raw(bad) if bad else validate_id(bad, "source")


@pytest.mark.parametrize(
    "topic",
    ["ef/plant", "ef/plant/raw", "ef/plant/nope/x", "ef/plant/raw/a/b", "ef/plant/desired/x"],
)
def test_parse_refuses_what_is_not_ours(topic: str) -> None:
    with pytest.raises(TopicError):
        parse(topic)


def test_every_site_filter_matches_results_of_any_site() -> None:
    assert every_site(Kind.RESULTS) == "ef/+/results/#"
    assert matches(Topics("north").results("pump"), every_site(Kind.RESULTS))
    assert not matches(Topics("north").events("pump"), every_site(Kind.RESULTS))


def test_fleet_topics() -> None:
    assert fleet_commands() == "ef/fleet/commands"
    with pytest.raises(TopicError, match="fleet"):
        Topics("fleet")


@pytest.mark.parametrize(
    ("topic", "topic_filter", "expected"),
    [
        ("ef/s/raw/a", "ef/s/raw/+", True),
        ("ef/s/raw/a", "ef/#", True),
        ("ef/s/raw/a", "ef/s/raw", False),
        ("ef/s/raw", "ef/s/raw/+", False),
        ("ef/s/samples/f", "$share/g/ef/s/samples/+", True),
        ("ef/s/raw/a", "ef/s/+/b", False),
    ],
)
def test_matches(topic: str, topic_filter: str, expected: bool) -> None:
    assert matches(topic, topic_filter) is expected


def test_every_site_filter_of_one_entity_and_of_site_level_kinds() -> None:
    assert every_site(Kind.STATUS, name="agent") == "ef/+/status/agent"
    assert matches(Topics("north").status("agent"), every_site(Kind.STATUS, name="agent"))
    assert not matches(Topics("north").status("fleet"), every_site(Kind.STATUS, name="agent"))
    assert every_site(Kind.REPORTED, "x1") == "x1/+/reported"
    assert matches(Topics("north", "x1").reported(), every_site(Kind.REPORTED, "x1"))
