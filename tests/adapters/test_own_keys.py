"""An adapter checks that the directory lists for its own partner only keys it holds: a
``sign`` or ``encrypt`` key swapped in by whoever holds the officers' keys would let someone
else sign as this partner or read what is sealed to it, and only the partner itself can see
that (threat model §6, directory keys)."""

from __future__ import annotations

from adapters.engine import AlarmKind
from keys.keyfile import write_key_file
from tests.adapters.conftest import Net
from tests.adapters.test_self_revocation_adapter import (  # noqa: F401 - cov is a fixture
    HALT,
    POLICE,
    cov,
    publish_successor,
)
from tests.test_key_rotation_live import live, own_deployment  # noqa: F401 - fixtures


def own_key_alarms(adapter_alarms: list[tuple[str, str]]) -> list[str]:
    return [d for k, d in adapter_alarms if k == AlarmKind.OWN_KEY_UNKNOWN.value]


async def test_a_key_listed_for_us_that_we_do_not_hold_is_an_alarm(cov: Net) -> None:  # noqa: F811
    gw = cov.gw
    police = await cov.adapter(POLICE)
    halt = await cov.adapter(HALT)
    assert police.check_own_keys() == []
    successor = publish_successor(gw)  # the officers list a sign key police never made
    await police.refresh_directory()
    await halt.refresh_directory()
    [detail] = own_key_alarms([(a.kind, a.detail) for a in police.store.alarms()])
    assert successor.kid in detail
    assert "does not hold" in detail
    # Another partner's new key is no business of Halt's adapter.
    assert own_key_alarms([(a.kind, a.detail) for a in halt.store.alarms()]) == []


async def test_a_successor_made_by_the_partner_itself_raises_nothing(cov: Net) -> None:  # noqa: F811
    gw = cov.gw
    police = await cov.adapter(POLICE)
    successor = publish_successor(gw)
    # As ``ketenpost keys rotate`` does: the new key file beside the old one, before the
    # officers list it (here, before the adapter refreshes).
    write_key_file(cov.folder(POLICE) / "keys" / "sign-2.key", successor)
    await police.refresh_directory()
    assert police.check_own_keys() == []
    assert own_key_alarms([(a.kind, a.detail) for a in police.store.alarms()]) == []
