"""Through real HTTPS with mTLS: submit, long-poll, open, receipt, sender event, idempotency."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from adapters.client import RefusedError
from gateway.protocol.checkpoint import verify_checkpoint
from gateway.protocol.envelope import open_envelope
from gateway.protocol.merkle import InclusionProof, verify_inclusion
from gateway.protocol.messages import decode_body
from gateway.protocol.reasons import Reason
from gateway.protocol.receipts import (
    DeliveryReceipt,
    Rejection,
    RejectionReason,
    sign_delivery_receipt,
    sign_rejection,
    verify_acceptance_receipt,
    verify_sender_event,
)
from gateway.protocol.types import MessageType
from gateway.signer import decode_signed_object, encode_signed_object
from keys import Ed25519KeyPair, KeyUse
from tests.gateway.conftest import Gw, Token


async def _registered(gw: Gw) -> Token:
    token = gw.issue_token()
    velsen = await gw.client("gemeente-velsen")
    await velsen.register_token(token.body)
    return token


def _receipt_for(
    gw: Gw,
    recipient: str,
    opened_body: bytes,
    header_hash: bytes,
    message_id: str,
    key: Ed25519KeyPair | None = None,
) -> bytes:
    receipt = DeliveryReceipt(
        message_id=message_id,
        header_hash=header_hash.hex(),
        recipient=recipient,
        received_at=gw.clock.now(),
        plaintext_hash=hashlib.sha256(opened_body).hexdigest(),
    )
    return encode_signed_object(
        sign_delivery_receipt(receipt, key or gw.deployment.sign_key(recipient))
    )


async def test_police_to_halt_round_trip(gateway: Gw) -> None:
    gw = gateway
    token = await _registered(gw)
    police = await gw.client("politie-ijmond")
    halt = await gw.client("halt")
    envelope = gw.seal(token)

    # Halt polls first and waits; the submission wakes it.
    poll = asyncio.create_task(halt.inbox(wait_s=5))
    await asyncio.sleep(0.05)
    accepted = await police.submit(envelope)
    batch = await asyncio.wait_for(poll, 5)
    assert [d.message_id for d in batch.deliveries] == [accepted.message_id]

    # The acceptance receipt verifies, and its proof leads to its checkpoint.
    signed = decode_signed_object(accepted.receipt)
    receipt = verify_acceptance_receipt(signed, gw.directory, now=gw.clock.now())
    assert receipt.message_id == accepted.message_id
    gateway_key = gw.directory.gateway.keys[0].public
    checkpoint = verify_checkpoint(
        receipt.checkpoint,
        gw.built.config.gateway.origin,
        gw.built.config.gateway.origin,
        gateway_key,
    )
    leaves = await gw.store.audit_leaves()
    verify_inclusion(
        leaves[receipt.leaf_index][1],
        InclusionProof(
            leaf_index=receipt.leaf_index,
            tree_size=receipt.tree_size,
            hashes=receipt.inclusion_proof,
        ),
        checkpoint.root_hash,
    )

    delivery = batch.deliveries[0]
    opened = open_envelope(
        delivery.envelope,
        gw.directory,
        recipient="halt",
        encrypt_keys={gw.deployment.encrypt_key("halt").kid: gw.deployment.encrypt_key("halt")},
        accepted_at=delivery.accepted_at,
        now=gw.clock.now(),
    )
    body = decode_body(opened.body, expected_type=MessageType.SIGNAL)
    assert tuple(body.subjects) == token.subjects

    result = await halt.send_receipts(
        receipts=[_receipt_for(gw, "halt", opened.body, opened.header_hash, delivery.message_id)]
    )
    assert result["finished"] == 1

    # The sender event comes to the police inbox, signed, with halt's own receipt inside.
    events = (await police.inbox(wait_s=2)).events
    assert [e.kind for e in events] == ["receipt"]
    verified = verify_sender_event(
        decode_signed_object(events[0].event), gw.directory, now=gw.clock.now()
    )
    assert verified.receipt is not None
    assert verified.receipt.recipient == "halt"
    await police.send_receipts(acks=[events[0].event_id])
    assert (await police.inbox()).events == []
    status = await police.message_status(accepted.message_id)
    assert [r["state"] for r in status["recipients"]] == ["delivered"]
    # Nothing more for halt: the delivery ended.
    assert (await halt.inbox()).deliveries == []


async def test_multi_recipient_to_three_partners(gateway: Gw) -> None:
    gw = gateway
    token = await _registered(gw)
    velsen = await gw.client("gemeente-velsen")
    envelope = gw.seal(
        token,
        sender="gemeente-velsen",
        to=("halt", "cjg", "om"),
        message_type=MessageType.CASE_CONFERENCE,
    )
    accepted = await velsen.submit(envelope)
    for partner in ("halt", "cjg", "om"):
        client = await gw.client(partner)
        deliveries = (await client.inbox()).deliveries
        assert [d.message_id for d in deliveries] == [accepted.message_id], partner
        key = gw.deployment.encrypt_key(partner)
        opened = open_envelope(
            deliveries[0].envelope,
            gw.directory,
            recipient=partner,
            encrypt_keys={key.kid: key},
            accepted_at=deliveries[0].accepted_at,
            now=gw.clock.now(),
        )
        assert opened.header.message_id == accepted.message_id


async def test_idempotent_retry_returns_the_first_receipt(gateway: Gw) -> None:
    gw = gateway
    token = await _registered(gw)
    police = await gw.client("politie-ijmond")
    envelope = gw.seal(token)
    first = await police.submit(envelope)
    again = await police.submit(envelope)
    assert again.receipt == first.receipt
    assert first.first_time
    assert not again.first_time
    halt = await gw.client("halt")
    assert len((await halt.inbox()).deliveries) == 1


async def test_same_id_other_bytes_is_duplicate_id(gateway: Gw) -> None:
    gw = gateway
    token = await _registered(gw)
    police = await gw.client("politie-ijmond")
    message_id = "ab" * 32
    await police.submit(gw.seal(token, message_id=message_id))
    with pytest.raises(RefusedError) as refused:
        await police.submit(gw.seal(token, message_id=message_id))
    assert refused.value.reason is Reason.DUPLICATE_ID
    assert refused.value.status == 409


async def test_refused_id_is_accepted_when_resubmitted_valid(gateway: Gw) -> None:
    gw = gateway
    token = gw.issue_token()
    police = await gw.client("politie-ijmond")
    message_id = "cd" * 32
    with pytest.raises(RefusedError) as refused:
        await police.submit(gw.seal(token, message_id=message_id))
    assert refused.value.reason is Reason.TOKEN_NOT_REGISTERED
    velsen = await gw.client("gemeente-velsen")
    await velsen.register_token(token.body)
    accepted = await police.submit(gw.seal(token, message_id=message_id))
    assert accepted.message_id == message_id


async def test_lease_expiry_redelivers(gateway: Gw) -> None:
    gw = gateway
    token = await _registered(gw)
    police = await gw.client("politie-ijmond")
    halt = await gw.client("halt")
    accepted = await police.submit(gw.seal(token))
    first = (await halt.inbox()).deliveries
    assert [d.attempts for d in first] == [1]
    assert (await halt.inbox()).deliveries == []  # leased
    gw.clock.advance(gw.built.config.limits.lease_s + 1)
    again = (await halt.inbox()).deliveries
    assert [(d.message_id, d.attempts) for d in again] == [(accepted.message_id, 2)]


async def test_receipt_with_bad_signature_is_refused(gateway: Gw) -> None:
    gw = gateway
    token = await _registered(gw)
    police = await gw.client("politie-ijmond")
    halt = await gw.client("halt")
    await police.submit(gw.seal(token))
    delivery = (await halt.inbox()).deliveries[0]
    stranger = Ed25519KeyPair.generate(KeyUse.SIGN)
    forged = _receipt_for(gw, "halt", b"x", b"\0" * 32, delivery.message_id, stranger)
    with pytest.raises(RefusedError) as refused:
        await halt.send_receipts(receipts=[forged])
    assert refused.value.reason is Reason.BAD_RECEIPT_SIGNATURE
    # A rejection signed by someone else (police signing as halt) is refused as well.
    rejection = encode_signed_object(
        sign_rejection(
            Rejection(
                message_id=delivery.message_id,
                header_hash="00" * 32,
                recipient="halt",
                rejected_at=gw.clock.now(),
                reason=RejectionReason.SCHEMA_INVALID,
            ),
            gw.deployment.sign_key("politie-ijmond"),
        )
    )
    with pytest.raises(RefusedError) as refused:
        await halt.send_receipts(rejections=[rejection])
    assert refused.value.reason is Reason.BAD_RECEIPT_SIGNATURE
    status = await police.message_status(delivery.message_id)
    assert [r["state"] for r in status["recipients"]] == ["pending"]


async def test_expiry_deletes_and_tells_the_sender(gateway: Gw) -> None:
    gw = gateway
    token = await _registered(gw)
    police = await gw.client("politie-ijmond")
    accepted = await police.submit(gw.seal(token, expires_in=3600))
    gw.clock.advance(3601)
    assert await gw.built.runtime.relay.sweep_expired() == 1
    halt = await gw.client("halt")
    assert (await halt.inbox()).deliveries == []
    events = (await police.inbox()).events
    assert [(e.kind, e.message_id) for e in events] == [("expiry", accepted.message_id)]
    verify_sender_event(decode_signed_object(events[0].event), gw.directory, now=gw.clock.now())
