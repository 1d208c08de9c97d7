"""The gateway's signatures: audit checkpoints, acceptance receipts and sender events.

Rules kept here:

* One key, the gateway's Ed25519 ``sign`` key (listed in the directory's gateway entry), signs
  all three; each object has its own domain (checkpoints are C2SP signed notes whose key name
  is the log's origin; receipts and sender events are ``SignedObject``s under
  ``labels.ACCEPTANCE_RECEIPT`` and ``labels.SENDER_EVENT``).
* **Wire form.** What ``acceptance_receipt`` and ``sender_event`` return — and the store keeps,
  and the API hands out (base64 in JSON) — is the msgpack encoding of the ``SignedObject``
  (``{payload, kid, sig}``), the same form as a signed token. A partner decodes it with
  ``decode_signed_object`` and verifies it with ``receipts.verify_acceptance_receipt`` or
  ``verify_sender_event``; the bytes are never re-encoded on the way.
* A receipt or rejection event embeds the recipient's own signed object unchanged (the
  ``detail`` bytes the store passes are its msgpack form), so the sender checks the
  recipient's signature itself.
* An acceptance receipt carries the acceptance's audit entry bytes and salt (the ``record``
  the store passes), so the sender checks the inclusion proof against **its own** leaf.
  ``receipt_entries=False`` leaves them out: only for the rollout window in which adapters
  that refuse the new fields (their decoders forbid unknown fields) are still deployed.
* Implements ``gateway.store.base.ReceiptSigner``; the store calls it inside the committing
  transaction, so it does no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import msgspec

from gateway.protocol.checkpoint import make_checkpoint
from gateway.protocol.receipts import (
    AcceptanceReceipt,
    SenderEvent,
    SenderEventKind,
    sign_acceptance_receipt,
    sign_sender_event,
)
from gateway.protocol.signed import SignedObject
from gateway.store.base import AuditRecord, EventKind, Submission
from keys import Ed25519KeyPair, KeyUse

_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(SignedObject)


def encode_signed_object(signed: SignedObject) -> bytes:
    """The msgpack wire form of a signed object (receipts, events, tokens, revocations)."""
    return _ENCODER.encode(signed)


def decode_signed_object(data: bytes) -> SignedObject:
    """Decode the msgpack wire form; raises ``msgspec.DecodeError`` if it is not one."""
    return _DECODER.decode(data)


class GatewaySigner:
    """``ReceiptSigner`` with the gateway's ``sign`` key; checkpoints under ``origin``."""

    def __init__(self, key: Ed25519KeyPair, origin: str, *, receipt_entries: bool = True) -> None:
        if key.use is not KeyUse.SIGN:
            raise ValueError("the gateway signs with its sign key")
        self._key = key
        self.origin = origin
        self._receipt_entries = receipt_entries

    @property
    def public_key(self) -> bytes:
        return self._key.public

    def checkpoint(self, size: int, root: bytes) -> str:
        # C2SP recommends the key name be the origin; one name for both.
        return make_checkpoint(self.origin, size, root, self.origin, self._key)

    def acceptance_receipt(
        self,
        sub: Submission,
        accepted_at: int,
        leaf_index: int,
        tree_size: int,
        proof: Sequence[bytes],
        checkpoint: str,
        *,
        record: AuditRecord | None = None,
    ) -> bytes:
        entry, salt = (
            (record.entry, record.salt)
            if record is not None and self._receipt_entries
            else (b"", b"")
        )
        receipt = AcceptanceReceipt(
            message_id=sub.message_id,
            header_hash=sub.header_hash,
            accepted_at=accepted_at,
            leaf_index=leaf_index,
            tree_size=tree_size,
            inclusion_proof=tuple(proof),
            checkpoint=checkpoint,
            entry=entry,
            salt=salt,
        )
        return encode_signed_object(sign_acceptance_receipt(receipt, self._key))

    def sender_event(
        self, kind: EventKind, message_id: str, recipient: str, at: int, detail: bytes
    ) -> bytes:
        event_kind = SenderEventKind(kind.value)
        carried = event_kind in (SenderEventKind.RECEIPT, SenderEventKind.REJECTION)
        event = SenderEvent(
            kind=event_kind,
            message_id=message_id,
            recipient=recipient,
            at=at,
            recipient_object=decode_signed_object(detail) if carried else None,
        )
        return encode_signed_object(sign_sender_event(event, self._key))
