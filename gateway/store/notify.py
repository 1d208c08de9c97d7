"""Wake long-polls in this process when something arrives for a party.

A waiter that misses a notification still returns at its timeout, so a lost wake-up costs
latency, never a message (the poll then claims what is there).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable


class Notifier:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def notify(self, parties: Iterable[str]) -> None:
        for party in parties:
            event = self._events.pop(party, None)
            if event is not None:
                event.set()

    async def wait(self, party: str, wait_s: float) -> None:
        event = self._events.get(party)
        if event is None:
            event = self._events[party] = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), wait_s)
