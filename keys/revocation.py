"""A partner's own immediate key revocation: a statement signed by another of its own keys.

Rules kept here (DESIGN.md "Identities and keys": "A partner can revoke its own key at once with
a statement signed by another of its own keys; the next directory version records it"):

* The statement names the partner, the revoked kid, ``revoked_at`` and ``compromised_since``
  (``None``: unknown, every signature of the key is void), and the kid that signed it.
* It is signed with Ed25519 over ``framed(KEY_REVOCATION, partner, kid, revoked_at,
  compromised_since, signing_kid)`` (``keys.framing``): its own domain-separation label, so no
  envelope, receipt or token signature can ever be taken for a revocation, nor the reverse.
* It verifies only if the signing key is a ``sign`` key the directory lists for the *same*
  partner, is not the revoked key, and is neither revoked nor retired at ``now``. A key signing
  its own revocation proves nothing (a thief holds it too); another partner's key speaks for
  another organisation. A successor ``sign`` key that is still pending may sign: the directory
  already vouches that it is the partner's.
* ``revoked_at`` may not lie further in the future than the clock skew, and the compromise may
  not begin after it.
* Refusals raise ``RevocationError`` with a ``RevocationRefusal`` detail; a signature that does
  not verify raises ``BadSignatureError`` (opaque, as everywhere).
* A statement is named by ``statement_hash``: SHA-256 of its canonical encoding
  (``encode_revocation``), so the same statement carried twice, however its JSON was spaced, is
  one statement.
* ``with_revocations`` lays verified statements over a directory (the gateway's overlay, ADR
  0011): per key the earliest ``revoked_at`` wins, and the compromise window only ever widens
  (an unknown compromise time, from the directory or any statement, voids every signature;
  otherwise the earliest known time counts). A later directory can therefore never undo a
  statement: laid over it, the key stays revoked at least as the statement says.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable
from typing import Final, Literal

import msgspec

from keys.directory import Directory, DirectoryKey, Kid, PartnerId, UnixTime
from keys.errors import DirectoryError, KeysError, KeysReason
from keys.framing import framed, unix_field
from keys.keypair import Ed25519KeyPair, KeyUse, verify_ed25519
from keys.state import KeyState

# The domain-separation label of a self-revocation statement. Distinct from every label in
# ``gateway.protocol.labels``: a partner's sign key signs envelopes and receipts too, and none of
# those may ever read as a revocation.
KEY_REVOCATION: Final = b"ketenpost/v1/key-revocation"
STATEMENT_FORMAT: Final = "ketenpost/v1/key-revocation"


class RevocationRefusal(enum.StrEnum):
    """Why a self-revocation statement was refused. Values are stable: they appear in logs."""

    SIGNED_BY_REVOKED_KEY = "signed_by_revoked_key"
    FOREIGN_SIGNING_KEY = "foreign_signing_key"
    NOT_A_SIGN_KEY = "not_a_sign_key"
    SIGNING_KEY_UNUSABLE = "signing_key_unusable"
    UNKNOWN_KEY = "unknown_key"
    BAD_TIMES = "bad_times"


_REASONS: Final = {
    RevocationRefusal.SIGNED_BY_REVOKED_KEY: KeysReason.BAD_SIGNATURE,
    RevocationRefusal.FOREIGN_SIGNING_KEY: KeysReason.UNKNOWN_KEY,
    RevocationRefusal.NOT_A_SIGN_KEY: KeysReason.WRONG_KEY_USE,
    RevocationRefusal.SIGNING_KEY_UNUSABLE: KeysReason.KEY_REVOKED,
    RevocationRefusal.UNKNOWN_KEY: KeysReason.UNKNOWN_KEY,
    RevocationRefusal.BAD_TIMES: KeysReason.KEY_COMPROMISED,
}


class RevocationError(KeysError):
    """A self-revocation statement was refused; ``refusal`` says why."""

    def __init__(self, message: str, refusal: RevocationRefusal) -> None:
        super().__init__(message, _REASONS[refusal])
        self.refusal = refusal


class KeyRevocation(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A partner's statement that one of its keys is revoked, signed by another of its keys."""

    format: Literal["ketenpost/v1/key-revocation"]
    partner: PartnerId
    kid: Kid
    revoked_at: UnixTime
    compromised_since: UnixTime | None
    signing_kid: Kid
    signature: bytes

    def signed_bytes(self) -> bytes:
        return _signed_bytes(
            self.partner, self.kid, self.revoked_at, self.compromised_since, self.signing_kid
        )


_DECODER: Final = msgspec.json.Decoder(KeyRevocation)


def _signed_bytes(
    partner: str, kid: str, revoked_at: int, compromised_since: int | None, signing_kid: str
) -> bytes:
    return framed(
        KEY_REVOCATION,
        partner.encode("ascii"),
        kid.encode("ascii"),
        unix_field(revoked_at),
        unix_field(compromised_since),
        signing_kid.encode("ascii"),
    )


def sign_revocation(
    *,
    partner: str,
    kid: str,
    revoked_at: int,
    compromised_since: int | None,
    signing_key: Ed25519KeyPair,
) -> KeyRevocation:
    """Make and sign a statement revoking ``kid``. Refuses to let a key sign its own
    revocation (``signed_by_revoked_key``) and a compromise after the revocation."""
    if signing_key.kid == kid:
        raise RevocationError(
            "a key cannot sign its own revocation: sign with another of the partner's keys",
            RevocationRefusal.SIGNED_BY_REVOKED_KEY,
        )
    if signing_key.use is not KeyUse.SIGN:
        raise RevocationError(
            "a revocation is signed with a sign key", RevocationRefusal.NOT_A_SIGN_KEY
        )
    if compromised_since is not None and compromised_since > revoked_at:
        raise RevocationError(
            "a compromise cannot begin after the revocation", RevocationRefusal.BAD_TIMES
        )
    message = _signed_bytes(partner, kid, revoked_at, compromised_since, signing_key.kid)
    return KeyRevocation(
        format=STATEMENT_FORMAT,
        partner=partner,
        kid=kid,
        revoked_at=revoked_at,
        compromised_since=compromised_since,
        signing_kid=signing_key.kid,
        signature=signing_key.sign(message),
    )


def verify_revocation(
    statement: KeyRevocation, directory: Directory, now: int, *, skew_s: int | None = None
) -> None:
    """Raise unless ``statement`` is a valid self-revocation under ``directory`` at ``now``.

    Raises ``RevocationError`` (see ``RevocationRefusal``) or ``BadSignatureError``.
    ``skew_s`` defaults to the directory's ``clock_skew_s``.
    """
    skew = directory.contents.clock_skew_s if skew_s is None else skew_s
    try:
        owner, _ = directory.key(statement.kid)
    except DirectoryError:
        raise RevocationError(
            "the revoked key is not in the directory", RevocationRefusal.UNKNOWN_KEY
        ) from None
    if owner != statement.partner:
        raise RevocationError(
            "the revoked key belongs to another partner", RevocationRefusal.FOREIGN_SIGNING_KEY
        )
    if statement.signing_kid == statement.kid:
        raise RevocationError(
            "the statement is signed by the key it revokes",
            RevocationRefusal.SIGNED_BY_REVOKED_KEY,
        )
    try:
        signer_owner, signer = directory.key(statement.signing_kid)
    except DirectoryError:
        raise RevocationError(
            "the signing key is not in the directory", RevocationRefusal.UNKNOWN_KEY
        ) from None
    if signer_owner != statement.partner:
        raise RevocationError(
            "the statement is signed by another partner's key",
            RevocationRefusal.FOREIGN_SIGNING_KEY,
        )
    if signer.use is not KeyUse.SIGN:
        raise RevocationError(
            f"the signing key is a {signer.use} key, not a sign key",
            RevocationRefusal.NOT_A_SIGN_KEY,
        )
    if signer.state(now) in (KeyState.REVOKED, KeyState.RETIRED):
        raise RevocationError(
            f"the signing key is {signer.state(now)}", RevocationRefusal.SIGNING_KEY_UNUSABLE
        )
    if statement.revoked_at > now + skew or (
        statement.compromised_since is not None
        and statement.compromised_since > statement.revoked_at
    ):
        raise RevocationError("the statement's times are impossible", RevocationRefusal.BAD_TIMES)
    verify_ed25519(signer.public, statement.signed_bytes(), statement.signature)


def encode_revocation(statement: KeyRevocation) -> bytes:
    return msgspec.json.encode(statement) + b"\n"


def decode_revocation(data: bytes) -> KeyRevocation:
    """Decode a statement file; ``KeysError(malformed_key)`` if it does not fit the schema."""
    try:
        return _DECODER.decode(data)
    except msgspec.DecodeError as exc:
        raise KeysError(
            f"not a key revocation statement: {exc}", KeysReason.MALFORMED_KEY
        ) from None


def statement_hash(statement: KeyRevocation) -> str:
    """SHA-256 (hex) of the statement's canonical encoding: its name in stores and audit logs."""
    return hashlib.sha256(encode_revocation(statement)).hexdigest()


def _revoked(key: DirectoryKey, statements: list[KeyRevocation]) -> DirectoryKey:
    revoked = [s.revoked_at for s in statements]
    known = [s.compromised_since for s in statements]
    if key.revoked_at is not None:
        revoked.append(key.revoked_at)
        known.append(key.compromised_since)
    elif key.compromised_since is not None:
        known.append(key.compromised_since)
    # ``None`` is an unknown compromise time: every signature of the key is void, the widest
    # window there is, so it wins over any known time.
    since = None if any(c is None for c in known) else min(c for c in known if c is not None)
    return msgspec.structs.replace(key, revoked_at=min(revoked), compromised_since=since)


def with_revocations(directory: Directory, statements: Iterable[KeyRevocation]) -> Directory:
    """``directory`` with each statement's revocation laid over the key it names (module rules).

    The statements must have been verified (``verify_revocation``) when they were recorded; one
    naming a key or partner the directory does not list (a later version dropped it) is
    ignored. Returns ``directory`` itself when no statement applies.
    """
    by_kid: dict[str, list[KeyRevocation]] = {}
    for statement in statements:
        by_kid.setdefault(statement.kid, []).append(statement)
    changed = False
    partners = []
    for partner in directory.partners():
        keys = []
        for key in partner.keys:
            mine = [s for s in by_kid.get(key.kid, []) if s.partner == partner.id]
            keys.append(_revoked(key, mine) if mine else key)
            changed = changed or bool(mine)
        partners.append(msgspec.structs.replace(partner, keys=tuple(keys)))
    if not changed:
        return directory
    contents = msgspec.structs.replace(directory.contents, partners=tuple(partners))
    return Directory(contents, version=directory.version)
