"""The ``welzijn-ijmond`` adapter (transport ``welfare-sql``) end to end through a real gateway
on 127.0.0.1, with the welfare case system's tables on SQLite and on the real PostgreSQL.

The coordinator (Velsen) runs the SDK's in-memory fake case system; the welfare organisation
runs its own adapter (built from ``adapter.toml`` by the registry) over ``WelfareCaseSystem``.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest

from adapters.base import DestinationUnavailableError, InboundMessage, PullBatch, SystemClock
from adapters.config import AdapterConfig, load_partner_dir
from adapters.engine import Adapter, EngineSettings, FaultPoint
from adapters.errors import AdapterConfigError, AdapterError
from adapters.partners.welfare import (
    DEFAULT_SYSTEM_TOML,
    ClientCandidate,
    WelfareDatabaseError,
    WelfareInbox,
    WelfareOutboxSource,
    create_transport,
    match_client,
)
from adapters.registry import default_registry
from adapters.testing.welfare_fake import WelfareCaseSystem
from gateway.protocol.messages import (
    CaseConference,
    PersonDetails,
    Progress,
    ProgressStatus,
    Signal,
    SignalCategory,
    encode_body,
)
from gateway.protocol.reasons import Reason
from gateway.protocol.token import TokenSubject
from gateway.protocol.types import MessageType, new_pseudonym
from tests.adapters._partner_helpers_rest import write_system
from tests.adapters.conftest import BSN_A, BSN_B, Net
from tests.gateway._pg import PgSchema, pg_schema
from tests.gateway.conftest import DAY, Token

WELFARE = "welzijn-ijmond"
VELSEN = "gemeente-velsen"
PARTICIPANTS = (VELSEN, "politie-ijmond", WELFARE)
SEM_BORN = datetime.date(2010, 4, 12)
SEM = PersonDetails(
    pseudonym="0" * 32,  # replaced per test
    given_name="Sem",
    family_name="de Vries",
    date_of_birth=SEM_BORN,
    bsn=BSN_A,
)
NOOR = PersonDetails(
    pseudonym="0" * 32,
    given_name="Noor",
    family_name="Bakker",
    date_of_birth=datetime.date(2011, 1, 3),
    bsn=BSN_B,
)
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@dataclass
class Welfare:
    """The welfare organisation: its case system's database and its adapters."""

    net: Net
    system: WelfareCaseSystem
    pg: PgSchema | None
    adapters: list[Adapter] = field(default_factory=list)

    async def adapter(self, faults: Callable[[str], None] | None = None) -> Adapter:
        config = load_partner_dir(self.net.folder(WELFARE))
        adapter = Adapter(
            config,
            default_registry().create(config, self.net.gw.clock),
            clock=self.net.gw.clock,
            settings=EngineSettings(backoff_base_s=1),
            gateway_url=self.net.gw.url,
            faults=faults,
        )
        await adapter.open()
        self.adapters.append(adapter)
        return adapter

    async def close(self, adapter: Adapter) -> None:
        await adapter.close()
        self.adapters.remove(adapter)


@pytest.fixture(params=BACKENDS)
async def welfare(request: pytest.FixtureRequest, net: Net) -> AsyncIterator[Welfare]:
    folder = net.folder(WELFARE)
    async with contextlib.AsyncExitStack() as stack:
        pg: PgSchema | None = None
        if request.param == "sqlite":
            # The development default: an SQLite file in the partner folder.
            system_toml = DEFAULT_SYSTEM_TOML
            system = WelfareCaseSystem.sqlite(folder / "welzijn.db")
        else:
            pg = await stack.enter_async_context(pg_schema())
            system_toml = (
                f'[system]\ntransport = "welfare-sql"\ndatabase = "{pg.url}"\n'
                f'schema = "{pg.schema}"\n'
            )
            system = WelfareCaseSystem.postgres(pg.url, pg.schema)
        # ``ketenpost init`` wrote the development [system] table; this backend's replaces it.
        write_system(net, WELFARE, system_toml)
        await system.create_tables()
        await system.register_client("C-1001", "Sem", "Vries", SEM_BORN, "de")
        await system.register_client("C-1002", "Lotte", "Visser", datetime.date(2009, 6, 30))
        env = Welfare(net, system, pg)
        try:
            yield env
        finally:
            # Before the schema is dropped: the adapters' connections first.
            for adapter in list(env.adapters):
                await env.close(adapter)
            await system.close()


async def start_approach(w: Welfare) -> tuple[Token, Adapter, Adapter]:
    """Velsen starts an approach for Sem (a client of the welfare organisation) and Noor (who
    is not) and sends the approach-notice to the welfare organisation, whose adapter matches
    the persons to its clients by name and date of birth."""
    gw = w.net.gw
    subjects = tuple(
        TokenSubject(pseudonym=new_pseudonym(), informed_at=gw.clock.now() - DAY) for _ in range(2)
    )
    token = gw.issue_token(participants=PARTICIPANTS, subjects=subjects)
    registered = await (await gw.client(VELSEN)).register_token(token.body)
    velsen = await w.net.adapter(VELSEN)
    people = (
        msgspec.structs.replace(SEM, pseudonym=subjects[0].pseudonym),
        msgspec.structs.replace(NOOR, pseudonym=subjects[1].pseudonym),
    )
    velsen.remember_token(
        token.signed,
        token.opening,
        {p.pseudonym: str(p.bsn) for p in people},
        registered_at=registered["registered_at"],
    )
    coordinator = w.net.system(VELSEN)
    coordinator.approaches[token.token_id] = (token.signed, token.opening, people)
    coordinator.add_event(
        f"notice-{token.token_id}",
        {"type": "approach-notice", "token_id": token.token_id, "to": [WELFARE]},
    )
    assert await velsen.ingest_once() == 1
    assert len((await velsen.send_once()).accepted) == 1
    welfare = await w.adapter()
    got = await welfare.receive_once()
    assert len(got.applied) == 1, got
    return token, velsen, welfare


# -- both ways -----------------------------------------------------------------------------


@pytest.mark.parametrize("welfare", BACKENDS, indirect=True)
async def test_notice_matches_clients_and_progress_reaches_the_coordinator(
    welfare: Welfare,
) -> None:
    w = welfare
    token, velsen, adapter = await start_approach(w)
    # The notice is in the welfare inbox, linked to Sem's client number; Noor is named as
    # not found rather than linked on a guess.
    [notice] = await w.system.inbox("approach-notice")
    assert notice.client_nummers == ("C-1001",)
    assert notice.aanpak_id == token.token_id
    assert notice.opmerking is not None
    assert notice.opmerking == "Noor Bakker (2011-01-03): geen eenduidige cliënt gevonden"

    row_id = await w.system.record_progress("C-1001", VELSEN, status="zorgelijk")
    assert await adapter.ingest_once() == 1
    sent = await adapter.send_once()
    assert len(sent.accepted) == 1
    assert (await w.system.outbox_row(row_id)).status == "opgenomen"

    got = await velsen.receive_once()
    assert got.applied == sent.accepted
    case = w.net.system(VELSEN).cases[got.applied[0]]
    assert case.sender == WELFARE
    assert isinstance(case.body, Progress)
    assert case.body.status is ProgressStatus.CONCERN
    assert case.body.reported_on == datetime.date(2026, 3, 9)
    # The coordinator's own record of the youth: Sem's pseudonym maps to Sem's BSN there.
    assert set(case.local_ids.values()) == {BSN_A}


@pytest.mark.parametrize("welfare", BACKENDS, indirect=True)
async def test_case_conference_lands_in_the_inbox_once_even_after_a_redelivery(
    welfare: Welfare,
) -> None:
    w = welfare
    gw = w.net.gw
    token, _velsen, first = await start_approach(w)
    await w.close(first)
    sem = token.subjects[0]
    conference = CaseConference(
        subjects=(sem,),
        date=datetime.date(2026, 3, 16),
        participants=(VELSEN, WELFARE, "politie-ijmond"),
        agenda=("Inzet jongerenwerk", "Afspraken met school"),
    )
    envelope = gw.seal(
        token,
        sender=VELSEN,
        to=(WELFARE,),
        message_type=MessageType.CASE_CONFERENCE,
        subjects=(sem,),
        body=encode_body(conference),
    )
    velsen_client = await gw.client(VELSEN)
    message_id = (await velsen_client.submit(envelope)).message_id

    class Crash(Exception):
        pass

    def crash_after_apply(at: str) -> None:
        if at == FaultPoint.APPLIED.value:
            raise Crash(at)

    # The inbox row is written, then the adapter dies before it records the message.
    crashing = await w.adapter(faults=crash_after_apply)
    with pytest.raises(Crash):
        await crashing.receive_once()
    await w.close(crashing)
    assert len(await w.system.inbox("case-conference")) == 1

    # The gateway delivers again after the lease; the second apply must change nothing.
    gw.clock.advance(gw.built.config.limits.lease_s + 1)
    adapter = await w.adapter()
    got = await adapter.receive_once()
    assert got.applied == [message_id]
    [row] = await w.system.inbox("case-conference")
    assert row.message_id == message_id
    assert row.afzender == VELSEN
    assert row.client_nummers == ("C-1001",)
    assert row.inhoud["agenda"] == ["Inzet jongerenwerk", "Afspraken met school"]
    assert row.status == "nieuw"
    status = await velsen_client.message_status(message_id)
    assert [r["state"] for r in status["recipients"]] == ["delivered"]


# -- outbound rules ------------------------------------------------------------------------


@pytest.mark.parametrize("welfare", BACKENDS, indirect=True)
async def test_same_outbox_row_read_twice_makes_one_message(welfare: Welfare) -> None:
    w = welfare
    _token, velsen, adapter = await start_approach(w)
    row_id = await w.system.record_progress("C-1001", VELSEN)
    assert await adapter.ingest_once() == 1
    # The acknowledgement was lost (a crash after the adapter's commit): the row is still
    # `nieuw`, so the next pull reads it again.
    await w.system.set_status(row_id, "nieuw")
    assert await adapter.ingest_once() == 1
    assert [r.record_id for r in adapter.store.outbox()] == [str(row_id)]
    await adapter.send_once()
    await adapter.send_once()
    got = await velsen.receive_once()
    assert len(got.applied) == 1
    assert (await w.system.outbox_row(row_id)).status == "opgenomen"


@pytest.mark.parametrize(
    "welfare", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
async def test_row_committed_after_a_higher_id_is_still_read(welfare: Welfare) -> None:
    """PostgreSQL assigns identity values at insert, not at commit: a slow transaction's row
    becomes visible after the adapter's cursor has passed its id."""
    w = welfare
    assert w.pg is not None
    _token, _velsen, adapter = await start_approach(w)
    slow = await w.pg.connect()
    try:
        transaction = slow.transaction()
        await transaction.start()
        late_id = await slow.fetchval(
            "INSERT INTO ketenpost_uitgaand (soort, client_nummer, ontvanger, inhoud) "
            "VALUES ('voortgang', 'C-1001', $1, $2) RETURNING id",
            VELSEN,
            '{"status": "afgerond", "samenvatting": "Traject afgerond.", "datum": "2026-03-10"}',
        )
        early_id = await w.system.record_progress("C-1001", VELSEN)
        assert early_id > late_id
        assert await adapter.ingest_once() == 1
        assert adapter.store.cursor() == str(early_id)
        await transaction.commit()
    finally:
        await slow.close()
    assert await adapter.ingest_once() == 1
    assert sorted(r.record_id for r in adapter.store.outbox()) == sorted(
        [str(late_id), str(early_id)]
    )
    assert (await w.system.outbox_row(late_id)).status == "opgenomen"


PROGRESS = {"status": "afgerond", "samenvatting": "Traject afgerond.", "datum": "2026-03-10"}


@dataclass(frozen=True)
class BadRow:
    name: str
    soort: str
    client: str | None
    inhoud: dict[str, Any] | str
    report: str
    ontvanger: str = VELSEN


BAD_ROWS = (
    BadRow("no client", "voortgang", None, PROGRESS, "client_nummer: ontbreekt"),
    BadRow("blank client", "voortgang", "  ", PROGRESS, "client_nummer: ontbreekt"),
    BadRow(
        "unknown soort", "huisbezoek", "C-1001", PROGRESS, "soort: onbekende soort 'huisbezoek'"
    ),
    BadRow(
        "bad JSON", "voortgang", "C-1001", '{"status": "afgerond", ', "inhoud: geen geldige JSON"
    ),
    BadRow(
        "missing field",
        "voortgang",
        "C-1001",
        {"status": "afgerond", "datum": "2026-03-10"},
        "missing required field `samenvatting`",
    ),
    BadRow(
        "Dutch date",
        "voortgang",
        "C-1001",
        {**PROGRESS, "datum": "10-03-2026"},
        "`$.datum`",
    ),
    BadRow(
        "unknown status",
        "voortgang",
        "C-1001",
        {**PROGRESS, "status": "prima"},
        "`$.status`",
    ),
    BadRow(
        "unknown field",
        "voortgang",
        "C-1001",
        {**PROGRESS, "opmerkingen": "x"},
        "unknown field `opmerkingen`",
    ),
    BadRow(
        "recipient is a name",
        "voortgang",
        "C-1001",
        PROGRESS,
        "ontvanger: 'Gemeente Velsen' is geen partner-id",
        ontvanger="Gemeente Velsen",
    ),
    BadRow(
        "case conference without agenda",
        "casusoverleg-bijdrage",
        "C-1001",
        {"datum": "2026-03-16", "agendapunten": []},
        "`$.agendapunten`",
    ),
)


@pytest.mark.parametrize("welfare", BACKENDS, indirect=True)
async def test_malformed_rows_go_to_the_failed_place_and_are_marked(welfare: Welfare) -> None:
    w = welfare
    _token, _velsen, adapter = await start_approach(w)
    ids = {
        bad.name: await w.system.write_outbox(bad.soort, bad.client, bad.ontvanger, bad.inhoud)
        for bad in BAD_ROWS
    }
    good = await w.system.record_progress("C-1001", VELSEN)
    assert await adapter.ingest_once() == len(BAD_ROWS) + 1

    failed = {f.record_id: f.report for f in adapter.store.failed()}
    assert set(failed) == {str(i) for i in ids.values()}
    for bad in BAD_ROWS:
        row = await w.system.outbox_row(ids[bad.name])
        assert bad.report in failed[str(ids[bad.name])], bad.name
        assert (row.status, row.reden_code) == ("mislukt", "ongeldig_record"), bad.name
        assert row.reden == failed[str(ids[bad.name])], bad.name
    assert adapter.metrics.value("failed_records_total") == len(BAD_ROWS)
    # The rows behind them are not blocked, and reading again counts nothing twice.
    assert [r.record_id for r in adapter.store.outbox()] == [str(good)]
    assert (await w.system.outbox_row(good)).status == "opgenomen"
    assert await adapter.ingest_once() == 0
    assert adapter.metrics.value("failed_records_total") == len(BAD_ROWS)


SIGNAL = {
    "datum": "2026-03-08",
    "categorie": "zorg",
    "samenvatting": "Jongere vertelt over dreiging door oudere jongeren bij het station.",
    "gemeente": "Velsen",
}


@pytest.mark.parametrize("welfare", BACKENDS, indirect=True)
async def test_refusals_are_written_back_to_the_outbox_row(welfare: Welfare) -> None:
    w = welfare
    _token, velsen, adapter = await start_approach(w)
    # Welfare may signal a concern to the coordinator, but never to the police.
    to_police = await w.system.write_outbox("signaal", "C-1001", "politie-ijmond", SIGNAL)
    to_coordinator = await w.system.write_outbox("signaal", "C-1001", VELSEN, SIGNAL)
    # Lotte is a client, but no approach covers her: refused before sending.
    no_approach = await w.system.record_progress("C-1002", VELSEN)
    await adapter.ingest_once()
    sent = await adapter.send_once()
    assert len(sent.accepted) == 1
    assert len(sent.refused) == 1

    row = await w.system.outbox_row(to_police)
    assert (row.status, row.reden_code) == ("geweigerd", Reason.TYPE_NOT_ALLOWED.value)
    assert row.reden is not None
    assert row.reden.startswith("geweigerd door de Ketenpost-gateway (type_not_allowed)")
    row = await w.system.outbox_row(no_approach)
    assert (row.status, row.reden_code) == ("geweigerd", Reason.NO_TOKEN.value)
    assert (await w.system.outbox_row(to_coordinator)).status == "opgenomen"

    got = await velsen.receive_once()
    [case] = [w.net.system(VELSEN).cases[m] for m in got.applied]
    assert isinstance(case.body, Signal)
    assert case.body.category is SignalCategory.CONCERN


# -- without a gateway ---------------------------------------------------------------------


def _candidate(number: str, first: str, prefix: str | None, last: str) -> ClientCandidate:
    return ClientCandidate(number, first, prefix, last)


DE_VRIES = [_candidate("C-1", "Sem", "de", "Vries")]
MATCH_CASES = [
    ("prefix in its own column", "de Vries", DE_VRIES, "C-1"),
    ("prefix in the family name", "de Vries", [_candidate("C-1", "Sem", None, "de Vries")], "C-1"),
    ("case and diacritics", "De  VRIES", [_candidate("C-1", "SÉM", "De", "vries")], "C-1"),
    ("notice without the prefix", "Vries", DE_VRIES, "C-1"),
    ("client without the prefix", "de Vries", [_candidate("C-1", "Sem", None, "Vries")], None),
    ("other first name", "de Vries", [_candidate("C-1", "Sam", "de", "Vries")], None),
    ("other family name", "de Vos", DE_VRIES, None),
    (
        "two clients fit: no guess",
        "de Vries",
        [*DE_VRIES, _candidate("C-2", "Sem", None, "de Vries")],
        None,
    ),
    ("no client born that day", "de Vries", [], None),
]


@pytest.mark.parametrize(
    ("family_name", "candidates", "expected"),
    [pytest.param(f, c, e, id=name) for name, f, c, e in MATCH_CASES],
)
def test_persons_match_clients_by_name_only_when_unambiguous(
    family_name: str, candidates: list[ClientCandidate], expected: str | None
) -> None:
    person = msgspec.structs.replace(SEM, family_name=family_name)
    assert match_client(person, candidates) == expected


def test_a_person_without_a_name_matches_no_one() -> None:
    nameless = msgspec.structs.replace(SEM, given_name=None)
    assert match_client(nameless, [_candidate("C-1", "Sem", "de", "Vries")]) is None


def _config(tmp_path: Path, system: dict[str, Any]) -> AdapterConfig:
    return msgspec.convert(
        {
            "partner": {"id": WELFARE},
            "system": {"transport": "welfare-sql", **system},
            "base": str(tmp_path),
        },
        AdapterConfig,
    )


CONFIG_CASES = [
    ("no database", {}, "[system] database: missing"),
    ("empty database", {"database": " "}, "[system] database: missing"),
    ("unknown key", {"database": "w.db", "tabel": "x"}, "[system] tabel: unknown setting"),
    ("batch size zero", {"database": "w.db", "batch_size": 0}, "[system] batch_size:"),
    ("batch size text", {"database": "w.db", "batch_size": "10"}, "[system] batch_size:"),
    ("schema for SQLite", {"database": "w.db", "schema": "k"}, "[system] schema: only for"),
    (
        "password in the URL",
        {"database": "postgresql://k:geheim@db:5432/welzijn"},
        "[system] database: the URL carries a password",
    ),
    (
        "password as a URL parameter",
        {"database": "postgresql://k@db/welzijn?password=geheim"},
        "[system] database: the URL carries a password",
    ),
    ("other scheme", {"database": "mysql://k@db/w"}, "[system] database: unsupported scheme"),
    (
        "missing password file",
        {"database": "postgresql://k@db/welzijn", "password_file": "wachtwoord.txt"},
        "[system] password_file:",
    ),
    (
        "schema not an identifier",
        {"database": "postgresql://k@db/welzijn", "schema": "x; DROP TABLE y"},
        "[system] schema:",
    ),
]


@pytest.mark.parametrize(
    ("system", "message"),
    [pytest.param(s, m, id=name) for name, s, m in CONFIG_CASES],
)
def test_bad_system_tables_are_refused_in_one_line(
    tmp_path: Path, system: dict[str, Any], message: str
) -> None:
    with pytest.raises(AdapterConfigError) as caught:
        create_transport(_config(tmp_path, system), SystemClock())
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert "geheim" not in str(caught.value)


def test_default_system_table_and_a_postgres_url_with_a_password_file(tmp_path: Path) -> None:
    import tomllib

    system = tomllib.loads(DEFAULT_SYSTEM_TOML)["system"]
    transport = default_registry().create(_config(tmp_path, system), SystemClock())
    assert isinstance(transport.source, WelfareOutboxSource)
    assert isinstance(transport.destination, WelfareInbox)
    # Nothing is opened, let alone created, until the adapter runs.
    assert not (tmp_path / "welzijn.db").exists()
    (tmp_path / "db.password").write_text("s3cret\n", encoding="utf-8")
    create_transport(
        _config(
            tmp_path,
            {
                "database": "postgresql://ketenpost@db.welzijn-ijmond.local:5432/welzijn",
                "password_file": "db.password",
                "schema": "ketenpost",
            },
        ),
        SystemClock(),
    )


async def test_a_missing_database_is_unavailable_not_created(tmp_path: Path) -> None:
    transport = create_transport(_config(tmp_path, {"database": "welzijn.db"}), SystemClock())
    # The pull finds nothing (the problem is logged once: test_welfare_missing_db.py) and is
    # tried again at the SDK's next pull; the database itself raises.
    assert await transport.source.pull(None) == PullBatch(())
    assert isinstance(transport.source, WelfareOutboxSource)
    with pytest.raises(WelfareDatabaseError) as caught:
        await transport.source.database.fetch("SELECT 1")
    assert isinstance(caught.value, AdapterError)
    message = InboundMessage(
        message_id="m" * 64,
        sender=VELSEN,
        message_type=MessageType.PROGRESS,
        token_id="t" * 32,
        subjects=("a" * 32,),
        body=Progress(
            subjects=("a" * 32,),
            status=ProgressStatus.ON_TRACK,
            summary="Loopt.",
            reported_on=datetime.date(2026, 3, 9),
        ),
        body_bytes=b"{}",
        accepted_at=0,
        received_at=0,
        trace_id="00-" + "1" * 32 + "-" + "2" * 16 + "-01",
    )
    with pytest.raises(DestinationUnavailableError):
        await transport.destination.apply(message)
    assert not (tmp_path / "welzijn.db").exists()
    await transport.source.close()
