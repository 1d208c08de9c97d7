"""Several ``ketenpost serve`` replicas on one PostgreSQL (issue 5, items 2 and 4).

Real processes on 127.0.0.1, the real PostgreSQL of this machine (``tests.gateway._pg``): each
test has a schema of its own, named in the store URL (``?search_path=``), dropped afterwards.
The replicas run the installed program exactly as an operator would: ``store migrate`` first,
then ``serve --store postgresql://…``. Senders submit pre-sealed envelopes
(``gateway.bench.Covenant``) and retry what was not acknowledged with the same bytes, on the
other replica when theirs is down (what an L4 load balancer does); recipients long-poll,
open every envelope and send signed delivery receipts. At the end of every load test:

* every message that got a 202 was delivered, opened, and its delivery ended;
* no poll sent after a message's delivery receipt was accepted delivered it again;
* ``ketenpost audit verify`` exits 0 on the shared log.

The rate-limit test runs in-process on two ``PostgresStore`` instances (two replicas' worth of
pools and listeners) and drives the exchange by hand, so no time has to pass.

Waits are bounded waits for processes, for PostgreSQL and for deliveries; nothing sleeps to
make time pass. The whole module takes about a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiohttp
import asyncpg
import pytest

from adapters.client import GatewayClient, GatewayUnreachableError, RefusedError
from gateway.bench import RECIPIENT, SENDER, Covenant, GatewayProcess, RegisteredToken, Sealed
from gateway.clock import ManualClock
from gateway.protocol.envelope import open_envelope
from gateway.protocol.receipts import DeliveryReceipt, sign_delivery_receipt
from gateway.ratelimit import RateLimiter, SharedRateLimiter
from gateway.relay import audit_leaf_hash
from gateway.server import RateExchange
from gateway.signer import GatewaySigner, encode_signed_object
from gateway.store.migrations import MIGRATIONS
from gateway.store.postgres import PostgresStore
from keys import KeyUse
from keys.keyfile import load_ed25519_key
from tests.gateway._pg import PG_URL, PgSchema, pg_schema
from tests.gateway.conftest import Deployment

GATEWAY_ENV: Final = {
    # A short lease, so what a killed replica had leased comes back quickly.
    "KETENPOST_LIMITS__LEASE_S": "2",
    "KETENPOST_LIMITS__RATE_PER_S": "1000000",
    "KETENPOST_LIMITS__RATE_BURST": "1000000",
    "KETENPOST_LOG__LEVEL": "warning",
}
PENDING: Final = [f"{m.version:04d} {m.name}" for m in MIGRATIONS]
# What a client sees while a replica (or the database) is down or dies mid-request.
DOWN: Final = (GatewayUnreachableError, aiohttp.ClientError, TimeoutError, ConnectionError)
# PostgresStore's default fallback poll: a long-poll not woken by NOTIFY returns after it.
FALLBACK_POLL_S: Final = 5.0
TEST_DEADLINE_S: Final = 60.0
DRAIN_DEADLINE_S: Final = 20.0
# Deliveries quiet for longer than a lease: nothing leased and unreceipted is still coming.
QUIET_S: Final = 2.5
PG_TIMEOUT_S: Final = 60.0


def store_url(pg: PgSchema) -> str:
    """The test schema's store URL: its search_path, and an application_name by which
    ``pg_schema`` terminates what is left of its connections."""
    query = urllib.parse.urlencode(
        {"search_path": pg.schema, "application_name": f"ketenpost-test-{pg.schema}"}
    )
    return f"{pg.url}{'&' if '?' in pg.url else '?'}{query}"


# -- processes ------------------------------------------------------------------------------

# A newer gateway version for the rolling-upgrade test: this one, plus one expand-only
# migration (a nullable column and a new table) that the running version knows nothing of.
NEW_VERSION_SCRIPT: Final = """
import sys

from gateway.store import migrations, postgres, sqlite

EXTRA = migrations.Migration(
    migrations.LATEST_VERSION + 1,
    "test: expand only (nullable column, new table)",
    "ALTER TABLE messages ADD COLUMN priority INTEGER;"
    " CREATE TABLE partner_notes (partner TEXT PRIMARY KEY, note TEXT);",
    "ALTER TABLE messages ADD COLUMN priority INTEGER;"
    " CREATE TABLE partner_notes (partner TEXT PRIMARY KEY, note TEXT NOT NULL DEFAULT '');",
)
ALL = (*migrations.MIGRATIONS, EXTRA)
for module in (migrations, postgres, sqlite):
    module.MIGRATIONS = ALL
    module.LATEST_VERSION = EXTRA.version

import ketenpost

sys.exit(ketenpost.main(sys.argv[1:]))
"""


class Replica(GatewayProcess):
    """``ketenpost serve`` on the shared PostgreSQL store (``GatewayProcess`` with a URL, and
    optionally the newer version's program)."""

    def __init__(
        self,
        config: Path,
        url: str,
        *,
        log: Path,
        program: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(config, log.with_suffix(".unused"), env={**GATEWAY_ENV, **(env or {})})
        self.log = log
        self.url_of_store = url
        self.program = program

    @property
    def store_url(self) -> str:
        return self.url_of_store

    def command(self) -> list[str]:
        command = super().command()
        if self.program is None:
            return command
        # super() runs ``python -m ketenpost ARGS``; the newer version is a script.
        return [sys.executable, str(self.program), *command[3:]]

    def ketenpost(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run one verb of this replica's version against its store."""
        program = [str(self.program)] if self.program else ["-m", "ketenpost"]
        store = ("--config", str(self.config), "--store", self.store_url)
        return subprocess.run(
            [sys.executable, *program, *args, *store],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
            check=False,
        )

    def migrate_dry_run(self) -> list[str]:
        done = self.ketenpost("store", "migrate", "--dry-run")
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["dry_run"] is True
        pending: list[str] = result["migrations"]
        return pending

    def migrate(self) -> None:
        done = self.ketenpost("store", "migrate")
        assert done.returncode == 0, done.stderr

    def audit_verify(self) -> dict[str, object]:
        done = self.ketenpost("audit", "verify")
        assert done.returncode == 0, done.stderr
        result: dict[str, object] = json.loads(done.stdout)
        assert result["ok"] is True
        return result

    async def readyz(self) -> int:
        """The status ``/readyz`` answers (0 if it does not answer)."""
        timeout = aiohttp.ClientTimeout(total=5)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(self.operator_url + "/readyz") as response,
            ):
                return response.status
        except (aiohttp.ClientError, TimeoutError):
            return 0


@contextlib.asynccontextmanager
async def replicas(
    covenant: Covenant, pg: PgSchema, tmp_path: Path, count: int = 2
) -> AsyncIterator[list[Replica]]:
    """``count`` replicas on the migrated test schema, ready; stopped (SIGTERM) afterwards."""
    url = store_url(pg)
    started = [
        Replica(covenant.gateway_config, url, log=tmp_path / f"replica-{i + 1}.log")
        for i in range(count)
    ]
    assert started[0].migrate_dry_run() == PENDING
    started[0].migrate()
    assert started[0].migrate_dry_run() == []
    try:
        for replica in started:
            replica.start()
        for replica in started:
            await replica.wait_ready()
        yield started
    finally:
        for replica in started:
            replica.stop()


# -- PostgreSQL itself ------------------------------------------------------------------------


def pg_ctl(action: str) -> None:
    """``pg_ctlcluster`` on the machine's own cluster (stop/start: a restart in two steps, so
    the test sees the outage for certain)."""
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    done = subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
        capture_output=True,
        text=True,
        timeout=PG_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"pg_ctlcluster {action}: {done.stderr}"


def wait_pg_accepting() -> None:
    deadline = time.monotonic() + PG_TIMEOUT_S
    while time.monotonic() < deadline:
        ready = subprocess.run(
            ["pg_isready", "-h", "127.0.0.1", "-p", "5432", "-q"], timeout=10, check=False
        )
        if ready.returncode == 0:
            return
        time.sleep(0.1)
    raise AssertionError("PostgreSQL did not come back")


@contextlib.contextmanager
def postgres_stopped() -> Iterator[None]:
    """Stop the machine's PostgreSQL for the body; always start it again and wait for it."""
    pg_ctl("stop")
    try:
        yield
    finally:
        with contextlib.suppress(AssertionError):
            pg_ctl("start")
        wait_pg_accepting()


# -- load -----------------------------------------------------------------------------------


@dataclass
class Ledger:
    """What the partners saw; times are the test's ``time.monotonic()``."""

    receipts: dict[str, bytes] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    retried: int = 0
    opened: set[str] = field(default_factory=set)
    # (message id, when the poll that delivered it was sent)
    deliveries: list[tuple[str, float]] = field(default_factory=list)
    receipt_accepted_at: dict[str, float] = field(default_factory=dict)
    last_delivery_at: float = 0.0
    in_flight: int = 0


class Load:
    """Senders on ``send_to`` (falling back to the other replicas), pollers on ``poll_at``."""

    def __init__(self, covenant: Covenant, pool: Iterator[Sealed]) -> None:
        self.covenant = covenant
        self.pool = pool
        self.ledger = Ledger()
        self.submitting = True
        self.receiving = True
        self.by_id: dict[str, Sealed] = {}
        self.deadline = time.monotonic() + TEST_DEADLINE_S
        self.halt_sign = covenant.sign_key(RECIPIENT)
        encrypt = covenant.encrypt_key(RECIPIENT)
        self.halt_keys = {encrypt.kid: encrypt}

    def client(self, partner: str, replica: GatewayProcess, timeout_s: float = 5) -> GatewayClient:
        ssl_context = self.covenant.client_ssl(partner)
        return GatewayClient(replica.url, ssl_context, attempts=1, timeout_s=timeout_s)

    def _check_deadline(self) -> None:
        if time.monotonic() > self.deadline:
            raise AssertionError("the replica test ran past its deadline")

    async def sender(self, replicas: Sequence[GatewayProcess]) -> None:
        clients = [self.client(SENDER, r) for r in replicas]
        async with contextlib.AsyncExitStack() as stack:
            for c in clients:
                await stack.enter_async_context(c)
            while self.submitting:
                item = next(self.pool, None)
                if item is None:
                    return
                self.by_id[item.message_id] = item
                await self._submit_until_acknowledged(clients, item)

    async def _submit_until_acknowledged(
        self, clients: Sequence[GatewayClient], item: Sealed
    ) -> None:
        attempt = 0
        while True:
            self._check_deadline()
            # The first replica first; after a failure the next one, as a load balancer would.
            client = clients[attempt % len(clients)]
            self.ledger.in_flight += 1
            try:
                accepted = await client.submit(item.envelope)
            except DOWN:
                attempt += 1
                await asyncio.sleep(0.02)
                continue
            except RefusedError as refused:
                if refused.transient:
                    attempt += 1
                    await asyncio.sleep(0.02)
                    continue
                self.ledger.refused.append(f"{item.message_id}: {refused}")
                return
            finally:
                self.ledger.in_flight -= 1
            self.ledger.retried += attempt > 0
            first = self.ledger.receipts.setdefault(item.message_id, accepted.receipt)
            assert first == accepted.receipt, "a second 202 for an id carried another receipt"
            return

    async def recipient(self, replica: GatewayProcess, wait_s: float = 0.5) -> None:
        async with self.client(RECIPIENT, replica) as client:
            while self.receiving:
                self._check_deadline()
                sent_at = time.monotonic()
                try:
                    batch = await client.inbox(wait_s=wait_s, limit=50)
                except (*DOWN, RefusedError):
                    await asyncio.sleep(0.05)
                    continue
                receipts: list[bytes] = []
                ids: list[str] = []
                for delivery in batch.deliveries:
                    opened = open_envelope(
                        delivery.envelope,
                        self.covenant.directory,
                        recipient=RECIPIENT,
                        encrypt_keys=self.halt_keys,
                        accepted_at=delivery.accepted_at,
                        now=int(time.time()),
                    )
                    assert opened.header.message_id == delivery.message_id
                    self.ledger.opened.add(delivery.message_id)
                    self.ledger.deliveries.append((delivery.message_id, sent_at))
                    self.ledger.last_delivery_at = time.monotonic()
                    ids.append(delivery.message_id)
                    receipts.append(
                        self.receipt(delivery.message_id, opened.header_hash, opened.body)
                    )
                if not receipts:
                    continue
                try:
                    await client.send_receipts(receipts=receipts)
                except (*DOWN, RefusedError):
                    continue  # committed or not: if not, the lease brings them back
                accepted_at = time.monotonic()
                for message_id in ids:
                    self.ledger.receipt_accepted_at.setdefault(message_id, accepted_at)

    def receipt(self, message_id: str, header_hash: bytes, body: bytes) -> bytes:
        receipt = DeliveryReceipt(
            message_id=message_id,
            header_hash=header_hash.hex(),
            recipient=RECIPIENT,
            received_at=int(time.time()),
            plaintext_hash=hashlib.sha256(body).hexdigest(),
        )
        return encode_signed_object(sign_delivery_receipt(receipt, self.halt_sign))

    async def drain(self) -> None:
        """Until every acknowledged message was opened and deliveries have been quiet for
        longer than a lease."""
        deadline = time.monotonic() + DRAIN_DEADLINE_S
        while time.monotonic() < deadline:
            quiet = time.monotonic() - self.ledger.last_delivery_at
            if set(self.ledger.receipts) <= self.ledger.opened and quiet > QUIET_S:
                return
            await asyncio.sleep(0.1)

    async def undelivered(self, replica: GatewayProcess) -> list[str]:
        """Of the accepted messages whose receipt the recipient did not see accepted, those
        whose delivery has not ended as ``delivered``."""
        ids = sorted(set(self.ledger.receipts) - set(self.ledger.receipt_accepted_at))
        out = []
        async with self.client(SENDER, replica) as police:
            for message_id in ids:
                status = await police.message_status(message_id)
                if [r["state"] for r in status["recipients"]] != ["delivered"]:
                    out.append(message_id)
        return out

    def check_nothing_lost_nothing_twice(self) -> None:
        ledger = self.ledger
        assert ledger.refused == []
        assert ledger.receipts, "nothing was accepted"
        assert sorted(set(ledger.receipts) - ledger.opened) == []
        late = [
            message_id
            for message_id, sent_at in ledger.deliveries
            if message_id in ledger.receipt_accepted_at
            and sent_at > ledger.receipt_accepted_at[message_id]
        ]
        assert late == [], "delivered again after its delivery receipt was accepted"
        assert ledger.opened <= set(self.by_id)


def sealed_pool(covenant: Covenant, token: RegisteredToken, now: int, count: int) -> list[Sealed]:
    sealer = covenant.sealer(token, now=now)
    return [next(sealer) for _ in range(count)]


async def register(covenant: Covenant, replica: GatewayProcess, token: RegisteredToken) -> None:
    ssl_context = covenant.client_ssl("gemeente-velsen")
    async with GatewayClient(replica.url, ssl_context, attempts=1) as velsen:
        await velsen.register_token(token.body)


@pytest.fixture
async def pg() -> AsyncIterator[PgSchema]:
    async with pg_schema() as schema:
        yield schema


@pytest.fixture
async def pg_restartable() -> AsyncIterator[PgSchema]:
    """As ``pg``, for a test that restarts the server: made and dropped over connections of
    their own (``pg_schema`` keeps one open across the test, which the restart would end)."""
    async with pg_schema() as probe:  # skips (or fails under CI=true) without PostgreSQL
        schema = f"{probe.schema}_r"
    await _admin_execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield PgSchema(PG_URL, schema)
    finally:
        wait_pg_accepting()
        await _admin_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = $1 AND pid <> pg_backend_pid()",
            f"ketenpost-test-{schema}",
        )
        await _admin_execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def _admin_execute(statement: str, *args: str) -> None:
    admin = await asyncpg.connect(PG_URL, timeout=10)
    try:
        await admin.execute(statement, *args)
    finally:
        await admin.close()


@pytest.fixture
def covenant(deployment: Deployment) -> Covenant:
    return Covenant(deployment.root, now=int(time.time()))


# -- two replicas, one store ------------------------------------------------------------------


@pytest.mark.slow
async def test_a_submission_to_one_replica_wakes_a_long_poll_on_the_other(
    covenant: Covenant, pg: PgSchema, tmp_path: Path
) -> None:
    now = int(time.time())
    token = covenant.issue_token(now=now)
    [item] = sealed_pool(covenant, token, now, 1)
    async with replicas(covenant, pg, tmp_path) as (one, two):
        await register(covenant, one, token)
        load = Load(covenant, iter([]))
        async with (
            load.client(SENDER, one) as police,
            load.client(RECIPIENT, two, timeout_s=30) as halt,
        ):
            assert (await halt.inbox(wait_s=0)).deliveries == []
            # The poll on replica 2 claims nothing and waits; the submission commits on
            # replica 1. Only its NOTIFY can end the wait before the fallback poll.
            async with request_read_by(two) as read:
                poll = asyncio.create_task(halt.inbox(wait_s=20))
                await read()
            submitted = time.monotonic()
            accepted = await police.submit(item.envelope)
            batch = await asyncio.wait_for(poll, 25)
            woken_after = time.monotonic() - submitted
    assert accepted.first_time
    assert [d.message_id for d in batch.deliveries] == [item.message_id]
    assert woken_after < FALLBACK_POLL_S - 2, woken_after


def _received(port: int) -> tuple[int, int]:
    """Bytes received, and bytes not yet read by the process, over the established TCP
    sockets listening side ``127.0.0.1:port`` (``ss`` from iproute2)."""
    out = subprocess.run(
        ["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    received = unread = 0
    for line in out.splitlines():
        fields = line.split()
        if fields and fields[0].isdigit():  # a socket line: Recv-Q first (no State column)
            unread += int(fields[0])
        received += sum(int(f.split(":")[1]) for f in fields if f.startswith("bytes_received:"))
    return received, unread


@contextlib.asynccontextmanager
async def request_read_by(replica: GatewayProcess) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """A bounded wait until the replica has read the request sent inside the block off its
    socket (so it is in flight there: claimed nothing, and waiting, a few milliseconds later).
    """
    before, _ = _received(replica.port)

    async def read() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            received, unread = _received(replica.port)
            if received > before and unread == 0:
                return
            await asyncio.sleep(0.005)
        raise AssertionError("the replica never read the request")

    yield read


async def run_load(
    load: Load,
    senders_to: Sequence[Sequence[GatewayProcess]],
    pollers_at: Sequence[GatewayProcess],
    disturb: Callable[[], Awaitable[None]],
) -> None:
    """Senders and pollers run while ``disturb`` does its harm; then every sender finishes
    the submission it holds, and the recipients drain."""
    senders = [asyncio.create_task(load.sender(order)) for order in senders_to]
    pollers = [asyncio.create_task(load.recipient(replica)) for replica in pollers_at]
    try:
        await disturb()
        load.submitting = False
        await asyncio.gather(*senders)
        await load.drain()
    finally:
        load.submitting = load.receiving = False
        await asyncio.gather(*senders, *pollers, return_exceptions=True)
    for task in (*senders, *pollers):
        if task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


async def until_delivered(load: Load, count: int, deadline_s: float = 15) -> None:
    """A bounded wait until ``count`` more messages were opened (the load is running)."""
    target = len(load.ledger.opened) + count
    deadline = time.monotonic() + deadline_s
    while len(load.ledger.opened) < target:
        assert time.monotonic() < deadline, "the load stalled"
        await asyncio.sleep(0.02)


@pytest.mark.slow
async def test_a_replica_killed_under_load_and_restarted_loses_nothing(
    covenant: Covenant, pg: PgSchema, tmp_path: Path
) -> None:
    now = int(time.time())
    token = covenant.issue_token(now=now)
    load = Load(covenant, iter(sealed_pool(covenant, token, now, 1_500)))
    kills: list[int] = []
    async with replicas(covenant, pg, tmp_path) as (one, two):
        await register(covenant, one, token)

        async def kill_replica_one_twice() -> None:
            for _ in range(2):
                await until_delivered(load, 60)
                kills.append(load.ledger.in_flight)
                one.kill()
                # Replica 2 carries on alone meanwhile.
                await until_delivered(load, 30)
                one.start()
                await one.wait_ready()
            await until_delivered(load, 60)

        # Senders submit to replica 1 (falling back to 2 while it is down); the recipient
        # polls both, so replica 1 dies with leased deliveries too.
        await run_load(load, [(one, two)] * 4, [two, two, one], kill_replica_one_twice)
        undelivered = await load.undelivered(two)
        verified = one.audit_verify()
    print(f"replica kill: accepted={len(load.ledger.receipts)} kills_in_flight={kills}")
    assert len(kills) == 2
    assert any(kills), "no kill landed under load"
    load.check_nothing_lost_nothing_twice()
    assert undelivered == []
    assert isinstance(verified["leaves"], int)
    assert verified["leaves"] >= len(load.ledger.receipts)


@pytest.mark.slow
async def test_postgres_restarted_under_load_replicas_report_it_and_recover(
    covenant: Covenant, pg_restartable: PgSchema, tmp_path: Path
) -> None:
    pg = pg_restartable
    now = int(time.time())
    token = covenant.issue_token(now=now)
    load = Load(covenant, iter(sealed_pool(covenant, token, now, 1_500)))
    seen: dict[str, list[int]] = {}
    async with replicas(covenant, pg, tmp_path) as pair:
        one, two = pair
        await register(covenant, one, token)

        async def restart_postgres() -> None:
            await until_delivered(load, 60)
            with postgres_stopped():
                # Both replicas stay up and say they cannot serve: 503 from /readyz.
                for replica in pair:
                    seen.setdefault("down", []).append(await until_readyz(replica, 503))
                assert all(r.process is not None and r.process.poll() is None for r in pair)
            for replica in pair:
                seen.setdefault("up", []).append(await until_readyz(replica, 200))
            await until_delivered(load, 100)

        await run_load(load, [(one, two), (two, one)] * 2, [one, two], restart_postgres)
        undelivered = await load.undelivered(two)
        one.audit_verify()
    print(f"postgres restart: accepted={len(load.ledger.receipts)} retried={load.ledger.retried}")
    assert seen == {"down": [503, 503], "up": [200, 200]}
    assert load.ledger.retried > 0, "the outage was not under load"
    load.check_nothing_lost_nothing_twice()
    assert undelivered == []


async def until_readyz(replica: Replica, status: int, deadline_s: float = 30) -> int:
    """A bounded wait until the replica's ``/readyz`` answers ``status``."""
    deadline = time.monotonic() + deadline_s
    while (got := await replica.readyz()) != status:
        assert time.monotonic() < deadline, f"/readyz stayed {got}, wanted {status}"
        await asyncio.sleep(0.05)
    return got


# -- a rolling upgrade --------------------------------------------------------------------------


@pytest.mark.slow
async def test_an_old_and_a_new_version_serve_on_one_migrated_store(
    covenant: Covenant, pg: PgSchema, tmp_path: Path
) -> None:
    now = int(time.time())
    token = covenant.issue_token(now=now)
    items = sealed_pool(covenant, token, now, 4)
    program = tmp_path / "ketenpost_next.py"
    program.write_text(NEW_VERSION_SCRIPT)
    url = store_url(pg)
    # PYTHONPATH: the script runs from tmp_path, and must import this checkout.
    env = {"PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    old = Replica(covenant.gateway_config, url, log=tmp_path / "old.log")
    new = Replica(covenant.gateway_config, url, log=tmp_path / "new.log", program=program, env=env)
    old.migrate()
    old.start()
    try:
        await old.wait_ready()
        await register(covenant, old, token)
        # The new version refuses the old schema until its migration has run…
        refused = new.ketenpost("audit", "verify")
        assert refused.returncode == 1
        assert "run `ketenpost store migrate` first" in refused.stderr
        extra = new.migrate_dry_run()
        assert extra == [f"{len(PENDING) + 1:04d} test: expand only (nullable column, new table)"]
        new.migrate()
        # …which the old version, still serving, does not try to undo.
        assert old.migrate_dry_run() == []
        assert new.migrate_dry_run() == []
        load = Load(covenant, iter([]))
        async with load.client(SENDER, old) as police:
            assert (await police.submit(items[0].envelope)).first_time
        # An old replica (re)started during the rollout opens the newer schema too.
        assert old.stop() == 0
        old.start()
        new.start()
        await old.wait_ready()
        await new.wait_ready()
        async with (
            load.client(SENDER, old) as police_old,
            load.client(SENDER, new) as police_new,
            load.client(RECIPIENT, old) as halt_old,
            load.client(RECIPIENT, new) as halt_new,
        ):
            # Each version accepts, and each delivers what the other accepted.
            for police, halt, item in (
                (police_old, halt_new, items[0]),
                (police_new, halt_old, items[1]),
                (police_old, halt_old, items[2]),
                (police_new, halt_new, items[3]),
            ):
                assert (await police.submit(item.envelope)).first_time is (item != items[0])
                batch = await halt.inbox(wait_s=3)
                assert [d.message_id for d in batch.deliveries] == [item.message_id]
                opened = open_envelope(
                    batch.deliveries[0].envelope,
                    covenant.directory,
                    recipient=RECIPIENT,
                    encrypt_keys=load.halt_keys,
                    accepted_at=batch.deliveries[0].accepted_at,
                    now=int(time.time()),
                )
                outcome = await halt.send_receipts(
                    receipts=[load.receipt(item.message_id, opened.header_hash, opened.body)]
                )
                assert outcome is not None
            for item in items:
                status = await police_old.message_status(item.message_id)
                assert [r["state"] for r in status["recipients"]] == ["delivered"]
        assert old.stop() == 0
        assert new.stop() == 0
    finally:
        old.stop()
        new.stop()
    assert old.audit_verify() == new.audit_verify()


# -- the rate limit across replicas ----------------------------------------------------------


@dataclass
class RateCase:
    name: str
    # (replica, partner, count) admissions in order, each at the same instant.
    takes: list[tuple[int, str, int]]
    exchanged: bool
    # What a further submission of (replica, partner) gets: 0 = admitted, else Retry-After.
    then: tuple[int, str]
    admitted: bool


RATE_CASES: Final = [
    RateCase("a burst on replica 0 empties replica 1", [(0, "halt", 5)], True, (1, "halt"), False),
    RateCase(
        "split over both replicas", [(0, "halt", 3), (1, "halt", 2)], True, (0, "halt"), False
    ),
    RateCase("another partner is unaffected", [(0, "halt", 5)], True, (1, "cjg"), True),
    RateCase("what was not exchanged is not seen", [(0, "halt", 5)], False, (1, "halt"), True),
]


@pytest.mark.parametrize("case", RATE_CASES, ids=[c.name for c in RATE_CASES])
def test_shared_rate_limiter_arithmetic(case: RateCase) -> None:
    """Two replicas' limiters (rate 1/s, burst 5) wired to each other by hand."""
    at = 1_000.0
    limiters = [SharedRateLimiter(1.0, 5), SharedRateLimiter(1.0, 5)]
    for replica, partner, count in case.takes:
        assert all(limiters[replica].take(partner, at) == 0 for _ in range(count))
    if case.exchanged:
        for sender, receiver in ((0, 1), (1, 0)):
            for partner, count in limiters[sender].drain().items():
                limiters[receiver].debit(partner, count, at)
    replica, partner = case.then
    assert (limiters[replica].take(partner, at) == 0) is case.admitted
    # The debt is paid back by the refill: after burst / rate seconds the partner may send.
    assert limiters[replica].take(partner, at + 5.0) == 0


def test_a_local_rate_limiter_does_not_share() -> None:
    """The per-process limiter (SQLite: one process) has no peers: a second one stays full."""
    at = 1_000.0
    first, second = RateLimiter(1.0, 2), RateLimiter(1.0, 2)
    assert [first.take("halt", at) for _ in range(3)] == [0, 0, 1]
    assert second.take("halt", at) == 0


async def test_rate_limit_holds_per_partner_across_replicas_over_postgres(
    pg: PgSchema, deployment: Deployment
) -> None:
    """Two replicas' stores on one schema and the gateway's own exchange: what replica 1
    admitted reaches replica 2 over PostgreSQL, and replica 2 refuses the partner."""
    await PostgresStore.migrate(pg.url, server_settings=pg.server_settings)
    key = load_ed25519_key(deployment.root / "gateway" / "sign.key", KeyUse.SIGN)
    signer = GatewaySigner(key, "ketenpost.test/gateway")
    stores = [
        PostgresStore(pg.url, signer, audit_leaf_hash, server_settings=pg.server_settings)
        for _ in range(2)
    ]
    clock = ManualClock(1_000)
    limiters = [SharedRateLimiter(0.001, 5) for _ in stores]
    exchanges = [
        RateExchange(lim, st, clock.monotonic) for lim, st in zip(limiters, stores, strict=True)
    ]
    for store in stores:
        await store.open()
    try:
        for store in stores:
            await store.wait_listening(10)
        at = clock.monotonic()
        assert [limiters[0].take("halt", at) for _ in range(5)] == [0] * 5
        await exchanges[0].send()
        await asyncio.wait_for(exchanges[1].debited.wait(), 10)
        # Replica 2 admitted nothing itself, yet the partner's burst is spent.
        assert limiters[1].take("halt", at) > 0
        assert limiters[1].take("cjg", at) == 0
        await exchanges[1].send()
        await asyncio.wait_for(exchanges[0].debited.wait(), 10)
        # Replica 1's own message reached its listener first (notifications arrive in commit
        # order) and was ignored: its bucket is empty (Retry-After 1 / rate), not overdrawn.
        assert limiters[0].take("halt", at) == 1_000
        # Replica 2 admitted one for cjg: four are left on replica 1.
        assert [limiters[0].take("cjg", at) for _ in range(5)] == [0, 0, 0, 0, 1_000]
    finally:
        for store in stores:
            await store.close()


def test_a_password_in_the_store_url_is_refused_and_never_echoed(deployment: Deployment) -> None:
    """The password is ``store.password`` (``KETENPOST_STORE__PASSWORD_FILE``) only: a URL
    carrying one, also as a query parameter, is a configuration error that does not quote it."""
    url = "postgresql://ketenpost@127.0.0.1:5432/test?password=hunter2-9f8e&search_path=x"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ketenpost",
            "store",
            "migrate",
            "--dry-run",
            "--config",
            str(deployment.root / "gateway.toml"),
            "--store",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("KETENPOST_")},
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("ketenpost: error: store.url: ")
    assert "hunter2" not in done.stderr
