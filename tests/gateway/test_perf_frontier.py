"""The SQLite writer's in-memory audit frontier (``gateway/store/sqlite.py``).

The writer keeps the committed tree's right-edge subtree hashes and each batch's new nodes in
memory, writes leaves and nodes just before the commit, and moves the frontier on only after
the commit succeeded. These cases check that the tree in SQLite is always exactly the RFC 6962
tree over the stored leaves: after refused operations inside a batch, after a batch whose
commit failed, and across a reopen.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.protocol.merkle import (
    InclusionProof,
    InMemoryNodeStore,
    MerkleLog,
    root_of,
    verify_inclusion,
)
from gateway.store.base import AuditRecord, DeliveryState, TokenRow
from gateway.store.errors import StoreUnavailableError
from gateway.store.sqlite import SqliteStore
from tests.gateway.test_store import (
    RecordingSigner,
    Refused,
    allow,
    audit_leaf,
    record,
    refuse,
    submission,
)


class FailingSigner(RecordingSigner):
    """Fails the next checkpoint with a database error when armed: the batch's commit fails."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    def checkpoint(self, size: int, root: bytes) -> str:
        if self.armed:
            self.armed = False
            raise sqlite3.OperationalError("disk I/O error (injected)")
        return super().checkpoint(size, root)


async def _open(path: Path, signer: RecordingSigner | None = None) -> SqliteStore:
    store = SqliteStore(path, signer or RecordingSigner(), audit_leaf)
    await store.open()
    return store


def _migrated(tmp_path: Path) -> Path:
    path = tmp_path / "ketenpost.db"
    SqliteStore.migrate(path)
    return path


def _assert_tree_matches_leaves(path: Path) -> None:
    """Every stored node is the node the leaves imply, none missing, and the newest
    checkpoint signs their root."""
    conn = sqlite3.connect(path)
    try:
        leaves = [
            bytes(r[0]) for r in conn.execute("SELECT leaf_hash FROM audit_leaves ORDER BY idx")
        ]
        assert [r[0] for r in conn.execute("SELECT idx FROM audit_leaves ORDER BY idx")] == list(
            range(len(leaves))
        )
        nodes = {
            (int(r[0]), int(r[1])): bytes(r[2])
            for r in conn.execute("SELECT level, idx, hash FROM audit_nodes")
        }
        head = conn.execute(
            "SELECT size, root FROM checkpoints ORDER BY size DESC LIMIT 1"
        ).fetchone()
    finally:
        conn.close()
    reference_nodes = InMemoryNodeStore()
    reference = MerkleLog(reference_nodes)
    reference.append_many(leaves)
    assert len(nodes) == len(reference_nodes)
    for (level, index), value in nodes.items():
        assert reference_nodes.get(level, index) == value, (level, index)
    assert head is not None
    assert (int(head[0]), bytes(head[1])) == (len(leaves), root_of(leaves))


async def _one_batch(store: SqliteStore, calls: Sequence[Awaitable[Any]]) -> list[Any]:
    """Run ``calls`` (coroutines) so the writer takes them in one batch: a first operation
    holds the writer until all of them are queued."""
    gate = threading.Event()

    def held(_row: TokenRow | None) -> AuditRecord:
        gate.wait(10)
        return record("held")

    first = asyncio.ensure_future(store.accept(submission(10_000), held))
    await asyncio.sleep(0.05)  # the writer is now inside ``held``
    tasks = [asyncio.ensure_future(c) for c in calls]
    await asyncio.sleep(0.05)  # all queued behind it
    gate.set()
    await first
    return list(await asyncio.gather(*tasks, return_exceptions=True))


async def test_refused_operations_in_a_batch_leave_no_node(tmp_path: Path) -> None:
    path = _migrated(tmp_path)
    store = await _open(path)
    try:
        for n in range(5):  # a ragged tree before the batch
            await store.accept(submission(n), allow)
        results = await _one_batch(
            store,
            [store.accept(submission(n), refuse if n % 3 == 0 else allow) for n in range(100, 140)],
        )
        refused = [r for r in results if isinstance(r, Refused)]
        assert len(refused) == 13
        # Leaf indexes are dense: a refused operation's leaf and nodes were dropped with it.
        indexes = sorted(r.leaf_index for r in results if not isinstance(r, BaseException))
        assert indexes == list(range(6, 33))
        leaves = await store.audit_leaves()
        head = await store.audit_head()
        for index in (0, 5, 6, 17, 32):
            proof = await store.inclusion_proof(index, head.size)
            verify_inclusion(
                leaves[index][1],
                InclusionProof(leaf_index=index, tree_size=head.size, hashes=tuple(proof)),
                head.root,
            )
    finally:
        await store.close()
    _assert_tree_matches_leaves(path)


async def test_a_failed_commit_does_not_move_the_frontier(tmp_path: Path) -> None:
    path = _migrated(tmp_path)
    signer = FailingSigner()
    store = await _open(path, signer)
    try:
        for n in range(7):
            await store.accept(submission(n), allow)
        signer.armed = True
        with pytest.raises(StoreUnavailableError):
            await store.accept(submission(7), allow)
        # Nothing of the failed batch is visible; the next appends continue from size 7.
        assert len(await store.audit_leaves()) == 7
        again = await store.accept(submission(7), allow)
        assert again.first_time
        assert again.leaf_index == 7
        for n in range(8, 21):
            await store.accept(submission(n), allow)
        # A finish and a refusal record go through the same tree.
        await store.claim("halt", 5, 1_800_000_000, 60)
        assert await store.finish(
            f"{3:064x}", "halt", DeliveryState.DELIVERED, b"sig", 1_800_000_001, record("done")
        )
        await store.record_audit(record("refusal", None))
        assert (await store.audit_head()).size == 23
    finally:
        await store.close()
    _assert_tree_matches_leaves(path)


async def test_the_frontier_is_reloaded_on_open(tmp_path: Path) -> None:
    path = _migrated(tmp_path)
    for start in (0, 11, 16, 29):  # reopen at ragged and at complete sizes
        store = await _open(path)
        try:
            size = (await store.audit_head()).size
            assert size == start
            for n in range(start, [11, 16, 29, 45][[0, 11, 16, 29].index(start)]):
                await store.accept(submission(n), allow)
        finally:
            await store.close()
        _assert_tree_matches_leaves(path)


async def test_audit_leaves_in_a_batch_include_its_earlier_appends(tmp_path: Path) -> None:
    path = _migrated(tmp_path)
    store = await _open(path)
    try:
        results = await _one_batch(
            store, [store.record_audit(record("a", None)), store.audit_leaves()]
        )
        index, leaves = results
        assert index == 1
        assert [leaf[0] for leaf in leaves] == [0, 1]
    finally:
        await store.close()
    _assert_tree_matches_leaves(path)
