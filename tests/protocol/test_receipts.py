"""Receipts, rejections and sender events: each verifies, none verifies as another, and only
the right signer's key counts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import pytest

from gateway.protocol import envelope
from gateway.protocol.auditentry import AuditDecision, encode_entry, entry_leaf
from gateway.protocol.errors import ReceiptError
from gateway.protocol.merkle import leaf_hash
from gateway.protocol.reasons import Reason, RejectionReason
from gateway.protocol.receipts import (
    AcceptanceReceipt,
    DeliveryReceipt,
    Rejection,
    SenderEvent,
    SenderEventKind,
    acceptance_leaf,
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
from gateway.protocol.types import MessageType
from keys import Directory
from tests.protocol import make_protocol_vectors as gen
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


# -- The acceptance's audit entry in the receipt ------------------------------------------


def _carrying(entry: bytes = b"", salt: bytes = b"") -> AcceptanceReceipt:
    return AcceptanceReceipt(
        message_id=MESSAGE_ID,
        header_hash=HEADER_HASH,
        accepted_at=T0,
        leaf_index=0,
        tree_size=1,
        inclusion_proof=(),
        checkpoint="x",
        entry=entry,
        salt=salt,
    )


def test_receipt_without_entry_keeps_the_bytes_it_had_before_the_fields() -> None:
    receipt = _carrying()
    as_map = msgspec.msgpack.decode(msgspec.msgpack.encode(receipt))
    assert list(as_map) == [
        "message_id",
        "header_hash",
        "accepted_at",
        "leaf_index",
        "tree_size",
        "inclusion_proof",
        "checkpoint",
    ]
    # And such bytes (an older gateway's) decode, with the fields empty.
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(as_map), type=AcceptanceReceipt)
    assert (decoded.entry, decoded.salt) == (b"", b"")


def test_receipt_carrying_entry_and_salt_round_trips_and_verifies(
    world: World, directory: Directory
) -> None:
    receipt = _carrying(b"\x81\xa4time\x01", b"\x07" * 32)
    signed = sign_acceptance_receipt(receipt, world.gateway_sign)
    verified = verify_acceptance_receipt(signed, directory, now=T0 + DAY, message_id=MESSAGE_ID)
    assert verified == receipt
    assert list(msgspec.msgpack.decode(signed.payload))[-2:] == ["entry", "salt"]


@pytest.mark.parametrize(
    ("entry", "salt"),
    [(b"\x80", b""), (b"", b"\x07" * 32), (b"\x80", b"\x07" * 31)],
    ids=["entry without salt", "salt without entry", "short salt"],
)
def test_entry_and_a_32_byte_salt_come_together(entry: bytes, salt: bytes) -> None:
    with pytest.raises(ValueError, match="salt"):
        _carrying(entry, salt)
    # The same shape from the wire is refused by the decoder.
    wire = msgspec.msgpack.encode(
        {**msgspec.to_builtins(_carrying()), "entry": entry, "salt": salt}
    )
    with pytest.raises(msgspec.ValidationError):
        msgspec.msgpack.decode(wire, type=AcceptanceReceipt)


def _vector_receipt(**changes: object) -> tuple[AcceptanceReceipt, envelope.Header, str]:
    """A receipt carrying the protocol document's audit entry (changed by ``changes``) for the
    document's header, as ``acceptance_leaf`` gets it."""
    entry = msgspec.structs.replace(gen.audit_entry(), **changes)
    header = gen.vector_header()
    digest = envelope.header_hash(gen.header_bytes()).hex()
    receipt = AcceptanceReceipt(
        message_id=header.message_id,
        header_hash=digest,
        accepted_at=gen.audit_entry().time,
        leaf_index=0,
        tree_size=1,
        inclusion_proof=(),
        checkpoint="x",
        entry=encode_entry(entry),
        salt=gen.AUDIT_SALT,
    )
    return receipt, header, digest


def test_acceptance_leaf_is_the_entry_leaf_of_this_message() -> None:
    receipt, header, digest = _vector_receipt()
    assert acceptance_leaf(receipt, header, digest) == leaf_hash(
        entry_leaf(receipt.entry, receipt.salt)
    )


ENTRY_MISMATCHES: dict[str, tuple[dict[str, object], str]] = {
    "another header": ({"header_hash": "9" * 64}, "header_hash"),
    "a refusal": ({"decision": AuditDecision.REFUSED, "reason": "type_not_allowed"}, "decision"),
    "another sender": ({"sender": "halt"}, "sender"),
    "other recipients": ({"recipients": ("halt",)}, "recipients"),
    "another type": ({"message_type": MessageType.REFERRAL}, "message_type"),
    "another token": ({"token_id": "1" * 32}, "token_id"),
    "other subjects": ({"subjects": ("b" * 32,)}, "subjects"),
    "another trace": ({"trace_id": "1" * 32}, "trace_id"),
    "another time": ({"time": T0 + 1}, "time"),
    "a count": ({"count": 1}, "count"),
}


@pytest.mark.parametrize("case", list(ENTRY_MISMATCHES))
def test_acceptance_leaf_refuses_an_entry_that_is_not_this_acceptance(case: str) -> None:
    changes, field = ENTRY_MISMATCHES[case]
    receipt, header, digest = _vector_receipt(**changes)
    with pytest.raises(ReceiptError, match=field) as caught:
        acceptance_leaf(receipt, header, digest)
    assert caught.value.reason is Reason.RECEIPT_MISMATCH


def test_acceptance_leaf_refuses_no_entry_and_an_undecodable_one() -> None:
    receipt, header, digest = _vector_receipt()
    for broken in (
        msgspec.structs.replace(receipt, entry=b"", salt=b""),
        msgspec.structs.replace(receipt, entry=b"\xc1"),
    ):
        with pytest.raises(ReceiptError) as caught:
            acceptance_leaf(broken, header, digest)
        assert caught.value.reason is Reason.RECEIPT_MISMATCH
