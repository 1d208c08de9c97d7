"""Signed audit-log checkpoints: C2SP ``tlog-checkpoint`` bodies in C2SP ``signed-note`` form.

A checkpoint is what the gateway commits to and partners (the log's witnesses) keep and compare::

    <origin>\\n
    <tree size, decimal>\\n
    <base64 root hash>\\n
    [<extension line>\\n …]
    \\n
    — <key name> <base64(4-byte key ID ‖ 64-byte Ed25519 signature)>\\n
    [— <other signer> <…>\\n …]

Rules kept here (https://c2sp.org/signed-note, https://c2sp.org/tlog-checkpoint):

* The note **text** is everything up to and including the newline before the last blank line;
  an Ed25519 signature (signature type 0x01) covers exactly the UTF-8 bytes of that text.
  ``key ID = SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ 32-byte public key)[:4]``.
* Signature domain: this signature is **not** made under a ``labels`` label, and needs none.
  The note format binds it to its own domain: the key name and key ID are checked with the key,
  and the signed bytes are note text, which may contain no control character other than
  newline — while every other signature of ours covers ``labels.framed(label, …)``, which
  always has a 0x00 byte right after the label. No note text is ever a framed message or the
  reverse, so a checkpoint signature can never be replayed as any other object's signature.
* A note is UTF-8, has no ASCII control character other than newline, text and every signature
  line end in a newline, and key names are non-empty with neither Unicode spaces nor ``+``.
  Base64 is RFC 4648 standard with padding, and must be canonical (it re-encodes to itself).
* Checkpoint body: origin non-empty; tree size ASCII decimal without leading zeros, at most
  ``MAX_TREE_SIZE``; root hash 32 bytes; extension lines, if any, non-empty.
* Verification needs the gateway's own signature to verify. A signature line whose key name and
  key ID both match the gateway key must verify, or the whole note is refused (C2SP: "clients
  SHOULD reject the whole note"). Lines from any other key — partners' cosignatures, a rotated
  key — are kept, unverified, in ``Checkpoint.signatures`` and otherwise ignored, as the spec
  requires, so witnesses can add theirs without breaking anyone.
* Verification raises ``CheckpointError`` with a reason; it never returns a bool.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from gateway.protocol.merkle import HASH_LEN, MAX_TREE_SIZE
from keys import BadSignatureError, Ed25519KeyPair, verify_ed25519

SIGNATURE_TYPE_ED25519: Final = 0x01
ED25519_PUBLIC_LEN: Final = 32
ED25519_SIGNATURE_LEN: Final = 64
# Verifiers must accept at least 16 signatures (C2SP); Go's note package stops at 100. The
# byte limit keeps parsing cheap for a note fetched from a peer.
MAX_SIGNATURES: Final = 100
MAX_NOTE_BYTES: Final = 1 << 20

_SIG_PREFIX: Final = "\u2014 "  # em dash, space
_SIZE_RE: Final = re.compile(r"0|[1-9][0-9]*")
_CONTROL_RE: Final = re.compile(r"[\x00-\x09\x0b-\x1f]")


class CheckpointReason(enum.StrEnum):
    """Why a note or checkpoint was refused. Values are stable: they appear in logs."""

    # Not a well-formed signed note or checkpoint body (newlines, base64, size, key name, …).
    MALFORMED = "checkpoint_malformed"
    # The checkpoint is for another log.
    WRONG_ORIGIN = "checkpoint_wrong_origin"
    # No signature line from the expected key.
    UNKNOWN_KEY = "checkpoint_unknown_key"
    # A signature line from the expected key does not verify.
    BAD_SIGNATURE = "checkpoint_bad_signature"


class CheckpointError(Exception):
    """A signed note or checkpoint failed to parse or verify.

    ``reason`` is the machine-readable cause; ``str(error)`` is a sentence for a person.
    """

    def __init__(self, message: str, reason: CheckpointReason) -> None:
        super().__init__(message)
        self.reason = reason


def _malformed(message: str) -> CheckpointError:
    return CheckpointError(message, CheckpointReason.MALFORMED)


# --------------------------------------------------------------------------------------------
# Keys


def _check_key_name(name: str) -> None:
    if not name or any(c.isspace() or c == "+" for c in name) or _CONTROL_RE.search(name):
        raise _malformed("a key name must be non-empty, without spaces or '+'")


def note_key_id(key_name: str, public_key: bytes) -> bytes:
    """The 4-byte key ID of an Ed25519 note key: ``SHA-256(name ‖ 0x0A ‖ 0x01 ‖ key)[:4]``."""
    _check_key_name(key_name)
    if len(public_key) != ED25519_PUBLIC_LEN:
        raise _malformed("an Ed25519 public key is 32 bytes")
    digest = hashlib.sha256(
        key_name.encode() + b"\n" + bytes([SIGNATURE_TYPE_ED25519]) + public_key
    ).digest()
    return digest[:4]


@dataclass(frozen=True)
class NoteVerifierKey:
    """An Ed25519 note verifier key: a key name and a public key.

    Its text form is the one Go's ``sumdb/note`` and the C2SP tools use:
    ``<name>+<8 hex digits of key ID>+<base64(0x01 ‖ 32-byte public key)>``.
    """

    name: str
    public_key: bytes

    def __post_init__(self) -> None:
        note_key_id(self.name, self.public_key)  # validates name and key length

    @property
    def key_id(self) -> bytes:
        return note_key_id(self.name, self.public_key)

    @property
    def vkey(self) -> str:
        encoded = base64.b64encode(bytes([SIGNATURE_TYPE_ED25519]) + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{encoded}"

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifierKey:
        """Parse ``<name>+<hex key ID>+<base64(0x01 ‖ key)>``; raises ``CheckpointError``.

        The key ID must be the one the name and key give: a mismatch means a mangled or forged
        key string.
        """
        # The base64 part may itself contain '+', so split from the left, twice.
        parts = vkey.split("+", 2)
        if len(parts) != 3 or not re.fullmatch(r"[0-9a-f]{8}", parts[1]):
            raise _malformed("a verifier key is <name>+<8 hex digits>+<base64 key>")
        name, key_id_hex, encoded = parts
        raw = _b64decode(encoded, "verifier key")
        if len(raw) != 1 + ED25519_PUBLIC_LEN or raw[0] != SIGNATURE_TYPE_ED25519:
            raise _malformed("a verifier key must hold an Ed25519 public key")
        key = cls(name, raw[1:])
        if key.key_id.hex() != key_id_hex:
            raise _malformed("the verifier key's ID does not match its name and key")
        return key

    @classmethod
    def for_keypair(cls, name: str, key: Ed25519KeyPair) -> NoteVerifierKey:
        return cls(name, key.public)


# --------------------------------------------------------------------------------------------
# Signed notes


@dataclass(frozen=True)
class NoteSignature:
    """One signature line, parsed but not (necessarily) verified."""

    key_name: str
    key_id: bytes
    signature: bytes


@dataclass(frozen=True)
class SignedNote:
    """A parsed signed note: its text (what was signed) and its signature lines."""

    text: str
    signatures: tuple[NoteSignature, ...]


def _b64decode(value: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise _malformed(f"{what} is not base64") from None
    # Refuse non-canonical encodings (non-zero padding bits), so one value has one spelling.
    if base64.b64encode(raw).decode() != value:
        raise _malformed(f"{what} is not canonical base64")
    return raw


def _as_text(note: str | bytes) -> str:
    if isinstance(note, bytes):
        if len(note) > MAX_NOTE_BYTES:
            raise _malformed("note is too large")
        try:
            return note.decode("utf-8")
        except UnicodeDecodeError:
            raise _malformed("note is not UTF-8") from None
    try:
        size = len(note.encode("utf-8"))
    except UnicodeEncodeError:
        raise _malformed("note is not UTF-8") from None
    if size > MAX_NOTE_BYTES:
        raise _malformed("note is too large")
    return note


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise _malformed("note text must end with a newline")
    if _CONTROL_RE.search(text):
        raise _malformed("note text contains a control character")


def parse_note(note: str | bytes) -> SignedNote:
    """Split a signed note into its text and signature lines, without verifying any.

    Raises ``CheckpointError`` (``MALFORMED``) for anything but a well-formed note.
    """
    message = _as_text(note)
    if _CONTROL_RE.search(message):
        raise _malformed("note contains a control character")
    split = message.rfind("\n\n")
    if split < 0:
        raise _malformed("note has no blank line before its signatures")
    text, block = message[: split + 1], message[split + 2 :]
    if not block.endswith("\n"):
        raise _malformed("a signature line must end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise _malformed("note has too many signatures")
    signatures = []
    for line in lines:
        if not line.startswith(_SIG_PREFIX):
            raise _malformed("a signature line must start with an em dash and a space")
        name, sep, encoded = line[len(_SIG_PREFIX) :].partition(" ")
        if not sep or not encoded:
            raise _malformed("a signature line is '— <key name> <base64>'")
        _check_key_name(name)
        raw = _b64decode(encoded, "signature")
        if len(raw) < 5:
            raise _malformed("a signature is a 4-byte key ID and at least one byte")
        signatures.append(NoteSignature(name, raw[:4], raw[4:]))
    return SignedNote(text, tuple(signatures))


def signature_line(text: str, key_name: str, key: Ed25519KeyPair) -> str:
    """The signature line ``— <key name> <base64(key ID ‖ Ed25519(text))>\\n`` for ``text``."""
    _check_text(text)
    key_id = note_key_id(key_name, key.public)
    encoded = base64.b64encode(key_id + key.sign(text.encode("utf-8"))).decode()
    return f"{_SIG_PREFIX}{key_name} {encoded}\n"


def sign_note(text: str, key_name: str, key: Ed25519KeyPair) -> str:
    """Sign ``text`` (ending in a newline) with one Ed25519 key: ``text ‖ \\n ‖ signature line``."""
    _as_text(text)
    return text + "\n" + signature_line(text, key_name, key)


def add_signature(note: str, key_name: str, key: Ed25519KeyPair) -> str:
    """Append this key's signature line over the note's text (a partner cosigning by plain
    note signature). The existing signatures are not verified here."""
    parsed = parse_note(note)
    if any(s.key_name == key_name for s in parsed.signatures):
        raise _malformed(f"note is already signed by {key_name}")
    return note + signature_line(parsed.text, key_name, key)


def verify_note(note: str | bytes, verifier: NoteVerifierKey) -> SignedNote:
    """Parse ``note`` and check it carries a valid signature by ``verifier``.

    Raises ``CheckpointError``: ``MALFORMED``; ``UNKNOWN_KEY`` when no line has the
    verifier's key name and key ID; ``BAD_SIGNATURE`` when such a line does not verify. Lines
    of other keys are ignored.
    """
    parsed = parse_note(note)
    _check_text(parsed.text)
    key_id = verifier.key_id
    mine = [s for s in parsed.signatures if s.key_name == verifier.name and s.key_id == key_id]
    if not mine:
        raise CheckpointError(
            f"note has no signature by {verifier.name}", CheckpointReason.UNKNOWN_KEY
        )
    message = parsed.text.encode("utf-8")
    for sig in mine:
        try:
            verify_ed25519(verifier.public_key, message, sig.signature)
        except BadSignatureError:
            raise CheckpointError(
                "note signature did not verify", CheckpointReason.BAD_SIGNATURE
            ) from None
    return parsed


# --------------------------------------------------------------------------------------------
# Checkpoints


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint's body and the signature lines it carried.

    From ``verify_checkpoint`` the gateway's signature has verified; other signatures in
    ``signatures`` have not (a witness layer checks its own). From ``parse_checkpoint``
    nothing has.
    """

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...]
    signatures: tuple[NoteSignature, ...]
    text: str  # the exact signed note text: keep this, never a re-encoding


def checkpoint_text(
    origin: str, size: int, root_hash: bytes, extensions: Sequence[str] = ()
) -> str:
    """The checkpoint note text ``<origin>\\n<size>\\n<base64 root>\\n[<extension>\\n…]``."""
    for line in (origin, *extensions):
        if not line or "\n" in line or _CONTROL_RE.search(line):
            raise _malformed("origin and extension lines must be non-empty single lines")
    if not 0 <= size <= MAX_TREE_SIZE:
        raise _malformed("tree size is out of range")
    if len(root_hash) != HASH_LEN:
        raise _malformed("a root hash is 32 bytes")
    lines = [origin, str(size), base64.b64encode(root_hash).decode(), *extensions]
    return "".join(line + "\n" for line in lines)


def make_checkpoint(
    origin: str,
    size: int,
    root_hash: bytes,
    key_name: str,
    key: Ed25519KeyPair,
    extensions: Sequence[str] = (),
) -> str:
    """Build and sign the checkpoint for a tree of ``size`` leaves with ``root_hash``.

    C2SP recommends ``key_name == origin``; the gateway uses one name for both (for example
    ``ketenpost.ijmond.example/audit``).
    """
    return sign_note(checkpoint_text(origin, size, root_hash, extensions), key_name, key)


def _parse_body(text: str, signatures: tuple[NoteSignature, ...]) -> Checkpoint:
    lines = text[:-1].split("\n") if text.endswith("\n") else []
    if len(lines) < 3 or any(not line for line in lines):
        raise _malformed("a checkpoint body is at least three non-empty lines")
    origin, size_line, root_line, *extensions = lines
    if not _SIZE_RE.fullmatch(size_line):
        raise _malformed("tree size is not a decimal number without leading zeros")
    size = int(size_line)
    if size > MAX_TREE_SIZE:
        raise _malformed("tree size is out of range")
    root_hash = _b64decode(root_line, "root hash")
    if len(root_hash) != HASH_LEN:
        raise _malformed("a root hash is 32 bytes")
    return Checkpoint(origin, size, root_hash, tuple(extensions), signatures, text)


def parse_checkpoint(note: str | bytes) -> Checkpoint:
    """Parse a signed checkpoint **without** verifying any signature.

    For display and for a witness that looks up the key by origin first; everything else calls
    ``verify_checkpoint``. Raises ``CheckpointError`` (``MALFORMED``).
    """
    parsed = parse_note(note)
    _check_text(parsed.text)
    return _parse_body(parsed.text, parsed.signatures)


def verify_checkpoint(
    note: str | bytes, origin: str, key_name: str, public_key: bytes
) -> Checkpoint:
    """Verify a checkpoint signed by the gateway key ``(key_name, public_key)`` for ``origin``.

    Raises ``CheckpointError``: ``MALFORMED``, ``UNKNOWN_KEY`` (no signature by that key),
    ``BAD_SIGNATURE``, ``WRONG_ORIGIN``. Signatures by other keys are ignored.
    """
    parsed = verify_note(note, NoteVerifierKey(key_name, public_key))
    checkpoint = _parse_body(parsed.text, parsed.signatures)
    if checkpoint.origin != origin:
        raise CheckpointError("checkpoint is for another log", CheckpointReason.WRONG_ORIGIN)
    return checkpoint
