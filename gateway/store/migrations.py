"""Versioned store migrations, expand/contract.

Rules kept here:

* Migrations are numbered and applied in order, each once, recorded in ``schema_migrations``.
  ``ketenpost store migrate`` runs them as their own step; the gateway refuses to serve on a
  store whose schema is older than it needs (``StoreError`` naming the missing version) and
  serves on a newer one (expand/contract: a new version only adds tables, columns with defaults
  and indexes; a later *contract* migration drops what no running version reads any more).
* The expand/contract rule, so that version N and N+1 replicas share one database during a
  rolling upgrade: an *expand* migration only adds (tables, nullable columns or columns with a
  default, indexes — on PostgreSQL ``CREATE INDEX CONCURRENTLY`` needs a migration of its own,
  outside a transaction); it never renames, drops, narrows a type or adds a constraint that
  rows written by the old version could break. Code never depends on column order
  (``SELECT *``, ``INSERT`` without a column list). A column the new version needs filled is
  back-filled by the new version, and made ``NOT NULL`` only by a later *contract* migration,
  released once no replica of the old version runs. Order of a rollout: ``store migrate`` with
  the new version, then replace replicas one by one; old replicas keep serving throughout
  (``tests/gateway/test_replicas.py`` runs exactly this).
* Each backend has its own SQL for the same version; the numbers are shared. A migration is
  written so that it can run inside one transaction (PostgreSQL runs each in its own, under an
  advisory lock, so two ``migrate`` runs at once apply it once).
* PostgreSQL keeps one extra row, ``audit_head``: the audit log's size, locked ``FOR UPDATE`` by
  every transaction that appends, so replicas sharing the database append to one gap-free log.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sqlite: str
    postgres: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "initial relay schema",
        """
        CREATE TABLE tokens (
            token_id        TEXT PRIMARY KEY,
            coordinator     TEXT NOT NULL,
            token_hash      TEXT NOT NULL,
            signed          BLOB NOT NULL,
            valid_until     INTEGER NOT NULL,
            retention_until INTEGER NOT NULL,
            registered_at   INTEGER NOT NULL,
            supersedes      TEXT,
            superseded_by   TEXT,
            revoked_at      INTEGER,
            revocation      BLOB
        );
        CREATE TABLE messages (
            message_id    TEXT PRIMARY KEY,
            sender        TEXT NOT NULL,
            envelope_hash TEXT NOT NULL,
            header_hash   TEXT NOT NULL,
            token_id      TEXT NOT NULL,
            message_type  TEXT NOT NULL,
            accepted_at   INTEGER NOT NULL,
            expires_at    INTEGER NOT NULL,
            audit_index   INTEGER NOT NULL,
            receipt       BLOB,
            envelope      BLOB
        );
        CREATE INDEX messages_token ON messages (token_id);
        CREATE TABLE deliveries (
            message_id   TEXT NOT NULL REFERENCES messages (message_id),
            recipient    TEXT NOT NULL,
            seq          INTEGER NOT NULL,
            state        TEXT NOT NULL,
            lease_until  INTEGER NOT NULL DEFAULT 0,
            attempts     INTEGER NOT NULL DEFAULT 0,
            finished_at  INTEGER,
            PRIMARY KEY (message_id, recipient)
        );
        CREATE INDEX deliveries_queue ON deliveries (recipient, state, seq);
        CREATE TABLE sender_events (
            event_id    INTEGER PRIMARY KEY AUTOINCREMENT,
            sender      TEXT NOT NULL,
            message_id  TEXT NOT NULL,
            kind        TEXT NOT NULL,
            signed      BLOB NOT NULL,
            created_at  INTEGER NOT NULL,
            lease_until INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX sender_events_sender ON sender_events (sender, event_id);
        CREATE TABLE audit_leaves (
            idx        INTEGER PRIMARY KEY,
            leaf_hash  BLOB NOT NULL,
            entry      BLOB,
            salt       BLOB,
            token_id   TEXT
        );
        CREATE INDEX audit_leaves_token ON audit_leaves (token_id);
        CREATE TABLE audit_nodes (
            level INTEGER NOT NULL,
            idx   INTEGER NOT NULL,
            hash  BLOB NOT NULL,
            PRIMARY KEY (level, idx)
        );
        CREATE TABLE checkpoints (
            size      INTEGER PRIMARY KEY,
            root      BLOB NOT NULL,
            note      TEXT NOT NULL
        );
        """,
        """
        CREATE TABLE tokens (
            token_id        TEXT PRIMARY KEY,
            coordinator     TEXT NOT NULL,
            token_hash      TEXT NOT NULL,
            signed          BYTEA NOT NULL,
            valid_until     BIGINT NOT NULL,
            retention_until BIGINT NOT NULL,
            registered_at   BIGINT NOT NULL,
            supersedes      TEXT,
            superseded_by   TEXT,
            revoked_at      BIGINT,
            revocation      BYTEA
        );
        CREATE TABLE messages (
            message_id    TEXT PRIMARY KEY,
            sender        TEXT NOT NULL,
            envelope_hash TEXT NOT NULL,
            header_hash   TEXT NOT NULL,
            token_id      TEXT NOT NULL,
            message_type  TEXT NOT NULL,
            accepted_at   BIGINT NOT NULL,
            expires_at    BIGINT NOT NULL,
            audit_index   BIGINT NOT NULL,
            receipt       BYTEA,
            envelope      BYTEA
        );
        CREATE INDEX messages_token ON messages (token_id);
        CREATE TABLE deliveries (
            message_id   TEXT NOT NULL REFERENCES messages (message_id),
            recipient    TEXT NOT NULL,
            seq          BIGINT NOT NULL,
            state        TEXT NOT NULL,
            lease_until  BIGINT NOT NULL DEFAULT 0,
            attempts     INTEGER NOT NULL DEFAULT 0,
            finished_at  BIGINT,
            PRIMARY KEY (message_id, recipient)
        );
        -- Claims and expiry only ever look at pending deliveries: a partial index stays small
        -- however long the finished ones are kept.
        CREATE INDEX deliveries_queue ON deliveries (recipient, seq) WHERE state = 'pending';
        CREATE TABLE sender_events (
            event_id    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            sender      TEXT NOT NULL,
            message_id  TEXT NOT NULL,
            kind        TEXT NOT NULL,
            signed      BYTEA NOT NULL,
            created_at  BIGINT NOT NULL,
            lease_until BIGINT NOT NULL DEFAULT 0
        );
        CREATE INDEX sender_events_sender ON sender_events (sender, event_id);
        CREATE TABLE audit_leaves (
            idx        BIGINT PRIMARY KEY,
            leaf_hash  BYTEA NOT NULL,
            entry      BYTEA,
            salt       BYTEA,
            token_id   TEXT
        );
        CREATE INDEX audit_leaves_token ON audit_leaves (token_id);
        CREATE TABLE audit_nodes (
            level INTEGER NOT NULL,
            idx   BIGINT NOT NULL,
            hash  BYTEA NOT NULL,
            PRIMARY KEY (level, idx)
        );
        CREATE TABLE checkpoints (
            size      BIGINT PRIMARY KEY,
            root      BYTEA NOT NULL,
            note      TEXT NOT NULL
        );
        CREATE TABLE audit_head (
            id   INTEGER PRIMARY KEY CHECK (id = 1),
            size BIGINT NOT NULL CHECK (size >= 0)
        );
        INSERT INTO audit_head (id, size) VALUES (1, 0);
        """,
    ),
    # Expand only: a new table, which replicas of version 1 never read (docs/adr/0011).
    Migration(
        2,
        "key revocation statements",
        """
        CREATE TABLE key_revocations (
            statement_hash    TEXT PRIMARY KEY,
            partner           TEXT NOT NULL,
            kid               TEXT NOT NULL,
            signing_kid       TEXT NOT NULL,
            revoked_at        INTEGER NOT NULL,
            compromised_since INTEGER,
            statement         BLOB NOT NULL,
            recorded_at       INTEGER NOT NULL,
            carried_by        TEXT NOT NULL,
            audit_index       INTEGER NOT NULL
        );
        CREATE INDEX key_revocations_kid ON key_revocations (kid);
        """,
        """
        CREATE TABLE key_revocations (
            statement_hash    TEXT PRIMARY KEY,
            partner           TEXT NOT NULL,
            kid               TEXT NOT NULL,
            signing_kid       TEXT NOT NULL,
            revoked_at        BIGINT NOT NULL,
            compromised_since BIGINT,
            statement         BYTEA NOT NULL,
            recorded_at       BIGINT NOT NULL,
            carried_by        TEXT NOT NULL,
            audit_index       BIGINT NOT NULL
        );
        CREATE INDEX key_revocations_kid ON key_revocations (kid);
        """,
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version
