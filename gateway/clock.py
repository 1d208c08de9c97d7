"""Clocks: the one place the relay service reads the time, so tests can set it.

Rules kept here (house rule 5):

* Every time check in the relay takes ``now`` as an argument; only the service edges (request
  handlers, sweepers) ask a ``Clock`` for it, once per operation, and pass it down.
* ``now()`` is integer Unix seconds (the wire's unit); ``monotonic()`` is for rate limiting and
  long-poll deadlines, which must not jump when the wall clock is set.
* ``ManualClock`` is for tests: time moves only when the test moves it; nothing sleeps.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> int:
        """Integer Unix seconds (UTC)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> int:
        return int(time.time())

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told to (``advance``/``set``): tests never sleep."""

    def __init__(self, now: int) -> None:
        self._now = now
        self._mono = 0.0

    def now(self) -> int:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: int) -> None:
        self._now += seconds
        self._mono += seconds

    def set(self, now: int) -> None:
        if now < self._now:
            # Only the wall clock may go back; the monotonic one stays where it is.
            self._now = now
            return
        self._mono += now - self._now
        self._now = now
