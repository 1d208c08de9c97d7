"""The store suite, run against both backends: SQLite files and the real PostgreSQL.

Group commit, idempotency, leases, revocation, expiry, audit proofs, migrations. The
``backend`` fixture is parametrised over ``sqlite`` and ``postgres`` (a fresh schema per test on
127.0.0.1:5432, see ``tests/gateway/_pg.py``); ``store`` is an open, migrated store on it.
Cross-replica concurrency on PostgreSQL is in ``test_store_postgres.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Protocol

import pytest

from gateway.protocol.merkle import (
    EMPTY_ROOT,
    ConsistencyProof,
    InclusionProof,
    InMemoryNodeStore,
    MerkleLog,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from gateway.store.base import (
    AuditRecord,
    DeliveryState,
    EventKind,
    KeyRevocationRow,
    Purged,
    Submission,
    TokenRow,
)
from gateway.store.errors import DuplicateMessageError, StoreVersionError
from gateway.store.migrations import LATEST_VERSION, MIGRATIONS
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SqliteStore
from tests.gateway._pg import PgSchema, pg_schema

NOW = 1_800_000_000

AnyStore = SqliteStore | PostgresStore


class RecordingSigner:
    """A ReceiptSigner whose outputs are readable, so tests can see what was signed when."""

    def __init__(self) -> None:
        self.checkpoints: list[tuple[int, bytes]] = []
        # (message id, leaf index, the audit record the store passed with the acceptance)
        self.acceptances: list[tuple[str, int, AuditRecord | None]] = []

    def checkpoint(self, size: int, root: bytes) -> str:
        self.checkpoints.append((size, root))
        return f"test-origin\n{size}\n{root.hex()}\n"

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
        self.acceptances.append((sub.message_id, leaf_index, record))
        return b"|".join(
            [sub.message_id.encode(), str(leaf_index).encode(), str(tree_size).encode()]
            + [p.hex().encode() for p in proof]
        )

    def sender_event(
        self, kind: EventKind, message_id: str, recipient: str, at: int, detail: bytes
    ) -> bytes:
        return f"{kind}:{message_id}:{recipient}:{at}".encode() + detail


def audit_leaf(record: AuditRecord) -> bytes:
    return leaf_hash(hashlib.sha256(record.salt + record.entry).digest())


def record(text: str, token_id: str | None = "t1") -> AuditRecord:
    return AuditRecord(
        entry=text.encode(), salt=hashlib.sha256(text.encode()).digest(), token_id=token_id
    )


def submission(n: int, recipients: tuple[str, ...] = ("halt",), body: bytes = b"x") -> Submission:
    envelope = body + str(n).encode()
    return Submission(
        message_id=f"{n:064x}",
        sender="politie-ijmond",
        recipients=recipients,
        envelope=envelope,
        envelope_hash=hashlib.sha256(envelope).hexdigest(),
        header_hash="00" * 32,
        token_id="t1",
        message_type="signal",
        subjects=("ab" * 16,),
        policy_hash="11" * 32,
        trace_id="00-" + "1" * 32 + "-" + "2" * 16 + "-01",
        received_at=NOW,
        expires_at=NOW + 3600,
    )


def allow(_token: TokenRow | None) -> AuditRecord:
    return record("accepted")


class Refused(Exception):
    pass


def refuse(_token: TokenRow | None) -> AuditRecord:
    raise Refused("no")


class Backend(Protocol):
    """One place a store lives: a SQLite file, or a PostgreSQL schema."""

    name: str

    async def migrate(self, *, dry_run: bool = False) -> list[str]: ...
    def new_store(self) -> AnyStore: ...
    async def add_version(self, version: int) -> None: ...


class SqliteBackend:
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path

    async def migrate(self, *, dry_run: bool = False) -> list[str]:
        return SqliteStore.migrate(self.path, dry_run=dry_run)

    def new_store(self) -> AnyStore:
        return SqliteStore(self.path, RecordingSigner(), audit_leaf)

    async def add_version(self, version: int) -> None:
        conn = sqlite3.connect(self.path)
        try:
            with conn:
                conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (?, ?)",
                    (version, "from the future"),
                )
        finally:
            conn.close()


class PostgresBackend:
    name = "postgres"

    def __init__(self, target: PgSchema) -> None:
        self.target = target

    async def migrate(self, *, dry_run: bool = False) -> list[str]:
        return await PostgresStore.migrate(
            self.target.url, dry_run=dry_run, server_settings=self.target.server_settings
        )

    def new_store(self) -> AnyStore:
        return PostgresStore(
            self.target.url,
            RecordingSigner(),
            audit_leaf,
            server_settings=self.target.server_settings,
        )

    async def add_version(self, version: int) -> None:
        conn = await self.target.connect()
        try:
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                version,
                "from the future",
            )
        finally:
            await conn.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        yield SqliteBackend(tmp_path / "ketenpost.db")
        return
    async with pg_schema() as target:
        yield PostgresBackend(target)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[AnyStore]:
    await backend.migrate()
    s = backend.new_store()
    await s.open()
    yield s
    await s.close()


async def test_refuses_to_open_unmigrated_store(backend: Backend) -> None:
    s = backend.new_store()
    with pytest.raises(StoreVersionError, match="ketenpost store migrate"):
        await s.open()


async def test_migrate_dry_run_then_apply_then_nothing(backend: Backend) -> None:
    pending = [f"{m.version:04d} {m.name}" for m in MIGRATIONS]
    assert pending[:2] == ["0001 initial relay schema", "0002 key revocation statements"]
    assert await backend.migrate(dry_run=True) == pending
    assert await backend.migrate() == pending
    assert await backend.migrate() == []


async def test_serves_on_a_newer_schema(backend: Backend) -> None:
    # Expand/contract: a replica still on this version shares a database migrated further.
    await backend.migrate()
    await backend.add_version(LATEST_VERSION + 1)
    s = backend.new_store()
    await s.open()
    try:
        assert (await s.accept(submission(1), allow)).first_time
    finally:
        await s.close()


async def test_accept_claim_finish_and_sender_event(store: AnyStore) -> None:
    accepted = await store.accept(submission(1), allow)
    assert accepted.first_time
    deliveries = await store.claim("halt", 10, NOW, 60)
    assert [d.message_id for d in deliveries] == [f"{1:064x}"]
    ended = await store.finish(
        f"{1:064x}", "halt", DeliveryState.DELIVERED, b"sig", NOW + 1, record("delivered")
    )
    assert ended
    assert await store.claim("halt", 10, NOW + 1000, 60) == []
    events = await store.events("politie-ijmond", 10, NOW + 2, 60)
    assert [e.kind for e in events] == [EventKind.RECEIPT]
    assert await store.ack_events("politie-ijmond", [events[0].event_id]) == 1
    assert await store.events("politie-ijmond", 10, NOW + 1000, 60) == []
    status = await store.message_status(f"{1:064x}")
    assert status is not None
    assert status.recipients[0].state is DeliveryState.DELIVERED


async def test_same_bytes_same_receipt_other_bytes_refused(store: AnyStore) -> None:
    first = await store.accept(submission(1), allow)
    again = await store.accept(submission(1), allow)
    assert again.receipt == first.receipt
    assert not again.first_time
    with pytest.raises(DuplicateMessageError):
        await store.accept(submission(1, body=b"other"), allow)


async def test_refused_id_leaves_no_trace_and_may_be_resubmitted(store: AnyStore) -> None:
    with pytest.raises(Refused):
        await store.accept(submission(1), refuse)
    assert await store.message_status(f"{1:064x}") is None
    accepted = await store.accept(submission(1), allow)
    assert accepted.first_time
    assert accepted.leaf_index == 0


async def test_group_commit_isolates_a_failing_operation(store: AnyStore) -> None:
    results = await asyncio.gather(
        *(store.accept(submission(n), refuse if n % 3 == 0 else allow) for n in range(30)),
        return_exceptions=True,
    )
    refused = [n for n, r in enumerate(results) if isinstance(r, Refused)]
    assert refused == list(range(0, 30, 3))
    leaves = await store.audit_leaves()
    assert len(leaves) == 20
    assert sorted(r.leaf_index for r in results if not isinstance(r, BaseException)) == list(
        range(20)
    )


async def test_lease_expiry_redelivers(store: AnyStore) -> None:
    await store.accept(submission(1), allow)
    first = await store.claim("halt", 10, NOW, 60)
    assert len(first) == 1
    assert await store.claim("halt", 10, NOW + 59, 60) == []
    again = await store.claim("halt", 10, NOW + 60, 60)
    assert [d.attempts for d in again] == [2]


async def test_revocation_purges_pending_and_leased(store: AnyStore) -> None:
    await store.register_token(
        TokenRow("t1", "gemeente-velsen", "aa" * 32, b"signed", NOW + 999, NOW + 9999, NOW),
        record("registered"),
    )
    await store.accept(submission(1), allow)
    await store.accept(submission(2), allow)
    leased = await store.claim("halt", 1, NOW, 60)
    assert len(leased) == 1
    purged = await store.revoke_token("t1", NOW + 5, b"revocation", record("revoked"))
    assert sorted(p.message_id for p in purged) == [f"{1:064x}", f"{2:064x}"]
    assert await store.claim("halt", 10, NOW + 100, 60) == []
    token = await store.get_token("t1")
    assert token is not None
    assert token.revoked_at == NOW + 5
    kinds = [e.kind for e in await store.events("politie-ijmond", 10, NOW + 6, 60)]
    assert kinds == [EventKind.PURGE, EventKind.PURGE]
    # A late receipt for a purged delivery ends nothing.
    assert not await store.finish(
        f"{1:064x}", "halt", DeliveryState.DELIVERED, b"sig", NOW + 7, record("late")
    )


async def test_expiry_ends_undelivered_messages(store: AnyStore) -> None:
    await store.accept(submission(1), allow)
    assert await store.expire(NOW + 3599, lambda p: record("expired")) == []
    expired = await store.expire(NOW + 3600, lambda p: record("expired"))
    assert [p.recipient for p in expired] == ["halt"]
    assert await store.claim("halt", 10, NOW + 3601, 60) == []
    kinds = [e.kind for e in await store.events("politie-ijmond", 10, NOW + 3601, 60)]
    assert kinds == [EventKind.EXPIRY]


async def test_audit_proofs_verify_against_the_tree(store: AnyStore) -> None:
    for n in range(13):
        await store.accept(submission(n), allow)
    head = await store.audit_head()
    assert head.size == 13
    reference = MerkleLog(InMemoryNodeStore())
    leaves = await store.audit_leaves()
    for _idx, leaf, _entry, _salt in leaves:
        reference.append(leaf)
    assert reference.root() == head.root
    for index in range(13):
        hashes = await store.inclusion_proof(index, 13)
        verify_inclusion(
            leaves[index][1],
            InclusionProof(leaf_index=index, tree_size=13, hashes=tuple(hashes)),
            head.root,
        )


async def test_each_receipt_is_signed_with_its_own_acceptance_record(store: AnyStore) -> None:
    # One batch mixing acceptances, a refusal and a plain audit record: every receipt must be
    # made with the record appended at its own leaf, or the sender's leaf check fails.
    def allow_as(n: int) -> Callable[[TokenRow | None], AuditRecord]:
        return lambda _token: record(f"accepted-{n}")

    results = await asyncio.gather(
        store.accept(submission(1), allow_as(1)),
        store.record_audit(record("registered")),
        store.accept(submission(2), refuse),
        store.accept(submission(3), allow_as(3)),
        return_exceptions=True,
    )
    assert isinstance(results[2], Refused)
    signer = store._signer
    assert isinstance(signer, RecordingSigner)
    leaves = {idx: (entry, salt) for idx, _leaf, entry, salt in await store.audit_leaves()}
    seen = {message_id: (index, rec) for message_id, index, rec in signer.acceptances}
    assert set(seen) == {f"{1:064x}", f"{3:064x}"}
    for n in (1, 3):
        index, rec = seen[f"{n:064x}"]
        assert rec == record(f"accepted-{n}")
        assert leaves[index] == (rec.entry, rec.salt)


async def test_committed_state_survives_reopen(backend: Backend) -> None:
    await backend.migrate()
    s = backend.new_store()
    await s.open()
    first = await s.accept(submission(1), allow)
    await s.close()
    s2 = backend.new_store()
    await s2.open()
    try:
        again = await s2.accept(submission(1), allow)
        assert again.receipt == first.receipt
        second = await s2.accept(submission(2), allow)
        assert second.leaf_index == 1
    finally:
        await s2.close()


def allow_unless_revoked(token: TokenRow | None) -> AuditRecord:
    """The part of the relay's token check that matters for races: refuse a revoked token."""
    if token is None or token.revoked_at is not None:
        raise Refused("revoked")
    return record("accepted")


def token_row(token_id: str = "t1") -> TokenRow:
    return TokenRow(token_id, "gemeente-velsen", "aa" * 32, b"signed", NOW + 999, NOW + 9999, NOW)


async def test_same_message_twice_at_once_is_accepted_once(store: AnyStore) -> None:
    # Both land in one group-commit batch: the second must get the first's receipt.
    first, second = await asyncio.gather(
        store.accept(submission(1), allow), store.accept(submission(1), allow)
    )
    assert first.receipt == second.receipt
    assert first.leaf_index == second.leaf_index == 0
    assert [first.first_time, second.first_time] == [True, False]
    assert len(await store.audit_leaves()) == 1
    other = await asyncio.gather(
        store.accept(submission(2), allow),
        store.accept(submission(2, body=b"other"), allow),
        return_exceptions=True,
    )
    assert isinstance(other[1], DuplicateMessageError)


async def test_revocation_in_the_same_batch_as_submissions(store: AnyStore) -> None:
    await store.register_token(token_row(), record("registered"))
    results = await asyncio.gather(
        store.accept(submission(1), allow_unless_revoked),
        store.revoke_token("t1", NOW + 1, b"revocation", record("revoked")),
        store.accept(submission(2), allow_unless_revoked),
        return_exceptions=True,
    )
    # Accepted before the revocation in the batch: purged by it; after it: refused.
    assert [p.message_id for p in results[1]] == [f"{1:064x}"]  # type: ignore[union-attr]
    assert isinstance(results[2], Refused)
    assert await store.claim("halt", 10, NOW + 2, 60) == []
    status = await store.message_status(f"{1:064x}")
    assert status is not None
    assert [r.state for r in status.recipients] == [DeliveryState.PURGED]


async def test_receipt_then_duplicate_receipt_in_one_batch(store: AnyStore) -> None:
    await store.accept(submission(1, recipients=("halt", "om")), allow)
    await store.claim("halt", 10, NOW, 60)
    ended = await asyncio.gather(
        store.finish(f"{1:064x}", "halt", DeliveryState.DELIVERED, b"a", NOW, record("d1")),
        store.finish(f"{1:064x}", "halt", DeliveryState.DELIVERED, b"a", NOW, record("d2")),
        store.finish(f"{1:064x}", "om", DeliveryState.REJECTED, b"r", NOW, record("r1")),
    )
    assert list(ended) == [True, False, True]
    events = await store.events("politie-ijmond", 10, NOW, 60)
    assert sorted(e.kind for e in events) == [EventKind.RECEIPT, EventKind.REJECTION]
    assert [e.event_id for e in events] == sorted(e.event_id for e in events)
    # Accept + two finishes: the refused duplicate left no audit leaf.
    assert len(await store.audit_leaves()) == 3


async def test_message_status_and_queue_stats(store: AnyStore) -> None:
    assert await store.message_status("0" * 64) is None
    assert await store.queue_stats() == []
    await store.accept(submission(1, recipients=("halt", "om")), allow)
    await store.accept(submission(2), allow)
    status = await store.message_status(f"{1:064x}")
    assert status is not None
    assert (status.sender, status.accepted_at, status.expires_at) == (
        "politie-ijmond",
        NOW,
        NOW + 3600,
    )
    assert (status.header_hash, status.token_id) == ("00" * 32, "t1")
    assert [(r.recipient, r.state, r.attempts) for r in status.recipients] == [
        ("halt", DeliveryState.PENDING, 0),
        ("om", DeliveryState.PENDING, 0),
    ]
    stats = sorted((q.recipient, q.depth, q.oldest_accepted_at) for q in await store.queue_stats())
    assert stats == [("halt", 2, NOW), ("om", 1, NOW)]
    delivered = await store.claim("halt", 10, NOW, 60)
    assert [d.accepted_at for d in delivered] == [NOW, NOW]


async def test_register_token_once_and_supersede(store: AnyStore) -> None:
    assert await store.get_token("t1") is None
    first = await store.register_token(token_row("t1"), record("registered"))
    again = await store.register_token(token_row("t1"), record("registered again"))
    assert again == first
    newer = TokenRow(
        "t2", "gemeente-velsen", "bb" * 32, b"signed2", NOW + 999, NOW + 9999, NOW, supersedes="t1"
    )
    await store.register_token(newer, record("registered t2"))
    old = await store.get_token("t1")
    assert old is not None
    assert old.superseded_by == "t2"
    # Two registrations, one audit leaf each; the repeated one wrote none.
    assert len(await store.audit_leaves()) == 2


async def test_record_audit_and_consistency_between_checkpoints(store: AnyStore) -> None:
    head = await store.audit_head()
    assert (head.size, head.root) == (0, EMPTY_ROOT)
    indexes = [await store.record_audit(record(f"refusal {n}", None)) for n in range(3)]
    assert indexes == [0, 1, 2]
    for n in range(3, 20):
        await store.accept(submission(n), allow)
    notes = await store.checkpoints()
    sizes = [int(note.split("\n")[1]) for note in notes]
    assert sizes == sorted(sizes)
    assert sizes[-1] == 20
    roots = {int(n.split("\n")[1]): bytes.fromhex(n.split("\n")[2]) for n in notes}
    for old in sizes:
        hashes = await store.consistency_proof(old, 20)
        verify_consistency(
            ConsistencyProof(old_size=old, new_size=20, hashes=tuple(hashes)), roots[old], roots[20]
        )
    leaves = await store.audit_leaves()
    assert leaves[0][2] == b"refusal 0"
    assert [leaf for _, leaf, _, _ in leaves][:3] == [
        audit_leaf(record(f"refusal {n}", None)) for n in range(3)
    ]


# -- what a revoked key voids: pending_involving, purge, tokens_of, pending_under ------------
# (issue 6: the relay's purges of a revoked sign or token key; docs/adr/0011)


def under(n: int, token_id: str, recipients: tuple[str, ...] = ("halt",)) -> Submission:
    return dataclasses.replace(submission(n, recipients), token_id=token_id)


async def test_pending_involving_finds_undelivered_by_sender_or_recipient(store: AnyStore) -> None:
    await store.accept(submission(1, ("halt",)), allow)
    await store.accept(submission(2, ("cjg", "halt")), allow)
    await store.accept(dataclasses.replace(submission(3, ("om",)), sender="halt"), allow)
    # Leased is still undelivered; a delivered one is not.
    assert len(await store.claim("cjg", 10, NOW, 60)) == 1
    await store.finish(f"{1:064x}", "halt", DeliveryState.DELIVERED, b"s", NOW, record("d"))
    found = await store.pending_involving(["halt"])
    assert sorted((p.message_id[-1], p.sender, p.recipient) for p in found) == [
        ("2", "politie-ijmond", "halt"),
        ("3", "halt", "om"),
    ]
    assert {p.token_id for p in found} == {"t1"}
    assert {p.accepted_at for p in found} == {NOW}
    assert all(p.envelope for p in found)
    by_police = await store.pending_involving(["politie-ijmond", "politie-ijmond"])
    assert sorted((p.message_id[-1], p.recipient) for p in by_police) == [
        ("2", "cjg"),
        ("2", "halt"),
    ]
    assert await store.pending_involving([]) == []


async def test_purge_ends_each_delivery_once_with_audit_and_event(store: AnyStore) -> None:
    await store.accept(submission(1, ("cjg", "halt")), allow)
    await store.accept(submission(2), allow)
    await store.finish(f"{2:064x}", "halt", DeliveryState.DELIVERED, b"s", NOW, record("d"))
    size = (await store.audit_head()).size
    wanted = [
        Purged(f"{1:064x}", "politie-ijmond", "halt"),
        Purged(f"{1:064x}", "politie-ijmond", "cjg"),
        Purged(f"{2:064x}", "politie-ijmond", "halt"),  # delivered meanwhile: skipped
    ]
    purged = await store.purge(wanted, NOW + 1, lambda p: record(f"purged {p.recipient}", None))
    assert sorted(p.recipient for p in purged) == ["cjg", "halt"]
    assert (await store.audit_head()).size == size + 2
    assert await store.purge(wanted, NOW + 2, lambda p: record("again", None)) == []
    assert (await store.audit_head()).size == size + 2
    assert await store.pending_involving(["politie-ijmond"]) == []
    status = await store.message_status(f"{1:064x}")
    assert status is not None
    assert {r.state for r in status.recipients} == {DeliveryState.PURGED}
    kinds = [e.kind for e in await store.events("politie-ijmond", 10, NOW + 3, 60)]
    assert sorted(kinds) == [EventKind.PURGE, EventKind.PURGE, EventKind.RECEIPT]
    assert await store.claim("halt", 10, NOW + 3, 60) == []


async def test_tokens_of_and_pending_under(store: AnyStore) -> None:
    await store.register_token(token_row("t1"), record("registered t1"))
    other = TokenRow("t2", "gemeente-beverwijk", "bb" * 32, b"s2", NOW + 9, NOW + 99, NOW)
    await store.register_token(other, record("registered t2"))
    assert [t.token_id for t in await store.tokens_of(["gemeente-velsen"])] == ["t1"]
    assert [
        t.token_id for t in await store.tokens_of(["gemeente-velsen", "gemeente-beverwijk"])
    ] == [
        "t1",
        "t2",
    ]
    assert await store.tokens_of([]) == []
    await store.accept(under(1, "t1"), allow)
    await store.accept(under(2, "t2", ("cjg", "halt")), allow)
    await store.accept(under(3, "t2"), allow)
    await store.finish(f"{3:064x}", "halt", DeliveryState.DELIVERED, b"s", NOW, record("d"))
    found = await store.pending_under(["t2"])
    assert sorted((p.message_id[-1], p.recipient, p.token_id) for p in found) == [
        ("2", "cjg", "t2"),
        ("2", "halt", "t2"),
    ]
    assert await store.pending_under([]) == []


def key_revocation(n: int, kid: str = "ab" * 32) -> KeyRevocationRow:
    return KeyRevocationRow(
        statement_hash=f"{n:064x}",
        partner="halt",
        kid=kid,
        signing_kid="cd" * 32,
        revoked_at=NOW,
        compromised_since=None if n % 2 else NOW - 60,
        statement=b'{"statement": %d}' % n,
        recorded_at=NOW + n,
        carried_by="om",
    )


async def test_a_key_revocation_is_recorded_once_and_kept(backend: Backend) -> None:
    await backend.migrate()
    s = backend.new_store()
    await s.open()
    try:
        stored, first = await s.record_key_revocation(key_revocation(1), record("revoked", None))
        assert first
        assert stored == dataclasses.replace(key_revocation(1), audit_index=0)
        # The same statement again (another carrier, another time) writes nothing.
        again, first = await s.record_key_revocation(
            dataclasses.replace(key_revocation(1), carried_by="cjg", recorded_at=NOW + 50),
            record("revoked again", None),
        )
        assert (again, first) == (stored, False)
        assert (await s.audit_head()).size == 1
        both = await asyncio.gather(
            s.record_key_revocation(key_revocation(2), record("two", None)),
            s.record_key_revocation(key_revocation(2), record("two twice", None)),
        )
        assert sorted(f for _, f in both) == [False, True]
        assert (await s.audit_head()).size == 2
    finally:
        await s.close()
    reopened = backend.new_store()
    await reopened.open()
    try:
        rows = await reopened.key_revocations()
        assert [r.statement_hash for r in rows] == [f"{1:064x}", f"{2:064x}"]
        assert rows[0] == stored
        assert rows[1].compromised_since == NOW - 60
        assert rows[1].audit_index == 1
    finally:
        await reopened.close()
