"""The adapter's step loop: an expected failure (``AdapterError``: a partner system or the
gateway not answering) is one warning line per distinct problem, without a traceback, and one
``step_recovered`` when it passes; a bug (any other exception) keeps its traceback each time."""

from __future__ import annotations

import asyncio
import logging

import pytest

from adapters.base import DestinationUnavailableError
from tests.adapters.conftest import Net


def step_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() in {"step_failed", "step_recovered"}]


async def run_loop(net: Net, outcomes: list[Exception | None]) -> None:
    """Run the adapter's loop over a step that raises or passes as ``outcomes`` say, then
    stops."""
    adapter = await net.adapter("halt")
    stop = asyncio.Event()
    todo = list(outcomes)

    async def pull_from_system() -> None:
        outcome = todo.pop(0)
        if not todo:
            stop.set()
        if outcome is not None:
            raise outcome

    await adapter._loop(pull_from_system, 0.0, stop)


async def test_an_outage_is_one_warning_and_one_recovery(
    net: Net, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(asyncio, "wait_for", _no_wait)
    down = DestinationUnavailableError("CJG events feed unreachable: connection refused")
    other = DestinationUnavailableError("CJG events feed answered 503")
    with caplog.at_level(logging.INFO, logger="adapters.engine"):
        await run_loop(net, [down, down, down, other, other, None, None])
    lines = [
        (r.levelname, r.getMessage(), getattr(r, "detail", None)) for r in step_records(caplog)
    ]
    assert lines == [
        ("WARNING", "step_failed", f"DestinationUnavailableError: {down}"),
        ("WARNING", "step_failed", f"DestinationUnavailableError: {other}"),
        ("INFO", "step_recovered", None),
    ]
    assert all(r.exc_info is None for r in step_records(caplog))
    assert {getattr(r, "step", None) for r in step_records(caplog)} == {"pull_from_system"}


async def test_a_bug_keeps_its_traceback_every_time(
    net: Net, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(asyncio, "wait_for", _no_wait)
    with caplog.at_level(logging.INFO, logger="adapters.engine"):
        await run_loop(net, [KeyError("zaak"), KeyError("zaak"), None])
    failed = [r for r in step_records(caplog) if r.getMessage() == "step_failed"]
    assert len(failed) == 2
    assert all(r.exc_info is not None and r.exc_info[0] is KeyError for r in failed)


async def _no_wait(awaitable: object, _delay: float | None) -> None:
    """``asyncio.wait_for`` without the back-off's wait (the loop's delay is not under test)."""
    if asyncio.iscoroutine(awaitable):
        awaitable.close()
