"""Acceptance receipts prove the message's own audit entry; a proof that could not be fetched
is "inclusion pending", never "disputed".

A gateway double (``FakeGateway``, with the gateway's real certificate and signing key) answers
submissions with receipts the test builds: carrying the acceptance entry and salt (checked
against the header the adapter sent, no proof request), tampered ones (disputed), and old-style
ones without the entry whose leaf fetch fails, then succeeds or answers wrongly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from adapters.client import GatewayUnreachableError
from adapters.engine import Adapter, AlarmKind, EngineSettings
from gateway.protocol.auditentry import AuditDecision, AuditEntry, seal_entry
from gateway.protocol.envelope import decode_envelope
from gateway.protocol.merkle import leaf_hash, node_hash
from gateway.protocol.receipts import AcceptanceReceipt, sign_acceptance_receipt
from gateway.protocol.signed import SignedObject
from gateway.protocol.types import MessageType
from tests.adapters.conftest import BSN_A, FakeGateway, Net, b64
from tests.adapters.test_engine_e2e import signal_event, start_approach
from tests.adapters.test_tampering_gateway import gateway_key, note

OTHER_LEAF = leaf_hash(b"entry-0")


def acceptance_entry(envelope: bytes, accepted_at: int) -> AuditEntry:
    """What the relay records for this envelope's acceptance."""
    header = decode_envelope(envelope).header
    return AuditEntry(
        time=accepted_at,
        decision=AuditDecision.ACCEPTED,
        sender=header.sender,
        recipients=tuple(r.partner for r in header.recipients),
        message_type=header.message_type,
        token_id=header.token_id,
        subjects=tuple(header.subjects),
        policy_hash="ab" * 32,
        header_hash=decode_envelope(envelope).header_hash.hex(),
        trace_id=header.trace_id.split("-")[1],
    )


Tamper = Callable[[AuditEntry], AuditEntry]


def receipt_answer(
    net: Net,
    envelope: bytes,
    *,
    tamper: Tamper = lambda e: e,
    carry_entry: bool = True,
    swap_salt: bool = False,
) -> dict[str, Any]:
    """A receipt for leaf 1 of a two-leaf tree whose leaf 1 is the (tampered) entry."""
    decoded = decode_envelope(envelope)
    now = net.gw.clock.now()
    sealed = seal_entry(tamper(acceptance_entry(envelope, now)))
    root = node_hash(OTHER_LEAF, sealed.leaf_hash)
    receipt = AcceptanceReceipt(
        message_id=decoded.header.message_id,
        header_hash=decoded.header_hash.hex(),
        accepted_at=now,
        leaf_index=1,
        tree_size=2,
        inclusion_proof=(OTHER_LEAF,),
        checkpoint=note(net, 2, root),
        entry=sealed.entry_bytes if carry_entry else b"",
        salt=(b"\x00" * 32 if swap_salt else sealed.salt) if carry_entry else b"",
    )
    return {
        "message_id": decoded.header.message_id,
        "receipt": b64(msgspec.msgpack.encode(sign_acceptance_receipt(receipt, gateway_key(net)))),
        "leaf_index": 1,
        "first_time": True,
        # For the old-style cases: the leaf the double serves once asked.
        "_leaf": sealed.leaf_hash,
    }


async def send_one(
    net: Net, fake: FakeGateway, settings: EngineSettings | None = None, **how: Any
) -> tuple[Adapter, dict[str, Any]]:
    answers: list[dict[str, Any]] = []

    def on_submit(envelope: bytes) -> dict[str, Any]:
        answer = receipt_answer(net, envelope, **how)
        answers.append(answer)
        return {k: v for k, v in answer.items() if not k.startswith("_")}

    fake.on_submit = on_submit
    token = net.gw.issue_token()
    # Receipts without their entry are taken only by an adapter told to (the rollout window).
    police = await net.adapter(
        "politie-ijmond",
        url=fake.url,
        settings=settings,
        require_receipt_entries=how.get("carry_entry", True),
    )
    police.remember_token(token.signed, token.opening, {token.subjects[0]: BSN_A})
    net.system("politie-ijmond").add_event("INC-1", signal_event([BSN_A], ["halt"]))
    await police.ingest_once()
    await police.send_once()
    return police, answers[0]


async def test_a_receipt_with_its_entry_is_proven_without_asking_for_the_leaf(
    net: Net, fake_gateway: FakeGateway
) -> None:
    # ``fake_gateway.proofs`` is empty: a proof request would fail and leave the row pending.
    police, _ = await send_one(net, fake_gateway)
    [row] = police.store.outbox()
    assert row.state == "accepted"
    assert police.inclusions.all() == []
    assert police.store.alarms() == []


ENTRY_TAMPERING: dict[str, dict[str, Any]] = {
    "entry of another header": {
        "tamper": lambda e: msgspec.structs.replace(e, header_hash="9" * 64)
    },
    "a refusal entry": {
        "tamper": lambda e: msgspec.structs.replace(
            e, decision=AuditDecision.REFUSED, reason="type_not_allowed"
        )
    },
    "another sender": {"tamper": lambda e: msgspec.structs.replace(e, sender="om")},
    "other recipients": {"tamper": lambda e: msgspec.structs.replace(e, recipients=("om",))},
    "another type": {
        "tamper": lambda e: msgspec.structs.replace(e, message_type=MessageType.REFERRAL)
    },
    "another token": {"tamper": lambda e: msgspec.structs.replace(e, token_id="1" * 32)},
    "other subjects": {"tamper": lambda e: msgspec.structs.replace(e, subjects=("b" * 32,))},
    "another time": {"tamper": lambda e: msgspec.structs.replace(e, time=e.time - 1)},
    "a salt that is not the leaf's": {"swap_salt": True},
}


@pytest.mark.parametrize("case", list(ENTRY_TAMPERING))
async def test_a_receipt_whose_entry_is_not_this_acceptance_is_disputed(
    net: Net, fake_gateway: FakeGateway, case: str
) -> None:
    # Each tree is consistent with the entry it carries: only the entry gives it away.
    police, _ = await send_one(net, fake_gateway, **ENTRY_TAMPERING[case])
    [row] = police.store.outbox()
    assert row.state == "disputed"
    assert [a.kind for a in police.store.alarms()] == [AlarmKind.RECEIPT.value]
    assert police.inclusions.all() == []


def serve_leaf(fake: FakeGateway, leaf: bytes) -> None:
    fake.proofs["index"] = {"leaf_index": 1, "tree_size": 2, "leaf_hash": b64(leaf), "hashes": []}


async def test_a_receipt_without_its_entry_is_disputed_by_default(
    net: Net, fake_gateway: FakeGateway
) -> None:
    """A gateway that leaves the entry out (to fall back to the weaker check against the leaf
    it serves itself) is caught: the adapter requires the entry unless adapter.toml says
    ``[gateway] require_receipt_entries = false``."""
    serve_leaf(fake_gateway, leaf_hash(b"whatever the gateway serves"))
    token = net.gw.issue_token()
    answers: list[dict[str, Any]] = []

    def on_submit(envelope: bytes) -> dict[str, Any]:
        answer = receipt_answer(net, envelope, carry_entry=False)
        answers.append(answer)
        return {k: v for k, v in answer.items() if not k.startswith("_")}

    fake_gateway.on_submit = on_submit
    police = await net.adapter("politie-ijmond", url=fake_gateway.url)
    assert police.config.gateway.require_receipt_entries
    police.remember_token(token.signed, token.opening, {token.subjects[0]: BSN_A})
    net.system("politie-ijmond").add_event("INC-1", signal_event([BSN_A], ["halt"]))
    await police.ingest_once()
    await police.send_once()
    [row] = police.store.outbox()
    assert row.state == "disputed"
    [alarm] = police.store.alarms()
    assert alarm.kind == AlarmKind.RECEIPT.value
    assert "carries no audit entry" in alarm.detail
    assert police.inclusions.all() == []


async def test_old_receipt_whose_leaf_cannot_be_fetched_is_accepted_pending_then_proven(
    net: Net, fake_gateway: FakeGateway
) -> None:
    police, answer = await send_one(net, fake_gateway, carry_entry=False)
    [row] = police.store.outbox()
    # The proof request failed (the double had none to give): nothing wrong was shown.
    assert row.state == "accepted"
    assert police.store.alarms() == []
    [pending] = police.inclusions.all()
    assert pending.message_id == row.message_id
    assert not pending.abandoned
    # Not due yet: nothing is asked.
    serve_leaf(fake_gateway, answer["_leaf"])
    assert await police.recheck_inclusions() == 0
    net.gw.clock.advance(3600)
    assert await police.recheck_inclusions() == 1
    assert police.inclusions.all() == []
    assert police.store.outbox()[0].state == "accepted"
    assert police.store.alarms() == []


async def test_old_receipt_pending_then_a_wrong_leaf_is_disputed(
    net: Net, fake_gateway: FakeGateway
) -> None:
    police, _ = await send_one(net, fake_gateway, carry_entry=False)
    assert police.store.outbox()[0].state == "accepted"
    serve_leaf(fake_gateway, leaf_hash(b"some other entry"))
    net.gw.clock.advance(3600)
    assert await police.recheck_inclusions() == 1
    assert police.store.outbox()[0].state == "disputed"
    assert [a.kind for a in police.store.alarms()] == [AlarmKind.RECEIPT.value]
    assert police.inclusions.all() == []


async def test_old_receipt_with_a_wrong_leaf_at_once_is_disputed(
    net: Net, fake_gateway: FakeGateway
) -> None:
    serve_leaf(fake_gateway, leaf_hash(b"some other entry"))
    police, _ = await send_one(net, fake_gateway, carry_entry=False)
    assert police.store.outbox()[0].state == "disputed"
    assert police.inclusions.all() == []


async def test_inclusion_checks_are_bounded_then_alarm(
    net: Net, fake_gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = EngineSettings(backoff_base_s=1, inclusion_attempts=3)
    police, _ = await send_one(net, fake_gateway, settings, carry_entry=False)

    async def unreachable(*_args: Any) -> dict[str, Any]:
        raise GatewayUnreachableError("network glitch")

    monkeypatch.setattr(police.client, "inclusion_proof", unreachable)
    for attempt in range(1, 4):
        net.gw.clock.advance(3600)
        assert await police.recheck_inclusions() == 0
        [pending] = police.inclusions.all()
        assert pending.attempts == attempt
        assert "network glitch" in pending.detail
    assert pending.abandoned
    [alarm] = police.store.alarms()
    assert alarm.kind == AlarmKind.RECEIPT.value
    assert "unverified after 3 attempts" in alarm.detail
    # Abandoned: not asked again, and the row stays accepted (nothing wrong was shown).
    net.gw.clock.advance(3600)
    assert police.inclusions.due(net.gw.clock.now()) == []
    assert police.store.outbox()[0].state == "accepted"


async def test_the_real_gateway_sends_receipts_that_prove_their_own_entry(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    await start_approach(net)
    police = net.open_adapters[1]
    assert police.partner_id == "politie-ijmond"

    async def no_proof_requests(*_args: Any) -> dict[str, Any]:
        raise AssertionError("the receipt carries its entry: no proof request is needed")

    monkeypatch.setattr(police.client, "inclusion_proof", no_proof_requests)
    net.system("politie-ijmond").add_event("INC-1", signal_event([BSN_A], ["halt"]))
    await police.ingest_once()
    result = await police.send_once()
    assert len(result.accepted) == 1
    [row] = police.store.outbox()
    assert row.receipt is not None
    signed = msgspec.msgpack.decode(row.receipt, type=SignedObject)
    receipt = msgspec.msgpack.decode(signed.payload, type=AcceptanceReceipt)
    assert len(receipt.entry) > 0
    assert len(receipt.salt) == 32
    assert police.inclusions.all() == []
    assert police.store.alarms() == []
