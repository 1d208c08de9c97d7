"""A recipient does not take the gateway's acceptance time on trust (review finding, HIGH).

Each delivery carries its gateway-signed acceptance receipt; the recipient verifies it as the
sender verifies its own (``adapters.acceptance``) and opens the envelope at the receipt's
``accepted_at`` — never at the plain ``accepted_at`` of the inbox answer. A dishonest gateway
is the double of ``tests/adapters/conftest.py`` (the real gateway's certificate) with its own
audit log (``FakeLog``: real tree, real gateway key); the proof of concept of the review runs
against the real gateway's receipt.

Every refusal here must be the same: nothing applied, no delivery receipt and no rejection sent
(the sender did nothing wrong), one ``delivery`` alarm, the delivery left to its lease.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Final

import msgspec
import pytest

from adapters.config import load_partner_dir
from adapters.engine import Adapter, AlarmKind, PassResult
from gateway.protocol.envelope import decode_envelope
from gateway.protocol.reasons import RejectionReason
from gateway.protocol.receipts import (
    AcceptanceReceipt,
    sign_acceptance_receipt,
    verify_rejection,
)
from gateway.protocol.signed import SignedObject
from keys import KeyUse
from keys.directory import DirectoryContents
from keys.keyfile import load_ed25519_key
from keys.signed_directory import DirectoryRepository, encode_bundle, read_bundle, write_bundle
from tests.adapters.conftest import FakeGateway, Net, b64
from tests.adapters.test_tampering_gateway import FakeLog, delivery, gateway_key
from tests.gateway.conftest import DAY, Token

POLICE: Final = "politie-ijmond"
HALT: Final = "halt"
VELSEN: Final = "gemeente-velsen"
SKEW: Final = 300  # the deployment directory's clock_skew_s
# The session directory's timestamp lasts a day: these tests move the clock by hours.
HOUR: Final = 3600


def serve_token(fake: FakeGateway, token: Token, registered_at: int) -> None:
    fake.approaches[token.token_id] = {
        "token_id": token.token_id,
        "token": b64(token.body),
        "token_hash": token.token_hash,
        "registered_at": registered_at,
        "revoked_at": None,
        "supersedes": None,
        "superseded_by": None,
    }


def assert_refused(halt: Adapter, fake: FakeGateway, result: PassResult, *detail: str) -> None:
    """Nothing applied, rejected, recorded or answered (the delivery waits for its lease to
    end); one ``delivery`` alarm naming ``detail``."""
    assert (result.applied, result.rejected) == ([], [])
    assert len(result.deferred) == 1
    assert halt.store.inbound(result.deferred[0]) is None
    assert fake.posted_receipts == []
    alarms = [a for a in halt.store.alarms() if a.kind == AlarmKind.DELIVERY.value]
    assert len(alarms) == 1, halt.store.alarms()
    for text in detail:
        assert text in alarms[0].detail, alarms[0].detail
    assert halt.metrics.value("alarms_total", kind="delivery") == 1
    assert halt.health()["status"] == "alarm"


# -- the round trip still works ----------------------------------------------------------------


async def test_police_to_halt_round_trip_checks_the_real_receipt(net: Net) -> None:
    gw = net.gw
    token = gw.issue_token()
    await (await gw.client(VELSEN)).register_token(token.body)
    accepted = await (await gw.client(POLICE)).submit(gw.seal(token, sender=POLICE, to=(HALT,)))
    halt = await net.adapter(HALT)
    result = await halt.receive_once()
    assert result.applied == [accepted.message_id]
    [case] = net.system(HALT).cases.values()
    # Opened at the receipt's time, the one the sender holds too.
    receipt = msgspec.msgpack.decode(
        msgspec.msgpack.decode(accepted.receipt, type=SignedObject).payload
    )
    assert case.accepted_at == receipt["accepted_at"]
    # The receipt's checkpoint was witnessed.
    assert [c.size for c in halt.store.checkpoints()] == [receipt["tree_size"]]
    assert halt.store.alarms() == []


# -- the review's proof of concept -------------------------------------------------------------


def publish_revoked(net: Net, partner: str, kid: str, compromised_since: int) -> bytes:
    """A new signed directory version (officers' and key authority's keys) listing ``kid`` of
    ``partner`` as revoked now, compromised since ``compromised_since``; written into halt's
    own folder only (never the session deployment). Returns the encoded bundle."""
    root = net.deployment.root
    now = net.gw.clock.now()
    contents: DirectoryContents = net.gw.directory.contents
    partners = tuple(
        msgspec.structs.replace(
            p,
            keys=tuple(
                msgspec.structs.replace(k, revoked_at=now, compromised_since=compromised_since)
                if k.kid == kid
                else k
                for k in p.keys
            ),
        )
        if p.id == partner
        else p
        for p in contents.partners
    )
    repo = DirectoryRepository.from_bundle(read_bundle(root / "directory"))
    repo.publish(
        msgspec.structs.replace(contents, partners=partners),
        [load_ed25519_key(root / "officers" / f"directory-{i}.key", KeyUse.SIGN) for i in (1, 2)],
        load_ed25519_key(root / "key-authority" / "timestamp.key", KeyUse.SIGN),
        now,
    )
    config = load_partner_dir(net.folder(HALT))
    write_bundle(repo.bundle(), config.path(config.directory.bundle))
    return encode_bundle(repo.bundle())


@pytest.mark.parametrize("backdated", [True, False], ids=["backdated", "as accepted"])
async def test_a_backdated_acceptance_does_not_open_a_message_of_a_stolen_key(
    net: Net, fake_gateway: FakeGateway, backdated: bool
) -> None:
    gw = net.gw
    # A month on, so the police key was already in use thirty days before the acceptance; the
    # gateway keeps its directory (the bundle's timestamp would have expired by then).
    gw.clock.advance(31 * DAY)
    gw.use_directory(gw.directory.contents)
    token = gw.issue_token()
    await (await gw.client(VELSEN)).register_token(token.body)
    sign_key = gw.deployment.sign_key(POLICE)
    envelope = gw.seal(token, sender=POLICE, to=(HALT,), sign_key=sign_key)
    await (await gw.client(POLICE)).submit(envelope)
    [real] = (await (await gw.client(HALT)).inbox()).deliveries
    accepted_at = real.accepted_at
    # The police sign key turns out stolen, since half a minute before this acceptance: the
    # message must not open. The gateway holds it and backdates the delivery by 30 days,
    # before the compromise, where the key's signatures would still stand.
    gw.clock.advance(60)
    fake_gateway.bundle = publish_revoked(net, POLICE, sign_key.kid, accepted_at - 30)
    claimed = accepted_at - 30 * DAY if backdated else accepted_at
    fake_gateway.deliveries = [delivery(envelope, real.receipt, claimed)]
    serve_token(fake_gateway, token, accepted_at)
    halt = await net.adapter(HALT, url=fake_gateway.url)
    result = await halt.receive_once()
    assert net.system(HALT).cases == {}
    if backdated:
        assert_refused(halt, fake_gateway, result, "time_mismatch")
        return
    # At the verified time the key's compromise covers the signature: the sender (or who
    # holds its key) is told, as for any message signed with a compromised key.
    assert result.rejected == [real.message_id]
    [posted] = fake_gateway.posted_receipts
    signed = msgspec.msgpack.decode(base64.b64decode(posted["rejections"][0]), type=SignedObject)
    rejection = verify_rejection(signed, gw.directory, now=gw.clock.now(), recipient=HALT)
    assert rejection.reason is RejectionReason.CANNOT_OPEN
    assert "compromised" in rejection.detail or "revoked" in rejection.detail


# -- receipts that do not verify ---------------------------------------------------------------


def _flip_proof(receipt: bytes, net: Net) -> bytes:
    """The same receipt, re-signed by the gateway key, with a wrong inclusion proof hash."""
    payload = msgspec.msgpack.decode(
        msgspec.msgpack.decode(receipt, type=SignedObject).payload, type=AcceptanceReceipt
    )
    first = payload.inclusion_proof[0]
    bad = msgspec.structs.replace(
        payload, inclusion_proof=(bytes([first[0] ^ 1]) + first[1:], *payload.inclusion_proof[1:])
    )
    return msgspec.msgpack.encode(sign_acceptance_receipt(bad, gateway_key(net)))


# name → (how the receipt is made from (net, log, envelope, other envelope, now), alarm text)
ReceiptMaker = Callable[[Net, FakeLog, bytes, bytes, int], bytes | None]
RECEIPT_CASES: dict[str, tuple[ReceiptMaker, str]] = {
    "no receipt": (lambda net, log, env, other, now: None, "sent no acceptance receipt"),
    "an empty receipt": (lambda net, log, env, other, now: b"", "sent no acceptance receipt"),
    "not a receipt": (lambda net, log, env, other, now: b"\x93junk", "does not verify"),
    "another message's receipt": (
        lambda net, log, env, other, now: log.accept(other, now),
        "does not verify",
    ),
    "an inclusion proof that does not lead to the root": (
        lambda net, log, env, other, now: _flip_proof(log.accept(env, now), net),
        "inclusion proof",
    ),
}


@pytest.mark.parametrize("case", list(RECEIPT_CASES))
async def test_a_delivery_whose_receipt_does_not_verify_is_not_opened(
    net: Net, fake_gateway: FakeGateway, case: str
) -> None:
    make, expected = RECEIPT_CASES[case]
    gw = net.gw
    token = gw.issue_token()
    now = gw.clock.now()
    envelope = gw.seal(token)
    other = gw.seal(token)
    receipt = make(net, FakeLog(gateway_key(net)), envelope, other, now)
    fake_gateway.deliveries = [delivery(envelope, receipt, now)]
    serve_token(fake_gateway, token, now)
    halt = await net.adapter(HALT, url=fake_gateway.url)
    result = await halt.receive_once()
    assert result.deferred == [decode_envelope(envelope).header.message_id]
    assert_refused(halt, fake_gateway, result, expected)
    assert net.system(HALT).cases == {}


async def test_a_receipt_without_its_entry_is_refused_whatever_the_sender_setting(
    net: Net, fake_gateway: FakeGateway
) -> None:
    """``[gateway] require_receipt_entries = false`` is the sender's rollout fallback; a
    recipient always needs the entry, which alone binds the time to this message."""
    gw = net.gw
    token = gw.issue_token()
    now = gw.clock.now()
    envelope = gw.seal(token)
    signed = msgspec.msgpack.decode(
        FakeLog(gateway_key(net)).accept(envelope, now), type=SignedObject
    )
    bare = msgspec.structs.replace(
        msgspec.msgpack.decode(signed.payload, type=AcceptanceReceipt), entry=b"", salt=b""
    )
    receipt = msgspec.msgpack.encode(sign_acceptance_receipt(bare, gateway_key(net)))
    fake_gateway.deliveries = [delivery(envelope, receipt, now)]
    serve_token(fake_gateway, token, now)
    halt = await net.adapter(HALT, url=fake_gateway.url, require_receipt_entries=False)
    result = await halt.receive_once()
    assert_refused(halt, fake_gateway, result, "no audit entry")


# -- the time the receipt names ----------------------------------------------------------------


async def test_an_acceptance_before_a_head_that_did_not_hold_it_is_refused(
    net: Net, fake_gateway: FakeGateway
) -> None:
    gw = net.gw
    token = gw.issue_token()
    made = gw.clock.now()
    envelope = gw.seal(token, created_at=made - 2 * HOUR)
    log = FakeLog(gateway_key(net), filler=3)
    # Halt witnesses the head (3 leaves) an hour on; hours later the gateway hands out a
    # message it says it accepted before that head — but its leaf (3) came after it.
    gw.clock.advance(HOUR)
    fake_gateway.checkpoints = [log.head()]
    halt = await net.adapter(HALT, url=fake_gateway.url)
    await halt.witness_once()
    head_seen = gw.clock.now()
    gw.clock.advance(6 * HOUR)
    claimed = head_seen - SKEW - 60
    receipt = log.accept(envelope, claimed)
    fake_gateway.proofs["from"] = log.consistency(3, 4)
    fake_gateway.deliveries = [delivery(envelope, receipt, claimed)]
    serve_token(fake_gateway, token, made)
    result = await halt.receive_once()
    assert_refused(halt, fake_gateway, result, "before_head", f"at {head_seen}")
    assert net.system(HALT).cases == {}


@pytest.mark.parametrize(
    "offset", [-SKEW, 0, HOUR], ids=["within the skew", "at the head", "after the head"]
)
async def test_an_acceptance_after_the_last_head_without_it_opens(
    net: Net, fake_gateway: FakeGateway, offset: int
) -> None:
    gw = net.gw
    token = gw.issue_token()
    made = gw.clock.now()
    envelope = gw.seal(token, created_at=made)
    log = FakeLog(gateway_key(net), filler=3)
    gw.clock.advance(HOUR)
    fake_gateway.checkpoints = [log.head()]
    halt = await net.adapter(HALT, url=fake_gateway.url)
    await halt.witness_once()
    head_seen = gw.clock.now()
    gw.clock.advance(6 * HOUR)
    receipt = log.accept(envelope, head_seen + offset)
    fake_gateway.proofs["from"] = log.consistency(3, 4)
    fake_gateway.deliveries = [delivery(envelope, receipt, head_seen + offset)]
    serve_token(fake_gateway, token, made)
    result = await halt.receive_once()
    assert result.applied == [decode_envelope(envelope).header.message_id]
    assert halt.store.alarms() == []


async def test_a_backlog_delivered_days_late_opens(net: Net, fake_gateway: FakeGateway) -> None:
    """Receipts' checkpoints seen late say nothing of when their leaves came: only heads
    bound the time. Two messages accepted one after the other wait half a day in the inbox;
    the first one's checkpoint (2 leaves), first seen then, does not hold the second's leaf."""
    gw = net.gw
    token = gw.issue_token()
    now = gw.clock.now()
    log = FakeLog(gateway_key(net))
    first, second = gw.seal(token), gw.seal(token)
    items = [delivery(e, log.accept(e, now), now) for e in (first, second)]
    fake_gateway.proofs["from"] = log.consistency(2, 3)
    gw.clock.advance(12 * HOUR)
    fake_gateway.deliveries = items
    serve_token(fake_gateway, token, now)
    halt = await net.adapter(HALT, url=fake_gateway.url)
    result = await halt.receive_once()
    assert result.applied == [i["message_id"] for i in items]
    assert halt.store.alarms() == []


TIME_CASES: dict[str, tuple[Callable[[int], dict[str, int]], str]] = {
    # claimed: what the inbox says; signed: what the receipt (and its entry) says.
    "in the future beyond the skew": (
        lambda now: {"created": now, "signed": now + SKEW + 60, "claimed": now + SKEW + 60},
        "in_future",
    ),
    "before the sender made it": (
        lambda now: {"created": now, "signed": now - SKEW - 60, "claimed": now - SKEW - 60},
        "before_creation",
    ),
    "the inbox names another time than the receipt": (
        lambda now: {"created": now, "signed": now, "claimed": now - 1},
        "time_mismatch",
    ),
}


@pytest.mark.parametrize("case", list(TIME_CASES))
async def test_an_acceptance_time_out_of_bounds_is_refused(
    net: Net, fake_gateway: FakeGateway, case: str
) -> None:
    times, expected = TIME_CASES[case]
    gw = net.gw
    # An hour on, so the gateway's key was in use a little before now.
    gw.clock.advance(HOUR)
    token = gw.issue_token()
    t = times(gw.clock.now())
    envelope = gw.seal(token, created_at=t["created"])
    receipt = FakeLog(gateway_key(net)).accept(envelope, t["signed"])
    fake_gateway.deliveries = [delivery(envelope, receipt, t["claimed"])]
    serve_token(fake_gateway, token, gw.clock.now())
    halt = await net.adapter(HALT, url=fake_gateway.url)
    result = await halt.receive_once()
    assert_refused(halt, fake_gateway, result, expected)


async def test_a_receipt_that_contradicts_the_witnessed_log_raises_the_witness_alarm(
    net: Net, fake_gateway: FakeGateway
) -> None:
    """Its checkpoint and a head halt saw cannot both be true: the witness alarm, as for a
    sender's own receipt (the checkpoint is kept as the evidence); the delivery is judged on."""
    gw = net.gw
    token = gw.issue_token()
    now = gw.clock.now()
    envelope = gw.seal(token)
    receipt = FakeLog(gateway_key(net)).accept(envelope, now)
    # Another log of the same size (2 leaves) was shown to halt as the head.
    fake_gateway.checkpoints = [FakeLog(gateway_key(net), filler=2).head()]
    halt = await net.adapter(HALT, url=fake_gateway.url)
    await halt.witness_once()
    fake_gateway.deliveries = [delivery(envelope, receipt, now)]
    serve_token(fake_gateway, token, now)
    result = await halt.receive_once()
    [alarm] = halt.store.alarms()
    assert alarm.kind == AlarmKind.WITNESS.value
    assert "two different roots" in alarm.detail
    assert halt.metrics.value("witness_inconsistency_total") == 1
    assert result.applied == [decode_envelope(envelope).header.message_id]
