"""What the fakes of REST partner systems share (private to ``adapters.testing``): serving on
127.0.0.1, a switch that takes the system down, and idempotent endpoints.

The fakes behave as the real systems do at the HTTP boundary; the behaviour here is the part
every such system shows the same way:

* ``LocalServer``: ``async with`` serves the fake's aiohttp app on 127.0.0.1 (port 0: any free
  port, so parallel tests never collide) and stops it, closing connections within a second.
* ``down_switch``: ``"unavailable"`` answers ``503`` to everything; ``"dropped"`` closes the
  connection without an answer (what a crashed system or a dropped route looks like).
* ``replay``/``keep``: an endpoint deduplicated on ``Idempotency-Key`` answers a repeated key
  with the first answer (``200`` where the first was ``201``: nothing new was made) and stores
  nothing new; ``take_refusal`` is such an endpoint for refusal reports.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal, Self

from aiohttp import web
from aiohttp.typedefs import Middleware

DownMode = Literal["unavailable", "dropped"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# A first answer, kept per Idempotency-Key: (status, JSON body).
Answers = dict[str, tuple[int, dict[str, Any]]]


class LocalServer:
    """Serves an aiohttp app for a fake; subclasses build the app in ``start``."""

    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        raise NotImplementedError

    async def _serve(self, app: web.Application, host: str, port: int) -> tuple[str, int]:
        """Serve ``app`` on ``host:port``; the address bound (the real port for port 0)."""
        self._runner = web.AppRunner(app, shutdown_timeout=1)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound = self._runner.addresses[0]
        return str(bound[0]), int(bound[1])

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def down_switch(mode: Callable[[], DownMode | None]) -> Middleware:
    """A middleware answering as a system that is down while ``mode()`` says so (read on
    every request, so a test flips the switch between calls)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        down = mode()
        if down == "unavailable":
            return web.json_response({"reden": "onderhoud"}, status=503)
        if down == "dropped" and request.transport is not None:
            request.transport.close()
            return web.Response(status=503)  # never reaches the client
        return await handler(request)

    return middleware


def missing_key() -> web.Response:
    return web.json_response(
        {"reden": "schema_invalid", "toelichting": "Idempotency-Key ontbreekt"}, status=400
    )


def replay(answers: Answers, key: str) -> web.Response | None:
    """The first answer to ``key`` again, or ``None`` when ``key`` is new."""
    if key not in answers:
        return None
    status, first = answers[key]
    return web.json_response(first, status=200 if status == 201 else status)


def keep(answers: Answers, key: str, status: int, answer: dict[str, Any]) -> web.Response:
    """Answer ``key`` for the first time, and remember the answer for repeats."""
    answers[key] = (status, answer)
    return web.json_response(answer, status=status)


async def take_refusal(
    request: web.Request, keys: set[str], stored: list[dict[str, Any]]
) -> web.Response:
    """Store a refusal report once per ``Idempotency-Key``; ``201`` for a repeat too."""
    key = request.headers.get("Idempotency-Key", "")
    if not key:
        return web.json_response({"reden": "Idempotency-Key ontbreekt"}, status=400)
    if key not in keys:
        keys.add(key)
        stored.append(await request.json())
    return web.json_response({"status": "geregistreerd"}, status=201)


def koppelingen(
    document: dict[str, Any], match: Callable[[dict[str, Any]], str | None], local_key: str
) -> list[dict[str, str]]:
    """The links a system answers a notice with: pseudonym → its own id (``local_key``), for
    the persons of the notice its ``match`` finds."""
    return [
        {"pseudoniem": p["pseudoniem"], local_key: number}
        for p in document.get("personen", [])
        if (number := match(p)) is not None
    ]
