"""The welfare adapter before the welfare organisation has created its database or tables.

What a partner developer sees first: ``welzijn.db`` not there yet, or there without the three
Ketenpost tables. The adapter must say so in one line naming what to create (``DDL_SQLITE`` /
``DDL_POSTGRESQL``), once per distinct problem rather than at every retry, never with a
traceback, keep retrying, and carry on by itself once the tables are there.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from adapters.base import PullBatch, SystemClock
from adapters.config import AdapterConfig, load_partner_dir
from adapters.engine import Adapter, EngineSettings
from adapters.partners.welfare import (
    CLIENT_TABLE,
    INBOX_TABLE,
    OUTBOX_TABLE,
    DatabaseProblem,
    WelfareDatabaseError,
    WelfareOutboxSource,
    create_transport,
)
from adapters.registry import default_registry
from adapters.testing.welfare_fake import WelfareCaseSystem
from tests.adapters._partner_helpers_rest import write_system
from tests.adapters.conftest import Net
from tests.gateway._pg import pg_schema

WELFARE = "welzijn-ijmond"
PROBLEM = "welfare_database_problem"
RETRIES = 4


def _problems(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == PROBLEM]


def _no_database(folder: Path) -> None:
    """Nothing: the welfare organisation has not created the file yet."""


def _empty_database(folder: Path) -> None:
    """A file holding only the case system's own tables."""
    with sqlite3.connect(folder / "welzijn.db") as conn:
        conn.execute("CREATE TABLE clienten (nummer TEXT)")
    conn.close()


def _outbox_missing(folder: Path) -> None:
    """Two of the three tables: the outbox table was forgotten."""
    with sqlite3.connect(folder / "welzijn.db") as conn:
        conn.execute(f"CREATE TABLE {CLIENT_TABLE} (client_nummer TEXT)")
        conn.execute(f"CREATE TABLE {INBOX_TABLE} (id INTEGER)")
    conn.close()


def _gone_again(folder: Path) -> None:
    (folder / "welzijn.db").unlink()


CASES = [
    ("no file", _no_database, DatabaseProblem.MISSING, "does not exist"),
    ("a file without the tables", _empty_database, DatabaseProblem.NO_TABLES, "has no table"),
    ("the outbox table missing", _outbox_missing, DatabaseProblem.NO_TABLES, OUTBOX_TABLE),
]


def _config(folder: Path) -> AdapterConfig:
    import msgspec

    return msgspec.convert(
        {
            "partner": {"id": WELFARE},
            "system": {"transport": "welfare-sql", "database": "welzijn.db"},
            "base": str(folder),
        },
        AdapterConfig,
    )


@pytest.mark.parametrize(
    ("prepare", "reason", "says"),
    [pytest.param(p, r, s, id=name) for name, p, r, s in CASES],
)
async def test_one_line_once_naming_the_tables_then_it_recovers(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    prepare: Callable[[Path], None],
    reason: DatabaseProblem,
    says: str,
) -> None:
    caplog.set_level(logging.INFO, logger="adapters.partners.welfare")
    prepare(tmp_path)
    transport = create_transport(_config(tmp_path), SystemClock())
    source = transport.source
    assert isinstance(source, WelfareOutboxSource)
    try:
        for _ in range(RETRIES):
            # Retried as the SDK does; nothing is read, and nothing raises into the SDK's
            # loop (which would log a traceback every time).
            assert await source.pull(None) == PullBatch(())
        (logged,) = _problems(caplog)
        detail = str(getattr(logged, "detail", ""))
        assert getattr(logged, "reason", None) == reason.value
        assert logged.exc_info is None
        assert "\n" not in detail
        assert says in detail
        assert str(tmp_path / "welzijn.db") in detail
        for name in (CLIENT_TABLE, OUTBOX_TABLE, INBOX_TABLE, "DDL_SQLITE"):
            assert name in detail, name
        # The adapter never creates the database itself.
        if reason is DatabaseProblem.MISSING:
            assert not (tmp_path / "welzijn.db").exists()

        # The welfare organisation creates the tables; the next pull reads the outbox.
        (tmp_path / "welzijn.db").unlink(missing_ok=True)
        system = WelfareCaseSystem.sqlite(tmp_path / "welzijn.db")
        await system.create_tables()
        row_id = await system.record_progress("C-1001", "gemeente-velsen")
        await system.close()
        batch = await source.pull(None)
        assert [r.record_id for r in batch.records] == [str(row_id)]
        assert [r.getMessage() for r in caplog.records].count("welfare_database_ok") == 1
        assert len(_problems(caplog)) == 1
    finally:
        await source.close()


async def test_each_distinct_problem_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="adapters.partners.welfare")
    transport = create_transport(_config(tmp_path), SystemClock())
    try:
        # Missing, then there without the tables (a new problem), then gone again (a problem
        # already logged during this outage: not logged again).
        for prepare in (_no_database, _empty_database, _gone_again):
            prepare(tmp_path)
            for _ in range(RETRIES):
                assert await transport.source.pull(None) == PullBatch(())
        reasons = [getattr(r, "reason", None) for r in _problems(caplog)]
        assert reasons == ["database_missing", "tables_missing"]
    finally:
        await transport.source.close()


async def test_the_inbound_side_says_the_same(tmp_path: Path) -> None:
    transport = create_transport(_config(tmp_path), SystemClock())
    source = transport.source
    assert isinstance(source, WelfareOutboxSource)
    try:
        with pytest.raises(WelfareDatabaseError) as caught:
            await source.database.execute("INSERT INTO ketenpost_inkomend (id) VALUES (1)")
        assert caught.value.reason is DatabaseProblem.MISSING
        assert "DDL_SQLITE" in str(caught.value)
    finally:
        await source.close()


async def test_the_sdk_keeps_going_without_a_step_failure(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    # The adapter as `ketenpost adapter run` builds it, on the real gateway, with the
    # development [system] table (`welzijn.db`) and no database made yet.
    caplog.set_level(logging.INFO)
    config = load_partner_dir(net.folder(WELFARE))
    adapter = Adapter(
        config,
        default_registry().create(config, net.gw.clock),
        clock=net.gw.clock,
        settings=EngineSettings(backoff_base_s=1),
        gateway_url=net.gw.url,
    )
    await adapter.open()
    try:
        for _ in range(RETRIES):
            # What one pass of the outbound loop does; a raise here is its ``step_failed``.
            assert await adapter.ingest_once() == 0
            await adapter.send_once()
        assert len(_problems(caplog)) == 1
        assert not [r for r in caplog.records if r.exc_info is not None]
    finally:
        await adapter.close()


@pytest.mark.postgres
async def test_postgresql_without_the_tables_names_the_schema_and_the_ddl(
    tmp_path: Path, net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="adapters.partners.welfare")
    async with pg_schema() as pg:
        write_system(
            net,
            WELFARE,
            f'[system]\ntransport = "welfare-sql"\ndatabase = "{pg.url}"\nschema = "{pg.schema}"\n',
        )
        config = load_partner_dir(net.folder(WELFARE))
        transport = create_transport(config, SystemClock())
        try:
            for _ in range(RETRIES):
                assert await transport.source.pull(None) == PullBatch(())
            (logged,) = _problems(caplog)
            detail = str(getattr(logged, "detail", ""))
            assert getattr(logged, "reason", None) == "tables_missing"
            assert f"schema {pg.schema}" in detail
            assert "DDL_POSTGRESQL" in detail
            assert "\n" not in detail
        finally:
            await transport.source.close()
