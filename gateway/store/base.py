"""The store interface: what the relay needs from durable storage, for SQLite and PostgreSQL.

Rules kept here (DESIGN.md "Delivery" and "Storage"):

* ``accept`` is one transaction: the duplicate-id check, the token checks (run by the relay's
  ``check`` callback **inside** the transaction, against the token row as it is in that
  transaction, so a concurrent revocation can never be overtaken), the message, its deliveries,
  its audit leaf and its signed acceptance receipt are committed together, or nothing is. The
  receipt is handed out only after the commit is durable.
* The same message id with the same envelope bytes returns the first receipt again; with other
  bytes it is refused (``duplicate_id``); a refused id leaves no trace but its audit entry, so it
  may be submitted again.
* A delivery is claimed with a lease; what is not finished by ``lease_until`` is claimed again.
  A delivery receipt or rejection ends it; when every recipient is done the ciphertext is
  deleted. Every outcome becomes a sender event in the sender's own inbox.
* Revoking a token purges its undelivered **and leased** messages in the same transaction.
* ``purge`` ends named deliveries that a new directory voids (a sender key revoked with its
  signatures void, a recipient that left), each with its audit record and a ``purge`` sender
  event; a delivery already ended meanwhile is skipped, never ended twice.
* ``record_key_revocation`` stores a partner's own key revocation statement (named by its
  hash) with its audit record in one transaction; the same statement again changes nothing and
  returns the row first stored. Statements are never deleted: ``key_revocations`` returns every
  one, for the relay's overlay on the directory (docs/adr/0011) and for partners to verify.
* ``tokens_of`` and ``pending_under`` find what a revoked ``token`` key voids: the registered
  tokens of its coordinator, and the undelivered deliveries of messages under the void ones.
* Every time is an argument (house rule 5).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol


class DeliveryState(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    REJECTED = "rejected"
    EXPIRED = "expired"
    PURGED = "purged"


class EventKind(enum.StrEnum):
    RECEIPT = "receipt"
    REJECTION = "rejection"
    EXPIRY = "expiry"
    PURGE = "purge"


@dataclass(frozen=True)
class TokenRow:
    """An approach token as registered at the gateway."""

    token_id: str
    coordinator: str
    token_hash: str
    signed: bytes
    valid_until: int
    retention_until: int
    registered_at: int
    supersedes: str | None = None
    superseded_by: str | None = None
    revoked_at: int | None = None


@dataclass(frozen=True)
class Submission:
    """An envelope that passed the checks outside the transaction (decode, TLS identity,
    signature, clock) and now needs the transactional ones."""

    message_id: str
    sender: str
    recipients: tuple[str, ...]
    envelope: bytes
    envelope_hash: str
    header_hash: str
    token_id: str
    message_type: str
    subjects: tuple[str, ...]
    policy_hash: str
    trace_id: str
    received_at: int
    expires_at: int


@dataclass(frozen=True)
class AuditRecord:
    """One audit entry to append: its encoded (metadata-only) bytes, its salt, and the token it
    belongs to (for deletion at the token's retention deadline)."""

    entry: bytes
    salt: bytes
    token_id: str | None


@dataclass(frozen=True)
class Accepted:
    receipt: bytes
    leaf_index: int
    first_time: bool


@dataclass(frozen=True)
class Delivery:
    message_id: str
    recipient: str
    sender: str
    envelope: bytes
    lease_until: int
    attempts: int
    # The gateway's audited acceptance time: recipients judge the sender key at it.
    accepted_at: int = 0
    # The message's signed acceptance receipt (the exact bytes the sender got), so the
    # recipient checks ``accepted_at`` against the audit log itself. Stored with the message
    # in the committing transaction, so never empty for a committed row; empty (and refused by
    # every recipient) only if a row somehow lacks it.
    receipt: bytes = b""


@dataclass(frozen=True)
class SenderEventRow:
    event_id: int
    sender: str
    message_id: str
    kind: EventKind
    signed: bytes
    created_at: int


@dataclass(frozen=True)
class RecipientState:
    recipient: str
    state: DeliveryState
    attempts: int
    finished_at: int | None


@dataclass(frozen=True)
class MessageStatus:
    message_id: str
    sender: str
    accepted_at: int
    expires_at: int
    recipients: tuple[RecipientState, ...]
    # Receipts and rejections must name it (``receipt_mismatch`` otherwise).
    header_hash: str = ""
    token_id: str = ""


@dataclass(frozen=True)
class QueueStat:
    recipient: str
    depth: int
    oldest_accepted_at: int | None


@dataclass(frozen=True)
class Purged:
    """Deliveries ended by a revocation or expiry: each gets a sender event."""

    message_id: str
    sender: str
    recipient: str


@dataclass(frozen=True)
class PendingDelivery:
    """An undelivered (pending or leased) delivery, with what a directory change judges it by:
    the gateway's ``accepted_at`` and the envelope (its header names the sender key)."""

    message_id: str
    sender: str
    recipient: str
    accepted_at: int
    envelope: bytes
    # The approach token the message was sent under.
    token_id: str = ""


@dataclass(frozen=True)
class KeyRevocationRow:
    """A partner's own key revocation statement as the gateway recorded it.

    ``statement`` is its canonical encoding (``keys.revocation.encode_revocation``) and
    ``statement_hash`` the SHA-256 of those bytes; the other fields repeat what the statement
    says, for queries. ``carried_by`` is the partner whose TLS connection brought it (any
    partner may carry one), ``audit_index`` the leaf of its ``key_revoked`` audit entry.
    """

    statement_hash: str
    partner: str
    kid: str
    signing_kid: str
    revoked_at: int
    compromised_since: int | None
    statement: bytes
    recorded_at: int
    carried_by: str
    audit_index: int = -1


@dataclass(frozen=True)
class Retained:
    """What one approach token's retention deadline deleted (``Store.apply_retention``).

    ``entries``: audit entries whose entry and salt were deleted (their leaves stay);
    ``messages``: message rows with their receipts, deliveries and ciphertext; ``events``:
    sender events of those messages; ``token``: 1 when the token's content (the signed token
    with its subjects, and its revocation) was deleted now, 0 for a later sweep that only
    found entries recorded after the deadline (a late refusal naming the token)."""

    token_id: str
    entries: int
    messages: int
    events: int
    token: int
    # The leaf of the signed ``retention`` audit entry that records these counts.
    leaf_index: int


RetentionAudit = Callable[[str, int], AuditRecord]
"""``(token id, entries deleted) -> the retention audit record``, called inside the retention
transaction; the record it returns must have ``token_id=None`` so no later sweep deletes it."""

# Tokens handled per ``apply_retention`` call (one transaction); the sweeper calls again while
# a call returns this many.
RETENTION_BATCH = 100


@dataclass
class AuditHead:
    size: int
    root: bytes
    checkpoint: str = field(default="")


class ReceiptSigner(Protocol):
    """Signs what the store hands out; the store calls it inside the committing transaction.

    ``acceptance_receipt`` gets the acceptance's own audit ``record`` (the one the relay's
    ``TokenCheck`` returned and the store appended at ``leaf_index``), so the receipt can carry
    the entry and its salt and the sender can recompute its own leaf.
    """

    def checkpoint(self, size: int, root: bytes) -> str: ...

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
    ) -> bytes: ...

    def sender_event(
        self, kind: EventKind, message_id: str, recipient: str, at: int, detail: bytes
    ) -> bytes: ...


TokenCheck = Callable[[TokenRow | None], AuditRecord]
"""Runs inside the accept transaction with the token row as that transaction sees it. Raises the
relay's refusal to abort, or returns the audit record of the acceptance."""


class Store(Protocol):
    """The one store interface; ``gateway.store.sqlite`` and ``gateway.store.postgres``."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...

    async def accept(self, sub: Submission, check: TokenCheck) -> Accepted: ...
    async def record_audit(self, record: AuditRecord) -> int: ...

    async def register_token(self, row: TokenRow, audit: AuditRecord) -> TokenRow: ...
    async def get_token(self, token_id: str) -> TokenRow | None: ...
    async def revoke_token(
        self, token_id: str, revoked_at: int, revocation: bytes, audit: AuditRecord
    ) -> list[Purged]: ...

    async def claim(self, recipient: str, limit: int, now: int, lease_s: int) -> list[Delivery]: ...
    async def finish(
        self,
        message_id: str,
        recipient: str,
        state: DeliveryState,
        signed: bytes,
        now: int,
        audit: AuditRecord,
    ) -> bool: ...
    async def events(
        self, sender: str, limit: int, now: int, lease_s: int
    ) -> list[SenderEventRow]: ...
    async def ack_events(self, sender: str, event_ids: Sequence[int]) -> int: ...
    async def message_status(self, message_id: str) -> MessageStatus | None: ...
    async def expire(
        self, now: int, audit_for: Callable[[Purged], AuditRecord]
    ) -> list[Purged]: ...

    async def pending_involving(self, partners: Sequence[str]) -> list[PendingDelivery]:
        """Every undelivered (pending or leased) delivery sent by or addressed to one of
        ``partners`` (read only; the relay judges them against a new directory)."""
        ...

    async def purge(
        self, deliveries: Sequence[Purged], now: int, audit_for: Callable[[Purged], AuditRecord]
    ) -> list[Purged]:
        """End each of ``deliveries`` still undelivered as ``purged``, with its audit record
        (``audit_for``) and a ``purge`` sender event, in one transaction; return those ended."""
        ...

    async def record_key_revocation(
        self, row: KeyRevocationRow, audit: AuditRecord
    ) -> tuple[KeyRevocationRow, bool]:
        """Store ``row`` (its ``audit_index`` is set here) with its audit record, unless a
        statement with its hash is stored already: then nothing is written. Returns the stored
        row and whether it was stored now."""
        ...

    async def key_revocations(self) -> list[KeyRevocationRow]:
        """Every recorded key revocation statement, in the order they were recorded."""
        ...

    async def tokens_of(self, coordinators: Sequence[str]) -> list[TokenRow]:
        """Every registered (not retained) token issued by one of ``coordinators``."""
        ...

    async def pending_under(self, token_ids: Sequence[str]) -> list[PendingDelivery]:
        """Every undelivered (pending or leased) delivery of a message under one of
        ``token_ids`` (read only)."""
        ...

    async def apply_retention(self, now: int, audit_for: RetentionAudit) -> list[Retained]:
        """Delete every trace of the subjects of tokens whose ``retention_until`` <= ``now``
        (at most ``RETENTION_BATCH`` tokens), each with its signed retention entry, in one
        transaction. The token row stays as a tombstone without its signed token (so the id
        is never registered again and late entries naming it are found by later sweeps);
        ``get_token`` no longer finds it."""

    async def audit_head(self) -> AuditHead: ...
    async def inclusion_proof(self, index: int, size: int) -> list[bytes]: ...
    async def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]: ...
    async def audit_leaves(self) -> list[tuple[int, bytes, bytes | None, bytes | None]]: ...
    async def checkpoints(self) -> list[str]: ...
    async def queue_stats(self) -> list[QueueStat]: ...
    async def token_expiries(self, now: int) -> dict[str, int]:
        """Coordinator -> the earliest ``valid_until`` among its active tokens: not revoked,
        not superseded, ``valid_until`` after ``now`` (for the token expiry gauge)."""
        ...
