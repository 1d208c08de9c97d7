"""What a sender's adapter catches in the gateway's sender events (threat model §5.1,
"Detected by"): an expiry dated before the message's signed ``expires_at`` and an event naming
a recipient the message does not have are provably false (alarm, not recorded, nothing told to
the partner system); a message whose outcomes never come is an alarm once its ``expires_at``
is an hour past."""

from __future__ import annotations

import pytest

from adapters.engine import Adapter, AlarmKind
from gateway.protocol.receipts import SenderEvent, SenderEventKind, sign_sender_event
from gateway.signer import encode_signed_object
from tests.adapters.conftest import BSN_A, Net
from tests.adapters.test_engine_e2e import signal_event, start_approach
from tests.adapters.test_tampering_gateway import gateway_key

HOUR = 3600


async def sent(net: Net, record: str) -> tuple[Adapter, str]:
    """The police adapter sends a signal about Daan to Halt; (adapter, message id)."""
    police = net.open_adapters[1]
    net.system("politie-ijmond").add_event(record, signal_event([BSN_A], ["halt"]))
    assert await police.ingest_once() == 1
    [message_id] = (await police.send_once()).accepted
    return police, message_id


def event(net: Net, kind: SenderEventKind, message_id: str, recipient: str, at: int) -> bytes:
    """A sender event signed with the gateway's real key: what a dishonest gateway can say."""
    signed = sign_sender_event(SenderEvent(kind, message_id, recipient, at), gateway_key(net))
    return encode_signed_object(signed)


def sender_event_alarms(adapter: Adapter) -> list[str]:
    return [a.detail for a in adapter.store.alarms() if a.kind == AlarmKind.SENDER_EVENT.value]


@pytest.mark.parametrize(
    ("kind", "recipient", "early", "says"),
    [
        (SenderEventKind.EXPIRY, "halt", True, "before the message's expires_at"),
        (SenderEventKind.PURGE, "cjg", False, "names cjg, not one of its recipients"),
        (SenderEventKind.EXPIRY, "om", False, "names om, not one of its recipients"),
    ],
)
async def test_a_provably_false_event_is_an_alarm_and_not_recorded(
    net: Net, kind: SenderEventKind, recipient: str, early: bool, says: str
) -> None:
    await start_approach(net)
    police, message_id = await sent(net, "INC-1")
    row = police.store.outbox_row(message_id)
    assert row is not None
    assert row.expires_at is not None
    at = row.expires_at - 60 if early else net.gw.clock.now()
    assert police._handle_event(event(net, kind, message_id, recipient, at), message_id)
    [alarm] = sender_event_alarms(police)
    assert says in alarm
    assert message_id in alarm
    # Not recorded, so never reported to the police system as a refusal.
    assert police.store.outcomes(message_id) == {}
    await police.report_outcomes()
    assert net.system("politie-ijmond").refusals == {}


async def test_a_true_purge_is_recorded_without_alarm(net: Net) -> None:
    await start_approach(net)
    police, message_id = await sent(net, "INC-2")
    now = net.gw.clock.now()
    assert police._handle_event(
        event(net, SenderEventKind.PURGE, message_id, "halt", now), message_id
    )
    assert sender_event_alarms(police) == []
    assert police.store.outcomes(message_id) == {"halt": ("purge", None)}


async def test_missing_outcomes_are_an_alarm_once_an_hour_after_expiry(net: Net) -> None:
    await start_approach(net)
    police, lost = await sent(net, "INC-3")
    halt = net.open_adapters[2]
    police2, answered = await sent(net, "INC-4")
    assert police2 is police
    # Halt answers both; then the first's outcome is forgotten, as if the gateway had never
    # sent one (a dishonest gateway dropping the message and saying nothing).
    assert len((await halt.receive_once()).applied) == 2
    await police.receive_once()
    assert police.store.outcomes(answered) == {"halt": ("receipt", None)}
    row = police.store.outbox_row(lost)
    assert row is not None
    assert row.expires_at is not None
    with police.store.transaction() as db:
        db.execute("DELETE FROM outcomes WHERE message_id = ?", (lost,))

    net.gw.clock.set(row.expires_at + HOUR - 1)
    assert police.check_overdue_outcomes() == 0
    net.gw.clock.set(row.expires_at + HOUR + 1)
    assert police.check_overdue_outcomes() == 1
    [alarm] = sender_event_alarms(police)
    assert alarm.startswith(f"no outcome from halt for message {lost}")
    assert answered not in alarm
    # Judged once: a later pass raises nothing new, also after the alarm is cleared.
    police.store.clear_alarms(AlarmKind.SENDER_EVENT.value, net.gw.clock.now())
    net.gw.clock.advance(HOUR)
    assert police.check_overdue_outcomes() == 0
    assert sender_event_alarms(police) == []
