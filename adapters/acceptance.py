"""Acceptance receipts checked against the audit log: the sender's check of the receipt its
submission got, and the recipient's check of the receipt a delivery carries. One core.

Rules kept here:

* **The core** (``verify_receipt``), in order: the receipt decodes; the gateway's signature
  with a ``sign`` key of the directory's gateway entry, judged at the receipt's
  ``accepted_at``, and the receipt names the expected message id and header hash
  (``receipts.verify_acceptance_receipt``); the checkpoint's signature and origin
  (``Witness.verify``); the checkpoint is for ``tree_size`` entries (and, for a sender, the
  receipt's leaf is the one the submit answer named). Then the leaf is **computed here** from
  the audit entry and salt the receipt carries, once the entry is shown to be the ``accepted``
  entry of this very header (``receipts.acceptance_leaf``: its time is the receipt's
  ``accepted_at``), and the inclusion proof must lead from it to the checkpoint's root. A
  receipt without its entry is refused unless the caller passes ``served_leaf`` (the sender's
  ``[gateway] require_receipt_entries = false``, the rollout window): then the leaf the gateway
  serves is checked instead, which shows only that *a* leaf is there. Anything wrong raises
  ``ReceiptInvalidError``. Observing the checkpoint is left to the caller.
* **The recipient** (``check_delivery_acceptance``) takes nothing about the acceptance from the
  inbox answer on trust. In order: the core, for the delivery's message id and the delivered
  envelope's header hash, with the entry **always** required (a served leaf cannot bind the
  acceptance time to this message, so the weaker check would let a dishonest gateway skip the
  rest); the checkpoint is witnessed (``Witness.observe``, not as a head): an inconsistency is
  handed to ``witness_alarm`` (the engine's ``witness`` alarm) and the checks go on, exactly as
  for the sender's own receipt; then, with ``skew`` the directory's ``clock_skew_s``:

  1. the inbox answer's ``accepted_at`` equals the receipt's;
  2. ``header.created_at - skew <= accepted_at <= now + skew``;
  3. ``accepted_at >= t - skew``, where ``t`` is the last time this adapter saw as the
     gateway's **head** a tree that did not yet hold the receipt's leaf
     (``Witness.last_head_without``): the gateway cannot date an acceptance before a moment
     at which it showed us a log without it. Checkpoints seen only inside receipts or peers'
     statements do not count: one may be old when first seen, and would refuse an honest
     delivery that waited in the inbox.

  The verified receipt is returned; the envelope is opened with **its** ``accepted_at``. Any
  failure raises ``DeliveryAcceptanceError`` with an ``AcceptanceFailure`` reason: the
  delivery is not opened, applied, answered or rejected (the sender did nothing wrong), and
  stays leased until the gateway hands it out again.
* The time is passed in (``now``); the directory is the caller's verified one.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import msgspec

from adapters.client import InboxDelivery
from adapters.errors import AdapterError
from adapters.witness import (
    CheckpointInvalidError,
    ConsistencyFetch,
    Witness,
    WitnessAlarm,
)
from gateway.protocol.checkpoint import Checkpoint
from gateway.protocol.envelope import DecodedEnvelope
from gateway.protocol.errors import ReceiptError
from gateway.protocol.merkle import InclusionProof, MerkleError, verify_inclusion
from gateway.protocol.receipts import (
    AcceptanceReceipt,
    acceptance_leaf,
    verify_acceptance_receipt,
)
from gateway.protocol.signed import SignedObject
from keys import Directory

logger = logging.getLogger("adapters.acceptance")

_SIGNED_DECODER: Final = msgspec.msgpack.Decoder(SignedObject)

# For a receipt without its audit entry (the sender's rollout fallback): checks the leaf the
# gateway serves at the receipt's index against the checkpoint's root. Raises
# ``InclusionPending`` when no answer came, ``ReceiptInvalidError`` when it is wrong.
ServedLeafCheck = Callable[[AcceptanceReceipt, bytes], Awaitable[None]]


class ReceiptInvalidError(AdapterError):
    """An acceptance receipt failed verification."""


class InclusionPending(Exception):
    """The leaf to check a receipt's inclusion proof against could not be fetched (yet)."""


class AcceptanceFailure(enum.StrEnum):
    """Why a delivery's acceptance was not believed (``DeliveryAcceptanceError.reason``)."""

    RECEIPT = "receipt"  # missing, or does not verify (signature, entry, inclusion, ...)
    TIME_MISMATCH = "time_mismatch"  # the inbox answer names another accepted_at
    BEFORE_CREATION = "before_creation"  # accepted before the sender made it
    IN_FUTURE = "in_future"  # accepted after our now
    BEFORE_HEAD = "before_head"  # accepted before a head we saw without its leaf


class DeliveryAcceptanceError(AdapterError):
    """A delivery's acceptance receipt or time does not hold: the gateway misbehaves."""

    def __init__(self, reason: AcceptanceFailure, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class CheckedReceipt:
    """A receipt that verified, its checkpoint, and why its inclusion is still unproven
    (``None``: proven; only ever set through ``served_leaf``)."""

    receipt: AcceptanceReceipt
    checkpoint: Checkpoint
    unproven: str | None


def check_inclusion(leaf: bytes, receipt: AcceptanceReceipt, root: bytes) -> None:
    """The receipt's inclusion proof leads from ``leaf`` to ``root``; ``ReceiptInvalidError``."""
    try:
        verify_inclusion(
            leaf,
            InclusionProof(
                leaf_index=receipt.leaf_index,
                tree_size=receipt.tree_size,
                hashes=receipt.inclusion_proof,
            ),
            root,
        )
    except MerkleError as exc:
        raise ReceiptInvalidError(f"inclusion proof: {exc}") from None


async def verify_receipt(
    raw: bytes,
    *,
    message_id: str,
    envelope: DecodedEnvelope,
    directory: Directory,
    witness: Witness,
    now: int,
    leaf_index: int | None = None,
    served_leaf: ServedLeafCheck | None = None,
) -> CheckedReceipt:
    """Verify the acceptance receipt ``raw`` of ``envelope`` (see the module rules).

    ``leaf_index``: the leaf the gateway's answer named besides the receipt, if it named one.
    ``served_leaf``: how to check a receipt without its entry; ``None`` refuses such a receipt.
    Raises ``ReceiptInvalidError``; the checkpoint is not observed here.
    """
    digest = envelope.header_hash.hex()
    try:
        receipt = verify_acceptance_receipt(
            _SIGNED_DECODER.decode(raw),
            directory,
            now=now,
            message_id=message_id,
            header_hash=digest,
        )
        checkpoint = witness.verify(receipt.checkpoint, directory, now)
    except (msgspec.DecodeError, ReceiptError, CheckpointInvalidError) as exc:
        raise ReceiptInvalidError(str(exc)) from None
    if checkpoint.size != receipt.tree_size or (
        leaf_index is not None and receipt.leaf_index != leaf_index
    ):
        raise ReceiptInvalidError("the receipt's tree size or leaf index is inconsistent")
    unproven: str | None = None
    if receipt.entry:
        # Our own leaf, from the entry the receipt carries once it is shown to be the
        # acceptance of this header: nothing is taken from the gateway on trust.
        try:
            leaf = acceptance_leaf(receipt, envelope.header, digest)
        except ReceiptError as exc:
            raise ReceiptInvalidError(str(exc)) from None
        check_inclusion(leaf, receipt, checkpoint.root_hash)
    elif served_leaf is None:
        # Whatever a partner can check, the adapter checks: a gateway that leaves the entry
        # out would fall back to the weaker check below.
        raise ReceiptInvalidError(
            "the acceptance receipt carries no audit entry, which this adapter requires "
            "([gateway] require_receipt_entries)"
        )
    else:
        try:
            await served_leaf(receipt, checkpoint.root_hash)
        except InclusionPending as exc:
            unproven = str(exc)
    return CheckedReceipt(receipt, checkpoint, unproven)


async def check_delivery_acceptance(
    delivery: InboxDelivery,
    envelope: DecodedEnvelope,
    *,
    directory: Directory,
    witness: Witness,
    prove: ConsistencyFetch,
    now: int,
    witness_alarm: Callable[[str], None],
) -> AcceptanceReceipt:
    """Verify the acceptance of ``delivery`` (whose envelope decoded as ``envelope``) as the
    module rules say; return the verified receipt, whose ``accepted_at`` the envelope is to
    be opened at. ``witness_alarm`` gets the detail of an inconsistency the receipt's
    checkpoint shows. Raises ``DeliveryAcceptanceError``.
    """
    if not delivery.receipt:
        raise DeliveryAcceptanceError(
            AcceptanceFailure.RECEIPT, "the gateway sent no acceptance receipt with it"
        )
    try:
        checked = await verify_receipt(
            delivery.receipt,
            message_id=delivery.message_id,
            envelope=envelope,
            directory=directory,
            witness=witness,
            now=now,
        )
    except ReceiptInvalidError as exc:
        raise DeliveryAcceptanceError(
            AcceptanceFailure.RECEIPT, f"its acceptance receipt does not verify: {exc}"
        ) from None
    receipt = checked.receipt
    try:
        await witness.observe(checked.checkpoint, prove, now, head=False)
    except WitnessAlarm as exc:
        witness_alarm(str(exc))
    except AdapterError as exc:
        # As for the sender: no proof could be fetched now, nothing wrong shown; the
        # checkpoint is observed again with the next one.
        logger.warning("consistency_unchecked", extra={"detail": str(exc)})
    accepted_at = receipt.accepted_at
    skew = directory.contents.clock_skew_s
    if delivery.accepted_at != accepted_at:
        raise DeliveryAcceptanceError(
            AcceptanceFailure.TIME_MISMATCH,
            f"the inbox names accepted_at {delivery.accepted_at}, its receipt {accepted_at}",
        )
    created_at = envelope.header.created_at
    if accepted_at < created_at - skew:
        raise DeliveryAcceptanceError(
            AcceptanceFailure.BEFORE_CREATION,
            f"accepted at {accepted_at}, before the sender made it at {created_at} "
            f"(clock skew {skew} s)",
        )
    if accepted_at > now + skew:
        raise DeliveryAcceptanceError(
            AcceptanceFailure.IN_FUTURE,
            f"accepted at {accepted_at}, after now ({now}, clock skew {skew} s)",
        )
    head_at = witness.last_head_without(receipt.leaf_index)
    if head_at is not None and accepted_at < head_at - skew:
        raise DeliveryAcceptanceError(
            AcceptanceFailure.BEFORE_HEAD,
            f"accepted at {accepted_at}, but at {head_at} the gateway's head did not hold its "
            f"leaf {receipt.leaf_index} yet (clock skew {skew} s)",
        )
    return receipt
