"""Adapter of ``welzijn-ijmond``: outbox and inbox tables in the welfare organisation's own SQL
database (transport ``welfare-sql``).

The welfare case system and Ketenpost meet in three tables of the welfare organisation's
database, which the organisation creates (``DDL_SQLITE`` / ``DDL_POSTGRESQL``; ``create_tables``
runs them for tests and the demo):

``ketenpost_uitgaand`` (written by the case system, read by the adapter)
    One row per case message the welfare organisation sends: ``id`` (monotonic), ``soort``
    (``voortgang``, ``casusoverleg-bijdrage`` or ``signaal``), ``client_nummer``, ``ontvanger``
    (partner ids, comma-separated), ``inhoud`` (a JSON object per ``soort``, see
    ``VoortgangInhoud``, ``CasusoverlegInhoud``, ``SignaalInhoud``), and the feedback columns
    the adapter writes: ``status``, ``reden_code``, ``reden``, ``bijgewerkt_op``.
``ketenpost_inkomend`` (written by the adapter, read by the case system)
    One row per delivered message, ``UNIQUE (message_id)``: sender, type, approach (token id),
    the welfare organisation's client numbers of the subjects, the exact JSON body, times.
``ketenpost_client`` (a table or, better, a view over the case system's clients)
    ``client_nummer``, ``voornaam``, ``tussenvoegsel``, ``achternaam``, ``geboortedatum``: what
    an approach-notice is matched against. A view keeps the adapter from seeing anything else.

Rules kept here:

* **Reading the outbox.** The cursor is the highest outbox id processed; rows are read in id
  order, a batch at a time. A row's record id is its ``id``, so the same row read twice is
  one message (the SDK derives the message id from it). PostgreSQL hands out identity values
  at insert time, not at commit, so a row with a lower id can become visible after a higher
  one was read: every pull therefore also takes rows *below* the cursor that are still
  ``nieuw``. ``acknowledge`` moves read rows from ``nieuw`` to ``opgenomen``; a lost
  acknowledgement only causes a harmless re-read.
* **Feedback to the case system** is written into the outbox row: a row that cannot become a
  case message (no client, unknown ``soort``, ``inhoud`` not the JSON expected, …) is marked
  ``mislukt`` with the report (never its personal data) — the SDK keeps it in its failed place
  too; a final refusal (``no_token`` here, ``type_not_allowed`` at the gateway, a recipient's
  rejection, expiry, purge) marks it ``geweigerd`` with the stable reason code in
  ``reden_code``. Status updates are idempotent and never undo ``mislukt``/``geweigerd``.
* **Writing the inbox** is one ``INSERT … ON CONFLICT (message_id) DO NOTHING``: applying a
  redelivered message again changes nothing. An approach-notice's persons are matched to
  clients by first name, family name (with or without ``tussenvoegsel``, ignoring case and
  diacritics) **and** date of birth; exactly one candidate or no match at all — a youth is
  never linked to a client on a guess. Unmatched persons are named in ``opmerking``.
* The database is SQLite (a file path relative to the partner folder, opened read-write and
  never created by the adapter) or PostgreSQL (a ``postgresql://`` URL without a password; the
  password comes from ``password_file``; it needs the optional ``postgres`` extra, asyncpg,
  which is imported only when a PostgreSQL database is configured). A database that cannot be
  reached, or lacks the tables, is transient: the pull finds nothing and is tried again at the
  SDK's next pull, and an inbound message is not acknowledged, so it is delivered again. Each
  distinct problem is logged once (``welfare_database_problem``, one line that names the
  tables the welfare organisation must create when they are missing), not at every retry;
  ``welfare_database_ok`` says when it is over.
* Mappings do no I/O; the database is touched only by the source and the destination, which
  share one connection (pool) and close it with the source.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import datetime
import enum
import json
import logging
import re
import sqlite3
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any, Final

import msgspec

from adapters.base import (
    Applied,
    Clock,
    DestinationUnavailableError,
    InboundMessage,
    MalformedRecordError,
    MappingContext,
    Outbound,
    PullBatch,
    Refusal,
    SourceBase,
    SourceRecord,
    Transport,
)
from adapters.config import AdapterConfig
from adapters.errors import AdapterConfigError, AdapterError
from adapters.partners._matching import normalise_name
from adapters.partners._settings import config_error
from gateway.protocol.messages import (
    ApproachNotice,
    CaseConference,
    CaseMessage,
    PersonDetails,
    Progress,
    ProgressStatus,
    Signal,
    SignalCategory,
)

if TYPE_CHECKING:
    # asyncpg is the optional ``postgres`` extra: imported for real only where PostgreSQL is
    # used (``_asyncpg``), so the ``ketenpost`` command works without it.
    import asyncpg

logger = logging.getLogger("adapters.partners.welfare")

TRANSPORT_NAME: Final = "welfare-sql"
OUTBOX_TABLE: Final = "ketenpost_uitgaand"
INBOX_TABLE: Final = "ketenpost_inkomend"
CLIENT_TABLE: Final = "ketenpost_client"
DEFAULT_BATCH_SIZE: Final = 100
MAX_BATCH_SIZE: Final = 1000
# What goes into a status column for a person: long enough for a report, short enough for a
# screen.
MAX_REASON_CHARS: Final = 2000
RECORD_CONTENT_TYPE: Final = "application/vnd.ketenpost.welzijn-uitgaand+json"
APPLICATION_NAME: Final = "ketenpost-welzijn"


class OutboxStatus(enum.StrEnum):
    """``ketenpost_uitgaand.status``: the row's way through Ketenpost."""

    NEW = "nieuw"  # written by the case system, not read yet
    TAKEN = "opgenomen"  # durable in the adapter's outbox; sent from there
    FAILED = "mislukt"  # cannot become a case message; ``reden`` says why
    REFUSED = "geweigerd"  # finally refused; ``reden_code`` is the stable reason


class Soort(enum.StrEnum):
    """``ketenpost_uitgaand.soort``: what the welfare organisation sends."""

    PROGRESS = "voortgang"
    CASE_CONFERENCE = "casusoverleg-bijdrage"
    SIGNAL = "signaal"


# -- the tables ----------------------------------------------------------------------------

DDL_SQLITE: Final[tuple[str, ...]] = (
    f"""CREATE TABLE IF NOT EXISTS {CLIENT_TABLE} (
    client_nummer  TEXT PRIMARY KEY,
    voornaam       TEXT NOT NULL,
    tussenvoegsel  TEXT,
    achternaam     TEXT NOT NULL,
    geboortedatum  TEXT NOT NULL              -- JJJJ-MM-DD
)""",
    f"""CREATE TABLE IF NOT EXISTS {OUTBOX_TABLE} (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    aangemaakt_op  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
    soort          TEXT NOT NULL,             -- voortgang | casusoverleg-bijdrage | signaal
    client_nummer  TEXT,
    ontvanger      TEXT NOT NULL,             -- partner ids, comma-separated
    inhoud         TEXT NOT NULL,             -- JSON object, per soort
    status         TEXT NOT NULL DEFAULT 'nieuw'
                   CHECK (status IN ('nieuw', 'opgenomen', 'mislukt', 'geweigerd')),
    reden_code     TEXT,
    reden          TEXT,
    bijgewerkt_op  TEXT
)""",
    f"CREATE INDEX IF NOT EXISTS {OUTBOX_TABLE}_nieuw ON {OUTBOX_TABLE} (id) "
    "WHERE status = 'nieuw'",
    f"""CREATE TABLE IF NOT EXISTS {INBOX_TABLE} (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id      TEXT NOT NULL UNIQUE,
    afzender        TEXT NOT NULL,
    soort           TEXT NOT NULL,            -- case-message type, e.g. case-conference
    aanpak_id       TEXT NOT NULL,            -- approach token id
    client_nummers  TEXT NOT NULL,            -- JSON array of client_nummer
    inhoud          TEXT NOT NULL,            -- the case message, JSON, as sent
    geaccepteerd_op TEXT NOT NULL,            -- accepted by the gateway (UTC)
    ontvangen_op    TEXT NOT NULL,            -- received by the adapter (UTC)
    trace_id        TEXT NOT NULL,
    opmerking       TEXT,
    status          TEXT NOT NULL DEFAULT 'nieuw'   -- for the case system: nieuw | verwerkt
)""",
)

DDL_POSTGRESQL: Final[tuple[str, ...]] = (
    f"""CREATE TABLE IF NOT EXISTS {CLIENT_TABLE} (
    client_nummer  text PRIMARY KEY,
    voornaam       text NOT NULL,
    tussenvoegsel  text,
    achternaam     text NOT NULL,
    geboortedatum  date NOT NULL
)""",
    f"""CREATE TABLE IF NOT EXISTS {OUTBOX_TABLE} (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    aangemaakt_op  timestamptz NOT NULL DEFAULT now(),
    soort          text NOT NULL,
    client_nummer  text,
    ontvanger      text NOT NULL,
    inhoud         text NOT NULL,
    status         text NOT NULL DEFAULT 'nieuw'
                   CHECK (status IN ('nieuw', 'opgenomen', 'mislukt', 'geweigerd')),
    reden_code     text,
    reden          text,
    bijgewerkt_op  timestamptz
)""",
    f"CREATE INDEX IF NOT EXISTS {OUTBOX_TABLE}_nieuw ON {OUTBOX_TABLE} (id) "
    "WHERE status = 'nieuw'",
    f"""CREATE TABLE IF NOT EXISTS {INBOX_TABLE} (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id      text NOT NULL UNIQUE,
    afzender        text NOT NULL,
    soort           text NOT NULL,
    aanpak_id       text NOT NULL,
    client_nummers  jsonb NOT NULL,
    inhoud          jsonb NOT NULL,
    geaccepteerd_op timestamptz NOT NULL,
    ontvangen_op    timestamptz NOT NULL,
    trace_id        text NOT NULL,
    opmerking       text,
    status          text NOT NULL DEFAULT 'nieuw'
)""",
)

# What the adapter's database role needs, and no more (PostgreSQL; run as the tables' owner).
GRANTS_POSTGRESQL: Final[tuple[str, ...]] = (
    f"GRANT SELECT ON {CLIENT_TABLE} TO ketenpost",
    f"GRANT SELECT, UPDATE (status, reden_code, reden, bijgewerkt_op) ON {OUTBOX_TABLE} "
    "TO ketenpost",
    f"GRANT SELECT, INSERT ON {INBOX_TABLE} TO ketenpost",
)

DEFAULT_SYSTEM_TOML: Final = """\
[system]
transport = "welfare-sql"
# The welfare case system's database. A path is an SQLite file relative to this folder (the
# welfare organisation creates its tables: see adapters/partners/welfare.py). For PostgreSQL
# use a URL without a password, and put the password in a file (0600):
#   database = "postgresql://ketenpost@db.welzijn-ijmond.local:5432/welzijn"
#   password_file = "secrets/welzijn-db.password"
#   schema = "ketenpost"
database = "welzijn.db"
# Outbox rows read per pull.
batch_size = 100
"""


# -- settings ------------------------------------------------------------------------------

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_PARTNER_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
_KNOWN_KEYS: Final = frozenset({"transport", "database", "password_file", "schema", "batch_size"})


@dataclass(frozen=True)
class WelfareSettings:
    """The validated ``[system]`` table. ``sqlite_path`` xor ``postgres_url`` is set."""

    sqlite_path: Path | None = None
    postgres_url: str | None = None
    password_file: Path | None = None
    schema: str | None = None
    batch_size: int = DEFAULT_BATCH_SIZE

    @classmethod
    def from_config(cls, config: AdapterConfig) -> WelfareSettings:
        """Raise ``AdapterConfigError`` with one line naming the bad key."""
        system = config.system

        def bad(key: str, why: str) -> AdapterConfigError:
            return config_error(config, key, why)

        # Not ``_settings.check_keys``: this message lists the known keys, and welfare has
        # no fixed ``transport`` check of its own (the registry chose it by that key).
        for key in system:
            if key not in _KNOWN_KEYS:
                known = ", ".join(sorted(_KNOWN_KEYS))
                raise bad(key, f"unknown setting for {TRANSPORT_NAME} (known: {known})")
        database = system.get("database")
        if not isinstance(database, str) or not database.strip():
            raise bad("database", "missing: an SQLite file path or a postgresql:// URL")
        batch_size = system.get("batch_size", DEFAULT_BATCH_SIZE)
        if (
            not isinstance(batch_size, int)
            or isinstance(batch_size, bool)
            or not 1 <= batch_size <= MAX_BATCH_SIZE
        ):
            raise bad("batch_size", f"must be an integer from 1 to {MAX_BATCH_SIZE}")
        password_file = system.get("password_file")
        schema = system.get("schema")
        scheme, sep, _ = database.partition("://")
        if not sep:
            for key in ("password_file", "schema"):
                if key in system:
                    raise bad(key, "only for a PostgreSQL database (a postgresql:// URL)")
            return cls(sqlite_path=config.path(database), batch_size=batch_size)
        if scheme not in ("postgresql", "postgres"):
            raise bad("database", f"unsupported scheme {scheme!r} (postgresql:// or a file path)")
        parts = urllib.parse.urlsplit(database)
        query = urllib.parse.parse_qs(parts.query)
        if parts.password is not None or "password" in query:
            raise bad("database", "the URL carries a password; put it in password_file")
        if not parts.hostname and "host" not in query:
            raise bad("database", "the URL names no host")
        pw_path: Path | None = None
        if password_file is not None:
            if not isinstance(password_file, str) or not password_file:
                raise bad("password_file", "must be a file path")
            pw_path = config.path(password_file)
            if not pw_path.is_file():
                raise bad("password_file", f"{pw_path} is not a readable file")
        if schema is not None and (not isinstance(schema, str) or not _SCHEMA_NAME.match(schema)):
            raise bad("schema", "must be a lower-case SQL identifier")
        try:
            _asyncpg()
        except AdapterConfigError:
            raise bad("database", f"a postgresql:// database {POSTGRES_EXTRA}") from None
        return cls(
            postgres_url=database, password_file=pw_path, schema=schema, batch_size=batch_size
        )


# -- the database --------------------------------------------------------------------------


# The end of the one line that says a PostgreSQL database cannot be used without asyncpg.
POSTGRES_EXTRA: Final = "needs the postgres extra: pip install 'ketenpost[postgres]'"
_TABLES_TEXT: Final = f"{CLIENT_TABLE}, {OUTBOX_TABLE} and {INBOX_TABLE}"
_SQLITE_NO_TABLE: Final = re.compile(r"no such table: (?:\w+\.)?(\w+)")


def _asyncpg() -> ModuleType:
    """The asyncpg module. Raises ``AdapterConfigError`` (one line, ending in
    ``POSTGRES_EXTRA``) when the optional ``postgres`` extra is not installed."""
    try:
        import asyncpg  # noqa: PLC0415 - the optional ``postgres`` extra, only for PostgreSQL
    except ImportError:
        raise AdapterConfigError(f"a PostgreSQL welfare database {POSTGRES_EXTRA}") from None
    return asyncpg


class DatabaseProblem(enum.StrEnum):
    """``WelfareDatabaseError.reason``: what is wrong with the welfare database."""

    # The SQLite file or the PostgreSQL database does not exist (or cannot be opened).
    MISSING = "database_missing"
    # The database is there, one of the three Ketenpost tables is not.
    NO_TABLES = "tables_missing"
    # Anything else: unreachable, refused a login or a statement, timed out.
    UNAVAILABLE = "database_unavailable"


class WelfareDatabaseError(AdapterError):
    """The welfare database cannot be reached or refused a statement. One line, no data;
    ``reason`` says which kind of problem, and a missing database or table names what the
    welfare organisation must create."""

    def __init__(self, message: str, reason: DatabaseProblem = DatabaseProblem.UNAVAILABLE) -> None:
        super().__init__(message)
        self.reason = reason


def _what_to_create(ddl: str) -> str:
    return (
        f"the welfare organisation creates the tables {_TABLES_TEXT} "
        f"({ddl} in adapters.partners.welfare); the adapter retries until they are there"
    )


Row = dict[str, Any]


def _plain(value: Any) -> Any:
    """Dates and times as ISO 8601 text, whichever database returned them."""
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    return value


class WelfareDatabase(abc.ABC):
    """The welfare database, SQLite or PostgreSQL, behind one small async interface.

    Statements use ``?`` placeholders; values may be ``datetime``/``date`` objects. Every
    failure of the database is raised as ``WelfareDatabaseError``.
    """

    dialect: str

    def __init__(self) -> None:
        # Problems logged since the database last answered: each is logged once, not at every
        # retry of the SDK's loops.
        self._logged: set[str] = set()

    def _failed(self, error: WelfareDatabaseError) -> WelfareDatabaseError:
        """Log ``error`` in one line the first time it occurs since the last success;
        return it for the caller to raise."""
        text = str(error)
        if text not in self._logged:
            self._logged.add(text)
            logger.warning(
                "welfare_database_problem", extra={"reason": error.reason.value, "detail": text}
            )
        return error

    def _answered(self) -> None:
        """The database answered: a problem logged before is over (logged once, too)."""
        if self._logged:
            self._logged.clear()
            logger.info("welfare_database_ok")

    @abc.abstractmethod
    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        """Rows as dicts; dates and times as ISO text. Commits (for ``… RETURNING``)."""

    @abc.abstractmethod
    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement in its own transaction; the number of rows it changed."""

    @abc.abstractmethod
    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement per row, all in one transaction."""

    @abc.abstractmethod
    async def run_script(self, statements: Sequence[str]) -> None:
        """Run DDL statements in one transaction."""

    async def close(self) -> None:
        return None

    @property
    def ddl(self) -> tuple[str, ...]:
        return DDL_POSTGRESQL if self.dialect == "postgresql" else DDL_SQLITE


def _sqlite_value(value: Any) -> Any:
    # sqlite3's implicit date adapters are deprecated: store ISO 8601 text explicitly.
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    return value


class SqliteWelfareDatabase(WelfareDatabase):
    """An SQLite file. Each call opens its own connection in a worker thread, so a case system
    writing to the same file (WAL) never blocks the event loop for long."""

    dialect = "sqlite"

    def __init__(self, path: Path, *, create: bool = False, busy_timeout_s: float = 5.0) -> None:
        super().__init__()
        self.path = path.resolve()
        # The adapter opens the file read-write only: a typo in the path must fail loudly, not
        # create an empty database the case system never looks at.
        self._uri = f"{self.path.as_uri()}?mode={'rwc' if create else 'rw'}"
        self._busy_timeout_s = busy_timeout_s

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._uri, uri=True, timeout=self._busy_timeout_s)
        conn.row_factory = sqlite3.Row
        return conn

    async def _run(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        def in_thread() -> Any:
            with contextlib.closing(self._connect()) as conn, conn:
                return work(conn)

        try:
            result = await asyncio.to_thread(in_thread)
        except sqlite3.Error as exc:
            raise self._failed(self._explain(exc)) from exc
        self._answered()
        return result

    def _explain(self, exc: sqlite3.Error) -> WelfareDatabaseError:
        text = str(exc)
        if isinstance(exc, sqlite3.OperationalError) and "unable to open database file" in text:
            return WelfareDatabaseError(
                f"SQLite database {self.path} does not exist or cannot be opened read-write "
                f"({text}): {_what_to_create('DDL_SQLITE')}",
                DatabaseProblem.MISSING,
            )
        missing = _SQLITE_NO_TABLE.search(text)
        if isinstance(exc, sqlite3.OperationalError) and missing:
            return WelfareDatabaseError(
                f"SQLite database {self.path} has no table {missing.group(1)}: "
                f"{_what_to_create('DDL_SQLITE')}",
                DatabaseProblem.NO_TABLES,
            )
        return WelfareDatabaseError(f"SQLite database {self.path}: {text}".splitlines()[0])

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        values = [_sqlite_value(a) for a in args]

        def work(conn: sqlite3.Connection) -> list[Row]:
            rows = conn.execute(sql, values).fetchall()
            return [{k: _plain(row[k]) for k in row.keys()} for row in rows]  # noqa: SIM118 - sqlite3.Row

        result: list[Row] = await self._run(work)
        return result

    async def execute(self, sql: str, *args: Any) -> int:
        values = [_sqlite_value(a) for a in args]
        count: int = await self._run(lambda conn: conn.execute(sql, values).rowcount)
        return count

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        values = [[_sqlite_value(a) for a in row] for row in rows]
        await self._run(lambda conn: conn.executemany(sql, values))

    async def run_script(self, statements: Sequence[str]) -> None:
        def work(conn: sqlite3.Connection) -> None:
            for statement in statements:
                conn.execute(statement)

        await self._run(work)


def _numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, …`` (our statements have no ``?`` in
    literals)."""
    parts = sql.split("?")
    return "".join(p + (f"${i}" if i < len(parts) else "") for i, p in enumerate(parts, 1))


class PostgresWelfareDatabase(WelfareDatabase):
    """A PostgreSQL database through a small asyncpg pool, opened on first use."""

    dialect = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        password_file: Path | None = None,
        schema: str | None = None,
        application_name: str = APPLICATION_NAME,
    ) -> None:
        super().__init__()
        # Raises ``AdapterConfigError`` here, before any use, without the ``postgres`` extra.
        self._asyncpg = _asyncpg()
        # What "the database could not be reached or refused the statement" looks like.
        self._errors: tuple[type[BaseException], ...] = (
            OSError,
            TimeoutError,
            self._asyncpg.PostgresError,
            self._asyncpg.InterfaceError,
        )
        self.url = url
        self._password_file = password_file
        self._server_settings = {"application_name": application_name}
        if schema is not None:
            self._server_settings["search_path"] = schema
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._lock = asyncio.Lock()

    def _where(self) -> str:
        parts = urllib.parse.urlsplit(self.url)
        return f"PostgreSQL {parts.hostname}:{parts.port or 5432}{parts.path}"

    async def _get_pool(self) -> asyncpg.Pool[asyncpg.Record]:
        async with self._lock:
            if self._pool is None:
                password = None
                if self._password_file is not None:
                    try:
                        # Read at connect time, so a rotated password needs no restart.
                        password = self._password_file.read_text(encoding="utf-8").rstrip("\r\n")
                    except OSError as exc:
                        raise WelfareDatabaseError(
                            f"cannot read the password file {self._password_file}: {exc}"
                        ) from exc
                self._pool = await self._asyncpg.create_pool(
                    dsn=self.url,
                    password=password,
                    min_size=0,
                    max_size=4,
                    timeout=10,
                    command_timeout=30,
                    server_settings=self._server_settings,
                )
            return self._pool

    async def _run(self, work: Callable[[Any], Awaitable[Any]]) -> Any:
        try:
            pool = await self._get_pool()
            async with pool.acquire() as conn, conn.transaction():
                result = await work(conn)
        except self._errors as exc:
            raise self._failed(self._explain(exc)) from exc
        self._answered()
        return result

    def _explain(self, exc: BaseException) -> WelfareDatabaseError:
        if isinstance(exc, self._asyncpg.InvalidCatalogNameError):
            return WelfareDatabaseError(
                f"{self._where()}: the database does not exist: "
                f"{_what_to_create('DDL_POSTGRESQL, GRANTS_POSTGRESQL')}",
                DatabaseProblem.MISSING,
            )
        if isinstance(exc, self._asyncpg.UndefinedTableError):
            where = self._where()
            if "search_path" in self._server_settings:
                where += f" (schema {self._server_settings['search_path']})"
            return WelfareDatabaseError(
                f"{where}: {str(exc).splitlines()[0]}: "
                f"{_what_to_create('DDL_POSTGRESQL, GRANTS_POSTGRESQL')}",
                DatabaseProblem.NO_TABLES,
            )
        return WelfareDatabaseError(f"{self._where()}: {type(exc).__name__}: {exc}".splitlines()[0])

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async def work(conn: Any) -> list[Row]:
            rows = await conn.fetch(_numbered(sql), *args)
            return [{k: _plain(v) for k, v in row.items()} for row in rows]

        result: list[Row] = await self._run(work)
        return result

    async def execute(self, sql: str, *args: Any) -> int:
        async def work(conn: Any) -> int:
            status: str = await conn.execute(_numbered(sql), *args)
            tail = status.rsplit(" ", 1)[-1]
            return int(tail) if tail.isdigit() else 0

        count: int = await self._run(work)
        return count

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        async def work(conn: Any) -> None:
            await conn.executemany(_numbered(sql), rows)

        if rows:
            await self._run(work)

    async def run_script(self, statements: Sequence[str]) -> None:
        async def work(conn: Any) -> None:
            for statement in statements:
                await conn.execute(statement)

        await self._run(work)

    async def close(self) -> None:
        async with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(*self._errors):
                await pool.close()


def open_database(settings: WelfareSettings, *, create: bool = False) -> WelfareDatabase:
    """The database ``settings`` names (no connection is made yet). ``create`` lets SQLite make
    a missing file: for ``create_tables`` in tests and the demo, never for the adapter."""
    if settings.postgres_url is not None:
        return PostgresWelfareDatabase(
            settings.postgres_url, password_file=settings.password_file, schema=settings.schema
        )
    assert settings.sqlite_path is not None
    return SqliteWelfareDatabase(settings.sqlite_path, create=create)


async def create_tables(database: WelfareDatabase) -> None:
    """Create the three tables (and the outbox index) if missing: what the welfare
    organisation's DBA runs once. For tests and the demo; SQLite is switched to WAL."""
    if database.dialect == "sqlite":
        await database.fetch("PRAGMA journal_mode=WAL")
    await database.run_script(database.ddl)


def _utc(seconds: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


# -- outbound: the outbox table ------------------------------------------------------------


class OutboxRowData(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One ``ketenpost_uitgaand`` row as the source hands it to the mapping (record data)."""

    id: int
    aangemaakt_op: str | None
    soort: str | None
    client_nummer: str | None
    ontvanger: str | None
    inhoud: str | None


_ROW_ENCODER: Final = msgspec.json.Encoder()
_ROW_DECODER: Final = msgspec.json.Decoder(OutboxRowData)


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


class WelfareOutboxSource(SourceBase):
    """Pull source over ``ketenpost_uitgaand`` (see the module docstring for the rules)."""

    def __init__(self, database: WelfareDatabase, clock: Clock, batch_size: int) -> None:
        self.database = database
        self.clock = clock
        self.batch_size = batch_size

    async def pull(self, cursor: str | None) -> PullBatch:
        """Rows after ``cursor`` and rows below it still ``nieuw``, in id order.

        While the database cannot be read (missing, without the tables, down) the batch is
        empty and the cursor unchanged: the problem was logged once, in one line, by the
        database, and the SDK pulls again after its pull interval. Raising instead would have
        the SDK log a traceback at every retry."""
        after = int(cursor) if cursor and cursor.isdigit() else 0
        try:
            rows = await self.database.fetch(
                "SELECT id, aangemaakt_op, soort, client_nummer, ontvanger, inhoud "
                "FROM ketenpost_uitgaand WHERE id > ? OR status = ? ORDER BY id LIMIT ?",
                after,
                OutboxStatus.NEW.value,
                self.batch_size,
            )
        except WelfareDatabaseError:
            return PullBatch(())
        records = []
        for row in rows:
            data = OutboxRowData(
                id=int(row["id"]),
                aangemaakt_op=_text(row["aangemaakt_op"]),
                soort=_text(row["soort"]),
                client_nummer=_text(row["client_nummer"]),
                ontvanger=_text(row["ontvanger"]),
                inhoud=_text(row["inhoud"]),
            )
            records.append(
                SourceRecord(
                    record_id=str(data.id),
                    data=_ROW_ENCODER.encode(data),
                    content_type=RECORD_CONTENT_TYPE,
                    metadata={"tabel": OUTBOX_TABLE, "id": str(data.id)},
                )
            )
        highest = max([after, *(int(r.record_id) for r in records)])
        return PullBatch(records, str(highest) if highest != after else None)

    async def acknowledge(self, record_ids: Sequence[str]) -> None:
        now = _utc(self.clock.now())
        await self.database.executemany(
            "UPDATE ketenpost_uitgaand SET status = ?, bijgewerkt_op = ? "
            "WHERE id = ? AND status = ?",
            [
                (OutboxStatus.TAKEN.value, now, int(i), OutboxStatus.NEW.value)
                for i in record_ids
                if i.isdigit()
            ],
        )

    async def quarantine(self, record: SourceRecord, report: str) -> None:
        if record.record_id.isdigit():
            await self.database.execute(
                "UPDATE ketenpost_uitgaand SET status = ?, reden_code = ?, reden = ?, "
                "bijgewerkt_op = ? WHERE id = ? AND status IN (?, ?)",
                OutboxStatus.FAILED.value,
                "ongeldig_record",
                report[:MAX_REASON_CHARS],
                _utc(self.clock.now()),
                int(record.record_id),
                OutboxStatus.NEW.value,
                OutboxStatus.TAKEN.value,
            )

    async def close(self) -> None:
        await self.database.close()


# -- mapping: row → case message -----------------------------------------------------------

Tekst = Annotated[str, msgspec.Meta(min_length=1)]


class VoortgangStatus(enum.StrEnum):
    VOLGENS_PLAN = "volgens-plan"
    ZORGELIJK = "zorgelijk"
    AFGEROND = "afgerond"
    NIET_AFGEROND = "niet-afgerond"
    GEEN_CONTACT = "geen-contact"


class SignaalCategorie(enum.StrEnum):
    OVERLAST = "overlast"
    VANDALISME = "vandalisme"
    DIEFSTAL = "diefstal"
    GEWELD = "geweld"
    BEDREIGING = "bedreiging"
    DRUGS = "drugs"
    WAPENS = "wapens"
    ONLINE = "online"
    SCHOOLVERZUIM = "schoolverzuim"
    ZORG = "zorg"
    OVERIG = "overig"


_PROGRESS_STATUS: Final[Mapping[VoortgangStatus, ProgressStatus]] = {
    VoortgangStatus.VOLGENS_PLAN: ProgressStatus.ON_TRACK,
    VoortgangStatus.ZORGELIJK: ProgressStatus.CONCERN,
    VoortgangStatus.AFGEROND: ProgressStatus.COMPLETED,
    VoortgangStatus.NIET_AFGEROND: ProgressStatus.NOT_COMPLETED,
    VoortgangStatus.GEEN_CONTACT: ProgressStatus.NO_CONTACT,
}
_SIGNAL_CATEGORY: Final[Mapping[SignaalCategorie, SignalCategory]] = {
    SignaalCategorie.OVERLAST: SignalCategory.NUISANCE,
    SignaalCategorie.VANDALISME: SignalCategory.VANDALISM,
    SignaalCategorie.DIEFSTAL: SignalCategory.THEFT,
    SignaalCategorie.GEWELD: SignalCategory.VIOLENCE,
    SignaalCategorie.BEDREIGING: SignalCategory.THREAT,
    SignaalCategorie.DRUGS: SignalCategory.DRUGS,
    SignaalCategorie.WAPENS: SignalCategory.WEAPONS,
    SignaalCategorie.ONLINE: SignalCategory.ONLINE,
    SignaalCategorie.SCHOOLVERZUIM: SignalCategory.SCHOOL_ABSENCE,
    SignaalCategorie.ZORG: SignalCategory.CONCERN,
    SignaalCategorie.OVERIG: SignalCategory.OTHER,
}


class VoortgangInhoud(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``inhoud`` of a ``voortgang`` row → ``progress``."""

    status: VoortgangStatus
    samenvatting: Tekst
    datum: datetime.date
    actie: Tekst | None = None


class CasusoverlegInhoud(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``inhoud`` of a ``casusoverleg-bijdrage`` row → ``case-conference``: the welfare
    organisation's items for the agenda and what it agreed to do. ``deelnemers`` defaults to
    the welfare organisation and the recipients."""

    datum: datetime.date
    agendapunten: Annotated[tuple[Tekst, ...], msgspec.Meta(min_length=1)]
    afspraken: tuple[Tekst, ...] = ()
    deelnemers: tuple[Tekst, ...] = ()
    volgende_datum: datetime.date | None = None


class SignaalInhoud(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``inhoud`` of a ``signaal`` row → ``signal``."""

    datum: datetime.date
    categorie: SignaalCategorie
    samenvatting: Tekst
    gemeente: Tekst
    kenmerk: Tekst | None = None


_INHOUD_DECODERS: Final[Mapping[Soort, msgspec.json.Decoder[Any]]] = {
    Soort.PROGRESS: msgspec.json.Decoder(VoortgangInhoud),
    Soort.CASE_CONFERENCE: msgspec.json.Decoder(CasusoverlegInhoud),
    Soort.SIGNAL: msgspec.json.Decoder(SignaalInhoud),
}


def _recipients(value: str | None) -> tuple[str, ...]:
    names = tuple(n.strip() for n in (value or "").split(",") if n.strip())
    if not names:
        raise MalformedRecordError("ontvanger: ontbreekt (een partner-id, bijv. gemeente-velsen)")
    for name in names:
        if not _PARTNER_ID.match(name):
            raise MalformedRecordError(f"ontvanger: {name!r} is geen partner-id")
    return names


class WelfareMapping:
    """An outbox row → a ``progress``, ``case-conference`` or ``signal`` about one client.

    Raises ``MalformedRecordError`` with a report in Dutch naming the column (and the JSON
    path inside ``inhoud``), or lets ``NoApproachError`` through when no started approach
    covers the client."""

    def map(self, record: SourceRecord, context: MappingContext) -> Outbound:
        try:
            row = _ROW_DECODER.decode(record.data)
        except msgspec.DecodeError as exc:
            raise MalformedRecordError(f"het record is geen uitgaande rij: {exc}") from None
        try:
            soort = Soort(row.soort or "")
        except ValueError:
            expected = ", ".join(s.value for s in Soort)
            raise MalformedRecordError(
                f"soort: onbekende soort {row.soort!r} (verwacht: {expected})"
            ) from None
        client = (row.client_nummer or "").strip()
        if not client:
            raise MalformedRecordError("client_nummer: ontbreekt")
        recipients = _recipients(row.ontvanger)
        if not row.inhoud:
            raise MalformedRecordError("inhoud: ontbreekt")
        try:
            inhoud = _INHOUD_DECODERS[soort].decode(row.inhoud)
        except msgspec.ValidationError as exc:
            raise MalformedRecordError(f"inhoud ({soort}): {exc}") from None
        except msgspec.DecodeError as exc:
            raise MalformedRecordError(f"inhoud: geen geldige JSON ({exc})") from None
        # Checked last: a broken row is reported as broken even when no approach covers it.
        approach = context.approach_for([client])
        subjects = (approach.pseudonyms[client],)
        body = self._body(inhoud, subjects, context.partner_id, recipients)
        return Outbound(recipients=recipients, token_id=approach.token_id, body=body)

    @staticmethod
    def _body(
        inhoud: Any, subjects: tuple[str, ...], me: str, recipients: tuple[str, ...]
    ) -> CaseMessage:
        match inhoud:
            case VoortgangInhoud():
                return Progress(
                    subjects=subjects,
                    status=_PROGRESS_STATUS[inhoud.status],
                    summary=inhoud.samenvatting,
                    reported_on=inhoud.datum,
                    action=inhoud.actie,
                )
            case CasusoverlegInhoud():
                return CaseConference(
                    subjects=subjects,
                    date=inhoud.datum,
                    participants=inhoud.deelnemers or (me, *recipients),
                    agenda=inhoud.agendapunten,
                    decisions=inhoud.afspraken,
                    next_date=inhoud.volgende_datum,
                )
            case SignaalInhoud():
                return Signal(
                    subjects=subjects,
                    incident_date=inhoud.datum,
                    category=_SIGNAL_CATEGORY[inhoud.categorie],
                    summary=inhoud.samenvatting,
                    location_municipality=inhoud.gemeente,
                    source_reference=inhoud.kenmerk,
                )
        raise MalformedRecordError("inhoud: onbekende vorm")  # pragma: no cover - exhaustive


# -- inbound: the inbox table --------------------------------------------------------------


@dataclass(frozen=True)
class ClientCandidate:
    """A ``ketenpost_client`` row with the person's date of birth."""

    client_nummer: str
    voornaam: str
    tussenvoegsel: str | None
    achternaam: str


def match_client(person: PersonDetails, candidates: Sequence[ClientCandidate]) -> str | None:
    """The one client whose first and family name are the person's (``candidates`` share the
    person's date of birth), or ``None`` when there is no such client or more than one.

    Not ``_matching.match_person``, on purpose: welfare's role holds no BSN (``ROLE_DETAILS``
    in ``zgw.py``), its register splits off the ``tussenvoegsel`` (so the family name matches
    with or without it), it has one ``voornaam`` (which must equal the notice's first name,
    not be one of several given names), and the date of birth is matched in SQL. The same
    "exactly one or none" rule and the same name folding (``normalise_name``) apply."""
    if person.given_name is None or person.family_name is None:
        return None
    given = normalise_name(person.given_name)
    family = normalise_name(person.family_name)
    found = {
        c.client_nummer
        for c in candidates
        if normalise_name(c.voornaam) == given
        and family
        in {
            normalise_name(f"{c.tussenvoegsel or ''} {c.achternaam}"),
            normalise_name(c.achternaam),
        }
    }
    return found.pop() if len(found) == 1 else None


def _refusal_text(refusal: Refusal) -> str:
    who = {
        "adapter": "door de Ketenpost-adapter, vóór verzending",
        "gateway": "door de Ketenpost-gateway",
        "recipient": f"door ontvanger {refusal.recipient}",
        "gateway-expiry": "verlopen: niet op tijd afgehaald door de ontvanger",
        "gateway-purge": "verwijderd: de aanpak is ingetrokken",
    }.get(refusal.by, f"door {refusal.by}")
    text = f"geweigerd {who} ({refusal.reason})"
    return f"{text}: {refusal.detail}" if refusal.detail else text


class WelfareInbox:
    """``Destination`` over ``ketenpost_inkomend`` and ``ketenpost_client``."""

    def __init__(self, database: WelfareDatabase, clock: Clock) -> None:
        self.database = database
        self.clock = clock

    async def apply(self, message: InboundMessage) -> Applied:
        """Insert the inbox row once per message id; for an approach-notice, match the persons
        to clients and return them. Raises ``DestinationUnavailableError``."""
        try:
            if isinstance(message.body, ApproachNotice):
                local_ids, notes = await self._match(message.body)
            else:
                local_ids = dict(message.local_ids)
                unknown = len(message.subjects) - len(local_ids)
                total = len(message.subjects)
                notes = [f"{unknown} van {total} jongeren niet aan een cliënt gekoppeld"]
                if not unknown:
                    notes = []
            clients = [local_ids[p] for p in message.subjects if p in local_ids]
            await self.database.execute(
                "INSERT INTO ketenpost_inkomend (message_id, afzender, soort, aanpak_id, "
                "client_nummers, inhoud, geaccepteerd_op, ontvangen_op, trace_id, opmerking) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (message_id) DO NOTHING",
                message.message_id,
                message.sender,
                message.message_type.value,
                message.token_id,
                json.dumps(clients),
                message.body_bytes.decode("utf-8"),
                _utc(message.accepted_at),
                _utc(message.received_at),
                message.trace_id,
                "; ".join(notes) or None,
            )
        except WelfareDatabaseError as exc:
            raise DestinationUnavailableError(str(exc)) from exc
        return Applied(local_ids if isinstance(message.body, ApproachNotice) else {})

    async def _match(self, notice: ApproachNotice) -> tuple[dict[str, str], list[str]]:
        local_ids: dict[str, str] = {}
        notes: list[str] = []
        by_pseudonym = {p.pseudonym: p for p in notice.persons}
        for pseudonym in notice.subjects:
            person = by_pseudonym.get(pseudonym)
            if person is None or person.date_of_birth is None:
                notes.append("een jongere zonder naam en geboortedatum in de melding")
                continue
            rows = await self.database.fetch(
                "SELECT client_nummer, voornaam, tussenvoegsel, achternaam "
                "FROM ketenpost_client WHERE geboortedatum = ?",
                person.date_of_birth,
            )
            client = match_client(
                person,
                [
                    ClientCandidate(
                        str(r["client_nummer"]), r["voornaam"], r["tussenvoegsel"], r["achternaam"]
                    )
                    for r in rows
                ],
            )
            if client is None:
                notes.append(
                    f"{person.given_name} {person.family_name} "
                    f"({person.date_of_birth.isoformat()}): geen eenduidige cliënt gevonden"
                )
            else:
                local_ids[pseudonym] = client
        return local_ids, notes

    async def report_refusal(self, record_id: str, refusal: Refusal) -> None:
        """Mark the outbox row ``geweigerd`` with the reason; idempotent.
        Raises ``DestinationUnavailableError`` while the database is down."""
        if not record_id.isdigit():
            logger.warning("refusal_for_unknown_record", extra={"record_id": record_id})
            return
        try:
            await self.database.execute(
                "UPDATE ketenpost_uitgaand SET status = ?, reden_code = ?, reden = ?, "
                "bijgewerkt_op = ? WHERE id = ?",
                OutboxStatus.REFUSED.value,
                refusal.reason,
                _refusal_text(refusal)[:MAX_REASON_CHARS],
                _utc(self.clock.now()),
                int(record_id),
            )
        except WelfareDatabaseError as exc:
            raise DestinationUnavailableError(str(exc)) from exc


def create_transport(config: AdapterConfig, clock: Clock) -> Transport:
    """The ``welfare-sql`` transport from ``[system]``; ``AdapterConfigError`` naming the key.

    No connection is made here: an unreachable database is a transient condition the SDK
    retries, not a configuration error."""
    settings = WelfareSettings.from_config(config)
    database = open_database(settings)
    return Transport(
        source=WelfareOutboxSource(database, clock, settings.batch_size),
        mapping=WelfareMapping(),
        destination=WelfareInbox(database, clock),
    )
