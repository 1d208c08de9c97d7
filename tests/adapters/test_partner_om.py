"""The OM adapter (XML drop folders) end to end through a real gateway on 127.0.0.1.

The OM side is ``adapters.testing.om_fake.FakeOmSystem``; Halt runs its own CSV adapter with
``FakeHaltSystem``, so the chain OM → Halt → OM is the one the demo plays.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from adapters import partners
from adapters.base import MalformedRecordError, SystemClock
from adapters.config import AdapterConfig, PartnerSection
from adapters.engine import Adapter, FaultPoint
from adapters.errors import AdapterConfigError
from adapters.partners import halt as halt_adapter
from adapters.partners import om as om_adapter
from adapters.testing.halt_fake import FakeHaltSystem, HaltDossier
from adapters.testing.om_fake import FakeOmSystem, OmPerson
from gateway.protocol.reasons import Reason
from tests.adapters._partner_helpers_files import (
    DAAN_BORN,
    daan,
    file_adapter,
    start_approach,
)
from tests.adapters.conftest import BSN_A, Net

DAAN_OM = "20260417"
DAAN_HALT = "HLT-2026-0042"


@dataclass
class Chain:
    om: Adapter
    halt: Adapter
    om_system: FakeOmSystem
    halt_system: FakeHaltSystem


async def om_and_halt(net: Net, **om_overrides: Any) -> Chain:
    """Both adapters on their fakes, Daan known to both systems, the approach started."""
    om_system = FakeOmSystem(net.folder("om"), {"settle_s": 0, **om_overrides})
    om_system.register(OmPerson(DAAN_OM, "Daan Pieter", "de Vries", DAAN_BORN, bsn=BSN_A))
    halt_system = FakeHaltSystem(net.folder("halt"), {"settle_s": 0})
    # Halt's registration has no BSN for Daan: the notice is matched on name and birth date.
    halt_system.register(HaltDossier(DAAN_HALT, "Daan", "de Vries", DAAN_BORN))
    om = await file_adapter(net, "om", om_adapter.create_transport, om_system.system_table())
    halt = await file_adapter(
        net, "halt", halt_adapter.create_transport, halt_system.system_table()
    )
    await start_approach(net, [daan()], to=("om", "halt"))
    assert len((await om.receive_once()).applied) == 1
    assert len((await halt.receive_once()).applied) == 1
    return Chain(om, halt, om_system, halt_system)


def only(items: dict[str, Any]) -> Any:
    assert len(items) == 1, list(items)
    return next(iter(items.values()))


async def test_referral_reaches_halt_and_progress_comes_back_as_xml(net: Net) -> None:
    chain = await om_and_halt(net)
    notice = only(chain.om_system.received())
    assert notice.kind == "Ketenbericht"
    assert notice.value("Berichttype") == "aanpakmelding"
    # The OM adapter linked the pseudonym to the OM person number via the register (BSN).
    [person] = notice.all("Aanpakmelding/Personen/Persoon")
    assert person.get("persoonsnummer") == DAAN_OM
    chain.om_system.import_out()

    # OM → Halt: a referral written by the OM system into in/.
    chain.om_system.drop("VW-15-123456-26.xml", chain.om_system.verwijzing([DAAN_OM]))
    assert await chain.om.ingest_once() == 1
    assert len((await chain.om.send_once()).accepted) == 1
    assert chain.om_system.pending() == []
    assert [p.name for p in chain.om_system.archive.iterdir()] == ["VW-15-123456-26.xml"]
    referral_id = chain.om.store.outbox()[0].message_id
    assert (await chain.halt.receive_once()).applied == [referral_id]
    [row] = chain.halt_system.received()[f"{referral_id}.csv"]
    assert row["berichttype"] == "verwijzing"
    assert row["afzender"] == "om"
    assert row["halt-dossiernummer"] == DAAN_HALT
    assert row["delictcategorie"] == "vernieling"
    assert row["pleegdatum"] == "20-02-2026"
    assert row["halt-waardig"] == "ja"
    assert row["zaaknummer"] == "15/123456-26"

    # Halt → OM: the progress report arrives in out/ as a schema-valid <Ketenbericht>.
    chain.halt_system.export(
        "voortgang-20260312.csv", [FakeHaltSystem.voortgang(DAAN_HALT, ontvangers="om")]
    )
    assert await chain.halt.ingest_once() == 1
    assert len((await chain.halt.send_once()).accepted) == 1
    progress_id = chain.halt.store.outbox()[0].message_id
    assert (await chain.om.receive_once()).applied == [progress_id]
    document = chain.om_system.received()[f"{progress_id}.xml"]
    assert document.value("Afzender") == "halt"
    assert document.value("Berichttype") == "voortgang"
    assert document.value("Voortgang/Status") == "afgerond"
    assert document.value("Voortgang/Datum") == "2026-03-12"
    [youth] = document.all("Jeugdigen/Jeugdige")
    assert youth.get("persoonsnummer") == DAAN_OM
    # The referral's delivery receipt came back to the OM as a verified sender event.
    assert chain.om.store.outcomes(referral_id) == {"halt": ("receipt", None)}


async def test_redelivery_after_a_crash_writes_one_file(net: Net) -> None:
    chain = await om_and_halt(net)
    chain.om_system.import_out()
    chain.halt_system.export("v.csv", [FakeHaltSystem.voortgang(DAAN_HALT, ontvangers="om")])
    await chain.halt.ingest_once()
    await chain.halt.send_once()
    message_id = chain.halt.store.outbox()[0].message_id

    class Crash(Exception):
        pass

    def crash_after_apply(at: str) -> None:
        if at == FaultPoint.APPLIED.value:
            raise Crash(at)

    await net.close(chain.om)
    crashing = await file_adapter(
        net,
        "om",
        om_adapter.create_transport,
        chain.om_system.system_table(),
        faults=crash_after_apply,
    )
    with pytest.raises(Crash):
        await crashing.receive_once()
    await net.close(crashing)
    # The file was written; the OM system imports it (removes it from out/) before the
    # adapter comes back and the gateway delivers the message again after the lease.
    assert chain.om_system.import_out() == [f"{message_id}.xml"]
    net.gw.clock.advance(net.gw.built.config.limits.lease_s + 1)
    again = await file_adapter(
        net, "om", om_adapter.create_transport, chain.om_system.system_table()
    )
    assert (await again.receive_once()).applied == [message_id]
    assert chain.om_system.received() == {}
    assert list(chain.om_system.imported).count(f"{message_id}.xml") == 1
    status = await (await net.gw.client("halt")).message_status(message_id)
    assert [r["state"] for r in status["recipients"]] == ["delivered"]


def _valid(system: FakeOmSystem) -> bytes:
    return system.verwijzing([DAAN_OM])


def _truncated(system: FakeOmSystem) -> bytes:
    data = _valid(system)
    return data[: len(data) // 2]


def _bad_category(system: FakeOmSystem) -> bytes:
    return system.verwijzing([DAAN_OM], delictcategorie="zakkenrollerij")


def _dutch_date(system: FakeOmSystem) -> bytes:
    return _valid(system).replace(b"<Pleegdatum>2026-02-20<", b"<Pleegdatum>20-02-2026<")


def _huge(system: FakeOmSystem) -> bytes:
    return system.verwijzing([DAAN_OM], toelichting="x" * 6000)


def _entities(system: FakeOmSystem) -> bytes:
    lol = b'<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
    body = _valid(system).split(b"?>", 1)[1].replace(b"vernieling", b"&b;")
    return b'<?xml version="1.0"?>\n<!DOCTYPE Verwijzing [' + lol + b"]>" + body


def _inbound_format(system: FakeOmSystem) -> bytes:
    return (
        b'<Weigering xmlns="https://ketenpost.nl/xml/om/v1" versie="1">'
        b"<BerichtId>" + b"a" * 64 + b"</BerichtId><Bronbestand>x.xml</Bronbestand>"
        b"<Door>adapter</Door><Reden>no_token</Reden></Weigering>"
    )


MALFORMED = {
    "truncated": (_truncated, "not well-formed XML"),
    "xsd-invalid category": (_bad_category, "not valid against om.xsd"),
    "xsd-invalid, the path named": (_bad_category, "/Verwijzing/Delictcategorie"),
    "xsd-invalid date": (_dutch_date, "Pleegdatum"),
    "huge": (_huge, "the limit is 4096 bytes"),
    "doctype with entities": (_entities, "DOCTYPE"),
    "an inbound format": (_inbound_format, "not a document the OM sends"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_malformed_documents_go_to_failed_with_a_report(net: Net, case: str) -> None:
    chain = await om_and_halt(net, max_file_bytes=4096)
    make, expected = MALFORMED[case]
    bad = make(chain.om_system)
    chain.om_system.drop("bad.xml", bad)
    chain.om_system.drop("good.xml", _valid(chain.om_system))
    assert await chain.om.ingest_once() == 2
    # The bad file is in failed/ with a readable report beside it, counted once ...
    assert (chain.om_system.failed / "bad.xml").exists()
    report = chain.om_system.failed_reports()["bad.xml"]
    assert expected in report
    assert "was NOT sent" in report
    # Reports are logged too: no personal data, and no values quoted from the document.
    assert "de Vries" not in report
    assert "zakkenrollerij" not in report
    [failed] = chain.om.store.failed()
    assert failed.record_id.startswith("bad.xml:")
    assert expected in failed.report
    assert chain.om.metrics.value("failed_records_total") == 1
    # ... and the good one next to it went on.
    assert [r.record_id.split(":")[0] for r in chain.om.store.outbox()] == ["good.xml"]
    assert chain.om_system.pending() == []
    # The same bad file dropped again is the same failed record: not counted twice.
    chain.om_system.drop("bad.xml", bad)
    await chain.om.ingest_once()
    assert chain.om.metrics.value("failed_records_total") == 1


async def test_entities_are_never_expanded() -> None:
    schema = om_adapter.load_schema()
    billion = (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "a"><!ENTITY b "&a;&a;">]>'
        b'<Verwijzing xmlns="https://ketenpost.nl/xml/om/v1" versie="1">&b;</Verwijzing>'
    )
    with pytest.raises(MalformedRecordError, match="DOCTYPE"):
        om_adapter.parse_document(billion, schema)
    external = b'<!DOCTYPE x SYSTEM "http://127.0.0.1:9/x.dtd"><x/>'
    with pytest.raises(MalformedRecordError, match="DOCTYPE"):
        om_adapter.parse_document(external, schema)


async def test_the_same_file_read_twice_makes_one_message(net: Net) -> None:
    chain = await om_and_halt(net)
    data = _valid(chain.om_system)
    chain.om_system.drop("VW-1.xml", data)
    source = chain.om.transport.source
    # A crash between the commit and the archive move: the file is read again.
    first = await source.pull(None)
    second = await source.pull(None)
    assert [r.record_id for r in first.records] == [r.record_id for r in second.records]
    await chain.om.accept(first.records)
    chain.om_system.drop("VW-1.xml", data)  # the OM system drops the very same file again
    await chain.om.accept(second.records)
    await chain.om.ingest_once()
    assert len(chain.om.store.outbox()) == 1
    # A corrected document under the same name is a new record.
    chain.om_system.drop("VW-1.xml", chain.om_system.verwijzing([DAAN_OM], halt_waardig=False))
    assert await chain.om.ingest_once() == 1
    assert len(chain.om.store.outbox()) == 2
    await chain.om.send_once()
    got = await chain.halt.receive_once()
    assert len(got.applied) == 2
    assert len(chain.halt_system.received()) == 3  # the notice and the two referrals


async def test_half_written_files_wait_until_they_settle(net: Net) -> None:
    chain = await om_and_halt(net, settle_s=5)
    data = _valid(chain.om_system)
    # A careless writer is busy with in/VW-2.xml; a careful one has a dot-named temp file.
    chain.om_system.drop_careless("VW-2.xml", data, upto=len(data) // 2)
    (chain.om_system.inbox / ".VW-3.xml.part").write_bytes(data[:40])
    assert await chain.om.ingest_once() == 0
    chain.om_system.finish_careless("VW-2.xml", data)
    net.gw.clock.advance(60)
    assert await chain.om.ingest_once() == 1
    assert chain.om.store.failed() == []
    assert len(chain.om.store.outbox()) == 1
    assert chain.om_system.pending() == []  # the temp file is never listed nor touched
    assert (chain.om_system.inbox / ".VW-3.xml.part").exists()


async def test_a_refused_document_is_reported_back_as_weigering(net: Net) -> None:
    chain = await om_and_halt(net)
    chain.om_system.import_out()
    # A youth the OM knows but for whom no approach was started.
    chain.om_system.drop("VW-9.xml", chain.om_system.verwijzing(["99887766"]))
    await chain.om.ingest_once()
    await chain.om.receive_once()  # reports refusals to the partner system
    refusal = only(chain.om_system.received())
    assert refusal.kind == "Weigering"
    assert refusal.value("Reden") == Reason.NO_TOKEN.value
    assert refusal.value("Door") == "adapter"
    assert refusal.value("Bronbestand") == "VW-9.xml"
    assert chain.om.metrics.value("refused_total", reason="no_token") == 1


def _config(tmp_path: Path, **system: Any) -> AdapterConfig:
    return AdapterConfig(
        partner=PartnerSection(id="om"),
        system={"transport": "om-xml", **system},
        base=str(tmp_path),
    )


CONFIG_ERRORS: dict[str, tuple[dict[str, Any], str]] = {
    "unknown key": ({"inbox": "x"}, r"\[system\] inbox: unknown setting"),
    "wrong type": ({"in_dir": 3}, r"\[system\] in_dir: Expected `str`"),
    "empty folder": ({"failed_dir": ""}, r"\[system\] failed_dir:"),
    "same folder twice": ({"out_dir": "drop/in"}, r"\[system\] out_dir: the same folder"),
    "tiny limit": ({"max_file_bytes": 10}, r"\[system\] max_file_bytes: Expected `int` >= 1024"),
    "negative settle": ({"settle_s": -1}, r"\[system\] settle_s:"),
}


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_bad_system_settings_are_named(tmp_path: Path, case: str) -> None:
    system, expected = CONFIG_ERRORS[case]
    with pytest.raises(AdapterConfigError, match=expected) as info:
        om_adapter.create_transport(_config(tmp_path, **system), SystemClock())
    assert "\n" not in str(info.value)


def test_default_system_table_is_valid(tmp_path: Path) -> None:
    import tomllib

    table = tomllib.loads(om_adapter.DEFAULT_SYSTEM_TOML)["system"]
    assert table["transport"] == "om-xml"
    transport = om_adapter.create_transport(_config(tmp_path, **table), SystemClock())
    assert isinstance(transport.source, om_adapter.OmSource)
    assert (tmp_path / "drop" / "in").is_dir()
    # The XSD ships inside the package (package-data), next to the module.
    assert (Path(partners.__file__).parent / "om.xsd").is_file()
    assert re.search(r"^\[system\]$", om_adapter.DEFAULT_SYSTEM_TOML, re.MULTILINE)
