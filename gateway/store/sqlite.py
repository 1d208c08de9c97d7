"""The embedded SQLite store: WAL, durable commits, group commit on one writer thread.

Rules kept here (on top of those in ``gateway.store.base``):

* One connection, one writer thread. Every operation is queued to it; the thread takes what is
  queued (up to ``max_batch``), runs it in **one** transaction with a savepoint per operation
  (a refused operation rolls back alone), and commits once: throughput is not one fsync per
  message. ``synchronous=FULL`` in WAL mode makes the commit durable before any caller hears of
  it; a 202 is only sent after that.
* The audit leaves of a batch are appended inside its transaction; the batch's checkpoint is
  signed, and each acceptance receipt built with its inclusion proof against that checkpoint,
  before the commit, so receipt, checkpoint, message and audit entry become durable together.
* If the commit fails, every operation of the batch fails with ``StoreUnavailableError`` and
  nothing of it is visible: the callers answer 503 and senders retry.
* The writer thread keeps the audit tree's **frontier** (the hashes of the complete subtrees
  that make up the committed tree: one per 1-bit of its size) in memory, and a batch keeps the
  nodes it creates in memory too. Every node an append, the batch's root or a receipt's
  inclusion proof needs is one of those (a left sibling of a new leaf is either a frontier node
  or completed in this batch; a right sibling lies wholly in this batch), so the hot path reads
  no node back from SQLite; older nodes (proofs of old leaves) are read from SQLite as before.
  The batch's new leaves and nodes are written with one ``executemany`` each just before the
  commit, inside the same transaction. The frontier moves on **only after the commit
  succeeded**; a refused operation drops the leaves and nodes it added (with its savepoint), a
  failed commit drops the whole batch's. Nothing about what is stored or signed changes.
* Results reach the event loop with one ``call_soon_threadsafe`` per batch (not one per
  operation): each wakes the loop through its self-pipe, a system call and a GIL hand-over.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from gateway.protocol.merkle import MerkleError, MerkleLog, MerkleReason
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

# The writer's automatic WAL checkpoint threshold (pages of 4 KiB): a backstop only, since a
# background connection checkpoints every ``WAL_CHECKPOINT_INTERVAL_S`` seconds.
WAL_BACKSTOP_PAGES: Final = 16_384
WAL_CHECKPOINT_INTERVAL_S: Final = 0.25

# A node of the audit tree: (level, index), see ``gateway.protocol.merkle.NodeStore``.
_NodeKey = tuple[int, int]


def _frontier_keys(size: int) -> list[_NodeKey]:
    """The complete subtrees that make up a tree of ``size`` leaves, largest (leftmost) first."""
    keys: list[_NodeKey] = []
    pos = 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            keys.append((level, pos >> level))
            pos += 1 << level
    return keys


class _BatchNodes:
    """The ``NodeStore`` of one batch: the nodes it created (in memory, written at the end of
    the batch), then the committed frontier (in memory), then SQLite for older nodes."""

    def __init__(self, batch: _Batch) -> None:
        self._batch = batch

    def get(self, level: int, index: int) -> bytes | None:
        key = (level, index)
        node = self._batch.nodes.get(key)
        if node is None:
            node = self._batch.frontier.get(key)
        if node is None:
            row = self._batch.conn.execute(
                "SELECT hash FROM audit_nodes WHERE level = ? AND idx = ?", key
            ).fetchone()
            node = None if row is None else bytes(row[0])
        return node

    def put(self, level: int, index: int, value: bytes) -> None:
        key = (level, index)
        old = self._batch.nodes.get(key)
        if old is None:
            old = self._batch.frontier.get(key)
        if old is not None:
            # Appends only ever create nodes right of the frontier; one that exists already
            # means the size and the stored tree disagree. Refuse, as the SQLite key would.
            if old != value:
                raise MerkleError(
                    f"node ({level}, {index}) is already stored with another hash",
                    MerkleReason.NODE_CONFLICT,
                )
            return
        self._batch.nodes[key] = value
        self._batch.node_rows.append((level, index, value))


@dataclass
class _PendingReceipt:
    sub: Submission
    leaf_index: int
    accepted_at: int
    result: list[Accepted] = field(default_factory=list)
    # The acceptance's own audit record: the receipt carries its entry and salt.
    record: AuditRecord | None = None


@dataclass(frozen=True)
class _SameBatch:
    """The same message accepted earlier in the same batch: its receipt is signed only at the
    batch's commit, so the later caller gets it from there (not the first time)."""

    pending: _PendingReceipt


@dataclass(frozen=True)
class _Mark:
    """Where a batch stood before an operation, to undo the operation alone."""

    size: int
    receipts: int
    wake: frozenset[str]
    leaf_rows: int
    node_rows: int


@dataclass
class _Batch:
    conn: sqlite3.Connection
    signer: ReceiptSigner
    size: int
    # The committed tree's frontier (``_frontier_keys(size)`` at the batch's start): read only.
    frontier: dict[_NodeKey, bytes]
    receipts: list[_PendingReceipt] = field(default_factory=list)
    wake: set[str] = field(default_factory=set)
    # What this batch added to the audit log, written just before the commit.
    leaf_rows: list[tuple[int, bytes, bytes | None, bytes | None, str | None]] = field(
        default_factory=list
    )
    nodes: dict[_NodeKey, bytes] = field(default_factory=dict)
    node_rows: list[tuple[int, int, bytes]] = field(default_factory=list)
    start_size: int = 0

    def __post_init__(self) -> None:
        self.start_size = self.size
        self._nodes = _BatchNodes(self)

    def tree(self, size: int | None = None) -> MerkleLog:
        return MerkleLog(self._nodes, self.size if size is None else size)

    def append(self, record: AuditRecord, leaf: bytes) -> int:
        index = self.size
        self.tree(index).append(leaf)
        self.leaf_rows.append((index, leaf, record.entry, record.salt, record.token_id))
        self.size += 1
        return index

    def mark(self) -> _Mark:
        return _Mark(
            self.size,
            len(self.receipts),
            frozenset(self.wake),
            len(self.leaf_rows),
            len(self.node_rows),
        )

    def undo(self, mark: _Mark) -> None:
        """Forget what the operation begun at ``mark`` added (its savepoint is rolled back)."""
        self.size = mark.size
        del self.receipts[mark.receipts :]
        self.wake = set(mark.wake)
        del self.leaf_rows[mark.leaf_rows :]
        for level, index, _value in self.node_rows[mark.node_rows :]:
            del self.nodes[(level, index)]
        del self.node_rows[mark.node_rows :]

    def finalize(self) -> str | None:
        """Store the batch's leaves and nodes; sign its checkpoint and receipts and store
        them. Inside the transaction, just before the commit."""
        if self.leaf_rows:
            self.conn.executemany(
                "INSERT INTO audit_leaves (idx, leaf_hash, entry, salt, token_id)"
                " VALUES (?,?,?,?,?)",
                self.leaf_rows,
            )
        if self.node_rows:
            self.conn.executemany(
                "INSERT INTO audit_nodes (level, idx, hash) VALUES (?, ?, ?)", self.node_rows
            )
        if not self.receipts and self.size == self.start_size:
            return None
        tree = self.tree()
        tree_root = tree.root()
        note = self.signer.checkpoint(self.size, tree_root)
        self.conn.execute(
            "INSERT OR REPLACE INTO checkpoints (size, root, note) VALUES (?, ?, ?)",
            (self.size, tree_root, note),
        )
        stored: list[tuple[bytes, str]] = []
        for pending in self.receipts:
            proof = tree.inclusion_proof(pending.leaf_index).hashes
            receipt = self.signer.acceptance_receipt(
                pending.sub,
                pending.accepted_at,
                pending.leaf_index,
                self.size,
                proof,
                note,
                record=pending.record,
            )
            stored.append((receipt, pending.sub.message_id))
            pending.result.append(Accepted(receipt, pending.leaf_index, first_time=True))
        if stored:
            self.conn.executemany("UPDATE messages SET receipt = ? WHERE message_id = ?", stored)
        return note

    def next_frontier(self) -> dict[_NodeKey, bytes]:
        """The frontier of the tree this batch leaves behind (call after the commit)."""
        if self.size == self.start_size:
            return self.frontier
        out: dict[_NodeKey, bytes] = {}
        for level, index in _frontier_keys(self.size):
            node = self._nodes.get(level, index)
            if node is not None:  # a missing node stays missing: MerkleLog reports it
                out[(level, index)] = node
        return out


_Work = Callable[[_Batch], Any]


@dataclass
class _Op:
    work: _Work
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


class SqliteStore:
    """``Store`` on one SQLite file. See the module docstring for the guarantees."""

    def __init__(
        self,
        path: Path,
        signer: ReceiptSigner,
        leaf_hash: Callable[[AuditRecord], bytes],
        *,
        max_batch: int = 256,
    ) -> None:
        self._path = path
        self._signer = signer
        self._leaf_hash = leaf_hash
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._checkpointer: threading.Thread | None = None
        self._checkpointing = threading.Event()
        self._conn: sqlite3.Connection | None = None
        self._size = 0
        # The committed audit tree's frontier; only the writer thread touches it once open.
        self._frontier: dict[_NodeKey, bytes] = {}
        self.notifier = Notifier()

    # -- lifecycle -------------------------------------------------------------------------

    @staticmethod
    def connect(path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        # FULL: the WAL is fsync'd at every commit, so a committed batch survives power loss.
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA busy_timeout = 5000")
        # Deleted content is overwritten with zeros (also on freed overflow pages), so what
        # retention or a finished delivery deletes does not linger in free space of the file
        # (docs/adr/0010-witness-exchange.md covers retention; docs/privacy.md).
        conn.execute("PRAGMA secure_delete = ON")
        return conn

    @staticmethod
    def schema_version(conn: sqlite3.Connection) -> int:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL)"
        )
        row = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    @classmethod
    def migrate(cls, path: Path, *, dry_run: bool = False) -> list[str]:
        """Apply pending migrations (each in its own transaction); return their names.

        Safe when two run at once: ``BEGIN IMMEDIATE`` takes the write lock before the version
        is read, so the second waits and then finds nothing to do.
        """
        conn = cls.connect(path)
        try:
            applied: list[str] = []
            for migration in MIGRATIONS:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if cls.schema_version(conn) >= migration.version:
                        conn.execute("ROLLBACK")
                        continue
                    applied.append(f"{migration.version:04d} {migration.name}")
                    if dry_run:
                        conn.execute("ROLLBACK")
                        continue
                    for statement in migration.sqlite.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (?, ?)",
                        (migration.version, migration.name),
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    raise
            return applied
        finally:
            conn.close()

    async def open(self) -> None:
        conn = self.connect(self._path)
        version = self.schema_version(conn)
        if version < LATEST_VERSION:
            conn.close()
            raise StoreVersionError(
                f"store schema is at version {version}, this gateway needs {LATEST_VERSION}: "
                "run `ketenpost store migrate` first"
            )
        row = conn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM audit_leaves").fetchone()
        self._size = int(row[0])
        self._frontier = {}
        for key in _frontier_keys(self._size):
            node = conn.execute(
                "SELECT hash FROM audit_nodes WHERE level = ? AND idx = ?", key
            ).fetchone()
            if node is not None:  # a missing node stays missing: MerkleLog reports it
                self._frontier[key] = bytes(node[0])
        # WAL checkpoints (copying committed pages into the database file, and its fsync)
        # run on a connection of their own in the background, not inside the writer's
        # COMMIT; the writer keeps a high automatic threshold only as a backstop.
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_BACKSTOP_PAGES}")
        self._conn = conn
        self._thread = threading.Thread(target=self._run, name="ketenpost-sqlite", daemon=True)
        self._thread.start()
        self._checkpointing = threading.Event()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="ketenpost-sqlite-checkpoint", daemon=True
        )
        self._checkpointer.start()

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointing.set()
            await asyncio.to_thread(self._checkpointer.join)
            self._checkpointer = None
        if self._thread is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _checkpoint_loop(self) -> None:
        """Checkpoint the WAL every ``WAL_CHECKPOINT_INTERVAL_S`` without blocking the writer
        (``PASSIVE``: it copies what it can and never waits for a lock). Durability does not
        depend on it: a commit is durable once its WAL frames are fsync'd."""
        conn = self.connect(self._path)
        try:
            while not self._checkpointing.wait(WAL_CHECKPOINT_INTERVAL_S):
                with contextlib.suppress(sqlite3.Error):  # retried at the next interval
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            conn.close()

    async def ping(self) -> None:
        await self._submit(lambda b: b.conn.execute("SELECT 1").fetchone())

    # -- the writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        assert self._conn is not None
        conn = self._conn
        while True:
            first = self._queue.get()
            if first is None:
                return
            ops = [first]
            stop = False
            while len(ops) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                ops.append(nxt)
            self._run_batch(conn, ops)
            if stop:
                return

    def _run_batch(self, conn: sqlite3.Connection, ops: list[_Op]) -> None:
        batch = _Batch(conn, self._signer, self._size, self._frontier)
        outcomes: list[tuple[_Op, Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in ops:
                mark = batch.mark()
                conn.execute("SAVEPOINT op")
                try:
                    result = op.work(batch)
                except Exception as exc:  # each op's failure goes to its own caller
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    batch.undo(mark)
                    outcomes.append((op, None, exc))
                else:
                    conn.execute("RELEASE op")
                    outcomes.append((op, result, None))
            batch.finalize()
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            failure = StoreUnavailableError(f"store commit failed: {exc}")
            # The frontier and size stay those of the last committed batch.
            self._settle([(op, None, failure) for op in ops], set())
            return
        # Only now, with the batch durable, does the in-memory tree move on.
        self._frontier = batch.next_frontier()
        self._size = batch.size
        self._settle(outcomes, batch.wake)

    def _settle(
        self, outcomes: list[tuple[_Op, Any, BaseException | None]], wake: set[str]
    ) -> None:
        """Hand the outcomes to their event loops: one wake-up per loop, not one per op."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Op, Any, BaseException | None]]]
        by_loop = {}
        for outcome in outcomes:
            by_loop.setdefault(outcome[0].loop, []).append(outcome)
        for i, (loop, items) in enumerate(by_loop.items()):
            # The notifier belongs to the first operation's loop (the gateway has one loop).
            loop.call_soon_threadsafe(
                _settle_all, items, self.notifier if i == 0 and wake else None, wake
            )

    async def _submit(self, work: _Work) -> Any:
        if self._thread is None:
            raise StoreUnavailableError("store is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put(_Op(work, loop, future))
        return await future

    # -- operations ------------------------------------------------------------------------

    async def accept(self, sub: Submission, check: TokenCheck) -> Accepted:
        def work(batch: _Batch) -> Accepted | _PendingReceipt | _SameBatch:
            conn = batch.conn
            row = conn.execute(
                "SELECT envelope_hash, receipt, audit_index FROM messages WHERE message_id = ?",
                (sub.message_id,),
            ).fetchone()
            if row is not None:
                if row[0] != sub.envelope_hash:
                    raise DuplicateMessageError("message id already accepted with other bytes")
                if row[1] is None:
                    return _SameBatch(
                        next(p for p in batch.receipts if p.sub.message_id == sub.message_id)
                    )
                return Accepted(bytes(row[1]), int(row[2]), first_time=False)
            record = check(_token_row(conn, sub.token_id))
            leaf_index = batch.size
            conn.execute(
                "INSERT INTO messages (message_id, sender, envelope_hash, header_hash, token_id,"
                " message_type, accepted_at, expires_at, audit_index, envelope)"
                " VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    sub.message_id,
                    sub.sender,
                    sub.envelope_hash,
                    sub.header_hash,
                    sub.token_id,
                    sub.message_type,
                    sub.received_at,
                    sub.expires_at,
                    leaf_index,
                    sub.envelope,
                ),
            )
            conn.executemany(
                "INSERT INTO deliveries (message_id, recipient, seq, state)"
                " VALUES (?, ?, ?, 'pending')",
                [(sub.message_id, recipient, leaf_index) for recipient in sub.recipients],
            )
            batch.wake.update(sub.recipients)
            batch.append(record, self._leaf_hash(record))
            pending = _PendingReceipt(sub, leaf_index, sub.received_at, record=record)
            batch.receipts.append(pending)
            return pending

        result = await self._submit(work)
        if isinstance(result, _PendingReceipt):
            return result.result[0]
        if isinstance(result, _SameBatch):
            first = result.pending.result[0]
            return Accepted(first.receipt, first.leaf_index, first_time=False)
        assert isinstance(result, Accepted)
        return result

    async def record_audit(self, record: AuditRecord) -> int:
        leaf = self._leaf_hash(record)

        def work(batch: _Batch) -> int:
            return batch.append(record, leaf)

        index: int = await self._submit(work)
        return index

    async def register_token(self, row: TokenRow, audit: AuditRecord) -> TokenRow:
        def work(batch: _Batch) -> TokenRow:
            existing = _token_row(batch.conn, row.token_id)
            if existing is not None:
                return existing
            batch.conn.execute(
                "INSERT INTO tokens (token_id, coordinator, token_hash, signed, valid_until,"
                " retention_until, registered_at, supersedes) VALUES (?,?,?,?,?,?,?,?)",
                (
                    row.token_id,
                    row.coordinator,
                    row.token_hash,
                    row.signed,
                    row.valid_until,
                    row.retention_until,
                    row.registered_at,
                    row.supersedes,
                ),
            )
            if row.supersedes is not None:
                batch.conn.execute(
                    "UPDATE tokens SET superseded_by = ?"
                    " WHERE token_id = ? AND superseded_by IS NULL",
                    (row.token_id, row.supersedes),
                )
            batch.append(audit, self._leaf_hash(audit))
            return row

        result: TokenRow = await self._submit(work)
        return result

    async def get_token(self, token_id: str) -> TokenRow | None:
        result: TokenRow | None = await self._submit(lambda b: _token_row(b.conn, token_id))
        return result

    async def revoke_token(
        self, token_id: str, revoked_at: int, revocation: bytes, audit: AuditRecord
    ) -> list[Purged]:
        signer = self._signer

        def work(batch: _Batch) -> list[Purged]:
            conn = batch.conn
            conn.execute(
                "UPDATE tokens SET revoked_at = ?, revocation = ? WHERE token_id = ?"
                " AND revoked_at IS NULL",
                (revoked_at, revocation, token_id),
            )
            rows = conn.execute(
                "SELECT d.message_id, m.sender, d.recipient FROM deliveries d"
                " JOIN messages m ON m.message_id = d.message_id"
                " WHERE m.token_id = ? AND d.state = 'pending'",
                (token_id,),
            ).fetchall()
            purged = [Purged(r[0], r[1], r[2]) for r in rows]
            batch.append(audit, self._leaf_hash(audit))
            for p in purged:
                event = signer.sender_event(
                    EventKind.PURGE, p.message_id, p.recipient, revoked_at, b""
                )
                _end_delivery(
                    conn, batch, p, DeliveryState.PURGED, EventKind.PURGE, revoked_at, event
                )
            return purged

        result: list[Purged] = await self._submit(work)
        return result

    async def claim(self, recipient: str, limit: int, now: int, lease_s: int) -> list[Delivery]:
        def work(batch: _Batch) -> list[Delivery]:
            conn = batch.conn
            rows = conn.execute(
                "SELECT d.message_id, m.sender, m.envelope, d.attempts, m.accepted_at, m.receipt"
                " FROM deliveries d"
                " JOIN messages m ON m.message_id = d.message_id"
                " WHERE d.recipient = ? AND d.state = 'pending' AND d.lease_until <= ?"
                " AND m.expires_at > ? ORDER BY d.seq LIMIT ?",
                (recipient, now, now, limit),
            ).fetchall()
            out = []
            for message_id, sender, envelope, attempts, accepted_at, receipt in rows:
                conn.execute(
                    "UPDATE deliveries SET lease_until = ?, attempts = attempts + 1"
                    " WHERE message_id = ? AND recipient = ?",
                    (now + lease_s, message_id, recipient),
                )
                out.append(
                    Delivery(
                        message_id,
                        recipient,
                        sender,
                        bytes(envelope),
                        now + lease_s,
                        attempts + 1,
                        int(accepted_at),
                        bytes(receipt or b""),
                    )
                )
            return out

        result: list[Delivery] = await self._submit(work)
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
        kind = EventKind.RECEIPT if state is DeliveryState.DELIVERED else EventKind.REJECTION
        # The sender event and the leaf hash depend on nothing the transaction reads, so they
        # are made here, on the event loop, rather than in the writer thread (the relay's one
        # serial stage). The event is stored, and so handed out, only if the delivery ends in
        # this transaction and it commits; otherwise it is dropped unseen.
        event: bytes | Exception
        leaf: bytes | Exception
        try:
            event = self._signer.sender_event(kind, message_id, recipient, now, signed)
        except Exception as exc:  # raised in the transaction below, where signing was
            event = exc
        try:
            leaf = self._leaf_hash(audit)
        except Exception as exc:  # likewise
            leaf = exc

        def work(batch: _Batch) -> bool:
            row = batch.conn.execute(
                "SELECT m.sender FROM deliveries d JOIN messages m ON m.message_id = d.message_id"
                " WHERE d.message_id = ? AND d.recipient = ? AND d.state = 'pending'",
                (message_id, recipient),
            ).fetchone()
            if row is None:
                return False
            if isinstance(leaf, Exception):
                raise leaf
            batch.append(audit, leaf)
            if isinstance(event, Exception):
                raise event
            _end_delivery(
                batch.conn, batch, Purged(message_id, row[0], recipient), state, kind, now, event
            )
            return True

        result: bool = await self._submit(work)
        return result

    async def events(self, sender: str, limit: int, now: int, lease_s: int) -> list[SenderEventRow]:
        def work(batch: _Batch) -> list[SenderEventRow]:
            rows = batch.conn.execute(
                "SELECT event_id, message_id, kind, signed, created_at FROM sender_events"
                " WHERE sender = ? AND lease_until <= ? ORDER BY event_id LIMIT ?",
                (sender, now, limit),
            ).fetchall()
            for r in rows:
                batch.conn.execute(
                    "UPDATE sender_events SET lease_until = ? WHERE event_id = ?",
                    (now + lease_s, r[0]),
                )
            return [
                SenderEventRow(int(r[0]), sender, r[1], EventKind(r[2]), bytes(r[3]), int(r[4]))
                for r in rows
            ]

        result: list[SenderEventRow] = await self._submit(work)
        return result

    async def ack_events(self, sender: str, event_ids: Sequence[int]) -> int:
        ids = list(event_ids)

        def work(batch: _Batch) -> int:
            n = 0
            for event_id in ids:
                cur = batch.conn.execute(
                    "DELETE FROM sender_events WHERE sender = ? AND event_id = ?",
                    (sender, event_id),
                )
                n += cur.rowcount
            return n

        result: int = await self._submit(work)
        return result

    async def message_status(self, message_id: str) -> MessageStatus | None:
        def work(batch: _Batch) -> MessageStatus | None:
            m = batch.conn.execute(
                "SELECT sender, accepted_at, expires_at, header_hash, token_id FROM messages"
                " WHERE message_id = ?",
                (message_id,),
            ).fetchone()
            if m is None:
                return None
            rows = batch.conn.execute(
                "SELECT recipient, state, attempts, finished_at FROM deliveries"
                " WHERE message_id = ? ORDER BY recipient",
                (message_id,),
            ).fetchall()
            return MessageStatus(
                message_id,
                m[0],
                int(m[1]),
                int(m[2]),
                tuple(RecipientState(r[0], DeliveryState(r[1]), int(r[2]), r[3]) for r in rows),
                header_hash=str(m[3]),
                token_id=str(m[4]),
            )

        result: MessageStatus | None = await self._submit(work)
        return result

    async def expire(self, now: int, audit_for: Callable[[Purged], AuditRecord]) -> list[Purged]:
        signer = self._signer

        def work(batch: _Batch) -> list[Purged]:
            rows = batch.conn.execute(
                "SELECT d.message_id, m.sender, d.recipient FROM deliveries d"
                " JOIN messages m ON m.message_id = d.message_id"
                " WHERE d.state = 'pending' AND m.expires_at <= ? LIMIT 1000",
                (now,),
            ).fetchall()
            out = [Purged(r[0], r[1], r[2]) for r in rows]
            for p in out:
                # One record per delivery: calling ``audit_for`` twice would store one salt
                # and hash another, and the entry would no longer match its leaf.
                record = audit_for(p)
                batch.append(record, self._leaf_hash(record))
                event = signer.sender_event(EventKind.EXPIRY, p.message_id, p.recipient, now, b"")
                _end_delivery(
                    batch.conn, batch, p, DeliveryState.EXPIRED, EventKind.EXPIRY, now, event
                )
            return out

        result: list[Purged] = await self._submit(work)
        return result

    async def pending_involving(self, partners: Sequence[str]) -> list[PendingDelivery]:
        names = list(dict.fromkeys(partners))

        def work(batch: _Batch) -> list[PendingDelivery]:
            seen: dict[tuple[str, str], PendingDelivery] = {}
            for name in names:
                rows = batch.conn.execute(
                    _PENDING_SQL + " AND (m.sender = ? OR d.recipient = ?)"
                    " ORDER BY d.seq, d.recipient",
                    (name, name),
                ).fetchall()
                for r in rows:
                    seen.setdefault((r[0], r[2]), _pending(r))
            return list(seen.values())

        result: list[PendingDelivery] = await self._submit(work)
        return result

    async def pending_under(self, token_ids: Sequence[str]) -> list[PendingDelivery]:
        ids = list(dict.fromkeys(token_ids))

        def work(batch: _Batch) -> list[PendingDelivery]:
            out: list[PendingDelivery] = []
            for token_id in ids:
                rows = batch.conn.execute(
                    _PENDING_SQL + " AND m.token_id = ? ORDER BY d.seq, d.recipient",
                    (token_id,),
                ).fetchall()
                out.extend(_pending(r) for r in rows)
            return out

        result: list[PendingDelivery] = await self._submit(work)
        return result

    async def tokens_of(self, coordinators: Sequence[str]) -> list[TokenRow]:
        names = list(dict.fromkeys(coordinators))

        def work(batch: _Batch) -> list[TokenRow]:
            out: list[TokenRow] = []
            for name in names:
                ids = batch.conn.execute(
                    "SELECT token_id FROM tokens WHERE coordinator = ? ORDER BY token_id", (name,)
                ).fetchall()
                for (token_id,) in ids:
                    row = _token_row(batch.conn, token_id)
                    if row is not None:  # a tombstone is no longer a registered token
                        out.append(row)
            return out

        result: list[TokenRow] = await self._submit(work)
        return result

    async def record_key_revocation(
        self, row: KeyRevocationRow, audit: AuditRecord
    ) -> tuple[KeyRevocationRow, bool]:
        leaf = self._leaf_hash(audit)

        def work(batch: _Batch) -> tuple[KeyRevocationRow, bool]:
            found = batch.conn.execute(
                _KEY_REVOCATIONS_SQL + " WHERE statement_hash = ?", (row.statement_hash,)
            ).fetchone()
            if found is not None:
                return _key_revocation(found), False
            index = batch.append(audit, leaf)
            stored = dataclasses.replace(row, audit_index=index)
            batch.conn.execute(
                "INSERT INTO key_revocations (statement_hash, partner, kid, signing_kid,"
                " revoked_at, compromised_since, statement, recorded_at, carried_by,"
                " audit_index) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
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
                ),
            )
            return stored, True

        result: tuple[KeyRevocationRow, bool] = await self._submit(work)
        return result

    async def key_revocations(self) -> list[KeyRevocationRow]:
        def work(batch: _Batch) -> list[KeyRevocationRow]:
            rows = batch.conn.execute(
                _KEY_REVOCATIONS_SQL + " ORDER BY audit_index, statement_hash"
            ).fetchall()
            return [_key_revocation(r) for r in rows]

        result: list[KeyRevocationRow] = await self._submit(work)
        return result

    async def purge(
        self, deliveries: Sequence[Purged], now: int, audit_for: Callable[[Purged], AuditRecord]
    ) -> list[Purged]:
        signer = self._signer
        wanted = list(deliveries)

        def work(batch: _Batch) -> list[Purged]:
            out = []
            for p in wanted:
                row = batch.conn.execute(
                    "SELECT 1 FROM deliveries WHERE message_id = ? AND recipient = ?"
                    " AND state = 'pending'",
                    (p.message_id, p.recipient),
                ).fetchone()
                if row is None:  # ended meanwhile (a receipt, an expiry, a token revocation)
                    continue
                record = audit_for(p)
                batch.append(record, self._leaf_hash(record))
                event = signer.sender_event(EventKind.PURGE, p.message_id, p.recipient, now, b"")
                _end_delivery(
                    batch.conn, batch, p, DeliveryState.PURGED, EventKind.PURGE, now, event
                )
                out.append(p)
            return out

        result: list[Purged] = await self._submit(work)
        return result

    async def apply_retention(self, now: int, audit_for: RetentionAudit) -> list[Retained]:
        def work(batch: _Batch) -> list[Retained]:
            conn = batch.conn
            rows = conn.execute(_RETENTION_DUE_SQL, (now, RETENTION_BATCH)).fetchall()
            out: list[Retained] = []
            for token_id, live in rows:
                entries = conn.execute(
                    "UPDATE audit_leaves SET entry = NULL, salt = NULL"
                    " WHERE token_id = ? AND entry IS NOT NULL",
                    (token_id,),
                ).rowcount
                # Leaves appended earlier in this batch are written only at its end.
                for i, (index, leaf, entry, _salt, owner) in enumerate(batch.leaf_rows):
                    if owner == token_id and entry is not None:
                        batch.leaf_rows[i] = (index, leaf, None, None, owner)
                        entries += 1
                events = conn.execute(
                    "DELETE FROM sender_events WHERE message_id IN"
                    " (SELECT message_id FROM messages WHERE token_id = ?)",
                    (token_id,),
                ).rowcount
                conn.execute(
                    "DELETE FROM deliveries WHERE message_id IN"
                    " (SELECT message_id FROM messages WHERE token_id = ?)",
                    (token_id,),
                )
                messages = conn.execute(
                    "DELETE FROM messages WHERE token_id = ?", (token_id,)
                ).rowcount
                # The tombstone: ids, times and the hash stay, the signed token goes.
                conn.execute(
                    "UPDATE tokens SET signed = X'', revocation = NULL WHERE token_id = ?",
                    (token_id,),
                )
                if not (entries or messages or events or live):
                    continue
                record = audit_for(token_id, entries)
                index = batch.append(record, self._leaf_hash(record))
                out.append(Retained(token_id, entries, messages, events, int(live), index))
            return out

        result: list[Retained] = await self._submit(work)
        return result

    def scrub_files(self) -> None:
        """Copy the WAL into the database file and truncate it, so the WAL holds no old page
        images of what retention deleted (``secure_delete`` zeroes the pages themselves).
        Blocking, on a connection of its own: run it in a thread after ``apply_retention``.
        Raises ``sqlite3.Error``; a busy database is left for the next sweep."""
        conn = self.connect(self._path)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.close()

    async def audit_head(self) -> AuditHead:
        def work(batch: _Batch) -> AuditHead:
            row = batch.conn.execute(
                "SELECT size, root, note FROM checkpoints ORDER BY size DESC LIMIT 1"
            ).fetchone()
            if row is None:
                return AuditHead(0, batch.tree(0).root(), "")
            return AuditHead(int(row[0]), bytes(row[1]), str(row[2]))

        result: AuditHead = await self._submit(work)
        return result

    async def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        result: list[bytes] = await self._submit(
            lambda b: list(b.tree().inclusion_proof(index, size).hashes)
        )
        return result

    async def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        result: list[bytes] = await self._submit(
            lambda b: list(b.tree().consistency_proof(old_size, new_size).hashes)
        )
        return result

    async def audit_leaves(self) -> list[tuple[int, bytes, bytes | None, bytes | None]]:
        def work(batch: _Batch) -> list[tuple[int, bytes, bytes | None, bytes | None]]:
            rows = batch.conn.execute(
                "SELECT idx, leaf_hash, entry, salt FROM audit_leaves ORDER BY idx"
            ).fetchall()
            # Leaves appended earlier in this batch are written only at its end.
            return [(int(r[0]), bytes(r[1]), r[2], r[3]) for r in rows] + [
                (r[0], r[1], r[2], r[3]) for r in batch.leaf_rows
            ]

        result: list[tuple[int, bytes, bytes | None, bytes | None]] = await self._submit(work)
        return result

    async def checkpoints(self) -> list[str]:
        result: list[str] = await self._submit(
            lambda b: [r[0] for r in b.conn.execute("SELECT note FROM checkpoints ORDER BY size")]
        )
        return result

    async def queue_stats(self) -> list[QueueStat]:
        def work(batch: _Batch) -> list[QueueStat]:
            rows = batch.conn.execute(
                "SELECT d.recipient, COUNT(*), MIN(m.accepted_at) FROM deliveries d"
                " JOIN messages m ON m.message_id = d.message_id"
                " WHERE d.state = 'pending' GROUP BY d.recipient"
            ).fetchall()
            return [QueueStat(r[0], int(r[1]), r[2]) for r in rows]

        result: list[QueueStat] = await self._submit(work)
        return result

    async def token_expiries(self, now: int) -> dict[str, int]:
        def work(batch: _Batch) -> dict[str, int]:
            rows = batch.conn.execute(_TOKEN_EXPIRIES_SQL, (now,)).fetchall()
            return {r[0]: int(r[1]) for r in rows}

        result: dict[str, int] = await self._submit(work)
        return result

    async def wait(self, party: str, wait_s: float) -> None:
        """Return when something may be waiting for ``party``, or after ``wait_s`` seconds."""
        await self.notifier.wait(party, wait_s)


# Active tokens: not revoked, not superseded, not expired (the token expiry gauge).
_TOKEN_EXPIRIES_SQL = (
    "SELECT coordinator, MIN(valid_until) FROM tokens WHERE revoked_at IS NULL"
    " AND superseded_by IS NULL AND valid_until > ? GROUP BY coordinator"
)


# Tokens past their retention deadline with something left to delete: the signed token (a live
# row), or entries recorded under a tombstone's id after its deadline.
_RETENTION_DUE_SQL: Final = (
    "SELECT t.token_id, length(t.signed) > 0 FROM tokens t WHERE t.retention_until <= ?"
    " AND (length(t.signed) > 0 OR EXISTS (SELECT 1 FROM audit_leaves a"
    " WHERE a.token_id = t.token_id AND a.entry IS NOT NULL))"
    " ORDER BY t.retention_until, t.token_id LIMIT ?"
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


def _pending(r: Sequence[Any]) -> PendingDelivery:
    return PendingDelivery(r[0], r[1], r[2], int(r[3]), bytes(r[4] or b""), str(r[5]))


def _key_revocation(r: Sequence[Any]) -> KeyRevocationRow:
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


def _token_row(conn: sqlite3.Connection, token_id: str) -> TokenRow | None:
    row = conn.execute(
        "SELECT token_id, coordinator, token_hash, signed, valid_until, retention_until,"
        " registered_at, supersedes, superseded_by, revoked_at FROM tokens WHERE token_id = ?",
        (token_id,),
    ).fetchone()
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


def _end_delivery(
    conn: sqlite3.Connection,
    batch: _Batch,
    p: Purged,
    state: DeliveryState,
    kind: EventKind,
    now: int,
    event: bytes,
) -> None:
    """End one delivery: mark it, queue the signed sender ``event``, and drop the ciphertext
    once no recipient still needs it."""
    conn.execute(
        "UPDATE deliveries SET state = ?, finished_at = ? WHERE message_id = ? AND recipient = ?",
        (state.value, now, p.message_id, p.recipient),
    )
    conn.execute(
        "INSERT INTO sender_events (sender, message_id, kind, signed, created_at)"
        " VALUES (?,?,?,?,?)",
        (
            p.sender,
            p.message_id,
            kind.value,
            event,
            now,
        ),
    )
    batch.wake.add(p.sender)
    conn.execute(
        "UPDATE messages SET envelope = NULL WHERE message_id = ? AND NOT EXISTS"
        " (SELECT 1 FROM deliveries WHERE message_id = ? AND state = 'pending')",
        (p.message_id, p.message_id),
    )


def _settle_all(
    items: list[tuple[_Op, Any, BaseException | None]],
    notifier: Notifier | None,
    wake: set[str],
) -> None:
    """On the event loop: resolve each operation's future, then wake the long-polls."""
    for op, result, error in items:
        future = op.future
        if future.done():  # the caller was cancelled meanwhile
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    if notifier is not None:
        notifier.notify(set(wake))
