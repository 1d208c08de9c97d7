"""The adapter SDK end to end through a real gateway on 127.0.0.1 with real mTLS."""

from __future__ import annotations

import base64
import json

import pytest

import ketenpost
from adapters.engine import Adapter, FaultPoint
from gateway.protocol.reasons import Reason
from gateway.protocol.token import TokenSubject
from gateway.protocol.types import MessageType, new_pseudonym
from tests.adapters.conftest import BSN_A, BSN_B, Net
from tests.adapters.fake_system import persons
from tests.gateway.conftest import DAY, Token


async def start_approach(net: Net, *, to: tuple[str, ...] = ("politie-ijmond", "halt")) -> Token:
    """Velsen issues and registers a token and sends the approach-notice through its adapter;
    every recipient's adapter takes it in and learns pseudonym ↔ BSN."""
    gw = net.gw
    subjects = tuple(
        TokenSubject(pseudonym=new_pseudonym(), informed_at=gw.clock.now() - DAY) for _ in range(2)
    )
    token = gw.issue_token(subjects=subjects)
    velsen_client = await gw.client("gemeente-velsen")
    registered = await velsen_client.register_token(token.body)
    velsen = await net.adapter("gemeente-velsen")
    people = persons([s.pseudonym for s in subjects], [BSN_A, BSN_B])
    velsen.remember_token(
        token.signed,
        token.opening,
        {p.pseudonym: str(p.bsn) for p in people},
        registered_at=registered["registered_at"],
    )
    system = net.system("gemeente-velsen")
    system.approaches[token.token_id] = (token.signed, token.opening, people)
    system.add_event(
        f"notice-{token.token_id}",
        {
            "type": "approach-notice",
            "token_id": token.token_id,
            "to": list(to),
        },
    )
    assert await velsen.ingest_once() == 1
    sent = await velsen.send_once()
    assert len(sent.accepted) == 1, velsen.store.outbox()
    for partner in to:
        adapter = await net.adapter(partner)
        got = await adapter.receive_once()
        assert len(got.applied) == 1, (partner, got)
    return token


def signal_event(about: list[str], to: list[str], date: str = "2026-03-01") -> dict[str, object]:
    return {"type": "signal", "about": about, "to": to, "date": date, "summary": "Overlast."}


async def test_notice_signal_receipt_and_sender_event(net: Net) -> None:
    token = await start_approach(net)
    police = net.open_adapters[1]
    halt = net.open_adapters[2]
    assert police.partner_id == "politie-ijmond"
    assert halt.partner_id == "halt"
    # The police system reports an incident about a youth it knows by BSN.
    net.system("politie-ijmond").add_event("INC-1", signal_event([BSN_A], ["halt"]))
    assert await police.ingest_once() == 1
    sent = await police.send_once()
    assert len(sent.accepted) == 1
    row = police.store.outbox()[0]
    assert row.state == "accepted"
    assert row.receipt is not None

    got = await halt.receive_once()
    assert got.applied == [row.message_id]
    case = net.system("halt").cases[row.message_id]
    assert case.message_type is MessageType.SIGNAL
    assert case.token_id == token.token_id
    # Halt's mapping gave the pseudonym's local id (its BSN) to the partner system.
    assert set(case.local_ids.values()) == {BSN_A}

    # The delivery receipt comes back to the police as a verified sender event.
    events = await police.receive_once()
    assert events.events == 1
    assert police.store.outcomes(row.message_id) == {"halt": ("receipt", None)}

    # Witnessing: the checkpoints of receipts are kept, and the head is consistent with them.
    await police.witness_once()
    assert police.store.alarms() == []
    assert len(police.store.checkpoints()) >= 2
    assert police.metrics.value("sent_total", type="signal") == 1
    assert halt.metrics.value("applied_total", type="signal") == 1
    assert police.health()["status"] == "ok"


async def test_same_record_read_twice_makes_one_message(net: Net) -> None:
    await start_approach(net)
    police = net.open_adapters[1]
    system = net.system("politie-ijmond")
    system.add_event("INC-7", signal_event([BSN_A], ["halt"]))
    await police.ingest_once()
    # The partner system hands the same record out again (its cursor was lost, say).
    await police.accept(
        [r for r in (await police.transport.source.pull(None)).records if r.record_id == "INC-7"]
    )
    rows = police.store.outbox()
    assert [r.record_id for r in rows] == ["INC-7"]
    await police.send_once()
    await police.send_once()
    halt = net.open_adapters[2]
    got = await halt.receive_once()
    assert len(got.applied) == 1
    assert len(net.system("halt").cases) == 2  # the approach-notice and this one signal


async def test_outbox_survives_restart_and_gateway_outage(net: Net) -> None:
    await start_approach(net)
    halt = net.open_adapters[2]
    # The police adapter starts while the gateway is unreachable.
    police_dir = net.folder("politie-ijmond")
    dead = "https://127.0.0.1:9"
    await net.close(net.open_adapters[1])
    down = await net.adapter("politie-ijmond", url=dead)
    system = net.system("politie-ijmond")
    for n in range(3):
        system.add_event(f"INC-{n}", signal_event([BSN_A], ["halt"], f"2026-03-0{n + 1}"))
    await down.ingest_once()
    result = await down.send_once()
    assert result.accepted == []
    assert len(result.retried) == 1
    states = [r.state for r in down.store.outbox() if r.record_id.startswith("INC-")]
    # The first was sealed and submitted (outcome unknown: its bytes are kept); the rest wait.
    assert states == ["sent", "queued", "queued"]
    assert down.store.outbox_depth() == 3
    await net.close(down)

    # Restart on the same adapter.db, the gateway reachable again, past the backoff.
    assert (police_dir / "adapter.db").exists()
    net.gw.clock.advance(3600)
    up = await net.adapter("politie-ijmond")
    result = await up.send_once()
    assert len(result.accepted) == 3
    rows = [r for r in up.store.outbox() if r.record_id.startswith("INC-")]
    assert [r.state for r in rows] == ["accepted"] * 3
    # Sent in the order the records were created: halt receives them in that order.
    got = await halt.receive_once()
    by_id = {r.message_id: r.record_id for r in rows}
    assert [by_id[m] for m in got.applied] == ["INC-0", "INC-1", "INC-2"]


@pytest.mark.parametrize("point", list(FaultPoint))
async def test_crash_at_each_inbound_step_applies_exactly_once(net: Net, point: FaultPoint) -> None:
    await start_approach(net, to=("politie-ijmond",))
    police = net.open_adapters[1]
    # A signal from the police to halt; halt's adapter crashes at `point`. Halt did not get
    # the notice, so it fetches the token from the gateway's registry and checks it itself.
    net.system("politie-ijmond").add_event("INC-9", signal_event([BSN_A], ["halt"]))
    await police.ingest_once()
    await police.send_once()
    message_id = police.store.outbox()[0].message_id

    class Crash(Exception):
        pass

    def fault(at: str) -> None:
        if at == point.value:
            raise Crash(at)

    halt = await net.adapter("halt", faults=fault)
    with pytest.raises(Crash):
        await halt.receive_once()
    await net.close(halt)
    # Restart on the same adapter.db after the lease ran out.
    net.gw.clock.advance(net.gw.built.config.limits.lease_s + 1)
    halt = await net.adapter("halt")
    await halt.receive_once()
    system = net.system("halt")
    assert list(system.cases) == [message_id]
    assert halt.store.inbound(message_id) is not None
    status = await (await net.gw.client("politie-ijmond")).message_status(message_id)
    assert [r["state"] for r in status["recipients"]] == ["delivered"]
    # Applied at most twice (once more only when the crash came between apply and commit).
    assert system.apply_calls == (2 if point is FaultPoint.APPLIED else 1)


async def test_destination_down_acknowledges_nothing(net: Net) -> None:
    await start_approach(net)
    police, halt = net.open_adapters[1], net.open_adapters[2]
    net.system("politie-ijmond").add_event("INC-3", signal_event([BSN_A], ["halt"]))
    await police.ingest_once()
    await police.send_once()
    net.system("halt").available = False
    got = await halt.receive_once()
    assert got.applied == []
    assert len(got.deferred) == 1
    net.system("halt").available = True
    net.gw.clock.advance(net.gw.built.config.limits.lease_s + 1)
    got = await halt.receive_once()
    assert len(got.applied) == 1


async def test_malformed_records_go_to_the_failed_place(
    net: Net, capsys: pytest.CaptureFixture[str]
) -> None:
    await start_approach(net)
    police = net.open_adapters[1]
    system = net.system("politie-ijmond")
    system.add_event("BAD-1", b"{not json")
    system.add_event("BAD-2", signal_event([BSN_A], ["halt"], date="01-03-2026"))
    system.add_event("OK-1", signal_event([BSN_A], ["halt"]))
    await police.ingest_once()
    failed = police.store.failed()
    assert [f.record_id for f in failed] == ["BAD-1", "BAD-2"]
    assert "not the JSON expected" in failed[0].report
    assert "date: '01-03-2026' is not a date" in failed[1].report
    assert failed[0].data == b"{not json"
    assert set(system.quarantined) == {"BAD-1", "BAD-2"}
    assert police.metrics.value("failed_records_total") == 2
    # The cursor moved past them: reading again does not count them twice.
    assert await police.ingest_once() == 0
    assert [r.record_id for r in police.store.outbox()] == ["OK-1"]

    # ``ketenpost adapter failed`` shows them with their reports (the log names neither);
    # the record's bytes only with --data.
    capsys.readouterr()
    config = str(net.folder("politie-ijmond") / "adapter.toml")
    assert ketenpost.main(["adapter", "failed", "--config", config]) == 0
    shown = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(d["record_id"], d["report"], d["size"]) for d in shown] == [
        (f.record_id, f.report, len(f.data)) for f in failed
    ]
    assert all("data" not in d for d in shown)
    assert ketenpost.main(["adapter", "failed", "--config", config, "--data"]) == 0
    first = json.loads(capsys.readouterr().out.splitlines()[0])
    assert base64.b64decode(first["data"]) == b"{not json"
    missing = net.folder("politie-ijmond") / "nowhere.toml"
    assert ketenpost.main(["adapter", "failed", "--config", str(missing)]) == 2
    assert capsys.readouterr().err.startswith("ketenpost: error: ")


async def test_refusals_are_reported_to_the_partner_system(net: Net) -> None:
    await start_approach(net)
    police = net.open_adapters[1]
    system = net.system("politie-ijmond")
    # A youth without an approach: refused locally, no_token.
    system.add_event("INC-X", signal_event(["999999990"], ["halt"]))
    # Police → welfare may only report progress: the gateway refuses the signal for good.
    system.add_event("INC-W", signal_event([BSN_A], ["welzijn-ijmond"]))
    await police.ingest_once()
    await police.send_once()
    assert system.refusals["INC-X"].reason == Reason.NO_TOKEN.value
    assert system.refusals["INC-X"].by == "adapter"
    refusal = system.refusals["INC-W"]
    # welzijn-ijmond is not a participant of this approach: final, reported with the reason.
    assert (refusal.by, refusal.reason) == ("gateway", Reason.RECIPIENT_NOT_PARTICIPANT.value)
    assert police.metrics.value("refused_total", reason="no_token") == 1


async def test_healthz_and_metrics_listener(net: Net) -> None:
    import aiohttp

    from adapters.health import serve_health

    await start_approach(net, to=("halt",))
    halt: Adapter = net.open_adapters[1]
    runner = await serve_health(halt, "127.0.0.1:0")
    assert runner is not None
    try:
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 200
                assert (await response.json())["status"] == "ok"
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                text = await response.text()
                assert 'ketenpost_adapter_applied_total{type="approach-notice"} 1.0' in text
    finally:
        await runner.cleanup()
