"""``ketenpost inbox`` checks a delivery's acceptance as the adapter engine does
(``adapters.acceptance``), and judges the token at its own time.

A delivery whose acceptance does not hold — no receipt, another message's receipt, an
``accepted_at`` the gateway moved — is opened by no one: one ``"alarm"`` line, one
``ketenpost: error:`` line on stderr, exit 1, and nothing answered even with ``--ack``. The
dishonest gateway is the double of ``tests/adapters/conftest.py`` (the real gateway's
certificate) serving what the real gateway delivered, altered. The command runs as a real
process there; the token test runs ``inbox`` in-process to choose its ``now``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Final

import pytest

from adapters.cli_partner import PartnerFolder, inbox
from adapters.client import InboxDelivery
from gateway.protocol.token import TokenSubject
from gateway.protocol.types import new_pseudonym
from keys import KeyUse
from keys.keyfile import load_ed25519_key
from tests.adapters.conftest import FakeGateway, b64, fake_gateway  # noqa: F401 - fixture
from tests.adapters.test_delivery_acceptance import serve_token
from tests.adapters.test_tampering_gateway import FakeLog, delivery
from tests.gateway.conftest import DAY, Gw, Token
from tests.gateway.test_cli_partner import _cli

VELSEN, POLICE, HALT = "gemeente-velsen", "politie-ijmond", "halt"
HOUR: Final = 3600


async def _delivered(gw: Gw) -> tuple[Token, bytes, InboxDelivery, bytes]:
    """A signal police → halt accepted by the real gateway, as halt's inbox hands it out,
    and a second accepted envelope (whose receipt a dishonest gateway could swap in)."""
    token = gw.issue_token()
    await (await gw.client(VELSEN)).register_token(token.body)
    police = await gw.client(POLICE)
    envelope = gw.seal(token, sender=POLICE, to=(HALT,))
    other = gw.seal(token, sender=POLICE, to=(HALT,))
    await police.submit(envelope)
    accepted_other = await police.submit(other)
    halt = await gw.client(HALT)
    [real, _] = sorted(
        (await halt.inbox()).deliveries, key=lambda d: d.message_id == accepted_other.message_id
    )
    return token, envelope, real, accepted_other.receipt


TAMPERING: dict[str, tuple[Any, str]] = {
    # name → (the delivery item from (envelope, real delivery, other receipt), reason)
    "accepted_at moved 30 days back": (
        lambda env, real, other: delivery(env, real.receipt, real.accepted_at - 30 * DAY),
        "time_mismatch",
    ),
    "no receipt": (lambda env, real, other: delivery(env, None, real.accepted_at), "receipt"),
    "another message's receipt": (
        lambda env, real, other: delivery(env, other, real.accepted_at),
        "receipt",
    ),
}


@pytest.mark.parametrize("case", list(TAMPERING))
async def test_inbox_refuses_a_delivery_whose_acceptance_does_not_hold(
    gateway: Gw,
    fake_gateway: FakeGateway,  # noqa: F811
    case: str,
) -> None:
    make, reason = TAMPERING[case]
    gw = gateway
    token, envelope, real, other = await _delivered(gw)
    fake_gateway.deliveries = [make(envelope, real, other)]
    serve_token(fake_gateway, token, real.accepted_at)
    code, out, err = await _cli(gw.deployment, fake_gateway.url, HALT, "inbox", "--ack")
    assert code == 1, (out, err)
    (line,) = [json.loads(x) for x in out.splitlines()]
    assert (line["kind"], line["alarm"], line["message_id"], line["reason"], line["acked"]) == (
        "alarm",
        "delivery",
        real.message_id,
        reason,
        False,
    )
    (error,) = err.splitlines()
    assert error.startswith(
        f"ketenpost: error: delivery {real.message_id} from {POLICE} not opened: "
        "the gateway's acceptance of it does not hold: "
    ), error
    # Nothing answered: no receipt, no rejection (the sender did nothing wrong).
    assert fake_gateway.posted_receipts == []


async def test_inbox_opens_a_genuine_delivery_at_its_receipts_time(
    gateway: Gw,
    fake_gateway: FakeGateway,  # noqa: F811
) -> None:
    gw = gateway
    token, envelope, real, _ = await _delivered(gw)
    fake_gateway.deliveries = [delivery(envelope, real.receipt, real.accepted_at)]
    serve_token(fake_gateway, token, real.accepted_at)
    code, out, err = await _cli(gw.deployment, fake_gateway.url, HALT, "inbox", "--ack")
    assert code == 0, err
    assert err == ""
    (line,) = [json.loads(x) for x in out.splitlines()]
    assert (line["kind"], line["message_id"], line["accepted_at"]) == (
        "message",
        real.message_id,
        real.accepted_at,
    )
    [posted] = fake_gateway.posted_receipts
    assert len(posted["receipts"]) == 1


@pytest.mark.parametrize(
    ("after_s", "kind"),
    [(60, "message"), (2 * HOUR, "rejection")],
    ids=["within the deferral", "the deferral ended by our clock"],
)
async def test_inbox_judges_the_token_at_its_own_time(
    gateway: Gw,
    fake_gateway: FakeGateway,  # noqa: F811
    tmp_path: Path,
    after_s: int,
    kind: str,
) -> None:
    """The subject's informing was deferred until ten minutes after the acceptance: by the
    gateway's (true) acceptance time the token allowed the message, by ours it no longer
    does. The engine judges the token at its own time; so does the command line."""
    gw = gateway
    gw.clock.advance(HOUR)  # the keys were in use a little before "now"
    accepted_at = gw.clock.now()
    subject = TokenSubject(pseudonym=new_pseudonym(), informing_deferred_until=accepted_at + 600)
    token = gw.issue_token(subjects=(subject,))
    envelope = gw.seal(token, sender=POLICE, to=(HALT,), created_at=accepted_at)
    key = load_ed25519_key(gw.deployment.root / "gateway" / "sign.key", KeyUse.SIGN)
    receipt = FakeLog(key).accept(envelope, accepted_at)
    fake_gateway.deliveries = [delivery(envelope, receipt, accepted_at)]
    serve_token(fake_gateway, token, accepted_at)
    args = argparse.Namespace(gateway=fake_gateway.url, wait=0.0, limit=10, ack=False)
    partner = PartnerFolder.open(gw.deployment.partner_dir(HALT), os.environ)
    (line,) = await inbox(args, partner, accepted_at + after_s)
    assert line["kind"] == kind, line
    if kind == "rejection":
        assert line["reason"] == "token_invalid"
        assert "subject_not_informed" in line["detail"]
