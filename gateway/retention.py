"""Retention at every approach token's deadline: the gateway's sweeper (DESIGN.md "Audit log").

Rules kept here:

* At a token's ``retention_until`` every trace of its subjects goes, in **one** store
  transaction (``Store.apply_retention``): the entry and salt of each audit entry recorded
  under the token (the leaf stays, so the tree and every checkpoint still verify, and without
  its salt a leaf reveals nothing), the message rows with their acceptance receipts (which
  carry entry and salt), deliveries and ciphertext, the sender events of those messages, and
  the signed token with its subjects and its revocation. A **tombstone** of the token row stays
  (id, coordinator, times, token hash; no pseudonym): the id is never registered again, and an
  entry recorded under it after the deadline (a late refusal naming it) is found and deleted by
  the next sweep.
* The same transaction appends a signed ``retention`` entry: decision ``retention``, the token
  id and ``count`` (audit entries deleted), **no subjects**. It is stored without a token id in
  its row, so no sweep ever deletes it: it is the lasting record that deletion happened.
* What was deleted is counted in ``ketenpost_retention_deleted_total{kind}``; labels never name
  a token.
* A SQLite store runs with ``secure_delete`` (deleted content is zeroed in the file), and after
  a sweep that deleted something the WAL is checkpointed and truncated (``scrub_files``), so no
  old page image of the deleted data stays in the WAL either.
* Every time comes from the injected clock (house rule 5); ``sweep`` is what a periodic task
  and a test call.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import Final, Protocol

from gateway.clock import Clock
from gateway.metrics import GatewayMetrics
from gateway.protocol.auditentry import AuditDecision, AuditEntry, seal_entry
from gateway.store.base import RETENTION_BATCH, AuditRecord, Retained, RetentionAudit
from gateway.store.errors import StoreError

logger = logging.getLogger("gateway.retention")

# Real seconds between sweeps of a running gateway: retention deadlines are days apart, an
# hour late is within any reading of "at the deadline".
RETENTION_INTERVAL_S: Final = 3600.0


class RetentionStore(Protocol):
    """What the sweeper needs of a store (``SqliteStore``, ``PostgresStore``)."""

    async def apply_retention(self, now: int, audit_for: RetentionAudit) -> list[Retained]: ...


def retention_record(token_id: str, entries: int, now: int) -> AuditRecord:
    """The signed retention event: token id and count, no subjects; ``token_id=None`` in the
    row, so no sweep deletes it."""
    sealed = seal_entry(
        AuditEntry(time=now, decision=AuditDecision.RETENTION, token_id=token_id, count=entries)
    )
    return AuditRecord(entry=sealed.entry_bytes, salt=sealed.salt, token_id=None)


class RetentionSweeper:
    """Applies retention for one gateway store. ``sweep`` once, or ``run`` periodically."""

    def __init__(self, store: RetentionStore, clock: Clock, metrics: GatewayMetrics) -> None:
        self.store = store
        self.clock = clock
        self.metrics = metrics

    async def sweep(self) -> list[Retained]:
        """Apply every retention deadline passed at the clock's ``now``. Raises ``StoreError``
        (counted as a store error); what committed before stays done."""
        done: list[Retained] = []
        while True:
            now = self.clock.now()

            def audit_for(token_id: str, entries: int, now: int = now) -> AuditRecord:
                return retention_record(token_id, entries, now)

            try:
                retained = await self.store.apply_retention(now, audit_for)
            except StoreError:
                self.metrics.store_error("apply_retention")
                raise
            for r in retained:
                self.metrics.retention_deleted("audit_entry", r.entries)
                self.metrics.retention_deleted("message", r.messages)
                self.metrics.retention_deleted("sender_event", r.events)
                self.metrics.retention_deleted("token", r.token)
            if retained:
                # Counts only: a token id in the log would outlive the data it names.
                logger.info("retention_applied", extra={"count": len(retained)})
            done.extend(retained)
            if len(retained) < RETENTION_BATCH:
                break
        if done:
            await self._scrub_files()
        return done

    async def _scrub_files(self) -> None:
        scrub = getattr(self.store, "scrub_files", None)
        if scrub is None:  # PostgreSQL: VACUUM is the database's own (docs/privacy.md)
            return
        try:
            await asyncio.to_thread(scrub)
        except sqlite3.Error:  # busy: the pages are zeroed already; the WAL is reused soon
            logger.warning("retention_scrub_deferred")

    async def run(self, interval_s: float = RETENTION_INTERVAL_S) -> None:
        """Sweep every ``interval_s`` real seconds until cancelled; a failed sweep is logged
        and retried at the next interval."""
        while True:
            try:
                await self.sweep()
            except Exception:  # the process stays up; the next interval tries again
                logger.exception("retention_failed")
            await asyncio.sleep(interval_s)


async def run_retention(store: RetentionStore, clock: Clock, metrics: GatewayMetrics) -> None:
    """The periodic task for ``gateway.server`` / ``gateway.app``: one line to wire,
    ``asyncio.create_task(run_retention(store, clock, metrics))``."""
    await RetentionSweeper(store, clock, metrics).run()
