"""A real gateway on 127.0.0.1 whose store is the real PostgreSQL (``tests.gateway._pg``).

``start_pg_gateway`` is ``conftest.start_gateway`` with a ``postgresql://`` store in the test's
own schema: two of them on one schema are two replicas of one deployment, each with its own
``ManualClock``, store pool and listener. ``Gw.store`` (a SQLite accessor) must not be used on
them; ``relay_store(gw)`` gives the store.
"""

from __future__ import annotations

import os
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from gateway.app import create_operator_app, create_partner_app
from gateway.clock import ManualClock
from gateway.config import apply_cli_overrides, load_config
from gateway.relay import RelayStore
from gateway.server import build_runtime, tls_files
from gateway.store.postgres import PostgresStore
from keys.tlsidentity import server_context
from tests.gateway._pg import PgSchema
from tests.gateway.conftest import Deployment, Gw


def pg_store_url(target: PgSchema) -> str:
    query = urllib.parse.urlencode(target.server_settings)
    return f"{target.url}?{query}"


async def migrate(target: PgSchema) -> None:
    await PostgresStore.migrate(target.url, server_settings=target.server_settings)


def relay_store(gw: Gw) -> RelayStore:
    return gw.built.runtime.relay.store


async def start_pg_gateway(
    deployment: Deployment, folder: Path, target: PgSchema
) -> AsyncIterator[Gw]:
    """A gateway on ``target``'s schema (migrated by the caller), serving until closed."""

    config = apply_cli_overrides(
        load_config(deployment.root / "gateway.toml", environ={}),
        listen="127.0.0.1:0",
        metrics_listen="127.0.0.1:0",
        store=pg_store_url(target),
        cwd=Path(os.getcwd()),
    )
    clock = ManualClock(int(time.time()))
    built = build_runtime(config, clock=clock)
    built.runtime.sweep_interval_s = 0
    partner = web.AppRunner(create_partner_app(built.runtime), shutdown_timeout=1)
    operator = web.AppRunner(create_operator_app(built.runtime))
    await partner.setup()
    await operator.setup()
    site = web.TCPSite(partner, "127.0.0.1", 0, ssl_context=server_context(tls_files(config)))
    await site.start()
    op_site = web.TCPSite(operator, "127.0.0.1", 0)
    await op_site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    op_port = op_site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    gw = Gw(
        deployment,
        built,
        clock,
        f"https://127.0.0.1:{port}",
        f"http://127.0.0.1:{op_port}",
        folder / "no-sqlite",
    )
    try:
        yield gw
    finally:
        for client in gw.clients:
            await client.close()
        await partner.cleanup()
        await operator.cleanup()
