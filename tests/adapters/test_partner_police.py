"""The police adapter (``police-rest``) end to end: the fake police system POSTs incidents to
the adapter's endpoint and takes inbound messages on its webhook, through a real gateway."""

from __future__ import annotations

import json
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

from adapters.base import DeliveryReporter, SystemClock
from adapters.config import AdapterConfig
from adapters.engine import Adapter, FaultPoint
from adapters.errors import AdapterConfigError
from adapters.partners.police import DEFAULT_SYSTEM_TOML, PoliceSource, create_transport
from adapters.testing._server import DownMode
from adapters.testing.police_fake import FakePoliceSystem, incident, post_incident
from gateway.protocol.messages import Signal, SignalCategory
from gateway.protocol.reasons import Reason
from tests.adapters._partner_helpers_rest import (
    DAAN,
    SEM,
    Approach,
    delivery_states,
    open_partner_adapter,
    start_approach,
    velsen_sends,
)
from tests.adapters.conftest import BSN_A, Net

PN_DAAN = "PN-1004711"
PN_SEM = "PN-1009932"
PN_WITNESS = "PN-2000001"


@pytest.fixture
async def police_system() -> AsyncIterator[FakePoliceSystem]:
    async with FakePoliceSystem() as system:
        system.add_person(PN_DAAN, DAAN.given_name, DAAN.family_name, DAAN.date_of_birth)
        system.add_person(PN_SEM, SEM.given_name, SEM.family_name, SEM.date_of_birth)
        system.add_person(PN_WITNESS, "Anna", "Smit", SEM.date_of_birth)
        yield system


def system_toml(fake: FakePoliceSystem, **extra: Any) -> str:
    lines = [
        "[system]",
        'transport = "police-rest"',
        'listen = "127.0.0.1:0"',
        f'webhook_url = "{fake.webhook_url}"',
        f'refusals_url = "{fake.refusals_url}"',
        "timeout_s = 5",
        *(f"{k} = {json.dumps(v)}" for k, v in extra.items()),
    ]
    return "\n".join(lines) + "\n"


@dataclass
class Scene:
    approach: Approach
    velsen: Adapter
    police: Adapter
    halt: Adapter
    fake: FakePoliceSystem

    @property
    def endpoint(self) -> str:
        source = self.police.transport.source
        assert isinstance(source, PoliceSource)
        return source.url


async def scene(net: Net, fake: FakePoliceSystem, *, faults: Any = None, **extra: Any) -> Scene:
    """Velsen starts an approach about Daan and Sem for the police and Halt; both adapters
    take the notice in, the police one through the fake police system's webhook."""
    approach, velsen = await start_approach(net, to=("politie-ijmond", "halt"))
    police = await open_partner_adapter(
        net, "politie-ijmond", system_toml(fake, **extra), faults=faults
    )
    halt = await net.adapter("halt")
    assert len((await police.receive_once()).applied) == 1
    assert len((await halt.receive_once()).applied) == 1
    return Scene(approach, velsen, police, halt, fake)


async def test_notice_maps_person_numbers_by_name_and_birth_date(
    net: Net, police_system: FakePoliceSystem
) -> None:
    s = await scene(net, police_system)
    [notice] = police_system.messages_of("approach-notice")
    assert notice["afzender"] == "gemeente-velsen"
    assert {p["voornaam"] for p in notice["personen"]} == {"Daan", "Sem"}
    token_id = s.approach.token.token_id
    assert s.police.store.local_ids(token_id) == {
        s.approach.pseudonyms[DAAN.bsn]: PN_DAAN,
        s.approach.pseudonyms[SEM.bsn]: PN_SEM,
    }


async def test_incident_becomes_a_signal_for_the_coordinator_and_halt(
    net: Net, police_system: FakePoliceSystem
) -> None:
    s = await scene(net, police_system)
    document = incident(
        "PL1200-2026-0412345",
        [(PN_DAAN, "verdachte"), (PN_WITNESS, "getuige")],
        categorie="vernieling",
    )
    status, answer = await post_incident(s.endpoint, document)
    assert (status, answer["status"]) == (202, "aangenomen")
    # Acknowledged only when durable: the outbox row is there before anything is sent.
    [row] = s.police.store.outbox()
    assert row.record_id == answer["kenmerk"]
    # The police system sends the same incident again (its answer got lost): one message.
    assert (await post_incident(s.endpoint, document))[0] == 202
    assert len(s.police.store.outbox()) == 1
    assert len((await s.police.send_once()).accepted) == 1

    daan = s.approach.pseudonyms[BSN_A]
    for adapter in (s.velsen, s.halt):
        got = await adapter.receive_once()
        assert got.applied == [row.message_id], adapter.partner_id
        case = net.system(adapter.partner_id).cases[row.message_id]
        assert case.sender == "politie-ijmond"
        assert case.token_id == s.approach.token.token_id
        body = case.body
        assert isinstance(body, Signal)
        # Only the suspect is a subject: the witness is never shared.
        assert body.subjects == (daan,)
        assert case.local_ids == {daan: BSN_A}
        assert body.category is SignalCategory.VANDALISM
        assert body.source_reference == "PL1200-2026-0412345"
        assert body.incident_date.isoformat() == "2026-03-01"
        assert body.location_municipality == "Velsen"
    assert s.police.metrics.value("sent_total", type="signal") == 1


async def test_incident_naming_the_approach_uses_it(
    net: Net, police_system: FakePoliceSystem
) -> None:
    s = await scene(net, police_system)
    document = incident(
        "PL1200-2026-0412346",
        [(PN_DAAN, "verdachte"), (PN_SEM, "betrokkene")],
        ontvangers=["gemeente-velsen"],
        aanpak=s.approach.token.token_id,
    )
    assert (await post_incident(s.endpoint, document))[0] == 202
    assert len((await s.police.send_once()).accepted) == 1
    [message_id] = (await s.velsen.receive_once()).applied
    body = net.system("gemeente-velsen").cases[message_id].body
    assert set(body.subjects) == set(s.approach.pseudonyms.values())


async def test_coordinator_message_reaches_the_webhook_once_when_delivered_twice(
    net: Net, police_system: FakePoliceSystem
) -> None:
    class Crash(Exception):
        pass

    def crash_after_apply(point: str) -> None:
        if point == FaultPoint.APPLIED.value:
            raise Crash(point)

    s = await scene(net, police_system)
    message_id = await velsen_sends(
        net, s.velsen, "VLS-PROG-1", "progress", [DAAN.bsn], ["politie-ijmond"]
    )
    # The police adapter crashes after the webhook took the message, before it recorded it.
    await net.close(s.police)
    crashing = await open_partner_adapter(
        net, "politie-ijmond", system_toml(police_system), faults=crash_after_apply
    )
    with pytest.raises(Crash):
        await crashing.receive_once()
    await net.close(crashing)
    assert await delivery_states(net, "gemeente-velsen", message_id) != {
        "politie-ijmond": "delivered"
    }
    # The lease runs out; the gateway delivers again to the restarted adapter.
    net.gw.clock.advance(net.gw.built.config.limits.lease_s + 1)
    police = await open_partner_adapter(net, "politie-ijmond", system_toml(police_system))
    assert (await police.receive_once()).applied == [message_id]
    assert police_system.webhook_calls.count(message_id) == 2
    [progress] = police_system.messages_of("progress")
    assert progress["berichtId"] == message_id
    assert progress["betrokkenen"] == [
        {"pseudoniem": s.approach.pseudonyms[DAAN.bsn], "persoonsnummer": PN_DAAN}
    ]
    assert progress["bericht"]["type"] == "progress"
    assert await delivery_states(net, "gemeente-velsen", message_id) == {
        "politie-ijmond": "delivered"
    }


@pytest.mark.parametrize("mode", ["unavailable", "dropped"])
async def test_police_system_down_acknowledges_nothing_and_applies_later_once(
    net: Net, police_system: FakePoliceSystem, mode: DownMode
) -> None:
    s = await scene(net, police_system)
    message_id = await velsen_sends(
        net, s.velsen, "VLS-PROG-2", "progress", [SEM.bsn], ["politie-ijmond"]
    )
    police_system.down = mode
    got = await s.police.receive_once()
    assert (got.applied, got.deferred, got.rejected) == ([], [message_id], [])
    assert s.police.store.inbound(message_id) is None
    assert await delivery_states(net, "gemeente-velsen", message_id) != {
        "politie-ijmond": "delivered"
    }
    police_system.down = None
    net.gw.clock.advance(net.gw.built.config.limits.lease_s + 1)
    assert (await s.police.receive_once()).applied == [message_id]
    assert [m["berichtId"] for m in police_system.messages_of("progress")] == [message_id]
    assert await delivery_states(net, "gemeente-velsen", message_id) == {
        "politie-ijmond": "delivered"
    }


async def test_webhook_refusal_becomes_a_signed_rejection_for_the_sender(
    net: Net, police_system: FakePoliceSystem
) -> None:
    s = await scene(net, police_system)
    police_system.refuse_next = (422, "onbekende_zaak", "Geen lopend dossier bij deze aanpak.")
    message_id = await velsen_sends(
        net, s.velsen, "VLS-PROG-3", "progress", [SEM.bsn], ["politie-ijmond"]
    )
    assert (await s.police.receive_once()).rejected == [message_id]
    assert police_system.messages_of("progress") == []
    # The notice's receipts and this rejection come back to Velsen as sender events.
    assert (await s.velsen.receive_once()).events >= 1
    assert s.velsen.store.outcomes(message_id) == {
        "politie-ijmond": ("rejection", "schema_invalid")
    }


def _big(size: int) -> bytes:
    doc = incident("PL1200-2026-0000009", [(PN_DAAN, "verdachte")])
    doc["omschrijving"] = "x" * size
    return json.dumps(doc).encode()


def _without(field_name: str) -> dict[str, Any]:
    doc = incident("PL1200-2026-0000001", [(PN_DAAN, "verdachte")])
    del doc[field_name]
    return doc


def _with(**fields: Any) -> dict[str, Any]:
    doc = incident("PL1200-2026-0000002", [(PN_DAAN, "verdachte")])
    doc.update(fields)
    return doc


MALFORMED: dict[str, tuple[dict[str, Any] | bytes, int, str]] = {
    "missing field": (_without("datum"), 400, "missing required field `datum`"),
    "wrong type": (_with(betrokkenen="PN-1004711"), 400, "Expected `array`, got `str`"),
    "wrong item type": (
        _with(betrokkenen=[{"persoonsnummer": 1004711, "rol": "verdachte"}]),
        400,
        "at `$.betrokkenen[0].persoonsnummer`",
    ),
    "bad date": (_with(datum="01-03-2026"), 400, "datum: '01-03-2026' is not a date"),
    "unknown category": (_with(categorie="F30"), 400, "categorie: 'F30' is not one of"),
    "no youth": (
        _with(betrokkenen=[{"persoonsnummer": PN_WITNESS, "rol": "getuige"}]),
        400,
        "no person with rol 'verdachte' or 'betrokkene'",
    ),
    "not json": (b'{"incidentnummer": "PL1200-2026-0000003", ', 400, "not the JSON expected"),
    "huge body": (_big(20_000), 413, "larger than 8192 bytes"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_malformed_incidents_go_to_the_failed_place_with_a_report(
    net: Net, police_system: FakePoliceSystem, case: str
) -> None:
    s = await scene(net, police_system, max_body_bytes=8192)
    document, expected_status, expected_report = MALFORMED[case]
    status, answer = await post_incident(s.endpoint, document)
    assert status == expected_status
    assert expected_report in answer["melding"]
    [failed] = s.police.store.failed()
    assert failed.record_id == answer["kenmerk"]
    assert expected_report in failed.report
    sent = document if isinstance(document, bytes) else json.dumps(document).encode()
    assert failed.data
    assert failed.data == sent[: len(failed.data)]
    assert s.police.metrics.value("failed_records_total") == 1
    # Sent again, it is the same failed record and not counted twice; nothing is queued.
    assert (await post_incident(s.endpoint, document))[0] == expected_status
    assert len(s.police.store.failed()) == 1
    assert s.police.metrics.value("failed_records_total") == 1
    assert s.police.store.outbox() == []


async def test_wrong_content_type_goes_to_the_failed_place(
    net: Net, police_system: FakePoliceSystem
) -> None:
    s = await scene(net, police_system)
    document = incident("PL1200-2026-0000004", [(PN_DAAN, "verdachte")])
    status, answer = await post_incident(s.endpoint, document, content_type="text/plain")
    assert status == 400
    assert "expected application/json" in answer["melding"]
    assert [f.record_id for f in s.police.store.failed()] == [answer["kenmerk"]]


async def test_refusals_are_reported_to_the_police_system(
    net: Net, police_system: FakePoliceSystem
) -> None:
    s = await scene(net, police_system)
    # A youth without an approach: refused by the adapter (no_token), never sent.
    unknown = incident("PL1200-2026-0500001", [("PN-7777777", "verdachte")])
    # Police → CJG may only report progress: the gateway refuses the signal for good.
    to_care = incident("PL1200-2026-0500002", [(PN_DAAN, "verdachte")], ontvangers=["cjg"])
    for document in (unknown, to_care):
        assert (await post_incident(s.endpoint, document))[0] == 202
    # The police system is down when the refusals are to be reported: asked again later.
    police_system.down = "unavailable"
    await s.police.send_once()
    assert police_system.weigeringen == []
    police_system.down = None
    await s.police.report_refusals()
    await s.police.report_refusals()
    [no_token] = police_system.refusals_for("PL1200-2026-0500001")
    assert (no_token["geweigerdDoor"], no_token["reden"]) == ("adapter", Reason.NO_TOKEN.value)
    [not_allowed] = police_system.refusals_for("PL1200-2026-0500002")
    assert (not_allowed["geweigerdDoor"], not_allowed["reden"]) == (
        "gateway",
        Reason.TYPE_NOT_ALLOWED.value,
    )
    assert len(police_system.weigeringen) == 2
    assert s.police.metrics.value("refused_total", reason="no_token") == 1


async def test_ingest_token_is_required_when_configured(
    net: Net, police_system: FakePoliceSystem
) -> None:
    secrets_dir = net.folder("politie-ijmond") / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "ingest-token").write_text("s3cret-police-token\n")
    s = await scene(net, police_system, ingest_token_file="secrets/ingest-token")
    document = incident("PL1200-2026-0600001", [(PN_DAAN, "verdachte")])
    assert (await post_incident(s.endpoint, document))[0] == 401
    assert (await post_incident(s.endpoint, document, token="wrong"))[0] == 401
    assert s.police.store.outbox() == []
    assert s.police.store.failed() == []
    assert (await post_incident(s.endpoint, document, token="s3cret-police-token"))[0] == 202
    assert len(s.police.store.outbox()) == 1


def _config(tmp_path: Path, system: dict[str, Any]) -> AdapterConfig:
    return msgspec.convert(
        {"partner": {"id": "politie-ijmond"}, "system": system, "base": str(tmp_path)},
        AdapterConfig,
    )


GOOD = {
    "transport": "police-rest",
    "listen": "127.0.0.1:0",
    "webhook_url": "http://127.0.0.1:8462/ketenpost/berichten",
    "refusals_url": "http://127.0.0.1:8462/ketenpost/weigeringen",
}
BAD_CONFIGS: dict[str, dict[str, Any]] = {
    "listen": {**GOOD, "listen": "8461"},
    "webhook_url": {**GOOD, "webhook_url": "ftp://politie/berichten"},
    "refusals_url": {k: v for k, v in GOOD.items() if k != "refusals_url"},
    "incidents_url": {**GOOD, "incidents_url": "http://127.0.0.1:8462/api/incidenten?x=1"},
    "timeout_s": {**GOOD, "timeout_s": -1},
    "max_body_bytes": {**GOOD, "max_body_bytes": "1MB"},
    "ingest_token_file": {**GOOD, "ingest_token_file": "secrets/missing"},
    "webhook": {**GOOD, "webhook": "http://typo"},
}


@pytest.mark.parametrize("key", list(BAD_CONFIGS))
def test_bad_system_table_names_the_key(tmp_path: Path, key: str) -> None:
    with pytest.raises(AdapterConfigError, match=rf"\[system\] {key}:") as info:
        create_transport(_config(tmp_path, BAD_CONFIGS[key]), SystemClock())
    assert "\n" not in str(info.value)


def test_default_system_toml_builds_a_transport(tmp_path: Path) -> None:
    system = tomllib.loads(DEFAULT_SYSTEM_TOML)["system"]
    transport = create_transport(_config(tmp_path, system), SystemClock())
    assert isinstance(transport.source, PoliceSource)
    assert transport.source.settings.listen_port == 8461
    # A development deployment's police system is told of deliveries (``incidents_url``).
    assert isinstance(transport.destination, DeliveryReporter)
