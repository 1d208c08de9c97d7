"""The CJG adapter (``cjg-rest``) end to end: it polls the fake CJG system's events feed and
POSTs inbound messages back to it, through a real gateway."""

from __future__ import annotations

import json
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

from adapters.base import SystemClock
from adapters.config import AdapterConfig
from adapters.engine import Adapter, FaultPoint
from adapters.errors import AdapterConfigError, AdapterError
from adapters.partners.cjg import DEFAULT_SYSTEM_TOML, CjgSource, create_transport
from adapters.testing._server import DownMode
from adapters.testing.cjg_fake import FakeCjgSystem
from gateway.protocol.messages import CaseConference, Progress, ProgressStatus
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
from tests.adapters.conftest import Net

CN_DAAN = "C-2026-00017"
CN_SEM = "C-2026-00042"
CN_OTHER = "C-2026-00099"


@pytest.fixture
async def cjg_system() -> AsyncIterator[FakeCjgSystem]:
    async with FakeCjgSystem() as system:
        # Daan is known by BSN; Sem's BSN is not in the CJG file, so name and birth date match.
        system.add_client(CN_DAAN, "Daan", "de Vries", DAAN.date_of_birth, DAAN.bsn)
        system.add_client(CN_SEM, "sem", "Bakker", SEM.date_of_birth)
        system.add_client(CN_OTHER, "Lotte", "Visser", SEM.date_of_birth)
        yield system


def system_toml(net: Net, fake: FakeCjgSystem, **extra: Any) -> str:
    secrets_dir = net.folder("cjg") / "secrets"
    secrets_dir.mkdir(exist_ok=True)
    (secrets_dir / "cjg-api-token").write_text(fake.token + "\n")
    settings = {"poll_interval_s": 0, "timeout_s": 5, **extra}
    lines = [
        "[system]",
        'transport = "cjg-rest"',
        f'base_url = "{fake.base_url}"',
        'api_token_file = "secrets/cjg-api-token"',
        *(f"{k} = {json.dumps(v)}" for k, v in settings.items()),
    ]
    return "\n".join(lines) + "\n"


@dataclass
class Scene:
    approach: Approach
    velsen: Adapter
    cjg: Adapter
    fake: FakeCjgSystem


async def scene(net: Net, fake: FakeCjgSystem, **extra: Any) -> Scene:
    """Velsen starts an approach about Daan and Sem with the CJG; the CJG adapter takes the
    notice in through the fake CJG system, which matches its clients."""
    approach, velsen = await start_approach(net, to=("cjg",))
    cjg = await open_partner_adapter(net, "cjg", system_toml(net, fake, **extra))
    assert len((await cjg.receive_once()).applied) == 1
    return Scene(approach, velsen, cjg, fake)


async def test_notice_matches_clients_by_bsn_or_name_and_birth_date(
    net: Net, cjg_system: FakeCjgSystem
) -> None:
    s = await scene(net, cjg_system)
    [notice] = cjg_system.inbound_of("approach-notice")
    assert notice["afzender"] == "gemeente-velsen"
    assert s.cjg.store.local_ids(s.approach.token.token_id) == {
        s.approach.pseudonyms[DAAN.bsn]: CN_DAAN,
        s.approach.pseudonyms[SEM.bsn]: CN_SEM,
    }


async def test_progress_and_case_conference_events_reach_the_coordinator(
    net: Net, cjg_system: FakeCjgSystem
) -> None:
    s = await scene(net, cjg_system)
    progress_id = cjg_system.add_progress([CN_DAAN], status="zorgen")
    conference_id = cjg_system.add_case_conference([CN_DAAN, CN_SEM])
    assert await s.cjg.ingest_once() == 2
    rows = {r.record_id: r for r in s.cjg.store.outbox()}
    assert set(rows) == {progress_id, conference_id}
    assert len((await s.cjg.send_once()).accepted) == 2
    got = await s.velsen.receive_once()
    assert set(got.applied) == {rows[progress_id].message_id, rows[conference_id].message_id}
    cases = net.system("gemeente-velsen").cases
    daan, sem = s.approach.pseudonyms[DAAN.bsn], s.approach.pseudonyms[SEM.bsn]

    progress = cases[rows[progress_id].message_id]
    assert progress.sender == "cjg"
    assert isinstance(progress.body, Progress)
    assert progress.body.status is ProgressStatus.CONCERN
    assert progress.body.reported_on.isoformat() == "2026-03-02"
    assert progress.body.action == "Opvoedondersteuning"
    assert progress.local_ids == {daan: DAAN.bsn}

    conference = cases[rows[conference_id].message_id]
    assert isinstance(conference.body, CaseConference)
    assert set(conference.body.subjects) == {daan, sem}
    assert conference.body.date.isoformat() == "2026-03-09"
    assert conference.body.decisions == ("CJG start gezinscoaching, acht weken.",)
    assert conference.body.next_date is not None
    # The cursor is the CJG's: the next poll asks for what came after these two.
    assert await s.cjg.ingest_once() == 0
    assert cjg_system.feed_requests[-1] == f"{2:012d}"
    assert s.cjg.store.cursor() == f"{2:012d}"


async def test_feed_is_read_page_by_page_and_an_event_read_twice_is_one_message(
    net: Net, cjg_system: FakeCjgSystem
) -> None:
    s = await scene(net, cjg_system, page_size=2)
    ids = [cjg_system.add_progress([CN_DAAN], samenvatting=f"Gesprek {n}.") for n in range(5)]
    assert await s.cjg.ingest_once() == 5
    assert cjg_system.feed_requests == [None, f"{2:012d}", f"{4:012d}"]
    assert [r.record_id for r in s.cjg.store.outbox()] == ids
    # The cursor is lost (a restore from an old backup): the same events make no new message.
    source = s.cjg.transport.source
    await s.cjg.accept((await source.pull(None)).records)
    assert len(s.cjg.store.outbox()) == 5


async def test_poll_interval_waits_on_the_clock(net: Net, cjg_system: FakeCjgSystem) -> None:
    s = await scene(net, cjg_system, poll_interval_s=60)
    assert await s.cjg.ingest_once() == 0
    cjg_system.add_progress([CN_DAAN])
    requests = len(cjg_system.feed_requests)
    assert await s.cjg.ingest_once() == 0
    assert len(cjg_system.feed_requests) == requests  # not asked: the interval is running
    net.gw.clock.advance(60)
    assert await s.cjg.ingest_once() == 1


def _event(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": "evt-bad",
        "soort": "voortgang",
        "aangemaakt": "2026-03-02T10:15:00+01:00",
        "clientnummers": [CN_DAAN],
        "ontvangers": ["gemeente-velsen"],
        "voortgang": {"status": "op-koers", "samenvatting": "Loopt.", "datum": "2026-03-02"},
    }
    for key, value in changes.items():
        if value is None:
            del doc[key]
        else:
            doc[key] = value
    return doc


MALFORMED: dict[str, tuple[object, str]] = {
    "missing field": (_event(id="evt-m1", clientnummers=None), "missing required field"),
    "wrong type": (_event(id="evt-m2", clientnummers=CN_DAAN), "Expected `array`, got `str`"),
    "bad date": (
        _event(
            id="evt-m3",
            voortgang={"status": "op-koers", "samenvatting": "Loopt.", "datum": "02-03-2026"},
        ),
        "voortgang.datum: '02-03-2026' is not a date",
    ),
    "unknown soort": (_event(id="evt-m4", soort="dossier-gewijzigd"), "soort: 'dossier-gewijzigd'"),
    "unknown status": (
        _event(id="evt-m5", voortgang={"status": "x", "samenvatting": "L.", "datum": "2026-03-02"}),
        "voortgang.status: 'x' is not one of",
    ),
    "not an object": ("oeps", "Expected `object`, got `str`"),
    "huge event": (
        _event(
            id="evt-m7",
            voortgang={"status": "op-koers", "samenvatting": "x" * 20_000, "datum": "2026-03-02"},
        ),
        "more than 16384",
    ),
    "summary too long for the covenant": (
        _event(
            id="evt-m8",
            voortgang={"status": "op-koers", "samenvatting": "y" * 9000, "datum": "2026-03-02"},
        ),
        "not schema-valid",
    ),
}


async def test_malformed_events_go_to_the_failed_place_with_a_report(
    net: Net, cjg_system: FakeCjgSystem
) -> None:
    s = await scene(net, cjg_system, max_event_bytes=16_384)
    for event, _ in MALFORMED.values():
        cjg_system.inject(event)
    good = cjg_system.add_progress([CN_SEM])
    assert await s.cjg.ingest_once() == len(MALFORMED) + 1
    failed = s.cjg.store.failed()
    assert len(failed) == len(MALFORMED)
    for (case, (_event_doc, expected)), record in zip(MALFORMED.items(), failed, strict=True):
        assert expected in record.report, (case, record.report)
        assert record.data, case
    assert s.cjg.metrics.value("failed_records_total") == len(MALFORMED)
    # The cursor moved past them, and the good event behind them was not held up.
    assert [r.record_id for r in s.cjg.store.outbox()] == [good]
    assert s.cjg.store.cursor() == f"{len(MALFORMED) + 1:012d}"
    # Read again from the start: the same failed records, not counted twice.
    await s.cjg.accept((await s.cjg.transport.source.pull(None)).records)
    assert len(s.cjg.store.failed()) == len(MALFORMED)
    assert s.cjg.metrics.value("failed_records_total") == len(MALFORMED)


async def test_inbound_message_is_applied_once_when_delivered_twice(
    net: Net, cjg_system: FakeCjgSystem
) -> None:
    class Crash(Exception):
        pass

    def crash_after_apply(point: str) -> None:
        if point == FaultPoint.APPLIED.value:
            raise Crash(point)

    s = await scene(net, cjg_system)
    message_id = await velsen_sends(net, s.velsen, "VLS-PROG-1", "progress", [SEM.bsn], ["cjg"])
    await net.close(s.cjg)
    crashing = await open_partner_adapter(
        net, "cjg", system_toml(net, cjg_system), faults=crash_after_apply
    )
    with pytest.raises(Crash):
        await crashing.receive_once()
    await net.close(crashing)
    net.gw.clock.advance(net.gw.built.config.limits.lease_s + 1)
    cjg = await open_partner_adapter(net, "cjg", system_toml(net, cjg_system))
    assert (await cjg.receive_once()).applied == [message_id]
    assert cjg_system.inbound_calls.count(message_id) == 2
    [progress] = cjg_system.inbound_of("progress")
    assert progress["clienten"] == [
        {"pseudoniem": s.approach.pseudonyms[SEM.bsn], "clientnummer": CN_SEM}
    ]
    assert progress["bericht"]["type"] == "progress"
    assert await delivery_states(net, "gemeente-velsen", message_id) == {"cjg": "delivered"}


@pytest.mark.parametrize("mode", ["unavailable", "dropped"])
async def test_cjg_down_reads_and_acknowledges_nothing_then_catches_up_once(
    net: Net, cjg_system: FakeCjgSystem, mode: DownMode
) -> None:
    s = await scene(net, cjg_system)
    event_id = cjg_system.add_progress([CN_DAAN])
    message_id = await velsen_sends(net, s.velsen, "VLS-PROG-2", "progress", [DAAN.bsn], ["cjg"])
    cjg_system.down = mode
    with pytest.raises(AdapterError):
        await s.cjg.ingest_once()
    assert s.cjg.store.cursor() is None
    got = await s.cjg.receive_once()
    assert (got.applied, got.deferred) == ([], [message_id])
    assert s.cjg.store.inbound(message_id) is None
    assert await delivery_states(net, "gemeente-velsen", message_id) != {"cjg": "delivered"}

    cjg_system.down = None
    net.gw.clock.advance(net.gw.built.config.limits.lease_s + 1)
    assert await s.cjg.ingest_once() == 1
    assert [r.record_id for r in s.cjg.store.outbox()] == [event_id]
    assert (await s.cjg.receive_once()).applied == [message_id]
    assert [m["berichtId"] for m in cjg_system.inbound_of("progress")] == [message_id]
    assert await delivery_states(net, "gemeente-velsen", message_id) == {"cjg": "delivered"}


async def test_refusals_are_reported_to_the_cjg_system(net: Net, cjg_system: FakeCjgSystem) -> None:
    s = await scene(net, cjg_system)
    # A client without an approach: refused by the adapter (no_token).
    unknown = cjg_system.add_progress([CN_OTHER])
    # Youth care → Halt is not in the covenant policy: the gateway refuses for good.
    to_halt = cjg_system.add_progress([CN_DAAN], ontvangers=["halt"])
    assert await s.cjg.ingest_once() == 2
    cjg_system.down = "unavailable"
    await s.cjg.send_once()
    assert cjg_system.refusals == []
    cjg_system.down = None
    await s.cjg.report_refusals()
    await s.cjg.report_refusals()
    [no_token] = cjg_system.refusals_for(unknown)
    assert (no_token["geweigerdDoor"], no_token["reden"]) == ("adapter", Reason.NO_TOKEN.value)
    [not_allowed] = cjg_system.refusals_for(to_halt)
    assert (not_allowed["geweigerdDoor"], not_allowed["reden"]) == (
        "gateway",
        Reason.TYPE_NOT_ALLOWED.value,
    )
    assert len(cjg_system.refusals) == 2


async def test_a_rotated_token_is_read_again_after_a_401(
    net: Net, cjg_system: FakeCjgSystem
) -> None:
    s = await scene(net, cjg_system)
    cjg_system.add_progress([CN_DAAN])
    cjg_system.token = "rotated-token-2026"
    with pytest.raises(AdapterError, match="401"):
        await s.cjg.ingest_once()
    (net.folder("cjg") / "secrets" / "cjg-api-token").write_text("rotated-token-2026\n")
    with pytest.raises(AdapterError, match="401"):
        await s.cjg.ingest_once()  # this call re-read the file after its 401
    assert await s.cjg.ingest_once() == 1


def _config(tmp_path: Path, system: dict[str, Any]) -> AdapterConfig:
    return msgspec.convert(
        {"partner": {"id": "cjg"}, "system": system, "base": str(tmp_path)}, AdapterConfig
    )


GOOD = {
    "transport": "cjg-rest",
    "base_url": "http://127.0.0.1:8463/api/v1",
    "api_token_file": "secrets/cjg-api-token",
}
BAD_CONFIGS: dict[str, dict[str, Any]] = {
    "base_url": {**GOOD, "base_url": "cjg.local/api"},
    "api_token_file": {**GOOD, "api_token_file": "secrets/missing"},
    "poll_interval_s": {**GOOD, "poll_interval_s": "5s"},
    "page_size": {**GOOD, "page_size": 0},
    "timeout_s": {**GOOD, "timeout_s": 0},
    "api_token": {**GOOD, "api_token": "never-in-adapter-toml"},
}


def _token_file(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir(exist_ok=True)
    (tmp_path / "secrets" / "cjg-api-token").write_text("dev-token\n")


@pytest.mark.parametrize("key", list(BAD_CONFIGS))
def test_bad_system_table_names_the_key(tmp_path: Path, key: str) -> None:
    _token_file(tmp_path)
    with pytest.raises(AdapterConfigError, match=rf"\[system\] {key}:") as info:
        create_transport(_config(tmp_path, BAD_CONFIGS[key]), SystemClock())
    assert "\n" not in str(info.value)


def test_default_system_toml_builds_a_transport(tmp_path: Path) -> None:
    _token_file(tmp_path)
    system = tomllib.loads(DEFAULT_SYSTEM_TOML)["system"]
    transport = create_transport(_config(tmp_path, system), SystemClock())
    assert isinstance(transport.source, CjgSource)
    assert transport.source.api.settings.base_url == "http://127.0.0.1:8463/api/v1"
