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
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.protocol.merkle import MerkleLog
from gateway.store.base import (
    Accepted,
    AuditHead,
    AuditRecord,
    Delivery,
    DeliveryState,
    EventKind,
    MessageStatus,
    Purged,
    QueueStat,
    ReceiptSigner,
    RecipientState,
    SenderEventRow,
    Submission,
    TokenCheck,
    TokenRow,
)
from gateway.store.errors import DuplicateMessageError, StoreUnavailableError, StoreVersionError
from gateway.store.migrations import LATEST_VERSION, MIGRATIONS
from gateway.store.notify import Notifier


class _SqliteNodes:
    """Complete-subtree hashes of the audit Merkle tree, read and written in the batch's
    transaction (so a rolled-back operation leaves no node behind)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def get(self, level: int, index: int) -> bytes | None:
        row = self._conn.execute(
            "SELECT hash FROM audit_nodes WHERE level = ? AND idx = ?", (level, index)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def put(self, level: int, index: int, value: bytes) -> None:
        self._conn.execute(
            "INSERT INTO audit_nodes (level, idx, hash) VALUES (?, ?, ?)", (level, index, value)
        )


@dataclass
class _PendingReceipt:
    sub: Submission
    leaf_index: int
    accepted_at: int
    result: list[Accepted] = field(default_factory=list)


@dataclass(frozen=True)
class _SameBatch:
    """The same message accepted earlier in the same batch: its receipt is signed only at the
    batch's commit, so the later caller gets it from there (not the first time)."""

    pending: _PendingReceipt


@dataclass
class _Batch:
    conn: sqlite3.Connection
    signer: ReceiptSigner
    size: int
    receipts: list[_PendingReceipt] = field(default_factory=list)
    wake: set[str] = field(default_factory=set)

    def tree(self, size: int | None = None) -> MerkleLog:
        return MerkleLog(_SqliteNodes(self.conn), self.size if size is None else size)

    def append(self, record: AuditRecord, leaf: bytes) -> int:
        index = self.size
        self.conn.execute(
            "INSERT INTO audit_leaves (idx, leaf_hash, entry, salt, token_id) VALUES (?,?,?,?,?)",
            (index, leaf, record.entry, record.salt, record.token_id),
        )
        self.tree(index).append(leaf)
        self.size += 1
        return index

    def finalize(self) -> str | None:
        """Sign the batch's checkpoint and its receipts; store both. Inside the transaction."""
        if not self.receipts and self.size == self._start_size:
            return None
        tree = self.tree()
        tree_root = tree.root()
        note = self.signer.checkpoint(self.size, tree_root)
        self.conn.execute(
            "INSERT OR REPLACE INTO checkpoints (size, root, note) VALUES (?, ?, ?)",
            (self.size, tree_root, note),
        )
        for pending in self.receipts:
            proof = tree.inclusion_proof(pending.leaf_index).hashes
            receipt = self.signer.acceptance_receipt(
                pending.sub, pending.accepted_at, pending.leaf_index, self.size, proof, note
            )
            self.conn.execute(
                "UPDATE messages SET receipt = ? WHERE message_id = ?",
                (receipt, pending.sub.message_id),
            )
            pending.result.append(Accepted(receipt, pending.leaf_index, first_time=True))
        return note

    _start_size: int = 0


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
        self._conn: sqlite3.Connection | None = None
        self._size = 0
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
        self._conn = conn
        self._thread = threading.Thread(target=self._run, name="ketenpost-sqlite", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

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
        batch = _Batch(conn, self._signer, self._size)
        batch._start_size = self._size
        outcomes: list[tuple[_Op, Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in ops:
                size_before = batch.size
                receipts_before = len(batch.receipts)
                wake_before = set(batch.wake)
                conn.execute("SAVEPOINT op")
                try:
                    result = op.work(batch)
                except Exception as exc:  # each op's failure goes to its own caller
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    batch.size = size_before
                    del batch.receipts[receipts_before:]
                    batch.wake = wake_before
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
            for op in ops:
                op.loop.call_soon_threadsafe(_set_exception, op.future, failure)
            return
        self._size = batch.size
        for op, result, error in outcomes:
            if error is not None:
                op.loop.call_soon_threadsafe(_set_exception, op.future, error)
            else:
                op.loop.call_soon_threadsafe(_set_result, op.future, result)
        if batch.wake and ops:
            ops[0].loop.call_soon_threadsafe(self.notifier.notify, set(batch.wake))

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
            for recipient in sub.recipients:
                conn.execute(
                    "INSERT INTO deliveries (message_id, recipient, seq, state)"
                    " VALUES (?, ?, ?, 'pending')",
                    (sub.message_id, recipient, leaf_index),
                )
                batch.wake.add(recipient)
            batch.append(record, self._leaf_hash(record))
            pending = _PendingReceipt(sub, leaf_index, sub.received_at)
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
        def work(batch: _Batch) -> int:
            return batch.append(record, self._leaf_hash(record))

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
                _end_delivery(
                    conn, batch, signer, p, DeliveryState.PURGED, EventKind.PURGE, revoked_at, b""
                )
            return purged

        result: list[Purged] = await self._submit(work)
        return result

    async def claim(self, recipient: str, limit: int, now: int, lease_s: int) -> list[Delivery]:
        def work(batch: _Batch) -> list[Delivery]:
            conn = batch.conn
            rows = conn.execute(
                "SELECT d.message_id, m.sender, m.envelope, d.attempts, m.accepted_at"
                " FROM deliveries d"
                " JOIN messages m ON m.message_id = d.message_id"
                " WHERE d.recipient = ? AND d.state = 'pending' AND d.lease_until <= ?"
                " AND m.expires_at > ? ORDER BY d.seq LIMIT ?",
                (recipient, now, now, limit),
            ).fetchall()
            out = []
            for message_id, sender, envelope, attempts, accepted_at in rows:
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
        signer = self._signer
        kind = EventKind.RECEIPT if state is DeliveryState.DELIVERED else EventKind.REJECTION

        def work(batch: _Batch) -> bool:
            row = batch.conn.execute(
                "SELECT m.sender FROM deliveries d JOIN messages m ON m.message_id = d.message_id"
                " WHERE d.message_id = ? AND d.recipient = ? AND d.state = 'pending'",
                (message_id, recipient),
            ).fetchone()
            if row is None:
                return False
            batch.append(audit, self._leaf_hash(audit))
            _end_delivery(
                batch.conn,
                batch,
                signer,
                Purged(message_id, row[0], recipient),
                state,
                kind,
                now,
                signed,
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
                _end_delivery(
                    batch.conn, batch, signer, p, DeliveryState.EXPIRED, EventKind.EXPIRY, now, b""
                )
            return out

        result: list[Purged] = await self._submit(work)
        return result

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
            return [(int(r[0]), bytes(r[1]), r[2], r[3]) for r in rows]

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

    async def wait(self, party: str, wait_s: float) -> None:
        """Return when something may be waiting for ``party``, or after ``wait_s`` seconds."""
        await self.notifier.wait(party, wait_s)


def _token_row(conn: sqlite3.Connection, token_id: str) -> TokenRow | None:
    row = conn.execute(
        "SELECT token_id, coordinator, token_hash, signed, valid_until, retention_until,"
        " registered_at, supersedes, superseded_by, revoked_at FROM tokens WHERE token_id = ?",
        (token_id,),
    ).fetchone()
    if row is None:
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
    signer: ReceiptSigner,
    p: Purged,
    state: DeliveryState,
    kind: EventKind,
    now: int,
    detail: bytes,
) -> None:
    """End one delivery: mark it, queue the sender event, and drop the ciphertext once no
    recipient still needs it."""
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
            signer.sender_event(kind, p.message_id, p.recipient, now, detail),
            now,
        ),
    )
    batch.wake.add(p.sender)
    remaining = conn.execute(
        "SELECT COUNT(*) FROM deliveries WHERE message_id = ? AND state = 'pending'",
        (p.message_id,),
    ).fetchone()[0]
    if remaining == 0:
        conn.execute("UPDATE messages SET envelope = NULL WHERE message_id = ?", (p.message_id,))


def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
