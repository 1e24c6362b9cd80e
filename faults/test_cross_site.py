"""Cross-site access: one site's own credentials (from `edgefleet site add`) used against
another site's tree, the fleet's and lookalike prefixes on a real mosquitto with the shipped
ACL: publishes, subscriptions, a wrong password and an unknown user. Figure: successes (goal 0)."""

from __future__ import annotations

from pathlib import Path

from faults.conftest import Figure, scaled
from tests.cross_site import cross_site_attempts


async def test_another_sites_credentials_never_get_in(tmp_path: Path, figure: Figure) -> None:
    found = await cross_site_attempts(tmp_path, scaled(500, least=9))
    ok = found.successes == 0 and not found.own_refused
    figure(
        "cross-site access",
        f"{found.attempts:,} attempts with plantA's credentials: publishes (QoS 1, retained) "
        "into plantB's tree, the fleet's replies, lookalike prefixes; subscriptions to plantB's "
        "and the fleet's topics; a wrong password; an unknown user",
        f"successes {found.successes} (publishes accepted {len(found.accepted)}, kept retained "
        f"{len(found.retained)}, messages read {len(found.read)}, wrong password let in "
        f"{int(found.wrong_password_ok)}, unknown user let in {int(found.unknown_user_ok)}); "
        "its own tree allowed "
        f"({4 - len(found.own_refused)}/4 publishes kept)",
        ok,
    )
    assert ok, found
