"""Processing logs (Logboek Dataverwerkingen) across three partners through the real gateway.

Velsen starts an approach (notice to police and halt); the police signal an incident about a
youth to halt and Velsen; halt's system answers with a progress report to Velsen that continues
the trace it was handed. One trace id then runs through the records of all three adapters, and
each recipient's record links to the sender's action (``parent_span_id`` plus
``dpl.core.foreign_operation.processor``).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

import ketenpost
from adapters.base import MappingContext, Outbound, SourceRecord, Transport
from adapters.engine import Adapter
from adapters.processing_log import PROCESSOR_PREFIX, SUBJECT_ID_TYPE, TraceParent
from gateway.protocol.envelope import decode_envelope
from tests.adapters.conftest import BSN_A, BSN_B, Net
from tests.adapters.fake_system import FakeMapping
from tests.adapters.test_engine_e2e import signal_event, start_approach

ACTIVITY = "dpl.core.processing_activity_id"
SUBJECT = "dpl.core.data_subject_id"
PROCESSOR = "dpl.core.foreign_operation.processor"


class TracingMapping:
    """The fake system's mapping, plus the ``traceparent`` a record carries (as a partner
    system that continues the trace it was handed would)."""

    def __init__(self, inner: FakeMapping) -> None:
        self.inner = inner

    def map(self, record: SourceRecord, context: MappingContext) -> Outbound:
        outbound = self.inner.map(record, context)
        traceparent = json.loads(record.data).get("traceparent")
        return dataclasses.replace(outbound, trace_id=traceparent)


def _records(adapter: Adapter) -> list[dict[str, Any]]:
    return [json.loads(line) for line in adapter.store.processing_records()]


def _one(records: list[dict[str, Any]], operation: str, **where: str) -> dict[str, Any]:
    found = [
        r
        for r in records
        if r["ketenpost"]["operation"] == operation
        and all(r["ketenpost"].get(k) == v for k, v in where.items())
        and SUBJECT in r["attributes"]
    ]
    assert len(found) == 1, (operation, where, found)
    return found[0]


async def test_one_trace_across_three_partners(
    net: Net, capsys: pytest.CaptureFixture[str]
) -> None:
    token = await start_approach(net, to=("politie-ijmond", "halt"))
    velsen, police, halt = net.open_adapters
    assert [velsen.partner_id, police.partner_id, halt.partner_id] == [
        "gemeente-velsen",
        "politie-ijmond",
        "halt",
    ]
    pseudonym_a = next(
        p for p, bsn in velsen.store.local_ids(token.token_id).items() if bsn == BSN_A
    )

    # 1. The police signal an incident about youth A to halt and to Velsen.
    net.system("politie-ijmond").add_event(
        "INC-1", signal_event([BSN_A], ["halt", "gemeente-velsen"])
    )
    await police.ingest_once()
    assert len((await police.send_once()).accepted) == 1
    row = police.store.outbox()[0]
    header_trace = TraceParent.parse(row.trace_id)
    assert header_trace is not None
    trace = header_trace.trace_id

    # 2. Halt takes it in; its system is handed the trace with halt's own action as parent.
    assert len((await halt.receive_once()).applied) == 1
    handed = net.system("halt").cases[row.message_id].trace_id
    handed_trace = TraceParent.parse(handed)
    assert handed_trace is not None
    assert handed_trace.trace_id == trace

    # 3. Halt's system reports progress to Velsen, continuing that trace.
    halt.transport = Transport(
        halt.transport.source,
        TracingMapping(FakeMapping(net.system("halt"))),
        halt.transport.destination,
    )
    progress = signal_event([BSN_A], ["gemeente-velsen"])
    progress.update(type="progress", traceparent=handed)
    net.system("halt").add_event("VG-1", progress)
    await halt.ingest_once()
    assert len((await halt.send_once()).accepted) == 1
    halt_row = next(r for r in halt.store.outbox() if r.record_id == "VG-1")

    # 4. Velsen takes in the police signal and halt's progress.
    assert len((await velsen.receive_once()).applied) == 2

    police_log, halt_log, velsen_log = _records(police), _records(halt), _records(velsen)
    in_trace = [r for r in police_log + halt_log + velsen_log if r["trace_id"] == trace]

    # The police's action of providing the signal; its span is the header's parent-id.
    sent = _one(police_log, "sent", message_id=row.message_id)
    assert sent["span_id"] == header_trace.span_id
    assert sent["status"] == "Ok"
    assert sent["attributes"][ACTIVITY] == "ijmond-jeugd/politie/verstrekking-samenwerkingsverband"

    # Halt received it: linked to the police's action, which was another partner's.
    received = _one(halt_log, "received", message_id=row.message_id)
    assert received["trace_id"] == trace
    assert received["parent_span_id"] == sent["span_id"]
    assert received["attributes"][PROCESSOR] == PROCESSOR_PREFIX + "politie-ijmond"
    assert received["attributes"][ACTIVITY] == "ijmond-jeugd/halt/afdoening"
    applied = _one(halt_log, "applied", message_id=row.message_id)
    assert applied["parent_span_id"] == received["span_id"]
    assert applied["span_id"] == handed_trace.span_id
    assert PROCESSOR not in applied["attributes"]

    # Halt's progress continues from its applied action; Velsen links to halt's action.
    halt_sent = _one(halt_log, "sent", message_id=halt_row.message_id)
    assert halt_sent["trace_id"] == trace
    assert halt_sent["parent_span_id"] == applied["span_id"]
    velsen_from_halt = _one(velsen_log, "received", message_id=halt_row.message_id)
    assert velsen_from_halt["trace_id"] == trace
    assert velsen_from_halt["parent_span_id"] == halt_sent["span_id"]
    assert velsen_from_halt["attributes"][PROCESSOR] == PROCESSOR_PREFIX + "halt"
    assert velsen_from_halt["attributes"][ACTIVITY] == "ijmond-jeugd/gemeente/regie-aanpak"
    velsen_from_police = _one(velsen_log, "received", message_id=row.message_id)
    assert velsen_from_police["parent_span_id"] == sent["span_id"]

    # Three partners, one trace; every record names the pseudonym, never a BSN.
    partners = {r["resource"]["attributes"]["service.instance.id"] for r in in_trace}
    assert partners == {"politie-ijmond", "halt", "gemeente-velsen"}
    for record in in_trace:
        assert record["attributes"][SUBJECT] == pseudonym_a
        assert record["attributes"]["dpl.core.data_subject_id_type"] == SUBJECT_ID_TYPE
        assert set(record) <= {
            "trace_id", "span_id", "parent_span_id", "name", "status", "start_time",
            "end_time", "resource", "attributes", "ketenpost",
        }  # fmt: skip
        assert all(k.startswith("dpl.core.") for k in record["attributes"])
    everything = json.dumps(police_log + halt_log + velsen_log)
    assert BSN_A not in everything
    assert BSN_B not in everything

    # The approach-notice named two youths: one record without a subject and one child
    # record per youth under it.
    notice = [r for r in velsen_log if r["ketenpost"]["operation"] == "sent"
              and r["ketenpost"]["message_type"] == "approach-notice"]  # fmt: skip
    (parent,) = [r for r in notice if SUBJECT not in r["attributes"]]
    children = [r for r in notice if SUBJECT in r["attributes"]]
    assert len(children) == 2
    assert {c["parent_span_id"] for c in children} == {parent["span_id"]}

    # A redelivery writes nothing twice.
    before = len(halt.store.processing_records())
    assert row.envelope is not None
    halt._processing_log.received(decode_envelope(row.envelope).header, net.gw.clock.now())
    assert len(halt.store.processing_records()) == before

    # Exported as JSON lines by the command line.
    capsys.readouterr()
    config = net.folder("halt") / "adapter.toml"
    assert ketenpost.main(["adapter", "processing-log", "--config", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == halt_log
    future = str(net.gw.clock.now() + 3600)
    assert (
        ketenpost.main(["adapter", "processing-log", "--config", str(config), "--since", future])
        == 0
    )
    assert capsys.readouterr().out == ""
