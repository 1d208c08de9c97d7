"""Receipts, rejections and sender events: each verifies, none verifies as another, and only
the right signer's key counts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import pytest

from gateway.protocol.errors import ReceiptError
from gateway.protocol.reasons import Reason, RejectionReason
from gateway.protocol.receipts import (
    AcceptanceReceipt,
    DeliveryReceipt,
    Rejection,
    SenderEvent,
    SenderEventKind,
    sign_acceptance_receipt,
    sign_delivery_receipt,
    sign_rejection,
    sign_sender_event,
    verify_acceptance_receipt,
    verify_delivery_receipt,
    verify_rejection,
    verify_sender_event,
)
from gateway.protocol.signed import SignedObject
from keys import Directory
from tests.protocol._builders_token import DAY, T0, World

MESSAGE_ID = "1" * 64
HEADER_HASH = "2" * 64
PLAINTEXT_HASH = "3" * 64


@pytest.fixture(scope="module")
def world() -> World:
    return World.create()


@pytest.fixture(scope="module")
def directory(world: World) -> Directory:
    return world.directory()


def acceptance(world: World) -> SignedObject:
    return sign_acceptance_receipt(
        AcceptanceReceipt(
            message_id=MESSAGE_ID,
            header_hash=HEADER_HASH,
            accepted_at=T0,
            leaf_index=6,
            tree_size=7,
            inclusion_proof=(b"\x01" * 32, b"\x02" * 32, b"\x03" * 32),
            checkpoint="ketenpost.example/log\n7\nAAAA\n\n— ketenpost-gateway AAAA\n",
        ),
        world.gateway_sign,
    )


def delivery(world: World, recipient: str = "halt", signer: str | None = None) -> SignedObject:
    return sign_delivery_receipt(
        DeliveryReceipt(
            message_id=MESSAGE_ID,
            header_hash=HEADER_HASH,
            recipient=recipient,
            received_at=T0 + 60,
            plaintext_hash=PLAINTEXT_HASH,
        ),
        world.sign[signer or recipient],
    )


def rejection(world: World, recipient: str = "halt", signer: str | None = None) -> SignedObject:
    return sign_rejection(
        Rejection(
            message_id=MESSAGE_ID,
            header_hash=HEADER_HASH,
            recipient=recipient,
            rejected_at=T0 + 60,
            reason=RejectionReason.SCHEMA_INVALID,
            detail="body: Object contains unknown field `nickname`",
        ),
        world.sign[signer or recipient],
    )


def event(
    world: World,
    kind: SenderEventKind,
    inner: SignedObject | None,
    recipient: str = "halt",
) -> SignedObject:
    return sign_sender_event(
        SenderEvent(
            kind=kind,
            message_id=MESSAGE_ID,
            recipient=recipient,
            at=T0 + 61,
            recipient_object=inner,
        ),
        world.gateway_sign,
    )


Verifier = Callable[[SignedObject, Directory], object]


def v_acceptance(signed: SignedObject, directory: Directory) -> object:
    return verify_acceptance_receipt(
        signed, directory, now=T0 + DAY, message_id=MESSAGE_ID, header_hash=HEADER_HASH
    )


def v_delivery(signed: SignedObject, directory: Directory) -> object:
    return verify_delivery_receipt(
        signed, directory, now=T0 + DAY, recipient="halt", message_id=MESSAGE_ID
    )


def v_rejection(signed: SignedObject, directory: Directory) -> object:
    return verify_rejection(
        signed, directory, now=T0 + DAY, recipient="halt", header_hash=HEADER_HASH
    )


def v_event(signed: SignedObject, directory: Directory) -> object:
    return verify_sender_event(signed, directory, now=T0 + DAY, message_id=MESSAGE_ID)


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[World], SignedObject]
    verify: Verifier
    expected: Reason | None
    directory: Callable[[World], Directory] | None = None


CASES = [
    Case("acceptance receipt verifies", acceptance, v_acceptance, None),
    Case("delivery receipt verifies", delivery, v_delivery, None),
    Case("rejection verifies", rejection, v_rejection, None),
    Case(
        "receipt event verifies",
        lambda w: event(w, SenderEventKind.RECEIPT, delivery(w)),
        v_event,
        None,
    ),
    Case(
        "rejection event verifies",
        lambda w: event(w, SenderEventKind.REJECTION, rejection(w)),
        v_event,
        None,
    ),
    Case("expiry event verifies", lambda w: event(w, SenderEventKind.EXPIRY, None), v_event, None),
    Case("purge event verifies", lambda w: event(w, SenderEventKind.PURGE, None), v_event, None),
    # Label confusion: the same signer, the wrong label.
    Case(
        "delivery receipt presented as rejection",
        delivery,
        v_rejection,
        Reason.BAD_RECEIPT_SIGNATURE,
    ),
    Case(
        "rejection presented as delivery receipt",
        rejection,
        v_delivery,
        Reason.BAD_RECEIPT_SIGNATURE,
    ),
    Case(
        "delivery receipt presented as acceptance receipt",
        delivery,
        v_acceptance,
        Reason.BAD_RECEIPT_SIGNATURE,
    ),
    Case(
        "acceptance receipt presented as sender event",
        acceptance,
        v_event,
        Reason.BAD_RECEIPT_SIGNATURE,
    ),
    Case(
        "sender event presented as acceptance receipt",
        lambda w: event(w, SenderEventKind.EXPIRY, None),
        v_acceptance,
        Reason.BAD_RECEIPT_SIGNATURE,
    ),
    # Wrong signer.
    Case(
        "delivery receipt for halt signed by the police",
        lambda w: delivery(w, signer="politie-ijmond"),
        v_delivery,
        Reason.BAD_RECEIPT_SIGNATURE,
    ),
    Case(
        "rejection for halt signed by the gateway's key",
        lambda w: sign_rejection(
            msgspec.msgpack.decode(rejection(w).payload, type=Rejection), w.gateway_sign
        ),
        v_rejection,
        Reason.BAD_RECEIPT_SIGNATURE,
    ),
    Case(
        "acceptance receipt signed by a partner",
        lambda w: sign_acceptance_receipt(
            msgspec.msgpack.decode(acceptance(w).payload, type=AcceptanceReceipt),
            w.sign["halt"],
        ),
        v_acceptance,
        Reason.BAD_RECEIPT_SIGNATURE,
    ),
    Case(
        "delivery receipt from another recipient than the caller",
        lambda w: delivery(w, recipient="om"),
        v_delivery,
        Reason.NOT_RECIPIENT,
    ),
    Case(
        "receipt event embedding another recipient's receipt",
        lambda w: event(w, SenderEventKind.RECEIPT, delivery(w, recipient="om")),
        v_event,
        Reason.NOT_RECIPIENT,
    ),
    Case(
        "receipt event embedding a rejection",
        lambda w: event(w, SenderEventKind.RECEIPT, rejection(w)),
        v_event,
        Reason.BAD_RECEIPT_SIGNATURE,
    ),
    Case(
        "receipt event embedding a receipt forged by the gateway",
        lambda w: event(w, SenderEventKind.RECEIPT, delivery(w, signer="politie-ijmond")),
        v_event,
        Reason.BAD_RECEIPT_SIGNATURE,
    ),
    Case(
        "acceptance receipt for another header",
        lambda w: sign_acceptance_receipt(
            msgspec.structs.replace(
                msgspec.msgpack.decode(acceptance(w).payload, type=AcceptanceReceipt),
                header_hash="f" * 64,
            ),
            w.gateway_sign,
        ),
        v_acceptance,
        Reason.RECEIPT_MISMATCH,
    ),
    # Key state.
    Case(
        "recipient key compromised before the receipt",
        delivery,
        v_delivery,
        Reason.BAD_RECEIPT_SIGNATURE,
        directory=lambda w: w.directory(
            sign_key_times={"halt": {"revoked_at": T0 + 120, "compromised_since": T0}}
        ),
    ),
    Case(
        "recipient key compromised after the receipt",
        delivery,
        v_delivery,
        None,
        directory=lambda w: w.directory(
            sign_key_times={"halt": {"revoked_at": T0 + 120, "compromised_since": T0 + 90}}
        ),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_receipts(world: World, directory: Directory, case: Case) -> None:
    signed = case.make(world)
    d = directory if case.directory is None else case.directory(world)
    if case.expected is None:
        case.verify(signed, d)
    else:
        with pytest.raises(ReceiptError) as caught:
            case.verify(signed, d)
        assert caught.value.reason is case.expected


def test_tampered_bytes_fail(world: World, directory: Directory) -> None:
    for make, verify in (
        (acceptance, v_acceptance),
        (delivery, v_delivery),
        (rejection, v_rejection),
    ):
        signed = make(world)
        for i in range(len(signed.payload)):
            payload = bytearray(signed.payload)
            payload[i] ^= 0x40
            with pytest.raises(ReceiptError):
                verify(msgspec.structs.replace(signed, payload=bytes(payload)), directory)


def test_sender_event_returns_the_recipients_own_statement(
    world: World, directory: Directory
) -> None:
    verified = verify_sender_event(
        event(world, SenderEventKind.REJECTION, rejection(world)), directory, now=T0 + DAY
    )
    assert verified.rejection is not None
    assert verified.rejection.reason is RejectionReason.SCHEMA_INVALID
    assert verified.receipt is None
    verified = verify_sender_event(
        event(world, SenderEventKind.RECEIPT, delivery(world)), directory, now=T0 + DAY
    )
    assert verified.receipt is not None
    assert verified.receipt.plaintext_hash == PLAINTEXT_HASH


@pytest.mark.parametrize(
    ("kind", "with_inner"),
    [
        pytest.param(SenderEventKind.RECEIPT, False, id="receipt without the recipient's object"),
        pytest.param(SenderEventKind.EXPIRY, True, id="expiry with an object"),
    ],
)
def test_sender_event_shape(world: World, kind: SenderEventKind, with_inner: bool) -> None:
    with pytest.raises(ValueError, match="carry"):
        SenderEvent(
            kind=kind,
            message_id=MESSAGE_ID,
            recipient="halt",
            at=T0,
            recipient_object=delivery(world) if with_inner else None,
        )


def test_acceptance_receipt_leaf_inside_tree() -> None:
    with pytest.raises(ValueError, match="leaf_index"):
        AcceptanceReceipt(
            message_id=MESSAGE_ID,
            header_hash=HEADER_HASH,
            accepted_at=T0,
            leaf_index=7,
            tree_size=7,
            inclusion_proof=(),
            checkpoint="x",
        )


def test_receipts_are_signed_with_sign_keys(world: World) -> None:
    receipt = msgspec.msgpack.decode(delivery(world).payload, type=DeliveryReceipt)
    with pytest.raises(ReceiptError):
        sign_delivery_receipt(receipt, world.token["halt"])
