"""Every reason code the relay can produce: one named case each, through real HTTPS with mTLS.

Rules kept here:

* Each case sends one real request to a real gateway (``conftest.start_gateway``) and checks the
  answer as a partner sees it: the status, ``application/problem+json`` with the reason's
  ``type`` URI, meaning, ``reason`` and ``transient`` members **as sent on the wire**, and the
  ``API-Version`` header. Cases of transient reasons carry the ``transient`` mark.
* Refusals of envelopes, registrations and revocations are audited: each such case also checks
  that exactly one entry was appended, a refusal with the case's reason.
* ``CASES`` here, ``test_relay_decision.CASES``, the tests named in ``TESTED_ELSEWHERE`` and in
  ``SEPARATE``, and the documented ``EXCLUDED`` reasons together cover ``Reason`` exactly
  (``test_every_reason_is_tested_or_excluded``): a new reason code without a test fails it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import msgspec
import pytest

import tests.gateway.test_api_roundtrip as roundtrip
import tests.gateway.test_relay_decision as decision
from gateway.protocol import labels
from gateway.protocol.auditentry import AuditDecision, AuditEntry, decode_entry
from gateway.protocol.envelope import CONTENT_TYPE as ENVELOPE_CONTENT_TYPE
from gateway.protocol.envelope import Envelope, Header, encode_envelope, header_hash
from gateway.protocol.policy import default_policy, encode_policy
from gateway.protocol.reasons import PROBLEM_CONTENT_TYPE, Reason, RejectionReason
from gateway.protocol.receipts import DeliveryReceipt, sign_delivery_receipt
from gateway.protocol.signed import SignedObject, sign_object
from gateway.protocol.token import ApproachToken, encode_signed, revoke, token_hash
from gateway.signer import encode_signed_object
from keys import KeyUse
from keys.ca import PartnerSubject, issue_partner_certificate, load_ca, write_certificates_pem
from keys.directory import DirectoryContents
from keys.keyfile import write_tls_key
from keys.keypair import TlsKeyPair
from keys.tlsidentity import TlsFiles, client_context
from tests.gateway.conftest import DAY, Deployment, Gw, Token, start_gateway

TOKEN_CONTENT_TYPE: Final = "application/vnd.ketenpost.token+msgpack"
REVOCATION_CONTENT_TYPE: Final = "application/vnd.ketenpost.revocation+msgpack"
POLICE: Final = "politie-ijmond"
VELSEN: Final = "gemeente-velsen"
# Another coordinating municipality of the development deployment.
HEEMSKERK: Final = "gemeente-heemskerk"


# -- requests and answers ------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One HTTPS request as ``partner`` (or with ``ssl``, a context of the test's own)."""

    partner: str
    method: str
    path: str
    body: bytes | None = None
    content_type: str | None = None
    json: Any = None
    ssl: ssl.SSLContext | None = None


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    headers: Mapping[str, str]
    document: Any


async def send(gw: Gw, call: Call) -> Answer:
    """Send ``call`` over real mTLS; no retries, the problem document as it arrived."""
    ctx = call.ssl or client_context(gw.deployment.tls_files(call.partner))
    headers = {"Content-Type": call.content_type} if call.content_type else {}
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
        session.request(
            call.method, gw.url + call.path, data=call.body, json=call.json, headers=headers
        ) as response,
    ):
        body = await response.read()
        document = json.loads(body) if response.content_type.endswith("json") else body
        return Answer(response.status, response.content_type, dict(response.headers), document)


def assert_refused(answer: Answer, reason: Reason) -> None:
    """``answer`` is the problem document of ``reason``, exactly as ``reasons.problem`` says."""
    assert answer.status == reason.status, answer.document
    assert answer.content_type == PROBLEM_CONTENT_TYPE
    assert answer.headers["API-Version"] == "1"
    document = dict(answer.document)
    assert isinstance(document.pop("detail"), str)
    assert document == {
        "type": f"https://ketenpost.nl/problems/{reason.value}",
        "title": reason.meaning,
        "status": reason.status,
        "reason": reason.value,
        "transient": reason.transient,
    }


async def audit_entries(gw: Gw) -> list[AuditEntry]:
    return [
        decode_entry(entry) for _i, _leaf, entry, _salt in await gw.store.audit_leaves() if entry
    ]


@contextlib.asynccontextmanager
async def running(deployment: Deployment, tmp_path: Path, **limits: Any) -> AsyncIterator[Gw]:
    """``start_gateway`` as a context manager: stopped even when the test fails."""
    gateways = start_gateway(deployment, tmp_path, **limits)
    assert isinstance(gateways, AsyncGenerator)
    try:
        yield await anext(gateways)
    finally:
        await gateways.aclose()


# -- building blocks ------------------------------------------------------------------------


async def registered(gw: Gw, token: Token | None = None) -> Token:
    token = token or gw.issue_token()
    velsen = await gw.client(VELSEN)
    await velsen.register_token(token.body)
    return token


def checked(token: Token) -> ApproachToken:
    return msgspec.msgpack.decode(token.signed.payload, type=ApproachToken)


def resigned(gw: Gw, token: Token, **changes: Any) -> Token:
    """``token`` with ``changes`` to its checked part, signed again by its coordinator."""
    changed = msgspec.structs.replace(checked(token), **changes)
    signed = sign_object(labels.TOKEN, changed, gw.deployment.token_key(changed.coordinator))
    return Token(signed, token.opening, changed.token_id, token_hash(signed), token.subjects)


def flipped(signed: SignedObject) -> bytes:
    """The encoded ``signed`` with one bit of its signature flipped."""
    return encode_signed(
        msgspec.structs.replace(signed, sig=bytes([signed.sig[0] ^ 1]) + signed.sig[1:])
    )


def reheadered(envelope: bytes, **changes: Any) -> bytes:
    """``envelope`` with ``changes`` to its header (the outer signature no longer verifies, but
    the checks these cases exercise come before it)."""
    outer = msgspec.msgpack.decode(envelope, type=Envelope)
    header = msgspec.structs.replace(msgspec.msgpack.decode(outer.header, type=Header), **changes)
    return encode_envelope(msgspec.structs.replace(outer, header=msgspec.msgpack.encode(header)))


def with_partner(contents: DirectoryContents, partner_id: str, **changes: Any) -> DirectoryContents:
    partners = tuple(
        msgspec.structs.replace(p, **changes) if p.id == partner_id else p
        for p in contents.partners
    )
    return msgspec.structs.replace(contents, partners=partners)


def with_key(gw: Gw, partner_id: str, use: KeyUse, **times: int | None) -> DirectoryContents:
    """The deployment's directory with new times on ``partner_id``'s ``use`` key."""
    contents = gw.directory.contents
    keys = next(p.keys for p in contents.partners if p.id == partner_id)
    return with_partner(
        contents,
        partner_id,
        keys=tuple(msgspec.structs.replace(k, **times) if k.use is use else k for k in keys),
    )


def submission(envelope: bytes, partner: str = POLICE) -> Call:
    return Call(partner, "POST", "/v1/messages", envelope, ENVELOPE_CONTENT_TYPE)


def registration(body: bytes, partner: str = VELSEN) -> Call:
    return Call(partner, "POST", "/v1/approaches", body, TOKEN_CONTENT_TYPE)


def revocation(gw: Gw, token: Token, *, by: str, key_owner: str | None = None) -> SignedObject:
    return revoke(
        checked(token),
        key=gw.deployment.token_key(key_owner or by),
        now=gw.clock.now(),
        reason="Aanpak beëindigd.",
    )


def foreign_certificate(gw: Gw, folder: Path, subject: PartnerSubject) -> ssl.SSLContext:
    """A client context whose certificate the covenant CA itself issued for a fresh key."""
    ca_dir = gw.deployment.root / "ca"
    ca = load_ca(ca_dir / "ca.crt", ca_dir / "ca.key")
    key = TlsKeyPair.generate()
    folder.mkdir(parents=True)
    # OpenSSL checks validity against the wall clock, not the gateway's manual clock.
    certificate = issue_partner_certificate(ca, key, subject, int(time.time()))
    write_certificates_pem(folder / "tls.crt", certificate)
    write_tls_key(folder / "tls.key", key)
    return client_context(TlsFiles(folder / "tls.crt", folder / "tls.key", (ca_dir / "ca.crt",)))


async def delivered_to_halt(gw: Gw) -> tuple[str, bytes]:
    """A message from the police leased by halt: its id and header hash."""
    token = await registered(gw)
    police = await gw.client(POLICE)
    accepted = await police.submit(gw.seal(token))
    halt = await gw.client("halt")
    (delivery,) = (await halt.inbox()).deliveries
    assert delivery.message_id == accepted.message_id
    outer = msgspec.msgpack.decode(delivery.envelope, type=Envelope)
    return accepted.message_id, header_hash(outer.header)


def receipt(gw: Gw, signer: str, message_id: str, header_hash: bytes) -> bytes:
    return encode_signed_object(
        sign_delivery_receipt(
            DeliveryReceipt(
                message_id=message_id,
                header_hash=header_hash.hex(),
                recipient=signer,
                received_at=gw.clock.now(),
                plaintext_hash="00" * 32,
            ),
            gw.deployment.sign_key(signer),
        )
    )


# -- the cases ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    reason: Reason
    build: Callable[[Gw, Path], Awaitable[Call]]
    # Envelope, registration and revocation refusals are audited; receipt handling and
    # read-only lookups are not (they change nothing).
    audited: bool = True
    limits: Mapping[str, Any] = field(default_factory=dict)


async def _unknown_oin(gw: Gw, tmp: Path) -> Call:
    token = await registered(gw)
    stranger = PartnerSubject("gemeente-zandvoort", "00000099000000050000", "Gemeente Zandvoort")
    return Call(
        POLICE,
        "POST",
        "/v1/messages",
        gw.seal(token),
        ENVELOPE_CONTENT_TYPE,
        ssl=foreign_certificate(gw, tmp / "zandvoort", stranger),
    )


async def _unlisted_spki(gw: Gw, tmp: Path) -> Call:
    token = await registered(gw)
    police = next(p for p in gw.directory.partners() if p.id == POLICE)
    subject = PartnerSubject(POLICE, police.oin, police.name)
    return Call(
        POLICE,
        "POST",
        "/v1/messages",
        gw.seal(token),
        ENVELOPE_CONTENT_TYPE,
        ssl=foreign_certificate(gw, tmp / "police-new-key", subject),
    )


async def _header_changed(gw: Gw, **changes: Any) -> Call:
    return submission(reheadered(gw.seal(await registered(gw)), **changes))


async def _too_many_recipients(gw: Gw, _tmp: Path) -> Call:
    token = await registered(gw)
    return submission(gw.seal(token, to=("cjg", "halt", "om")))


async def _sender_key(gw: Gw, **times: int | None) -> Call:
    token = await registered(gw)
    gw.use_directory(with_key(gw, POLICE, KeyUse.SIGN, **times))
    return submission(gw.seal(token))


async def _duplicate_id(gw: Gw, _tmp: Path) -> Call:
    token = await registered(gw)
    police = await gw.client(POLICE)
    await police.submit(gw.seal(token, message_id="ef" * 32))
    return submission(gw.seal(token, message_id="ef" * 32))


async def _after_directory_change(gw: Gw, contents: DirectoryContents) -> Call:
    token = await registered(gw)
    gw.use_directory(contents)
    return submission(gw.seal(token))


async def _token_expired(gw: Gw, _tmp: Path) -> Call:
    token = await registered(gw, gw.issue_token(valid_days=1))
    gw.use_directory(gw.directory.contents)  # one that does not expire when the clock moves
    gw.clock.advance(2 * DAY)
    return submission(gw.seal(token))


async def _policy_mismatch(gw: Gw, _tmp: Path) -> Call:
    # The covenant text changed: tokens decided under the old one need a superseding token.
    amended = msgspec.structs.replace(default_policy(), version=2)
    contents = msgspec.structs.replace(gw.directory.contents, policy=encode_policy(amended))
    return await _after_directory_change(gw, contents)


async def _policy_invalid(gw: Gw, _tmp: Path) -> Call:
    # A directory whose policy bytes do not decode, and a token naming exactly those bytes.
    broken = b'{"name": "not a policy"}'
    contents = msgspec.structs.replace(gw.directory.contents, policy=broken)
    directory = gw.use_directory(contents)
    token = await registered(gw, resigned(gw, gw.issue_token(), policy_hash=directory.policy_hash))
    return submission(gw.seal(token))


async def _recipient_left(gw: Gw, _tmp: Path) -> Call:
    contents = gw.directory.contents
    without_halt = msgspec.structs.replace(
        contents, partners=tuple(p for p in contents.partners if p.id != "halt")
    )
    return await _after_directory_change(gw, without_halt)


async def _token_key_not_active(gw: Gw, _tmp: Path) -> Call:
    # A token signed with a successor key that the gateway's directory lists as not yet active.
    gw.use_directory(with_key(gw, VELSEN, KeyUse.TOKEN, active_from=_now(gw) + DAY))
    return registration(gw.issue_token().body)


async def _not_yet_valid(gw: Gw, _tmp: Path) -> Call:
    token = resigned(gw, gw.issue_token(), valid_from=gw.clock.now() + DAY)
    return registration(token.body)


async def _superseded_twice(gw: Gw, _tmp: Path) -> Call:
    old = await registered(gw)
    await registered(gw, gw.issue_token(supersedes=old.token_id))
    return registration(gw.issue_token(supersedes=old.token_id).body)


async def _revoked_by_another(gw: Gw, _tmp: Path) -> Call:
    token = await registered(gw)
    body = encode_signed_object(revocation(gw, token, by=HEEMSKERK))
    return Call(
        HEEMSKERK,
        "POST",
        f"/v1/approaches/{token.token_id}/revocation",
        body,
        REVOCATION_CONTENT_TYPE,
    )


async def _forged_revocation(gw: Gw, _tmp: Path) -> Call:
    token = await registered(gw)
    body = flipped(revocation(gw, token, by=VELSEN))
    return Call(
        VELSEN, "POST", f"/v1/approaches/{token.token_id}/revocation", body, REVOCATION_CONTENT_TYPE
    )


async def _receipt_by_non_recipient(gw: Gw, _tmp: Path) -> Call:
    message_id, header_hash = await delivered_to_halt(gw)
    signed = receipt(gw, "cjg", message_id, header_hash)
    return Call("cjg", "POST", "/v1/receipts", json={"receipts": [_b64(signed)]})


async def _receipt_for_other_header(gw: Gw, _tmp: Path) -> Call:
    message_id, _header_hash = await delivered_to_halt(gw)
    forged = receipt(gw, "halt", message_id, b"\x11" * 32)
    return Call("halt", "POST", "/v1/receipts", json={"receipts": [_b64(forged)]})


async def _status_of_anothers_message(gw: Gw, _tmp: Path) -> Call:
    message_id, _header_hash = await delivered_to_halt(gw)
    # Halt may not learn even that the id exists: only the sender sees a message's state.
    return Call("halt", "GET", f"/v1/messages/{message_id}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def _const(call: Call) -> Call:
    return call


def _now(gw: Gw) -> int:
    return gw.clock.now()


CASES: Final = [
    # -- POST /v1/messages, in DESIGN.md's order -----------------------------------------
    Case("unknown_sender_oin_not_in_directory", Reason.UNKNOWN_SENDER, _unknown_oin),
    Case("unknown_sender_spki_not_in_directory", Reason.UNKNOWN_SENDER, _unlisted_spki),
    Case(
        "too_many_recipients",
        Reason.TOO_MANY_RECIPIENTS,
        _too_many_recipients,
        limits={"max_recipients": 2},
    ),
    Case("unknown_version", Reason.UNKNOWN_VERSION, lambda gw, _t: _header_changed(gw, version=2)),
    Case(
        "unknown_suite",
        Reason.UNKNOWN_SUITE,
        lambda gw, _t: _header_changed(gw, suite="aes256gcm+rsa"),
    ),
    Case(
        "key_not_yet_active",
        Reason.KEY_NOT_YET_ACTIVE,
        lambda gw, _t: _sender_key(gw, active_from=_now(gw) + 3600),
    ),
    Case(
        "key_retired",
        Reason.KEY_RETIRED,
        lambda gw, _t: _sender_key(gw, retire_at=_now(gw) - 1),
    ),
    Case(
        "key_revoked",
        Reason.KEY_REVOKED,
        lambda gw, _t: _sender_key(gw, revoked_at=_now(gw) - 1),
    ),
    Case(
        "key_compromised",
        Reason.KEY_COMPROMISED,
        lambda gw, _t: _sender_key(gw, revoked_at=_now(gw) - 1, compromised_since=_now(gw) - DAY),
    ),
    Case(
        "key_compromised_before_its_revocation_takes_effect",
        Reason.KEY_COMPROMISED,
        lambda gw, _t: _sender_key(gw, revoked_at=_now(gw) + DAY, compromised_since=_now(gw) - 60),
    ),
    Case("duplicate_id", Reason.DUPLICATE_ID, _duplicate_id),
    Case(
        "token_issuer_not_coordinator",
        Reason.TOKEN_ISSUER_NOT_COORDINATOR,
        lambda gw, _t: _after_directory_change(
            gw, with_partner(gw.directory.contents, VELSEN, coordinator=False)
        ),
    ),
    Case(
        "token_issuer_key_compromised",
        Reason.TOKEN_ISSUER_KEY_COMPROMISED,
        lambda gw, _t: _after_directory_change(
            gw, with_key(gw, VELSEN, KeyUse.TOKEN, revoked_at=_now(gw) - 1)
        ),
    ),
    Case("token_expired", Reason.TOKEN_EXPIRED, _token_expired),
    Case("policy_mismatch", Reason.POLICY_MISMATCH, _policy_mismatch),
    Case("policy_invalid", Reason.POLICY_INVALID, _policy_invalid),
    Case("unknown_recipient", Reason.UNKNOWN_RECIPIENT, _recipient_left),
    # -- POST /v1/approaches -------------------------------------------------------------
    Case(
        "token_malformed",
        Reason.TOKEN_MALFORMED,
        lambda gw, _t: _const(registration(b"\x93not a token")),
    ),
    Case(
        "token_bad_signature",
        Reason.TOKEN_BAD_SIGNATURE,
        lambda gw, _t: _const(registration(flipped(gw.issue_token().signed))),
    ),
    Case(
        "registration_by_a_non_coordinator",
        Reason.TOKEN_ISSUER_NOT_COORDINATING_MUNICIPALITY,
        lambda gw, _t: _const(registration(gw.issue_token().body, partner=POLICE)),
    ),
    Case("token_issuer_key_invalid", Reason.TOKEN_ISSUER_KEY_INVALID, _token_key_not_active),
    Case("token_not_yet_valid", Reason.TOKEN_NOT_YET_VALID, _not_yet_valid),
    Case("token_conflict_superseded_twice", Reason.TOKEN_CONFLICT, _superseded_twice),
    # -- POST /v1/approaches/{token_id}/revocation ---------------------------------------
    Case("revocation_not_issuer", Reason.REVOCATION_NOT_ISSUER, _revoked_by_another),
    Case("bad_revocation_signature", Reason.BAD_REVOCATION_SIGNATURE, _forged_revocation),
    # -- POST /v1/receipts and GET /v1/messages/{id} -------------------------------------
    Case("not_recipient", Reason.NOT_RECIPIENT, _receipt_by_non_recipient, audited=False),
    Case("receipt_mismatch", Reason.RECEIPT_MISMATCH, _receipt_for_other_header, audited=False),
    Case(
        "unknown_message_of_another_sender",
        Reason.UNKNOWN_MESSAGE,
        _status_of_anothers_message,
        audited=False,
    ),
]


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, id=c.name, marks=[pytest.mark.transient] if c.reason.transient else [])
        for c in CASES
    ],
)
async def test_refusal(deployment: Deployment, tmp_path: Path, case: Case) -> None:
    async with running(deployment, tmp_path, **case.limits) as gw:
        call = await case.build(gw, tmp_path)
        before = await audit_entries(gw)
        assert_refused(await send(gw, call), case.reason)
        after = await audit_entries(gw)
        if case.audited:
            assert len(after) == len(before) + 1
            assert (after[-1].decision, after[-1].reason) == (
                AuditDecision.REFUSED,
                case.reason.value,
            )
        else:
            assert len(after) == len(before)


# -- the store and the audit log unavailable -----------------------------------------------


@pytest.mark.transient
async def test_store_unavailable_refuses_then_accepts_the_same_bytes(gateway: Gw) -> None:
    gw = gateway
    envelope = gw.seal(await registered(gw))
    before = await audit_entries(gw)
    await gw.store.close()
    try:
        assert_refused(await send(gw, submission(envelope)), Reason.STORE_UNAVAILABLE)
        async with (
            aiohttp.ClientSession() as session,
            session.get(gw.operator_url + "/readyz") as ready,
        ):
            assert ready.status == 503
    finally:
        await gw.store.open()
    # Nothing was recorded while the store was down, and the refusal was transient indeed.
    assert len(await audit_entries(gw)) == len(before)
    police = await gw.client(POLICE)
    assert (await police.submit(envelope)).first_time


@pytest.mark.transient
async def test_audit_unavailable_when_a_refusal_cannot_be_recorded(gateway: Gw) -> None:
    # The decision itself needs no store (the header names another sender), but its audit
    # entry does: nothing is answered that the log does not hold, so the final
    # ``sender_mismatch`` becomes the transient ``audit_unavailable``.
    gw = gateway
    envelope = gw.seal(await registered(gw))
    await gw.store.close()
    try:
        answer = await send(gw, submission(envelope, partner="cjg"))
    finally:
        await gw.store.open()
    assert_refused(answer, Reason.AUDIT_UNAVAILABLE)
    assert_refused(await send(gw, submission(envelope, partner="cjg")), Reason.SENDER_MISMATCH)


# -- approach refusals are audited ---------------------------------------------------------


async def test_registration_and_revocation_refusals_are_audited(gateway: Gw) -> None:
    gw = gateway
    token = await registered(gw)
    stranger = gw.issue_token()
    before = len(await audit_entries(gw))
    # Before the token's signature verified: nothing of the token is recorded.
    assert_refused(
        await send(gw, registration(flipped(stranger.signed))), Reason.TOKEN_BAD_SIGNATURE
    )
    # After it verified: the token id is, with the partner that tried.
    assert_refused(
        await send(gw, registration(stranger.body, partner=POLICE)),
        Reason.TOKEN_ISSUER_NOT_COORDINATING_MUNICIPALITY,
    )
    # A revocation of an unknown id records no id; one by another partner records the token's.
    unknown = "ab" * 16
    assert_refused(
        await send(
            gw,
            Call(
                VELSEN,
                "POST",
                f"/v1/approaches/{unknown}/revocation",
                encode_signed_object(revocation(gw, token, by=VELSEN)),
                REVOCATION_CONTENT_TYPE,
            ),
        ),
        Reason.TOKEN_NOT_REGISTERED,
    )
    by_heemskerk = encode_signed_object(revocation(gw, token, by=HEEMSKERK))
    path = f"/v1/approaches/{token.token_id}/revocation"
    assert_refused(
        await send(gw, Call(HEEMSKERK, "POST", path, by_heemskerk, REVOCATION_CONTENT_TYPE)),
        Reason.REVOCATION_NOT_ISSUER,
    )
    entries = (await audit_entries(gw))[before:]
    assert [(e.decision, e.reason, e.sender, e.token_id) for e in entries] == [
        (AuditDecision.REFUSED, "token_bad_signature", VELSEN, None),
        (
            AuditDecision.REFUSED,
            "token_issuer_not_coordinating_municipality",
            POLICE,
            stranger.token_id,
        ),
        (AuditDecision.REFUSED, "token_not_registered", VELSEN, None),
        (AuditDecision.REFUSED, "revocation_not_issuer", HEEMSKERK, token.token_id),
    ]
    # Metadata only: no subjects, recipients or policy of a token that was not registered.
    assert all(e.subjects == () and e.recipients == () for e in entries)


# -- every reason: tested, or excluded with the reason why ----------------------------------

# Reasons the relay never answers with, and why. A reason leaves this list when a path to it
# appears; then it needs a case.
EXCLUDED: Final[Mapping[Reason, str]] = {
    Reason.DIRECTORY_CHANGING: (
        "no code path produces it: a directory source swaps one verified version for the next "
        "atomically (TrustedDirectorySource.refresh replaces a reference), so the relay never "
        "sees a directory half-way; the code is reserved for replicas switching versions"
    ),
    Reason.TOKEN_PRIVATE_PART_MISMATCH: (
        "the gateway never receives a token's private part (it travels to the participants "
        "inside the approach-notice); adapters check it, the relay cannot"
    ),
    **{
        r.reason: (
            "a recipient's rejection reason: it travels inside a signed Rejection and the "
            "sender event, never as a refusal of the relay"
        )
        for r in RejectionReason
    },
}

# Reasons with a named test in the other modules, or a test of its own here.
TESTED_ELSEWHERE: Final[Mapping[Reason, Callable[..., Awaitable[None]]]] = {
    Reason.ENVELOPE_TOO_LARGE: decision.test_envelope_too_large,
    Reason.RATE_LIMITED: decision.test_rate_limited_with_retry_after,
    Reason.DIRECTORY_EXPIRED: decision.test_directory_expired_refuses_but_keeps_delivering,
    Reason.BAD_RECEIPT_SIGNATURE: roundtrip.test_receipt_with_bad_signature_is_refused,
    Reason.STORE_UNAVAILABLE: test_store_unavailable_refuses_then_accepts_the_same_bytes,
    Reason.AUDIT_UNAVAILABLE: test_audit_unavailable_when_a_refusal_cannot_be_recorded,
}


def self_revocation_tests() -> Mapping[Reason, Callable[..., Awaitable[None]]]:
    """The named tests of ``POST /v1/keys/revocations`` refusals (imported here, not at the
    top: that module builds on this one)."""
    from tests.gateway import test_self_revocation as statements

    return {
        Reason.KEY_REVOCATION_MALFORMED: statements.test_key_revocation_malformed,
        Reason.KEY_REVOCATION_UNKNOWN_KEY: statements.test_key_revocation_unknown_key,
        Reason.KEY_REVOCATION_SIGNER_INVALID: statements.test_key_revocation_signer_invalid,
    }


def test_every_reason_is_tested_or_excluded() -> None:
    tested = {c.reason for c in CASES} | {c.reason for c in decision.CASES} | set(TESTED_ELSEWHERE)
    tested |= set(self_revocation_tests())
    assert not tested & set(EXCLUDED), "a tested reason is listed as excluded"
    missing = set(Reason) - tested - set(EXCLUDED)
    assert not missing, f"reasons without a named test or a documented exclusion: {missing}"
