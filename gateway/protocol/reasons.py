"""Refusal reason codes: the one list every refusal, rejection and receipt failure draws from.

Rules kept here:

* ``Reason`` is the single enum. A value is a stable, lowercase ``snake_case`` code; codes are
  added, never renamed or reused (they are in audit entries, metrics labels, partner logs).
* Every reason has a one-line meaning, whether it is **transient** (retry later, possibly after
  resealing with fresh keys — the adapter keeps the message in its outbox) or **final** (a person
  must look; retrying the same thing fails the same way), an HTTP status, and a stable problem
  ``type`` URI ``https://ketenpost.nl/problems/<code>`` (RFC 9457). The URI base is fixed for the
  protocol's lifetime; it names the problem, it need not resolve.
* Refusals travel as ``application/problem+json`` built by ``problem()``: the standard members
  plus ``reason`` (the code) and ``transient``. ``detail`` is for a person and never carries
  plaintext, subject identities or key material.
* Four scopes share the enum: the relay decision (HTTP refusals of an envelope, in the order
  of DESIGN.md "The relay decision"), receipt handling (``POST /v1/receipts``, sender events),
  a partner's own key revocation statement (``POST /v1/keys/revocations``; a signature that
  does not verify is ``bad_revocation_signature``, as for a token revocation), and recipient
  rejections (carried inside a signed ``Rejection``; their ``RejectionReason``
  values are a subset of ``Reason``).

Decisions recorded here (see the meanings below):

* ``directory_expired`` is **transient** (503): nothing is wrong with the message; it will be
  accepted unchanged once the key authority renews the directory's timestamp. A final refusal
  would make adapters drop valid messages during a key-authority outage.
* ``policy_mismatch`` is **final** (403): the token names a covenant policy other than the one
  in the current directory. A token records a legal-basis decision taken under one covenant
  text; when the text changes, the coordinator re-decides by issuing a superseding token.
* Key-related refusals that a directory refresh and a reseal cure (``key_not_yet_active``,
  ``key_retired``, ``recipient_key_invalid``) are **transient**: sender and gateway may hold
  different directory versions during a rotation. A revoked or compromised sender key is final.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

PROBLEM_TYPE_BASE: Final = "https://ketenpost.nl/problems/"
PROBLEM_CONTENT_TYPE: Final = "application/problem+json"


class Reason(enum.StrEnum):
    """Every refusal, rejection and receipt-failure code. See ``REASON_INFO`` for meanings."""

    # -- Relay decision, in DESIGN.md's order. -------------------------------------------
    ENVELOPE_TOO_LARGE = "envelope_too_large"
    TOO_MANY_RECIPIENTS = "too_many_recipients"
    RATE_LIMITED = "rate_limited"
    MALFORMED_ENVELOPE = "malformed_envelope"
    UNKNOWN_VERSION = "unknown_version"
    UNKNOWN_SUITE = "unknown_suite"
    DIRECTORY_EXPIRED = "directory_expired"
    DIRECTORY_CHANGING = "directory_changing"
    UNKNOWN_SENDER = "unknown_sender"
    SENDER_MISMATCH = "sender_mismatch"
    BAD_SIGNATURE = "bad_signature"
    KEY_NOT_YET_ACTIVE = "key_not_yet_active"
    KEY_RETIRED = "key_retired"
    KEY_REVOKED = "key_revoked"
    KEY_COMPROMISED = "key_compromised"
    CREATED_IN_FUTURE = "created_in_future"
    EXPIRED = "expired"
    DUPLICATE_ID = "duplicate_id"
    NO_TOKEN = "no_token"
    TOKEN_NOT_REGISTERED = "token_not_registered"
    TOKEN_HASH_MISMATCH = "token_hash_mismatch"
    TOKEN_MALFORMED = "token_malformed"
    TOKEN_BAD_SIGNATURE = "token_bad_signature"
    TOKEN_ISSUER_NOT_COORDINATING_MUNICIPALITY = "token_issuer_not_coordinating_municipality"
    TOKEN_ISSUER_NOT_COORDINATOR = "token_issuer_not_coordinator"
    TOKEN_ISSUER_KEY_INVALID = "token_issuer_key_invalid"
    TOKEN_ISSUER_KEY_COMPROMISED = "token_issuer_key_compromised"
    TOKEN_NOT_YET_VALID = "token_not_yet_valid"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_REVOKED = "token_revoked"
    TOKEN_SUPERSEDED = "token_superseded"
    POLICY_MISMATCH = "policy_mismatch"
    TOKEN_PRIVATE_PART_MISMATCH = "token_private_part_mismatch"
    EXPIRES_AFTER_TOKEN = "expires_after_token"
    SUBJECT_NOT_IN_TOKEN = "subject_not_in_token"
    SUBJECT_NOT_INFORMED = "subject_not_informed"
    SENDER_NOT_PARTICIPANT = "sender_not_participant"
    RECIPIENT_NOT_PARTICIPANT = "recipient_not_participant"
    UNKNOWN_RECIPIENT = "unknown_recipient"
    TYPE_NOT_ALLOWED = "type_not_allowed"
    RECIPIENT_KEY_INVALID = "recipient_key_invalid"
    POLICY_INVALID = "policy_invalid"
    STORE_UNAVAILABLE = "store_unavailable"
    AUDIT_UNAVAILABLE = "audit_unavailable"
    # -- Approach registration and revocation. -------------------------------------------
    TOKEN_CONFLICT = "token_conflict"
    BAD_REVOCATION_SIGNATURE = "bad_revocation_signature"
    REVOCATION_NOT_ISSUER = "revocation_not_issuer"
    # -- A partner's own key revocation statement (``POST /v1/keys/revocations``). --------
    KEY_REVOCATION_MALFORMED = "key_revocation_malformed"
    KEY_REVOCATION_UNKNOWN_KEY = "key_revocation_unknown_key"
    KEY_REVOCATION_SIGNER_INVALID = "key_revocation_signer_invalid"
    # -- Receipts, rejections and sender events. -----------------------------------------
    BAD_RECEIPT_SIGNATURE = "bad_receipt_signature"
    NOT_RECIPIENT = "not_recipient"
    RECEIPT_MISMATCH = "receipt_mismatch"
    UNKNOWN_MESSAGE = "unknown_message"
    # -- A recipient's rejection of a delivered message (see ``RejectionReason``). --------
    CANNOT_OPEN = "cannot_open"
    NOT_ADDRESSED = "not_addressed"
    BAD_INNER_SIGNATURE = "bad_inner_signature"
    SCHEMA_INVALID = "schema_invalid"
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
    SUBJECTS_MISMATCH = "subjects_mismatch"
    TOKEN_INVALID = "token_invalid"
    POLICY_CHECK_FAILED = "policy_check_failed"

    @property
    def info(self) -> ReasonInfo:
        return REASON_INFO[self]

    @property
    def meaning(self) -> str:
        return REASON_INFO[self].meaning

    @property
    def transient(self) -> bool:
        return REASON_INFO[self].transient

    @property
    def status(self) -> int:
        return REASON_INFO[self].status

    @property
    def type_uri(self) -> str:
        return PROBLEM_TYPE_BASE + self.value


class RejectionReason(enum.StrEnum):
    """Why a recipient rejects a delivered message. Every value is also a ``Reason`` value.

    A rejection ends the delivery (the ciphertext is deleted) and goes to the sender as a
    signed sender event; the recipient's system never ingests the message.
    """

    CANNOT_OPEN = "cannot_open"
    NOT_ADDRESSED = "not_addressed"
    BAD_INNER_SIGNATURE = "bad_inner_signature"
    SCHEMA_INVALID = "schema_invalid"
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
    SUBJECTS_MISMATCH = "subjects_mismatch"
    TOKEN_INVALID = "token_invalid"
    POLICY_CHECK_FAILED = "policy_check_failed"

    @property
    def reason(self) -> Reason:
        return Reason(self.value)


@dataclass(frozen=True, slots=True)
class ReasonInfo:
    meaning: str
    transient: bool
    status: int


def _final(status: int, meaning: str) -> ReasonInfo:
    return ReasonInfo(meaning=meaning, transient=False, status=status)


def _transient(status: int, meaning: str) -> ReasonInfo:
    return ReasonInfo(meaning=meaning, transient=True, status=status)


# Recipient rejections are never an HTTP response of the relay; 422 is the status used when a
# client library renders one as a problem document for its user.
_REJECTED = 422

R = Reason
REASON_INFO: Final[Mapping[Reason, ReasonInfo]] = MappingProxyType(
    {
        R.ENVELOPE_TOO_LARGE: _final(413, "The envelope exceeds the gateway's size limit."),
        R.TOO_MANY_RECIPIENTS: _final(400, "The envelope names more recipients than allowed."),
        R.RATE_LIMITED: _transient(
            429, "The sender exceeded its submission rate; retry after Retry-After."
        ),
        R.MALFORMED_ENVELOPE: _final(400, "The envelope or its header does not decode."),
        R.UNKNOWN_VERSION: _final(400, "The envelope's protocol version is not supported."),
        R.UNKNOWN_SUITE: _final(400, "The envelope's cipher suite is not supported."),
        R.DIRECTORY_EXPIRED: _transient(
            503, "The gateway's key directory has expired; it accepts again once renewed."
        ),
        R.DIRECTORY_CHANGING: _transient(
            503, "The gateway is switching to a new key directory version; retry shortly."
        ),
        R.UNKNOWN_SENDER: _final(
            401, "The TLS client identity is not a partner in the key directory."
        ),
        R.SENDER_MISMATCH: _final(
            403, "The header's sender is not the partner identified by the TLS connection."
        ),
        R.BAD_SIGNATURE: _final(
            403, "The sender's signature over the header does not verify under its listed key."
        ),
        R.KEY_NOT_YET_ACTIVE: _transient(
            403, "The sender's signing key is not active yet at the gateway; retry or reseal."
        ),
        R.KEY_RETIRED: _transient(
            403, "The sender's signing key is retired; reseal with its successor."
        ),
        R.KEY_REVOKED: _final(403, "The sender's signing key is revoked."),
        R.KEY_COMPROMISED: _final(
            403, "The sender's signing key is revoked as compromised at this time."
        ),
        R.CREATED_IN_FUTURE: _final(
            400, "created_at lies further in the future than the allowed clock skew."
        ),
        R.EXPIRED: _final(
            400, "expires_at has passed or lies beyond the maximum message lifetime."
        ),
        R.DUPLICATE_ID: _final(409, "A message with this id but other bytes was already accepted."),
        R.NO_TOKEN: _final(403, "The envelope names no approach token."),
        R.TOKEN_NOT_REGISTERED: _transient(
            409, "The named approach token is not registered at the gateway (yet)."
        ),
        R.TOKEN_HASH_MISMATCH: _final(
            403, "The token hash in the header is not the hash of the registered token."
        ),
        R.TOKEN_MALFORMED: _final(400, "The approach token does not decode or is inconsistent."),
        R.TOKEN_BAD_SIGNATURE: _final(
            403, "The approach token's signature does not verify: it is forged or damaged."
        ),
        R.TOKEN_ISSUER_NOT_COORDINATING_MUNICIPALITY: _final(
            403, "The token was not signed by a token key of its coordinating municipality."
        ),
        R.TOKEN_ISSUER_NOT_COORDINATOR: _final(
            403, "The token's coordinating municipality is not a coordinator in the directory."
        ),
        R.TOKEN_ISSUER_KEY_INVALID: _final(
            403, "The token key was not usable when the token was registered."
        ),
        R.TOKEN_ISSUER_KEY_COMPROMISED: _final(
            403, "The token key is revoked and its compromise window covers this token."
        ),
        R.TOKEN_NOT_YET_VALID: _final(403, "The approach token's validity has not started."),
        R.TOKEN_EXPIRED: _final(403, "The approach token's validity has ended."),
        R.TOKEN_REVOKED: _final(403, "The approach token was revoked by its coordinator."),
        R.TOKEN_SUPERSEDED: _final(403, "The approach token was replaced by a newer token."),
        R.POLICY_MISMATCH: _final(
            403, "The token was issued under another covenant policy than the current one."
        ),
        R.TOKEN_PRIVATE_PART_MISMATCH: _final(
            403, "The token's private part does not match the token's commitment."
        ),
        R.EXPIRES_AFTER_TOKEN: _final(
            400, "The message's expires_at lies after the token's valid_until."
        ),
        R.SUBJECT_NOT_IN_TOKEN: _final(
            403, "A subject of the message is not a subject of the approach token."
        ),
        R.SUBJECT_NOT_INFORMED: _final(
            403, "A subject is not informed yet, or the deferral of informing has ended."
        ),
        R.SENDER_NOT_PARTICIPANT: _final(403, "The sender is not a participant of the approach."),
        R.RECIPIENT_NOT_PARTICIPANT: _final(
            403, "A recipient is not a participant of the approach."
        ),
        R.UNKNOWN_RECIPIENT: _final(400, "A recipient is not a partner in the key directory."),
        R.TYPE_NOT_ALLOWED: _final(
            403, "The covenant policy and the token do not allow this type between these roles."
        ),
        R.RECIPIENT_KEY_INVALID: _transient(
            409, "A recipient key is unknown or not usable; refresh the directory and reseal."
        ),
        R.POLICY_INVALID: _final(500, "The covenant policy does not decode or is inconsistent."),
        R.STORE_UNAVAILABLE: _transient(503, "The gateway's store cannot commit right now."),
        R.AUDIT_UNAVAILABLE: _transient(
            503, "The audit entry cannot be written; nothing is relayed without one."
        ),
        R.TOKEN_CONFLICT: _final(
            409, "A different token with this id, or a token superseding twice, is registered."
        ),
        R.BAD_REVOCATION_SIGNATURE: _final(
            403, "The revocation statement's signature does not verify."
        ),
        R.REVOCATION_NOT_ISSUER: _final(403, "Only the token's issuing coordinator may revoke it."),
        R.KEY_REVOCATION_MALFORMED: _final(
            400, "The key revocation statement does not decode, or its times are impossible."
        ),
        R.KEY_REVOCATION_UNKNOWN_KEY: _final(
            422, "The key revocation names a key or partner that the directory does not list."
        ),
        R.KEY_REVOCATION_SIGNER_INVALID: _final(
            403,
            "The key revocation is not signed by another usable sign key of the key's partner.",
        ),
        R.BAD_RECEIPT_SIGNATURE: _final(
            403, "A receipt, rejection or sender event is not validly signed by its signer."
        ),
        R.NOT_RECIPIENT: _final(403, "The receipt's signer is not a recipient of the message."),
        R.RECEIPT_MISMATCH: _final(
            400, "The receipt names another message id or header hash than expected."
        ),
        R.UNKNOWN_MESSAGE: _final(404, "No pending delivery of this message to this recipient."),
        R.CANNOT_OPEN: _final(_REJECTED, "The recipient could not unwrap or decrypt the message."),
        R.NOT_ADDRESSED: _final(
            _REJECTED, "The recipient's key is not listed in the header: surreptitious forwarding."
        ),
        R.BAD_INNER_SIGNATURE: _final(
            _REJECTED, "The sender's inner signature over the plaintext does not verify."
        ),
        R.SCHEMA_INVALID: _final(
            _REJECTED, "The body does not decode as the case-message schema of its type."
        ),
        R.UNSUPPORTED_SCHEMA_VERSION: _final(
            _REJECTED, "The recipient does not accept this case-message schema version."
        ),
        R.SUBJECTS_MISMATCH: _final(
            _REJECTED, "The subjects in the body differ from the subjects in the header."
        ),
        R.TOKEN_INVALID: _final(
            _REJECTED, "The recipient's own check of the approach token failed."
        ),
        R.POLICY_CHECK_FAILED: _final(
            _REJECTED, "The recipient's own check of the covenant policy failed."
        ),
    }
)
del R


def problem(
    reason: Reason,
    detail: str | None = None,
    *,
    instance: str | None = None,
) -> dict[str, str | int | bool]:
    """An RFC 9457 problem document for ``reason``, ready for ``application/problem+json``.

    Members: ``type`` (the stable URI), ``title`` (the meaning), ``status``, ``detail`` (when
    given), ``instance`` (when given), and the extensions ``reason`` and ``transient``.
    """
    doc: dict[str, str | int | bool] = {
        "type": reason.type_uri,
        "title": reason.meaning,
        "status": reason.status,
    }
    if detail is not None:
        doc["detail"] = detail
    if instance is not None:
        doc["instance"] = instance
    doc["reason"] = reason.value
    doc["transient"] = reason.transient
    return doc


def reasons_markdown() -> str:
    """The reason table for ``docs/protocol.md`` and the OpenAPI description."""
    lines = [
        "| reason | status | transient | meaning |",
        "|---|---|---|---|",
    ]
    for reason in Reason:
        info = reason.info
        lines.append(
            f"| `{reason.value}` | {info.status} | {'yes' if info.transient else 'no'} "
            f"| {info.meaning} |"
        )
    lines.append("")
    lines.append(f"Each reason's problem `type` is `{PROBLEM_TYPE_BASE}<reason>`.")
    return "\n".join(lines) + "\n"
