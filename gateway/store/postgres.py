"""The PostgreSQL store: several gateway replicas on one database (the ``postgres`` extra).

Rules kept here (on top of those in ``gateway.store.base``), and why they hold across replicas:

* **One gap-free audit log.** Every transaction that appends audit leaves first locks the single
  ``audit_head`` row ``FOR UPDATE`` and reads the log's size from it, then appends leaves and the
  Merkle nodes they complete (``MerkleLog`` over a per-transaction node cache, see
  ``_BatchNodes``), signs the checkpoint and the acceptance receipts (``ReceiptSigner``) and
  writes the new size, all before ``COMMIT``. Appending transactions of all replicas therefore
  run one after another, each seeing the previous one's committed tail: indexes are assigned in
  commit order with no gap, and one replica at a time signs a checkpoint.
* **Group commit.** Each store has one writer task that takes every operation queued while the
  previous batch ran (up to ``max_batch``) and runs them in one transaction: throughput is not
  one commit per message. An operation raises only **before** its first write (reads, the
  relay's callback, signatures and Merkle appends come first; the writes it buffers or makes
  come last), so a refused operation leaves nothing behind and needs no savepoint; its buffered
  leaves and nodes are dropped. A database error fails the whole batch with
  ``StoreUnavailableError`` and nothing of it is visible.
* **Accept.** Inside the batch, after the ``audit_head`` lock: the duplicate-id check against
  the committed messages (read once per batch for all its accepts: no other transaction can
  insert a message while the lock is held) and the ones accepted earlier in the batch; the token
  row read ``SELECT … FOR SHARE``, so a revocation's ``UPDATE`` waits for this transaction, and
  the relay's ``TokenCheck`` runs against that row. A revocation committed first is seen; one
  committing later waits, then purges what this transaction stored. The same message sent to two
  replicas at once is accepted once: the second batch reads the first one's committed row and
  returns its receipt (the primary key would refuse a second row regardless; that would fail the
  batch as ``StoreUnavailableError``, and the sender's retry would get the stored receipt).
* **Deliveries** are claimed in one statement, ``FOR UPDATE SKIP LOCKED`` with a lease: two
  replicas polling for one recipient never get the same delivery within a lease, and a claim
  never waits for a lock, so it cannot take part in a deadlock. Sender events likewise.
* **Revocation** locks the token row, then purges its pending and leased deliveries and records
  the revocation in the same transaction.
* **Wake-ups.** A committing batch ``NOTIFY``s the parties it woke on one channel per schema
  (``pg_notify`` is delivered on commit, never for a rolled-back transaction). Each store keeps
  one listening connection, reconnected with backoff, feeding ``Notifier``; a waiter never waits
  longer than ``fallback_poll_s`` at a time, so a notification missed during a reconnect costs
  latency, never a message.
* **Peers.** ``tell_peers`` sends a short text to every replica on the schema (this one too) on
  a second channel, received by ``peer_listener``; the gateway shares its rate-limit takes
  this way (``gateway.ratelimit.SharedRateLimiter``). Like every notification it is best
  effort: one sent while a listener reconnects is lost.
* **Failures.** A lost connection or a restarted server raises ``StoreUnavailableError``; the
  pool replaces closed connections by itself. The password comes from the configuration
  (``store.password`` / ``KETENPOST_STORE__PASSWORD_FILE``), never from the URL (neither in
  its user part nor as a ``?password=`` parameter). Other query parameters asyncpg does not
  know are sent as server settings: ``?search_path=SCHEMA`` puts a deployment (or a test run)
  in a schema of its own, ``?application_name=NAME`` names its connections.
* **Migrations** run as their own step (``PostgresStore.migrate``): each in its own transaction
  under ``pg_advisory_xact_lock`` (keyed by schema), so two runs at once apply each version once.
  ``open`` refuses a schema older than ``LATEST_VERSION`` and serves on a newer one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeAlias, TypeVar

import asyncpg

from gateway.protocol.merkle import (
    EMPTY_ROOT,
    HASH_LEN,
    MerkleError,
    MerkleLog,
    MerkleReason,
)
from gateway.store.base import (
    RETENTION_BATCH,
    Accepted,
    AuditHead,
    AuditRecord,
    Delivery,
    DeliveryState,
    EventKind,
    KeyRevocationRow,
    MessageStatus,
    PendingDelivery,
    Purged,
    QueueStat,
    ReceiptSigner,
    RecipientState,
    Retained,
    RetentionAudit,
    SenderEventRow,
    Submission,
    TokenCheck,
    TokenRow,
)
from gateway.store.errors import DuplicateMessageError, StoreUnavailableError, StoreVersionError
from gateway.store.migrations import LATEST_VERSION, MIGRATIONS
from gateway.store.notify import Notifier

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    # asyncpg's classes are generic in its stubs only (``asyncpg-stubs``), hence the guard.
    _Conn: TypeAlias = PoolConnectionProxy[asyncpg.Record]
    _AnyConn: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]

_T = TypeVar("_T")

# What "the database could not be reached or the statement failed" looks like from asyncpg:
# server errors (including a terminated backend), a closed or broken connection (a connection
# the server dropped mid-operation can also surface as asyncpg's ``InternalClientError``), the
# socket, and our own timeouts. Each becomes ``StoreUnavailableError``.
_DB_ERRORS: Final = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)

# Key of the migration lock, hashed with the schema name so that schemas (a test run each)
# migrate independently.
_MIGRATION_LOCK: Final = "ketenpost.migrate:"

# Whole statements, not fragments joined at run time: nothing but parameters varies.
_TOKEN_BY_ID: Final = (
    "SELECT token_id, coordinator, token_hash, signed, valid_until, retention_until,"
    " registered_at, supersedes, superseded_by, revoked_at FROM tokens WHERE token_id = $1"
)
_TOKEN_BY_ID_SHARE: Final = _TOKEN_BY_ID + " FOR SHARE"
_TOKENS_SHARE: Final = (
    "SELECT token_id, coordinator, token_hash, signed, valid_until, retention_until,"
    " registered_at, supersedes, superseded_by, revoked_at FROM tokens"
    " WHERE token_id = ANY($1::text[]) ORDER BY token_id FOR SHARE"
)

_CLAIM_SQL: Final = """
WITH picked AS (
    SELECT d.message_id, d.recipient FROM deliveries d
    JOIN messages m ON m.message_id = d.message_id
    WHERE d.recipient = $1 AND d.state = 'pending' AND d.lease_until <= $2 AND m.expires_at > $2
    ORDER BY d.seq LIMIT $3
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE deliveries d SET lease_until = $4, attempts = d.attempts + 1
FROM picked p, messages m
WHERE d.message_id = p.message_id AND d.recipient = p.recipient AND m.message_id = d.message_id
RETURNING d.message_id, m.sender, m.envelope, d.attempts, m.accepted_at, d.seq, m.receipt
"""

_EVENTS_SQL: Final = """
WITH picked AS (
    SELECT event_id FROM sender_events
    WHERE sender = $1 AND lease_until <= $2 ORDER BY event_id LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE sender_events e SET lease_until = $4 FROM picked p WHERE e.event_id = p.event_id
RETURNING e.event_id, e.message_id, e.kind, e.signed, e.created_at
"""


# Tokens past their retention deadline with something left to delete: the signed token (a live
# row), or entries recorded under a tombstone's id after its deadline. Locked: a concurrent
# registration or revocation of the same row waits.
_RETENTION_DUE_SQL: Final = (
    "SELECT t.token_id, length(t.signed) > 0 FROM tokens t WHERE t.retention_until <= $1"
    " AND (length(t.signed) > 0 OR EXISTS (SELECT 1 FROM audit_leaves a"
    " WHERE a.token_id = t.token_id AND a.entry IS NOT NULL))"
    " ORDER BY t.token_id LIMIT $2 FOR UPDATE OF t"
)


_PENDING_SQL: Final = (
    "SELECT d.message_id, m.sender, d.recipient, m.accepted_at, m.envelope, m.token_id"
    " FROM deliveries d JOIN messages m ON m.message_id = d.message_id"
    " WHERE d.state = 'pending'"
)

_KEY_REVOCATIONS_SQL: Final = (
    "SELECT statement_hash, partner, kid, signing_kid, revoked_at, compromised_since,"
    " statement, recorded_at, carried_by, audit_index FROM key_revocations"
)


def _pending(r: asyncpg.Record) -> PendingDelivery:
    return PendingDelivery(r[0], r[1], r[2], int(r[3]), bytes(r[4] or b""), str(r[5]))


def _key_revocation(r: asyncpg.Record) -> KeyRevocationRow:
    return KeyRevocationRow(
        statement_hash=r[0],
        partner=r[1],
        kid=r[2],
        signing_kid=r[3],
        revoked_at=int(r[4]),
        compromised_since=None if r[5] is None else int(r[5]),
        statement=bytes(r[6]),
        recorded_at=int(r[7]),
        carried_by=r[8],
        audit_index=int(r[9]),
    )


def _count(status: str) -> int:
    """The row count of an ``UPDATE n`` / ``DELETE n`` command status."""
    return int(status.rsplit(" ", 1)[-1])


def _unavailable(exc: BaseException) -> StoreUnavailableError:
    # The class name only: a server message may quote parameters.
    return StoreUnavailableError(f"store unavailable ({type(exc).__name__})")


def _token_row(row: asyncpg.Record | None) -> TokenRow | None:
    # A tombstone (retention deleted its signed token) is no longer a registered token.
    if row is None or not row[3]:
        return None
    return TokenRow(
        token_id=row[0],
        coordinator=row[1],
        token_hash=row[2],
        signed=bytes(row[3]),
        valid_until=int(row[4]),
        retention_until=int(row[5]),
        registered_at=int(row[6]),
        supersedes=row[7],
        superseded_by=row[8],
        revoked_at=row[9],
    )


def _right_edge(size: int) -> list[tuple[int, int]]:
    """The complete subtrees ``(level, index)`` that make up a tree of ``size`` leaves.

    ``MerkleLog`` appends, roots and proofs of leaves appended after ``size`` read no other
    node of the first ``size`` leaves: every node left of a new leaf is either one of these or
    completed by a leaf appended later.
    """
    return [(level, (size >> level) - 1) for level in range(size.bit_length()) if size >> level & 1]


class _BatchNodes:
    """A ``NodeStore`` over the batch's transaction: the right edge of the committed tree,
    prefetched, plus what the batch appended (written in one statement before the commit)."""

    def __init__(self) -> None:
        self.nodes: dict[tuple[int, int], bytes] = {}
        self.added: list[tuple[int, int]] = []

    def get(self, level: int, index: int) -> bytes | None:
        return self.nodes.get((level, index))

    def put(self, level: int, index: int, node: bytes) -> None:
        old = self.nodes.setdefault((level, index), node)
        if old != node:
            raise MerkleError(
                f"node ({level}, {index}) is already stored with another hash",
                MerkleReason.NODE_CONFLICT,
            )
        if old is node:
            self.added.append((level, index))

    def truncate(self, mark: int) -> None:
        for key in self.added[mark:]:
            del self.nodes[key]
        del self.added[mark:]


class _RecordingNodes:
    """A ``NodeStore`` that answers every read with a placeholder and notes what was read.

    ``MerkleLog``'s reads depend on sizes and indexes only, never on hash values, so running a
    proof against this store names exactly the nodes to fetch for the real run.
    """

    def __init__(self) -> None:
        self.wanted: set[tuple[int, int]] = set()

    def get(self, level: int, index: int) -> bytes | None:
        self.wanted.add((level, index))
        return bytes(HASH_LEN)

    def put(self, level: int, index: int, node: bytes) -> None:
        raise AssertionError("a read-only tree was written")


class _FetchedNodes:
    def __init__(self, nodes: Mapping[tuple[int, int], bytes]) -> None:
        self._nodes = nodes

    def get(self, level: int, index: int) -> bytes | None:
        return self._nodes.get((level, index))

    def put(self, level: int, index: int, node: bytes) -> None:
        raise AssertionError("a read-only tree was written")


async def _fetch_nodes(
    conn: _AnyConn, wanted: Iterable[tuple[int, int]]
) -> dict[tuple[int, int], bytes]:
    keys = list(wanted)
    if not keys:
        return {}
    rows = await conn.fetch(
        "SELECT n.level, n.idx, n.hash FROM audit_nodes n"
        " JOIN unnest($1::integer[], $2::bigint[]) AS w(level, idx)"
        " ON n.level = w.level AND n.idx = w.idx",
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    return {(int(r[0]), int(r[1])): bytes(r[2]) for r in rows}


class _Kind(enum.Enum):
    ACCEPT = "accept"
    AUDIT = "audit"
    REGISTER = "register"
    REVOKE = "revoke"
    FINISH = "finish"
    EXPIRE = "expire"
    RETENTION = "retention"


# Operations that read deliveries or messages written by other operations of the same batch:
# buffered writes are flushed before them.
_BARRIER: Final = frozenset({_Kind.REVOKE, _Kind.EXPIRE, _Kind.RETENTION})


@dataclass
class _PendingReceipt:
    sub: Submission
    leaf_index: int
    receipt: bytes = b""
    # The acceptance's own audit record: the receipt carries its entry and salt.
    record: AuditRecord | None = None


@dataclass(frozen=True)
class _Again:
    """The same message accepted earlier in the same batch: its receipt, not the first time."""

    pending: _PendingReceipt


@dataclass
class _Known:
    envelope_hash: str
    leaf_index: int
    receipt: bytes | None
    pending: _PendingReceipt | None = None


@dataclass(frozen=True)
class _Ending:
    purged: Purged
    state: DeliveryState
    kind: EventKind
    at: int
    event: bytes


@dataclass
class _Op:
    kind: _Kind
    work: Callable[[_Batch], Awaitable[Any]]
    future: asyncio.Future[Any]
    message_id: str | None = None
    token_id: str | None = None


@dataclass
class _Mark:
    size: int
    nodes: int
    leaves: int
    messages: int
    endings: int
    journal: int


@dataclass
class _Batch:
    """One transaction's state: the log's size, buffered writes, and per-batch caches."""

    conn: _Conn
    signer: ReceiptSigner
    size: int = 0
    start_size: int = 0
    nodes: _BatchNodes = field(default_factory=_BatchNodes)
    leaves: list[tuple[int, bytes, AuditRecord]] = field(default_factory=list)
    messages: list[_PendingReceipt] = field(default_factory=list)
    flushed: list[_PendingReceipt] = field(default_factory=list)
    endings: list[_Ending] = field(default_factory=list)
    known: dict[str, _Known] = field(default_factory=dict)
    # Token rows this transaction holds FOR SHARE (None: not registered, as read here).
    tokens: dict[str, TokenRow | None] = field(default_factory=dict)
    ending_keys: set[tuple[str, str]] = field(default_factory=set)
    wake: set[str] = field(default_factory=set)
    # Keys added to ``known`` / ``ending_keys`` / ``wake``, to undo a refused operation.
    journal: list[tuple[str, Any]] = field(default_factory=list)

    # -- the audit log ----------------------------------------------------------------------

    async def lock_head(self) -> None:
        size = await self.conn.fetchval("SELECT size FROM audit_head WHERE id = 1 FOR UPDATE")
        if size is None:
            raise StoreUnavailableError(
                "store has no audit_head row: run `ketenpost store migrate`"
            )
        self.size = self.start_size = int(size)
        self.nodes.nodes.update(await _fetch_nodes(self.conn, _right_edge(self.size)))

    def tree(self) -> MerkleLog:
        return MerkleLog(self.nodes, self.size)

    def append(self, record: AuditRecord, leaf: bytes) -> int:
        index = self.size
        self.tree().append(leaf)
        self.leaves.append((index, leaf, record))
        self.size += 1
        return index

    # -- refused operations -----------------------------------------------------------------

    def mark(self) -> _Mark:
        return _Mark(
            self.size,
            len(self.nodes.added),
            len(self.leaves),
            len(self.messages),
            len(self.endings),
            len(self.journal),
        )

    def rollback(self, mark: _Mark) -> None:
        self.size = mark.size
        self.nodes.truncate(mark.nodes)
        del self.leaves[mark.leaves :]
        del self.messages[mark.messages :]
        del self.endings[mark.endings :]
        for what, key in reversed(self.journal[mark.journal :]):
            if what == "known":
                self.known.pop(key, None)
            elif what == "ending":
                self.ending_keys.discard(key)
            else:
                self.wake.discard(key)
        del self.journal[mark.journal :]

    def woke(self, party: str) -> None:
        if party not in self.wake:
            self.wake.add(party)
            self.journal.append(("wake", party))

    # -- prefetch ---------------------------------------------------------------------------

    async def prefetch(self, ops: Sequence[_Op]) -> None:
        """Read, for all accepts of the batch at once, the messages already stored under their
        ids and their token rows ``FOR SHARE``. Valid for the whole batch: we hold the
        ``audit_head`` lock, without which no message is inserted, and the share locks, without
        which no token row changes."""
        ids = sorted({op.message_id for op in ops if op.message_id is not None})
        if ids:
            rows = await self.conn.fetch(
                "SELECT message_id, envelope_hash, audit_index, receipt FROM messages"
                " WHERE message_id = ANY($1::text[])",
                ids,
            )
            for r in rows:
                self.known[r[0]] = _Known(r[1], int(r[2]), None if r[3] is None else bytes(r[3]))
        tokens = sorted({op.token_id for op in ops if op.token_id is not None})
        if tokens:
            # Sorted, so two transactions locking overlapping sets never wait on each other in
            # opposite orders.
            rows = await self.conn.fetch(
                _TOKENS_SHARE,
                tokens,
            )
            found = {r[0]: _token_row(r) for r in rows}
            for token_id in tokens:
                self.tokens[token_id] = found.get(token_id)

    async def token(self, token_id: str) -> TokenRow | None:
        if token_id not in self.tokens:
            row = await self.conn.fetchrow(_TOKEN_BY_ID_SHARE, token_id)
            self.tokens[token_id] = _token_row(row)
        return self.tokens[token_id]

    # -- buffered writes --------------------------------------------------------------------

    def add_message(self, pending: _PendingReceipt) -> None:
        sub = pending.sub
        self.messages.append(pending)
        self.known[sub.message_id] = _Known(sub.envelope_hash, pending.leaf_index, None, pending)
        self.journal.append(("known", sub.message_id))
        for recipient in sub.recipients:
            self.woke(recipient)

    def add_ending(self, ending: _Ending) -> None:
        key = (ending.purged.message_id, ending.purged.recipient)
        self.endings.append(ending)
        self.ending_keys.add(key)
        self.journal.append(("ending", key))
        self.woke(ending.purged.sender)

    async def flush(self) -> None:
        """Write buffered messages (receipt still empty) and delivery endings."""
        if self.messages:
            await self._insert_messages(self.messages)
            self.flushed.extend(self.messages)
            self.messages.clear()
        if self.endings:
            await _write_endings(self.conn, self.endings)
            self.endings.clear()
            self.ending_keys.clear()
        self.journal.clear()

    async def _insert_messages(self, batch: Sequence[_PendingReceipt]) -> None:
        subs = [p.sub for p in batch]
        await self.conn.execute(
            "INSERT INTO messages (message_id, sender, envelope_hash, header_hash, token_id,"
            " message_type, accepted_at, expires_at, audit_index, receipt, envelope)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],"
            " $6::text[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bytea[], $11::bytea[])",
            [s.message_id for s in subs],
            [s.sender for s in subs],
            [s.envelope_hash for s in subs],
            [s.header_hash for s in subs],
            [s.token_id for s in subs],
            [s.message_type for s in subs],
            [s.received_at for s in subs],
            [s.expires_at for s in subs],
            [p.leaf_index for p in batch],
            [p.receipt or None for p in batch],
            [s.envelope for s in subs],
        )
        ids: list[str] = []
        recipients: list[str] = []
        seqs: list[int] = []
        for p in batch:
            for recipient in p.sub.recipients:
                ids.append(p.sub.message_id)
                recipients.append(recipient)
                seqs.append(p.leaf_index)
        if ids:
            await self.conn.execute(
                "INSERT INTO deliveries (message_id, recipient, seq, state)"
                " SELECT m, r, s, 'pending' FROM unnest($1::text[], $2::text[], $3::bigint[])"
                " AS u(m, r, s)",
                ids,
                recipients,
                seqs,
            )

    async def finalize(self, channel: str) -> None:
        """Sign the checkpoint and the receipts, write everything buffered, advance the head
        and queue the wake-ups. Inside the transaction, just before the commit."""
        if self.leaves:
            tree = self.tree()
            root = tree.root()
            note = self.signer.checkpoint(self.size, root)
            for pending in (*self.flushed, *self.messages):
                proof = tree.inclusion_proof(pending.leaf_index).hashes
                pending.receipt = self.signer.acceptance_receipt(
                    pending.sub,
                    pending.sub.received_at,
                    pending.leaf_index,
                    self.size,
                    proof,
                    note,
                    record=pending.record,
                )
            if self.messages:
                await self._insert_messages(self.messages)
            if self.flushed:
                await self.conn.execute(
                    "UPDATE messages m SET receipt = u.r"
                    " FROM unnest($1::text[], $2::bytea[]) AS u(id, r) WHERE m.message_id = u.id",
                    [p.sub.message_id for p in self.flushed],
                    [p.receipt for p in self.flushed],
                )
            if self.endings:
                await _write_endings(self.conn, self.endings)
            await self.conn.execute(
                "INSERT INTO audit_leaves (idx, leaf_hash, entry, salt, token_id)"
                " SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::bytea[], $4::bytea[],"
                " $5::text[])",
                [i for i, _, _ in self.leaves],
                [h for _, h, _ in self.leaves],
                [r.entry for _, _, r in self.leaves],
                [r.salt for _, _, r in self.leaves],
                [r.token_id for _, _, r in self.leaves],
            )
            added = self.nodes.added
            await self.conn.execute(
                "INSERT INTO audit_nodes (level, idx, hash)"
                " SELECT * FROM unnest($1::integer[], $2::bigint[], $3::bytea[])",
                [k[0] for k in added],
                [k[1] for k in added],
                [self.nodes.nodes[k] for k in added],
            )
            await self.conn.execute(
                "INSERT INTO checkpoints (size, root, note) VALUES ($1, $2, $3)",
                self.size,
                root,
                note,
            )
            await self.conn.execute("UPDATE audit_head SET size = $1 WHERE id = 1", self.size)
        else:
            await self.flush()
        if self.wake:
            # Delivered to every listening replica when (and only if) the transaction commits.
            await self.conn.execute(
                "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", channel, sorted(self.wake)
            )


async def _write_endings(conn: _AnyConn, endings: Sequence[_Ending]) -> None:
    """End deliveries: mark them, queue the sender events, and drop each ciphertext once no
    recipient still needs it."""
    ids = [e.purged.message_id for e in endings]
    await conn.execute(
        "UPDATE deliveries d SET state = u.state, finished_at = u.at"
        " FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS u(m, r, state, at)"
        " WHERE d.message_id = u.m AND d.recipient = u.r",
        ids,
        [e.purged.recipient for e in endings],
        [e.state.value for e in endings],
        [e.at for e in endings],
    )
    await conn.execute(
        "INSERT INTO sender_events (sender, message_id, kind, signed, created_at)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::bigint[])",
        [e.purged.sender for e in endings],
        ids,
        [e.kind.value for e in endings],
        [e.event for e in endings],
        [e.at for e in endings],
    )
    await conn.execute(
        "UPDATE messages m SET envelope = NULL WHERE m.message_id = ANY($1::text[])"
        " AND m.envelope IS NOT NULL AND NOT EXISTS (SELECT 1 FROM deliveries d"
        " WHERE d.message_id = m.message_id AND d.state = 'pending')",
        sorted(set(ids)),
    )


def _check_url(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError("a PostgreSQL store URL starts with postgresql://")
    if parts.password is not None or "password" in urllib.parse.parse_qs(parts.query):
        raise ValueError("the store URL must not contain a password; set store.password")


class PostgresStore:
    """``Store`` on a PostgreSQL database shared by replicas. See the module docstring."""

    def __init__(
        self,
        url: str,
        signer: ReceiptSigner,
        leaf_hash: Callable[[AuditRecord], bytes],
        *,
        password: str | None = None,
        server_settings: Mapping[str, str] | None = None,
        max_batch: int = 256,
        min_connections: int = 2,
        max_connections: int = 10,
        fallback_poll_s: float = 5.0,
        command_timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        _check_url(url)
        self._url = url
        self._password = password
        self._server_settings = dict(server_settings or {})
        self._signer = signer
        self._leaf_hash = leaf_hash
        self._max_batch = max_batch
        self._min_connections = min_connections
        self._max_connections = max_connections
        self._fallback_poll_s = fallback_poll_s
        self._command_timeout_s = command_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._queue: asyncio.Queue[_Op | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._channel = ""
        self._peer_channel = ""
        self._parties: set[str] = set()
        self.notifier = Notifier()
        # Called (in the event loop) with each ``tell_peers`` payload of any replica.
        self.peer_listener: Callable[[str], None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    async def _connect(
        cls,
        url: str,
        password: str | None,
        server_settings: Mapping[str, str] | None,
        timeout_s: float = 5.0,
    ) -> asyncpg.Connection[asyncpg.Record]:
        _check_url(url)
        return await asyncpg.connect(
            url, password=password, server_settings=dict(server_settings or {}), timeout=timeout_s
        )

    @staticmethod
    async def schema_version(conn: _AnyConn) -> int:
        exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        if not exists:
            return 0
        version = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        return int(version)

    @classmethod
    async def migrate(
        cls,
        url: str,
        *,
        dry_run: bool = False,
        password: str | None = None,
        server_settings: Mapping[str, str] | None = None,
    ) -> list[str]:
        """Apply pending migrations, each in its own transaction; return their names.

        Safe when two run at once: each transaction first takes a transaction-scoped advisory
        lock for this schema, then reads the version, so the second waits and then finds
        nothing to do. Raises ``StoreUnavailableError`` if the database cannot be reached.
        """
        try:
            conn = await cls._connect(url, password, server_settings)
        except _DB_ERRORS as exc:
            raise _unavailable(exc) from exc
        applied: list[str] = []
        try:
            for migration in MIGRATIONS:
                tr = conn.transaction()
                await tr.start()
                try:
                    await conn.execute(
                        "SELECT pg_advisory_xact_lock(hashtextextended($1 || current_schema(), 0))",
                        _MIGRATION_LOCK,
                    )
                    await conn.execute(
                        "CREATE TABLE IF NOT EXISTS schema_migrations ("
                        " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                        " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
                    )
                    if await cls.schema_version(conn) >= migration.version:
                        await tr.rollback()
                        continue
                    applied.append(f"{migration.version:04d} {migration.name}")
                    if dry_run:
                        await tr.rollback()
                        continue
                    await conn.execute(migration.postgres)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        migration.version,
                        migration.name,
                    )
                    await tr.commit()
                except BaseException:
                    with contextlib.suppress(*_DB_ERRORS):
                        await tr.rollback()
                    raise
        except _DB_ERRORS as exc:
            raise _unavailable(exc) from exc
        finally:
            with contextlib.suppress(*_DB_ERRORS):
                await conn.close()
        return applied

    async def open(self) -> None:
        """Open the pool, check the schema version, start the writer and the listener.

        Raises ``StoreVersionError`` on a schema older than this gateway needs and
        ``StoreUnavailableError`` if the database cannot be reached.
        """
        try:
            pool = await asyncpg.create_pool(
                self._url,
                password=self._password,
                server_settings=self._server_settings,
                min_size=self._min_connections,
                max_size=self._max_connections,
                command_timeout=self._command_timeout_s,
                timeout=self._connect_timeout_s,
            )
        except _DB_ERRORS as exc:
            raise _unavailable(exc) from exc
        try:
            async with pool.acquire() as conn:
                version = await self.schema_version(conn)
                schema = await conn.fetchval("SELECT current_schema()")
        except _DB_ERRORS as exc:
            await pool.close()
            raise _unavailable(exc) from exc
        if version < LATEST_VERSION:
            await pool.close()
            raise StoreVersionError(
                f"store schema is at version {version}, this gateway needs {LATEST_VERSION}: "
                "run `ketenpost store migrate` first"
            )
        # One channel per schema: replicas of one deployment share it, test runs do not.
        self._channel = f"ketenpost.{schema}"[:63]
        self._peer_channel = f"ketenpost-peers.{schema}"[:63]
        self._pool = pool
        self._queue = asyncio.Queue()
        self._writer = asyncio.create_task(self._run(), name="ketenpost-pg-writer")
        self._listener = asyncio.create_task(self._listen(), name="ketenpost-pg-listener")

    async def close(self) -> None:
        if self._writer is not None:
            self._queue.put_nowait(None)
            await self._writer
            self._writer = None
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def ping(self) -> None:
        await self._direct(lambda conn: conn.fetchval("SELECT 1"))

    async def tell_peers(self, payload: str) -> None:
        """Send ``payload`` (text, under 8,000 bytes) to the ``peer_listener`` of every replica
        listening on this schema, this one included. Raises ``StoreUnavailableError``."""
        channel = self._peer_channel
        await self._direct(lambda conn: conn.execute("SELECT pg_notify($1, $2)", channel, payload))

    async def wait_listening(self, timeout_s: float) -> None:
        """Return once the listener is connected (for tests and readiness), or after the
        timeout."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening.wait(), timeout_s)

    # -- the listener ------------------------------------------------------------------------

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        if isinstance(payload, str):
            self.notifier.notify((payload,))

    def _on_peer(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        if isinstance(payload, str) and self.peer_listener is not None:
            self.peer_listener(payload)

    async def _listen(self) -> None:
        """Keep one LISTEN connection, reconnecting with backoff; on every (re)connect wake all
        waiters, since a notification may have been missed meanwhile."""
        backoff = 0.05
        while True:
            try:
                conn = await self._connect(
                    self._url, self._password, self._server_settings, self._connect_timeout_s
                )
            except _DB_ERRORS:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            try:
                await self._listen_on(conn)
            except _DB_ERRORS:
                pass
            else:
                backoff = 0.05
            finally:
                self._listening.clear()
                if not conn.is_closed():
                    conn.terminate()

    async def _listen_on(self, conn: asyncpg.Connection[asyncpg.Record]) -> None:
        """LISTEN on ``conn`` until it is lost."""
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _c: lost.set())
        await conn.add_listener(self._channel, self._on_notify)
        await conn.add_listener(self._peer_channel, self._on_peer)
        self._listening.set()
        self.notifier.notify(set(self._parties))
        while not lost.is_set():
            # A half-open connection never reports its loss; a periodic query does.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), 10.0)
            if not lost.is_set():
                await conn.fetchval("SELECT 1", timeout=self._connect_timeout_s)

    async def wait(self, party: str, wait_s: float) -> None:
        """Return when something may be waiting for ``party``, or after ``wait_s`` seconds —
        at most ``fallback_poll_s``, so the caller polls again even if a wake-up was lost."""
        self._parties.add(party)
        await self.notifier.wait(party, max(0.0, min(wait_s, self._fallback_poll_s)))

    # -- the writer task ---------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            if first is None:
                return
            ops = [first]
            stop = False
            while len(ops) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if nxt is None:
                    stop = True
                    break
                ops.append(nxt)
            await self._run_batch(ops)
            if stop:
                return

    async def _run_batch(self, ops: list[_Op]) -> None:
        assert self._pool is not None
        outcomes: list[tuple[_Op, Any, Exception | None]] = []
        wake: set[str] = set()
        try:
            acquire = self._pool.acquire(timeout=self._connect_timeout_s)
            async with acquire as conn, conn.transaction():
                batch = _Batch(conn, self._signer)
                # Every operation here appends an audit entry: lock the head first, always in
                # the same order (head, then token rows sorted), so batches never deadlock.
                await batch.lock_head()
                await batch.prefetch(ops)
                for op in ops:
                    if op.kind in _BARRIER:
                        await batch.flush()
                    mark = batch.mark()
                    try:
                        result = await op.work(batch)
                    except _DB_ERRORS:
                        raise
                    except Exception as exc:  # each op's refusal goes to its own caller
                        batch.rollback(mark)
                        outcomes.append((op, None, exc))
                    else:
                        outcomes.append((op, result, None))
                await batch.finalize(self._channel)
                wake = batch.wake
        except Exception as exc:
            if isinstance(exc, StoreUnavailableError):
                failure = exc
            else:
                failure = _unavailable(exc)
                failure.__cause__ = exc
            for op in ops:
                if not op.future.done():
                    op.future.set_exception(failure)
            return
        for op, result, error in outcomes:
            if op.future.done():
                continue
            if error is not None:
                op.future.set_exception(error)
            else:
                op.future.set_result(result)
        if wake:
            # This replica's own waiters need not wait for the notification's round trip.
            self.notifier.notify(wake)

    async def _submit(
        self,
        kind: _Kind,
        work: Callable[[_Batch], Awaitable[Any]],
        *,
        message_id: str | None = None,
        token_id: str | None = None,
    ) -> Any:
        if self._writer is None or self._writer.done():
            raise StoreUnavailableError("store is not open")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Op(kind, work, future, message_id, token_id))
        return await future

    async def _direct(self, work: Callable[[_Conn], Awaitable[_T]]) -> _T:
        """Run ``work`` on a pooled connection (one statement: its own transaction)."""
        if self._pool is None:
            raise StoreUnavailableError("store is not open")
        try:
            async with self._pool.acquire(timeout=self._connect_timeout_s) as conn:
                return await work(conn)
        except _DB_ERRORS as exc:
            raise _unavailable(exc) from exc

    # -- operations in the writer's batches --------------------------------------------------

    async def accept(self, sub: Submission, check: TokenCheck) -> Accepted:
        async def work(batch: _Batch) -> Accepted | _PendingReceipt | _Again:
            known = batch.known.get(sub.message_id)
            if known is not None:
                if known.envelope_hash != sub.envelope_hash:
                    raise DuplicateMessageError("message id already accepted with other bytes")
                if known.pending is not None:
                    return _Again(known.pending)
                assert known.receipt is not None
                return Accepted(known.receipt, known.leaf_index, first_time=False)
            record = check(await batch.token(sub.token_id))
            leaf = self._leaf_hash(record)
            pending = _PendingReceipt(sub, batch.append(record, leaf), record=record)
            batch.add_message(pending)
            return pending

        result = await self._submit(
            _Kind.ACCEPT, work, message_id=sub.message_id, token_id=sub.token_id
        )
        if isinstance(result, _PendingReceipt):
            return Accepted(result.receipt, result.leaf_index, first_time=True)
        if isinstance(result, _Again):
            return Accepted(result.pending.receipt, result.pending.leaf_index, first_time=False)
        assert isinstance(result, Accepted)
        return result

    async def record_audit(self, record: AuditRecord) -> int:
        async def work(batch: _Batch) -> int:
            return batch.append(record, self._leaf_hash(record))

        index: int = await self._submit(_Kind.AUDIT, work)
        return index

    async def register_token(self, row: TokenRow, audit: AuditRecord) -> TokenRow:
        async def work(batch: _Batch) -> TokenRow:
            existing = await batch.token(row.token_id)
            if existing is not None:
                return existing
            batch.append(audit, self._leaf_hash(audit))
            await batch.conn.execute(
                "INSERT INTO tokens (token_id, coordinator, token_hash, signed, valid_until,"
                " retention_until, registered_at, supersedes) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
                row.token_id,
                row.coordinator,
                row.token_hash,
                row.signed,
                row.valid_until,
                row.retention_until,
                row.registered_at,
                row.supersedes,
            )
            batch.tokens.pop(row.token_id, None)
            if row.supersedes is not None:
                await batch.conn.execute(
                    "UPDATE tokens SET superseded_by = $1"
                    " WHERE token_id = $2 AND superseded_by IS NULL",
                    row.token_id,
                    row.supersedes,
                )
                batch.tokens.pop(row.supersedes, None)
            return row

        result: TokenRow = await self._submit(_Kind.REGISTER, work)
        return result

    async def revoke_token(
        self, token_id: str, revoked_at: int, revocation: bytes, audit: AuditRecord
    ) -> list[Purged]:
        signer = self._signer

        async def work(batch: _Batch) -> list[Purged]:
            conn = batch.conn
            # Lock the token row first: an accept holding it FOR SHARE commits before we read
            # the deliveries below, so what it stored is purged here.
            await conn.execute("SELECT 1 FROM tokens WHERE token_id = $1 FOR UPDATE", token_id)
            rows = await conn.fetch(
                "SELECT d.message_id, m.sender, d.recipient FROM deliveries d"
                " JOIN messages m ON m.message_id = d.message_id"
                " WHERE m.token_id = $1 AND d.state = 'pending' ORDER BY d.seq, d.recipient"
                " FOR UPDATE OF d",
                token_id,
            )
            purged = [Purged(r[0], r[1], r[2]) for r in rows]
            endings = [
                _Ending(
                    p,
                    DeliveryState.PURGED,
                    EventKind.PURGE,
                    revoked_at,
                    signer.sender_event(
                        EventKind.PURGE, p.message_id, p.recipient, revoked_at, b""
                    ),
                )
                for p in purged
            ]
            batch.append(audit, self._leaf_hash(audit))
            await conn.execute(
                "UPDATE tokens SET revoked_at = $2, revocation = $3 WHERE token_id = $1"
                " AND revoked_at IS NULL",
                token_id,
                revoked_at,
                revocation,
            )
            batch.tokens.pop(token_id, None)
            if endings:
                await _write_endings(conn, endings)
                for e in endings:
                    batch.woke(e.purged.sender)
            return purged

        result: list[Purged] = await self._submit(_Kind.REVOKE, work)
        return result

    async def finish(
        self,
        message_id: str,
        recipient: str,
        state: DeliveryState,
        signed: bytes,
        now: int,
        audit: AuditRecord,
    ) -> bool:
        signer = self._signer
        kind = EventKind.RECEIPT if state is DeliveryState.DELIVERED else EventKind.REJECTION

        async def work(batch: _Batch) -> bool:
            if (message_id, recipient) in batch.ending_keys:
                return False
            row = await batch.conn.fetchrow(
                "SELECT m.sender FROM deliveries d JOIN messages m ON m.message_id = d.message_id"
                " WHERE d.message_id = $1 AND d.recipient = $2 AND d.state = 'pending'"
                " FOR UPDATE OF d",
                message_id,
                recipient,
            )
            if row is None:
                return False
            ended = Purged(message_id, row[0], recipient)
            event = signer.sender_event(kind, message_id, recipient, now, signed)
            batch.append(audit, self._leaf_hash(audit))
            batch.add_ending(_Ending(ended, state, kind, now, event))
            return True

        result: bool = await self._submit(_Kind.FINISH, work)
        return result

    async def expire(self, now: int, audit_for: Callable[[Purged], AuditRecord]) -> list[Purged]:
        signer = self._signer

        async def work(batch: _Batch) -> list[Purged]:
            rows = await batch.conn.fetch(
                "SELECT d.message_id, m.sender, d.recipient FROM deliveries d"
                " JOIN messages m ON m.message_id = d.message_id"
                " WHERE d.state = 'pending' AND m.expires_at <= $1"
                " ORDER BY d.seq, d.recipient LIMIT 1000 FOR UPDATE OF d",
                now,
            )
            out = [Purged(r[0], r[1], r[2]) for r in rows]
            # One record per delivery, made before anything is written: ``audit_for`` may
            # refuse, and then nothing of this operation happened.
            records = [audit_for(p) for p in out]
            endings = [
                _Ending(
                    p,
                    DeliveryState.EXPIRED,
                    EventKind.EXPIRY,
                    now,
                    signer.sender_event(EventKind.EXPIRY, p.message_id, p.recipient, now, b""),
                )
                for p in out
            ]
            for rec in records:
                batch.append(rec, self._leaf_hash(rec))
            if endings:
                await _write_endings(batch.conn, endings)
                for e in endings:
                    batch.woke(e.purged.sender)
            return out

        result: list[Purged] = await self._submit(_Kind.EXPIRE, work)
        return result

    async def pending_involving(self, partners: Sequence[str]) -> list[PendingDelivery]:
        names = list(dict.fromkeys(partners))
        if not names:
            return []
        rows = await self._direct(
            lambda conn: conn.fetch(
                _PENDING_SQL + " AND (m.sender = ANY($1::text[]) OR d.recipient = ANY($1::text[]))"
                " ORDER BY d.seq, d.recipient",
                names,
            )
        )
        return [_pending(r) for r in rows]

    async def pending_under(self, token_ids: Sequence[str]) -> list[PendingDelivery]:
        ids = list(dict.fromkeys(token_ids))
        if not ids:
            return []
        rows = await self._direct(
            lambda conn: conn.fetch(
                _PENDING_SQL + " AND m.token_id = ANY($1::text[]) ORDER BY d.seq, d.recipient",
                ids,
            )
        )
        return [_pending(r) for r in rows]

    async def tokens_of(self, coordinators: Sequence[str]) -> list[TokenRow]:
        names = list(dict.fromkeys(coordinators))
        if not names:
            return []
        rows = await self._direct(
            lambda conn: conn.fetch(
                "SELECT token_id, coordinator, token_hash, signed, valid_until, retention_until,"
                " registered_at, supersedes, superseded_by, revoked_at FROM tokens"
                " WHERE coordinator = ANY($1::text[]) ORDER BY token_id",
                names,
            )
        )
        return [t for t in (_token_row(r) for r in rows) if t is not None]

    async def record_key_revocation(
        self, row: KeyRevocationRow, audit: AuditRecord
    ) -> tuple[KeyRevocationRow, bool]:
        async def work(batch: _Batch) -> tuple[KeyRevocationRow, bool]:
            # The batch holds the ``audit_head`` lock, so replicas recording the same statement
            # at once run one after the other: the second finds the first one's row.
            found = await batch.conn.fetchrow(
                _KEY_REVOCATIONS_SQL + " WHERE statement_hash = $1", row.statement_hash
            )
            if found is not None:
                return _key_revocation(found), False
            stored = dataclasses.replace(
                row, audit_index=batch.append(audit, self._leaf_hash(audit))
            )
            await batch.conn.execute(
                "INSERT INTO key_revocations (statement_hash, partner, kid, signing_kid,"
                " revoked_at, compromised_since, statement, recorded_at, carried_by,"
                " audit_index) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)",
                stored.statement_hash,
                stored.partner,
                stored.kid,
                stored.signing_kid,
                stored.revoked_at,
                stored.compromised_since,
                stored.statement,
                stored.recorded_at,
                stored.carried_by,
                stored.audit_index,
            )
            return stored, True

        result: tuple[KeyRevocationRow, bool] = await self._submit(_Kind.AUDIT, work)
        return result

    async def key_revocations(self) -> list[KeyRevocationRow]:
        rows = await self._direct(
            lambda conn: conn.fetch(_KEY_REVOCATIONS_SQL + " ORDER BY audit_index, statement_hash")
        )
        return [_key_revocation(r) for r in rows]

    async def purge(
        self, deliveries: Sequence[Purged], now: int, audit_for: Callable[[Purged], AuditRecord]
    ) -> list[Purged]:
        signer = self._signer
        wanted = list(deliveries)

        async def work(batch: _Batch) -> list[Purged]:
            conn = batch.conn
            out = []
            for p in wanted:
                row = await conn.fetchrow(
                    "SELECT 1 FROM deliveries WHERE message_id = $1 AND recipient = $2"
                    " AND state = 'pending' FOR UPDATE",
                    p.message_id,
                    p.recipient,
                )
                if row is not None:  # else ended meanwhile: a receipt, expiry or revocation
                    out.append(p)
            # Every record is made before anything is written: ``audit_for`` may refuse, and
            # then nothing of this operation happened.
            records = [audit_for(p) for p in out]
            endings = [
                _Ending(
                    p,
                    DeliveryState.PURGED,
                    EventKind.PURGE,
                    now,
                    signer.sender_event(EventKind.PURGE, p.message_id, p.recipient, now, b""),
                )
                for p in out
            ]
            for rec in records:
                batch.append(rec, self._leaf_hash(rec))
            if endings:
                await _write_endings(conn, endings)
                for e in endings:
                    batch.woke(e.purged.sender)
            return out

        # An ending like an expiry: the batch's buffered accepts are flushed first.
        result: list[Purged] = await self._submit(_Kind.EXPIRE, work)
        return result

    async def apply_retention(self, now: int, audit_for: RetentionAudit) -> list[Retained]:
        async def work(batch: _Batch) -> list[Retained]:
            conn = batch.conn
            rows = await conn.fetch(_RETENTION_DUE_SQL, now, RETENTION_BATCH)
            out: list[Retained] = []
            for row in rows:
                token_id, live = str(row[0]), bool(row[1])
                # Entries appended earlier in this batch are written at its end; a later sweep
                # finds them under the tombstone.
                entries = _count(
                    await conn.execute(
                        "UPDATE audit_leaves SET entry = NULL, salt = NULL"
                        " WHERE token_id = $1 AND entry IS NOT NULL",
                        token_id,
                    )
                )
                events = _count(
                    await conn.execute(
                        "DELETE FROM sender_events WHERE message_id IN"
                        " (SELECT message_id FROM messages WHERE token_id = $1)",
                        token_id,
                    )
                )
                await conn.execute(
                    "DELETE FROM deliveries WHERE message_id IN"
                    " (SELECT message_id FROM messages WHERE token_id = $1)",
                    token_id,
                )
                gone = await conn.fetch(
                    "DELETE FROM messages WHERE token_id = $1 RETURNING message_id", token_id
                )
                for r in gone:
                    batch.known.pop(str(r[0]), None)
                await conn.execute(
                    "UPDATE tokens SET signed = ''::bytea, revocation = NULL WHERE token_id = $1",
                    token_id,
                )
                batch.tokens.pop(token_id, None)
                if not (entries or gone or events or live):
                    continue
                record = audit_for(token_id, entries)
                index = batch.append(record, self._leaf_hash(record))
                out.append(Retained(token_id, entries, len(gone), events, int(live), index))
            return out

        result: list[Retained] = await self._submit(_Kind.RETENTION, work)
        return result

    # -- operations on their own connection --------------------------------------------------

    async def get_token(self, token_id: str) -> TokenRow | None:
        row = await self._direct(lambda conn: conn.fetchrow(_TOKEN_BY_ID, token_id))
        return _token_row(row)

    async def claim(self, recipient: str, limit: int, now: int, lease_s: int) -> list[Delivery]:
        rows = await self._direct(
            lambda conn: conn.fetch(_CLAIM_SQL, recipient, now, limit, now + lease_s)
        )
        rows = sorted(rows, key=lambda r: (int(r[5]), r[0]))
        return [
            Delivery(
                r[0],
                recipient,
                r[1],
                bytes(r[2]),
                now + lease_s,
                int(r[3]),
                int(r[4]),
                bytes(r[6] or b""),
            )
            for r in rows
        ]

    async def events(self, sender: str, limit: int, now: int, lease_s: int) -> list[SenderEventRow]:
        rows = await self._direct(
            lambda conn: conn.fetch(_EVENTS_SQL, sender, now, limit, now + lease_s)
        )
        return [
            SenderEventRow(int(r[0]), sender, r[1], EventKind(r[2]), bytes(r[3]), int(r[4]))
            for r in sorted(rows, key=lambda r: int(r[0]))
        ]

    async def ack_events(self, sender: str, event_ids: Sequence[int]) -> int:
        ids = list(event_ids)
        if not ids:
            return 0
        status = await self._direct(
            lambda conn: conn.execute(
                "DELETE FROM sender_events WHERE sender = $1 AND event_id = ANY($2::bigint[])",
                sender,
                ids,
            )
        )
        return int(status.split()[-1])

    async def message_status(self, message_id: str) -> MessageStatus | None:
        rows = await self._direct(
            lambda conn: conn.fetch(
                "SELECT m.sender, m.accepted_at, m.expires_at, m.header_hash, m.token_id,"
                " d.recipient, d.state, d.attempts, d.finished_at"
                " FROM messages m LEFT JOIN deliveries d ON d.message_id = m.message_id"
                " WHERE m.message_id = $1 ORDER BY d.recipient",
                message_id,
            )
        )
        if not rows:
            return None
        m = rows[0]
        return MessageStatus(
            message_id,
            m[0],
            int(m[1]),
            int(m[2]),
            tuple(
                RecipientState(r[5], DeliveryState(r[6]), int(r[7]), r[8])
                for r in rows
                if r[5] is not None
            ),
            header_hash=str(m[3]),
            token_id=str(m[4]),
        )

    async def audit_head(self) -> AuditHead:
        row = await self._direct(
            lambda conn: conn.fetchrow(
                "SELECT size, root, note FROM checkpoints ORDER BY size DESC LIMIT 1"
            )
        )
        if row is None:
            return AuditHead(0, EMPTY_ROOT, "")
        return AuditHead(int(row[0]), bytes(row[1]), str(row[2]))

    async def _read_tree(self, run: Callable[[MerkleLog], _T]) -> _T:
        """Run a read-only ``MerkleLog`` computation over the committed tree: once against a
        recording store to learn which nodes it reads, then against exactly those nodes."""

        async def work(conn: _Conn) -> _T:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                size = int(await conn.fetchval("SELECT size FROM audit_head WHERE id = 1"))
                recording = _RecordingNodes()
                run(MerkleLog(recording, size))
                nodes = await _fetch_nodes(conn, recording.wanted)
            return run(MerkleLog(_FetchedNodes(nodes), size))

        return await self._direct(work)

    async def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        return await self._read_tree(lambda tree: list(tree.inclusion_proof(index, size).hashes))

    async def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        return await self._read_tree(
            lambda tree: list(tree.consistency_proof(old_size, new_size).hashes)
        )

    async def audit_leaves(self) -> list[tuple[int, bytes, bytes | None, bytes | None]]:
        rows = await self._direct(
            lambda conn: conn.fetch(
                "SELECT idx, leaf_hash, entry, salt FROM audit_leaves ORDER BY idx"
            )
        )
        return [
            (
                int(r[0]),
                bytes(r[1]),
                None if r[2] is None else bytes(r[2]),
                None if r[3] is None else bytes(r[3]),
            )
            for r in rows
        ]

    async def checkpoints(self) -> list[str]:
        rows = await self._direct(
            lambda conn: conn.fetch("SELECT note FROM checkpoints ORDER BY size")
        )
        return [str(r[0]) for r in rows]

    async def token_expiries(self, now: int) -> dict[str, int]:
        # Active tokens: not revoked, not superseded, not expired (the token expiry gauge).
        rows = await self._direct(
            lambda conn: conn.fetch(
                "SELECT coordinator, MIN(valid_until) FROM tokens WHERE revoked_at IS NULL"
                " AND superseded_by IS NULL AND valid_until > $1 GROUP BY coordinator",
                now,
            )
        )
        return {r[0]: int(r[1]) for r in rows}

    async def queue_stats(self) -> list[QueueStat]:
        rows = await self._direct(
            lambda conn: conn.fetch(
                "SELECT d.recipient, COUNT(*), MIN(m.accepted_at) FROM deliveries d"
                " JOIN messages m ON m.message_id = d.message_id"
                " WHERE d.state = 'pending' GROUP BY d.recipient ORDER BY d.recipient"
            )
        )
        return [QueueStat(r[0], int(r[1]), None if r[2] is None else int(r[2])) for r in rows]
