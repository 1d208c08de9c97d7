"""The relay decision through real HTTPS: one named case per reason, TLS identity, revocation
racing submissions, metrics, audit proofs and ``audit verify``."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapters.client import GatewayUnreachableError, RefusedError
from gateway.audit import AuditVerifyError, verify_log
from gateway.protocol.auditentry import AuditDecision, AuditEntry, decode_entry
from gateway.protocol.checkpoint import verify_checkpoint
from gateway.protocol.envelope import decode_envelope
from gateway.protocol.merkle import (
    ConsistencyProof,
    InclusionProof,
    verify_consistency,
    verify_inclusion,
)
from gateway.protocol.reasons import Reason
from gateway.protocol.token import ApproachToken, TokenSubject, revoke
from gateway.protocol.types import MessageType, new_pseudonym
from gateway.retention import RetentionSweeper
from gateway.signer import encode_signed_object
from gateway.subject_access import build_report
from keys import KeyUse
from keys.ca import PartnerSubject, create_ca, issue_partner_certificate, write_certificates_pem
from keys.keyfile import write_tls_key
from keys.keypair import TlsKeyPair
from keys.tlsidentity import TlsFiles, client_context
from tests.gateway.conftest import DAY, Deployment, Gw, Token


async def _register(gw: Gw, token: Token) -> None:
    velsen = await gw.client("gemeente-velsen")
    await velsen.register_token(token.body)


@dataclass(frozen=True)
class Case:
    name: str
    reason: Reason
    build: Callable[[Gw], Awaitable[bytes]]
    sender: str = "politie-ijmond"


async def _plain(gw: Gw, **kw: object) -> bytes:
    token = gw.issue_token()
    await _register(gw, token)
    return gw.seal(token, **kw)  # type: ignore[arg-type]


async def _unregistered(gw: Gw) -> bytes:
    return gw.seal(gw.issue_token())


async def _revoked(gw: Gw) -> bytes:
    token = gw.issue_token()
    await _register(gw, token)
    velsen = await gw.client("gemeente-velsen")
    revocation = revoke(
        _token(token),
        key=gw.deployment.token_key("gemeente-velsen"),
        now=gw.clock.now(),
        reason="Aanpak beëindigd.",
    )
    await velsen.revoke_token(token.token_id, encode_signed_object(revocation))
    return gw.seal(token)


def _token(token: Token) -> ApproachToken:
    import msgspec

    from gateway.protocol.token import ApproachToken

    return msgspec.msgpack.decode(token.signed.payload, type=ApproachToken)


async def _superseded(gw: Gw) -> bytes:
    old = gw.issue_token()
    await _register(gw, old)
    new = gw.issue_token(supersedes=old.token_id)
    await _register(gw, new)
    return gw.seal(old)


async def _stranger_subject(gw: Gw) -> bytes:
    token = gw.issue_token()
    await _register(gw, token)
    return gw.seal(token, subjects=tuple(sorted((*token.subjects, new_pseudonym()))))


async def _not_informed(gw: Gw) -> bytes:
    subject = TokenSubject(pseudonym=new_pseudonym(), informed_at=gw.clock.now() + 5 * DAY)
    token = gw.issue_token(subjects=(subject,))
    await _register(gw, token)
    return gw.seal(token)


async def _sender_not_participant(gw: Gw) -> bytes:
    token = gw.issue_token(participants=("gemeente-velsen", "halt"))
    await _register(gw, token)
    return gw.seal(token)


async def _recipient_not_participant(gw: Gw) -> bytes:
    token = gw.issue_token(participants=("gemeente-velsen", "politie-ijmond"))
    await _register(gw, token)
    return gw.seal(token)


async def _wrong_recipient_key(gw: Gw) -> bytes:
    token = gw.issue_token()
    await _register(gw, token)
    # Halt's slot carries cjg's encrypt key: the kid is not one of halt's keys.
    cjg_key = gw.directory.current_key("cjg", KeyUse.ENCRYPT, gw.clock.now())
    return gw.seal(token, recipient_keys={"halt": cjg_key})


async def _forged(gw: Gw) -> bytes:
    token = gw.issue_token()
    await _register(gw, token)
    envelope = bytearray(gw.seal(token))
    envelope[-1] ^= 1  # inside the outer signature
    return bytes(envelope)


async def _plain_short_token(gw: Gw) -> bytes:
    token = gw.issue_token(valid_days=2)
    await _register(gw, token)
    return gw.seal(token, expires_in=5 * DAY)


CASES = [
    Case("malformed_envelope", Reason.MALFORMED_ENVELOPE, lambda gw: _const(b"\x93not")),
    Case("sender_mismatch", Reason.SENDER_MISMATCH, _plain, sender="cjg"),
    Case("bad_signature", Reason.BAD_SIGNATURE, _forged),
    Case(
        "created_in_future",
        Reason.CREATED_IN_FUTURE,
        lambda gw: _plain(gw, created_at=gw.clock.now() + 3600),
    ),
    Case(
        "expired",
        Reason.EXPIRED,
        lambda gw: _plain(gw, created_at=gw.clock.now() - 2 * DAY, expires_in=DAY),
    ),
    Case("expired_beyond_lifetime", Reason.EXPIRED, lambda gw: _plain(gw, expires_in=60 * DAY)),
    Case("no_token", Reason.NO_TOKEN, lambda gw: _const(gw.seal(None))),
    Case("token_not_registered", Reason.TOKEN_NOT_REGISTERED, _unregistered),
    Case(
        "token_hash_mismatch",
        Reason.TOKEN_HASH_MISMATCH,
        lambda gw: _plain(gw, token_hash_="11" * 32),
    ),
    Case("token_revoked", Reason.TOKEN_REVOKED, _revoked),
    Case("token_superseded", Reason.TOKEN_SUPERSEDED, _superseded),
    Case(
        "expires_after_token",
        Reason.EXPIRES_AFTER_TOKEN,
        _plain_short_token,
    ),
    Case("subject_not_in_token", Reason.SUBJECT_NOT_IN_TOKEN, _stranger_subject),
    Case("subject_not_informed", Reason.SUBJECT_NOT_INFORMED, _not_informed),
    Case("sender_not_participant", Reason.SENDER_NOT_PARTICIPANT, _sender_not_participant),
    Case("recipient_not_participant", Reason.RECIPIENT_NOT_PARTICIPANT, _recipient_not_participant),
    Case(
        "type_not_allowed",
        Reason.TYPE_NOT_ALLOWED,
        lambda gw: _plain(gw, to=("cjg",), message_type=MessageType.SIGNAL),
    ),
    Case("recipient_key_invalid", Reason.RECIPIENT_KEY_INVALID, _wrong_recipient_key),
]


async def _const(value: bytes) -> bytes:
    return value


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, id=c.name, marks=[pytest.mark.transient] if c.reason.transient else [])
        for c in CASES
    ],
)
async def test_refusal_reason(gateway: Gw, case: Case) -> None:
    envelope = await case.build(gateway)
    client = await gateway.client(case.sender)
    leaves_before = len(await gateway.store.audit_leaves())
    with pytest.raises(RefusedError) as refused:
        await client.submit(envelope)
    assert refused.value.reason is case.reason
    assert refused.value.status == case.reason.status
    assert refused.value.transient is case.reason.transient
    # Audited: one more leaf, a refusal with the reason.
    assert len(await gateway.store.audit_leaves()) == leaves_before + 1
    assert (await gateway.store.queue_stats()) == []


async def test_rate_limited_with_retry_after(deployment: Deployment, tmp_path: Path) -> None:
    from tests.gateway.conftest import start_gateway

    async for gw in start_gateway(deployment, tmp_path, rate_per_s=0.5, rate_burst=1):
        token = gw.issue_token()
        await _register(gw, token)
        police = await gw.client("politie-ijmond")
        await police.submit(gw.seal(token))
        with pytest.raises(RefusedError) as refused:
            await police.submit(gw.seal(token))
        assert refused.value.reason is Reason.RATE_LIMITED
        assert refused.value.transient
        assert refused.value.retry_after == 2.0


async def test_envelope_too_large(deployment: Deployment, tmp_path: Path) -> None:
    from tests.gateway.conftest import start_gateway

    async for gw in start_gateway(deployment, tmp_path, max_envelope_bytes=4096):
        police = await gw.client("politie-ijmond")
        with pytest.raises(RefusedError) as refused:
            await police.submit(b"\0" * 5000)
        assert refused.value.reason is Reason.ENVELOPE_TOO_LARGE
        assert refused.value.status == 413


@pytest.mark.transient
async def test_directory_expired_refuses_but_keeps_delivering(gateway: Gw) -> None:
    token = gateway.issue_token()
    await _register(gateway, token)
    police = await gateway.client("politie-ijmond")
    accepted = await police.submit(gateway.seal(token))
    gateway.clock.advance(2 * DAY)  # past the directory timestamp's one-day expiry
    with pytest.raises(RefusedError) as refused:
        await police.submit(gateway.seal(token, created_at=gateway.clock.now()))
    assert refused.value.reason is Reason.DIRECTORY_EXPIRED
    assert refused.value.transient
    halt = await gateway.client("halt")
    assert [d.message_id for d in (await halt.inbox()).deliveries] == [accepted.message_id]


def _foreign_client_context(folder: Path, subject: PartnerSubject, anchor: Path) -> ssl.SSLContext:
    import time

    ca = create_ca("Other CA", int(time.time()))
    key = TlsKeyPair.generate()
    folder.mkdir(parents=True, exist_ok=True)
    write_certificates_pem(
        folder / "c.crt", issue_partner_certificate(ca, key, subject, int(time.time()))
    )
    write_tls_key(folder / "c.key", key)
    return client_context(TlsFiles(folder / "c.crt", folder / "c.key", (anchor,)))


async def test_handshake_fails_without_client_certificate(gateway: Gw) -> None:
    anchor = gateway.deployment.root / "ca" / "ca.crt"
    ctx = ssl.create_default_context(cafile=str(anchor))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(gateway.url + "/v1/inbox", ssl=ctx) as response:
                await response.read()


async def test_handshake_fails_with_certificate_of_another_ca(gateway: Gw, tmp_path: Path) -> None:
    from adapters.client import GatewayClient

    anchor = gateway.deployment.root / "ca" / "ca.crt"
    subject = PartnerSubject("politie-ijmond", "00000099000000005000", "Politie IJmond")
    ctx = _foreign_client_context(tmp_path / "other", subject, anchor)
    async with GatewayClient(gateway.url, ctx, attempts=1) as client:
        with pytest.raises(GatewayUnreachableError):
            await client.inbox()


async def test_revocation_racing_submissions_never_delivers_after_commit(gateway: Gw) -> None:
    gw = gateway
    police = await gw.client("politie-ijmond")
    velsen = await gw.client("gemeente-velsen")
    halt = await gw.client("halt")
    for _ in range(10):
        token = gw.issue_token()
        await velsen.register_token(token.body)
        # Some leased before the race: they must be purged too.
        await police.submit(gw.seal(token))
        leased = (await halt.inbox()).deliveries
        assert len(leased) == 1
        envelopes = [gw.seal(token) for _ in range(8)]
        revocation = encode_signed_object(
            revoke(
                _token(token),
                key=gw.deployment.token_key("gemeente-velsen"),
                now=gw.clock.now(),
                reason="Beëindigd.",
            )
        )

        async def submit(envelope: bytes) -> str | None:
            try:
                return (await police.submit(envelope)).message_id
            except RefusedError as exc:
                # The only refusal a racing submission may get is the revocation itself.
                if exc.reason is not Reason.TOKEN_REVOKED:
                    raise
                return None

        results = await asyncio.gather(
            *(submit(e) for e in envelopes[:4]),
            velsen.revoke_token(token.token_id, revocation),
            *(submit(e) for e in envelopes[4:]),
        )
        # After the revocation committed nothing of this token is delivered, leased or not.
        gw.clock.advance(gw.built.config.limits.lease_s + 1)
        assert (await halt.inbox()).deliveries == []
        accepted = [r for r in results if isinstance(r, str)]
        for message_id in [*accepted, leased[0].message_id]:
            status = await police.message_status(message_id)
            assert [r["state"] for r in status["recipients"]] == ["purged"]


# -- which refusals record the header's subjects ---------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """A refusal after the outer signature verified, and whether its audit entry names the
    header's subjects: only under a token registered with the header's hash, whose retention
    deadline deletes the entry (``Store.apply_retention``); nothing would delete the others."""

    name: str
    reason: Reason
    build: Callable[[Gw], Awaitable[bytes]]
    with_subjects: bool


RECORDED = [
    # No registered token: the subjects would stay for good.
    Recorded("no_token", Reason.NO_TOKEN, lambda gw: _const(gw.seal(None)), False),
    Recorded("token_not_registered", Reason.TOKEN_NOT_REGISTERED, _unregistered, False),
    Recorded(
        "token_hash_mismatch",
        Reason.TOKEN_HASH_MISMATCH,
        lambda gw: _plain(gw, token_hash_="11" * 32),
        False,
    ),
    # Before the token is looked up at all.
    Recorded(
        "created_in_future",
        Reason.CREATED_IN_FUTURE,
        lambda gw: _plain(gw, created_at=gw.clock.now() + 3600),
        False,
    ),
    # Under a registered token: recorded, and deleted at that token's retention deadline.
    Recorded("token_revoked", Reason.TOKEN_REVOKED, _revoked, True),
    Recorded("subject_not_in_token", Reason.SUBJECT_NOT_IN_TOKEN, _stranger_subject, True),
    Recorded(
        "recipient_not_participant",
        Reason.RECIPIENT_NOT_PARTICIPANT,
        _recipient_not_participant,
        True,
    ),
]


async def _entries(gw: Gw) -> list[tuple[int, AuditEntry | None]]:
    return [
        (index, decode_entry(entry) if entry is not None else None)
        for index, _leaf, entry, _salt in await gw.store.audit_leaves()
    ]


@pytest.mark.parametrize("case", RECORDED, ids=[c.name for c in RECORDED])
async def test_a_refusal_records_subjects_only_under_a_registered_token(
    gateway: Gw, case: Recorded
) -> None:
    gw = gateway
    envelope = await case.build(gw)
    header = decode_envelope(envelope).header
    client = await gw.client("politie-ijmond")
    with pytest.raises(RefusedError) as refused:
        await client.submit(envelope)
    assert refused.value.reason is case.reason
    entry = (await _entries(gw))[-1][1]
    assert entry is not None
    assert (entry.decision, entry.reason) == (AuditDecision.REFUSED, case.reason.value)
    assert entry.subjects == (tuple(header.subjects) if case.with_subjects else ())
    # The rest of the verified header's metadata is kept either way.
    assert (entry.sender, entry.recipients, entry.message_type, entry.token_id) == (
        header.sender,
        tuple(r.partner for r in header.recipients),
        header.message_type,
        header.token_id,
    )
    assert entry.header_hash is not None
    assert entry.trace_id is not None
    assert entry.tls_identity is None


async def test_no_pseudonym_of_a_refusal_outlives_the_retention_deadline(gateway: Gw) -> None:
    gw = gateway
    registered = gw.issue_token()
    await _register(gw, registered)
    unregistered = gw.issue_token()
    police = await gw.client("politie-ijmond")
    stranger = new_pseudonym()
    for envelope in (
        gw.seal(registered, subjects=tuple(sorted((*registered.subjects, stranger)))),
        gw.seal(unregistered),
        gw.seal(None, subjects=(stranger,)),
    ):
        with pytest.raises(RefusedError):
            await police.submit(envelope)
    before = await _entries(gw)
    refusals = [(i, e) for i, e in before if e is not None and e.decision is AuditDecision.REFUSED]
    assert [(e.reason, e.token_id, e.subjects) for _i, e in refusals] == [
        (
            Reason.SUBJECT_NOT_IN_TOKEN.value,
            registered.token_id,
            tuple(sorted((*registered.subjects, stranger))),
        ),
        (Reason.TOKEN_NOT_REGISTERED.value, unregistered.token_id, ()),
        (Reason.NO_TOKEN.value, "0" * 32, ()),
    ]
    # A subject-access request finds no refusal that names no subject.
    report = await build_report(
        gw.store,
        gw.directory,
        [*unregistered.subjects],
        origin=gw.built.config.gateway.origin,
        now=gw.clock.now(),
    )
    assert report.rows == ()

    gw.clock.advance(366 * DAY)
    [retained] = await RetentionSweeper(gw.store, gw.clock, gw.metrics).sweep()
    assert retained.token_id == registered.token_id
    after = dict(await _entries(gw))
    # The refusal under the registered token went with it; the others stay, naming no one.
    assert after[refusals[0][0]] is None
    assert after[refusals[1][0]] is not None
    assert after[refusals[2][0]] is not None
    pseudonyms = {*registered.subjects, *unregistered.subjects, stranger}
    assert not any(e is not None and pseudonyms & set(e.subjects) for e in after.values())


async def test_metrics_count_and_carry_no_identifiers(gateway: Gw) -> None:
    gw = gateway
    token = gw.issue_token()
    await _register(gw, token)
    police = await gw.client("politie-ijmond")
    await police.submit(gw.seal(token))
    with pytest.raises(RefusedError):
        await police.submit(gw.seal(gw.issue_token()))
    await gw.built.runtime.relay.refresh_metrics()
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.operator_url + "/metrics") as response:
            text = await response.text()
        async with session.get(gw.operator_url + "/readyz") as response:
            assert response.status == 200
        async with session.get(gw.operator_url + "/healthz") as response:
            assert response.status == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert (
        samples[
            (
                "ketenpost_accepted_total",
                (("recipient", "halt"), ("sender", "politie-ijmond"), ("type", "signal")),
            )
        ]
        == 1
    )
    assert (
        samples[
            (
                "ketenpost_refused_total",
                (("reason", "token_not_registered"), ("sender", "politie-ijmond")),
            )
        ]
        == 1
    )
    assert samples[("ketenpost_queue_depth", (("recipient", "halt"),))] == 1
    identifiers = {token.token_id, *token.subjects}
    for (_name, labels), _value in samples.items():
        for _label, value in labels:
            assert value not in identifiers
            assert len(value) < 32 or not all(ch in "0123456789abcdef" for ch in value)


async def test_audit_proofs_verify_and_audit_verify_detects_tampering(gateway: Gw) -> None:
    gw = gateway
    token = gw.issue_token()
    await _register(gw, token)
    police = await gw.client("politie-ijmond")
    await police.submit(gw.seal(token))
    old_note = await police.checkpoint()
    origin = gw.built.config.gateway.origin
    key = gw.directory.gateway.keys[0].public
    old = verify_checkpoint(old_note, origin, origin, key)
    for _ in range(3):
        await police.submit(gw.seal(token))
    new = verify_checkpoint(await police.checkpoint(), origin, origin, key)
    proof = await police.consistency_proof(old.size, new.size)
    verify_consistency(
        ConsistencyProof(
            old_size=old.size,
            new_size=new.size,
            hashes=tuple(base64.b64decode(h) for h in proof["hashes"]),
        ),
        old.root_hash,
        new.root_hash,
    )
    inclusion = await police.inclusion_proof(1, new.size)
    verify_inclusion(
        base64.b64decode(inclusion["leaf_hash"]),
        InclusionProof(
            leaf_index=1,
            tree_size=new.size,
            hashes=tuple(base64.b64decode(h) for h in inclusion["hashes"]),
        ),
        new.root_hash,
    )
    leaves = await gw.store.audit_leaves()
    checkpoints = await gw.store.checkpoints()
    verify_log(leaves, checkpoints, origin=origin, public_key=key)
    # A modified entry is detected...
    index, leaf, entry, salt = leaves[1]
    assert entry is not None
    tampered = [*leaves]
    tampered[1] = (index, leaf, entry[:-1] + bytes([entry[-1] ^ 1]), salt)
    with pytest.raises(AuditVerifyError, match="leaf 1"):
        verify_log(tampered, checkpoints, origin=origin, public_key=key)
    # ...and so is a modified leaf (its checkpoint's root no longer matches).
    tampered = [*leaves]
    tampered[1] = (index, bytes(32), None, None)
    with pytest.raises(AuditVerifyError, match="root differs"):
        verify_log(tampered, checkpoints, origin=origin, public_key=key)


async def test_cli_audit_verify_detects_modified_leaf(gateway: Gw) -> None:
    import argparse

    from gateway.cli_serve import run_audit_verify

    token = gateway.issue_token()
    await _register(gateway, token)
    police = await gateway.client("politie-ijmond")
    await police.submit(gateway.seal(token))
    args = argparse.Namespace(
        config=gateway.deployment.root / "gateway.toml", store=f"sqlite://{gateway.db}"
    )
    assert await asyncio.to_thread(run_audit_verify, args) == 0
    with sqlite3.connect(gateway.db) as conn:
        conn.execute("UPDATE audit_leaves SET entry = CAST(X'00' || entry AS BLOB) WHERE idx = 0")
    assert await asyncio.to_thread(run_audit_verify, args) == 1
