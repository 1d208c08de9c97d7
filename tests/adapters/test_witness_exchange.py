"""Partners witness the audit log together: each publishes the largest checkpoint it saw,
signed, and checks its peers' (docs/adr/0010). A gateway that shows two partners two logs is
caught by both within one exchange interval; an honest one is not accused."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import msgspec
import pytest

import ketenpost
from adapters.engine import Adapter, AlarmKind
from adapters.witness import (
    StatementInvalidError,
    WitnessStatement,
    peer_views,
    sign_statement,
    verify_statement,
)
from keys import Directory, KeyUse
from keys.keyfile import load_ed25519_key
from keys.rotation import revoke_key
from tests.adapters.conftest import FakeGateway, Net, b64
from tests.adapters.test_tampering_gateway import note

INTERVAL_S = 300


async def peered(net: Net, url: str | None = None) -> tuple[Adapter, Adapter]:
    """The police and Halt, each naming the other as its witness peer (a shared folder)."""
    for me, peer in (("politie-ijmond", "halt"), ("halt", "politie-ijmond")):
        toml = net.folder(me) / "adapter.toml"
        text = toml.read_text()
        # ``[witness]`` must come before ``[system]``: append it as a table of its own.
        toml.write_text(
            text.replace(
                "[store]",
                f"[witness]\nexchange_s = {INTERVAL_S}\n"
                f'peers = [{{ id = "{peer}", path = "../{peer}/witness/statement.json" }}]\n\n'
                "[store]",
                1,
            )
        )
    police = await net.adapter("politie-ijmond", url=url)
    halt = await net.adapter("halt", url=url)
    return police, halt


SPLIT_VIEWS = {
    "same size, two roots": ((5, b"\x01" * 32), (5, b"\x02" * 32), "two different roots"),
    "two sizes, no consistency proof": ((2, b"\x01" * 32), (4, b"\x02" * 32), "not consistent"),
}


@pytest.mark.parametrize("case", list(SPLIT_VIEWS))
async def test_a_split_view_is_detected_by_both_within_one_interval(
    net: Net, fake_gateway: FakeGateway, case: str
) -> None:
    police_view, halt_view, expected = SPLIT_VIEWS[case]
    # The double answers the police with one log and Halt with another.
    fake_gateway.checkpoints = [note(net, *police_view), note(net, *halt_view)]
    fake_gateway.proofs["from"] = {"hashes": [b64(secrets.token_bytes(32))]}
    police, halt = await peered(net, fake_gateway.url)
    await police.witness_once()
    await halt.witness_once()
    # Alone, each sees a consistent log.
    assert police.store.alarms() == []
    assert halt.store.alarms() == []

    start = net.gw.clock.now()
    [first] = await police.exchange_witness_once()  # Halt has published nothing yet
    assert first.status == "unavailable"
    [halt_saw] = await halt.exchange_witness_once()
    assert halt_saw.status == "inconsistent", halt_saw.detail
    net.gw.clock.advance(INTERVAL_S)
    [police_saw] = await police.exchange_witness_once()
    assert police_saw.status == "inconsistent"
    assert net.gw.clock.now() - start <= INTERVAL_S
    for adapter in (police, halt):
        [alarm] = adapter.store.alarms()
        assert alarm.kind == AlarmKind.WITNESS.value
        assert expected in alarm.detail
        assert adapter.health()["status"] == "alarm"
        assert adapter.metrics.value("witness_exchanges_total", outcome="inconsistent") == 1


async def test_an_honest_gateway_is_consistent_for_both(net: Net) -> None:
    police, halt = await peered(net)
    client = await net.gw.client("gemeente-velsen")
    await client.register_token(net.gw.issue_token().body)
    await police.witness_once()
    await client.register_token(net.gw.issue_token().body)
    await halt.witness_once()  # a larger tree than the police saw
    await police.exchange_witness_once()
    [view] = await halt.exchange_witness_once()
    assert view.status == "consistent"
    [view] = await police.exchange_witness_once()
    assert view.status == "consistent"
    assert police.store.alarms() == []
    assert halt.store.alarms() == []


async def test_a_statement_not_signed_by_the_peer_counts_for_nothing(
    net: Net, fake_gateway: FakeGateway
) -> None:
    fake_gateway.checkpoints = [note(net, 5, b"\x01" * 32), note(net, 5, b"\x02" * 32)]
    police, halt = await peered(net, fake_gateway.url)
    await police.witness_once()
    await halt.witness_once()
    await police.exchange_witness_once()
    # Someone with access to the share replaces the police's statement with Halt's own.
    await halt.exchange_witness_once()
    shared = net.folder("politie-ijmond") / "witness" / "statement.json"
    shared.write_bytes((net.folder("halt") / "witness" / "statement.json").read_bytes())
    [view] = await halt.exchange_witness_once()
    assert view.status == "invalid"


async def test_audit_witness_prints_the_partner_view(
    net: Net, fake_gateway: FakeGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_gateway.checkpoints = [note(net, 5, b"\x01" * 32), note(net, 5, b"\x02" * 32)]
    police, halt = await peered(net, fake_gateway.url)
    await police.witness_once()
    await halt.witness_once()
    await police.exchange_witness_once()
    await halt.exchange_witness_once()
    folder: Path = net.folder("halt")
    await net.close(halt)
    parser = ketenpost.build_parser()
    args = parser.parse_args(["audit", "witness", "--partner-dir", str(folder)])
    assert args.handler(args) == 1  # an open witness alarm
    view = json.loads(capsys.readouterr().out)
    assert view["partner"] == "halt"
    assert [c["size"] for c in view["checkpoints"]] == [5, 5]
    assert view["peers"]["politie-ijmond"]["status"] == "inconsistent"
    assert view["status"] == "alarm"
    assert peer_views(police.store)["halt"].status == "unavailable"  # read before Halt wrote


def test_a_statement_is_judged_by_its_key_now_not_at_its_own_date(net: Net) -> None:
    """A thief of a since-revoked sign key cannot date a statement back to before the
    revocation: the key is judged at the reader's now (protocol section 10.5)."""
    now = net.gw.clock.now()
    directory = net.gw.directory
    police = directory.partner("politie-ijmond")
    key = load_ed25519_key(net.folder("politie-ijmond") / "keys" / "sign.key", KeyUse.SIGN)
    statement = WitnessStatement("politie-ijmond", note(net, 5, b"\x01" * 32), now - 100)
    raw = sign_statement(statement, key)
    assert verify_statement(raw, "politie-ijmond", directory, now) == statement
    revoked = Directory(
        msgspec.structs.replace(
            directory.contents,
            partners=tuple(
                msgspec.structs.replace(
                    p,
                    keys=tuple(
                        revoke_key(k, now=now - 50, compromised_since=None)
                        if k.kid == key.kid
                        else k
                        for k in p.keys
                    ),
                )
                if p.id == police.id
                else p
                for p in directory.contents.partners
            ),
        ),
        version=directory.version + 1,
    )
    with pytest.raises(StatementInvalidError, match="does not verify"):
        verify_statement(raw, "politie-ijmond", revoked, now)
