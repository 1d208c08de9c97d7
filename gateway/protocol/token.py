"""Approach tokens: the legal basis without which nothing is relayed.

Rules kept here (DESIGN.md "Approach tokens" and "The relay decision"):

* A token has two parts. The **checked part** (``ApproachToken``) holds only what the relay
  decision needs; the coordinating municipality signs it with its ``token`` key under the
  label ``labels.TOKEN`` as a ``SignedObject`` (its ``payload`` is the msgpack encoding of the
  token, kept as the exact signed bytes). The **private part** (``PrivatePart``: purpose and
  legal basis per role, decision, how subjects were informed) is committed to by
  ``private_commitment = labelled_hash(TOKEN_PRIVATE_COMMITMENT, salt, content)`` where
  ``content`` is the msgpack encoding of the ``PrivatePart`` and ``salt`` 32 random bytes
  (without the salt the few plausible private parts could be guessed from the hash). The
  private part travels to participants as a ``PrivatePartOpening`` (salt and the exact content
  bytes) inside the ``approach-notice``; the gateway never sees it.
* ``token_hash(signed) = SHA-256(msgpack(SignedObject))`` — the encoded signed object, a
  3-entry msgpack map ``payload`` (bin), ``kid`` (str), ``sig`` (bin) in that order — as 64
  lowercase hex. Envelopes name the token by id and this hash.
* Only the **signature** check may be cached (by token hash): ``verify_token_signature``
  depends on nothing but the token bytes and the public key the kid names. Everything that
  depends on the directory, the time or the registry — issuer and coordinator, key state,
  validity, revocation, supersession, policy hash, subjects informed — is
  ``check_token_status``/``check_use`` and runs for every message.
* Key compromise is judged at the gateway's audited registration time when the caller knows it
  (``TokenStatus.registered_at``), never at the coordinator-chosen ``issued_at`` alone: a thief
  could backdate ``issued_at``. Revoking a token key with ``compromised_since`` voids the tokens
  registered from then on; with an unknown compromise time it voids all of them.
* A token only **narrows** the policy: the types a sender may send are policy ∩ token. Only the
  coordinating municipality sends ``approach-notice``.
* Only the issuing coordinator revokes a token, with a ``TokenRevocation`` signed by one of its
  ``token`` keys under ``labels.TOKEN_REVOCATION``.
* Every check raises ``TokenError`` with a ``Reason``; nothing returns a bool for validity.
"""

from __future__ import annotations

import datetime
import hashlib
import secrets
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Final

import msgspec

from gateway.protocol import labels
from gateway.protocol.errors import TokenError
from gateway.protocol.policy import Policy, policy_hash, sendable_types
from gateway.protocol.policy import allowed_types as policy_allowed_types
from gateway.protocol.reasons import Reason
from gateway.protocol.signed import SignedObject, sign_object, verify_object
from gateway.protocol.types import (
    NO_TOKEN_ID,
    ApproachKind,
    Kid,
    MessageType,
    PartnerId,
    Pseudonym,
    Sha256Hex,
    TokenId,
    UnixTime,
    new_token_id,
)
from keys import (
    BadSignatureError,
    Directory,
    DirectoryError,
    DirectoryKey,
    Ed25519KeyPair,
    KeysReason,
    KeyStateError,
    KeyUse,
    Partner,
    Role,
    check_signature_time,
    check_usable,
)

TOKEN_VERSION: Final = 1
SALT_LEN: Final = 32

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]
ShortText = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Salt = Annotated[bytes, msgspec.Meta(min_length=SALT_LEN, max_length=SALT_LEN)]

_ENCODER: Final = msgspec.msgpack.Encoder()
_SIGNED_DECODER: Final = msgspec.msgpack.Decoder(SignedObject)


# -- The checked part ----------------------------------------------------------------------


class TokenSubject(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A subject of the approach: its pseudonym and exactly one of the informing times.

    ``informed_at``: when youth and parents were informed (messages allowed from then on).
    ``informing_deferred_until``: informing is deferred (e.g. it would harm an investigation)
    and messages are allowed until then; afterwards only once ``informed_at`` is set by a
    superseding token.
    """

    pseudonym: Pseudonym
    informed_at: UnixTime | None = None
    informing_deferred_until: UnixTime | None = None

    def __post_init__(self) -> None:
        if (self.informed_at is None) == (self.informing_deferred_until is None):
            raise ValueError("a subject has exactly one of informed_at, informing_deferred_until")


class ApproachToken(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The checked part of an approach token (what the gateway registers and checks)."""

    version: Annotated[int, msgspec.Meta(ge=1, le=1)]
    token_id: TokenId
    kind: ApproachKind
    coordinator: PartnerId
    subjects: Annotated[tuple[TokenSubject, ...], msgspec.Meta(min_length=1, max_length=64)]
    participants: Annotated[tuple[PartnerId, ...], msgspec.Meta(min_length=1, max_length=64)]
    # Per sender role, the types it may send in this approach; intersected with the policy, so
    # it can only narrow it. A role not listed may send nothing.
    allowed_types: dict[Role, tuple[MessageType, ...]]
    valid_from: UnixTime
    valid_until: UnixTime
    # Audit entries and everything else about this approach are deleted at this time.
    retention_until: UnixTime
    policy_hash: Sha256Hex
    supersedes: TokenId | None
    private_commitment: Sha256Hex
    issued_at: UnixTime
    issuer_kid: Kid

    def __post_init__(self) -> None:
        if NO_TOKEN_ID in (self.token_id, self.supersedes):
            raise ValueError("the all-zero token id means 'no token' and is never issued")
        if self.valid_from >= self.valid_until:
            raise ValueError("valid_from must precede valid_until")
        if self.retention_until < self.valid_until:
            raise ValueError("retention_until must not precede valid_until")
        if len({s.pseudonym for s in self.subjects}) != len(self.subjects):
            raise ValueError("a subject is listed twice")
        if len(set(self.participants)) != len(self.participants):
            raise ValueError("a participant is listed twice")
        if self.coordinator not in self.participants:
            raise ValueError("the coordinating municipality must be a participant")
        if self.supersedes == self.token_id:
            raise ValueError("a token cannot supersede itself")

    def subject(self, pseudonym: str) -> TokenSubject:
        """The subject entry for ``pseudonym``; ``TokenError(subject_not_in_token)`` if none."""
        for subject in self.subjects:
            if subject.pseudonym == pseudonym:
                return subject
        raise TokenError("subject is not in the approach token", Reason.SUBJECT_NOT_IN_TOKEN)

    def is_participant(self, partner_id: str) -> bool:
        return partner_id in self.participants

    @property
    def subject_pseudonyms(self) -> tuple[str, ...]:
        return tuple(s.pseudonym for s in self.subjects)


# -- The private part ----------------------------------------------------------------------


class RolePurpose(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Why a role takes part in this approach, and on which legal ground."""

    purpose: Text
    legal_basis: Text


class SubjectInforming(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How youth and parents were informed, or why informing is deferred."""

    pseudonym: Pseudonym
    note: Text


class PrivatePart(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The private part of a token: for participants only, never for the gateway."""

    token_id: TokenId
    purposes: dict[Role, RolePurpose]
    decided_by: ShortText
    decided_on: datetime.date
    decision_reference: ShortText
    informing: Annotated[tuple[SubjectInforming, ...], msgspec.Meta(min_length=1)]


class PrivatePartOpening(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What opens the commitment: the salt and the exact committed bytes of the private part."""

    salt: Salt
    content: bytes

    def commitment(self) -> str:
        return labels.labelled_hash(labels.TOKEN_PRIVATE_COMMITMENT, self.salt, self.content).hex()

    def decoded(self) -> PrivatePart:
        """The private part; ``TokenError(token_private_part_mismatch)`` if it does not decode."""
        try:
            return msgspec.msgpack.decode(self.content, type=PrivatePart)
        except msgspec.DecodeError:
            raise TokenError(
                "private part does not decode", Reason.TOKEN_PRIVATE_PART_MISMATCH
            ) from None


def open_private_part(private: PrivatePart, salt: bytes | None = None) -> PrivatePartOpening:
    """Encode ``private`` once and pair it with ``salt`` (fresh 32 random bytes by default)."""
    return PrivatePartOpening(
        salt=secrets.token_bytes(SALT_LEN) if salt is None else salt,
        content=_ENCODER.encode(private),
    )


def check_private_part(token: ApproachToken, opening: PrivatePartOpening) -> PrivatePart:
    """Return the private part if it opens ``token``'s commitment and belongs to it.

    Raises ``TokenError(token_private_part_mismatch)`` when the commitment does not match, the
    content does not decode, it names another token, or its informing notes do not cover
    exactly the token's subjects.
    """
    if not secrets.compare_digest(opening.commitment(), token.private_commitment):
        raise TokenError(
            "private part does not match the token's commitment",
            Reason.TOKEN_PRIVATE_PART_MISMATCH,
        )
    private = opening.decoded()
    if private.token_id != token.token_id:
        raise TokenError(
            "private part belongs to another token", Reason.TOKEN_PRIVATE_PART_MISMATCH
        )
    if {i.pseudonym for i in private.informing} != set(token.subject_pseudonyms):
        raise TokenError(
            "private part's informing notes do not match the token's subjects",
            Reason.TOKEN_PRIVATE_PART_MISMATCH,
        )
    return private


# -- Issuing --------------------------------------------------------------------------------


def issue(
    *,
    key: Ed25519KeyPair,
    coordinator: str,
    kind: ApproachKind,
    subjects: Iterable[TokenSubject],
    participants: Iterable[str],
    allowed: Mapping[Role, Iterable[MessageType]],
    valid_from: int,
    valid_until: int,
    retention_until: int,
    policy: Policy,
    purposes: Mapping[Role, RolePurpose],
    decided_by: str,
    decided_on: datetime.date,
    decision_reference: str,
    informing: Mapping[str, str],
    now: int,
    supersedes: str | None = None,
    token_id: str | None = None,
    salt: bytes | None = None,
) -> tuple[SignedObject, PrivatePartOpening]:
    """Issue a token: build both parts, commit to the private part, sign the checked part.

    ``informing`` maps each subject's pseudonym to how it was informed or why informing is
    deferred. Raises ``TokenError(token_malformed)`` if the parts are inconsistent, and
    ``TokenError(type_not_allowed)`` if ``allowed`` lists a type the policy never allows the
    role to send in this kind of approach (a token narrows the policy, never widens it).
    """
    if key.use is not KeyUse.TOKEN:
        raise TokenError("tokens are signed with a token key", Reason.TOKEN_MALFORMED)
    token_id = new_token_id() if token_id is None else token_id
    allowed_types: dict[Role, tuple[MessageType, ...]] = {}
    for role, types in allowed.items():
        wanted = frozenset(types)
        extra = wanted - sendable_types(policy, kind, role)
        if extra:
            raise TokenError(
                f"the policy does not let {role} send {sorted(extra)} in a {kind} approach",
                Reason.TYPE_NOT_ALLOWED,
            )
        allowed_types[role] = tuple(sorted(wanted))
    try:
        opening = open_private_part(
            PrivatePart(
                token_id=token_id,
                purposes=dict(purposes),
                decided_by=decided_by,
                decided_on=decided_on,
                decision_reference=decision_reference,
                informing=tuple(
                    SubjectInforming(pseudonym=p, note=n) for p, n in sorted(informing.items())
                ),
            ),
            salt,
        )
        token = ApproachToken(
            version=TOKEN_VERSION,
            token_id=token_id,
            kind=kind,
            coordinator=coordinator,
            subjects=tuple(subjects),
            participants=tuple(participants),
            allowed_types=allowed_types,
            valid_from=valid_from,
            valid_until=valid_until,
            retention_until=retention_until,
            policy_hash=policy_hash(policy),
            supersedes=supersedes,
            private_commitment=opening.commitment(),
            issued_at=now,
            issuer_kid=key.kid,
        )
        # Constructing a struct runs ``__post_init__`` but not the ``Meta`` constraints;
        # decoding what a verifier will decode runs both, so the issuer learns what a verifier
        # would refuse before anything is signed.
        msgspec.msgpack.decode(_ENCODER.encode(token), type=ApproachToken)
        msgspec.msgpack.decode(_ENCODER.encode(opening), type=PrivatePartOpening)
        msgspec.msgpack.decode(opening.content, type=PrivatePart)
    except (msgspec.ValidationError, ValueError) as exc:
        raise TokenError(f"token: {exc}", Reason.TOKEN_MALFORMED) from None
    try:
        check_private_part(token, opening)
    except TokenError as exc:
        raise TokenError(f"token: {exc}", Reason.TOKEN_MALFORMED) from None
    return sign_object(labels.TOKEN, token, key), opening


# -- Encoding and hashing ------------------------------------------------------------------


def encode_signed(signed: SignedObject) -> bytes:
    """The msgpack bytes of a signed token (what ``token_hash`` hashes and registries store)."""
    return _ENCODER.encode(signed)


def decode_signed(data: bytes) -> SignedObject:
    """Decode a signed token's bytes; ``TokenError(token_malformed)`` if they do not decode."""
    try:
        return _SIGNED_DECODER.decode(data)
    except msgspec.DecodeError:
        raise TokenError("signed token does not decode", Reason.TOKEN_MALFORMED) from None


def token_hash(signed: SignedObject) -> str:
    """SHA-256 hex of ``encode_signed(signed)``: the hash envelopes carry and caches key on."""
    return hashlib.sha256(encode_signed(signed)).hexdigest()


# -- Verifying -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenStatus:
    """What the gateway's token registry knows about a token.

    ``registered_at`` is the gateway's audited registration time; key compromise is judged at
    it. ``None`` (a verifier without the registry) falls back to the token's ``issued_at``.
    """

    registered_at: int | None = None
    revoked_at: int | None = None
    superseded_by: str | None = None


def verify_token_signature(signed: SignedObject, directory: Directory) -> ApproachToken:
    """Verify the token's signature and return its checked part. **Cacheable** by token hash.

    Depends only on the signed bytes and the public key the kid names (a kid is the hash of
    its public key, so the result cannot change with the directory). Raises
    ``TokenError(token_bad_signature)`` for a forged or damaged token or an unknown key, and
    ``TokenError(token_malformed)`` when the signed kid and the token's ``issuer_kid`` differ.
    """

    def public_for_kid(kid: str) -> bytes:
        try:
            return directory.key(kid)[1].public
        except DirectoryError:
            raise TokenError("token signed by an unknown key", Reason.TOKEN_BAD_SIGNATURE) from None

    try:
        token = verify_object(labels.TOKEN, signed, ApproachToken, public_for_kid)
    except BadSignatureError:
        raise TokenError("token signature does not verify", Reason.TOKEN_BAD_SIGNATURE) from None
    if token.issuer_kid != signed.kid:
        raise TokenError("token's issuer_kid is not the signing key", Reason.TOKEN_MALFORMED)
    return token


def _issuer_key(token: ApproachToken, directory: Directory) -> tuple[Partner, DirectoryKey]:
    try:
        owner, key = directory.key(token.issuer_kid)
    except DirectoryError:
        raise TokenError("token key is not in the directory", Reason.TOKEN_BAD_SIGNATURE) from None
    if owner != token.coordinator or key.use is not KeyUse.TOKEN:
        raise TokenError(
            "token not signed by a token key of its coordinating municipality",
            Reason.TOKEN_ISSUER_NOT_COORDINATING_MUNICIPALITY,
        )
    try:
        coordinator = directory.partner(token.coordinator)
    except DirectoryError:
        raise TokenError(
            "coordinating municipality is not in the directory",
            Reason.TOKEN_ISSUER_NOT_COORDINATOR,
        ) from None
    return coordinator, key


def check_token_status(
    token: ApproachToken,
    directory: Directory,
    *,
    now: int,
    status: TokenStatus,
) -> None:
    """The per-message checks of a token whose signature verified. Never cache the result.

    In order: issuer key is a ``token`` key of the coordinating municipality; that partner is a
    municipality marked coordinator and has not left; the key was usable at registration and
    no compromise window covers the token; ``valid_from <= now < valid_until``; not revoked;
    not superseded; the token's policy hash is the directory's. Raises ``TokenError``.
    """
    coordinator, key = _issuer_key(token, directory)
    if (
        coordinator.role is not Role.MUNICIPALITY
        or not coordinator.coordinator
        or (coordinator.left_at is not None and now >= coordinator.left_at)
    ):
        raise TokenError(
            f"{coordinator.id} is not a coordinating municipality",
            Reason.TOKEN_ISSUER_NOT_COORDINATOR,
        )
    signed_at = token.issued_at if status.registered_at is None else status.registered_at
    try:
        check_signature_time(key, signed_at, now)
    except KeyStateError as exc:
        # A revoked token key voids what it signed from its compromise time on (every token
        # when that time is unknown); a key not yet active or retired at registration was
        # simply not usable then.
        if exc.reason in (KeysReason.KEY_COMPROMISED, KeysReason.KEY_REVOKED):
            raise TokenError(str(exc), Reason.TOKEN_ISSUER_KEY_COMPROMISED) from None
        raise TokenError(
            f"token key at registration: {exc}", Reason.TOKEN_ISSUER_KEY_INVALID
        ) from None
    if now < token.valid_from:
        raise TokenError("token is not valid yet", Reason.TOKEN_NOT_YET_VALID)
    if now >= token.valid_until:
        raise TokenError("token has expired", Reason.TOKEN_EXPIRED)
    if status.revoked_at is not None:
        raise TokenError("token was revoked", Reason.TOKEN_REVOKED)
    if status.superseded_by is not None:
        raise TokenError("token was superseded", Reason.TOKEN_SUPERSEDED)
    if token.policy_hash != directory.policy_hash:
        raise TokenError("token was issued under another covenant policy", Reason.POLICY_MISMATCH)


def check_subjects(token: ApproachToken, pseudonyms: Iterable[str], *, now: int) -> None:
    """Raise unless every pseudonym is a subject of ``token`` and may be messaged about now.

    A subject may be messaged about once ``informed_at <= now``, or while its deferral runs
    (``now < informing_deferred_until``). ``TokenError(subject_not_in_token)`` or
    ``TokenError(subject_not_informed)``.
    """
    for pseudonym in pseudonyms:
        subject = token.subject(pseudonym)
        if subject.informed_at is not None:
            if now < subject.informed_at:
                raise TokenError("a subject is not informed yet", Reason.SUBJECT_NOT_INFORMED)
        elif subject.informing_deferred_until is not None and now >= (
            subject.informing_deferred_until
        ):
            raise TokenError(
                "the deferral of informing a subject has ended", Reason.SUBJECT_NOT_INFORMED
            )


def verify_token(
    signed: SignedObject,
    directory: Directory,
    *,
    now: int,
    status: TokenStatus,
    subjects: Iterable[str],
    private: PrivatePartOpening | None = None,
    verify_signature: Callable[[SignedObject, Directory], ApproachToken] = verify_token_signature,
) -> ApproachToken:
    """Verify a token completely and return its checked part; raise ``TokenError``.

    Signature (through ``verify_signature``, where a cache may sit), then
    ``check_token_status``, then ``check_subjects`` for ``subjects`` (the message's subjects;
    ``()`` when no message is involved, e.g. at registration: in a group approach one youth not
    yet informed must not block messages about the others), then — when given — the private
    part against its commitment.
    """
    token = verify_signature(signed, directory)
    check_token_status(token, directory, now=now, status=status)
    check_subjects(token, subjects, now=now)
    if private is not None:
        check_private_part(token, private)
    return token


# -- Using a token for a message -----------------------------------------------------------


def allowed_types(
    policy: Policy, token: ApproachToken, sender: Partner, recipient: Partner
) -> frozenset[MessageType]:
    """Types ``sender`` may send ``recipient`` under ``token``: policy ∩ token.

    ``approach-notice`` is left out unless the sender is the token's coordinating municipality:
    the policy speaks of roles, and any municipality may be a participant.
    """
    types = policy_allowed_types(policy, token.kind, sender.role, recipient.role)
    types &= frozenset(token.allowed_types.get(sender.role, ()))
    if sender.id != token.coordinator:
        types -= {MessageType.APPROACH_NOTICE}
    return types


def check_use(
    token: ApproachToken,
    policy: Policy,
    directory: Directory,
    *,
    now: int,
    sender: str,
    recipients: Collection[str],
    subjects: Iterable[str],
    message_type: MessageType,
    expires_at: int,
) -> None:
    """The relay decision's token checks for one message, after ``check_token_status``.

    In DESIGN.md's order: ``expires_at <= valid_until``; every subject in the token and
    informed (or deferral running); sender and every recipient participants; the type allowed
    by policy ∩ token for the sender's and each recipient's role. Roles come from
    ``directory``. Recipients run the same checks on what they receive. Raises ``TokenError``.
    """
    if expires_at > token.valid_until:
        raise TokenError("message expires after its token", Reason.EXPIRES_AFTER_TOKEN)
    check_subjects(token, subjects, now=now)
    if not token.is_participant(sender):
        raise TokenError("sender is not a participant", Reason.SENDER_NOT_PARTICIPANT)
    for recipient in recipients:
        if not token.is_participant(recipient):
            raise TokenError(
                f"recipient {recipient} is not a participant", Reason.RECIPIENT_NOT_PARTICIPANT
            )
    try:
        sender_partner = directory.partner(sender)
    except DirectoryError:
        raise TokenError("sender is not in the directory", Reason.UNKNOWN_SENDER) from None
    for recipient in recipients:
        try:
            recipient_partner = directory.partner(recipient)
        except DirectoryError:
            raise TokenError(
                f"recipient {recipient} is not in the directory", Reason.UNKNOWN_RECIPIENT
            ) from None
        if message_type not in allowed_types(policy, token, sender_partner, recipient_partner):
            raise TokenError(
                f"{message_type} from {sender_partner.role} to {recipient_partner.role} is not "
                "allowed by the covenant policy and this token",
                Reason.TYPE_NOT_ALLOWED,
            )


# -- Revocation ----------------------------------------------------------------------------


class TokenRevocation(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A coordinator's statement that a token no longer holds, from ``revoked_at``."""

    token_id: TokenId
    revoked_at: UnixTime
    reason: Text


def revoke(token: ApproachToken, *, key: Ed25519KeyPair, now: int, reason: str) -> SignedObject:
    """Sign a revocation of ``token`` with a ``token`` key of its coordinating municipality."""
    if key.use is not KeyUse.TOKEN:
        raise TokenError("revocations are signed with a token key", Reason.TOKEN_MALFORMED)
    return sign_object(
        labels.TOKEN_REVOCATION,
        TokenRevocation(token_id=token.token_id, revoked_at=now, reason=reason),
        key,
    )


def verify_revocation(
    signed: SignedObject, token: ApproachToken, directory: Directory, *, now: int
) -> TokenRevocation:
    """Verify a revocation of ``token``; only its issuing coordinator may revoke it.

    The signing key must be a ``token`` key of ``token.coordinator`` (any of them: keys rotate
    during a token's life) that is usable at ``now``. Raises ``TokenError`` with
    ``revocation_not_issuer`` (another partner's key, or not a token key),
    ``bad_revocation_signature``, or ``token_malformed`` (names another token).
    """

    def public_for_kid(kid: str) -> bytes:
        try:
            key = directory.owned_key(token.coordinator, kid, KeyUse.TOKEN)
        except DirectoryError:
            raise TokenError(
                "revocation not signed by the issuing coordinator", Reason.REVOCATION_NOT_ISSUER
            ) from None
        try:
            check_usable(key, now)
        except KeyStateError as exc:
            raise TokenError(f"revocation key: {exc}", Reason.BAD_REVOCATION_SIGNATURE) from None
        return key.public

    try:
        revocation = verify_object(labels.TOKEN_REVOCATION, signed, TokenRevocation, public_for_kid)
    except BadSignatureError:
        raise TokenError(
            "revocation signature does not verify", Reason.BAD_REVOCATION_SIGNATURE
        ) from None
    if revocation.token_id != token.token_id:
        raise TokenError("revocation names another token", Reason.TOKEN_MALFORMED)
    return revocation
