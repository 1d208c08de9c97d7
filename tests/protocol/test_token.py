"""Approach tokens: issue, verify (one named case per refusal), private part, revocation, use."""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
import pytest

from gateway.protocol import labels
from gateway.protocol.errors import TokenError
from gateway.protocol.policy import Policy, decode_policy, default_policy
from gateway.protocol.reasons import Reason
from gateway.protocol.signed import SignedObject, sign_object
from gateway.protocol.token import (
    ApproachToken,
    PrivatePartOpening,
    RolePurpose,
    TokenRevocation,
    TokenStatus,
    TokenSubject,
    allowed_types,
    check_private_part,
    check_use,
    decode_signed,
    encode_signed,
    issue,
    revoke,
    token_hash,
    verify_revocation,
    verify_token,
    verify_token_signature,
)
from gateway.protocol.types import NO_TOKEN_ID, ApproachKind, MessageType
from keys import Directory, Ed25519KeyPair, KeyUse, Role
from tests.protocol._builders_token import (
    DAY,
    DEFERRED,
    INFORMED,
    NOT_YET_INFORMED,
    STRANGER,
    T0,
    World,
    issue_token,
)

Issued = tuple[SignedObject, PrivatePartOpening]


@pytest.fixture(scope="module")
def world() -> World:
    return World.create()


def _decode(signed: SignedObject) -> ApproachToken:
    return msgspec.msgpack.decode(signed.payload, type=ApproachToken)


def _flip_payload_byte(signed: SignedObject) -> SignedObject:
    payload = bytearray(signed.payload)
    payload[len(payload) // 2] ^= 0x01
    return msgspec.structs.replace(signed, payload=bytes(payload))


def _resign_with_sign_key(world: World) -> Issued:
    # A correctly formed token whose issuer_kid is the coordinator's *sign* key: one key, one
    # use, so it must not count as the coordinator's token signature.
    signed, opening = issue_token(world)
    token = msgspec.structs.replace(_decode(signed), issuer_kid=world.sign["gemeente-velsen"].kid)
    return sign_object(labels.TOKEN, token, world.sign["gemeente-velsen"]), opening


def _other_salt(world: World, issued: Issued) -> PrivatePartOpening:
    del world
    return msgspec.structs.replace(issued[1], salt=bytes(32))


def _other_tokens_private_part(world: World, issued: Issued) -> PrivatePartOpening:
    del issued
    return issue_token(world)[1]


@dataclass(frozen=True)
class Case:
    id: str
    expected: Reason | None
    make: Callable[[World], Issued] = issue_token
    directory: Callable[[World], Directory] = World.directory
    now: int = T0 + 3600
    status: TokenStatus = field(default_factory=lambda: TokenStatus(registered_at=T0))
    subjects: tuple[str, ...] = (INFORMED,)
    tamper: Callable[[SignedObject], SignedObject] | None = None
    private: Callable[[World, Issued], PrivatePartOpening] | None = None


CASES = [
    Case("ok: informed subject", None),
    Case("ok: deferral running", None, subjects=(DEFERRED,), now=T0 + 10 * DAY),
    Case(
        "ok: private part opens the commitment",
        None,
        private=lambda world, issued: issued[1],
    ),
    Case(
        "ok: compromise after registration",
        None,
        directory=lambda w: w.directory(
            token_key_times={
                "gemeente-velsen": {"revoked_at": T0 + 2 * DAY, "compromised_since": T0 + DAY}
            }
        ),
        now=T0 + 3 * DAY,
    ),
    Case(
        "ok: token key retired after registration",
        None,
        directory=lambda w: w.directory(
            token_key_times={"gemeente-velsen": {"retire_at": T0 + DAY}}
        ),
        now=T0 + 3 * DAY,
    ),
    Case("expired", Reason.TOKEN_EXPIRED, now=T0 + 180 * DAY),
    Case(
        "not yet valid",
        Reason.TOKEN_NOT_YET_VALID,
        make=lambda w: issue_token(w, valid_from=T0 + DAY),
        now=T0 + 3600,
    ),
    Case(
        "issuer not the coordinating municipality",
        Reason.TOKEN_ISSUER_NOT_COORDINATING_MUNICIPALITY,
        make=lambda w: issue_token(w, key=w.token["gemeente-beverwijk"]),
    ),
    Case(
        "issuer signed with its sign key, not its token key",
        Reason.TOKEN_ISSUER_NOT_COORDINATING_MUNICIPALITY,
        make=_resign_with_sign_key,
    ),
    Case(
        "issuer not a coordinator",
        Reason.TOKEN_ISSUER_NOT_COORDINATOR,
        directory=lambda w: w.directory(
            partner_changes={"gemeente-velsen": {"coordinator": False}}
        ),
    ),
    Case(
        "issuer a coordinator but not a municipality",
        Reason.TOKEN_ISSUER_NOT_COORDINATOR,
        make=lambda w: issue_token(
            w,
            coordinator="politie-ijmond",
            participants=("politie-ijmond", "halt"),
        ),
        directory=lambda w: w.directory(
            partner_changes={"politie-ijmond": {"coordinator": True}},
            token_keys_for=("gemeente-velsen", "politie-ijmond"),
        ),
    ),
    Case(
        "issuer left the covenant",
        Reason.TOKEN_ISSUER_NOT_COORDINATOR,
        directory=lambda w: w.directory(partner_changes={"gemeente-velsen": {"left_at": T0}}),
    ),
    Case("forged: payload changed", Reason.TOKEN_BAD_SIGNATURE, tamper=_flip_payload_byte),
    Case(
        "forged: signed by a key not in the directory",
        Reason.TOKEN_BAD_SIGNATURE,
        directory=lambda w: w.directory(token_keys_for=()),
    ),
    Case("revoked", Reason.TOKEN_REVOKED, status=TokenStatus(registered_at=T0, revoked_at=T0)),
    Case(
        "superseded",
        Reason.TOKEN_SUPERSEDED,
        status=TokenStatus(registered_at=T0, superseded_by="e" * 32),
    ),
    Case("a subject not informed", Reason.SUBJECT_NOT_INFORMED, subjects=(NOT_YET_INFORMED,)),
    Case("deferral ended", Reason.SUBJECT_NOT_INFORMED, subjects=(DEFERRED,), now=T0 + 30 * DAY),
    Case(
        "one of several subjects not informed",
        Reason.SUBJECT_NOT_INFORMED,
        subjects=(INFORMED, NOT_YET_INFORMED),
    ),
    Case("ok: no subjects named (registration)", None, subjects=()),
    Case("subject not in token", Reason.SUBJECT_NOT_IN_TOKEN, subjects=(INFORMED, STRANGER)),
    Case(
        "private part with another salt",
        Reason.TOKEN_PRIVATE_PART_MISMATCH,
        private=_other_salt,
    ),
    Case(
        "private part of another token",
        Reason.TOKEN_PRIVATE_PART_MISMATCH,
        private=_other_tokens_private_part,
    ),
    Case(
        "compromised token key",
        Reason.TOKEN_ISSUER_KEY_COMPROMISED,
        directory=lambda w: w.directory(
            token_key_times={
                "gemeente-velsen": {"revoked_at": T0 + 2 * DAY, "compromised_since": T0 - DAY}
            }
        ),
        now=T0 + 3 * DAY,
    ),
    Case(
        "token key revoked, compromise time unknown",
        Reason.TOKEN_ISSUER_KEY_COMPROMISED,
        directory=lambda w: w.directory(
            token_key_times={"gemeente-velsen": {"revoked_at": T0 + 2 * DAY}}
        ),
        now=T0 + 3 * DAY,
    ),
    Case(
        "backdated issued_at: judged at the gateway's registration time",
        Reason.TOKEN_ISSUER_KEY_COMPROMISED,
        directory=lambda w: w.directory(
            token_key_times={
                "gemeente-velsen": {"revoked_at": T0 + 2 * DAY, "compromised_since": T0 + DAY}
            }
        ),
        status=TokenStatus(registered_at=T0 + DAY + 1),
        now=T0 + 3 * DAY,
    ),
    Case(
        "token key not active at registration",
        Reason.TOKEN_ISSUER_KEY_INVALID,
        directory=lambda w: w.directory(
            token_key_times={"gemeente-velsen": {"active_from": T0 + 1}}
        ),
    ),
    Case(
        "token key retired before registration",
        Reason.TOKEN_ISSUER_KEY_INVALID,
        directory=lambda w: w.directory(token_key_times={"gemeente-velsen": {"retire_at": T0}}),
    ),
    Case(
        "issued under another policy",
        Reason.POLICY_MISMATCH,
        directory=lambda w: w.directory(
            policy=msgspec.structs.replace(default_policy(), version=2)
        ),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_verify_token(world: World, case: Case) -> None:
    issued = case.make(world)
    signed = issued[0] if case.tamper is None else case.tamper(issued[0])
    private = None if case.private is None else case.private(world, issued)
    directory = case.directory(world)

    def run() -> ApproachToken:
        return verify_token(
            signed,
            directory,
            now=case.now,
            status=case.status,
            subjects=case.subjects,
            private=private,
        )

    if case.expected is None:
        assert run().token_id == _decode(issued[0]).token_id
    else:
        with pytest.raises(TokenError) as caught:
            run()
        assert caught.value.reason is case.expected


def test_only_the_signature_check_is_cached(world: World) -> None:
    signed, _ = issue_token(world)
    directory = world.directory()
    cache: dict[str, ApproachToken] = {}
    calls = 0

    def cached(obj: SignedObject, d: Directory) -> ApproachToken:
        nonlocal calls
        key = token_hash(obj)
        if key not in cache:
            calls += 1
            cache[key] = verify_token_signature(obj, d)
        return cache[key]

    verify_token(
        signed,
        directory,
        now=T0 + 1,
        status=TokenStatus(T0),
        subjects=(INFORMED,),
        verify_signature=cached,
    )
    # A revocation after the signature was cached still refuses: status is checked every time.
    with pytest.raises(TokenError) as caught:
        verify_token(
            signed,
            directory,
            now=T0 + 2,
            status=TokenStatus(T0, revoked_at=T0 + 2),
            subjects=(INFORMED,),
            verify_signature=cached,
        )
    assert caught.value.reason is Reason.TOKEN_REVOKED
    assert calls == 1


def test_token_hash_is_sha256_of_the_encoded_signed_object(world: World) -> None:
    signed, _ = issue_token(world)
    encoded = encode_signed(signed)
    assert token_hash(signed) == hashlib.sha256(encoded).hexdigest()
    assert decode_signed(encoded) == signed
    # The field order of the msgpack map is part of the definition (docs/protocol.md).
    assert encoded[:1] == b"\x83"
    assert msgspec.msgpack.decode(encoded) == {
        "payload": signed.payload,
        "kid": signed.kid,
        "sig": signed.sig,
    }
    assert list(msgspec.msgpack.decode(encoded)) == ["payload", "kid", "sig"]
    assert token_hash(issue_token(world)[0]) != token_hash(signed)


def test_decode_signed_refuses_garbage() -> None:
    with pytest.raises(TokenError) as caught:
        decode_signed(b"\x93\x01")
    assert caught.value.reason is Reason.TOKEN_MALFORMED


def test_private_part_decodes_and_binds_the_token(world: World) -> None:
    signed, opening = issue_token(world)
    token = verify_token_signature(signed, world.directory())
    private = check_private_part(token, opening)
    assert private.token_id == token.token_id
    assert {i.pseudonym for i in private.informing} == set(token.subject_pseudonyms)
    assert token.private_commitment == opening.commitment()
    assert opening.commitment() == (
        labels.labelled_hash(labels.TOKEN_PRIVATE_COMMITMENT, opening.salt, opening.content).hex()
    )


def test_two_issues_of_the_same_private_part_differ_by_salt(world: World) -> None:
    a = issue_token(world)[1]
    b = issue_token(world)[1]
    assert a.salt != b.salt
    assert len(a.salt) == 32


# -- issue: what an issuer may not sign --------------------------------------------------------

IssueCase = tuple[str, Callable[[World], Issued], Reason]

ISSUE_CASES: list[IssueCase] = [
    (
        "token widens the policy",
        lambda w: issue_token(w, allowed={Role.WELFARE: [MessageType.REFERRAL]}),
        Reason.TYPE_NOT_ALLOWED,
    ),
    (
        "coordinator not a participant",
        lambda w: issue_token(w, participants=("politie-ijmond", "halt")),
        Reason.TOKEN_MALFORMED,
    ),
    (
        "validity ends before it starts",
        lambda w: issue_token(w, valid_from=T0, valid_until=T0),
        Reason.TOKEN_MALFORMED,
    ),
    (
        "subject pseudonym not 128-bit hex",
        lambda w: issue_token(w, subjects=[TokenSubject(pseudonym="BSN123", informed_at=T0)]),
        Reason.TOKEN_MALFORMED,
    ),
    (
        "subject listed twice",
        lambda w: issue_token(
            w,
            subjects=[
                TokenSubject(pseudonym=INFORMED, informed_at=T0),
                TokenSubject(pseudonym=INFORMED, informed_at=T0),
            ],
        ),
        Reason.TOKEN_MALFORMED,
    ),
    (
        "no subjects",
        lambda w: issue_token(w, subjects=[]),
        Reason.TOKEN_MALFORMED,
    ),
    (
        "signed with a sign key",
        lambda w: issue_token(w, key=w.sign["gemeente-velsen"]),
        Reason.TOKEN_MALFORMED,
    ),
]


@pytest.mark.parametrize(("name", "make", "reason"), ISSUE_CASES, ids=[c[0] for c in ISSUE_CASES])
def test_issue_refuses(
    world: World, name: str, make: Callable[[World], Issued], reason: Reason
) -> None:
    del name
    with pytest.raises(TokenError) as caught:
        make(world)
    assert caught.value.reason is reason


def test_subject_has_exactly_one_informing_time() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        TokenSubject(pseudonym=INFORMED)
    with pytest.raises(ValueError, match="exactly one"):
        TokenSubject(pseudonym=INFORMED, informed_at=1, informing_deferred_until=2)
    with pytest.raises(msgspec.ValidationError, match="exactly one"):
        msgspec.json.decode(b'{"pseudonym": "' + INFORMED.encode() + b'"}', type=TokenSubject)


# -- revocation --------------------------------------------------------------------------------

RevocationCase = tuple[
    str, Callable[[World, ApproachToken], tuple[SignedObject, Directory]], Reason | None
]


def _revoke(token: ApproachToken, key: Ed25519KeyPair) -> SignedObject:
    return revoke(token, key=key, now=T0 + DAY, reason="Aanpak beëindigd.")


REVOCATION_CASES: list[RevocationCase] = [
    (
        "by the issuing coordinator",
        lambda w, t: (_revoke(t, w.token["gemeente-velsen"]), w.directory()),
        None,
    ),
    (
        "by the issuer's rotated token key",
        lambda w, t: (
            _revoke(t, w.token_next["gemeente-velsen"]),
            w.directory(next_token_keys_for=("gemeente-velsen",)),
        ),
        None,
    ),
    (
        "by another coordinator",
        lambda w, t: (_revoke(t, w.token["gemeente-beverwijk"]), w.directory()),
        Reason.REVOCATION_NOT_ISSUER,
    ),
    (
        "by the issuer's sign key",
        lambda w, t: (
            sign_object(
                labels.TOKEN_REVOCATION,
                TokenRevocation(token_id=t.token_id, revoked_at=T0, reason="x"),
                w.sign["gemeente-velsen"],
            ),
            w.directory(),
        ),
        Reason.REVOCATION_NOT_ISSUER,
    ),
    (
        "forged",
        lambda w, t: (_flip_payload_byte(_revoke(t, w.token["gemeente-velsen"])), w.directory()),
        Reason.BAD_REVOCATION_SIGNATURE,
    ),
    (
        "a token signature presented as a revocation",
        lambda w, t: (issue_token(w)[0], w.directory()),
        Reason.BAD_REVOCATION_SIGNATURE,
    ),
    (
        "revoking key itself revoked",
        lambda w, t: (
            _revoke(t, w.token["gemeente-velsen"]),
            w.directory(token_key_times={"gemeente-velsen": {"revoked_at": T0}}),
        ),
        Reason.BAD_REVOCATION_SIGNATURE,
    ),
]


@pytest.fixture(scope="module")
def token(world: World) -> ApproachToken:
    return _decode(issue_token(world)[0])


@pytest.mark.parametrize(
    ("name", "make", "expected"), REVOCATION_CASES, ids=[c[0] for c in REVOCATION_CASES]
)
def test_verify_revocation(
    world: World,
    token: ApproachToken,
    name: str,
    make: Callable[[World, ApproachToken], tuple[SignedObject, Directory]],
    expected: Reason | None,
) -> None:
    del name
    signed, directory = make(world, token)
    if expected is None:
        revocation = verify_revocation(signed, token, directory, now=T0 + DAY)
        assert revocation.token_id == token.token_id
        assert revocation.revoked_at == T0 + DAY
    else:
        with pytest.raises(TokenError) as caught:
            verify_revocation(signed, token, directory, now=T0 + DAY)
        assert caught.value.reason is expected


def test_revocation_names_its_token(world: World, token: ApproachToken) -> None:
    other = _decode(issue_token(world)[0])
    signed = _revoke(token, world.token["gemeente-velsen"])
    with pytest.raises(TokenError) as caught:
        verify_revocation(signed, other, world.directory(), now=T0 + DAY)
    assert caught.value.reason is Reason.TOKEN_MALFORMED


# -- using a token for a message ---------------------------------------------------------------


@dataclass(frozen=True)
class UseCase:
    id: str
    sender: str
    recipients: tuple[str, ...]
    message_type: MessageType
    expected: Reason | None
    subjects: tuple[str, ...] = (INFORMED,)
    expires_at: int = T0 + 30 * DAY
    allowed: dict[Role, list[MessageType]] | None = None
    kind: ApproachKind = ApproachKind.GROUP


def _participants_with_beverwijk() -> tuple[str, ...]:
    return ("gemeente-velsen", "gemeente-beverwijk", "politie-ijmond", "halt", "welzijn-ijmond")


USE_CASES = [
    UseCase("police refers to halt", "politie-ijmond", ("halt",), MessageType.REFERRAL, None),
    UseCase(
        "coordinator notifies everyone",
        "gemeente-velsen",
        ("politie-ijmond", "halt", "welzijn-ijmond"),
        MessageType.APPROACH_NOTICE,
        None,
    ),
    UseCase(
        "welfare signals police: the covenant does not allow it",
        "welzijn-ijmond",
        ("politie-ijmond",),
        MessageType.SIGNAL,
        Reason.TYPE_NOT_ALLOWED,
    ),
    UseCase(
        "token narrows the policy",
        "politie-ijmond",
        ("halt",),
        MessageType.REFERRAL,
        Reason.TYPE_NOT_ALLOWED,
        allowed={Role.POLICE: [MessageType.PROGRESS]},
    ),
    UseCase(
        "a participating municipality that does not coordinate sends an approach-notice",
        "gemeente-beverwijk",
        ("politie-ijmond",),
        MessageType.APPROACH_NOTICE,
        Reason.TYPE_NOT_ALLOWED,
    ),
    UseCase(
        "one recipient of several not allowed",
        "politie-ijmond",
        ("halt", "welzijn-ijmond"),
        MessageType.REFERRAL,
        Reason.TYPE_NOT_ALLOWED,
    ),
    UseCase(
        "sender not a participant",
        "gemeente-uitgeest",
        ("halt",),
        MessageType.PROGRESS,
        Reason.SENDER_NOT_PARTICIPANT,
    ),
    UseCase(
        "recipient not a participant",
        "politie-ijmond",
        ("halt", "om"),
        MessageType.REFERRAL,
        Reason.RECIPIENT_NOT_PARTICIPANT,
    ),
    UseCase(
        "message outlives its token",
        "politie-ijmond",
        ("halt",),
        MessageType.REFERRAL,
        Reason.EXPIRES_AFTER_TOKEN,
        expires_at=T0 + 180 * DAY + 1,
    ),
    UseCase(
        "subject of another approach",
        "politie-ijmond",
        ("halt",),
        MessageType.REFERRAL,
        Reason.SUBJECT_NOT_IN_TOKEN,
        subjects=(STRANGER,),
    ),
    UseCase(
        "subject not informed yet",
        "politie-ijmond",
        ("halt",),
        MessageType.REFERRAL,
        Reason.SUBJECT_NOT_INFORMED,
        subjects=(NOT_YET_INFORMED,),
    ),
]


@pytest.mark.parametrize("case", USE_CASES, ids=[c.id for c in USE_CASES])
def test_check_use(world: World, case: UseCase) -> None:
    policy: Policy = default_policy()
    signed, _ = issue_token(
        world, participants=_participants_with_beverwijk(), allowed=case.allowed, kind=case.kind
    )
    token = _decode(signed)

    def run() -> None:
        check_use(
            token,
            policy,
            world.directory(),
            now=T0 + 3600,
            sender=case.sender,
            recipients=case.recipients,
            subjects=case.subjects,
            message_type=case.message_type,
            expires_at=case.expires_at,
        )

    if case.expected is None:
        run()
    else:
        with pytest.raises(TokenError) as caught:
            run()
        assert caught.value.reason is case.expected


def test_allowed_types_is_policy_intersect_token(world: World) -> None:
    directory = world.directory()
    police, halt = directory.partner("politie-ijmond"), directory.partner("halt")
    wide = _decode(issue_token(world)[0])
    narrow = _decode(issue_token(world, allowed={Role.POLICE: [MessageType.SIGNAL]})[0])
    policy = default_policy()
    assert allowed_types(policy, wide, police, halt) == {MessageType.REFERRAL, MessageType.SIGNAL}
    assert allowed_types(policy, narrow, police, halt) == {MessageType.SIGNAL}
    assert allowed_types(policy, narrow, halt, police) == frozenset()


def test_token_helpers(world: World) -> None:
    token = _decode(issue_token(world)[0])
    assert token.is_participant("halt")
    assert not token.is_participant("gemeente-uitgeest")
    assert token.subject(DEFERRED).informing_deferred_until == T0 + 30 * DAY
    with pytest.raises(TokenError) as caught:
        token.subject(STRANGER)
    assert caught.value.reason is Reason.SUBJECT_NOT_IN_TOKEN


# -- Test vector (docs/protocol.md) ------------------------------------------------------------


def _vector() -> tuple[SignedObject, PrivatePartOpening, Ed25519KeyPair]:
    return _vector_with_token_id("0" * 31 + "1")


def _vector_with_token_id(
    token_id: str,
) -> tuple[SignedObject, PrivatePartOpening, Ed25519KeyPair]:
    policy = decode_policy(
        b'{"name":"Vector","version":1,"roles":{"municipality":{"legal_basis":[{"reference":'
        b'"Convenant art. 4","text":"Regie."}],"processing_activities":["vector/regie"]},'
        b'"police":{"legal_basis":[{"reference":"Wpg art. 20","text":"Verstrekking."}],'
        b'"processing_activities":["vector/politie"]}},"rules":{"person":{"municipality":'
        b'{"police":["approach-notice"]},"police":{"municipality":["signal"]}}}}'
    )
    key = Ed25519KeyPair.from_seed(KeyUse.TOKEN, bytes(range(32)))
    signed, opening = issue(
        key=key,
        coordinator="gemeente-velsen",
        kind=ApproachKind.PERSON,
        subjects=[TokenSubject(pseudonym="a" * 32, informed_at=T0 - DAY)],
        participants=["gemeente-velsen", "politie-ijmond"],
        allowed={
            Role.MUNICIPALITY: [MessageType.APPROACH_NOTICE],
            Role.POLICE: [MessageType.SIGNAL],
        },
        valid_from=T0,
        valid_until=T0 + 90 * DAY,
        retention_until=T0 + 5 * 365 * DAY,
        policy=policy,
        purposes={Role.POLICE: RolePurpose(purpose="Signalering.", legal_basis="Wpg art. 20")},
        decided_by="Regisseur",
        decided_on=datetime.date(2026, 5, 25),
        decision_reference="VLS-1",
        informing={"a" * 32: "Per brief."},
        now=T0,
        token_id=token_id,
        salt=bytes(32),
    )
    return signed, opening, key


# Ed25519 is deterministic and every input above is fixed, so these pin the byte layout of the
# checked part, the private-part commitment and the token hash.
VECTOR_COMMITMENT = "19f5b245315a851623bb3ddf89d37d694640a9bacf2c348ea75f6b8c185e7794"
VECTOR_TOKEN_HASH = "0f4558b1ca2b35edc4f952765edcc22810391bd11bb2443f55e2fec84a593490"


def test_token_vector() -> None:
    signed, opening, key = _vector()
    assert signed.kid == key.kid
    assert opening.commitment() == VECTOR_COMMITMENT
    assert token_hash(signed) == VECTOR_TOKEN_HASH
    assert signed.sig == key.sign(labels.framed(labels.TOKEN, signed.payload))


def test_the_no_token_id_is_never_issued() -> None:
    # The relay reads the all-zero id as "the envelope names no token" (``no_token``).
    with pytest.raises(TokenError) as caught:
        _vector_with_token_id(NO_TOKEN_ID)
    assert caught.value.reason is Reason.TOKEN_MALFORMED
