"""The forwarder's MQTT cloud sink over TLS against a real mosquitto with a TLS listener and the
certificates `edgefleet site add` makes: results arrive; with another CA nothing is sent, the
results stay queued and the sink's status says the certificate is not trusted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.broker import LocalBroker, free_port
from edgefleet.cloud_auth import ensure_tls
from services.forwarder.service import main
from shared.messages import ResultBatch
from shared.topics import Kind, Topics
from tests.forwarder.conftest import result_ids, results, unique, wait_all
from tests.forwarder.test_delivery import FAST, forwarder_config, sink_health
from tests.helpers import Probe, running


@pytest.fixture
def tls_cloud(tmp_path: Path) -> Iterator[tuple[LocalBroker, int, Path]]:
    """A cloud broker with a TLS listener (its CA in `tls/ca.crt`) beside the plain one the
    test reads from."""
    tls = tmp_path / "tls"
    ensure_tls(tls, "127.0.0.1")
    port = free_port()
    conf = (
        f"listener {port} 127.0.0.1\ncafile {tls / 'ca.crt'}\n"
        f"certfile {tls / 'server.crt'}\nkeyfile {tls / 'server.key'}\n"
    )
    broker = LocalBroker(tmp_path / "cloud", extra_config=conf).start()
    try:
        yield broker, port, tls / "ca.crt"
    finally:
        broker.stop()


def tls_sink(port: int, ca: Path) -> dict[str, Any]:
    broker = {"port": port, "tls": True, "ca_file": str(ca)}
    return {"kind": "mqtt", "name": "cloud", "broker": broker, **FAST}


async def test_results_reach_the_cloud_over_tls(
    base_config: dict[str, Any],
    tmp_path: Path,
    site: str,
    probe: Probe,
    tls_cloud: tuple[LocalBroker, int, Path],
) -> None:
    cloud, port, ca = tls_cloud
    topics = Topics(site)
    config = forwarder_config(base_config, tmp_path, [tls_sink(port, ca)])
    await probe.subscribe(topics.status("fwd"))
    async with running(main(config)), Probe(cloud.host, cloud.port) as remote:
        await remote.subscribe(topics.all_of(Kind.RESULTS))
        await probe.wait_for(topics.status("fwd"), sink_health("cloud", lambda h: h["connected"]))
        for i in range(10):
            await probe.publish(topics.results("pump"), results("pump", i * 10, 10), qos=1)

        def remote_ids() -> list[str]:
            batches = remote.decoded(topics.results("pump"))
            return [i for b in batches for i in ResultBatch.from_wire(b).ids]

        ids = await wait_all(remote_ids, result_ids("pump", 0, 100), timeout=20)
        assert unique(ids) == result_ids("pump", 0, 100)
    assert f"on port {port}" in cloud.log_file.read_text()  # it came in on the TLS listener


async def test_a_cloud_broker_the_ca_does_not_vouch_for_gets_nothing(
    base_config: dict[str, Any],
    tmp_path: Path,
    site: str,
    probe: Probe,
    tls_cloud: tuple[LocalBroker, int, Path],
) -> None:
    cloud, port, _ = tls_cloud
    ensure_tls(tmp_path / "other", "127.0.0.1")
    topics = Topics(site)
    config = forwarder_config(base_config, tmp_path, [tls_sink(port, tmp_path / "other/ca.crt")])
    await probe.subscribe(topics.status("fwd"))
    async with running(main(config)), Probe(cloud.host, cloud.port) as remote:
        await remote.subscribe(topics.all_of(Kind.RESULTS))
        await probe.wait_for(topics.status("fwd"), lambda s: s["state"] == "online", timeout=30)
        for i in range(5):
            await probe.publish(topics.results("pump"), results("pump", i * 10, 10), qos=1)
        (status,) = await probe.wait_for(
            topics.status("fwd"),
            sink_health(
                "cloud", lambda h: h["queued_results"] >= 50 and "not trusted" in h["error"]
            ),
        )
        health = status["health"]["sink_cloud"]
        assert health["connected"] is False and health["sent"] == 0
        assert "TLS: the certificate of 127.0.0.1" in health["error"]
        # the broker never took a connection through: a round trip on the plain listener
        # after all of the above, and no result before it
        assert (await remote.publish_raw(f"{site}-sync", b"", qos=1)).ok
        assert remote.received(topics.all_of(Kind.RESULTS)) == []
