"""Per-partner submission rate limit: a token bucket per authenticated partner.

Rules kept here:

* One bucket per partner id (never per IP: TLS names the partner), ``rate_per_s`` tokens a
  second up to ``burst``. A submission takes one token; without one it is refused with
  ``rate_limited`` and told when the next token is due (``Retry-After``, whole seconds, at
  least 1).
* Time is an argument (``now``, monotonic seconds), so tests move it without sleeping.
* The buckets live on the ``RateLimiter`` object the app owns; there is no module state. The
  number of buckets is bounded by the number of partners in the directory.
* **Across replicas** (docs/adr/0005-rate-limit-scope.md) the limit is per partner, not per
  replica: ``SharedRateLimiter`` counts what it took since it last told its peers
  (``drain``), and subtracts what its peers took (``debit``), so every replica's bucket runs
  down with the partner's submissions to all of them. The check itself stays local and
  synchronous (no database round trip per submission); the peers' takes arrive within one
  exchange interval. A bucket may therefore go below zero: the partner then waits until the
  overshoot is paid back, so the sustained rate holds across replicas, and a burst sprayed
  over ``n`` replicas faster than one exchange interval exceeds ``burst`` by at most what the
  other replicas admitted in that interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets keyed by partner id."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self._rate = rate_per_s
        self._burst = float(burst)
        self._buckets: dict[str, _Bucket] = {}

    def _refilled(self, partner: str, now: float) -> _Bucket:
        bucket = self._buckets.get(partner)
        if bucket is None:
            bucket = self._buckets[partner] = _Bucket(self._burst, now)
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(self._burst, bucket.tokens + elapsed * self._rate)
        bucket.updated = max(bucket.updated, now)
        return bucket

    def take(self, partner: str, now: float) -> int:
        """Take one token for ``partner`` at ``now``; return 0, or the seconds to wait
        (``Retry-After``) when the bucket is empty (nothing is taken then)."""
        bucket = self._refilled(partner, now)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0
        return max(1, math.ceil((1.0 - bucket.tokens) / self._rate))


class SharedRateLimiter(RateLimiter):
    """A ``RateLimiter`` whose buckets also run down with what peer replicas admitted.

    The transport is the caller's (``gateway.server`` sends ``drain()`` to the peers over the
    store and feeds what they sent to ``debit``); this class only keeps the arithmetic.
    """

    def __init__(self, rate_per_s: float, burst: int) -> None:
        super().__init__(rate_per_s, burst)
        self._taken: dict[str, int] = {}

    def take(self, partner: str, now: float) -> int:
        wait = super().take(partner, now)
        if wait == 0:
            self._taken[partner] = self._taken.get(partner, 0) + 1
        return wait

    def drain(self) -> dict[str, int]:
        """What this replica admitted per partner since the last ``drain``; counts restart."""
        taken, self._taken = self._taken, {}
        return taken

    def restore(self, taken: Mapping[str, int]) -> None:
        """Put back a ``drain`` that could not be sent, to be sent with the next one."""
        for partner, count in taken.items():
            self._taken[partner] = self._taken.get(partner, 0) + count

    def debit(self, partner: str, count: int, now: float) -> None:
        """Take ``count`` tokens a peer replica admitted for ``partner`` (the bucket may go
        below zero: the overshoot is paid back before the next admission)."""
        if count > 0:
            self._refilled(partner, now).tokens -= count
