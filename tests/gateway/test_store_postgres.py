"""PostgreSQL across replicas: two ``PostgresStore`` instances (two pools, two writer tasks, two
listeners) on one schema of the real server stand in for two gateway replicas.

What must hold (DESIGN.md "Delivery", "Audit log", "Storage"): a message sent to both at once is
accepted once; concurrent accepts make one gap-free audit log whose proofs verify; a revocation
on one is never overtaken by a submission on the other; claims never overlap within a lease;
a commit on one wakes a long-poll on the other; migrations run twice at once apply once; a lost
connection is ``StoreUnavailableError`` and the store recovers by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from collections.abc import AsyncIterator

import pytest

from gateway.protocol.merkle import (
    ConsistencyProof,
    InclusionProof,
    InMemoryNodeStore,
    MerkleLog,
    verify_consistency,
    verify_inclusion,
)
from gateway.store.base import Accepted, DeliveryState, Submission
from gateway.store.errors import StoreUnavailableError
from gateway.store.migrations import MIGRATIONS
from gateway.store.postgres import PostgresStore
from tests.gateway._pg import PgSchema, pg_schema, terminate_backends
from tests.gateway.test_store import (
    NOW,
    RecordingSigner,
    Refused,
    allow,
    allow_unless_revoked,
    audit_leaf,
    record,
    submission,
    token_row,
)

pytestmark = pytest.mark.postgres


def replica(target: PgSchema, **options: float) -> PostgresStore:
    return PostgresStore(
        target.url,
        RecordingSigner(),
        audit_leaf,
        server_settings=target.server_settings,
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture
async def pg() -> AsyncIterator[PgSchema]:
    async with pg_schema() as target:
        await PostgresStore.migrate(target.url, server_settings=target.server_settings)
        yield target


@pytest.fixture
async def replicas(pg: PgSchema) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    one, two = replica(pg), replica(pg)
    await one.open()
    await two.open()
    yield one, two
    await one.close()
    await two.close()


def with_token(sub: Submission, token_id: str) -> Submission:
    return dataclasses.replace(sub, token_id=token_id)


def checkpoint_roots(notes: list[str]) -> dict[int, bytes]:
    return {int(n.split("\n")[1]): bytes.fromhex(n.split("\n")[2]) for n in notes}


async def test_same_message_to_two_replicas_is_accepted_once(
    replicas: tuple[PostgresStore, PostgresStore],
) -> None:
    one, two = replicas
    for n in range(25):
        a, b = await asyncio.gather(
            one.accept(submission(n), allow), two.accept(submission(n), allow)
        )
        assert a.receipt == b.receipt
        assert a.leaf_index == b.leaf_index
        assert sorted([a.first_time, b.first_time]) == [False, True]
    assert [idx for idx, *_ in await one.audit_leaves()] == list(range(25))


async def test_concurrent_accepts_make_one_gap_free_log(
    replicas: tuple[PostgresStore, PostgresStore],
) -> None:
    one, two = replicas
    n = 300
    results = await asyncio.gather(
        *(
            (one if i % 2 else two).accept(submission(i), allow)
            if i % 10
            else (one if i % 3 else two).record_audit(record(f"refusal {i}", None))
            for i in range(n)
        )
    )
    indexes = sorted(r.leaf_index if isinstance(r, Accepted) else int(str(r)) for r in results)
    assert indexes == list(range(n))
    leaves = await two.audit_leaves()
    assert [idx for idx, *_ in leaves] == list(range(n))
    head = await one.audit_head()
    assert head.size == n
    reference = MerkleLog(InMemoryNodeStore())
    reference.append_many(leaf for _, leaf, _, _ in leaves)
    assert reference.root() == head.root
    # Every receipt's proof verifies against the checkpoint it was issued with, and every
    # checkpoint (signed by either replica) is consistent with the final one.
    roots = checkpoint_roots(await one.checkpoints())
    for r in results:
        if not isinstance(r, Accepted):
            continue
        _mid, at, size, *proof = r.receipt.split(b"|")
        verify_inclusion(
            leaves[int(at)][1],
            InclusionProof(
                leaf_index=int(at),
                tree_size=int(size),
                hashes=tuple(bytes.fromhex(p.decode()) for p in proof),
            ),
            roots[int(size)],
        )
    for old, root in roots.items():
        hashes = await (one if old % 2 else two).consistency_proof(old, n)
        verify_consistency(
            ConsistencyProof(old_size=old, new_size=n, hashes=tuple(hashes)), root, head.root
        )
    for index in range(0, n, 37):
        hashes = await one.inclusion_proof(index, n)
        verify_inclusion(
            leaves[index][1],
            InclusionProof(leaf_index=index, tree_size=n, hashes=tuple(hashes)),
            head.root,
        )
    # Group commit: far fewer checkpoints (one per committed batch) than entries.
    assert len(roots) < n


async def test_revocation_on_one_replica_is_never_overtaken_on_the_other(
    replicas: tuple[PostgresStore, PostgresStore],
) -> None:
    one, two = replicas
    rng = random.Random(5)
    pairs = 40
    for t in range(pairs):
        await one.register_token(token_row(f"t{t}"), record(f"registered t{t}"))
    revoked_at: dict[str, float] = {}
    claims: list[tuple[float, list[str]]] = []
    message_token: dict[str, str] = {}
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    async def submit(t: int, k: int) -> None:
        await asyncio.sleep(rng.random() * 0.02)
        sub = with_token(submission(t * 10 + k), f"t{t}")
        message_token[sub.message_id] = f"t{t}"
        with contextlib.suppress(Refused):
            await two.accept(sub, allow_unless_revoked)

    async def revoke(t: int) -> None:
        await asyncio.sleep(rng.random() * 0.02)
        await one.revoke_token(f"t{t}", NOW + 1, b"revocation", record(f"revoked t{t}"))
        revoked_at[f"t{t}"] = loop.time()

    async def claimer(store: PostgresStore) -> None:
        while not done.is_set():
            started = loop.time()
            got = await store.claim("halt", 50, NOW + 2, 1)
            claims.append((started, [d.message_id for d in got]))
            await asyncio.sleep(0)

    claimers = [asyncio.create_task(claimer(s)) for s in (one, two, one)]
    await asyncio.gather(
        *(submit(t, k) for t in range(pairs) for k in range(3)), *(revoke(t) for t in range(pairs))
    )
    done.set()
    await asyncio.gather(*claimers)
    for started, ids in claims:
        for mid in ids:
            token = message_token[mid]
            assert started < revoked_at[token], f"{mid} of {token} claimed after its revocation"
    # Nothing of a revoked token is claimable any more, leases long expired.
    assert await one.claim("halt", 1000, NOW + 10_000, 60) == []
    assert await two.claim("halt", 1000, NOW + 10_000, 60) == []
    # Every submission of the race that was accepted has been purged.
    for mid in message_token:
        status = await one.message_status(mid)
        if status is not None:
            assert [r.state for r in status.recipients] == [DeliveryState.PURGED]
    # The random race may fall one way only on a loaded machine (it did: all 120 won once);
    # both outcomes are made certain here: a submission before its token's revocation is
    # accepted and then purged, one after it is refused.
    await one.register_token(token_row("t-early"), record("registered t-early"))
    await one.register_token(token_row("t-late"), record("registered t-late"))
    early = with_token(submission(10_001), "t-early")
    await two.accept(early, allow_unless_revoked)
    for name in ("t-early", "t-late"):
        await one.revoke_token(name, NOW + 1, b"revocation", record(f"revoked {name}"))
    late = with_token(submission(10_002), "t-late")
    with pytest.raises(Refused):
        await two.accept(late, allow_unless_revoked)
    early_status = await one.message_status(early.message_id)
    assert early_status is not None
    assert [r.state for r in early_status.recipients] == [DeliveryState.PURGED]
    assert await one.message_status(late.message_id) is None


async def test_claims_from_two_replicas_never_overlap_within_a_lease(
    replicas: tuple[PostgresStore, PostgresStore],
) -> None:
    one, two = replicas
    n = 300
    await asyncio.gather(*((one if i % 2 else two).accept(submission(i), allow) for i in range(n)))
    got: dict[str, list[str]] = {"one": [], "two": []}

    async def drain(name: str, store: PostgresStore) -> None:
        while True:
            batch = await store.claim("halt", 7, NOW, 60)
            if not batch:
                return
            got[name].extend(d.message_id for d in batch)

    await asyncio.gather(*(drain(name, s) for name, s in (("one", one), ("two", two)) * 2))
    everything = got["one"] + got["two"]
    assert len(everything) == len(set(everything)) == n
    assert got["one"]
    assert got["two"]
    # After the lease, everything is claimable again, once.
    again = await one.claim("halt", 1000, NOW + 60, 60)
    assert len(again) == n
    assert {d.attempts for d in again} == {2}


async def test_a_commit_on_one_replica_wakes_a_long_poll_on_the_other(pg: PgSchema) -> None:
    one, two = replica(pg), replica(pg, fallback_poll_s=30.0)
    await one.open()
    await two.open()
    try:
        await two.wait_listening(5.0)
        loop = asyncio.get_running_loop()
        for party, commit in (
            ("halt", lambda: one.accept(submission(1), allow)),
            (
                "politie-ijmond",
                lambda: one.finish(
                    f"{1:064x}", "halt", DeliveryState.DELIVERED, b"sig", NOW, record("done")
                ),
            ),
        ):
            waiter = asyncio.create_task(two.wait(party, 20.0))
            await asyncio.sleep(0.05)
            assert not waiter.done()
            started = loop.time()
            await commit()
            await asyncio.wait_for(waiter, 5.0)
            assert loop.time() - started < 1.0
    finally:
        await one.close()
        await two.close()


async def test_a_missed_notification_costs_at_most_the_fallback_poll(pg: PgSchema) -> None:
    store = replica(pg, fallback_poll_s=0.2)
    await store.open()
    try:
        # (The listener wakes every waiter when it (re)connects: let that pass first.)
        await store.wait_listening(5.0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await store.wait("halt", 30.0)
        assert 0.15 < loop.time() - started < 2.0
    finally:
        await store.close()


async def test_two_migrations_at_once_apply_once() -> None:
    async with pg_schema() as target:
        results = await asyncio.gather(
            *(
                PostgresStore.migrate(target.url, server_settings=target.server_settings)
                for _ in range(3)
            )
        )
        pending = [f"{m.version:04d} {m.name}" for m in MIGRATIONS]
        assert sorted(results) == [[], [], pending]
        conn = await target.connect()
        try:
            assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(pending)
            assert await conn.fetchval("SELECT size FROM audit_head") == 0
        finally:
            await conn.close()


async def test_lost_connections_are_unavailable_then_recover(
    pg: PgSchema, replicas: tuple[PostgresStore, PostgresStore]
) -> None:
    one, two = replicas
    await one.accept(submission(1), allow)
    await two.wait_listening(5.0)
    assert await terminate_backends(pg) >= 2
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10.0
    failures = 0
    # As after a server restart: an operation may fail (StoreUnavailableError, nothing else),
    # and the pools reconnect by themselves.
    while True:
        try:
            await one.ping()
            accepted = await one.accept(submission(2), allow)
            break
        except StoreUnavailableError:
            failures += 1
            assert loop.time() < deadline
            await asyncio.sleep(0.1)
    assert accepted.leaf_index == 1
    # The listener reconnected too: a commit on one wakes a poll on two again.
    woke = False
    n = 3
    while not woke:
        assert loop.time() < deadline
        waiter = asyncio.create_task(two.notifier.wait("halt", 0.5))
        await asyncio.sleep(0.01)
        started = loop.time()
        await one.accept(submission(n), allow)
        await waiter
        woke = loop.time() - started < 0.4
        n += 1
    assert [idx for idx, *_ in await two.audit_leaves()] == list(range(n - 1))


async def test_unreachable_server_and_password_in_url() -> None:
    store = PostgresStore(
        "postgresql://postgres@127.0.0.1:1/test", RecordingSigner(), audit_leaf, connect_timeout_s=1
    )
    with pytest.raises(StoreUnavailableError):
        await store.open()
    with pytest.raises(StoreUnavailableError):
        await store.accept(submission(1), allow)
    with pytest.raises(ValueError, match=r"store\.password"):
        PostgresStore("postgresql://u:secret@127.0.0.1/test", RecordingSigner(), audit_leaf)


async def test_connections_killed_under_load_lose_nothing_accepted(
    pg: PgSchema, replicas: tuple[PostgresStore, PostgresStore]
) -> None:
    one, two = replicas
    n = 200
    tasks = [
        asyncio.create_task((one if i % 2 else two).accept(submission(i), allow)) for i in range(n)
    ]
    await asyncio.sleep(0.01)
    await terminate_backends(pg)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, Accepted | StoreUnavailableError) for r in results), results
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10.0
    receipts = {i: r.receipt for i, r in enumerate(results) if isinstance(r, Accepted)}
    while len(receipts) < n:
        # The senders' retries: the stored receipt where the lost commit went through.
        assert loop.time() < deadline
        await asyncio.sleep(0.05)
        missing = [i for i in range(n) if i not in receipts]
        retried = await asyncio.gather(
            *(one.accept(submission(i), allow) for i in missing), return_exceptions=True
        )
        for i, r in zip(missing, retried, strict=True):
            if isinstance(r, Accepted):
                receipts[i] = r.receipt
            else:
                assert isinstance(r, StoreUnavailableError), r
    for i in range(n):
        again = await two.accept(submission(i), allow)
        assert (again.receipt, again.first_time) == (receipts[i], False)
    assert [idx for idx, *_ in await one.audit_leaves()] == list(range(n))
    assert (await one.audit_head()).size == n
