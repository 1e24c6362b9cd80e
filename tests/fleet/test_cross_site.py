"""A site cannot get another site's blobs from the fleet: the fleet names the asking site by the
request's reply topic (only that site may read it, by the cloud ACL), refuses a `site` that
disagrees, and answers nowhere but under `ef/fleet/reply/`. Real broker with the ACL that
`edgefleet site add` writes, the real fleet service and S3 server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.broker import LocalBroker
from edgefleet.cloud_auth import add_site
from edgefleet.fleet.client import FleetClient
from shared import codec
from shared.messages import FleetCommand
from shared.signing import SigningKey
from shared.topics import Topics, agent_replies, fleet_commands, replies_root
from tests.fleet.test_deploy import announce, flow_versions, nodes_known
from tests.helpers import Probe

ATTEMPTS = 25  # per kind of attempt; 4 kinds


@pytest.fixture
def broker(tmp_path: Path, site: str) -> Iterator[LocalBroker]:
    """The cloud broker with two sites' users and ACL; the fleet and the test's own clients
    are anonymous (the lines before the first `user` are theirs), as on an internal listener."""
    auth = tmp_path / "auth"
    for name in ("plantA", "plantB"):
        add_site(auth, name, "127.0.0.1:8883", site, {})
    acl = auth / "acl"
    acl.write_text("topic readwrite #\n" + acl.read_text())
    conf = f"allow_anonymous true\npassword_file {auth / 'passwd'}\nacl_file {acl}\n"
    b = LocalBroker(tmp_path / "broker", extra_config=conf).start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def fleet_config(fleet_config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    SigningKey.generate().save(tmp_path / "fleet.key")
    return {**fleet_config, "signing_key": str(tmp_path / "fleet.key")}


def request(ref: str, site: str | None) -> bytes:
    args: dict[str, Any] = {"ref": ref} | ({"site": site} if site else {})
    return command("library.download_url", args)


def command(cmd: str, args: dict[str, Any]) -> bytes:
    wire = FleetCommand(cmd=cmd, args=args).to_wire(codec.Encoding.JSON)
    return codec.encode(wire, "json")[0]


async def test_a_site_cannot_get_a_download_url_for_another_sites_blob(
    fleet: FleetClient, broker: LocalBroker, site: str, tmp_path: Path
) -> None:
    prefix, auth = site, tmp_path / "auth"
    passwords = {s: (auth / "sites" / s / "password").read_text() for s in ("plantA", "plantB")}
    async with Probe(broker.host, broker.port) as observer:
        await observer.subscribe(replies_root(prefix) + "+")
        await observer.subscribe(f"{prefix}/+/status/+")
        await observer.subscribe(f"{prefix}/+/errors/+")
        await flow_versions(fleet, tmp_path)
        await announce(observer, prefix, "plantA", {"role": "fan"})
        await announce(observer, prefix, "plantB", {"role": "pump"})
        await nodes_known(fleet, 2)
        await fleet.call("group.create", {"name": "pumps", "selector": "role = pump"})
        await fleet.call("deploy", {"flows": ["pump-anomaly@1"], "group": "pumps"})
        ref = "pump-ae@1"  # B runs it, A does not

        async with Probe(
            broker.host, broker.port, username="plantB", password=passwords["plantB"]
        ) as pb:
            # the control: B, asking on its own reply topic, gets it (claiming itself or not)
            await pb.subscribe(agent_replies("plantB", prefix))
            for i, claim in enumerate(("plantB", None)):
                await pb.publish_raw(
                    fleet_commands(prefix), request(ref, claim), content_type=codec.JSON,
                    qos=1, response_topic=agent_replies("plantB", prefix),
                    correlation_data=f"b{i}".encode(),
                )  # fmt: skip
            answers = await pb.wait_for(agent_replies("plantB", prefix), count=2)
            assert all(a["ok"] and a["result"]["ref"] == ref for a in answers), answers

        async with Probe(
            broker.host, broker.port, username="plantA", password=passwords["plantA"]
        ) as pa:
            own = agent_replies("plantA", prefix)
            for topic in (own, Topics("plantA", prefix).desired(), agent_replies("plantB", prefix)):
                await pa.subscribe(topic)
            kinds = [
                ("claims B", own, "plantB"),
                ("claims nothing", own, None),
                ("B's reply topic", agent_replies("plantB", prefix), None),
                ("its own desired as reply topic", Topics("plantA", prefix).desired(), "plantA"),
            ]
            for i in range(ATTEMPTS * len(kinds)):
                _, reply, claim = kinds[i % len(kinds)]
                result = await pa.publish_raw(
                    fleet_commands(prefix), request(ref, claim), content_type=codec.JSON,
                    qos=1, response_topic=reply, correlation_data=f"a{i}".encode(),
                )  # fmt: skip
                assert result.ok, result  # the ACL lets a site send fleet commands
            # on its own reply topic: every answer a refusal with its code
            refusals = await pa.wait_for(own, count=2 * ATTEMPTS, timeout=60)
            assert all(not r["ok"] for r in refusals), [r for r in refusals if r["ok"]]
            codes = {r["error"]["code"] for r in refusals}
            assert codes == {"not_allowed"}
            messages = " ".join(r["error"]["message"] for r in refusals)
            assert "for site plantB" in messages and "no desired state of site plantA" in messages
            # on B's reply topic the answer goes to B, whom it is pinned for: A cannot read it
            to_b = await observer.wait_for(
                agent_replies("plantB", prefix), count=2 + ATTEMPTS, timeout=60
            )
            assert len(to_b) == 2 + ATTEMPTS
            # a reply topic outside ef/fleet/reply/: not served, counted and reported
            await observer.wait_for(
                f"{prefix}/+/status/fleet",
                lambda s: s["health"]["fleet"]["commands"]["misrouted"] == ATTEMPTS,
                timeout=60,
            )
            reports = await observer.wait_for(
                f"{prefix}/+/errors/fleet", lambda r: "reply_topic_refused" in str(r)
            )
            assert reports
            # all A ever got: the refusals on its own reply topic, nothing else
            assert {m.topic for m in pa.messages} == {own}
            assert len(pa.messages) == 2 * ATTEMPTS
            # fleet commands as a site: a deployment to B, a deletion, reading B's node
            others: list[tuple[str, dict[str, Any]]] = [
                ("deploy", {"flows": ["pump-anomaly@1"], "nodes": ["plantB"]}),
                ("library.delete", {"ref": ref}),
                ("node.show", {"site": "plantB"}),
            ]
            for i, (cmd, args) in enumerate(others):
                await pa.publish_raw(
                    fleet_commands(prefix), command(cmd, args), content_type=codec.JSON,
                    qos=1, response_topic=own, correlation_data=f"c{i}".encode(),
                )  # fmt: skip
            answers = await pa.wait_for(own, count=2 * ATTEMPTS + len(others), timeout=60)
            for answer in answers[2 * ATTEMPTS :]:
                assert not answer["ok"] and answer["error"]["code"] == "not_allowed", answer
                assert "reply topic: a site may ask only" in answer["error"]["message"]
        assert len((await fleet.call("deployment.list", {"limit": 10}))["deployments"]) == 1
