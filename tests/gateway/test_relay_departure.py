"""A partner that has left the covenant (``Partner.left_at``) is no recipient from then on.

Protocol §5.3: from ``left_at`` on a partner is "neither sender nor recipient". A sender that
has left is refused by its TLS identity (``unknown_sender``, ``keys.tlsidentity``); these tests
cover the recipient side, through real HTTPS with mTLS against the gateway of ``conftest``:

* a submission naming a recipient whose ``left_at`` has been reached is refused as
  ``unknown_recipient`` (final), audited and counted, and nothing is queued — also when the
  directory still lists the partner's keys, and also when ``keys.rotation.remove_partner``
  retired them (which would otherwise be the transient ``recipient_key_invalid``);
* a message queued before a ``left_at`` that lies ahead is purged once the clock reaches it,
  with no new directory version: a ``purged`` audit entry (``unknown_recipient``) and a
  ``purge`` sender event for the sender. What the leaving partner itself sent before
  ``left_at`` stays deliverable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

from gateway.protocol.auditentry import AuditDecision
from gateway.protocol.reasons import Reason
from gateway.protocol.receipts import SenderEventKind, verify_sender_event
from gateway.protocol.types import MessageType
from gateway.signer import decode_signed_object
from keys.directory import DirectoryContents
from keys.rotation import remove_partner
from tests.gateway.conftest import Deployment, Gw
from tests.gateway.test_relay_reasons import (
    assert_refused,
    audit_entries,
    registered,
    running,
    send,
    submission,
    with_partner,
)

POLICE: Final = "politie-ijmond"
VELSEN: Final = "gemeente-velsen"
HALT: Final = "halt"
OM: Final = "om"
HOUR: Final = 3600


def _refused_count(gw: Gw, reason: Reason, sender: str = POLICE) -> float:
    value = gw.metrics.registry.get_sample_value(
        "ketenpost_refused_total", {"reason": reason.value, "sender": sender}
    )
    return value or 0.0


def _purged_count(gw: Gw, reason: Reason) -> float:
    value = gw.metrics.registry.get_sample_value("ketenpost_purged_total", {"reason": reason.value})
    return value or 0.0


# -- acceptance ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Departure:
    name: str
    # The directory the relay judges by, from the deployment's contents and the gateway's now.
    directory: Callable[[DirectoryContents, int], DirectoryContents]
    to: tuple[str, ...] = (HALT,)
    accepted: bool = False


def _halt_left_at(offset: int) -> Callable[[DirectoryContents, int], DirectoryContents]:
    return lambda contents, now: with_partner(contents, HALT, left_at=now + offset)


DEPARTURES: Final = [
    # The review's case: ``left_at`` set and passed, the partner's keys still listed as usable.
    Departure("left_an_hour_ago_keys_still_listed", _halt_left_at(-HOUR)),
    Departure("left_at_is_now", _halt_left_at(0)),
    # The keys tooling's way of leaving: keys retired at ``left_at``. The departure is checked
    # first, so the sender gets the final reason, not the transient recipient_key_invalid.
    Departure(
        "left_through_remove_partner_keys_retired",
        lambda contents, now: remove_partner(contents, HALT, now - 60),
    ),
    Departure("one_of_two_recipients_left", _halt_left_at(-HOUR), to=(HALT, OM)),
    # Not yet left: still a recipient (purged later if undelivered then, see below).
    Departure("leaves_in_an_hour", _halt_left_at(HOUR), accepted=True),
]


@pytest.mark.parametrize("case", DEPARTURES, ids=[c.name for c in DEPARTURES])
async def test_submission_to_a_partner_that_has_left(
    deployment: Deployment, tmp_path: Path, case: Departure
) -> None:
    async with running(deployment, tmp_path) as gw:
        token = await registered(gw)
        envelope = gw.seal(token, to=case.to)
        gw.use_directory(case.directory(gw.directory.contents, gw.clock.now()))
        before = await audit_entries(gw)
        answer = await send(gw, submission(envelope))
        after = await audit_entries(gw)
        assert len(after) == len(before) + 1
        if case.accepted:
            assert answer.status == 202, answer.document
            assert after[-1].decision is AuditDecision.ACCEPTED
            assert [s.recipient for s in await gw.store.queue_stats()] == [HALT]
            return
        assert_refused(answer, Reason.UNKNOWN_RECIPIENT)
        entry = after[-1]
        assert (entry.decision, entry.reason, entry.sender, entry.recipients) == (
            AuditDecision.REFUSED,
            Reason.UNKNOWN_RECIPIENT.value,
            POLICE,
            case.to,
        )
        # Refused under a registered token: filed under it, its retention deletes the subjects.
        assert (entry.token_id, entry.subjects) == (token.token_id, token.subjects)
        assert _refused_count(gw, Reason.UNKNOWN_RECIPIENT) == 1
        assert await gw.store.queue_stats() == []


# -- the queue -------------------------------------------------------------------------------


@pytest.mark.parametrize("trigger", ["sweep", "sender_inbox"])
async def test_a_message_queued_before_left_at_is_purged_when_it_passes(
    deployment: Deployment, tmp_path: Path, trigger: str
) -> None:
    async with running(deployment, tmp_path) as gw:
        relay = gw.built.runtime.relay
        token = await registered(gw)
        left_at = gw.clock.now() + HOUR
        gw.use_directory(with_partner(gw.directory.contents, HALT, left_at=left_at))
        # The new directory is judged now, before anything is queued: what follows needs no
        # further directory change, only the clock reaching ``left_at``.
        await relay.sweep_expired()
        police = await gw.client(POLICE)
        to_halt = [(await police.submit(gw.seal(token))).message_id for _ in range(2)]
        halt = await gw.client(HALT)
        from_halt = await halt.submit(
            gw.seal(token, sender=HALT, to=(VELSEN,), message_type=MessageType.PROGRESS)
        )

        gw.clock.advance(HOUR - 1)
        await relay.sweep_expired()
        assert (await police.inbox()).events == []
        assert {s.recipient: s.depth for s in await gw.store.queue_stats()} == {
            HALT: 2,
            VELSEN: 1,
        }

        gw.clock.advance(1)  # left_at reached
        if trigger == "sweep":
            # The periodic sweep alone purges: nobody needs to poll.
            await relay.sweep_expired()
            assert _purged_count(gw, Reason.UNKNOWN_RECIPIENT) == 2
        events = (await police.inbox()).events
        assert sorted(e.message_id for e in events) == sorted(to_halt)
        for event in events:
            assert event.kind == "purge"
            verified = verify_sender_event(
                decode_signed_object(event.event), gw.directory, now=gw.clock.now()
            ).event
            assert (verified.kind, verified.recipient) == (SenderEventKind.PURGE, HALT)
        purged = [e for e in await audit_entries(gw) if e.decision is AuditDecision.PURGED]
        assert (
            sorted((e.reason, e.sender, e.recipients, e.count) for e in purged)
            == [(Reason.UNKNOWN_RECIPIENT.value, POLICE, (HALT,), 1)] * 2
        )
        assert _purged_count(gw, Reason.UNKNOWN_RECIPIENT) == 2
        # What halt sent before leaving stands: its signature was good when accepted.
        velsen = await gw.client(VELSEN)
        assert [d.message_id for d in (await velsen.inbox()).deliveries] == [from_halt.message_id]
        # From now on halt is no recipient.
        assert_refused(await send(gw, submission(gw.seal(token))), Reason.UNKNOWN_RECIPIENT)
