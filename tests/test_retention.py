"""Retention at a token's deadline: nothing of the subject stays at the gateway or the adapters.

Real traffic through a real gateway and three adapters (the coordinator, the police, Halt),
then the controllable clock moves past the token's ``retention_until`` and the sweepers run.
Every table's every column and the raw database files (after the sweep's WAL checkpoint) are
searched for the pseudonyms, as text and as bytes; ``ketenpost audit verify`` still passes;
the deletions are counted in metrics and in a signed ``retention`` audit entry. The store
contract is also run against both backends (SQLite and PostgreSQL).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

import ketenpost
from gateway.protocol.auditentry import AuditDecision, decode_entry
from gateway.retention import RetentionSweeper
from gateway.store.base import AuditRecord, DeliveryState, TokenRow
from tests.adapters.conftest import BSN_A, Net, net  # noqa: F401 - fixtures
from tests.adapters.test_engine_e2e import signal_event, start_approach
from tests.gateway.conftest import DAY, Gw, deployment, gateway  # noqa: F401 - fixtures
from tests.gateway.test_store import (  # noqa: F401 - fixtures
    NOW,
    AnyStore,
    allow,
    backend,
    record,
    store,
    submission,
)


def needles(pseudonyms: tuple[str, ...]) -> list[bytes]:
    """Each pseudonym as its hex text and as its 16 bytes."""
    out: list[bytes] = []
    for p in pseudonyms:
        out += [p.encode(), bytes.fromhex(p)]
    return out


def rows_containing(db: Path, found: list[bytes]) -> list[str]:
    """``table.column`` of every value (text or blob) that contains one of ``found``."""
    conn = sqlite3.connect(db)
    hits: list[str] = []
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            for row in conn.execute(f"SELECT * FROM {table}"):  # noqa: S608 - names from schema
                for column, value in zip(columns, row, strict=True):
                    raw = value.encode() if isinstance(value, str) else value
                    if isinstance(raw, bytes) and any(n in raw for n in found):
                        hits.append(f"{table}.{column}")
    finally:
        conn.close()
    return hits


def files_containing(db: Path, found: list[bytes]) -> list[str]:
    """The database file, its WAL and shared memory: raw bytes, free pages included."""
    hits = []
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        if path.exists() and any(n in path.read_bytes() for n in found):
            hits.append(path.name)
    return hits


def cached_pseudonyms(gw: Gw) -> set[str]:
    """The pseudonyms in the relay's in-memory cache of verified tokens."""
    # What memory holds is the point, so the private cache itself is read.
    cache = gw.built.runtime.relay._token_cache
    return {s.pseudonym for token in cache.values() for s in token.subjects}


async def run_traffic(net: Net) -> tuple[str, ...]:  # noqa: F811
    """An approach notice to the police and Halt, a signal from the police to Halt, its
    delivery receipt back to the police. Returns the token's pseudonyms."""
    token = await start_approach(net)
    velsen, police, halt = net.open_adapters
    net.system("politie-ijmond").add_event("INC-1", signal_event([BSN_A], ["halt"]))
    assert await police.ingest_once() == 1
    assert len((await police.send_once()).accepted) == 1
    assert len((await halt.receive_once()).applied) == 1
    assert (await police.receive_once()).events == 1
    assert (await velsen.receive_once()).events == 2
    return token.subjects


async def test_after_the_deadline_nothing_of_the_subject_remains(
    net: Net,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    gw = net.gw
    pseudonyms = await run_traffic(net)
    found = needles(pseudonyms)
    dbs = [gw.db, *(a.store.path for a in net.open_adapters)]
    # Before the deadline the pseudonyms are there (or this test would prove nothing).
    for db in dbs:
        assert rows_containing(db, found), db
    sweeper = RetentionSweeper(gw.store, gw.clock, gw.metrics)
    assert await sweeper.sweep() == []
    for adapter in net.open_adapters:
        assert (await adapter.retention_once()).tokens == 0
    relay = gw.built.runtime.relay
    await relay.sweep_expired()
    assert set(pseudonyms) <= cached_pseudonyms(gw)  # the verified token is cached

    gw.clock.advance(365 * DAY)
    [retained] = await sweeper.sweep()
    # The relay's periodic sweep drops the cached token too: no pseudonym stays in memory.
    await relay.sweep_expired()
    assert cached_pseudonyms(gw) == set()
    counts = {a.partner_id: await a.retention_once() for a in net.open_adapters}

    for db in dbs:
        assert rows_containing(db, found) == [], db
        assert files_containing(db, found) == [], db
    # The gateway: registration, acceptances, deliveries and their entries; the signed token.
    assert retained.entries >= 5
    # Sender events were acknowledged (and so deleted) by the adapters already.
    assert (retained.messages, retained.events, retained.token) == (2, 0, 1)
    metric = "ketenpost_retention_deleted_total"
    registry = gw.metrics.registry
    assert registry.get_sample_value(metric, {"kind": "audit_entry"}) == retained.entries
    assert registry.get_sample_value(metric, {"kind": "message"}) == 2
    assert registry.get_sample_value(metric, {"kind": "token"}) == 1
    # The signed retention event: token id and count, no subjects; it is never deleted.
    leaves = await gw.store.audit_leaves()
    _index, _leaf, entry, salt = leaves[retained.leaf_index]
    assert entry is not None
    assert salt is not None
    event = decode_entry(entry)
    assert event.decision is AuditDecision.RETENTION
    assert event.count == retained.entries
    assert event.subjects == ()
    assert sum(1 for leaf in leaves if leaf[2] is None) == retained.entries
    # Each adapter deleted its outbox, processed ids, mapping, processing log and token.
    assert counts["gemeente-velsen"].outbox == 1
    assert counts["gemeente-velsen"].tokens == 1
    assert counts["politie-ijmond"].outbox == 1
    assert counts["politie-ijmond"].inbound == 1
    assert counts["halt"].inbound == 2
    assert counts["halt"].pseudonyms == 2
    for adapter in net.open_adapters:
        assert adapter.metrics.value("retention_deleted_total", kind="tokens") == 1
    assert await sweeper.sweep() == []

    # ``ketenpost audit verify`` passes on the swept store.
    code = await asyncio.to_thread(
        ketenpost.main,
        [
            "audit",
            "verify",
            "--config",
            str(gw.deployment.root / "gateway.toml"),
            "--store",
            f"sqlite://{gw.db}",
        ],
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert json.loads(out.splitlines()[-1])["ok"] is True


async def test_a_late_entry_naming_a_retained_token_is_swept_too(net: Net) -> None:  # noqa: F811
    gw = net.gw
    token = await start_approach(net)
    # A directory that does not expire, so the relay judges the late message by its token.
    gw.use_directory(gw.directory.contents)
    gw.clock.advance(366 * DAY)
    sweeper = RetentionSweeper(gw.store, gw.clock, gw.metrics)
    [first] = await sweeper.sweep()
    assert first.token == 1
    # The token is gone for the relay: a late message naming it is refused, and its refusal
    # entry (filed under the tombstoned token; it names no subject) goes at the next sweep.
    police = await gw.client("politie-ijmond")
    envelope = gw.seal(token, sender="politie-ijmond", to=("halt",))
    with pytest.raises(Exception, match="token_not_registered"):
        await police.submit(envelope)
    [late] = await sweeper.sweep()
    assert (late.token, late.entries) == (0, 1)
    assert rows_containing(gw.db, needles(token.subjects)) == []


# -- the store contract, on both backends ---------------------------------------------------

PSEUDONYM = "ab" * 16


def retention_audit(token_id: str, count: int) -> AuditRecord:
    return record(f"retention {token_id} {count}", None)


async def test_store_apply_retention(store: AnyStore) -> None:  # noqa: F811
    await store.register_token(
        TokenRow(
            token_id="t1",
            coordinator="gemeente-velsen",
            token_hash="cd" * 32,
            signed=b"token with " + PSEUDONYM.encode(),
            valid_until=NOW + 50,
            retention_until=NOW + 100,
            registered_at=NOW,
        ),
        record("registered"),
    )
    await store.accept(submission(1), allow)
    [delivery] = await store.claim("halt", 10, NOW, 60)
    assert await store.finish(
        delivery.message_id, "halt", DeliveryState.DELIVERED, b"r", NOW, record("delivered")
    )
    assert await store.apply_retention(NOW + 99, retention_audit) == []

    [retained] = await store.apply_retention(NOW + 100, retention_audit)
    assert (retained.token_id, retained.entries, retained.messages) == ("t1", 3, 1)
    assert (retained.events, retained.token) == (1, 1)
    leaves = await store.audit_leaves()
    assert [(e, s) for _, _, e, s in leaves[:3]] == [(None, None)] * 3
    assert leaves[retained.leaf_index][2] == b"retention t1 3"
    assert await store.get_token("t1") is None
    assert await store.message_status(delivery.message_id) is None
    assert await store.events("politie-ijmond", 10, NOW + 100, 60) == []
    # Nothing left: no second retention event. A late entry under the id: swept next time.
    assert await store.apply_retention(NOW + 200, retention_audit) == []
    await store.record_audit(record("late refusal"))
    [late] = await store.apply_retention(NOW + 300, retention_audit)
    assert (late.entries, late.messages, late.events, late.token) == (1, 0, 0, 0)
    head = await store.audit_head()
    assert head.size == len(await store.audit_leaves()) == 6
