"""Backup and restore: ``ketenpost store backup|restore``, the restore guard and resubmission.

Issue 7 item 2, DESIGN.md "Delivery: nothing lost, nothing twice" and "Audit log". The main
test runs real processes on a fresh SQLite file over the session's development deployment:

* a sender with outbox semantics (it keeps every envelope it got a 202 for, with the receipt)
  and a recipient with inbound idempotency (it applies a message id once and answers a
  redelivery again without applying it) talk to ``ketenpost serve`` over mTLS;
* ``store backup`` runs while the sender is submitting; more is sent after it, part of it is
  delivered, part is not; ``store backup`` refuses to overwrite, ``store restore`` refuses while
  the gateway holds the store;
* the gateway is stopped and the backup restored; ``serve`` without ``--after-restore``
  refuses, naming the flag; with it the gateway serves and the audit log holds a ``restore``
  entry;
* the sender looks up every message it holds a receipt for and resubmits, with the same
  bytes, each one the gateway answers ``unknown_message`` for (what ``Adapter.
  recheck_after_restore`` does);
* every message accepted before and after the backup is then applied exactly once at the
  recipient, ``ketenpost audit verify`` passes, and the next start needs no flag.

Also: the guard's decisions as a table against an in-memory tree, and the PostgreSQL refusal.
Bounded by counts and deadlines; nothing sleeps to make time pass.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import json
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from adapters.client import GatewayClient, RefusedError
from adapters.engine import RESTORE_RECHECK_SETTING
from gateway.bench import RECIPIENT, SENDER, Covenant, GatewayProcess, Sealed
from gateway.protocol.auditentry import AuditDecision, decode_entry
from gateway.protocol.envelope import open_envelope
from gateway.protocol.merkle import InMemoryNodeStore, MerkleLog
from gateway.protocol.reasons import Reason
from gateway.protocol.receipts import DeliveryReceipt, sign_delivery_receipt
from gateway.published import (
    MarkFile,
    PublishedMark,
    RestoreRefusedError,
    default_mark_path,
    guard,
)
from gateway.relay import audit_leaf_hash
from gateway.signer import encode_signed_object
from gateway.store.base import AuditHead, AuditRecord
from tests.adapters.conftest import BSN_A, Net, net  # noqa: F401 - the fixture
from tests.adapters.test_engine_e2e import signal_event, start_approach
from tests.gateway.conftest import Deployment
from tests.gateway.test_serve_process import clean_environ, run_ketenpost

GATEWAY_ENV = {
    "KETENPOST_LIMITS__LEASE_S": "2",
    "KETENPOST_LIMITS__RATE_PER_S": "1000000",
    "KETENPOST_LIMITS__RATE_BURST": "1000000",
    "KETENPOST_LOG__LEVEL": "warning",
}
BEFORE_BACKUP = 20
AFTER_BACKUP_DELIVERED = 15
AFTER_BACKUP_UNDELIVERED = 10
DRAIN_DEADLINE_S = 30.0
QUIET_S = 2.5
REFUSE_TIMEOUT_S = 60.0


class FlaggedGateway(GatewayProcess):
    """``GatewayProcess`` with extra ``serve`` flags (``--after-restore``)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.flags: list[str] = []

    def command(self) -> list[str]:
        return [*super().command(), *self.flags]


@dataclass
class Partners:
    """The sender's outbox and the recipient's processed ids, as adapters keep them."""

    covenant: Covenant
    gateway: GatewayProcess
    outbox: dict[str, Sealed] = field(default_factory=dict)
    receipts: dict[str, bytes] = field(default_factory=dict)
    applied: collections.Counter[str] = field(default_factory=collections.Counter)
    processed: dict[str, bytes] = field(default_factory=dict)
    deliveries: collections.Counter[str] = field(default_factory=collections.Counter)
    last_delivery_at: float = 0.0

    def client(self, partner: str) -> GatewayClient:
        return GatewayClient(
            self.gateway.url, self.covenant.client_ssl(partner), attempts=3, timeout_s=10
        )

    async def send(self, items: Sequence[Sealed]) -> None:
        async with self.client(SENDER) as client:
            for item in items:
                self.outbox[item.message_id] = item
                accepted = await client.submit(item.envelope)
                self.receipts[item.message_id] = accepted.receipt

    async def send_until(self, done: asyncio.Event, sealer: Iterator[Sealed]) -> int:
        """Submit one message after another until ``done`` is set; how many."""
        n = 0
        while not done.is_set():
            await self.send([next(sealer)])
            n += 1
        return n

    async def resubmit_unknown(self) -> list[str]:
        """``recheck_after_restore``: what the gateway no longer knows goes again, same bytes."""
        again: list[str] = []
        async with self.client(SENDER) as client:
            for message_id in sorted(self.receipts):
                try:
                    await client.message_status(message_id)
                except RefusedError as exc:
                    if exc.reason is not Reason.UNKNOWN_MESSAGE:
                        raise
                    accepted = await client.submit(self.outbox[message_id].envelope)
                    assert accepted.first_time
                    self.receipts[message_id] = accepted.receipt
                    again.append(message_id)
        return again

    async def receive_until_quiet(self, want: set[str]) -> None:
        """Poll until every id in ``want`` was applied and nothing came for ``QUIET_S``."""
        halt_sign = self.covenant.sign_key(RECIPIENT)
        encrypt = self.covenant.encrypt_key(RECIPIENT)
        deadline = time.monotonic() + DRAIN_DEADLINE_S
        self.last_delivery_at = time.monotonic()
        async with self.client(RECIPIENT) as client:
            while True:
                assert time.monotonic() < deadline, "the recipient did not get everything"
                quiet = time.monotonic() - self.last_delivery_at
                if want <= set(self.applied) and quiet > QUIET_S:
                    return
                batch = await client.inbox(wait_s=0.5, limit=50)
                answers: list[bytes] = []
                for delivery in batch.deliveries:
                    self.deliveries[delivery.message_id] += 1
                    self.last_delivery_at = time.monotonic()
                    done = self.processed.get(delivery.message_id)
                    if done is not None:
                        # Inbound idempotency: the same answer, never applied again.
                        answers.append(done)
                        continue
                    opened = open_envelope(
                        delivery.envelope,
                        self.covenant.directory,
                        recipient=RECIPIENT,
                        encrypt_keys={encrypt.kid: encrypt},
                        accepted_at=delivery.accepted_at,
                        now=int(time.time()),
                    )
                    self.applied[delivery.message_id] += 1
                    receipt = encode_signed_object(
                        sign_delivery_receipt(
                            DeliveryReceipt(
                                message_id=delivery.message_id,
                                header_hash=opened.header_hash.hex(),
                                recipient=RECIPIENT,
                                received_at=int(time.time()),
                                plaintext_hash=hashlib.sha256(opened.body).hexdigest(),
                            ),
                            halt_sign,
                        )
                    )
                    self.processed[delivery.message_id] = receipt
                    answers.append(receipt)
                if answers:
                    await client.send_receipts(receipts=answers)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_ketenpost(*args, env=GATEWAY_ENV)


def _restore_entries(db: Path) -> list[tuple[int, int | None]]:
    """(leaf index, count) of every ``restore`` entry in the store's audit log."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT idx, entry FROM audit_leaves WHERE entry IS NOT NULL")
        out = []
        for idx, entry in rows:
            decoded = decode_entry(bytes(entry))
            if decoded.decision is AuditDecision.RESTORE:
                out.append((int(idx), decoded.count))
        return out


def _serve_to_completion(gateway: GatewayProcess) -> subprocess.CompletedProcess[str]:
    """``serve`` that is expected to refuse: run it to its exit (bounded)."""
    return subprocess.run(
        gateway.command(),
        capture_output=True,
        text=True,
        env=clean_environ(GATEWAY_ENV),
        timeout=REFUSE_TIMEOUT_S,
        check=False,
    )


def _head_size(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT MAX(size) FROM checkpoints").fetchone()[0])


@pytest.mark.slow
async def test_backup_send_more_restore_loses_nothing_and_applies_once(
    deployment: Deployment, tmp_path: Path
) -> None:
    now = int(time.time())
    covenant = Covenant(deployment.root, now=now)
    token = covenant.issue_token(now=now)
    sealer = covenant.sealer(token, now=now)

    def fresh(n: int) -> list[Sealed]:
        return [next(sealer) for _ in range(n)]

    db = tmp_path / "ketenpost.db"
    config = str(covenant.gateway_config)
    store = f"sqlite://{db}"
    backup = tmp_path / "backups" / "ketenpost-1.db"
    backup.parent.mkdir()
    gateway = FlaggedGateway(
        covenant.gateway_config, db, env=GATEWAY_ENV, log=tmp_path / "gateway.log"
    )
    partners = Partners(covenant, gateway)
    gateway.migrate()
    gateway.start()
    try:
        await gateway.wait_ready()
        async with partners.client("gemeente-velsen") as velsen:
            await velsen.register_token(token.body)
        await partners.send(fresh(BEFORE_BACKUP))
        await partners.receive_until_quiet(set(partners.receipts))

        # The backup runs while the sender keeps submitting.
        backup_done = asyncio.Event()
        sending = asyncio.create_task(partners.send_until(backup_done, sealer))
        backed_up = await asyncio.to_thread(
            _cli, "store", "backup", "--config", config, "--store", store, "--out", str(backup)
        )
        backup_done.set()
        during_backup = await sending
        assert during_backup >= 2, "the backup did not run under load"
        assert backed_up.returncode == 0, backed_up.stderr
        result = json.loads(backed_up.stdout)
        manifest = json.loads((tmp_path / "backups" / "ketenpost-1.db.manifest.json").read_text())
        assert manifest["checkpoint"]["size"] == result["checkpoint_size"] > 0
        assert manifest["schema_version"] >= 1

        # Never overwrite; never restore under a running gateway.
        again = _cli("store", "backup", "--config", config, "--store", store, "--out", str(backup))
        assert again.returncode == 1
        assert "never overwrites" in again.stderr
        busy = _cli(
            "store", "restore", "--config", config, "--store", store, "--from", str(backup), "--yes"
        )
        assert busy.returncode == 1
        assert "stop it first" in busy.stderr or "stop the gateway" in busy.stderr

        # After the backup: some delivered before the restore, some not.
        await partners.send(fresh(AFTER_BACKUP_DELIVERED))
        await partners.receive_until_quiet(set(partners.receipts))
        await partners.send(fresh(AFTER_BACKUP_UNDELIVERED))
    finally:
        assert gateway.stop() == 0
    published = MarkFile(default_mark_path(db)).read()
    assert published is not None
    assert published.size == _head_size(db) > result["checkpoint_size"]

    shown = _cli("store", "restore", "--config", config, "--store", store, "--from", str(backup))
    assert shown.returncode == 1
    assert "--yes" in shown.stderr
    restored = _cli(
        "store", "restore", "--config", config, "--store", store, "--from", str(backup), "--yes"
    )
    assert restored.returncode == 0, restored.stderr
    moved = json.loads(restored.stdout)["moved_aside"]
    assert moved is not None
    assert await asyncio.to_thread(Path(moved).exists)
    assert _head_size(db) == result["checkpoint_size"]

    # Without the flag: refused, with the reason.
    refused = _serve_to_completion(gateway)
    assert refused.returncode == 1
    assert "--after-restore" in refused.stderr
    assert "older than the checkpoint" in refused.stderr
    assert _restore_entries(db) == []

    gateway.flags = ["--after-restore"]
    gateway.start()
    try:
        await gateway.wait_ready()
        entries = _restore_entries(db)
        assert entries == [(result["checkpoint_size"], published.size - result["checkpoint_size"])]
        again_ids = await partners.resubmit_unknown()
        # Exactly what was accepted after the backup was lost (and is now back); a message
        # accepted during the backup may be on either side of it.
        assert len(again_ids) >= AFTER_BACKUP_DELIVERED + AFTER_BACKUP_UNDELIVERED
        assert len(again_ids) <= during_backup + AFTER_BACKUP_DELIVERED + AFTER_BACKUP_UNDELIVERED
        await partners.receive_until_quiet(set(partners.receipts))
    finally:
        assert gateway.stop() == 0

    # Every message accepted before and after the backup applied exactly once.
    total = BEFORE_BACKUP + during_backup + AFTER_BACKUP_DELIVERED + AFTER_BACKUP_UNDELIVERED
    assert len(partners.receipts) == total
    assert set(partners.applied) == set(partners.receipts)
    assert set(partners.applied.values()) == {1}
    # Delivered before the restore and again after it: answered, not applied, again.
    assert sum(1 for n in partners.deliveries.values() if n > 1) >= AFTER_BACKUP_DELIVERED
    verified = _cli("audit", "verify", "--config", config, "--store", store)
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["ok"] is True

    # The mark was reset: the next start needs no flag.
    gateway.flags = []
    gateway.start()
    try:
        await gateway.wait_ready()
    finally:
        assert gateway.stop() == 0


def test_backup_of_postgresql_is_refused_with_the_procedure(
    deployment: Deployment, tmp_path: Path
) -> None:
    done = run_ketenpost(
        "store",
        "backup",
        "--config",
        str(deployment.root / "gateway.toml"),
        "--store",
        "postgresql://ketenpost@127.0.0.1:1/ketenpost",
        "--out",
        str(tmp_path / "pg.db"),
    )
    assert done.returncode == 1
    assert "pg_basebackup" in done.stderr
    assert "docs/operations.md" in done.stderr
    assert not (tmp_path / "pg.db").exists()


# -- the guard's decisions, against an in-memory tree ----------------------------------------


class TreeStore:
    """``GuardedStore`` over an in-memory Merkle tree."""

    def __init__(self, leaves: int, *, salt: bytes = b"a") -> None:
        self.log = MerkleLog(InMemoryNodeStore())
        for i in range(leaves):
            self.log.append(hashlib.sha256(salt + i.to_bytes(8, "big")).digest())
        self.records: list[AuditRecord] = []

    async def audit_head(self) -> AuditHead:
        return AuditHead(self.log.size, self.log.root(), f"note {self.log.size}")

    async def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        return list(self.log.consistency_proof(old_size, new_size).hashes)

    async def record_audit(self, record: AuditRecord) -> int:
        self.records.append(record)
        self.log.append(audit_leaf_hash(record))
        return self.log.size - 1


def _mark_of(leaves: int, salt: bytes = b"a") -> PublishedMark:
    tree = TreeStore(leaves, salt=salt)
    return PublishedMark(tree.log.size, tree.log.root(), "")


@dataclass(frozen=True)
class Case:
    name: str
    store_leaves: int
    mark: PublishedMark | None
    after_restore: bool
    refused: str | None  # a phrase of the refusal, or None: it serves
    restore_entry: bool = False


CASES = [
    Case("first start records the head", 5, None, False, None),
    Case("same head", 5, _mark_of(5), False, None),
    Case("store ahead and consistent", 9, _mark_of(5), False, None),
    Case("store behind: refused", 3, _mark_of(5), False, "start once with --after-restore"),
    Case("store behind, --after-restore", 3, _mark_of(5), True, None, restore_entry=True),
    Case("same size, other root", 5, _mark_of(5, b"b"), False, "another history"),
    Case("same size, other root, flag", 5, _mark_of(5, b"b"), True, "another history"),
    Case("ahead but inconsistent", 9, _mark_of(5, b"b"), False, "not consistent"),
    Case("flag without a restore", 9, _mark_of(5), True, "not behind"),
    Case("flag without any mark", 9, None, True, "no published checkpoint"),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
async def test_guard(case: Case, tmp_path: Path) -> None:
    marks = MarkFile(tmp_path / "store.db.published")
    if case.mark is not None:
        marks.reset(AuditHead(case.mark.size, case.mark.root, ""), case.mark)
    store = TreeStore(case.store_leaves)
    if case.refused is not None:
        with pytest.raises(RestoreRefusedError, match=case.refused):
            await guard(store, marks, after_restore=case.after_restore, now=1_800_000_000)
        assert store.records == []
        assert marks.read() == case.mark
        return
    outcome = await guard(store, marks, after_restore=case.after_restore, now=1_800_000_000)
    recorded = marks.read()
    assert recorded is not None
    assert (recorded.size, recorded.root) == (outcome.head.size, outcome.head.root)
    if case.restore_entry:
        assert case.mark is not None
        assert outcome.restore_index == case.store_leaves
        (record,) = store.records
        entry = decode_entry(record.entry)
        assert entry.decision is AuditDecision.RESTORE
        assert entry.count == case.mark.size - case.store_leaves
        doc = json.loads(marks.path.read_text())
        assert doc["previous"]["root"] == base64.b64encode(case.mark.root).decode()
    else:
        assert store.records == []


def test_mark_only_moves_forward(tmp_path: Path) -> None:
    marks = MarkFile(tmp_path / "m.published")
    assert marks.advance(AuditHead(5, b"\x01" * 32, "n5"))
    assert not marks.advance(AuditHead(4, b"\x02" * 32, "n4"))
    assert not marks.advance(AuditHead(5, b"\x03" * 32, "n5'"))
    assert marks.read() == PublishedMark(5, b"\x01" * 32, "n5")


def test_mark_never_moves_back_when_advanced_from_threads(tmp_path: Path) -> None:
    """``serve`` advances the mark on worker threads, and a write cancelled at shutdown still
    runs while the final advance happens: the larger head must win whatever the interleaving.
    Each thread advances through its own heads in ascending order, as ``serve`` reads them;
    a watcher reads the file throughout and must never see it shrink."""
    marks = MarkFile(tmp_path / "m.published")
    sizes = {t: list(range(t + 1, 400, 8)) for t in range(8)}
    seen: list[int] = []
    done = threading.Event()

    def advance(t: int) -> None:
        for size in sizes[t]:
            marks.advance(AuditHead(size, size.to_bytes(32, "big"), f"n{size}"))

    def watch() -> None:
        while not done.is_set():
            mark = MarkFile(marks.path).read()
            if mark is not None:
                seen.append(mark.size)

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=advance, args=(t,)) for t in sizes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    watcher.join()
    top = max(max(v) for v in sizes.values())
    assert marks.read() == PublishedMark(top, top.to_bytes(32, "big"), f"n{top}")
    assert seen == sorted(seen), "the mark moved back"


# -- the adapter's side: Adapter.recheck_after_restore, in process -----------------------------


async def test_adapter_resubmits_what_a_restored_gateway_forgot(net: Net) -> None:  # noqa: F811
    """A witness alarm on the head makes the adapter look its accepted rows up; the one the
    gateway no longer knows goes again with the same bytes and is applied once."""
    await start_approach(net)
    police, halt = net.open_adapters[1], net.open_adapters[2]
    net.system("politie-ijmond").add_event("INC-1", signal_event([BSN_A], ["halt"]))
    net.system("politie-ijmond").add_event("INC-2", signal_event([BSN_A], ["halt"]))
    await police.ingest_once()
    assert len((await police.send_once()).accepted) == 2
    lost, kept = (r.message_id for r in police.store.outbox()[-2:])
    before = police.store.outbox_row(lost)
    assert before is not None
    assert before.envelope is not None
    # Halt gets both before the "restore"; then the gateway forgets ``lost`` (as a store
    # restored from a backup taken before it was accepted would).
    assert len((await halt.receive_once()).applied) == 2
    with contextlib.closing(sqlite3.connect(net.gw.db, timeout=10)) as conn, conn:
        conn.execute("DELETE FROM sender_events WHERE message_id = ?", (lost,))
        conn.execute("DELETE FROM deliveries WHERE message_id = ?", (lost,))
        conn.execute("DELETE FROM messages WHERE message_id = ?", (lost,))
    # The head the adapter now sees is smaller than a checkpoint it kept: a witness alarm.
    police.store.keep_checkpoint(1_000_000, b"\x07" * 32, "seen before", net.gw.clock.now())
    await police.witness_once()
    assert [a.kind for a in police.store.alarms()] == ["witness"]
    assert police.store.setting(RESTORE_RECHECK_SETTING)

    assert await police.recheck_after_restore() == 1
    assert not police.store.setting(RESTORE_RECHECK_SETTING)
    requeued = police.store.outbox_row(lost)
    assert requeued is not None
    assert requeued.state == "sent"
    assert requeued.envelope == before.envelope
    assert (await police.send_once()).accepted == [lost]
    # Delivered again; halt answers from its processed ids and applies nothing twice.
    again = await halt.receive_once()
    assert again.applied == []
    assert {lost, kept} <= set(net.system("halt").cases)
    # ... and the gateway took halt's repeated receipt: the resubmitted message is delivered.
    status = await police.client.message_status(lost)
    assert [r["state"] for r in status["recipients"]] == ["delivered"]
    # Nothing left to recheck: no request without a new alarm.
    assert await police.recheck_after_restore() == 0
