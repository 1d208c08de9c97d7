"""The adapter's durable local store: ``adapter.db`` (SQLite, WAL, ``synchronous=FULL``).

Rules kept here:

* **Outbox and cursor in one transaction.** ``enqueue`` writes the outbox rows, the failed
  records and the source cursor of one batch in a single transaction, so after a crash either
  the batch and its cursor are there, or neither is and the source is read again from the old
  cursor. ``record_id`` is UNIQUE and the message id is ``HMAC(outbox key, record id)``: a record
  read twice is inserted once (``INSERT OR IGNORE``), it never makes two messages.
* **Send order is creation order**: ``seq`` is an AUTOINCREMENT key, never reused.
* **Outbox states**: ``queued`` (waiting or retrying), ``sent`` (submitted, outcome unknown:
  the exact sealed bytes are kept and resubmitted, because the gateway returns the first
  receipt for the same bytes and refuses other bytes under an accepted id), ``accepted``
  (acceptance receipt kept and verified), ``disputed`` (the gateway answered with a receipt
  that does not verify: an alarm, never silently accepted), ``refused`` (final).
* **Inbound idempotency.** ``inbound`` holds one row per processed message id with its outcome
  and the exact signed receipt or rejection bytes, written in the same transaction as the
  pseudonym mapping and token the message brought. A redelivered message with a row is
  answered with the same bytes and never applied again.
* **The failed place** keeps a malformed record's bytes and a readable report; it is counted.
* Witness state (every checkpoint seen) and alarms persist, so a restart does not forget an
  inconsistency the gateway showed. A checkpoint seen as the gateway's head carries the last
  time it was (migration 5, ``head_seen_at``): the recipient's bound on a delivery's
  acceptance time (``adapters.acceptance``).
* **Processing log** (migration 2): the Logboek Dataverwerkingen records of
  ``adapters.processing_log``, one row per span id, never updated (``INSERT OR IGNORE``).
* **Retention** (migration 3, ``apply_retention``): at a token's ``retention_until`` (read from
  the signed token when it is stored) the approach's outbox rows, their outcomes, processed-id
  rows, pseudonym mapping, processing-log records and the token with its private part are
  deleted in one transaction; ``secure_delete`` zeroes them in the file and the WAL is
  truncated after, so nothing of the subject lingers in free pages.
* **Key revocations** (migration 4): partners' own key revocation statements the engine
  verified, never updated or deleted (``INSERT OR IGNORE`` by statement hash); read back in
  the order they were verified.
* **Outcomes** (one row per outbox message and recipient, from verified sender events) carry
  ``reported``: 0 until the partner system was told (``Destination.report_refusal``, or
  ``report_delivery`` for a receipt when the destination reports deliveries) and the call
  returned; a receipt for a destination that does not report deliveries is stored as 1.
* Migrations are versioned by ``PRAGMA user_version`` and only ever appended to ``MIGRATIONS``.
* Calls are synchronous and short (a local file); the engine runs them on its event loop.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec

from adapters.errors import AdapterError
from gateway.protocol.errors import ProtocolError
from gateway.protocol.token import decode_signed

MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: the first schema.
    """
    CREATE TABLE cursor (
        source TEXT PRIMARY KEY,
        value TEXT
    );
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        record_id TEXT NOT NULL UNIQUE,
        message_id TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        token_id TEXT NOT NULL,
        recipients TEXT NOT NULL,
        message_type TEXT NOT NULL,
        body BLOB NOT NULL,
        expires_in_s INTEGER NOT NULL,
        trace_id TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN
            ('queued', 'sent', 'accepted', 'disputed', 'refused')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL DEFAULT 0,
        last_reason TEXT,
        envelope BLOB,
        expires_at INTEGER,
        receipt BLOB,
        leaf_index INTEGER,
        accepted_at INTEGER,
        refusal_reported INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX outbox_pending ON outbox (state, seq);
    CREATE TABLE outcomes (
        message_id TEXT NOT NULL,
        recipient TEXT NOT NULL,
        kind TEXT NOT NULL,
        reason TEXT,
        at INTEGER NOT NULL,
        reported INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (message_id, recipient)
    );
    CREATE TABLE failed (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        record_id TEXT NOT NULL,
        content_type TEXT NOT NULL,
        data BLOB NOT NULL,
        metadata TEXT NOT NULL,
        report TEXT NOT NULL,
        failed_at INTEGER NOT NULL
    );
    CREATE TABLE inbound (
        message_id TEXT PRIMARY KEY,
        sender TEXT NOT NULL,
        message_type TEXT,
        token_id TEXT,
        outcome TEXT NOT NULL CHECK (outcome IN ('applied', 'rejected')),
        reason TEXT,
        answer BLOB NOT NULL,
        applied_at INTEGER NOT NULL
    );
    CREATE TABLE pseudonyms (
        token_id TEXT NOT NULL,
        pseudonym TEXT NOT NULL,
        local_id TEXT NOT NULL,
        stored_at INTEGER NOT NULL,
        PRIMARY KEY (token_id, pseudonym)
    );
    CREATE INDEX pseudonyms_local ON pseudonyms (local_id);
    CREATE TABLE tokens (
        token_id TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL,
        signed BLOB NOT NULL,
        opening BLOB,
        registered_at INTEGER,
        revoked_at INTEGER,
        superseded_by TEXT,
        status_at INTEGER NOT NULL,
        stored_at INTEGER NOT NULL
    );
    CREATE TABLE checkpoints (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        size INTEGER NOT NULL,
        root BLOB NOT NULL,
        note TEXT NOT NULL,
        seen_at INTEGER NOT NULL
    );
    CREATE TABLE settings (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE alarms (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL,
        raised_at INTEGER NOT NULL,
        cleared_at INTEGER
    );
    """,
    # 2: processing logs (Logboek Dataverwerkingen, ``adapters.processing_log``): one row per
    # record, its exact exported JSON line beside the columns it is looked up by; and the span
    # id of the partner system's action an outbound record continues (its trace parent).
    """
    ALTER TABLE outbox ADD COLUMN parent_span_id TEXT;
    CREATE TABLE processing_log (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        span_id TEXT NOT NULL UNIQUE,
        trace_id TEXT NOT NULL,
        operation TEXT NOT NULL,
        message_id TEXT NOT NULL,
        token_id TEXT,
        data_subject_id TEXT,
        end_ms INTEGER NOT NULL,
        record TEXT NOT NULL
    );
    CREATE INDEX processing_log_end ON processing_log (end_ms);
    CREATE INDEX processing_log_trace ON processing_log (trace_id);
    CREATE INDEX processing_log_token ON processing_log (token_id);
    """,
    # 3: retention (``apply_retention``): each token's retention deadline beside it, filled from
    # the signed token when it is stored (and, for rows stored before, by the first sweep).
    """
    ALTER TABLE tokens ADD COLUMN retention_until INTEGER;
    CREATE INDEX tokens_retention ON tokens (retention_until);
    """,
    # 4: partners' own key revocations (ADR 0011) this adapter verified, as their statement
    # files hold them, so a restart (or a gateway that stops serving one) never forgets one.
    """
    CREATE TABLE key_revocations (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        statement_hash TEXT NOT NULL UNIQUE,
        partner TEXT NOT NULL,
        kid TEXT NOT NULL,
        statement BLOB NOT NULL,
        verified_at INTEGER NOT NULL
    );
    """,
    # 5: when a checkpoint was last seen as the gateway's head (``GET /v1/audit/checkpoint``),
    # the gateway's word that no leaf at or past its size existed then: a delivery's audited
    # acceptance time must not lie before it (``adapters.acceptance``). NULL for a checkpoint
    # only seen inside a receipt or a peer's statement, which says nothing of when it was the
    # head, and for every checkpoint kept before.
    """
    ALTER TABLE checkpoints ADD COLUMN head_seen_at INTEGER;
    CREATE INDEX checkpoints_size ON checkpoints (size);
    """,
)

OUTBOX_STATES: Final = ("queued", "sent", "accepted", "disputed", "refused")


@dataclass(frozen=True)
class RetainedCounts:
    """What ``apply_retention`` deleted: rows per table, and tokens whose deadline passed."""

    tokens: int = 0
    outbox: int = 0
    outcomes: int = 0
    inbound: int = 0
    pseudonyms: int = 0
    processing_log: int = 0

    def items(self) -> list[tuple[str, int]]:
        return [(name, int(getattr(self, name))) for name in self.__dataclass_fields__]


def _retention_until(signed: bytes) -> int | None:
    """The ``retention_until`` of an encoded signed token; None if it does not decode (a
    token that does not decode was never accepted, but is not kept past a sweep either)."""
    try:
        payload = msgspec.msgpack.decode(decode_signed(signed).payload)
        value = payload["retention_until"]
    except (msgspec.DecodeError, ProtocolError, KeyError, TypeError, ValueError):
        return None
    return value if isinstance(value, int) else None


class StoreError(AdapterError):
    """``adapter.db`` cannot be opened or is from a newer version of the SDK."""


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    record_id: str
    message_id: str
    created_at: int
    token_id: str
    recipients: tuple[str, ...]
    message_type: str
    body: bytes
    expires_in_s: int
    trace_id: str
    state: str
    attempts: int
    next_attempt_at: int
    last_reason: str | None
    envelope: bytes | None
    expires_at: int | None
    receipt: bytes | None
    # The partner system's span this message continues (migration 2); None if it gave none.
    parent_span_id: str | None = None


@dataclass(frozen=True)
class NewOutbound:
    """An outbox row to insert (built by the engine from a mapped record)."""

    record_id: str
    message_id: str
    token_id: str
    recipients: tuple[str, ...]
    message_type: str
    body: bytes
    expires_in_s: int
    trace_id: str
    parent_span_id: str | None = None


@dataclass(frozen=True)
class FailedRecord:
    id: int
    record_id: str
    content_type: str
    data: bytes
    metadata: dict[str, str]
    report: str
    failed_at: int


@dataclass(frozen=True)
class InboundRow:
    message_id: str
    sender: str
    outcome: str
    reason: str | None
    answer: bytes
    applied_at: int


@dataclass(frozen=True)
class TokenRow:
    token_id: str
    token_hash: str
    signed: bytes
    opening: bytes | None
    registered_at: int | None
    revoked_at: int | None
    superseded_by: str | None
    status_at: int


@dataclass(frozen=True)
class CheckpointRow:
    size: int
    root: bytes
    note: str
    seen_at: int


@dataclass(frozen=True)
class ProcessingRow:
    """One processing-log record (``adapters.processing_log``): the exported JSON line and the
    columns it is found by (trace, message, approach, subject, end time)."""

    span_id: str
    trace_id: str
    operation: str
    message_id: str
    token_id: str | None
    data_subject_id: str | None
    end_ms: int
    record: str


@dataclass(frozen=True)
class KeyRevocationRow:
    """A verified key revocation statement: its exact statement file bytes
    (``keys.revocation.encode_revocation``) and what it is looked up by."""

    statement_hash: str
    partner: str
    kid: str
    statement: bytes
    verified_at: int


@dataclass(frozen=True)
class Alarm:
    kind: str
    detail: str
    raised_at: int


# Tables whose rows belong to one approach, deleted at its retention deadline (the token row
# last). Whole statements: no value is formatted into SQL.
_RETAINED_BY_TOKEN: Final = ("outbox", "inbound", "pseudonyms", "processing_log", "tokens")
_RETENTION_DELETE: Final = {
    "outbox": "DELETE FROM outbox WHERE token_id = ?",
    "inbound": "DELETE FROM inbound WHERE token_id = ?",
    "pseudonyms": "DELETE FROM pseudonyms WHERE token_id = ?",
    "processing_log": "DELETE FROM processing_log WHERE token_id = ?",
    "tokens": "DELETE FROM tokens WHERE token_id = ?",
}

# A constant: no caller's value is ever formatted into SQL (all values are bound parameters).
_SELECT_OUTBOX: Final = (
    "SELECT seq, record_id, message_id, created_at, token_id, recipients, message_type, body, "
    "expires_in_s, trace_id, state, attempts, next_attempt_at, last_reason, envelope, "
    "expires_at, receipt, parent_span_id FROM outbox "
)


def _outbox_row(r: sqlite3.Row) -> OutboxRow:
    return OutboxRow(
        seq=r[0],
        record_id=r[1],
        message_id=r[2],
        created_at=r[3],
        token_id=r[4],
        recipients=tuple(json.loads(r[5])),
        message_type=r[6],
        body=r[7],
        expires_in_s=r[8],
        trace_id=r[9],
        state=r[10],
        attempts=r[11],
        next_attempt_at=r[12],
        last_reason=r[13],
        envelope=r[14],
        expires_at=r[15],
        receipt=r[16],
        parent_span_id=r[17],
    )


class AdapterStore:
    """``adapter.db``. One object per process; ``close`` when done."""

    def __init__(self, path: Path) -> None:
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: {exc}") from None
        self.path = path
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before it returns, so an acknowledged push or a sent
        # receipt never refers to a row a power cut could take back.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        # Deleted content is zeroed in the file (retention: nothing of a subject may linger in
        # free pages).
        self._db.execute("PRAGMA secure_delete=ON")
        self._migrate()

    def close(self) -> None:
        self._db.close()

    def _migrate(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > len(MIGRATIONS):
            raise StoreError(
                f"{self.path} has schema version {version}; this SDK knows {len(MIGRATIONS)}"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            with self.transaction() as db:
                for statement in script.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``; rolled back if the block raises."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- outbound ------------------------------------------------------------------------

    def cursor(self, source: str = "source") -> str | None:
        row = self._db.execute("SELECT value FROM cursor WHERE source = ?", (source,)).fetchone()
        return None if row is None else row[0]

    def enqueue(
        self,
        rows: Sequence[NewOutbound],
        failed: Sequence[tuple[str, str, bytes, dict[str, str], str]],
        refused: Sequence[tuple[NewOutbound, str, str]],
        cursor: str | None,
        now: int,
        source: str = "source",
    ) -> list[str]:
        """Insert outbox rows, failed records (record id, content type, data, metadata,
        report) and locally refused rows (row, reason, detail), and move the cursor — in one
        transaction. Returns the message ids newly inserted (a record read before is not)."""
        inserted: list[str] = []
        with self.transaction() as db:
            for row in rows:
                cur = db.execute(
                    "INSERT OR IGNORE INTO outbox (record_id, message_id, created_at, token_id, "
                    "recipients, message_type, body, expires_in_s, trace_id, state, "
                    "next_attempt_at, parent_span_id) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?)",
                    (
                        row.record_id,
                        row.message_id,
                        now,
                        row.token_id,
                        json.dumps(list(row.recipients)),
                        row.message_type,
                        row.body,
                        row.expires_in_s,
                        row.trace_id,
                        now,
                        row.parent_span_id,
                    ),
                )
                if cur.rowcount:
                    inserted.append(row.message_id)
            for row, reason, detail in refused:
                db.execute(
                    "INSERT OR IGNORE INTO outbox (record_id, message_id, created_at, token_id, "
                    "recipients, message_type, body, expires_in_s, trace_id, state, "
                    "last_reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'refused', ?)",
                    (
                        row.record_id,
                        row.message_id,
                        now,
                        row.token_id,
                        json.dumps(list(row.recipients)),
                        row.message_type,
                        row.body,
                        row.expires_in_s,
                        row.trace_id,
                        f"{reason}: {detail}" if detail else reason,
                    ),
                )
            for record_id, content_type, data, metadata, report in failed:
                known = db.execute(
                    "SELECT 1 FROM failed WHERE record_id = ?", (record_id,)
                ).fetchone()
                if known is None:
                    db.execute(
                        "INSERT INTO failed (record_id, content_type, data, metadata, report, "
                        "failed_at) VALUES (?, ?, ?, ?, ?, ?)",
                        (record_id, content_type, data, json.dumps(metadata), report, now),
                    )
            if cursor is not None:
                db.execute(
                    "INSERT INTO cursor (source, value) VALUES (?, ?) "
                    "ON CONFLICT (source) DO UPDATE SET value = excluded.value",
                    (source, cursor),
                )
        return inserted

    def pending(self, now: int, limit: int = 100) -> list[OutboxRow]:
        """Rows to (re)submit now, in creation order."""
        rows = self._db.execute(
            _SELECT_OUTBOX + "WHERE state IN ('queued', 'sent') "
            "AND next_attempt_at <= ? ORDER BY seq LIMIT ?",
            (now, limit),
        ).fetchall()
        return [_outbox_row(r) for r in rows]

    def outbox_row(self, message_id: str) -> OutboxRow | None:
        r = self._db.execute(_SELECT_OUTBOX + "WHERE message_id = ?", (message_id,)).fetchone()
        return None if r is None else _outbox_row(r)

    def accepted_expiring(self, after: int, until: int) -> list[OutboxRow]:
        """Accepted rows whose ``expires_at`` lies in ``(after, until]``, oldest first."""
        rows = self._db.execute(
            _SELECT_OUTBOX + "WHERE state = 'accepted' AND expires_at > ? AND expires_at <= ? "
            "ORDER BY expires_at, seq",
            (after, until),
        ).fetchall()
        return [_outbox_row(r) for r in rows]

    def outbox(self) -> list[OutboxRow]:
        rows = self._db.execute(_SELECT_OUTBOX + "ORDER BY seq").fetchall()
        return [_outbox_row(r) for r in rows]

    def outbox_depth(self) -> int:
        return int(
            self._db.execute(
                "SELECT count(*) FROM outbox WHERE state IN ('queued', 'sent')"
            ).fetchone()[0]
        )

    def mark_sealed(self, message_id: str, envelope: bytes, expires_at: int) -> None:
        """Keep the exact bytes about to be submitted (state ``sent``) before submitting."""
        with self.transaction() as db:
            db.execute(
                "UPDATE outbox SET state = 'sent', envelope = ?, expires_at = ? "
                "WHERE message_id = ?",
                (envelope, expires_at, message_id),
            )

    def mark_retry(
        self, message_id: str, reason: str, next_attempt_at: int, *, reseal: bool
    ) -> None:
        """A transient failure. ``reseal``: a definite refusal, so the kept bytes may go and the
        next attempt seals afresh (same message id); otherwise the same bytes go again."""
        with self.transaction() as db:
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_reason = ?, "
                "next_attempt_at = ?, "
                "state = CASE WHEN ? THEN 'queued' ELSE state END, "
                "envelope = CASE WHEN ? THEN NULL ELSE envelope END "
                "WHERE message_id = ?",
                (reason, next_attempt_at, reseal, reseal, message_id),
            )

    def mark_accepted(
        self, message_id: str, receipt: bytes, leaf_index: int, accepted_at: int
    ) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE outbox SET state = 'accepted', attempts = attempts + 1, receipt = ?, "
                "leaf_index = ?, accepted_at = ?, last_reason = NULL WHERE message_id = ?",
                (receipt, leaf_index, accepted_at, message_id),
            )

    def mark_disputed(self, message_id: str, receipt: bytes, detail: str) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE outbox SET state = 'disputed', attempts = attempts + 1, receipt = ?, "
                "last_reason = ? WHERE message_id = ?",
                (receipt, detail, message_id),
            )

    def mark_refused(self, message_id: str, reason: str) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE outbox SET state = 'refused', attempts = attempts + 1, last_reason = ? "
                "WHERE message_id = ?",
                (reason, message_id),
            )

    def unreported_refusals(self) -> list[OutboxRow]:
        rows = self._db.execute(
            _SELECT_OUTBOX + "WHERE state = 'refused' AND refusal_reported = 0 ORDER BY seq"
        ).fetchall()
        return [_outbox_row(r) for r in rows]

    def mark_refusal_reported(self, message_id: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE outbox SET refusal_reported = 1 WHERE message_id = ?", (message_id,))

    def record_outcome(
        self,
        message_id: str,
        recipient: str,
        kind: str,
        reason: str | None,
        at: int,
        *,
        report_delivery: bool = False,
    ) -> bool:
        """Keep a sender event's outcome; False if this (message, recipient) was known.

        A refusal (rejection, expiry, purge) is kept unreported. A receipt is kept unreported
        only when ``report_delivery`` (the destination reports deliveries); otherwise it is
        kept as reported, so it is never reported, also not after reporting is enabled.
        """
        reported = kind == "receipt" and not report_delivery
        with self.transaction() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO outcomes (message_id, recipient, kind, reason, at, "
                "reported) VALUES (?, ?, ?, ?, ?, ?)",
                (message_id, recipient, kind, reason, at, int(reported)),
            )
            return bool(cur.rowcount)

    def outcomes(self, message_id: str) -> dict[str, tuple[str, str | None]]:
        rows = self._db.execute(
            "SELECT recipient, kind, reason FROM outcomes WHERE message_id = ?", (message_id,)
        ).fetchall()
        return {r[0]: (r[1], r[2]) for r in rows}

    def unreported_outcomes(self) -> list[tuple[str, str, str, str | None]]:
        """(message id, recipient, kind, reason) of refusals not yet told to the partner."""
        rows = self._db.execute(
            "SELECT message_id, recipient, kind, reason FROM outcomes "
            "WHERE reported = 0 AND kind != 'receipt'"
        ).fetchall()
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def unreported_deliveries(self) -> list[tuple[str, str, int]]:
        """(message id, recipient, at) of receipts not yet told to the partner, oldest first."""
        rows = self._db.execute(
            "SELECT message_id, recipient, at FROM outcomes "
            "WHERE reported = 0 AND kind = 'receipt' ORDER BY at, message_id, recipient"
        ).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]

    def mark_outcome_reported(self, message_id: str, recipient: str) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE outcomes SET reported = 1 WHERE message_id = ? AND recipient = ?",
                (message_id, recipient),
            )

    # -- the failed place ----------------------------------------------------------------

    def failed(self) -> list[FailedRecord]:
        rows = self._db.execute(
            "SELECT id, record_id, content_type, data, metadata, report, failed_at FROM failed "
            "ORDER BY id"
        ).fetchall()
        return [FailedRecord(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6]) for r in rows]

    def failed_count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM failed").fetchone()[0])

    # -- inbound -------------------------------------------------------------------------

    def inbound(self, message_id: str) -> InboundRow | None:
        r = self._db.execute(
            "SELECT message_id, sender, outcome, reason, answer, applied_at FROM inbound "
            "WHERE message_id = ?",
            (message_id,),
        ).fetchone()
        return None if r is None else InboundRow(r[0], r[1], r[2], r[3], r[4], r[5])

    def record_inbound(
        self,
        *,
        message_id: str,
        sender: str,
        message_type: str | None,
        token_id: str | None,
        outcome: str,
        reason: str | None,
        answer: bytes,
        now: int,
        token: TokenRow | None = None,
        pseudonyms: Iterable[tuple[str, str, str]] = (),
    ) -> bool:
        """Mark ``message_id`` processed together with what it brought (its token and the
        pseudonym ↔ local id pairs (token id, pseudonym, local id)). One transaction.
        Returns False if it was already processed (nothing changed then)."""
        with self.transaction() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO inbound (message_id, sender, message_type, token_id, "
                "outcome, reason, answer, applied_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (message_id, sender, message_type, token_id, outcome, reason, answer, now),
            )
            if not cur.rowcount:
                return False
            if token is not None:
                self._put_token(db, token, now)
            for token_id_, pseudonym, local_id in pseudonyms:
                db.execute(
                    "INSERT INTO pseudonyms (token_id, pseudonym, local_id, stored_at) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (token_id, pseudonym) "
                    "DO UPDATE SET local_id = excluded.local_id",
                    (token_id_, pseudonym, local_id, now),
                )
        return True

    # -- tokens and pseudonyms -----------------------------------------------------------

    @staticmethod
    def _put_token(db: sqlite3.Connection, token: TokenRow, now: int) -> None:
        # An opening once known is kept; a later copy without one (from the gateway's
        # registry) must not erase it.
        db.execute(
            "INSERT INTO tokens (token_id, token_hash, signed, opening, registered_at, "
            "revoked_at, superseded_by, status_at, stored_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (token_id) DO UPDATE SET "
            "opening = coalesce(excluded.opening, tokens.opening), "
            "registered_at = coalesce(excluded.registered_at, tokens.registered_at), "
            "revoked_at = coalesce(excluded.revoked_at, tokens.revoked_at), "
            "superseded_by = coalesce(excluded.superseded_by, tokens.superseded_by), "
            "status_at = max(excluded.status_at, tokens.status_at)",
            (
                token.token_id,
                token.token_hash,
                token.signed,
                token.opening,
                token.registered_at,
                token.revoked_at,
                token.superseded_by,
                token.status_at,
                now,
            ),
        )
        db.execute(
            "UPDATE tokens SET retention_until = ? WHERE token_id = ? AND retention_until IS NULL",
            (_retention_until(token.signed), token.token_id),
        )

    def put_token(
        self, token: TokenRow, now: int, pseudonyms: Iterable[tuple[str, str]] = ()
    ) -> None:
        """Keep a token (and, for a coordinator, the local ids of its subjects)."""
        with self.transaction() as db:
            self._put_token(db, token, now)
            for pseudonym, local_id in pseudonyms:
                db.execute(
                    "INSERT INTO pseudonyms (token_id, pseudonym, local_id, stored_at) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (token_id, pseudonym) "
                    "DO UPDATE SET local_id = excluded.local_id",
                    (token.token_id, pseudonym, local_id, now),
                )

    def token(self, token_id: str) -> TokenRow | None:
        r = self._db.execute(
            "SELECT token_id, token_hash, signed, opening, registered_at, revoked_at, "
            "superseded_by, status_at FROM tokens WHERE token_id = ?",
            (token_id,),
        ).fetchone()
        return None if r is None else TokenRow(*r)

    def local_ids(self, token_id: str) -> dict[str, str]:
        """pseudonym → local id in approach ``token_id``."""
        rows = self._db.execute(
            "SELECT pseudonym, local_id FROM pseudonyms WHERE token_id = ?", (token_id,)
        ).fetchall()
        return {r[0]: r[1] for r in rows}

    def approaches_of(self, local_id: str) -> list[tuple[str, str]]:
        """(token id, pseudonym) of ``local_id``, newest first, skipping revoked and
        superseded tokens."""
        rows = self._db.execute(
            "SELECT p.token_id, p.pseudonym FROM pseudonyms p JOIN tokens t "
            "ON t.token_id = p.token_id WHERE p.local_id = ? AND t.revoked_at IS NULL "
            "AND t.superseded_by IS NULL ORDER BY t.stored_at DESC, p.stored_at DESC",
            (local_id,),
        ).fetchall()
        return [(r[0], r[1]) for r in rows]

    # -- retention -----------------------------------------------------------------------

    def apply_retention(self, now: int) -> RetainedCounts:
        """Delete everything of each approach whose token's ``retention_until`` <= ``now``:
        outbox rows (bodies, envelopes, receipts with their audit entries), their outcomes,
        processed-id rows, the pseudonym mapping, processing-log records and the token with its
        private part. One transaction; then the WAL is checkpointed and truncated so no old
        page image stays (``secure_delete`` zeroes the pages in the file itself)."""
        with self.transaction() as db:
            for token_id, signed in db.execute(
                "SELECT token_id, signed FROM tokens WHERE retention_until IS NULL"
            ).fetchall():
                # Stored before migration 3; an undecodable token is due at once.
                until = _retention_until(bytes(signed))
                db.execute(
                    "UPDATE tokens SET retention_until = ? WHERE token_id = ?",
                    (0 if until is None else until, token_id),
                )
            due = [
                str(r[0])
                for r in db.execute(
                    "SELECT token_id FROM tokens WHERE retention_until <= ? ORDER BY token_id",
                    (now,),
                ).fetchall()
            ]
            counts = {name: 0 for name in RetainedCounts.__dataclass_fields__}
            for token_id in due:
                counts["outcomes"] += db.execute(
                    "DELETE FROM outcomes WHERE message_id IN"
                    " (SELECT message_id FROM outbox WHERE token_id = ?)",
                    (token_id,),
                ).rowcount
                for table in _RETAINED_BY_TOKEN:
                    counts[table] += db.execute(_RETENTION_DELETE[table], (token_id,)).rowcount
        if due:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return RetainedCounts(**counts)

    # -- witness -------------------------------------------------------------------------

    def last_checkpoint(self) -> CheckpointRow | None:
        r = self._db.execute(
            "SELECT size, root, note, seen_at FROM checkpoints ORDER BY size DESC, id DESC LIMIT 1"
        ).fetchone()
        return None if r is None else CheckpointRow(r[0], r[1], r[2], r[3])

    def checkpoints(self) -> list[CheckpointRow]:
        rows = self._db.execute(
            "SELECT size, root, note, seen_at FROM checkpoints ORDER BY id"
        ).fetchall()
        return [CheckpointRow(*r) for r in rows]

    def keep_checkpoint(
        self, size: int, root: bytes, note: str, now: int, *, head: bool = False
    ) -> None:
        """Keep a verified checkpoint (once per size and root; ``seen_at`` is the first
        sight). ``head``: it was the gateway's head at ``now``, so ``head_seen_at`` becomes the
        latest such sighting."""
        with self.transaction() as db:
            known = db.execute(
                "SELECT 1 FROM checkpoints WHERE size = ? AND root = ?", (size, root)
            ).fetchone()
            if known is None:
                db.execute(
                    "INSERT INTO checkpoints (size, root, note, seen_at, head_seen_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (size, root, note, now, now if head else None),
                )
            elif head:
                db.execute(
                    "UPDATE checkpoints SET head_seen_at = max(coalesce(head_seen_at, ?), ?)"
                    " WHERE size = ? AND root = ?",
                    (now, now, size, root),
                )

    def last_head_without(self, leaf_index: int) -> int | None:
        """The latest time a checkpoint of at most ``leaf_index`` entries (a tree without that
        leaf) was seen as the gateway's head; ``None`` when none was."""
        r = self._db.execute(
            "SELECT max(head_seen_at) FROM checkpoints WHERE size <= ?", (leaf_index,)
        ).fetchone()
        return None if r is None or r[0] is None else int(r[0])

    def setting(self, name: str) -> str | None:
        r = self._db.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()
        return None if r is None else str(r[0])

    def set_setting(self, name: str, value: str) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO settings (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

    # -- key revocations -----------------------------------------------------------------

    def add_key_revocations(self, rows: Iterable[KeyRevocationRow]) -> int:
        """Keep verified statements in one transaction (one already kept stays as it is).
        Returns how many were new."""
        added = 0
        with self.transaction() as db:
            for row in rows:
                cur = db.execute(
                    "INSERT OR IGNORE INTO key_revocations "
                    "(statement_hash, partner, kid, statement, verified_at) VALUES (?, ?, ?, ?, ?)",
                    (row.statement_hash, row.partner, row.kid, row.statement, row.verified_at),
                )
                added += cur.rowcount
        return added

    def key_revocations(self) -> list[KeyRevocationRow]:
        """Every statement kept, in the order it was verified."""
        rows = self._db.execute(
            "SELECT statement_hash, partner, kid, statement, verified_at FROM key_revocations "
            "ORDER BY seq"
        ).fetchall()
        return [KeyRevocationRow(r[0], r[1], r[2], bytes(r[3]), r[4]) for r in rows]

    # -- processing log ------------------------------------------------------------------

    def add_processing_records(self, rows: Sequence[ProcessingRow]) -> int:
        """Keep processing-log records in one transaction; a span id already kept is left as
        it is (records are never changed). Returns how many were new."""
        added = 0
        with self.transaction() as db:
            for row in rows:
                cur = db.execute(
                    "INSERT OR IGNORE INTO processing_log (span_id, trace_id, operation, "
                    "message_id, token_id, data_subject_id, end_ms, record) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        row.span_id,
                        row.trace_id,
                        row.operation,
                        row.message_id,
                        row.token_id,
                        row.data_subject_id,
                        row.end_ms,
                        row.record,
                    ),
                )
                added += cur.rowcount
        return added

    def processing_records(self, since_ms: int = 0) -> list[str]:
        """The exported JSON lines of records ending at or after ``since_ms``, in write order."""
        rows = self._db.execute(
            "SELECT record FROM processing_log WHERE end_ms >= ? ORDER BY seq", (since_ms,)
        ).fetchall()
        return [str(r[0]) for r in rows]

    # -- alarms --------------------------------------------------------------------------

    def raise_alarm(self, kind: str, detail: str, now: int) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO alarms (kind, detail, raised_at) VALUES (?, ?, ?)",
                (kind, detail[:1000], now),
            )

    def alarms(self) -> list[Alarm]:
        rows = self._db.execute(
            "SELECT kind, detail, raised_at FROM alarms WHERE cleared_at IS NULL ORDER BY id"
        ).fetchall()
        return [Alarm(*r) for r in rows]

    def clear_alarms(self, kind: str, now: int) -> int:
        """An operator's decision after looking: alarms are never cleared automatically."""
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE alarms SET cleared_at = ? WHERE kind = ? AND cleared_at IS NULL",
                (now, kind),
            )
            return cur.rowcount
