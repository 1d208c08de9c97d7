"""The Halt adapter (CSV drop folders) end to end through a real gateway on 127.0.0.1.

Halt's side is ``adapters.testing.halt_fake.FakeHaltSystem``; the police and Velsen run on the
SDK's fake case system, so the chain police → Halt → coordinator is the one the demo plays.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from adapters.base import SystemClock
from adapters.config import AdapterConfig, PartnerSection
from adapters.engine import Adapter, FaultPoint
from adapters.errors import AdapterConfigError
from adapters.partners import halt as halt_adapter
from adapters.testing.halt_fake import BOM, VOORTGANG_COLUMNS, FakeHaltSystem, HaltDossier, halt_csv
from gateway.protocol.messages import PersonDetails, Progress, ProgressStatus
from gateway.protocol.reasons import Reason
from gateway.protocol.types import MessageType
from tests.adapters._partner_helpers_files import (
    DAAN_BORN,
    SEM_BORN,
    daan,
    file_adapter,
    sem,
    start_approach,
)
from tests.adapters.conftest import BSN_A, Net

DAAN_HALT = "HLT-2026-0042"


def signal_event(about: list[str], to: list[str]) -> dict[str, object]:
    """An incident in the police's (SDK fake) system about youths it knows by BSN."""
    return {
        "type": "signal",
        "about": about,
        "to": to,
        "date": "2026-03-01",
        "summary": "Overlast.",
    }


@dataclass
class HaltNet:
    halt: Adapter
    system: FakeHaltSystem
    people: tuple[PersonDetails, ...]


async def halt_with_approach(
    net: Net,
    *,
    people: tuple[PersonDetails, ...] | None = None,
    dossiers: tuple[HaltDossier, ...] = (HaltDossier(DAAN_HALT, "Daan", "de Vries", DAAN_BORN),),
    to: tuple[str, ...] = ("halt",),
    **overrides: Any,
) -> HaltNet:
    system = FakeHaltSystem(net.folder("halt"), {"settle_s": 0, **overrides})
    system.register(*dossiers)
    halt = await file_adapter(net, "halt", halt_adapter.create_transport, system.system_table())
    people = people or (daan(),)
    await start_approach(net, people, to=to)
    assert len((await halt.receive_once()).applied) == 1
    return HaltNet(halt, system, people)


def only(items: dict[str, Any]) -> Any:
    assert len(items) == 1, list(items)
    return next(iter(items.values()))


async def test_police_signal_arrives_as_csv_and_progress_reaches_the_coordinator(
    net: Net,
) -> None:
    h = await halt_with_approach(net, to=("halt", "politie-ijmond"))
    police = await net.adapter("politie-ijmond")
    assert len((await police.receive_once()).applied) == 1
    [notice_row] = only(h.system.received())
    assert notice_row["berichttype"] == "aanpakmelding"
    assert notice_row["halt-dossiernummer"] == DAAN_HALT
    assert notice_row["geboortedatum"] == "17-05-2010"
    h.system.import_in()

    # Police → Halt: a signal (the police system knows the youth by BSN).
    net.system("politie-ijmond").add_event("INC-1", signal_event([BSN_A], ["halt"]))
    await police.ingest_once()
    assert len((await police.send_once()).accepted) == 1
    signal_id = police.store.outbox()[0].message_id
    assert (await h.halt.receive_once()).applied == [signal_id]
    raw = (h.system.inbox / f"{signal_id}.csv").read_bytes()
    assert raw.startswith(BOM.encode())
    assert b";" in raw
    assert b"\r\n" in raw
    [row] = h.system.received()[f"{signal_id}.csv"]
    assert row["berichttype"] == "signaal"
    assert row["afzender"] == "politie-ijmond"
    assert row["halt-dossiernummer"] == DAAN_HALT
    assert row["incidentdatum"] == "01-03-2026"
    assert row["categorie"] == "overlast"

    # Halt → the coordinator: a voortgang row becomes a progress message at Velsen.
    h.system.export(
        "voortgang-20260312.csv",
        [
            h.system.voortgang(
                DAAN_HALT, ontvangers="gemeente-velsen", toelichting="-5 uur werkstraf; afgerond."
            )
        ],
    )
    assert await h.halt.ingest_once() == 1
    assert len((await h.halt.send_once()).accepted) == 1
    progress_id = h.halt.store.outbox()[0].message_id
    velsen = net.open_adapters[1]
    assert velsen.partner_id == "gemeente-velsen"
    assert (await velsen.receive_once()).applied == [progress_id]
    case = net.system("gemeente-velsen").cases[progress_id]
    assert isinstance(case.body, Progress)
    assert case.body.status is ProgressStatus.COMPLETED
    assert case.body.reported_on.isoformat() == "2026-03-12"
    assert case.body.summary == "-5 uur werkstraf; afgerond."  # sent as Halt wrote it
    assert case.message_type is MessageType.PROGRESS
    assert set(case.local_ids.values()) == {BSN_A}  # Velsen's own id for the youth
    assert h.system.pending() == []
    assert [p.name for p in h.system.verwerkt.iterdir()] == ["voortgang-20260312.csv"]


async def test_notice_matches_dossiers_only_when_unambiguous(net: Net) -> None:
    twin = "HLT-2026-0077"
    h = await halt_with_approach(
        net,
        people=(daan(), sem(bsn=None)),
        dossiers=(
            HaltDossier(DAAN_HALT, "Daan Pieter", "De  Vries", DAAN_BORN),
            # Two dossiers for the same name and birth date: Halt must link by hand.
            HaltDossier("HLT-2026-0076", "Sem", "Bakker", SEM_BORN),
            HaltDossier(twin, "Sem", "Bakker", SEM_BORN),
        ),
    )
    rows = only(h.system.received())
    by_name = {r["voornaam"]: r["halt-dossiernummer"] for r in rows}
    assert by_name == {"Daan": DAAN_HALT, "Sem": ""}
    # A report about the unlinked dossier has no approach: refused and reported to Halt.
    h.system.export("v.csv", [h.system.voortgang(twin, ontvangers="om")])
    await h.halt.ingest_once()
    await h.halt.receive_once()
    refusals = {n: r for n, r in h.system.received().items() if n.startswith("weigering-")}
    [row] = only(refusals)
    assert row["reden"] == Reason.NO_TOKEN.value
    assert row["bronbestand"] == "v.csv"
    assert row["regel"] == "2"


async def test_a_bad_row_fails_alone_and_the_good_rows_are_sent(net: Net) -> None:
    h = await halt_with_approach(net)
    v = h.system.voortgang
    rows = [
        v(DAAN_HALT, datum="10-03-2026"),
        v(DAAN_HALT, datum="31-02-2026"),  # line 3: no such date
        [DAAN_HALT, "11-03-2026", "loopt"],  # line 4: too few fields
        v(DAAN_HALT, status="half af"),  # line 5: unknown status
        v(DAAN_HALT, datum="2026-03-12"),  # line 6: ISO, not dd-mm-jjjj
        v(DAAN_HALT, datum="13-03-2026", status="Negatief  afgerond"),
    ]
    h.system.export("export-maart.csv", rows)
    assert await h.halt.ingest_once() == 6
    assert [r.record_id.split(":")[1] for r in h.halt.store.outbox()] == ["2", "7"]
    failed = {f.record_id.split(":")[1]: f.report for f in h.halt.store.failed()}
    assert failed == {
        "3": "line 3, column datum: '31-02-2026' is not a date (dd-mm-jjjj)",
        "4": "line 4: 3 fields; the header has 6",
        "5": "line 5, column status: 'half af' is not one of: loopt, zorgen, positief "
        "afgerond, negatief afgerond, geen contact",
        "6": "line 6, column datum: '2026-03-12' is not a date (dd-mm-jjjj)",
    }
    assert h.halt.metrics.value("failed_records_total") == 4
    reports = h.system.failed_reports()
    assert set(reports) == {f"export-maart.regel-{n}.csv" for n in (3, 4, 5, 6)}
    assert "'31-02-2026' is not a date" in reports["export-maart.regel-3.csv"]
    copy = (h.system.mislukt / "export-maart.regel-3.csv").read_bytes()
    assert copy.startswith(BOM.encode() + b"halt-dossiernummer;datum")
    assert b"31-02-2026" in copy
    # The file itself is done: its good rows are in the outbox, its bad rows in mislukt/.
    assert h.system.pending() == []
    assert (h.system.verwerkt / "export-maart.csv").exists()
    sent = await h.halt.send_once()
    assert len(sent.accepted) == 2


def _wrong_columns() -> bytes:
    header = ("dossier", "datum", "status", "toelichting", "ontvangers", "opmerking")
    return halt_csv(header, [[DAAN_HALT, "12-03-2026", "loopt", "Gaat goed.", "om", ""]])


def _windows_1252() -> bytes:
    row = ";".join(FakeHaltSystem.voortgang(DAAN_HALT, toelichting="Geïnformeerd, café."))
    return (";".join(VOORTGANG_COLUMNS) + "\r\n" + row + "\r\n").encode("cp1252")


def _huge() -> bytes:
    row = FakeHaltSystem.voortgang(DAAN_HALT)
    return halt_csv(VOORTGANG_COLUMNS, [row] * 200)


def _bad_quoting() -> bytes:
    return (BOM + ";".join(VOORTGANG_COLUMNS) + '\r\nHLT-1;"12-03-2026"x;loopt;a;om\r\n').encode()


def _header_only() -> bytes:
    return halt_csv(VOORTGANG_COLUMNS, [])


MALFORMED_FILES = {
    "wrong columns": (
        _wrong_columns,
        "missing column(s): halt-dossiernummer; unknown column(s): 'dossier', 'opmerking'",
    ),
    "wrong encoding": (_windows_1252, "the file is not UTF-8: byte 0xef on line 2"),
    "huge": (_huge, "the limit is 4096 bytes"),
    "bad quoting": (_bad_quoting, "line 2: not valid CSV"),
    "no rows": (_header_only, "a header row but no rows"),
}


@pytest.mark.parametrize("case", list(MALFORMED_FILES))
async def test_malformed_files_go_to_mislukt_with_a_report(net: Net, case: str) -> None:
    h = await halt_with_approach(net, max_file_bytes=4096)
    make, expected = MALFORMED_FILES[case]
    bad = make()
    h.system.export_bytes("kapot.csv", bad)
    h.system.export("goed.csv", [h.system.voortgang(DAAN_HALT)])
    await h.halt.ingest_once()
    assert (h.system.mislukt / "kapot.csv").read_bytes() == bad
    report = h.system.failed_reports()["kapot.csv"]
    assert expected in report
    assert "was NOT sent" in report
    [failed] = h.halt.store.failed()
    assert failed.record_id.startswith("kapot.csv:")
    assert expected in failed.report
    assert h.halt.metrics.value("failed_records_total") == 1
    assert [r.record_id.split(":")[0] for r in h.halt.store.outbox()] == ["goed.csv"]
    assert h.system.pending() == []
    # The same file exported again is the same failed record: not counted twice.
    h.system.export_bytes("kapot.csv", bad)
    await h.halt.ingest_once()
    assert h.halt.metrics.value("failed_records_total") == 1


async def test_the_same_file_read_twice_makes_one_message_per_row(net: Net) -> None:
    h = await halt_with_approach(net)
    rows = [h.system.voortgang(DAAN_HALT, datum=f"1{n}-03-2026") for n in range(3)]
    h.system.export("v.csv", rows)
    source = h.halt.transport.source
    # A crash between the commit and the move to verwerkt/: the file is read again.
    first = await source.pull(None)
    second = await source.pull(None)
    assert [r.record_id for r in first.records] == [r.record_id for r in second.records]
    await h.halt.accept(first.records)
    h.system.export("v.csv", rows)  # Halt's export runs again with the same content
    await h.halt.accept(second.records)
    await h.halt.ingest_once()
    assert len(h.halt.store.outbox()) == 3
    # Exported again with one row corrected: only that row is a new record.
    rows[1] = h.system.voortgang(DAAN_HALT, datum="11-03-2026", status="zorgen")
    h.system.export("v.csv", rows)
    assert await h.halt.ingest_once() == 3
    assert len(h.halt.store.outbox()) == 4


async def test_redelivery_after_a_crash_writes_one_file(net: Net) -> None:
    h = await halt_with_approach(net, to=("halt", "politie-ijmond"))
    police = await net.adapter("politie-ijmond")
    await police.receive_once()
    h.system.import_in()
    net.system("politie-ijmond").add_event("INC-2", signal_event([BSN_A], ["halt"]))
    await police.ingest_once()
    await police.send_once()
    message_id = police.store.outbox()[0].message_id

    class Crash(Exception):
        pass

    def crash_after_apply(at: str) -> None:
        if at == FaultPoint.APPLIED.value:
            raise Crash(at)

    await net.close(h.halt)
    crashing = await file_adapter(
        net,
        "halt",
        halt_adapter.create_transport,
        h.system.system_table(),
        faults=crash_after_apply,
    )
    with pytest.raises(Crash):
        await crashing.receive_once()
    await net.close(crashing)
    # Halt imports the file before the adapter is back and the message is delivered again.
    assert h.system.import_in() == [f"{message_id}.csv"]
    net.gw.clock.advance(net.gw.built.config.limits.lease_s + 1)
    again = await file_adapter(net, "halt", halt_adapter.create_transport, h.system.system_table())
    assert (await again.receive_once()).applied == [message_id]
    assert h.system.received() == {}
    status = await (await net.gw.client("politie-ijmond")).message_status(message_id)
    assert [r["state"] for r in status["recipients"]] == ["delivered"]


async def test_a_half_written_export_waits_until_it_settles(net: Net) -> None:
    h = await halt_with_approach(net, settle_s=5)
    data = halt_csv(VOORTGANG_COLUMNS, [h.system.voortgang(DAAN_HALT)] * 2)
    h.system.export_careless("v.csv", data, upto=len(data) - 30)
    (h.system.uit / ".w.csv.part").write_bytes(data[:20])
    assert await h.halt.ingest_once() == 0
    h.system.export_careless("v.csv", data)
    net.gw.clock.advance(60)
    assert await h.halt.ingest_once() == 2
    assert h.halt.store.failed() == []
    assert h.system.pending() == []
    assert (h.system.uit / ".w.csv.part").exists()


async def test_spreadsheet_formulas_in_inbound_text_are_defused(tmp_path: Path) -> None:
    header = ("berichtid", "toelichting")
    data = halt_adapter.render_csv(header, [["a" * 64, '=HYPERLINK("http://x","klik")']])
    assert b";\"'=HYPERLINK(" in data  # a text cell, never a formula
    row = halt_adapter.render_csv(header, [["a" * 64, "-5 punten"]], defuse=False)
    assert b";-5 punten" in row  # the copy of a row as Halt wrote it stays as it was


def _config(tmp_path: Path, **system: Any) -> AdapterConfig:
    return AdapterConfig(
        partner=PartnerSection(id="halt"),
        system={"transport": "halt-csv", **system},
        base=str(tmp_path),
    )


CONFIG_ERRORS: dict[str, tuple[dict[str, Any], str]] = {
    "unknown key": ({"uit": "x"}, r"\[system\] uit: unknown setting"),
    "wrong type": ({"uit_dir": ["x"]}, r"\[system\] uit_dir: Expected `str`"),
    "same folder twice": (
        {"in_dir": "uitwisseling/uit"},
        r"\[system\] in_dir: the same folder as uit_dir",
    ),
    "unknown time zone": ({"timezone": "Europe/Heemskerk"}, r"\[system\] timezone: unknown"),
    "zero files per pull": ({"max_files_per_pull": 0}, r"\[system\] max_files_per_pull:"),
}


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_bad_system_settings_are_named(tmp_path: Path, case: str) -> None:
    system, expected = CONFIG_ERRORS[case]
    with pytest.raises(AdapterConfigError, match=expected) as info:
        halt_adapter.create_transport(_config(tmp_path, **system), SystemClock())
    assert "\n" not in str(info.value)


def test_default_system_table_is_valid(tmp_path: Path) -> None:
    table = tomllib.loads(halt_adapter.DEFAULT_SYSTEM_TOML)["system"]
    assert table["transport"] == "halt-csv"
    transport = halt_adapter.create_transport(_config(tmp_path, **table), SystemClock())
    assert isinstance(transport.source, halt_adapter.HaltSource)
    assert (tmp_path / "uitwisseling" / "uit").is_dir()
