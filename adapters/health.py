"""The adapter's local operator listener: ``/metrics`` and ``/healthz`` over plain HTTP.

Rules kept here:

* Bind it to 127.0.0.1 (or a management network): it tells how the adapter is doing, never
  what it carries — no message ids, pseudonyms or bodies appear (metrics' label rules).
* ``/healthz`` is 200 ``{"status": "ok"}`` while no alarm is open and 503 with the open alarms
  (bad receipt, witness inconsistency, refused or stale directory, …) otherwise. An alarm is a
  finding a person must look at; restarting the adapter does not clear it, so do not wire
  ``/healthz`` to an orchestrator's restart-on-failure liveness probe.
"""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web

from adapters.metrics import CONTENT_TYPE, AdapterMetrics


class HealthSource(Protocol):
    metrics: AdapterMetrics

    def health(self) -> dict[str, Any]: ...


SOURCE = web.AppKey("health_source", HealthSource)


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[SOURCE].metrics.exposition()
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


async def _healthz(request: web.Request) -> web.Response:
    state = request.app[SOURCE].health()
    return web.json_response(state, status=200 if state["status"] == "ok" else 503)


def create_health_app(source: HealthSource) -> web.Application:
    app = web.Application()
    app[SOURCE] = source
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    return app


async def serve_health(source: HealthSource, listen: str | None) -> web.AppRunner | None:
    """Start the listener on ``host:port`` (port 0: any free port); ``None``: no listener."""
    if not listen:
        return None
    host, _, port = listen.rpartition(":")
    runner = web.AppRunner(create_health_app(source))
    await runner.setup()
    await web.TCPSite(runner, host or "127.0.0.1", int(port)).start()
    return runner
