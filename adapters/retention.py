"""Retention in an adapter: at each approach token's deadline, nothing of its subjects stays.

Rules kept here:

* The deadline is the token's own ``retention_until`` (signed by the coordinator), kept beside
  the token in ``adapter.db`` when it is stored; the sweep runs every
  ``EngineSettings.retention_interval_s`` with the engine's injected clock.
* ``AdapterStore.apply_retention`` deletes, in one transaction, the approach's outbox rows
  (bodies, sealed envelopes, acceptance receipts with their audit entries and salts), their
  outcomes, the processed-id rows with their signed answers, the pseudonym ↔ local id mapping,
  the processing-log records and the token with its private part (the approach notice's
  opening). ``secure_delete`` zeroes the deleted content in the file and the WAL is truncated
  after a sweep, so nothing of the subject lingers in free pages.
* Counted per table in ``ketenpost_adapter_retention_deleted_total{kind}``; never a token id.
* Kept: checkpoints (hashes and sizes), alarms, the failed place (records the partner system
  handed over that never became a message; the partner system's own retention covers them).
"""

from __future__ import annotations

import logging

from adapters.metrics import AdapterMetrics
from adapters.outbox import AdapterStore, RetainedCounts

logger = logging.getLogger("adapters.retention")


def apply_retention(store: AdapterStore, metrics: AdapterMetrics, now: int) -> RetainedCounts:
    """Apply every retention deadline passed at ``now`` and count what went."""
    counts = store.apply_retention(now)
    for kind, count in counts.items():
        if count:
            metrics.retention_deleted(kind, count)
    if counts.tokens:
        logger.info("retention_applied", extra={"count": counts.tokens})
    return counts
