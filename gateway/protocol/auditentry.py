"""Audit entries: what the gateway records per decision, and how an entry becomes a Merkle leaf.

Rules kept here:

* Metadata only (DESIGN.md "Audit log"): time, decision, reason, sender, recipients, message
  type, token id, subject pseudonyms, policy hash, header hash, trace id. Never a body, a name,
  a BSN or key material.
* A refusal **before the sender's signature verified** records only the TLS identity, the header
  hash and the reason: everything else in such a header is unauthenticated, and recording it
  would let anyone plant a subject pseudonym or a partner's name in the log (and in a youth's
  data-subject access report). ``AuditEntry`` refuses to be built otherwise.
* An entry is encoded once, as msgpack (``encode_entry``), and those exact bytes are stored;
  verification uses the stored bytes, never a re-encoding. Defaults are omitted from the
  encoding, so fields added later (with defaults) leave every older entry's bytes unchanged.
* Salting: each entry has its own 32-byte random salt, stored **beside** the entry, not inside
  it. The Merkle leaf data is ``labelled_hash(AUDIT_ENTRY, salt, entry bytes)``; the tree's leaf
  hash is then ``SHA-256(0x00 ‖ leaf data)`` (``merkle.leaf_hash``). At the token's retention
  deadline the entry and its salt are deleted and the leaf stays: the tree and every checkpoint
  still verify, and without the salt the leaf reveals nothing, even about an entry whose
  contents are guessable (few partners, few types, a known day).
* ``verify_entry`` raises ``AuditEntryError``; it never returns a bool.
"""

from __future__ import annotations

import enum
import hmac
import os
from collections import deque
from dataclasses import dataclass
from typing import Annotated, Final

import msgspec

from gateway.protocol.labels import AUDIT_ENTRY, labelled_hash
from gateway.protocol.merkle import ConsistencyProof, InclusionProof, leaf_hash
from gateway.protocol.types import (
    MessageType,
    PartnerId,
    Pseudonym,
    Sha256Hex,
    TokenId,
    UnixTime,
)

# Proofs travel with entries in receipts and subject-access reports; they are defined with the
# tree in ``merkle`` and named here too so receipt code finds them beside the entry model.
__all__ = [
    "SALT_LEN",
    "AuditDecision",
    "AuditEntry",
    "AuditEntryError",
    "AuditEntryReason",
    "ConsistencyProof",
    "InclusionProof",
    "SealedEntry",
    "decode_entry",
    "encode_entry",
    "entry_leaf",
    "new_entry_leaf",
    "new_salt",
    "seal_entry",
    "verify_entry",
]

SALT_LEN: Final = 32
MAX_ENTRY_BYTES: Final = 64 * 1024

# A reason code (``reasons.Reason`` values, and sender-event reasons): snake_case, short.
ReasonCode = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
# The W3C trace id (the 32-hex middle of a ``traceparent``): links partners' processing logs.
TraceId = Annotated[str, msgspec.Meta(pattern=r"^(?!0{32}$)[0-9a-f]{32}$")]
# Who a TLS client certificate says the caller is: a partner id, or, for a certificate that
# maps to no partner, the 64-hex ``tls`` kid of its public key.
TlsIdentity = Annotated[str, msgspec.Meta(pattern=r"^([a-z][a-z0-9-]{1,62}|[0-9a-f]{64})$")]
Recipients = Annotated[tuple[PartnerId, ...], msgspec.Meta(max_length=64)]
Subjects = Annotated[tuple[Pseudonym, ...], msgspec.Meta(max_length=256)]
Count = Annotated[int, msgspec.Meta(ge=0)]


class AuditDecision(enum.StrEnum):
    """What happened. Values are stable and only ever added."""

    ACCEPTED = "accepted"  # an envelope was stored for delivery (the 202)
    REFUSED = "refused"  # an envelope was refused (``reason`` says why)
    DELIVERED = "delivered"  # a recipient's signed delivery receipt ended a delivery
    REJECTED = "rejected"  # a recipient's signed rejection ended a delivery
    EXPIRED = "expired"  # an undelivered message reached its expires_at and was deleted
    PURGED = "purged"  # undelivered/leased messages deleted because their token was revoked
    REGISTERED = "registered"  # an approach token was registered (or superseded another)
    REVOKED = "revoked"  # the issuing coordinator revoked an approach token
    RETENTION = "retention"  # a token's retention deadline passed: its entries were deleted
    RESTORE = "restore"  # the store was restored from a backup (so witnesses can place a fork)
    # A partner's own key revocation statement was recorded: ``sender`` is the partner that
    # carried it in, ``recipients`` the partner whose key it revokes, ``header_hash`` the
    # statement's hash (``keys.revocation.statement_hash``; the statement is served at
    # ``GET /v1/keys/revocations``).
    KEY_REVOKED = "key_revoked"


class AuditEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One audit log entry. Times are the gateway's (``accepted_at`` for an acceptance)."""

    time: UnixTime
    decision: AuditDecision
    reason: ReasonCode | None = None
    sender: PartnerId | None = None
    recipients: Recipients = ()
    message_type: MessageType | None = None
    token_id: TokenId | None = None
    subjects: Subjects = ()
    policy_hash: Sha256Hex | None = None
    header_hash: Sha256Hex | None = None
    trace_id: TraceId | None = None
    # Set only for a refusal before the sender's signature verified (see the module rules).
    tls_identity: TlsIdentity | None = None
    # How many items an event covers: messages expired or purged, entries deleted at retention.
    count: Count | None = None

    def __post_init__(self) -> None:
        if self.tls_identity is not None:
            if self.decision is not AuditDecision.REFUSED:
                raise ValueError("only a refusal records a TLS identity")
            unverified = (
                self.sender,
                self.recipients,
                self.message_type,
                self.token_id,
                self.subjects,
                self.policy_hash,
                self.trace_id,
                self.count,
            )
            if any(v not in (None, ()) for v in unverified):
                raise ValueError(
                    "a refusal before signature verification records only TLS identity, "
                    "header hash and reason"
                )
        if self.decision is AuditDecision.REFUSED and self.reason is None:
            raise ValueError("a refusal records its reason")

    @classmethod
    def unverified_refusal(
        cls, time: int, tls_identity: str, header_hash: str | None, reason: str
    ) -> AuditEntry:
        """The entry for a refusal before the sender's signature verified."""
        return cls(
            time=time,
            decision=AuditDecision.REFUSED,
            reason=reason,
            tls_identity=tls_identity,
            header_hash=header_hash,
        )


class AuditEntryReason(enum.StrEnum):
    """Why an audit entry failed. Values are stable: they appear in logs."""

    MALFORMED = "audit_entry_malformed"
    # The entry (or its salt) is not the one the leaf commits to.
    LEAF_MISMATCH = "audit_entry_leaf_mismatch"


class AuditEntryError(Exception):
    """An audit entry does not decode, or does not match its leaf."""

    def __init__(self, message: str, reason: AuditEntryReason) -> None:
        super().__init__(message)
        self.reason = reason


_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(AuditEntry)


def encode_entry(entry: AuditEntry) -> bytes:
    """The entry's msgpack bytes: encode once, store these, hash these.

    Raises ``AuditEntryError`` (``MALFORMED``) for an entry that would not decode again:
    msgspec checks field constraints when decoding, not when a struct is built, and an entry
    the log cannot read back is worse than none.
    """
    data = _ENCODER.encode(entry)
    decode_entry(data)
    return data


def decode_entry(data: bytes) -> AuditEntry:
    """Decode stored entry bytes; raises ``AuditEntryError`` (``MALFORMED``)."""
    if len(data) > MAX_ENTRY_BYTES:
        raise AuditEntryError("audit entry is too large", AuditEntryReason.MALFORMED)
    try:
        return _DECODER.decode(data)
    except msgspec.DecodeError as e:
        raise AuditEntryError(f"audit entry does not decode: {e}", AuditEntryReason.MALFORMED)


# Salts are drawn from the operating system's CSPRNG ``_SALTS_PER_DRAW`` at a time: one
# ``os.urandom`` system call per entry was about 1 % of the event loop. Each 32-byte slice of a
# draw is an independent uniform value, as a draw of its own would be, and is handed out once:
# ``deque.popleft`` is atomic, so the event loop and the store's writer thread never get the
# same slice. A forked child empties the deque before it runs any code of its own, so parent
# and child never share the slices left over at the fork.
_SALTS_PER_DRAW: Final = 128
_salts: deque[bytes] = deque()
os.register_at_fork(after_in_child=_salts.clear)


def new_salt() -> bytes:
    """A fresh 32-byte random salt for one entry, from ``os.urandom``; never handed out twice
    (also across threads, and across a fork)."""
    while True:
        try:
            return _salts.popleft()
        except IndexError:  # empty (another thread may empty a refill before we pop: loop)
            block = os.urandom(SALT_LEN * _SALTS_PER_DRAW)
            _salts.extend([block[i : i + SALT_LEN] for i in range(0, len(block), SALT_LEN)])


def entry_leaf(entry_bytes: bytes, salt: bytes) -> bytes:
    """The Merkle leaf data of an entry: ``labelled_hash(AUDIT_ENTRY, salt, entry bytes)``."""
    if len(salt) != SALT_LEN:
        raise AuditEntryError("an audit salt is 32 bytes", AuditEntryReason.MALFORMED)
    return labelled_hash(AUDIT_ENTRY, salt, entry_bytes)


def new_entry_leaf(entry: AuditEntry | bytes, salt: bytes) -> bytes:
    """The leaf data for ``entry`` (a struct, encoded here, or its stored bytes) and ``salt``."""
    data = entry if isinstance(entry, bytes) else encode_entry(entry)
    return entry_leaf(data, salt)


def verify_entry(entry: AuditEntry | bytes, salt: bytes, leaf: bytes) -> None:
    """Check that ``entry`` with ``salt`` is what leaf data ``leaf`` commits to.

    Pass the stored entry **bytes** where you have them: a struct is re-encoded, which gives the
    same bytes only while the struct's definition encodes it the same way. Raises
    ``AuditEntryError``: ``LEAF_MISMATCH`` when entry or salt were changed, ``MALFORMED`` for a
    salt of the wrong length.
    """
    if not hmac.compare_digest(new_entry_leaf(entry, salt), leaf):
        raise AuditEntryError("audit entry does not match its leaf", AuditEntryReason.LEAF_MISMATCH)


@dataclass(frozen=True)
class SealedEntry:
    """An entry ready to store: its exact bytes and salt (beside the tree, deleted at
    retention), its leaf data (kept) and its Merkle leaf hash (appended to the tree)."""

    entry_bytes: bytes
    salt: bytes
    leaf: bytes

    @property
    def leaf_hash(self) -> bytes:
        return leaf_hash(self.leaf)


def seal_entry(entry: AuditEntry, salt: bytes | None = None) -> SealedEntry:
    """Encode ``entry`` once and commit to it with a fresh (or the given) salt."""
    salt = new_salt() if salt is None else salt
    data = encode_entry(entry)
    return SealedEntry(entry_bytes=data, salt=salt, leaf=entry_leaf(data, salt))
