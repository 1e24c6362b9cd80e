"""The site broker's bridge to the cloud broker over TLS, with the CA and broker certificate
`edgefleet site add` makes: a desired state crosses it; a bridge that trusts another CA never
connects (the desired state never reaches that site). Two real mosquittos per site."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from edgefleet.broker import LocalBroker, free_port
from edgefleet.cloud_auth import add_site, ensure_tls
from edgefleet.site.model import SiteSpec
from edgefleet.site.sitebroker import fleet_bridge
from shared.signing import SigningKey
from shared.topics import Topics
from tests.helpers import Probe, until

PREFIX = "ef"
KEY = SigningKey.generate().public.text()


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[tuple[LocalBroker, int]]:
    """The cloud broker: a TLS listener for sites (their users and ACL), and the plain
    loopback listener for the test's own fleet-side client (anonymous)."""
    auth = tmp_path / "auth"
    for name in ("plantA", "plantB"):
        add_site(auth, name, "127.0.0.1:8883", PREFIX, {})
    acl = auth / "acl"
    acl.write_text("topic readwrite #\n" + acl.read_text())
    tls_port, tls = free_port(), auth / "tls"
    conf = (
        f"allow_anonymous true\npassword_file {auth / 'passwd'}\nacl_file {acl}\n"
        f"listener {tls_port} 127.0.0.1\ncafile {tls / 'ca.crt'}\n"
        f"certfile {tls / 'server.crt'}\nkeyfile {tls / 'server.key'}\n"
    )
    broker = LocalBroker(tmp_path / "cloud", extra_config=conf).start()
    try:
        yield broker, tls_port
    finally:
        broker.stop()


def site_broker(tmp_path: Path, site: str, tls_port: int, cafile: Path) -> LocalBroker:
    """The site's local broker with the bridge `edgefleet up` writes from site.yaml's
    `fleet.broker`, as `edgefleet site add` told the site to fill it in."""
    written = yaml.safe_load((tmp_path / "auth" / "sites" / site / "fleet.yaml").read_text())
    # as written, but on this test's port (the sites were added for :8883) and `cafile`
    remote = {**written["fleet"]["broker"], "port": tls_port, "ca_file": str(cafile)}
    spec = SiteSpec.model_validate(
        {"site": site, "prefix": PREFIX, "fleet": {"trusted_keys": [KEY], "broker": remote}}
    )
    return LocalBroker(tmp_path / site, extra_config=fleet_bridge(spec)).start()


async def test_a_desired_state_crosses_the_tls_bridge_and_a_wrong_ca_never_connects(
    tmp_path: Path, cloud: tuple[LocalBroker, int]
) -> None:
    broker, tls_port = cloud
    ensure_tls(tmp_path / "other-ca", "127.0.0.1")  # a CA the cloud broker's cert is not from
    good = site_broker(tmp_path, "plantA", tls_port, tmp_path / "auth" / "sites/plantA/ca.crt")
    wrong = site_broker(tmp_path, "plantB", tls_port, tmp_path / "other-ca" / "ca.crt")
    try:
        a, b = Topics("plantA", PREFIX), Topics("plantB", PREFIX)
        async with (
            Probe(broker.host, broker.port) as fleet,
            Probe(good.host, good.port) as at_a,
            Probe(wrong.host, wrong.port) as at_b,
        ):
            await at_a.subscribe(a.desired())
            await at_b.subscribe(b.desired())
            for topic in (a.desired(), b.desired()):
                result = await fleet.publish(topic, {"revision": 1}, qos=1, retain=True)
                assert result.ok
            (got,) = await at_a.wait_for(a.desired(), timeout=30)
            assert got == {"revision": 1}
            # the bridge of plantA went out over TLS (the cloud broker's TLS listener only
            # takes sites' users); plantB's bridge fails its TLS handshake, again and again
            log = wrong.log_file

            def refused() -> bool:
                text = log.read_text() if log.exists() else ""
                return "certificate verify failed" in text

            await until(refused, timeout=60, interval=0.1)
            # B's retained desired state was there all along: had its bridge connected even
            # once, it would have arrived by now (A's did as soon as A connected)
            assert at_b.received(b.desired()) == []
            cloud_log = broker.log_file.read_text()
            assert "as site-plantA" in cloud_log and "as site-plantB" not in cloud_log
    finally:
        good.stop()
        wrong.stop()
