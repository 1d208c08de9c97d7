"""Crash safety: ``ketenpost serve`` killed with SIGKILL at random moments under load, restarted.

DESIGN.md "Delivery: nothing lost, nothing twice". A real gateway subprocess on a fresh SQLite
file; senders submit pre-sealed envelopes police -> halt continuously and retry what was not
acknowledged with the same bytes; recipients long-poll, open every envelope and send signed
delivery receipts. A seeded random schedule kills the gateway with SIGKILL and restarts it on
the same store. At the end:

* every message that got a 202 was delivered and opened by the recipient;
* no message was delivered again by a poll that began after its delivery receipt had been
  accepted (a redelivery before that is the lease doing its job, and allowed);
* an id submitted again after a restart gets the first receipt, byte for byte;
* every acceptance receipt verifies: the gateway's signature, its checkpoint's signature, and
  the inclusion proof against that checkpoint's root, with the leaf as stored;
* ``ketenpost audit verify`` exits 0, and the gateway stops cleanly on SIGTERM.

Bounded by counts and deadlines (about 20-30 s here); no timing is asserted.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from adapters.client import GatewayClient, GatewayUnreachableError, RefusedError, SubmitReceipt
from gateway.bench import (
    RECIPIENT,
    SENDER,
    Covenant,
    GatewayProcess,
    RegisteredToken,
    Sealed,
    run_ketenpost,
)
from gateway.config import load_config
from gateway.protocol.checkpoint import verify_checkpoint
from gateway.protocol.envelope import open_envelope
from gateway.protocol.merkle import InclusionProof, verify_inclusion
from gateway.protocol.receipts import (
    DeliveryReceipt,
    sign_delivery_receipt,
    verify_acceptance_receipt,
)
from gateway.signer import decode_signed_object, encode_signed_object
from tests.gateway.conftest import Deployment

SEED = 20260529
KILLS = 4
SENDERS = 6
POLLERS = 2
POOL = 4_000
# Load between kills, in seconds (drawn from the seeded generator).
RUN_BETWEEN_KILLS_S = (0.6, 2.2)
# After the last restart: more load, then the drain.
LOAD_AFTER_LAST_KILL_S = 1.0
DRAIN_DEADLINE_S = 20.0
QUIET_S = 2.5
TEST_DEADLINE_S = 90.0
# A short lease, so what was leased when the gateway died comes back quickly.
GATEWAY_ENV = {
    "KETENPOST_LIMITS__LEASE_S": "2",
    "KETENPOST_LIMITS__RATE_PER_S": "1000000",
    "KETENPOST_LIMITS__RATE_BURST": "1000000",
    "KETENPOST_LOG__LEVEL": "warning",
}
# What a client sees while the gateway is down or dies mid-request.
DOWN = (GatewayUnreachableError, aiohttp.ClientError, TimeoutError, ConnectionError)


@dataclass
class Ledger:
    """What the partners saw; times are the test's ``time.monotonic()``."""

    receipts: dict[str, bytes] = field(default_factory=dict)
    retried: int = 0
    # Retries whose first attempt had committed before the gateway died (the first receipt).
    retried_already_accepted: int = 0
    resubmitted_after_restart: int = 0
    refused: list[str] = field(default_factory=list)
    opened: set[str] = field(default_factory=set)
    # (message id, when the poll that delivered it was sent)
    deliveries: list[tuple[str, float]] = field(default_factory=list)
    receipt_accepted_at: dict[str, float] = field(default_factory=dict)
    kills: list[float] = field(default_factory=list)
    # Submissions in flight at each kill: the kills land under load.
    in_flight_at_kills: list[int] = field(default_factory=list)
    in_flight: int = 0
    last_delivery_at: float = 0.0


class Load:
    def __init__(
        self, covenant: Covenant, gateway: GatewayProcess, pool: Iterator[Sealed], now: int
    ) -> None:
        self.covenant = covenant
        self.gateway = gateway
        self.pool = pool
        self.now = now
        self.ledger = Ledger()
        self.submitting = True
        self.receiving = True
        self.deadline = time.monotonic() + TEST_DEADLINE_S
        self.by_id: dict[str, Sealed] = {}
        self.halt_sign = covenant.sign_key(RECIPIENT)
        halt_encrypt = covenant.encrypt_key(RECIPIENT)
        self.halt_keys = {halt_encrypt.kid: halt_encrypt}

    def client(self, partner: str) -> GatewayClient:
        return GatewayClient(
            self.gateway.url, self.covenant.client_ssl(partner), attempts=1, timeout_s=5
        )

    def _check_deadline(self) -> None:
        if time.monotonic() > self.deadline:
            raise AssertionError("the crash test ran past its deadline")

    async def submit_until_acknowledged(self, client: GatewayClient, item: Sealed) -> None:
        """Submit ``item`` until a 202; after a failure the same bytes again."""
        attempt = 0
        while True:
            self._check_deadline()
            try:
                accepted = await self._submit_once(client, item)
            except DOWN:
                attempt += 1
                await asyncio.sleep(0.05)
                continue
            except RefusedError as refused:
                if refused.transient:
                    attempt += 1
                    await asyncio.sleep(0.05)
                    continue
                self.ledger.refused.append(f"{item.message_id}: {refused}")
                return
            if attempt:
                self.ledger.retried += 1
                self.ledger.retried_already_accepted += not accepted.first_time
            first = self.ledger.receipts.setdefault(item.message_id, accepted.receipt)
            assert first == accepted.receipt, "a second 202 for an id carried another receipt"
            return

    async def _submit_once(self, client: GatewayClient, item: Sealed) -> SubmitReceipt:
        self.ledger.in_flight += 1
        try:
            return await client.submit(item.envelope)
        finally:
            self.ledger.in_flight -= 1

    async def sender(self) -> None:
        async with self.client(SENDER) as client:
            while self.submitting:
                item = next(self.pool, None)
                if item is None:
                    return
                self.by_id[item.message_id] = item
                await self.submit_until_acknowledged(client, item)

    async def recipient(self) -> None:
        async with self.client(RECIPIENT) as client:
            while self.receiving:
                self._check_deadline()
                sent_at = time.monotonic()
                try:
                    batch = await client.inbox(wait_s=0.5, limit=50)
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
                        self._receipt(delivery.message_id, opened.header_hash, opened.body)
                    )
                if not receipts:
                    continue
                try:
                    await client.send_receipts(receipts=receipts)
                except (*DOWN, RefusedError):
                    # Committed or not: if not, the lease brings the messages back.
                    continue
                accepted_at = time.monotonic()
                for message_id in ids:
                    self.ledger.receipt_accepted_at.setdefault(message_id, accepted_at)

    def _receipt(self, message_id: str, header_hash: bytes, body: bytes) -> bytes:
        receipt = DeliveryReceipt(
            message_id=message_id,
            header_hash=header_hash.hex(),
            recipient=RECIPIENT,
            received_at=int(time.time()),
            plaintext_hash=hashlib.sha256(body).hexdigest(),
        )
        return encode_signed_object(sign_delivery_receipt(receipt, self.halt_sign))

    async def resubmit_some(self, rng: random.Random) -> None:
        """After a restart: ids already acknowledged get their first receipt again."""
        done = sorted(self.ledger.receipts)
        async with self.client(SENDER) as client:
            for message_id in rng.sample(done, min(3, len(done))):
                again = await client.submit(self.by_id[message_id].envelope)
                assert not again.first_time
                assert again.receipt == self.ledger.receipts[message_id]
                self.ledger.resubmitted_after_restart += 1

    async def killer(self, rng: random.Random) -> None:
        for _ in range(KILLS):
            await asyncio.sleep(rng.uniform(*RUN_BETWEEN_KILLS_S))
            self.ledger.in_flight_at_kills.append(self.ledger.in_flight)
            self.gateway.kill()
            self.ledger.kills.append(time.monotonic())
            self.gateway.start()
            await self.gateway.wait_ready()
            await self.resubmit_some(rng)
        await asyncio.sleep(LOAD_AFTER_LAST_KILL_S)

    async def drain(self) -> None:
        """Until every acknowledged message was opened and deliveries have been quiet for
        longer than a lease (so nothing leased and unreceipted is still on its way)."""
        deadline = time.monotonic() + DRAIN_DEADLINE_S
        while time.monotonic() < deadline:
            quiet = time.monotonic() - self.ledger.last_delivery_at
            if set(self.ledger.receipts) <= self.ledger.opened and quiet > QUIET_S:
                return
            await asyncio.sleep(0.1)


def _pool(covenant: Covenant, token: RegisteredToken, now: int) -> Iterator[Sealed]:
    sealer = covenant.sealer(token, now=now)
    return iter([next(sealer) for _ in range(POOL)])


async def _register(load: Load, token: RegisteredToken) -> None:
    async with load.client("gemeente-velsen") as velsen:
        await velsen.register_token(token.body)


async def _undelivered(load: Load, ids: list[str]) -> list[str]:
    """Of ``ids``, those whose state at the gateway is not ``delivered``."""
    out = []
    async with load.client(SENDER) as police:
        for message_id in ids:
            status = await police.message_status(message_id)
            if [r["state"] for r in status["recipients"]] != ["delivered"]:
                out.append(message_id)
    return out


def _verify_receipts(covenant: Covenant, config: Path, db: Path, ledger: Ledger, now: int) -> None:
    origin = load_config(config, environ={}).gateway.origin
    gateway_key = covenant.directory.gateway.keys[0].public
    with sqlite3.connect(db) as conn:
        leaves = {
            int(i): bytes(h) for i, h in conn.execute("SELECT idx, leaf_hash FROM audit_leaves")
        }
    for message_id, raw in ledger.receipts.items():
        receipt = verify_acceptance_receipt(
            decode_signed_object(raw), covenant.directory, now=now, message_id=message_id
        )
        checkpoint = verify_checkpoint(receipt.checkpoint, origin, origin, gateway_key)
        assert checkpoint.size == receipt.tree_size
        verify_inclusion(
            leaves[receipt.leaf_index],
            InclusionProof(
                leaf_index=receipt.leaf_index,
                tree_size=receipt.tree_size,
                hashes=receipt.inclusion_proof,
            ),
            checkpoint.root_hash,
        )


@pytest.mark.slow
async def test_sigkill_under_load_loses_nothing_and_delivers_nothing_twice(
    deployment: Deployment, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    now = int(time.time())
    covenant = Covenant(deployment.root, now=now)
    token = covenant.issue_token(now=now)
    db = tmp_path / "ketenpost.db"
    gateway = GatewayProcess(
        covenant.gateway_config, db, env=GATEWAY_ENV, log=tmp_path / "gateway.log"
    )
    gateway.migrate()
    gateway.start()
    rng = random.Random(SEED)
    load = Load(covenant, gateway, _pool(covenant, token, now), now)
    try:
        await gateway.wait_ready()
        await _register(load, token)
        senders = [asyncio.create_task(load.sender()) for _ in range(SENDERS)]
        recipients = [asyncio.create_task(load.recipient()) for _ in range(POLLERS)]
        await load.killer(rng)
        load.submitting = False
        # Every sender finishes the submission it holds: un-acknowledged ones are retried.
        await asyncio.gather(*senders)
        await load.drain()
        load.receiving = False
        await asyncio.gather(*recipients)
        ledger = load.ledger
        unreceipted = sorted(set(ledger.receipts) - set(ledger.receipt_accepted_at))
        still_pending = await _undelivered(load, unreceipted)
    finally:
        exit_code = gateway.stop()
    counts = {
        "accepted": len(ledger.receipts),
        "delivered": len(ledger.opened),
        "deliveries": len(ledger.deliveries),
        "redeliveries": len(ledger.deliveries) - len(ledger.opened),
        "kills": len(ledger.kills),
        "submissions_in_flight_at_kills": ledger.in_flight_at_kills,
        "retried_after_failure": ledger.retried,
        "retried_already_accepted": ledger.retried_already_accepted,
        "resubmitted_after_restart": ledger.resubmitted_after_restart,
        "gateway_starts": gateway.starts,
    }
    print(f"crash test: {counts}")
    for name, value in counts.items():
        record_property(name, value)

    assert exit_code == 0
    assert ledger.refused == []
    assert len(ledger.kills) == KILLS
    assert all(n > 0 for n in ledger.in_flight_at_kills), "a kill landed without load"
    assert ledger.receipts, "nothing was accepted"
    # Nothing lost: every 202 was delivered and opened, and its delivery ended.
    assert sorted(set(ledger.receipts) - ledger.opened) == []
    assert still_pending == []
    # Nothing twice after the receipt: no poll sent after the receipt was accepted delivered it.
    late = [
        (message_id, sent_at - ledger.receipt_accepted_at[message_id])
        for message_id, sent_at in ledger.deliveries
        if message_id in ledger.receipt_accepted_at
        and sent_at > ledger.receipt_accepted_at[message_id]
    ]
    assert late == []
    # Nothing delivered that was never submitted by the senders.
    assert ledger.opened <= set(load.by_id)
    _verify_receipts(covenant, covenant.gateway_config, db, ledger, int(time.time()))
    verified = run_ketenpost(
        "audit", "verify", "--config", str(covenant.gateway_config), "--store", gateway.store_url
    )
    assert '"ok": true' in verified
