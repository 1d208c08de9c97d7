"""Per-partner submission rate limit: a token bucket per authenticated partner.

Rules kept here:

* One bucket per partner id (never per IP: TLS names the partner), ``rate_per_s`` tokens a
  second up to ``burst``. A submission takes one token; without one it is refused with
  ``rate_limited`` and told when the next token is due (``Retry-After``, whole seconds, at
  least 1).
* Time is an argument (``now``, monotonic seconds), so tests move it without sleeping.
* The buckets live on the ``RateLimiter`` object the app owns; there is no module state. The
  number of buckets is bounded by the number of partners in the directory.
"""

from __future__ import annotations

import math
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

    def take(self, partner: str, now: float) -> int:
        """Take one token for ``partner`` at ``now``; return 0, or the seconds to wait
        (``Retry-After``) when the bucket is empty (nothing is taken then)."""
        bucket = self._buckets.get(partner)
        if bucket is None:
            bucket = self._buckets[partner] = _Bucket(self._burst, now)
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(self._burst, bucket.tokens + elapsed * self._rate)
        bucket.updated = max(bucket.updated, now)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0
        return max(1, math.ceil((1.0 - bucket.tokens) / self._rate))
