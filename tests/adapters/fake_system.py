"""A small, realistic fake partner system for the SDK tests: an in-memory case system.

Its outbound side is a list of JSON events read by a cursor (``?since=N``, like a REST or
outbox-table source); its inbound side keeps one case record per message id (idempotent, as
the contract demands) and the refusal reports it was sent. It assigns local ids to the persons
of an approach-notice from their BSN, as a municipal or police system would.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from adapters.base import (
    Applied,
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
from gateway.protocol.messages import (
    ApproachChange,
    ApproachNotice,
    PersonDetails,
    Progress,
    ProgressStatus,
    Signal,
    SignalCategory,
)
from gateway.protocol.signed import SignedObject
from gateway.protocol.token import PrivatePartOpening
from gateway.protocol.types import ApproachKind


@dataclass
class FakeCaseSystem:
    partner_id: str
    events: list[tuple[str, bytes]] = field(default_factory=list)
    cases: dict[str, InboundMessage] = field(default_factory=dict)
    apply_calls: int = 0
    refusals: dict[str, Refusal] = field(default_factory=dict)
    quarantined: dict[str, str] = field(default_factory=dict)
    available: bool = True
    # token id → (signed token, opening, persons) for the coordinator's notices.
    approaches: dict[str, tuple[SignedObject, PrivatePartOpening, tuple[PersonDetails, ...]]] = (
        field(default_factory=dict)
    )

    def add_event(self, event_id: str, document: dict[str, Any] | bytes) -> None:
        data = document if isinstance(document, bytes) else json.dumps(document).encode()
        self.events.append((event_id, data))

    def transport(self) -> Transport:
        return Transport(FakeSource(self), FakeMapping(self), FakeDestination(self))


class FakeSource(SourceBase):
    def __init__(self, system: FakeCaseSystem) -> None:
        self.system = system
        self.reads = 0

    async def pull(self, cursor: str | None) -> PullBatch:
        start = int(cursor or 0)
        self.reads += 1
        batch = self.system.events[start:]
        return PullBatch(
            [SourceRecord(i, data, "application/json") for i, data in batch],
            str(start + len(batch)),
        )

    async def quarantine(self, record: SourceRecord, report: str) -> None:
        self.system.quarantined[record.record_id] = report


def _date(value: str, field_name: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        raise MalformedRecordError(f"{field_name}: {value!r} is not a date (YYYY-MM-DD)") from None


class FakeMapping:
    def __init__(self, system: FakeCaseSystem) -> None:
        self.system = system

    def map(self, record: SourceRecord, context: MappingContext) -> Outbound:
        try:
            doc = json.loads(record.data)
            kind = doc["type"]
            to = tuple(doc["to"])
        except (ValueError, KeyError, TypeError) as exc:
            raise MalformedRecordError(f"event is not the JSON expected: {exc!r}") from None
        if kind == "approach-notice":
            signed, opening, persons = self.system.approaches[doc["token_id"]]
            subjects = tuple(sorted(p.pseudonym for p in persons))
            return Outbound(
                to,
                doc["token_id"],
                ApproachNotice(
                    subjects=subjects,
                    token_id=doc["token_id"],
                    approach_kind=ApproachKind.GROUP,
                    change=ApproachChange.STARTED,
                    token=signed,
                    token_private=opening,
                    persons=persons,
                ),
            )
        approach = context.approach_for(list(doc["about"]))
        subjects = tuple(sorted(approach.pseudonyms.values()))
        if kind == "signal":
            body: Signal | Progress = Signal(
                subjects=subjects,
                incident_date=_date(doc.get("date", ""), "date"),
                category=SignalCategory.NUISANCE,
                summary=doc.get("summary", "Overlast bij het winkelcentrum."),
                location_municipality="Velsen",
            )
        elif kind == "progress":
            body = Progress(
                subjects=subjects,
                status=ProgressStatus.COMPLETED,
                summary=doc.get("summary", "Afgerond."),
                reported_on=_date(doc.get("date", ""), "date"),
            )
        else:
            raise MalformedRecordError(f"type: unknown event type {kind!r}")
        return Outbound(to, approach.token_id, body)


class FakeDestination:
    def __init__(self, system: FakeCaseSystem) -> None:
        self.system = system

    async def apply(self, message: InboundMessage) -> Applied:
        self.system.apply_calls += 1
        if not self.system.available:
            raise DestinationUnavailableError("case system is in maintenance")
        # Idempotent by message id: a second apply of the same message changes nothing.
        self.system.cases.setdefault(message.message_id, message)
        if isinstance(message.body, ApproachNotice):
            return Applied({p.pseudonym: p.bsn for p in message.body.persons if p.bsn is not None})
        return Applied()

    async def report_refusal(self, record_id: str, refusal: Refusal) -> None:
        if not self.system.available:
            raise DestinationUnavailableError("case system is in maintenance")
        self.system.refusals[record_id] = refusal


def persons(pseudonyms: Sequence[str], bsns: Sequence[str]) -> tuple[PersonDetails, ...]:
    return tuple(
        PersonDetails(pseudonym=p, given_name="Sem", family_name="de Vries", bsn=b)
        for p, b in zip(pseudonyms, bsns, strict=True)
    )
