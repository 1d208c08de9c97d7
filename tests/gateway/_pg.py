"""Test helpers for the real PostgreSQL on 127.0.0.1:5432 (user ``postgres``, database ``test``).

Every test gets a schema of its own, created before and dropped (with everything in it) after,
and reaches it through ``server_settings={"search_path": schema}``: runs never see each other's
rows, and nothing is left behind. When the server cannot be reached the test is skipped with the
reason — except under ``CI=true``, where a missing PostgreSQL fails it: CI must never go green
on the SQLite half alone.

Override the server with ``KETENPOST_TEST_PG_URL`` (no password in it; trust auth here).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
import pytest

PG_URL = os.environ.get("KETENPOST_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass(frozen=True)
class PgSchema:
    """Where a test's stores live: the server URL and the settings selecting its schema."""

    url: str
    schema: str

    @property
    def server_settings(self) -> dict[str, str]:
        return {"search_path": self.schema, "application_name": f"ketenpost-test-{self.schema}"}

    async def connect(self) -> asyncpg.Connection[asyncpg.Record]:
        return await asyncpg.connect(self.url, server_settings=self.server_settings, timeout=5)


async def _admin() -> asyncpg.Connection[asyncpg.Record]:
    try:
        return await asyncpg.connect(PG_URL, timeout=5)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        reason = f"PostgreSQL at {PG_URL} is not reachable ({type(exc).__name__}: {exc})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; under CI=true the PostgreSQL tests are required")
        pytest.skip(
            f"{reason}; start it with `pg_ctlcluster --skip-systemctl-redirect "
            "$(ls /etc/postgresql) main start`"
        )


@asynccontextmanager
async def pg_schema() -> AsyncIterator[PgSchema]:
    """A fresh, empty schema for one test; dropped afterwards."""
    admin = await _admin()
    schema = f"kp_test_{secrets.token_hex(6)}"
    try:
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        yield PgSchema(PG_URL, schema)
    finally:
        # Connections a test left (a killed store) would block the drop on their locks.
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = $1 AND pid <> pg_backend_pid()",
            f"ketenpost-test-{schema}",
        )
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


async def terminate_backends(target: PgSchema) -> int:
    """Kill every server connection of the test's stores (as a server restart would)."""
    admin = await _admin()
    try:
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = $1",
            f"ketenpost-test-{target.schema}",
        )
        return int(killed)
    finally:
        await admin.close()
