"""The envelope: end-to-end encryption of one case message to one or more partners.

Adapters ``seal`` and ``open_envelope``; the gateway ``verify``-ies (DESIGN.md "The envelope").
The gateway never sees plaintext, and nothing here relies on the gateway being honest: a
recipient repeats every check the gateway made before it decrypts.

Rules kept here:

* **Wire.** An envelope is the msgpack map ``{header: bin, ciphertext: bin, signature: bin}``
  (content type ``application/vnd.ketenpost.envelope+msgpack``). ``header`` holds the *exact
  signed bytes* of a msgpack-encoded ``Header``; they are carried opaque and never re-encoded.
  A header must be canonical (msgspec's encoding of the struct it decodes to: fields in
  declaration order, shortest integer, string and binary forms), so one header has one byte
  form and one hash. Header strings use only ``[0-9a-z+-]``; times are integer Unix seconds.
* **Fixed version and suite.** ``version`` is 1 and ``suite`` is ``SUITE``; anything else is
  refused before the rest of the header is read (no negotiation, no downgrade).
* **Header hash.** ``header_hash = SHA-256(framed(HEADER_HASH, header bytes))``. It is the AEAD's
  associated data, the input of both signatures, and the name of the message in the audit log.
* **Payload.** A fresh random 32-byte content key per message. ``ciphertext = nonce (24 random
  bytes) ‖ XChaCha20-Poly1305(content key, nonce, ad=header hash, plaintext) (incl. 16-byte
  tag)``; ``plaintext`` is the msgpack map ``{body: bin, signature: bin}`` where ``body`` is the
  case message (JSON) and ``signature`` the inner signature.
* **Key commitment.** ``HKDF-SHA256(content key, info=framed(KEY_COMMITMENT, message id))``, 32
  bytes, in the header; a recipient compares it in constant time *before* decrypting, because
  the AEAD alone does not commit to its key.
* **Stanzas.** Per recipient, the content key is wrapped with HPKE base mode
  (``MLKEM768_X25519``, ``HKDF_SHA256``, ``CHACHA20_POLY1305``) to the recipient's ``encrypt``
  key, with ``info = framed(HPKE_WRAP, message id, sender kid, recipient kid)``. A stanza is
  exactly 1,168 bytes; any other length is refused when the header is decoded, before any
  decryption.
* **Signatures** (both by the sender's ``sign`` key, Ed25519):
  outer ``= Sign(framed(ENVELOPE_OUTER, header hash, SHA-256(ciphertext)))`` — the gateway's
  check, independent of message size; inner ``= Sign(framed(ENVELOPE_INNER, header hash,
  SHA-256(body)))`` inside the ciphertext, so a recipient can prove what it received. The
  header hash covers the recipient list, so the inner signature names the intended recipients:
  a recipient that re-seals the body to a third party cannot carry the inner signature along.
* **Body binding.** Every case-message body is a JSON object with a ``type`` tag and a
  ``subjects`` list; ``seal`` and ``open_envelope`` both require them to equal the header's
  ``message_type`` and ``subjects`` (as a set), so the gateway's decision, made on the header,
  is a decision about the body. Validating the rest of the body is the caller's job.
* **Time.** Every check that depends on time takes it as an argument. The gateway judges the
  sender key at its receive time; a recipient judges it at the gateway's audited
  ``accepted_at`` (never a sender-chosen time) and refuses a message at or after ``expires_at``.
* **Errors.** Every check raises an ``EnvelopeError`` subclass carrying an ``EnvelopeReason``;
  none returns a bool. Reasons stay local to this module; the relay maps them to its refusal
  codes.
* **Message ids** are derived by the sender, never random:
  ``hex(HMAC-SHA256(outbox key, framed(MESSAGE_ID, source record id)))``.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Final

import msgspec
from cryptography.hazmat.primitives import hpke

from gateway.protocol import _envelope_crypto as _crypto
from gateway.protocol import labels
from gateway.protocol.types import (
    Kid,
    MessageId,
    MessageType,
    PartnerId,
    Pseudonym,
    SchemaVersion,
    Sha256Hex,
    TokenId,
    UnixTime,
)
from keys import (
    Algorithm,
    BadSignatureError,
    Directory,
    DirectoryError,
    DirectoryKey,
    Ed25519KeyPair,
    HybridKemKeyPair,
    KeysError,
    KeysReason,
    KeyStateError,
    KeyUse,
    check_signature_time,
    check_usable,
    hpke_public_key,
    verify_ed25519,
)

CONTENT_TYPE: Final = "application/vnd.ketenpost.envelope+msgpack"
VERSION: Final = 1
# One name for the whole suite: payload AEAD, key wrap (HPKE KEM/KDF/AEAD), signatures.
SUITE: Final = "xchacha20poly1305+hpke-base-mlkem768x25519-hkdfsha256-chacha20poly1305+ed25519"
STANZA_LEN: Final = _crypto.STANZA_LEN  # 1,168 bytes
SIGNATURE_LEN: Final = 64
COMMITMENT_LEN: Final = _crypto.COMMITMENT_LEN

# Size bounds, checked while decoding so a hostile envelope cannot make a decoder allocate
# without limit. A covenant has about ten partners; a message names a handful of youths.
MAX_RECIPIENTS: Final = 32
MAX_SUBJECTS: Final = 256
MAX_BODY_BYTES: Final = 8 * 1024 * 1024
MAX_HEADER_BYTES: Final = 64 * 1024
# Nonce, tag and the msgpack framing of the inner map stay well below 1 KiB.
MAX_CIPHERTEXT_BYTES: Final = MAX_BODY_BYTES + 1024
MAX_ENVELOPE_BYTES: Final = MAX_HEADER_BYTES + MAX_CIPHERTEXT_BYTES + 1024
MIN_OUTBOX_KEY_BYTES: Final = 32

# W3C Trace Context ``traceparent``, version 00: trace id and parent id are not all zero.
# ``\Z``, not ``$``: Python's ``$`` also matches before a final newline.
TRACEPARENT_PATTERN: Final = r"^00-(?!0{32}-)[0-9a-f]{32}-(?!0{16}-)[0-9a-f]{16}-[0-9a-f]{2}\Z"
TraceParent = Annotated[str, msgspec.Meta(pattern=TRACEPARENT_PATTERN)]
_MESSAGE_ID_RE: Final = re.compile(r"[0-9a-f]{64}")
# Every string in a header (ids, kids, hashes, pseudonyms, suite, type, trace id) is written in
# these characters. The shared patterns of ``types`` end in ``$``, which lets a final newline
# through; this one check closes that for the whole header.
_HEADER_STRING_RE: Final = re.compile(r"[0-9a-z+-]+")


class EnvelopeReason(enum.StrEnum):
    """Why an envelope was refused. Values are stable: they appear in logs and rejections."""

    # Decoding (anyone can check these; the gateway does, first).
    MALFORMED = "malformed"
    TOO_LARGE = "too_large"
    UNKNOWN_VERSION = "unknown_version"
    UNKNOWN_SUITE = "unknown_suite"
    STANZA_LENGTH = "stanza_length"
    # The outer signature and the sender's key.
    UNKNOWN_SENDER_KEY = "unknown_sender_key"
    SENDER_KEY_INVALID = "sender_key_invalid"
    BAD_SIGNATURE = "bad_signature"
    # Opening (the recipient's checks).
    EXPIRED = "expired"
    NOT_A_RECIPIENT = "not_a_recipient"
    NO_RECIPIENT_KEY = "no_recipient_key"
    UNWRAP_FAILED = "unwrap_failed"
    KEY_COMMITMENT = "key_commitment"
    DECRYPT_FAILED = "decrypt_failed"
    INNER_MALFORMED = "inner_malformed"
    INNER_SIGNATURE = "inner_signature"
    BODY_MALFORMED = "body_malformed"
    TYPE_MISMATCH = "type_mismatch"
    SUBJECTS_MISMATCH = "subjects_mismatch"
    # Sealing refused its inputs.
    WRONG_KEY_USE = "wrong_key_use"


class EnvelopeError(Exception):
    """Base of every envelope failure.

    ``reason`` is machine-readable; ``key_reason`` carries the ``keys`` reason when a key lookup
    or key state check caused the failure (for example ``key_revoked``). ``str(error)`` is a
    sentence for a person and never contains key material or plaintext.
    """

    def __init__(
        self, message: str, reason: EnvelopeReason, key_reason: KeysReason | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.key_reason = key_reason


class MalformedEnvelopeError(EnvelopeError):
    """The bytes are not an envelope of this version and suite, or break its structure."""


class EnvelopeSignatureError(EnvelopeError):
    """The sender's key is unknown or not usable, or the outer signature does not verify."""


class EnvelopeOpenError(EnvelopeError):
    """A recipient could not open the envelope, or what it found inside does not bind."""


class SealError(EnvelopeError):
    """``seal`` refused its inputs: it never produces an envelope that would be refused."""


# --- Wire structures -----------------------------------------------------------------------


class RecipientEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One recipient: its partner id, the kid of its ``encrypt`` key, and its HPKE stanza."""

    partner: PartnerId
    kid: Kid
    # Bounded here so decoding stays cheap; the exact length is checked apart, so a wrong one
    # is reported as ``stanza_length`` rather than a generic decoding failure.
    stanza: Annotated[bytes, msgspec.Meta(max_length=4 * STANZA_LEN)]


class Header(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The signed header. Integers only; field order is the canonical order on the wire.

    ``recipients`` are sorted by partner id, one entry per partner; ``subjects`` are sorted and
    unique; ``expires_at > created_at``.
    """

    version: int
    suite: str
    message_id: MessageId
    sender: PartnerId
    sender_kid: Kid
    recipients: Annotated[
        tuple[RecipientEntry, ...], msgspec.Meta(min_length=1, max_length=MAX_RECIPIENTS)
    ]
    token_id: TokenId
    token_hash: Sha256Hex
    subjects: Annotated[tuple[Pseudonym, ...], msgspec.Meta(min_length=1, max_length=MAX_SUBJECTS)]
    message_type: MessageType
    schema_version: SchemaVersion
    created_at: UnixTime
    expires_at: UnixTime
    key_commitment: Annotated[
        bytes, msgspec.Meta(min_length=COMMITMENT_LEN, max_length=COMMITMENT_LEN)
    ]
    trace_id: TraceParent

    def recipient(self, partner: str) -> RecipientEntry:
        """The entry for ``partner``; ``EnvelopeOpenError`` (``not_a_recipient``) if unlisted."""
        for entry in self.recipients:
            if entry.partner == partner:
                return entry
        raise EnvelopeOpenError(
            "this partner is not a recipient of the envelope", EnvelopeReason.NOT_A_RECIPIENT
        )


class Envelope(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What travels: the exact signed header bytes, the ciphertext, the outer signature."""

    header: Annotated[bytes, msgspec.Meta(max_length=MAX_HEADER_BYTES)]
    ciphertext: Annotated[
        bytes,
        msgspec.Meta(
            min_length=_crypto.NONCE_LEN + _crypto.TAG_LEN, max_length=MAX_CIPHERTEXT_BYTES
        ),
    ]
    signature: Annotated[bytes, msgspec.Meta(min_length=SIGNATURE_LEN, max_length=SIGNATURE_LEN)]


class Proof(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a recipient keeps to prove what it received: header bytes, body, inner signature.

    Anyone with the directory can check it with ``verify_proof``; no key of the recipient is
    needed, and the header names the recipients the sender meant.
    """

    header: Annotated[bytes, msgspec.Meta(max_length=MAX_HEADER_BYTES)]
    body: Annotated[bytes, msgspec.Meta(max_length=MAX_BODY_BYTES)]
    signature: Annotated[bytes, msgspec.Meta(min_length=SIGNATURE_LEN, max_length=SIGNATURE_LEN)]


class _Inner(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The AEAD plaintext."""

    body: Annotated[bytes, msgspec.Meta(max_length=MAX_BODY_BYTES)]
    signature: Annotated[bytes, msgspec.Meta(min_length=SIGNATURE_LEN, max_length=SIGNATURE_LEN)]


class _Preamble(msgspec.Struct, frozen=True):
    """The first two header fields, read before the rest so an unknown version or suite is
    reported as such, whatever the remaining fields of that version look like."""

    version: int
    suite: str


class _BodyBinding(msgspec.Struct, frozen=True):
    """The two body fields the envelope binds to its header; the rest is the schema's job."""

    type: str
    subjects: Annotated[list[str], msgspec.Meta(max_length=MAX_SUBJECTS)]


# Encoders and decoders are built once; they hold no state between calls.
_ENCODER: Final = msgspec.msgpack.Encoder()
_ENVELOPE_DECODER: Final = msgspec.msgpack.Decoder(Envelope)
_PREAMBLE_DECODER: Final = msgspec.msgpack.Decoder(_Preamble)
_HEADER_DECODER: Final = msgspec.msgpack.Decoder(Header)
_INNER_DECODER: Final = msgspec.msgpack.Decoder(_Inner)
_PROOF_DECODER: Final = msgspec.msgpack.Decoder(Proof)
_BODY_DECODER: Final = msgspec.json.Decoder(_BodyBinding)


# --- Results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodedEnvelope:
    """An envelope whose structure checked out. **Nothing is authenticated yet.**"""

    envelope: Envelope
    header: Header
    header_hash: bytes


@dataclass(frozen=True)
class VerifiedEnvelope:
    """An envelope whose outer signature verified under ``sender_key`` (the gateway's check)."""

    envelope: Envelope
    header: Header
    header_hash: bytes
    sender_key: DirectoryKey


@dataclass(frozen=True, repr=False)
class Opened:
    """What a recipient gets from ``open_envelope``: the header and the verified body."""

    header: Header
    header_hash: bytes
    body: bytes
    inner_signature: bytes
    sender_key: DirectoryKey
    recipient_kid: str
    proof: Proof

    def __repr__(self) -> str:
        # The body is personal data; it never goes into a log line by accident.
        return f"Opened(message_id={self.header.message_id}, body=<{len(self.body)} bytes>)"


# --- Derivations ---------------------------------------------------------------------------


def header_hash(header_bytes: bytes) -> bytes:
    """``SHA-256(framed(HEADER_HASH, header bytes))``: 32 bytes."""
    return labels.labelled_hash(labels.HEADER_HASH, header_bytes)


def outer_signature_input(header_digest: bytes, ciphertext: bytes) -> bytes:
    """What the outer signature signs: ``framed(ENVELOPE_OUTER, header hash, SHA-256(ct))``."""
    return labels.framed(labels.ENVELOPE_OUTER, header_digest, hashlib.sha256(ciphertext).digest())


def inner_signature_input(header_digest: bytes, body: bytes) -> bytes:
    """What the inner signature signs: ``framed(ENVELOPE_INNER, header hash, SHA-256(body))``."""
    return labels.framed(labels.ENVELOPE_INNER, header_digest, hashlib.sha256(body).digest())


def derive_message_id(outbox_key: bytes, source_record_id: str) -> str:
    """``hex(HMAC-SHA256(outbox key, framed(MESSAGE_ID, source record id)))``: 64 hex.

    Reading the same partner record twice gives the same id, so it can never make two messages;
    without the outbox key the id says nothing about the record. Raises ``ValueError`` for an
    outbox key shorter than 32 bytes.
    """
    if len(outbox_key) < MIN_OUTBOX_KEY_BYTES:
        raise ValueError("an outbox key is at least 32 bytes")
    framed = labels.framed(labels.MESSAGE_ID, source_record_id.encode("utf-8"))
    return hmac.new(outbox_key, framed, hashlib.sha256).hexdigest()


# --- Encoding and decoding -----------------------------------------------------------------


def encode_envelope(envelope: Envelope) -> bytes:
    """The wire bytes of ``envelope`` (``CONTENT_TYPE``)."""
    return _ENCODER.encode(envelope)


def decode_envelope(data: bytes) -> DecodedEnvelope:
    """Decode wire bytes and check the structure of envelope and header. No key is used.

    This is the first step of the gateway's check (DESIGN.md "The relay decision": decode and
    version, then TLS identity against ``header.sender``, then ``verify_signature``). Raises
    ``MalformedEnvelopeError`` with reason ``too_large``, ``malformed``, ``unknown_version``,
    ``unknown_suite`` or ``stanza_length``.
    """
    if len(data) > MAX_ENVELOPE_BYTES:
        raise MalformedEnvelopeError("envelope is too large", EnvelopeReason.TOO_LARGE)
    try:
        envelope = _ENVELOPE_DECODER.decode(data)
    except msgspec.DecodeError as exc:
        raise MalformedEnvelopeError(
            f"envelope does not decode: {exc}", EnvelopeReason.MALFORMED
        ) from None
    return _decode_parts(envelope)


def decode_header(header_bytes: bytes) -> Header:
    """Decode and check signed header bytes; raise ``MalformedEnvelopeError`` as
    ``decode_envelope`` does. The checks, in order: version, suite, fields, canonical form,
    recipients (sorted by partner, no partner or kid twice, stanza lengths), subjects (sorted,
    unique), ``expires_at > created_at``."""
    if len(header_bytes) > MAX_HEADER_BYTES:
        raise MalformedEnvelopeError("header is too large", EnvelopeReason.TOO_LARGE)
    try:
        preamble = _PREAMBLE_DECODER.decode(header_bytes)
    except msgspec.DecodeError:
        raise MalformedEnvelopeError(
            "header has no version and suite", EnvelopeReason.MALFORMED
        ) from None
    if preamble.version != VERSION:
        raise MalformedEnvelopeError(
            f"unknown envelope version {preamble.version}", EnvelopeReason.UNKNOWN_VERSION
        )
    if preamble.suite != SUITE:
        raise MalformedEnvelopeError("unknown envelope suite", EnvelopeReason.UNKNOWN_SUITE)
    try:
        header = _HEADER_DECODER.decode(header_bytes)
    except msgspec.DecodeError as exc:
        raise MalformedEnvelopeError(
            f"header does not decode: {exc}", EnvelopeReason.MALFORMED
        ) from None
    # One header, one byte form: otherwise equal headers could carry different hashes, and a
    # second implementation could read bytes that this one would never write.
    if _ENCODER.encode(header) != header_bytes:
        raise MalformedEnvelopeError("header is not canonical", EnvelopeReason.MALFORMED)
    _check_header_structure(header)
    return header


def _check_header_structure(header: Header) -> None:
    strings = [
        header.suite,
        header.message_id,
        header.sender,
        header.sender_kid,
        header.token_id,
        header.token_hash,
        header.message_type.value,
        header.trace_id,
        *header.subjects,
        *(entry.partner for entry in header.recipients),
        *(entry.kid for entry in header.recipients),
    ]
    if any(_HEADER_STRING_RE.fullmatch(value) is None for value in strings):
        raise MalformedEnvelopeError(
            "a header string has characters outside its grammar", EnvelopeReason.MALFORMED
        )
    partners = [entry.partner for entry in header.recipients]
    if partners != sorted(set(partners)):
        raise MalformedEnvelopeError(
            "recipients are not sorted by partner, or a partner is listed twice",
            EnvelopeReason.MALFORMED,
        )
    if len({entry.kid for entry in header.recipients}) != len(header.recipients):
        raise MalformedEnvelopeError("a recipient kid is listed twice", EnvelopeReason.MALFORMED)
    for entry in header.recipients:
        if len(entry.stanza) != STANZA_LEN:
            raise MalformedEnvelopeError(
                f"stanza for {entry.partner} is not {STANZA_LEN} bytes",
                EnvelopeReason.STANZA_LENGTH,
            )
    if list(header.subjects) != sorted(set(header.subjects)):
        raise MalformedEnvelopeError("subjects are not sorted and unique", EnvelopeReason.MALFORMED)
    if header.expires_at <= header.created_at:
        raise MalformedEnvelopeError("expires_at is not after created_at", EnvelopeReason.MALFORMED)


def _decode_parts(envelope: Envelope) -> DecodedEnvelope:
    # An ``Envelope`` built in memory has not been through the decoder's bounds; check them.
    if (
        len(envelope.signature) != SIGNATURE_LEN
        or len(envelope.ciphertext) < _crypto.NONCE_LEN + _crypto.TAG_LEN
        or len(envelope.ciphertext) > MAX_CIPHERTEXT_BYTES
    ):
        raise MalformedEnvelopeError("envelope fields out of bounds", EnvelopeReason.MALFORMED)
    header = decode_header(envelope.header)
    return DecodedEnvelope(envelope, header, header_hash(envelope.header))


# --- The gateway's check -------------------------------------------------------------------


def _sender_key(directory: Directory, header: Header) -> DirectoryKey:
    try:
        key = directory.owned_key(header.sender, header.sender_kid, KeyUse.SIGN)
    except DirectoryError as exc:
        raise EnvelopeSignatureError(
            "sender key is not a sign key of the header's sender",
            EnvelopeReason.UNKNOWN_SENDER_KEY,
            exc.reason,
        ) from None
    if key.alg is not Algorithm.ED25519:
        raise EnvelopeSignatureError(
            "sender key is not an Ed25519 key",
            EnvelopeReason.UNKNOWN_SENDER_KEY,
            KeysReason.WRONG_KEY_USE,
        )
    return key


def _check_outer_signature(decoded: DecodedEnvelope, key: DirectoryKey) -> None:
    message = outer_signature_input(decoded.header_hash, decoded.envelope.ciphertext)
    try:
        verify_ed25519(key.public, message, decoded.envelope.signature)
    except BadSignatureError:
        raise EnvelopeSignatureError(
            "outer signature does not verify", EnvelopeReason.BAD_SIGNATURE
        ) from None


def verify_signature(
    decoded: DecodedEnvelope, directory: Directory, *, at: int
) -> VerifiedEnvelope:
    """Check the sender's key and the outer signature, as of ``at`` (the gateway's receive time).

    The key must be a ``sign`` key owned by ``header.sender`` and usable at ``at`` (active or
    retiring). Raises ``EnvelopeSignatureError`` with reason ``unknown_sender_key``,
    ``sender_key_invalid`` (``key_reason`` says why) or ``bad_signature``. Decrypts nothing.
    """
    key = _sender_key(directory, decoded.header)
    try:
        check_usable(key, at)
    except KeyStateError as exc:
        raise EnvelopeSignatureError(
            "sender key is not usable", EnvelopeReason.SENDER_KEY_INVALID, exc.reason
        ) from None
    _check_outer_signature(decoded, key)
    return VerifiedEnvelope(decoded.envelope, decoded.header, decoded.header_hash, key)


def verify(data: bytes | Envelope, directory: Directory, *, at: int) -> VerifiedEnvelope:
    """The gateway's whole envelope check: ``decode_envelope`` then ``verify_signature``.

    Raises ``MalformedEnvelopeError`` or ``EnvelopeSignatureError``. Callers that must compare
    the TLS identity with ``header.sender`` between the two steps call them separately.
    """
    decoded = decode_envelope(data) if isinstance(data, bytes) else _decode_parts(data)
    return verify_signature(decoded, directory, at=at)


# --- The recipient's side ------------------------------------------------------------------


def _check_body_binding(body: bytes, header: Header, error: type[EnvelopeError]) -> None:
    try:
        binding = _BODY_DECODER.decode(body)
    except msgspec.DecodeError:
        raise error(
            "body is not a JSON object with a type and subjects", EnvelopeReason.BODY_MALFORMED
        ) from None
    if binding.type != header.message_type.value:
        raise error("body type differs from the header's", EnvelopeReason.TYPE_MISMATCH)
    # Sorting the body's list and comparing with the sorted, unique header list also refuses
    # a body that names a subject twice.
    if sorted(binding.subjects) != list(header.subjects):
        raise error("body subjects differ from the header's", EnvelopeReason.SUBJECTS_MISMATCH)


def _check_signature_time(key: DirectoryKey, accepted_at: int, now: int) -> None:
    try:
        check_signature_time(key, accepted_at, now)
    except KeyStateError as exc:
        raise EnvelopeSignatureError(
            "sender key was not usable when the gateway accepted the envelope, or has been "
            "revoked since",
            EnvelopeReason.SENDER_KEY_INVALID,
            exc.reason,
        ) from None


def open_envelope(
    data: bytes | Envelope,
    directory: Directory,
    *,
    recipient: str,
    encrypt_keys: Mapping[str, HybridKemKeyPair],
    accepted_at: int,
    now: int,
) -> Opened:
    """Open an envelope addressed to ``recipient``, trusting nothing the gateway checked.

    ``encrypt_keys`` maps kid to every ``encrypt`` private key the recipient still holds
    (current and retired). ``accepted_at`` is the gateway's audited acceptance time: the sender
    key is judged then, and again at ``now`` for revocation with a compromise window. In order:
    decode (as ``decode_envelope``); sender key and outer signature; ``now < expires_at``;
    recipient listed and its kid held; HPKE unwrap with the exact ``info``; key commitment
    (before decrypting); decrypt with the header hash as associated data; inner signature;
    body ``type`` and ``subjects`` equal the header's.

    Raises ``MalformedEnvelopeError``, ``EnvelopeSignatureError`` or ``EnvelopeOpenError``
    (reasons ``expired``, ``not_a_recipient``, ``no_recipient_key``, ``unwrap_failed``,
    ``key_commitment``, ``decrypt_failed``, ``inner_malformed``, ``inner_signature``,
    ``body_malformed``, ``type_mismatch``, ``subjects_mismatch``).
    """
    decoded = decode_envelope(data) if isinstance(data, bytes) else _decode_parts(data)
    header = decoded.header
    sender_key = _sender_key(directory, header)
    _check_signature_time(sender_key, accepted_at, now)
    _check_outer_signature(decoded, sender_key)
    if now >= header.expires_at:
        raise EnvelopeOpenError("envelope has expired", EnvelopeReason.EXPIRED)

    entry = header.recipient(recipient)
    pair = encrypt_keys.get(entry.kid)
    # The mapping is the caller's; a pair filed under the wrong kid must not be tried.
    if pair is None or pair.kid != entry.kid:
        raise EnvelopeOpenError(
            "no private key held for the listed recipient kid", EnvelopeReason.NO_RECIPIENT_KEY
        )
    if len(entry.stanza) != STANZA_LEN:  # Also refused by decoding; kept next to its use.
        raise MalformedEnvelopeError("stanza has the wrong length", EnvelopeReason.STANZA_LENGTH)
    info = _crypto.hpke_info(header.message_id, header.sender_kid, entry.kid)
    try:
        content_key = _crypto.unwrap_content_key(entry.stanza, pair.hpke_private_key(), info)
    except _crypto.CryptoFailure:
        raise EnvelopeOpenError("stanza does not open", EnvelopeReason.UNWRAP_FAILED) from None
    try:
        _crypto.check_key_commitment(content_key, header.message_id, header.key_commitment)
    except _crypto.CryptoFailure:
        raise EnvelopeOpenError(
            "content key does not match the key commitment", EnvelopeReason.KEY_COMMITMENT
        ) from None
    try:
        plaintext = _crypto.aead_decrypt(
            content_key, decoded.envelope.ciphertext, decoded.header_hash
        )
    except _crypto.CryptoFailure:
        raise EnvelopeOpenError("ciphertext does not open", EnvelopeReason.DECRYPT_FAILED) from None
    try:
        inner = _INNER_DECODER.decode(plaintext)
    except msgspec.DecodeError:
        raise EnvelopeOpenError(
            "plaintext does not decode", EnvelopeReason.INNER_MALFORMED
        ) from None
    try:
        verify_ed25519(
            sender_key.public,
            inner_signature_input(decoded.header_hash, inner.body),
            inner.signature,
        )
    except BadSignatureError:
        raise EnvelopeOpenError(
            "inner signature does not verify", EnvelopeReason.INNER_SIGNATURE
        ) from None
    _check_body_binding(inner.body, header, EnvelopeOpenError)
    proof = Proof(header=decoded.envelope.header, body=inner.body, signature=inner.signature)
    return Opened(
        header=header,
        header_hash=decoded.header_hash,
        body=inner.body,
        inner_signature=inner.signature,
        sender_key=sender_key,
        recipient_kid=entry.kid,
        proof=proof,
    )


def encode_proof(proof: Proof) -> bytes:
    return _ENCODER.encode(proof)


def decode_proof(data: bytes) -> Proof:
    """Raise ``MalformedEnvelopeError`` (``malformed``) unless ``data`` is a ``Proof``."""
    try:
        return _PROOF_DECODER.decode(data)
    except msgspec.DecodeError:
        raise MalformedEnvelopeError("proof does not decode", EnvelopeReason.MALFORMED) from None


def verify_proof(proof: Proof, directory: Directory, *, accepted_at: int, now: int) -> Header:
    """Check what a recipient says it received; return the header the sender signed.

    Checks the header as ``decode_header`` does, the sender key as ``open_envelope`` does, the
    inner signature, and the body binding. The returned header names the recipients the sender
    meant; whoever relies on the proof compares them with the one presenting it.
    """
    header = decode_header(proof.header)
    key = _sender_key(directory, header)
    _check_signature_time(key, accepted_at, now)
    try:
        verify_ed25519(
            key.public,
            inner_signature_input(header_hash(proof.header), proof.body),
            proof.signature,
        )
    except BadSignatureError:
        raise EnvelopeOpenError(
            "inner signature does not verify", EnvelopeReason.INNER_SIGNATURE
        ) from None
    _check_body_binding(proof.body, header, EnvelopeOpenError)
    return header


# --- The sender's side ---------------------------------------------------------------------


def _recipient_public(
    partner: str, key: DirectoryKey
) -> tuple[str, str, hpke.MLKEM768X25519PublicKey]:
    if key.use is not KeyUse.ENCRYPT or key.alg is not Algorithm.MLKEM768_X25519:
        raise SealError(f"key for {partner} is not an encrypt key", EnvelopeReason.WRONG_KEY_USE)
    try:
        key.check_kid()
        public = hpke_public_key(key.public)
    except KeysError as exc:
        raise SealError(
            f"encrypt key for {partner} is malformed", EnvelopeReason.MALFORMED, exc.reason
        ) from None
    return partner, key.kid, public


def seal(
    *,
    sender: str,
    sign_key: Ed25519KeyPair,
    recipients: Sequence[tuple[str, DirectoryKey]],
    body: bytes,
    message_id: str,
    token_id: str,
    token_hash: str,
    subjects: Iterable[str],
    message_type: MessageType,
    schema_version: int,
    created_at: int,
    expires_at: int,
    trace_id: str,
) -> Envelope:
    """Seal ``body`` from ``sender`` to ``recipients`` and sign it with ``sign_key``.

    ``recipients`` pairs each partner id with the directory entry of its ``encrypt`` key; the
    adapter chooses it with ``Directory.current_key(partner, KeyUse.ENCRYPT, now)``. Order does
    not matter; the header lists recipients sorted by partner id and subjects sorted.
    ``message_id`` comes from ``derive_message_id``; resealing after a key-related refusal keeps
    it.

    The header is decoded back through ``decode_header`` before anything is signed, and the
    body's ``type`` and ``subjects`` are checked against the header, so ``seal`` never produces
    an envelope that ``verify`` or ``open_envelope`` would refuse for its form. Raises
    ``SealError`` (reason ``wrong_key_use``, ``malformed``, ``too_large``, ``stanza_length``,
    ``body_malformed``, ``type_mismatch`` or ``subjects_mismatch``).
    """
    if sign_key.use is not KeyUse.SIGN:
        raise SealError("envelopes are signed with a sign key", EnvelopeReason.WRONG_KEY_USE)
    if len(body) > MAX_BODY_BYTES:
        raise SealError("body is too large", EnvelopeReason.TOO_LARGE)
    # The message id enters the HPKE info before the header is built; check its form first.
    if _MESSAGE_ID_RE.fullmatch(message_id) is None:
        raise SealError("message id is not 64 lowercase hex", EnvelopeReason.MALFORMED)
    subject_list = list(subjects)
    sorted_subjects = tuple(sorted(set(subject_list)))
    if len(sorted_subjects) != len(subject_list):
        raise SealError("a subject is listed twice", EnvelopeReason.MALFORMED)
    targets = sorted(
        (_recipient_public(partner, key) for partner, key in recipients), key=lambda t: t[0]
    )

    content_key = _crypto.new_content_key()
    entries = []
    for partner, kid, public in targets:
        info = _crypto.hpke_info(message_id, sign_key.kid, kid)
        entries.append(
            RecipientEntry(
                partner=partner,
                kid=kid,
                stanza=_crypto.wrap_content_key(content_key, public, info),
            )
        )
    header = Header(
        version=VERSION,
        suite=SUITE,
        message_id=message_id,
        sender=sender,
        sender_kid=sign_key.kid,
        recipients=tuple(entries),
        token_id=token_id,
        token_hash=token_hash,
        subjects=sorted_subjects,
        message_type=message_type,
        schema_version=schema_version,
        created_at=created_at,
        expires_at=expires_at,
        key_commitment=_crypto.key_commitment(content_key, message_id),
        trace_id=trace_id,
    )
    header_bytes = _ENCODER.encode(header)
    # Struct construction does not apply the ``Meta`` constraints; decoding does. Running the
    # receivers' decoder here is how the sender keeps to exactly what they accept.
    try:
        decode_header(header_bytes)
    except MalformedEnvelopeError as exc:
        raise SealError(str(exc), exc.reason) from None
    _check_body_binding(body, header, SealError)

    digest = header_hash(header_bytes)
    inner = _Inner(body=body, signature=sign_key.sign(inner_signature_input(digest, body)))
    ciphertext = _crypto.aead_encrypt(content_key, _ENCODER.encode(inner), digest)
    signature = sign_key.sign(outer_signature_input(digest, ciphertext))
    return Envelope(header=header_bytes, ciphertext=ciphertext, signature=signature)
