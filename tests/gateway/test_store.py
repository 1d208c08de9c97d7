"""The SQLite store on real files: group commit, idempotency, leases, revocation, expiry, audit."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from gateway.protocol.merkle import (
    InclusionProof,
    InMemoryNodeStore,
    MerkleLog,
    leaf_hash,
    verify_inclusion,
)
from gateway.store.base import (
    AuditRecord,
    DeliveryState,
    EventKind,
    Submission,
    TokenRow,
)
from gateway.store.errors import DuplicateMessageError, StoreVersionError
from gateway.store.sqlite import SqliteStore

NOW = 1_800_000_000


class RecordingSigner:
    """A ReceiptSigner whose outputs are readable, so tests can see what was signed when."""

    def __init__(self) -> None:
        self.checkpoints: list[tuple[int, bytes]] = []

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
    ) -> bytes:
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


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    path = tmp_path / "ketenpost.db"
    SqliteStore.migrate(path)
    s = SqliteStore(path, RecordingSigner(), audit_leaf)
    await s.open()
    yield s
    await s.close()


async def test_refuses_to_open_unmigrated_store(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "new.db", RecordingSigner(), audit_leaf)
    with pytest.raises(StoreVersionError, match="ketenpost store migrate"):
        await s.open()


def test_migrate_dry_run_then_apply_then_nothing(tmp_path: Path) -> None:
    path = tmp_path / "k.db"
    assert SqliteStore.migrate(path, dry_run=True) == ["0001 initial relay schema"]
    assert SqliteStore.migrate(path) == ["0001 initial relay schema"]
    assert SqliteStore.migrate(path) == []


async def test_accept_claim_finish_and_sender_event(store: SqliteStore) -> None:
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


async def test_same_bytes_same_receipt_other_bytes_refused(store: SqliteStore) -> None:
    first = await store.accept(submission(1), allow)
    again = await store.accept(submission(1), allow)
    assert again.receipt == first.receipt
    assert not again.first_time
    with pytest.raises(DuplicateMessageError):
        await store.accept(submission(1, body=b"other"), allow)


async def test_refused_id_leaves_no_trace_and_may_be_resubmitted(store: SqliteStore) -> None:
    with pytest.raises(Refused):
        await store.accept(submission(1), refuse)
    assert await store.message_status(f"{1:064x}") is None
    accepted = await store.accept(submission(1), allow)
    assert accepted.first_time
    assert accepted.leaf_index == 0


async def test_group_commit_isolates_a_failing_operation(store: SqliteStore) -> None:
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


async def test_lease_expiry_redelivers(store: SqliteStore) -> None:
    await store.accept(submission(1), allow)
    first = await store.claim("halt", 10, NOW, 60)
    assert len(first) == 1
    assert await store.claim("halt", 10, NOW + 59, 60) == []
    again = await store.claim("halt", 10, NOW + 60, 60)
    assert [d.attempts for d in again] == [2]


async def test_revocation_purges_pending_and_leased(store: SqliteStore) -> None:
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


async def test_expiry_ends_undelivered_messages(store: SqliteStore) -> None:
    await store.accept(submission(1), allow)
    assert await store.expire(NOW + 3599, lambda p: record("expired")) == []
    expired = await store.expire(NOW + 3600, lambda p: record("expired"))
    assert [p.recipient for p in expired] == ["halt"]
    assert await store.claim("halt", 10, NOW + 3601, 60) == []
    kinds = [e.kind for e in await store.events("politie-ijmond", 10, NOW + 3601, 60)]
    assert kinds == [EventKind.EXPIRY]


async def test_audit_proofs_verify_against_the_tree(store: SqliteStore) -> None:
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


async def test_committed_state_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "k.db"
    SqliteStore.migrate(path)
    s = SqliteStore(path, RecordingSigner(), audit_leaf)
    await s.open()
    first = await s.accept(submission(1), allow)
    await s.close()
    s2 = SqliteStore(path, RecordingSigner(), audit_leaf)
    await s2.open()
    try:
        again = await s2.accept(submission(1), allow)
        assert again.receipt == first.receipt
        second = await s2.accept(submission(2), allow)
        assert second.leaf_index == 1
    finally:
        await s2.close()
