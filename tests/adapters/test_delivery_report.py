"""Delivery reports (``DeliveryReporter.report_delivery``) end to end, through a real gateway
with real mTLS and real adapters: the police system learns on the incident that Halt (or
Velsen) received its signal, once per recipient, durably, and only when it asks for it."""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from adapters.base import (
    Applied,
    Delivered,
    DeliveryReporter,
    DestinationRejectedError,
    InboundMessage,
    Refusal,
    Transport,
)
from adapters.config import load_partner_dir
from adapters.engine import Adapter
from adapters.outbox import AdapterStore
from adapters.partners.police import PoliceDeliveryDestination, PoliceSource
from adapters.testing.police_fake import FakePoliceSystem, incident, post_incident
from gateway.protocol.reasons import Reason, RejectionReason
from tests.adapters._partner_helpers_common import open_adapter
from tests.adapters._partner_helpers_rest import (
    DAAN,
    SEM,
    Approach,
    open_partner_adapter,
    velsen_sends,
)
from tests.adapters.conftest import Net
from tests.adapters.fake_system import FakeCaseSystem, FakeDestination, FakeMapping, FakeSource
from tests.adapters.test_partner_police import (  # noqa: F401 - police_system is a fixture
    PN_DAAN,
    police_system,
)
from tests.adapters.test_partner_police import scene as police_scene
from tests.adapters.test_partner_police import system_toml as police_toml


def system_toml(fake: FakePoliceSystem, *, deliveries: bool = True) -> str:
    """The police adapter's ``[system]``; with ``incidents_url`` when it reports deliveries."""
    extra = {"incidents_url": fake.incidents_url} if deliveries else {}
    return police_toml(fake, **extra)


@dataclass
class Scene:
    approach: Approach
    velsen: Adapter
    police: Adapter
    halt: Adapter
    fake: FakePoliceSystem

    async def incident(self, number: str, ontvangers: list[str]) -> str:
        """The police system reports an incident about Daan to ``ontvangers``; the police
        adapter sends it. Returns the message id."""
        source = self.police.transport.source
        assert isinstance(source, PoliceSource)
        document = incident(number, [(PN_DAAN, "verdachte")], ontvangers=ontvangers)
        status, answer = await post_incident(source.url, document)
        assert status == 202, answer
        sent = await self.police.send_once()
        assert len(sent.accepted) == 1, self.police.store.outbox()
        row = self.police.store.outbox()[-1]
        assert row.record_id == answer["kenmerk"]
        return row.message_id


async def scene(net: Net, fake: FakePoliceSystem, *, deliveries: bool = True) -> Scene:
    """The police tests' scene (Velsen's approach about Daan and Sem, taken in by the police
    and Halt), with or without delivery reports."""
    extra = {"incidents_url": fake.incidents_url} if deliveries else {}
    base = await police_scene(net, fake, **extra)
    return Scene(base.approach, base.velsen, base.police, base.halt, base.fake)


def iso(unix: int) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).isoformat()


async def test_delivery_to_halt_is_annotated_on_the_incident_once(
    net: Net,
    police_system: FakePoliceSystem,  # noqa: F811 - the police tests' fixture
) -> None:
    s = await scene(net, police_system)
    assert isinstance(s.police.transport.destination, DeliveryReporter)
    message_id = await s.incident("PL1200-2026-0700001", ["halt"])
    net.gw.clock.advance(60)
    delivered_at = net.gw.clock.now()
    assert (await s.halt.receive_once()).applied == [message_id]
    # The police adapter learns of Halt's receipt later than Halt gave it.
    net.gw.clock.advance(600)
    assert (await s.police.receive_once()).events >= 1
    assert s.police.store.outcomes(message_id) == {"halt": ("receipt", None)}

    [annotation] = police_system.afleveringen["PL1200-2026-0700001"]
    assert annotation["berichtId"] == message_id
    assert annotation["ontvanger"] == "halt"
    assert annotation["status"] == "afgeleverd"
    row = s.police.store.outbox_row(message_id)
    assert row is not None
    assert annotation["kenmerk"] == row.record_id
    # ``at`` is when the gateway took Halt's signed receipt, not when it was reported.
    assert annotation["afgeleverdOp"] == iso(delivered_at)
    # Further passes never report it again: reported once, after the call returned.
    await s.police.receive_once()
    await s.police.send_once()
    await s.police.report_outcomes()
    assert police_system.aflevering_calls == [f"{message_id}:afgeleverd:halt"]
    assert police_system.delivered_to("PL1200-2026-0700001") == ["halt"]
    assert s.police.store.unreported_deliveries() == []
    assert s.police.metrics.value("delivery_reports_total") == 1
    # Delivered is not refused: nothing went to the refusals URL.
    assert police_system.weigeringen == []


async def test_each_recipient_of_a_message_is_one_delivery(
    net: Net,
    police_system: FakePoliceSystem,  # noqa: F811 - the police tests' fixture
) -> None:
    s = await scene(net, police_system)
    message_id = await s.incident("PL1200-2026-0700002", ["gemeente-velsen", "halt"])
    assert (await s.halt.receive_once()).applied == [message_id]
    await s.police.receive_once()
    assert police_system.delivered_to("PL1200-2026-0700002") == ["halt"]
    assert message_id in (await s.velsen.receive_once()).applied
    await s.police.receive_once()
    await s.police.receive_once()
    assert police_system.delivered_to("PL1200-2026-0700002") == ["halt", "gemeente-velsen"]
    assert sorted(police_system.aflevering_calls) == sorted(
        f"{message_id}:afgeleverd:{p}" for p in ("halt", "gemeente-velsen")
    )
    assert s.police.metrics.value("delivery_reports_total") == 2


# How the police system fails while the delivery is to be reported: table of named cases.
DOWN: dict[str, dict[str, Any]] = {
    "incident API in maintenance (503)": {"incidents_down": True},
    "whole system in maintenance (503)": {"down": "unavailable"},
    "connection dropped": {"down": "dropped"},
}


@pytest.mark.parametrize("case", list(DOWN))
async def test_police_system_down_reports_the_delivery_on_a_later_pass(
    net: Net,
    police_system: FakePoliceSystem,  # noqa: F811 - the police tests' fixture
    case: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = await scene(net, police_system)
    message_id = await s.incident("PL1200-2026-0700003", ["halt"])
    assert (await s.halt.receive_once()).applied == [message_id]
    for name, value in DOWN[case].items():
        setattr(police_system, name, value)
    with caplog.at_level(logging.WARNING, logger="adapters.engine"):
        await s.police.receive_once()
        await s.police.report_outcomes()
    # Said in the log, one line a pass, with the step (nothing silent while it waits).
    deferred = [r for r in caplog.records if r.getMessage() == "report_deferred"]
    assert deferred
    assert {getattr(r, "step", None) for r in deferred} == {"report_delivery"}
    assert all(r.exc_info is None for r in deferred)
    # Recorded, not reported: it waits, durably, for the police system.
    assert s.police.store.outcomes(message_id) == {"halt": ("receipt", None)}
    assert [(m, r) for m, r, _ in s.police.store.unreported_deliveries()] == [(message_id, "halt")]
    assert police_system.afleveringen == {}
    assert s.police.metrics.value("delivery_reports_total") == 0
    # The adapter restarts meanwhile: the pending report is in adapter.db, not in memory.
    await net.close(s.police)
    police = await open_partner_adapter(net, "politie-ijmond", system_toml(police_system))
    police_system.down = None
    police_system.incidents_down = False
    await police.send_once()
    await police.receive_once()
    await police.report_outcomes()
    assert police_system.delivered_to("PL1200-2026-0700003") == ["halt"]
    assert police.store.unreported_deliveries() == []
    assert police.metrics.value("delivery_reports_total") == 1


async def test_a_failing_incident_api_does_not_hold_up_refusal_reports(
    net: Net,
    police_system: FakePoliceSystem,  # noqa: F811 - the police tests' fixture
) -> None:
    s = await scene(net, police_system)
    message_id = await s.incident("PL1200-2026-0700004", ["halt"])
    assert (await s.halt.receive_once()).applied == [message_id]
    police_system.incidents_down = True
    # A youth without an approach: refused by the adapter (no_token), never sent.
    source = s.police.transport.source
    assert isinstance(source, PoliceSource)
    unknown = incident("PL1200-2026-0700005", [("PN-7777777", "verdachte")])
    assert (await post_incident(source.url, unknown))[0] == 202
    await s.police.send_once()
    await s.police.receive_once()
    [refusal] = police_system.refusals_for("PL1200-2026-0700005")
    assert refusal["reden"] == Reason.NO_TOKEN.value
    assert police_system.afleveringen == {}
    police_system.incidents_down = False
    await s.police.report_outcomes()
    assert police_system.delivered_to("PL1200-2026-0700004") == ["halt"]


class RejectingDestination:
    """Halt's case system refusing every message for good."""

    async def apply(self, message: InboundMessage) -> Applied:
        raise DestinationRejectedError(RejectionReason.SCHEMA_INVALID, "geen lopend dossier")

    async def report_refusal(self, record_id: str, refusal: Refusal) -> None:
        return None


async def test_a_rejection_is_reported_as_a_refusal_not_a_delivery(
    net: Net,
    police_system: FakePoliceSystem,  # noqa: F811 - the police tests' fixture
) -> None:
    s = await scene(net, police_system)
    # Halt's adapter now runs beside a case system that refuses what it is sent.
    await net.close(s.halt)
    halt_system = net.system("halt")
    halt = await open_adapter(
        net,
        load_partner_dir(net.folder("halt")),
        Transport(FakeSource(halt_system), FakeMapping(halt_system), RejectingDestination()),
    )
    message_id = await s.incident("PL1200-2026-0700006", ["gemeente-velsen", "halt"])
    assert (await halt.receive_once()).rejected == [message_id]
    assert message_id in (await s.velsen.receive_once()).applied
    await s.police.receive_once()
    await s.police.receive_once()
    assert s.police.store.outcomes(message_id) == {
        "halt": ("rejection", RejectionReason.SCHEMA_INVALID.value),
        "gemeente-velsen": ("receipt", None),
    }
    assert police_system.delivered_to("PL1200-2026-0700006") == ["gemeente-velsen"]
    [refusal] = police_system.refusals_for("PL1200-2026-0700006")
    assert (refusal["geweigerdDoor"], refusal["ontvanger"], refusal["reden"]) == (
        "recipient",
        "halt",
        RejectionReason.SCHEMA_INVALID.value,
    )
    assert s.police.metrics.value("delivery_reports_total") == 1


async def test_police_without_incidents_url_reports_no_deliveries(
    net: Net,
    police_system: FakePoliceSystem,  # noqa: F811 - the police tests' fixture
) -> None:
    s = await scene(net, police_system, deliveries=False)
    assert not isinstance(s.police.transport.destination, DeliveryReporter)
    assert not isinstance(s.police.transport.destination, PoliceDeliveryDestination)
    message_id = await s.incident("PL1200-2026-0700007", ["halt"])
    assert (await s.halt.receive_once()).applied == [message_id]
    await s.police.receive_once()
    assert s.police.store.outcomes(message_id) == {"halt": ("receipt", None)}
    assert s.police.store.unreported_deliveries() == []
    assert police_system.aflevering_calls == []
    assert police_system.weigeringen == []


@dataclass
class ReportingCaseSystem:
    """The SDK's fake case system after an upgrade that reports deliveries."""

    system: FakeCaseSystem
    delivered: list[tuple[str, Delivered]]

    def transport(self) -> Transport:
        return Transport(
            FakeSource(self.system), FakeMapping(self.system), ReportingDestination(self)
        )


class ReportingDestination(FakeDestination):
    def __init__(self, owner: ReportingCaseSystem) -> None:
        super().__init__(owner.system)
        self.owner = owner

    async def report_delivery(self, record_id: str, delivered: Delivered) -> None:
        self.owner.delivered.append((record_id, delivered))


async def test_destination_without_report_delivery_is_unchanged_and_never_flooded(
    net: Net,
    police_system: FakePoliceSystem,  # noqa: F811 - the police tests' fixture
) -> None:
    s = await scene(net, police_system)
    system = net.system("gemeente-velsen")
    assert not isinstance(s.velsen.transport.destination, DeliveryReporter)
    first = await velsen_sends(
        net, s.velsen, "VLS-PROG-10", "progress", [DAAN.bsn], ["politie-ijmond"]
    )
    assert (await s.police.receive_once()).applied == [first]
    # The receipts (the notice's from the police and Halt, this one's) reach Velsen and are
    # kept; its case system, without report_delivery, is told nothing, as before.
    assert (await s.velsen.receive_once()).events >= 1
    assert s.velsen.store.outcomes(first) == {"politie-ijmond": ("receipt", None)}
    assert s.velsen.store.unreported_deliveries() == []
    assert system.refusals == {}
    assert s.velsen.metrics.value("delivery_reports_total") == 0

    # Velsen's case system is upgraded to report deliveries: the old ones are not flooded in,
    # a new one is reported once.
    await net.close(s.velsen)
    upgraded = ReportingCaseSystem(system, [])
    velsen = await open_adapter(
        net, load_partner_dir(net.folder("gemeente-velsen")), upgraded.transport()
    )
    await velsen.receive_once()
    await velsen.report_outcomes()
    assert upgraded.delivered == []
    second = await velsen_sends(
        net, velsen, "VLS-PROG-11", "progress", [SEM.bsn], ["politie-ijmond"]
    )
    assert (await s.police.receive_once()).applied == [second]
    await velsen.receive_once()
    await velsen.receive_once()
    [(record_id, delivered)] = upgraded.delivered
    assert record_id == "VLS-PROG-11"
    assert (delivered.message_id, delivered.recipient) == (second, "politie-ijmond")
    assert velsen.metrics.value("delivery_reports_total") == 1


async def test_deliveries_pending_when_reporting_is_switched_off_are_dropped_not_kept(
    net: Net,
    police_system: FakePoliceSystem,  # noqa: F811 - the police tests' fixture
) -> None:
    s = await scene(net, police_system)
    message_id = await s.incident("PL1200-2026-0700008", ["halt"])
    assert (await s.halt.receive_once()).applied == [message_id]
    police_system.incidents_down = True
    await s.police.receive_once()
    assert len(s.police.store.unreported_deliveries()) == 1
    # The operator removes incidents_url: the pending delivery is marked without a call ...
    await net.close(s.police)
    police = await open_partner_adapter(
        net, "politie-ijmond", system_toml(police_system, deliveries=False)
    )
    police_system.incidents_down = False
    await police.report_outcomes()
    assert police.store.unreported_deliveries() == []
    # ... so putting it back does not report it late.
    await net.close(police)
    police = await open_partner_adapter(net, "politie-ijmond", system_toml(police_system))
    await police.receive_once()
    assert police_system.aflevering_calls == []


# (kind, reason, destination reports deliveries) → (an unreported refusal, an unreported
# delivery) right after the sender event is recorded.
RECORDED: dict[str, tuple[str, str | None, bool, bool, bool]] = {
    "receipt, reporter": ("receipt", None, True, False, True),
    "receipt, no reporter": ("receipt", None, False, False, False),
    "rejection, reporter": ("rejection", "schema_invalid", True, True, False),
    "rejection, no reporter": ("rejection", "schema_invalid", False, True, False),
    "expiry, reporter": ("expiry", None, True, True, False),
    "purge, no reporter": ("purge", None, False, True, False),
}


@pytest.mark.parametrize("case", list(RECORDED))
def test_store_keeps_receipts_unreported_only_for_a_reporter(tmp_path: Path, case: str) -> None:
    kind, reason, reporter, refusal, delivery = RECORDED[case]
    store = AdapterStore(tmp_path / "adapter.db")
    try:
        assert store.record_outcome(
            "m1", "halt", kind, reason, 1_700_000_000, report_delivery=reporter
        )
        assert bool(store.unreported_outcomes()) is refusal
        assert store.unreported_deliveries() == (
            [("m1", "halt", 1_700_000_000)] if delivery else []
        )
        store.mark_outcome_reported("m1", "halt")
        assert store.unreported_outcomes() == []
        assert store.unreported_deliveries() == []
    finally:
        store.close()
