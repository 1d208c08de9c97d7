"""Receipts, rejections and sender events: signed objects, each under its own label.

Rules kept here:

* Four objects, four labels (``labels.ACCEPTANCE_RECEIPT``, ``DELIVERY_RECEIPT``,
  ``REJECTION``, ``SENDER_EVENT``), all carried as ``signed.SignedObject`` (payload = the exact
  signed msgpack bytes). A delivery receipt's bytes never verify as a rejection, an acceptance
  receipt's never as a sender event: the label differs even where the signer is the same.
* Who signs: the **gateway** (its ``sign`` key, listed in the directory's gateway entry) signs
  acceptance receipts and sender events; the **recipient** (its own ``sign`` key) signs
  delivery receipts and rejections. Verification checks the signer's owner and key use before
  the signature, then the key state at the time the object speaks of: usable then, and not
  revoked since with a compromise window covering it (``keys.check_signature_time``). When
  the gateway knows its own audited receive time of a recipient's object, it passes it as
  ``signed_at`` instead of the recipient-chosen time.
* A sender event for a receipt or rejection embeds the recipient's own ``SignedObject``
  unchanged, so the sender verifies the recipient's signature itself and need not trust the
  gateway about what the recipient said. Expiry and purge events carry none.
* The checkpoint in an acceptance receipt is opaque text here (the C2SP signed note that
  ``gateway.protocol.checkpoint`` parses and verifies); the inclusion proof is a list of
  32-byte hashes checked by ``gateway.protocol.merkle``.
* An acceptance receipt carries the acceptance audit entry (its exact stored bytes) and its
  salt, so the sender recomputes **its own** leaf and checks the inclusion proof against it
  (``acceptance_leaf``), instead of trusting the gateway about which leaf is at
  ``leaf_index``. Both fields were added with defaults and are omitted when empty, so a
  receipt made before them keeps its bytes and still decodes; such a receipt proves only that
  *some* leaf is at ``leaf_index`` (the caller fetches that leaf).
* Every failure raises ``ReceiptError`` with a ``Reason``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, TypeVar

import msgspec

from gateway.protocol import labels
from gateway.protocol.auditentry import (
    MAX_ENTRY_BYTES,
    SALT_LEN,
    AuditDecision,
    AuditEntryError,
    decode_entry,
    entry_leaf,
)
from gateway.protocol.envelope import Header
from gateway.protocol.errors import ReceiptError
from gateway.protocol.merkle import leaf_hash
from gateway.protocol.reasons import Reason, RejectionReason
from gateway.protocol.signed import SignedObject, sign_object, verify_object
from gateway.protocol.types import MessageId, PartnerId, Sha256Hex, UnixTime
from keys import (
    BadSignatureError,
    Directory,
    DirectoryError,
    DirectoryKey,
    Ed25519KeyPair,
    KeyStateError,
    KeyUse,
    check_signature_time,
)

T = TypeVar("T")

Hash32 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
Detail = Annotated[str, msgspec.Meta(max_length=1000)]

__all__ = [
    "AcceptanceReceipt",
    "DeliveryReceipt",
    "Rejection",
    "RejectionReason",
    "SenderEvent",
    "SenderEventKind",
    "VerifiedSenderEvent",
    "acceptance_leaf",
    "sign_acceptance_receipt",
    "sign_delivery_receipt",
    "sign_rejection",
    "sign_sender_event",
    "verify_acceptance_receipt",
    "verify_delivery_receipt",
    "verify_rejection",
    "verify_sender_event",
]


class AcceptanceReceipt(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True
):
    """The gateway's promise: this message is durably stored and in the audit log.

    ``entry`` and ``salt`` (both or neither) are the acceptance audit entry's exact bytes and
    its 32-byte salt: with them the sender recomputes the leaf at ``leaf_index`` itself.
    Defaults are omitted from the encoding, so a receipt without them has the bytes it had
    before the fields existed.
    """

    message_id: MessageId
    header_hash: Sha256Hex
    accepted_at: UnixTime
    leaf_index: Annotated[int, msgspec.Meta(ge=0)]
    tree_size: Annotated[int, msgspec.Meta(ge=1)]
    inclusion_proof: Annotated[tuple[Hash32, ...], msgspec.Meta(max_length=64)]
    checkpoint: Annotated[str, msgspec.Meta(min_length=1, max_length=8192)]
    entry: Annotated[bytes, msgspec.Meta(max_length=MAX_ENTRY_BYTES)] = b""
    salt: Annotated[bytes, msgspec.Meta(max_length=SALT_LEN)] = b""

    def __post_init__(self) -> None:
        if self.leaf_index >= self.tree_size:
            raise ValueError("leaf_index must be below tree_size")
        if bool(self.entry) != bool(self.salt) or (self.salt and len(self.salt) != SALT_LEN):
            raise ValueError(f"entry and its {SALT_LEN}-byte salt come together or not at all")


class DeliveryReceipt(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The recipient's statement: it opened and ingested this message.

    ``plaintext_hash`` is the hash the sender's inner signature covers, so the receipt proves
    which content was received, not merely which ciphertext.
    """

    message_id: MessageId
    header_hash: Sha256Hex
    recipient: PartnerId
    received_at: UnixTime
    plaintext_hash: Sha256Hex


class Rejection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The recipient's statement: it refused this message and did not ingest it."""

    message_id: MessageId
    header_hash: Sha256Hex
    recipient: PartnerId
    rejected_at: UnixTime
    reason: RejectionReason
    # For a person at the sender; never plaintext or subject details.
    detail: Detail = ""


class SenderEventKind(enum.StrEnum):
    RECEIPT = "receipt"
    REJECTION = "rejection"
    EXPIRY = "expiry"
    PURGE = "purge"


class SenderEvent(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What happened to the sender's message at one recipient, signed by the gateway."""

    kind: SenderEventKind
    message_id: MessageId
    recipient: PartnerId
    at: UnixTime
    # The recipient's own signed receipt or rejection, unchanged (receipt/rejection only).
    recipient_object: SignedObject | None = None

    def __post_init__(self) -> None:
        carries = self.kind in (SenderEventKind.RECEIPT, SenderEventKind.REJECTION)
        if carries != (self.recipient_object is not None):
            raise ValueError(
                "receipt and rejection events carry the recipient's signed object; "
                "expiry and purge events carry none"
            )


@dataclass(frozen=True, slots=True)
class VerifiedSenderEvent:
    """A verified sender event and, for receipt/rejection, the verified recipient object."""

    event: SenderEvent
    receipt: DeliveryReceipt | None = None
    rejection: Rejection | None = None


# -- Signing ------------------------------------------------------------------------------


def _check_sign_key(key: Ed25519KeyPair) -> None:
    if key.use is not KeyUse.SIGN:
        raise ReceiptError("receipts are signed with a sign key", Reason.BAD_RECEIPT_SIGNATURE)


def sign_acceptance_receipt(receipt: AcceptanceReceipt, key: Ed25519KeyPair) -> SignedObject:
    """The gateway signs an acceptance receipt with its ``sign`` key."""
    _check_sign_key(key)
    return sign_object(labels.ACCEPTANCE_RECEIPT, receipt, key)


def sign_delivery_receipt(receipt: DeliveryReceipt, key: Ed25519KeyPair) -> SignedObject:
    """A recipient signs a delivery receipt with its ``sign`` key."""
    _check_sign_key(key)
    return sign_object(labels.DELIVERY_RECEIPT, receipt, key)


def sign_rejection(rejection: Rejection, key: Ed25519KeyPair) -> SignedObject:
    """A recipient signs a rejection with its ``sign`` key."""
    _check_sign_key(key)
    return sign_object(labels.REJECTION, rejection, key)


def sign_sender_event(event: SenderEvent, key: Ed25519KeyPair) -> SignedObject:
    """The gateway signs a sender event with its ``sign`` key."""
    _check_sign_key(key)
    return sign_object(labels.SENDER_EVENT, event, key)


# -- Verifying ----------------------------------------------------------------------------


def _verify(
    label: bytes,
    signed: SignedObject,
    payload_type: type[T],
    directory: Directory,
    owner_of: Callable[[T], str],
    time_of: Callable[[T], int],
    *,
    expected_owner: str | None,
    now: int,
    signed_at: int | None,
) -> T:
    """Verify under ``label``: signer's key is a ``sign`` key (of ``expected_owner`` when known
    in advance), the signature, then the owner the payload names, then the key's state."""
    found: list[tuple[str, DirectoryKey]] = []

    def public_for_kid(kid: str) -> bytes:
        try:
            owner, key = directory.key(kid)
        except DirectoryError:
            raise ReceiptError("signed by an unknown key", Reason.BAD_RECEIPT_SIGNATURE) from None
        if key.use is not KeyUse.SIGN or (expected_owner is not None and owner != expected_owner):
            raise ReceiptError("signed by the wrong key", Reason.BAD_RECEIPT_SIGNATURE)
        found.append((owner, key))
        return key.public

    try:
        value = verify_object(label, signed, payload_type, public_for_kid)
    except BadSignatureError:
        raise ReceiptError("signature does not verify", Reason.BAD_RECEIPT_SIGNATURE) from None
    owner, key = found[0]
    if owner != owner_of(value):
        # A recipient's object signed by another partner's key: opaque, like a bad signature.
        raise ReceiptError("signed by another partner's key", Reason.BAD_RECEIPT_SIGNATURE)
    try:
        check_signature_time(key, time_of(value) if signed_at is None else signed_at, now)
    except KeyStateError as exc:
        raise ReceiptError(f"signing key: {exc}", Reason.BAD_RECEIPT_SIGNATURE) from None
    return value


def _check_expected(
    kind: str,
    message_id: str,
    header_hash: str,
    expected_message_id: str | None,
    expected_header_hash: str | None,
) -> None:
    if expected_message_id is not None and message_id != expected_message_id:
        raise ReceiptError(f"{kind} names another message", Reason.RECEIPT_MISMATCH)
    if expected_header_hash is not None and header_hash != expected_header_hash:
        raise ReceiptError(f"{kind} names another header hash", Reason.RECEIPT_MISMATCH)


def verify_acceptance_receipt(
    signed: SignedObject,
    directory: Directory,
    *,
    now: int,
    message_id: str | None = None,
    header_hash: str | None = None,
) -> AcceptanceReceipt:
    """Verify a gateway-signed acceptance receipt (optionally for this message and header).

    The inclusion proof and checkpoint are not checked here (``merkle``/``checkpoint`` do).
    Raises ``ReceiptError`` (``bad_receipt_signature``, ``receipt_mismatch``).
    """
    gateway = directory.gateway.id
    receipt = _verify(
        labels.ACCEPTANCE_RECEIPT,
        signed,
        AcceptanceReceipt,
        directory,
        lambda _: gateway,
        lambda r: r.accepted_at,
        expected_owner=gateway,
        now=now,
        signed_at=None,
    )
    _check_expected(
        "acceptance receipt", receipt.message_id, receipt.header_hash, message_id, header_hash
    )
    return receipt


def acceptance_leaf(receipt: AcceptanceReceipt, header: Header, header_hash: str) -> bytes:
    """The Merkle leaf hash of the audit entry ``receipt`` carries, once that entry is shown to
    be the ``accepted`` entry of **this** message: the envelope ``header`` the sender sent and
    its ``header_hash`` (hex).

    The entry must decode and name, exactly, what the relay records for an acceptance: the
    decision ``accepted`` (no reason, no TLS identity, no count), the receipt's
    ``accepted_at`` as its time, the header hash, the sender, the recipients in header order,
    the message type, the token id, the subjects and the trace id of ``traceparent``. The
    policy hash is not compared: it names the covenant policy of the gateway's directory at
    acceptance, which may be newer than the sender's. The leaf is
    ``leaf_hash(entry_leaf(entry, salt))``; checking it against the inclusion proof and the
    checkpoint is the caller's (``merkle.verify_inclusion``).

    Raises ``ReceiptError``: ``receipt_mismatch`` when the receipt carries no entry, or an
    entry that does not decode or is not this message's acceptance.
    """
    if not receipt.entry:
        raise ReceiptError("the acceptance receipt carries no audit entry", Reason.RECEIPT_MISMATCH)
    try:
        entry = decode_entry(receipt.entry)
    except AuditEntryError as exc:
        raise ReceiptError(f"the receipt's audit entry: {exc}", Reason.RECEIPT_MISMATCH) from None
    expected: dict[str, object] = {
        "time": receipt.accepted_at,
        "decision": AuditDecision.ACCEPTED,
        "reason": None,
        "sender": header.sender,
        "recipients": tuple(r.partner for r in header.recipients),
        "message_type": header.message_type,
        "token_id": header.token_id,
        "subjects": tuple(header.subjects),
        "header_hash": header_hash,
        # The trace id is the second field of the W3C traceparent (version-trace-span-flags).
        "trace_id": header.trace_id.split("-")[1],
        "tls_identity": None,
        "count": None,
    }
    differ = [name for name, value in expected.items() if getattr(entry, name) != value]
    if differ:
        raise ReceiptError(
            "the receipt's audit entry is not this message's acceptance: it differs in "
            + ", ".join(differ),
            Reason.RECEIPT_MISMATCH,
        )
    return leaf_hash(entry_leaf(receipt.entry, receipt.salt))


def verify_delivery_receipt(
    signed: SignedObject,
    directory: Directory,
    *,
    now: int,
    recipient: str | None = None,
    message_id: str | None = None,
    header_hash: str | None = None,
    signed_at: int | None = None,
) -> DeliveryReceipt:
    """Verify a recipient-signed delivery receipt.

    The signer must own a ``sign`` key and be the receipt's ``recipient``; when ``recipient``
    is given (the TLS-authenticated caller, or a recipient of the message), the receipt must
    name it (``not_recipient``). ``signed_at`` overrides ``received_at`` for the key-state
    check. Raises ``ReceiptError``.
    """
    receipt = _verify(
        labels.DELIVERY_RECEIPT,
        signed,
        DeliveryReceipt,
        directory,
        lambda r: r.recipient,
        lambda r: r.received_at,
        expected_owner=None,
        now=now,
        signed_at=signed_at,
    )
    if recipient is not None and receipt.recipient != recipient:
        raise ReceiptError("receipt is from another recipient", Reason.NOT_RECIPIENT)
    _check_expected(
        "delivery receipt", receipt.message_id, receipt.header_hash, message_id, header_hash
    )
    return receipt


def verify_rejection(
    signed: SignedObject,
    directory: Directory,
    *,
    now: int,
    recipient: str | None = None,
    message_id: str | None = None,
    header_hash: str | None = None,
    signed_at: int | None = None,
) -> Rejection:
    """Verify a recipient-signed rejection; the same rules as ``verify_delivery_receipt``."""
    rejection = _verify(
        labels.REJECTION,
        signed,
        Rejection,
        directory,
        lambda r: r.recipient,
        lambda r: r.rejected_at,
        expected_owner=None,
        now=now,
        signed_at=signed_at,
    )
    if recipient is not None and rejection.recipient != recipient:
        raise ReceiptError("rejection is from another recipient", Reason.NOT_RECIPIENT)
    _check_expected(
        "rejection", rejection.message_id, rejection.header_hash, message_id, header_hash
    )
    return rejection


def verify_sender_event(
    signed: SignedObject,
    directory: Directory,
    *,
    now: int,
    message_id: str | None = None,
) -> VerifiedSenderEvent:
    """Verify a gateway-signed sender event and, for a receipt or rejection, the embedded
    recipient-signed object, which must name the same message and recipient.

    The recipient's key state is judged at the event's ``at`` (the gateway's audited time),
    not at the recipient's own. Raises ``ReceiptError``.
    """
    gateway = directory.gateway.id
    event = _verify(
        labels.SENDER_EVENT,
        signed,
        SenderEvent,
        directory,
        lambda _: gateway,
        lambda e: e.at,
        expected_owner=gateway,
        now=now,
        signed_at=None,
    )
    if message_id is not None and event.message_id != message_id:
        raise ReceiptError("sender event names another message", Reason.RECEIPT_MISMATCH)
    inner = event.recipient_object
    if inner is None:
        return VerifiedSenderEvent(event)
    if event.kind is SenderEventKind.RECEIPT:
        receipt = verify_delivery_receipt(
            inner,
            directory,
            now=now,
            recipient=event.recipient,
            message_id=event.message_id,
            signed_at=event.at,
        )
        return VerifiedSenderEvent(event, receipt=receipt)
    rejection = verify_rejection(
        inner,
        directory,
        now=now,
        recipient=event.recipient,
        message_id=event.message_id,
        signed_at=event.at,
    )
    return VerifiedSenderEvent(event, rejection=rejection)
