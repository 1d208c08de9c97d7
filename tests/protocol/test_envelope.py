"""The envelope: seal, verify (the gateway's check), open (the recipient's), proofs.

Besides ``gateway.protocol.envelope`` itself, these tests carry a *reference* implementation of
the documented byte layout built straight from the primitives (``_forge`` and
``_reference_open``): an envelope forged by it must open, and ``seal``'s output must open with
it. That keeps the layout in the module docstring (and in ``docs/protocol.md``) honest, and it
is how the tests build envelopes a malicious sender or recipient would make.

Times are fixed integers; nothing reads the clock.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache, partial
from typing import Any

import msgspec
import nacl.signing
import pytest
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl import bindings as sodium

from gateway.protocol import _envelope_crypto as crypto
from gateway.protocol import envelope as env
from gateway.protocol import labels
from gateway.protocol.envelope import EnvelopeError, EnvelopeReason
from gateway.protocol.types import MessageType
from keys import (
    Directory,
    DirectoryKey,
    Ed25519KeyPair,
    HybridKemKeyPair,
    KeysReason,
    KeyUse,
    Role,
    hpke_public_key,
)
from tests.protocol._directory_builder import (
    PartnerKeys,
    directory_key,
    make_directory,
    make_partner,
)

CREATED = 1_750_000_000
EXPIRES = CREATED + 7 * 86_400
RECEIVED = CREATED + 2  # The gateway's receive time, and its audited accepted_at.
OPEN_AT = CREATED + 60
TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TOKEN_ID = "5f0c6e2a9b1d4c3e8f7a6b5c4d3e2f10"
TOKEN_HASH = hashlib.sha256(b"token").hexdigest()
OUTBOX_KEY = bytes(range(32))
SUBJECTS = ("1f2e3d4c5b6a79880f1e2d3c4b5a6978", "9a8b7c6d5e4f30211a2b3c4d5e6f7081")
# ML-KEM and HPKE per example: keep the counts modest.
PROPERTY = settings(max_examples=30, deadline=None)
HPKE = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)


@dataclass(frozen=True)
class World:
    sender: PartnerKeys
    pool: tuple[PartnerKeys, ...]  # Possible recipients.
    outsider: PartnerKeys  # In the directory, never a recipient.

    @property
    def everyone(self) -> tuple[PartnerKeys, ...]:
        return (self.sender, *self.pool, self.outsider)

    def directory(self, *replacing: PartnerKeys) -> Directory:
        """The directory of everyone, with ``replacing`` standing in for partners by id."""
        by_id = {p.id: p for p in self.everyone} | {p.id: p for p in replacing}
        return make_directory(*by_id.values())


@cache
def world() -> World:
    # Built once per test session: ML-KEM key generation is cheap but not free, and Hypothesis
    # examples must not depend on fixtures that change between them.
    return World(
        sender=make_partner("gemeente-velsen", Role.MUNICIPALITY, coordinator=True),
        pool=(
            make_partner("politie-ijmond", Role.POLICE),
            make_partner("om", Role.PROSECUTION),
            make_partner("halt", Role.HALT),
            make_partner("cjg", Role.YOUTH_CARE),
        ),
        outsider=make_partner("welzijn-ijmond", Role.WELFARE),
    )


@cache
def directory() -> Directory:
    return world().directory()


def body_of(
    subjects: Sequence[str] = SUBJECTS, message_type: str = "signal", note: str = "zorgen"
) -> bytes:
    return json.dumps({"type": message_type, "subjects": list(subjects), "note": note}).encode()


def seal_args(
    recipients: Sequence[PartnerKeys],
    *,
    body: bytes | None = None,
    subjects: Sequence[str] = SUBJECTS,
    message_type: MessageType = MessageType.SIGNAL,
) -> dict[str, Any]:
    """Arguments of an honest ``seal`` from the sender to ``recipients``."""
    sender = world().sender
    return {
        "sender": sender.id,
        "sign_key": sender.sign,
        "recipients": [(r.id, r.key_entry(r.encrypt.kid)) for r in recipients],
        "body": body if body is not None else body_of(subjects, message_type.value),
        "message_id": env.derive_message_id(OUTBOX_KEY, "zaak-1/bericht-1"),
        "token_id": TOKEN_ID,
        "token_hash": TOKEN_HASH,
        "subjects": subjects,
        "message_type": message_type,
        "schema_version": 1,
        "created_at": CREATED,
        "expires_at": EXPIRES,
        "trace_id": TRACE,
    }


def seal_to(
    recipients: Sequence[PartnerKeys],
    *,
    body: bytes | None = None,
    subjects: Sequence[str] = SUBJECTS,
    message_type: MessageType = MessageType.SIGNAL,
) -> env.Envelope:
    args = seal_args(recipients, body=body, subjects=subjects, message_type=message_type)
    return env.seal(**args)


def open_as(
    recipient: PartnerKeys,
    data: bytes | env.Envelope,
    *,
    directory_: Directory | None = None,
    accepted_at: int = RECEIVED,
    now: int = OPEN_AT,
) -> env.Opened:
    return env.open_envelope(
        data,
        directory_ or directory(),
        recipient=recipient.id,
        encrypt_keys=recipient.encrypt_keys,
        accepted_at=accepted_at,
        now=now,
    )


# --- A reference implementation of the layout, straight from the primitives ----------------


def _hh(header: bytes) -> bytes:
    return hashlib.sha256(labels.framed(labels.HEADER_HASH, header)).digest()


def _outer(key: Ed25519KeyPair, header: bytes, ciphertext: bytes) -> bytes:
    digest = hashlib.sha256(ciphertext).digest()
    return key.sign(labels.framed(labels.ENVELOPE_OUTER, _hh(header), digest))


def _info(message_id: str, sender_kid: str, recipient_kid: str) -> bytes:
    return labels.framed(
        labels.HPKE_WRAP, message_id.encode(), sender_kid.encode(), recipient_kid.encode()
    )


def _commit(content_key: bytes, message_id: str) -> bytes:
    info = labels.framed(labels.KEY_COMMITMENT, message_id.encode())
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(content_key)


def _wire(header: bytes, ciphertext: bytes, signature: bytes) -> bytes:
    return msgspec.msgpack.encode(
        {"header": header, "ciphertext": ciphertext, "signature": signature}
    )


def _forge(
    *,
    recipients: Sequence[PartnerKeys],
    body: bytes | None = None,
    sender: PartnerKeys | None = None,
    content_key: bytes | None = None,
    commit_key: bytes | None = None,
    inner_signature: bytes | None = None,
    plaintext: Callable[[bytes], bytes] | None = None,
    outer_key: Ed25519KeyPair | None = None,
    **header_changes: Any,
) -> bytes:
    """Build an envelope from the documented layout, as any sender (honest or not) could."""
    sender = sender or world().sender
    body = body if body is not None else body_of()
    content_key = content_key or os.urandom(32)
    message_id = header_changes.pop("message_id", env.derive_message_id(OUTBOX_KEY, "forged"))
    entries = [
        {
            "partner": r.id,
            "kid": r.encrypt.kid,
            "stanza": HPKE.encrypt(
                content_key,
                hpke_public_key(r.encrypt.public),
                info=_info(message_id, sender.sign.kid, r.encrypt.kid),
            ),
        }
        for r in sorted(recipients, key=lambda r: r.id)
    ]
    header = {
        "version": 1,
        "suite": env.SUITE,
        "message_id": message_id,
        "sender": sender.id,
        "sender_kid": sender.sign.kid,
        "recipients": entries,
        "token_id": TOKEN_ID,
        "token_hash": TOKEN_HASH,
        "subjects": sorted(SUBJECTS),
        "message_type": "signal",
        "schema_version": 1,
        "created_at": CREATED,
        "expires_at": EXPIRES,
        "key_commitment": _commit(commit_key or content_key, message_id),
        "trace_id": TRACE,
    }
    header.update(header_changes)
    header_bytes = msgspec.msgpack.encode(header)
    hh = _hh(header_bytes)
    if inner_signature is None:
        signed = labels.framed(labels.ENVELOPE_INNER, hh, hashlib.sha256(body).digest())
        inner_signature = sender.sign.sign(signed)
    pt = (
        plaintext(hh)
        if plaintext
        else msgspec.msgpack.encode({"body": body, "signature": inner_signature})
    )
    nonce = os.urandom(24)
    ciphertext = nonce + sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
        pt, hh, nonce, content_key
    )
    return _wire(
        header_bytes, ciphertext, _outer(outer_key or sender.sign, header_bytes, ciphertext)
    )


def _reference_open(data: bytes, recipient: PartnerKeys, sender_public: bytes) -> bytes:
    """Open ``seal``'s output by the documented layout alone; return the body."""
    outer = msgspec.msgpack.decode(data)
    header_bytes, ciphertext = outer["header"], outer["ciphertext"]
    header = msgspec.msgpack.decode(header_bytes)
    hh = _hh(header_bytes)
    digest = hashlib.sha256(ciphertext).digest()
    verify = nacl.signing.VerifyKey(sender_public)
    verify.verify(labels.framed(labels.ENVELOPE_OUTER, hh, digest), outer["signature"])
    (entry,) = [e for e in header["recipients"] if e["partner"] == recipient.id]
    assert len(entry["stanza"]) == 1168
    info = _info(header["message_id"], header["sender_kid"], entry["kid"])
    content_key = HPKE.decrypt(entry["stanza"], recipient.encrypt.hpke_private_key(), info=info)
    assert _commit(content_key, header["message_id"]) == header["key_commitment"]
    pt = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
        ciphertext[24:], hh, ciphertext[:24], content_key
    )
    inner = msgspec.msgpack.decode(pt)
    assert set(inner) == {"body", "signature"}
    body_digest = hashlib.sha256(inner["body"]).digest()
    verify.verify(labels.framed(labels.ENVELOPE_INNER, hh, body_digest), inner["signature"])
    body: bytes = inner["body"]
    return body


def _header_dict(envelope: env.Envelope) -> dict[str, Any]:
    header: dict[str, Any] = msgspec.msgpack.decode(envelope.header)
    return header


def _rebuild(
    envelope: env.Envelope,
    *,
    header: dict[str, Any] | bytes | None = None,
    ciphertext: bytes | None = None,
    key: Ed25519KeyPair | None = None,
) -> bytes:
    """The envelope with header and/or ciphertext replaced and the outer signature made again
    by ``key`` (the sender's by default): models a sender that signs whatever it built."""
    if isinstance(header, dict):
        header = msgspec.msgpack.encode(header)
    header_bytes = header if header is not None else envelope.header
    ct = ciphertext if ciphertext is not None else envelope.ciphertext
    return _wire(header_bytes, ct, _outer(key or world().sender.sign, header_bytes, ct))


def _flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[index] ^= mask
    return bytes(out)


@pytest.fixture(scope="module")
def two() -> env.Envelope:
    """One envelope from the sender to politie-ijmond and om."""
    return seal_to(world().pool[:2])


def _reason(call: Callable[[], object]) -> EnvelopeReason:
    with pytest.raises(EnvelopeError) as caught:
        call()
    return caught.value.reason


# --- Round trips ---------------------------------------------------------------------------

PSEUDONYM = st.binary(min_size=16, max_size=16).map(bytes.hex)


@settings(PROPERTY, suppress_health_check=[HealthCheck.too_slow])
@given(
    recipients=st.sets(st.integers(0, 3), min_size=1, max_size=4),
    subjects=st.lists(PSEUDONYM, min_size=1, max_size=5, unique=True),
    note=st.text(max_size=3000),
    message_type=st.sampled_from(list(MessageType)),
)
def test_seal_open_round_trip(
    recipients: set[int], subjects: list[str], note: str, message_type: MessageType
) -> None:
    w = world()
    chosen = [w.pool[i] for i in sorted(recipients)]
    body = body_of(subjects, message_type.value, note)
    sealed = seal_to(chosen, body=body, subjects=subjects, message_type=message_type)
    data = env.encode_envelope(sealed)

    verified = env.verify(data, directory(), at=RECEIVED)
    assert [e.partner for e in verified.header.recipients] == sorted(r.id for r in chosen)
    assert verified.header.subjects == tuple(sorted(subjects))
    for recipient in chosen:
        opened = open_as(recipient, data)
        assert opened.body == body
        assert opened.header == verified.header
        assert opened.header_hash == verified.header_hash
        assert opened.recipient_kid == recipient.encrypt.kid
        assert _reference_open(data, recipient, w.sender.sign.public) == body


def test_verify_reports_what_the_gateway_needs(two: env.Envelope) -> None:
    verified = env.verify(env.encode_envelope(two), directory(), at=RECEIVED)
    header = verified.header
    assert header.version == 1
    assert header.suite == env.SUITE
    assert header.sender == "gemeente-velsen"
    assert header.message_id == env.derive_message_id(OUTBOX_KEY, "zaak-1/bericht-1")
    assert (header.token_id, header.token_hash) == (TOKEN_ID, TOKEN_HASH)
    assert header.message_type is MessageType.SIGNAL
    assert (header.created_at, header.expires_at, header.trace_id) == (CREATED, EXPIRES, TRACE)
    assert verified.header_hash == _hh(two.header)
    assert verified.sender_key.kid == world().sender.sign.kid


def test_decode_then_verify_signature_is_the_same_check(two: env.Envelope) -> None:
    decoded = env.decode_envelope(env.encode_envelope(two))  # No directory needed yet.
    assert decoded.header.sender == "gemeente-velsen"
    verified = env.verify_signature(decoded, directory(), at=RECEIVED)
    assert verified.header == env.verify(two, directory(), at=RECEIVED).header


def test_open_takes_the_struct_or_the_bytes(two: env.Envelope) -> None:
    recipient = world().pool[0]
    assert open_as(recipient, two).body == open_as(recipient, env.encode_envelope(two)).body


def test_forged_reference_envelope_opens() -> None:
    # The documented layout, built without the module, is what the module opens.
    w = world()
    opened = open_as(w.pool[2], _forge(recipients=[w.pool[2], w.pool[3]]))
    assert opened.body == body_of()


def test_opened_repr_hides_the_body(two: env.Envelope) -> None:
    opened = open_as(world().pool[0], two)
    assert "zorgen" not in repr(opened)
    assert "zorgen" not in str(opened)


def test_sizes(two: env.Envelope) -> None:
    header = env.decode_header(two.header)
    assert all(len(entry.stanza) == env.STANZA_LEN == 1168 for entry in header.recipients)
    assert len(header.key_commitment) == 32
    assert len(two.signature) == 64
    # nonce ‖ AEAD(msgpack{body, signature}) ‖ tag
    inner_len = len(msgspec.msgpack.encode({"body": body_of(), "signature": bytes(64)}))
    assert len(two.ciphertext) == 24 + inner_len + 16


def test_retired_encrypt_key_still_opens() -> None:
    # "Recipients keep retired private keys until every message that could use them has
    # expired": a message sealed to the old key opens while a newer key is current.
    w = world()
    old = HybridKemKeyPair.generate()
    rotated = w.pool[1].with_keys(
        *w.pool[1].partner.keys, directory_key(old, retire_at=OPEN_AT), old_encrypt=(old,)
    )
    sealed = env.seal(
        sender=w.sender.id,
        sign_key=w.sender.sign,
        recipients=[(rotated.id, rotated.key_entry(old.kid))],
        body=body_of(),
        message_id=env.derive_message_id(OUTBOX_KEY, "old"),
        token_id=TOKEN_ID,
        token_hash=TOKEN_HASH,
        subjects=SUBJECTS,
        message_type=MessageType.SIGNAL,
        schema_version=1,
        created_at=CREATED,
        expires_at=EXPIRES,
        trace_id=TRACE,
    )
    opened = open_as(rotated, sealed, directory_=w.directory(rotated), now=OPEN_AT + 10)
    assert opened.recipient_kid == old.kid


# --- Decoding refusals (any holder can check these; the gateway does first) ----------------


def _header_case(change: Callable[[dict[str, Any]], object]) -> Callable[[env.Envelope], bytes]:
    def build(envelope: env.Envelope) -> bytes:
        header = _header_dict(envelope)
        change(header)
        return _rebuild(envelope, header=header)

    return build


def _reorder(header: dict[str, Any]) -> None:
    items = list(header.items())
    header.clear()
    header.update(reversed(items))


def _set(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda header: header.__setitem__(field, value)


def _stanza(length: int) -> Callable[[dict[str, Any]], None]:
    def change(header: dict[str, Any]) -> None:
        header["recipients"][0]["stanza"] = header["recipients"][0]["stanza"][:length].ljust(
            length, b"\x00"
        )

    return change


HEADER_CASES = {
    "version 2": (_set("version", 2), EnvelopeReason.UNKNOWN_VERSION),
    "version 0": (_set("version", 0), EnvelopeReason.UNKNOWN_VERSION),
    "version as text": (_set("version", "1"), EnvelopeReason.MALFORMED),
    "other suite": (
        _set("suite", "xchacha20poly1305+hpke-base-x25519-hkdfsha256-chacha20poly1305+ed25519"),
        EnvelopeReason.UNKNOWN_SUITE,
    ),
    "unknown field": (_set("priority", 1), EnvelopeReason.MALFORMED),
    "missing field": (lambda h: h.pop("trace_id"), EnvelopeReason.MALFORMED),
    "not canonical (field order)": (_reorder, EnvelopeReason.MALFORMED),
    "float time": (_set("created_at", float(CREATED)), EnvelopeReason.MALFORMED),
    "negative time": (_set("created_at", -1), EnvelopeReason.MALFORMED),
    "expires at created": (_set("expires_at", CREATED), EnvelopeReason.MALFORMED),
    "expires before created": (_set("expires_at", CREATED - 1), EnvelopeReason.MALFORMED),
    "no recipients": (_set("recipients", []), EnvelopeReason.MALFORMED),
    "recipients unsorted": (
        lambda h: h["recipients"].reverse(),
        EnvelopeReason.MALFORMED,
    ),
    "recipient twice": (
        lambda h: h["recipients"].append(dict(h["recipients"][-1])),
        EnvelopeReason.MALFORMED,
    ),
    "recipient kid twice": (
        lambda h: h["recipients"][1].__setitem__("kid", h["recipients"][0]["kid"]),
        EnvelopeReason.MALFORMED,
    ),
    "stanza 1167 bytes": (_stanza(1167), EnvelopeReason.STANZA_LENGTH),
    "stanza 1169 bytes": (_stanza(1169), EnvelopeReason.STANZA_LENGTH),
    "stanza empty": (_stanza(0), EnvelopeReason.STANZA_LENGTH),
    "no subjects": (_set("subjects", []), EnvelopeReason.MALFORMED),
    "subjects unsorted": (_set("subjects", list(reversed(SUBJECTS))), EnvelopeReason.MALFORMED),
    "subject twice": (_set("subjects", [SUBJECTS[0], SUBJECTS[0]]), EnvelopeReason.MALFORMED),
    "subject not a pseudonym": (_set("subjects", ["bsn-123456782"]), EnvelopeReason.MALFORMED),
    "unknown message type": (_set("message_type", "gossip"), EnvelopeReason.MALFORMED),
    "schema version 0": (_set("schema_version", 0), EnvelopeReason.MALFORMED),
    "message id uppercase": (
        lambda h: h.__setitem__("message_id", h["message_id"].upper()),
        EnvelopeReason.MALFORMED,
    ),
    "commitment 31 bytes": (_set("key_commitment", bytes(31)), EnvelopeReason.MALFORMED),
    "trace id all zero": (
        _set("trace_id", f"00-{'0' * 32}-00f067aa0ba902b7-01"),
        EnvelopeReason.MALFORMED,
    ),
    "parent id all zero": (
        _set("trace_id", f"00-4bf92f3577b34da6a3ce929d0e0e4736-{'0' * 16}-01"),
        EnvelopeReason.MALFORMED,
    ),
    "trace version ff": (_set("trace_id", "ff" + TRACE[2:]), EnvelopeReason.MALFORMED),
    "trace id uppercase": (_set("trace_id", TRACE.upper()), EnvelopeReason.MALFORMED),
    # Python's ``$`` matches before a final newline; none may slip into an id.
    "trace id with newline": (_set("trace_id", TRACE + "\n"), EnvelopeReason.MALFORMED),
    "message id with newline": (
        lambda h: h.__setitem__("message_id", h["message_id"] + "\n"),
        EnvelopeReason.MALFORMED,
    ),
    "subject with newline": (
        _set("subjects", [SUBJECTS[0], SUBJECTS[1] + "\n"]),
        EnvelopeReason.MALFORMED,
    ),
}


@pytest.mark.parametrize(("change", "reason"), list(HEADER_CASES.values()), ids=list(HEADER_CASES))
def test_header_refused(
    two: env.Envelope, change: Callable[[dict[str, Any]], object], reason: EnvelopeReason
) -> None:
    # Each header is signed correctly by the sender: the refusal is the structure's alone.
    data = _header_case(change)(two)
    with pytest.raises(env.MalformedEnvelopeError) as caught:
        env.decode_envelope(data)
    assert caught.value.reason is reason
    assert _reason(lambda: env.verify(data, directory(), at=RECEIVED)) is reason
    assert _reason(lambda: open_as(world().pool[0], data)) is reason


def _outer_fields(envelope: env.Envelope, **changes: Any) -> bytes:
    fields: dict[str, Any] = {
        "header": envelope.header,
        "ciphertext": envelope.ciphertext,
        "signature": envelope.signature,
    }
    fields.update(changes)
    return msgspec.msgpack.encode({k: v for k, v in fields.items() if v is not None})


ENVELOPE_CASES: dict[str, tuple[Callable[[env.Envelope], bytes], EnvelopeReason]] = {
    "not msgpack": (lambda e: b"\xc1", EnvelopeReason.MALFORMED),
    "empty": (lambda e: b"", EnvelopeReason.MALFORMED),
    "a list": (
        lambda e: msgspec.msgpack.encode([e.header, e.ciphertext]),
        EnvelopeReason.MALFORMED,
    ),
    "unknown field": (lambda e: _outer_fields(e, extra=b"x"), EnvelopeReason.MALFORMED),
    "missing signature": (lambda e: _outer_fields(e, signature=None), EnvelopeReason.MALFORMED),
    "signature 63 bytes": (
        lambda e: _outer_fields(e, signature=e.signature[:63]),
        EnvelopeReason.MALFORMED,
    ),
    "ciphertext too short": (
        lambda e: _outer_fields(e, ciphertext=bytes(39)),
        EnvelopeReason.MALFORMED,
    ),
    "header not msgpack": (lambda e: _outer_fields(e, header=b"\xc1"), EnvelopeReason.MALFORMED),
    "header too large": (
        lambda e: _outer_fields(e, header=bytes(env.MAX_HEADER_BYTES + 1)),
        EnvelopeReason.MALFORMED,
    ),
    "envelope too large": (
        lambda e: bytes(env.MAX_ENVELOPE_BYTES + 1),
        EnvelopeReason.TOO_LARGE,
    ),
}


@pytest.mark.parametrize(
    ("build", "reason"), list(ENVELOPE_CASES.values()), ids=list(ENVELOPE_CASES)
)
def test_envelope_refused(
    two: env.Envelope, build: Callable[[env.Envelope], bytes], reason: EnvelopeReason
) -> None:
    with pytest.raises(env.MalformedEnvelopeError) as caught:
        env.decode_envelope(build(two))
    assert caught.value.reason is reason


def test_in_memory_envelope_is_bounded_too(two: env.Envelope) -> None:
    short = msgspec.structs.replace(two, signature=two.signature[:10])
    assert _reason(lambda: env.verify(short, directory(), at=RECEIVED)) is EnvelopeReason.MALFORMED


# --- The sender's key and the outer signature ---------------------------------------------


def _signed_as(envelope: env.Envelope, key: Ed25519KeyPair, **header: Any) -> bytes:
    changed = _header_dict(envelope) | header
    return _rebuild(envelope, header=changed, key=key)


def test_unknown_sender_key(two: env.Envelope) -> None:
    stranger = Ed25519KeyPair.generate(KeyUse.SIGN)
    data = _signed_as(two, stranger, sender_kid=stranger.kid)
    with pytest.raises(env.EnvelopeSignatureError) as caught:
        env.verify(data, directory(), at=RECEIVED)
    assert caught.value.reason is EnvelopeReason.UNKNOWN_SENDER_KEY
    assert caught.value.key_reason is KeysReason.UNKNOWN_KEY


def test_sender_key_of_another_partner(two: env.Envelope) -> None:
    # politie-ijmond signs with its own key but names gemeente-velsen as the sender.
    other = world().pool[0]
    data = _signed_as(two, other.sign, sender_kid=other.sign.kid)
    with pytest.raises(env.EnvelopeSignatureError) as caught:
        env.verify(data, directory(), at=RECEIVED)
    assert caught.value.reason is EnvelopeReason.UNKNOWN_SENDER_KEY


def test_token_key_is_not_a_sign_key(two: env.Envelope) -> None:
    token = world().sender.token
    assert token is not None
    data = _signed_as(two, token, sender_kid=token.kid)
    with pytest.raises(env.EnvelopeSignatureError) as caught:
        env.verify(data, directory(), at=RECEIVED)
    assert caught.value.reason is EnvelopeReason.UNKNOWN_SENDER_KEY
    assert caught.value.key_reason is KeysReason.WRONG_KEY_USE


def test_signature_by_another_key_under_the_senders_kid(two: env.Envelope) -> None:
    data = _rebuild(two, key=world().pool[0].sign)
    assert _reason(lambda: env.verify(data, directory(), at=RECEIVED)) is (
        EnvelopeReason.BAD_SIGNATURE
    )
    assert _reason(lambda: open_as(world().pool[0], data)) is EnvelopeReason.BAD_SIGNATURE


def _sender_with(**times: int) -> Directory:
    w = world()
    others = [k for k in w.sender.partner.keys if k.kid != w.sender.sign.kid]
    changed = w.sender.with_keys(directory_key(w.sender.sign, **times), *others)
    return w.directory(changed)


SENDER_KEY_CASES = {
    "not yet active": ({"active_from": RECEIVED + 1}, KeysReason.KEY_NOT_YET_ACTIVE),
    "retired": ({"retire_at": RECEIVED}, KeysReason.KEY_RETIRED),
    "revoked": ({"revoked_at": RECEIVED}, KeysReason.KEY_REVOKED),
}


@pytest.mark.parametrize(
    ("times", "key_reason"), list(SENDER_KEY_CASES.values()), ids=list(SENDER_KEY_CASES)
)
def test_sender_key_not_usable_at_receive_time(
    two: env.Envelope, times: dict[str, int], key_reason: KeysReason
) -> None:
    with pytest.raises(env.EnvelopeSignatureError) as caught:
        env.verify(two, _sender_with(**times), at=RECEIVED)
    assert caught.value.reason is EnvelopeReason.SENDER_KEY_INVALID
    assert caught.value.key_reason is key_reason


def test_retiring_sender_key_still_verifies(two: env.Envelope) -> None:
    env.verify(two, _sender_with(retire_at=RECEIVED + 1), at=RECEIVED)


OPEN_KEY_CASES = {
    # Judged at the gateway's accepted_at, not at the recipient's now: a key retired since the
    # gateway accepted the message still vouches for it.
    "retired after acceptance": ({"retire_at": RECEIVED + 1}, None),
    "compromised after acceptance": (
        {"revoked_at": OPEN_AT - 1, "compromised_since": RECEIVED + 1},
        None,
    ),
    "compromised before acceptance": (
        {"revoked_at": OPEN_AT - 1, "compromised_since": RECEIVED},
        KeysReason.KEY_COMPROMISED,
    ),
    "revoked, compromise time unknown": ({"revoked_at": OPEN_AT - 1}, KeysReason.KEY_COMPROMISED),
    "retired before acceptance": ({"retire_at": RECEIVED}, KeysReason.KEY_RETIRED),
}


@pytest.mark.parametrize(
    ("times", "key_reason"), list(OPEN_KEY_CASES.values()), ids=list(OPEN_KEY_CASES)
)
def test_recipient_judges_sender_key_at_acceptance(
    two: env.Envelope, times: dict[str, int], key_reason: KeysReason | None
) -> None:
    directory_ = _sender_with(**times)
    if key_reason is None:
        open_as(world().pool[0], two, directory_=directory_)
        return
    with pytest.raises(env.EnvelopeSignatureError) as caught:
        open_as(world().pool[0], two, directory_=directory_)
    assert caught.value.reason is EnvelopeReason.SENDER_KEY_INVALID
    assert caught.value.key_reason is key_reason


# --- The recipient's checks ----------------------------------------------------------------


def test_expired_envelope_does_not_open(two: env.Envelope) -> None:
    assert _reason(lambda: open_as(world().pool[0], two, now=EXPIRES)) is EnvelopeReason.EXPIRED
    open_as(world().pool[0], two, now=EXPIRES - 1)


def test_recipient_without_the_listed_key(two: env.Envelope) -> None:
    recipient = world().pool[0]

    def without() -> env.Opened:
        return env.open_envelope(
            two,
            directory(),
            recipient=recipient.id,
            encrypt_keys={},
            accepted_at=RECEIVED,
            now=OPEN_AT,
        )

    def misfiled() -> env.Opened:
        # Another key filed under the listed kid is never tried.
        wrong = world().pool[1].encrypt
        return env.open_envelope(
            two,
            directory(),
            recipient=recipient.id,
            encrypt_keys={recipient.encrypt.kid: wrong},
            accepted_at=RECEIVED,
            now=OPEN_AT,
        )

    assert _reason(without) is EnvelopeReason.NO_RECIPIENT_KEY
    assert _reason(misfiled) is EnvelopeReason.NO_RECIPIENT_KEY


def _swap_stanzas(header: dict[str, Any]) -> None:
    first, second = header["recipients"][0], header["recipients"][1]
    first["stanza"], second["stanza"] = second["stanza"], first["stanza"]


def _change_stanza(header: dict[str, Any]) -> None:
    # The stanza of the partner that opens in these tests (recipients are sorted by id).
    (entry,) = [e for e in header["recipients"] if e["partner"] == world().pool[0].id]
    entry["stanza"] = _flip(entry["stanza"], 5)


def _change_commitment(header: dict[str, Any]) -> None:
    header["key_commitment"] = _flip(header["key_commitment"], 0)


def _change_created(header: dict[str, Any]) -> None:
    header["created_at"] -= 1


# A sender (or a bug) that signs what it built: each inner layer must still refuse on its own.
INNER_LAYER_CASES = {
    "stanza changed": (_change_stanza, EnvelopeReason.UNWRAP_FAILED),
    "stanzas swapped between recipients": (_swap_stanzas, EnvelopeReason.UNWRAP_FAILED),
    "commitment changed": (_change_commitment, EnvelopeReason.KEY_COMMITMENT),
    # The header hash is the AEAD's associated data: any header change breaks decryption.
    "another header field changed": (_change_created, EnvelopeReason.DECRYPT_FAILED),
}


@pytest.mark.parametrize(
    ("change", "reason"), list(INNER_LAYER_CASES.values()), ids=list(INNER_LAYER_CASES)
)
def test_inner_layers_refuse_a_signed_change(
    two: env.Envelope, change: Callable[[dict[str, Any]], None], reason: EnvelopeReason
) -> None:
    data = _header_case(change)(two)
    env.verify(data, directory(), at=RECEIVED)  # The gateway cannot tell.
    assert _reason(lambda: open_as(world().pool[0], data)) is reason


def test_signed_ciphertext_change_fails_decryption(two: env.Envelope) -> None:
    data = _rebuild(two, ciphertext=_flip(two.ciphertext, len(two.ciphertext) // 2))
    assert _reason(lambda: open_as(world().pool[0], data)) is EnvelopeReason.DECRYPT_FAILED


def test_commitment_to_another_key_is_caught_before_decryption(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The invisible-salamander shape: the commitment names a key other than the one wrapped.
    w = world()
    data = _forge(recipients=[w.pool[0]], commit_key=os.urandom(32))
    calls: list[object] = []
    real = crypto.aead_decrypt

    def spy(*args: Any) -> bytes:
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(crypto, "aead_decrypt", spy)
    assert _reason(lambda: open_as(w.pool[0], data)) is EnvelopeReason.KEY_COMMITMENT
    assert calls == []


FORGED_CASES: dict[str, tuple[dict[str, Any], EnvelopeReason]] = {
    "plaintext not the inner map": (
        {"plaintext": lambda hh: b"just bytes"},
        EnvelopeReason.INNER_MALFORMED,
    ),
    "inner map with an extra field": (
        {
            "plaintext": lambda hh: msgspec.msgpack.encode(
                {"body": body_of(), "signature": bytes(64), "x": 1}
            )
        },
        EnvelopeReason.INNER_MALFORMED,
    ),
    "inner signature by another key": (
        {"inner_signature": Ed25519KeyPair.generate(KeyUse.SIGN).sign(b"x")},
        EnvelopeReason.INNER_SIGNATURE,
    ),
    "body type differs from header": (
        {"body": body_of(message_type="referral")},
        EnvelopeReason.TYPE_MISMATCH,
    ),
    "body names another subject": (
        {"body": body_of([SUBJECTS[0], "00" * 16])},
        EnvelopeReason.SUBJECTS_MISMATCH,
    ),
    "body names fewer subjects": (
        {"body": body_of(SUBJECTS[:1])},
        EnvelopeReason.SUBJECTS_MISMATCH,
    ),
    "body names a subject twice": (
        {"body": body_of([*SUBJECTS, SUBJECTS[0]])},
        EnvelopeReason.SUBJECTS_MISMATCH,
    ),
    "body not JSON": ({"body": b"\xff"}, EnvelopeReason.BODY_MALFORMED),
    "body without subjects": (
        {"body": json.dumps({"type": "signal"}).encode()},
        EnvelopeReason.BODY_MALFORMED,
    ),
}


@pytest.mark.parametrize(("forge", "reason"), list(FORGED_CASES.values()), ids=list(FORGED_CASES))
def test_forged_by_the_sender_is_refused(forge: dict[str, Any], reason: EnvelopeReason) -> None:
    w = world()
    data = _forge(recipients=[w.pool[0]], **forge)
    env.verify(data, directory(), at=RECEIVED)
    assert _reason(lambda: open_as(w.pool[0], data)) is reason


def test_body_subjects_in_any_order_are_the_same_set() -> None:
    w = world()
    open_as(w.pool[0], _forge(recipients=[w.pool[0]], body=body_of(list(reversed(SUBJECTS)))))


# --- HPKE as used --------------------------------------------------------------------------


def _stanza_of(envelope: env.Envelope, partner: PartnerKeys) -> bytes:
    return env.decode_header(envelope.header).recipient(partner.id).stanza


def test_stanza_does_not_open_with_another_recipients_key(two: env.Envelope) -> None:
    w = world()
    mine, other = w.pool[0], w.pool[1]
    header = env.decode_header(two.header)
    stanza = _stanza_of(two, mine)
    for info_kid in (mine.encrypt.kid, other.encrypt.kid):
        info = crypto.hpke_info(header.message_id, header.sender_kid, info_kid)
        with pytest.raises(crypto.CryptoFailure):
            crypto.unwrap_content_key(stanza, other.encrypt.hpke_private_key(), info)
    # The right key and info do open it (so the failures above are about the key).
    info = crypto.hpke_info(header.message_id, header.sender_kid, mine.encrypt.kid)
    assert len(crypto.unwrap_content_key(stanza, mine.encrypt.hpke_private_key(), info)) == 32


INFO_CASES = {
    "message id": lambda mid, s, r: (env.derive_message_id(OUTBOX_KEY, "other"), s, r),
    "sender kid": lambda mid, s, r: (mid, world().pool[3].sign.kid, r),
    "recipient kid": lambda mid, s, r: (mid, s, world().pool[1].encrypt.kid),
}


@pytest.mark.parametrize("change", list(INFO_CASES.values()), ids=list(INFO_CASES))
def test_changed_hpke_info_fails(
    two: env.Envelope, change: Callable[[str, str, str], tuple[str, str, str]]
) -> None:
    recipient = world().pool[0]
    header = env.decode_header(two.header)
    stanza = _stanza_of(two, recipient)
    info = crypto.hpke_info(*change(header.message_id, header.sender_kid, recipient.encrypt.kid))
    with pytest.raises(crypto.CryptoFailure):
        crypto.unwrap_content_key(stanza, recipient.encrypt.hpke_private_key(), info)


class _SpySuite:
    """Stands in for the HPKE suite and records every decryption attempted."""

    def __init__(self, real: hpke.Suite) -> None:
        self.real = real
        self.decrypts = 0

    def encrypt(self, *args: Any, **kwargs: Any) -> bytes:
        return self.real.encrypt(*args, **kwargs)

    def decrypt(self, *args: Any, **kwargs: Any) -> bytes:
        self.decrypts += 1
        return self.real.decrypt(*args, **kwargs)


@pytest.fixture
def spy_suite(monkeypatch: pytest.MonkeyPatch) -> _SpySuite:
    spy = _SpySuite(crypto._SUITE)
    monkeypatch.setattr(crypto, "_SUITE", spy)
    return spy


@pytest.mark.parametrize("length", [0, 1, 1120, 1167, 1169, 2 * 1168])
def test_wrong_length_stanza_refused_before_decryption(
    two: env.Envelope, spy_suite: _SpySuite, length: int
) -> None:
    recipient = world().pool[0]
    # Envelope path: refused as stanza_length, and HPKE never ran.
    data = _header_case(_stanza(length))(two)
    assert _reason(lambda: open_as(recipient, data)) is EnvelopeReason.STANZA_LENGTH
    assert spy_suite.decrypts == 0
    # The helper on its own refuses too, before HPKE.
    stanza = _stanza_of(two, recipient)[:length].ljust(length, b"\x00")
    info = crypto.hpke_info("0" * 64, "0" * 64, recipient.encrypt.kid)
    with pytest.raises(crypto.CryptoFailure):
        crypto.unwrap_content_key(stanza, recipient.encrypt.hpke_private_key(), info)
    assert spy_suite.decrypts == 0
    # Control: the spy does see a decryption of a right-length stanza.
    open_as(recipient, two)
    assert spy_suite.decrypts == 1


# --- Tampering (property) ------------------------------------------------------------------


def _region(envelope: env.Envelope, region: str) -> tuple[str, int, int]:
    """``(field, start, length)`` of a region inside the envelope's fields."""
    header = env.decode_header(envelope.header)
    match region:
        case "header":
            return "header", 0, len(envelope.header)
        case "stanza":
            stanza = header.recipient(world().pool[0].id).stanza
            return "header", envelope.header.index(stanza), len(stanza)
        case "commitment":
            return "header", envelope.header.index(header.key_commitment), 32
        case "ciphertext":
            return "ciphertext", 0, len(envelope.ciphertext)
        case _:
            return "signature", 0, 64


# Changing any header byte breaks either its form or the signature over it; which of these
# comes first depends on the byte (a length prefix, the sender's id, a stanza byte).
HEADER_TAMPER = {
    EnvelopeReason.MALFORMED,
    EnvelopeReason.UNKNOWN_VERSION,
    EnvelopeReason.UNKNOWN_SUITE,
    EnvelopeReason.STANZA_LENGTH,
    EnvelopeReason.UNKNOWN_SENDER_KEY,
    EnvelopeReason.BAD_SIGNATURE,
}
# What the recipient's own layer says once the change is signed again (a lying sender).
RESIGNED = {
    "stanza": {EnvelopeReason.UNWRAP_FAILED},
    "commitment": {EnvelopeReason.KEY_COMMITMENT},
    "ciphertext": {EnvelopeReason.DECRYPT_FAILED},
}


@settings(PROPERTY, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    region=st.sampled_from(["header", "stanza", "commitment", "ciphertext", "signature"]),
    position=st.floats(0, 1, exclude_max=True),
    mask=st.integers(1, 255),
)
def test_single_byte_change_is_refused(
    two: env.Envelope, region: str, position: float, mask: int
) -> None:
    field, start, length = _region(two, region)
    index = start + int(position * length)
    changed = msgspec.structs.replace(two, **{field: _flip(getattr(two, field), index, mask)})
    recipient = world().pool[0]
    verify_reason = _reason(lambda: env.verify(changed, directory(), at=RECEIVED))
    open_reason = _reason(lambda: open_as(recipient, changed))
    expected = HEADER_TAMPER if region == "header" else {EnvelopeReason.BAD_SIGNATURE}
    assert verify_reason in expected
    assert open_reason == verify_reason  # The recipient repeats the gateway's checks first.
    if region in RESIGNED:
        resigned = _rebuild(changed)
        env.verify(resigned, directory(), at=RECEIVED)
        assert _reason(lambda: open_as(recipient, resigned)) in RESIGNED[region]


@settings(PROPERTY, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.floats(0, 1, exclude_max=True), mask=st.integers(1, 255))
def test_single_byte_change_on_the_wire_is_refused(
    two: env.Envelope, position: float, mask: int
) -> None:
    data = env.encode_envelope(two)
    changed = _flip(data, int(position * len(data)), mask)
    with pytest.raises(EnvelopeError):
        env.verify(changed, directory(), at=RECEIVED)
    with pytest.raises(EnvelopeError):
        open_as(world().pool[0], changed)


# --- Who may open --------------------------------------------------------------------------


@PROPERTY
@given(recipients=st.sets(st.integers(0, 3), min_size=1, max_size=3))
def test_non_recipient_cannot_open(recipients: set[int]) -> None:
    w = world()
    chosen = [w.pool[i] for i in sorted(recipients)]
    data = env.encode_envelope(seal_to(chosen))
    outsiders = [p for p in (*w.pool, w.outsider, w.sender) if p not in chosen]
    for outsider in outsiders:
        assert _reason(partial(open_as, outsider, data)) is EnvelopeReason.NOT_A_RECIPIENT
        # Claiming a listed partner's id does not help without that partner's key.
        for listed in chosen:

            def pose(o: PartnerKeys = outsider, as_: PartnerKeys = listed) -> env.Opened:
                return env.open_envelope(
                    data,
                    directory(),
                    recipient=as_.id,
                    encrypt_keys=o.encrypt_keys,
                    accepted_at=RECEIVED,
                    now=OPEN_AT,
                )

            assert _reason(pose) is EnvelopeReason.NO_RECIPIENT_KEY


# --- Re-sealing to a third party -----------------------------------------------------------


@dataclass(frozen=True)
class _Leak:
    """What a recipient that turned bad holds after opening a message honestly."""

    header: env.Header
    body: bytes
    inner_signature: bytes
    content_key: bytes


def _leak(envelope: env.Envelope, insider: PartnerKeys) -> _Leak:
    opened = open_as(insider, envelope)
    header = opened.header
    info = crypto.hpke_info(header.message_id, header.sender_kid, insider.encrypt.kid)
    stanza = header.recipient(insider.id).stanza
    content_key = crypto.unwrap_content_key(stanza, insider.encrypt.hpke_private_key(), info)
    return _Leak(header, opened.body, opened.inner_signature, content_key)


def test_resealed_to_a_third_party_under_the_senders_name(two: env.Envelope) -> None:
    w = world()
    insider, third = w.pool[0], w.pool[3]
    leak = _leak(two, insider)
    # The insider rebuilds the envelope for a partner the sender never addressed, keeping the
    # sender's name, kid, message id, commitment and inner signature.
    data = _forge(
        recipients=[third],
        body=leak.body,
        content_key=leak.content_key,
        inner_signature=leak.inner_signature,
        message_id=leak.header.message_id,
        outer_key=insider.sign,
    )
    # It cannot make the sender's outer signature…
    assert _reason(lambda: env.verify(data, directory(), at=RECEIVED)) is (
        EnvelopeReason.BAD_SIGNATURE
    )
    assert _reason(lambda: open_as(third, data)) is EnvelopeReason.BAD_SIGNATURE
    # …and even where that barrier is assumed away (the outer signature made by the sender's
    # key), the inner signature covers the header hash and so the original recipient list.
    data = _forge(
        recipients=[third],
        body=leak.body,
        content_key=leak.content_key,
        inner_signature=leak.inner_signature,
        message_id=leak.header.message_id,
    )
    assert _reason(lambda: open_as(third, data)) is EnvelopeReason.INNER_SIGNATURE


def test_resealed_to_a_third_party_under_the_insiders_name(two: env.Envelope) -> None:
    w = world()
    insider, third = w.pool[0], w.pool[3]
    leak = _leak(two, insider)
    # Honest outer signature by the insider, sender's inner signature carried along.
    data = _forge(
        sender=insider,
        recipients=[third],
        body=leak.body,
        inner_signature=leak.inner_signature,
    )
    env.verify(data, directory(), at=RECEIVED)
    assert _reason(lambda: open_as(third, data)) is EnvelopeReason.INNER_SIGNATURE


def test_third_party_added_to_the_recipient_list(two: env.Envelope) -> None:
    w = world()
    insider, third = w.pool[0], w.pool[3]
    leak = _leak(two, insider)
    header = _header_dict(two)
    header["recipients"].append(
        {
            "partner": third.id,
            "kid": third.encrypt.kid,
            "stanza": crypto.wrap_content_key(
                leak.content_key,
                hpke_public_key(third.encrypt.public),
                crypto.hpke_info(leak.header.message_id, leak.header.sender_kid, third.encrypt.kid),
            ),
        }
    )
    header["recipients"].sort(key=lambda e: e["partner"])
    unsigned = _wire(msgspec.msgpack.encode(header), two.ciphertext, two.signature)
    assert _reason(lambda: open_as(third, unsigned)) is EnvelopeReason.BAD_SIGNATURE
    # With the outer signature assumed away, the changed header hash no longer matches the
    # AEAD's associated data.
    resigned = _rebuild(two, header=header)
    assert _reason(lambda: open_as(third, resigned)) is EnvelopeReason.DECRYPT_FAILED


def test_original_envelope_handed_to_a_third_party(two: env.Envelope) -> None:
    third = world().pool[3]
    assert _reason(lambda: open_as(third, two)) is EnvelopeReason.NOT_A_RECIPIENT


# --- Proofs --------------------------------------------------------------------------------


def test_proof_of_receipt(two: env.Envelope) -> None:
    w = world()
    opened = open_as(w.pool[0], two)
    proof = env.decode_proof(env.encode_proof(opened.proof))
    header = env.verify_proof(proof, directory(), accepted_at=RECEIVED, now=OPEN_AT)
    assert header == opened.header
    assert {e.partner for e in header.recipients} == {w.pool[0].id, w.pool[1].id}
    altered = msgspec.structs.replace(proof, body=body_of(note="iets anders"))
    assert (
        _reason(lambda: env.verify_proof(altered, directory(), accepted_at=RECEIVED, now=OPEN_AT))
        is EnvelopeReason.INNER_SIGNATURE
    )
    assert _reason(lambda: env.decode_proof(b"\x00")) is EnvelopeReason.MALFORMED


def test_inner_signature_is_not_an_outer_signature(two: env.Envelope) -> None:
    # Domain separation: the inner signature put in the outer slot never verifies.
    opened = open_as(world().pool[0], two)
    data = _wire(two.header, two.ciphertext, opened.inner_signature)
    assert _reason(lambda: env.verify(data, directory(), at=RECEIVED)) is (
        EnvelopeReason.BAD_SIGNATURE
    )


# --- Freshness and message ids -------------------------------------------------------------


@PROPERTY
@given(note=st.text(max_size=200))
def test_two_seals_of_the_same_body_differ(note: str) -> None:
    w = world()
    body = body_of(note=note)
    first, second = seal_to(w.pool[:2], body=body), seal_to(w.pool[:2], body=body)
    h1, h2 = env.decode_header(first.header), env.decode_header(second.header)
    assert h1.message_id == h2.message_id  # Same record, same id: a reseal.
    assert h1.key_commitment != h2.key_commitment  # A fresh content key…
    assert all(a.stanza != b.stanza for a, b in zip(h1.recipients, h2.recipients, strict=True))
    assert first.ciphertext[:24] != second.ciphertext[:24]  # …and a fresh nonce.
    assert first.ciphertext != second.ciphertext
    assert first.header != second.header


@PROPERTY
@given(
    record=st.text(max_size=64),
    other=st.text(max_size=64),
    key=st.binary(min_size=32, max_size=64),
    other_key=st.binary(min_size=32, max_size=64),
)
def test_message_id_derivation(record: str, other: str, key: bytes, other_key: bytes) -> None:
    first = env.derive_message_id(key, record)
    assert first == env.derive_message_id(key, record)
    assert len(first) == 64
    assert int(first, 16) >= 0
    assert first == first.lower()
    if other != record:
        assert env.derive_message_id(key, other) != first
    if other_key != key:
        assert env.derive_message_id(other_key, record) != first


def test_message_id_needs_a_real_outbox_key() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        env.derive_message_id(bytes(31), "record")


def test_message_id_known_answer() -> None:
    framed = b"ketenpost/v1/message-id\x00" + len(b"r-1").to_bytes(4, "big") + b"r-1"
    import hmac

    expected = hmac.new(OUTBOX_KEY, framed, hashlib.sha256).hexdigest()
    assert env.derive_message_id(OUTBOX_KEY, "r-1") == expected


# --- What seal refuses ---------------------------------------------------------------------


def _entry_of(partner: PartnerKeys, use: KeyUse) -> DirectoryKey:
    return next(k for k in partner.partner.keys if k.use is use)


SEAL_CASES: dict[str, tuple[dict[str, Any], EnvelopeReason]] = {
    "token key signs": (
        {"sign_key": Ed25519KeyPair.generate(KeyUse.TOKEN)},
        EnvelopeReason.WRONG_KEY_USE,
    ),
    "recipient sign key": (
        {"recipients": [("om", "SIGN")]},
        EnvelopeReason.WRONG_KEY_USE,
    ),
    "recipient twice": (
        {"recipients": [("om", "ENCRYPT"), ("om", "ENCRYPT")]},
        EnvelopeReason.MALFORMED,
    ),
    "tampered key entry": ({"recipients": [("om", "BAD-KID")]}, EnvelopeReason.MALFORMED),
    "no recipients": ({"recipients": []}, EnvelopeReason.MALFORMED),
    "subject twice": (
        {"subjects": [SUBJECTS[0], SUBJECTS[0]], "body": body_of([SUBJECTS[0]])},
        EnvelopeReason.MALFORMED,
    ),
    "body type differs": ({"body": body_of(message_type="closure")}, EnvelopeReason.TYPE_MISMATCH),
    "body subjects differ": ({"body": body_of(SUBJECTS[:1])}, EnvelopeReason.SUBJECTS_MISMATCH),
    "body not JSON": ({"body": b"<xml/>"}, EnvelopeReason.BODY_MALFORMED),
    "body too large": ({"body": bytes(env.MAX_BODY_BYTES + 1)}, EnvelopeReason.TOO_LARGE),
    "bad message id": ({"message_id": "Z" * 64}, EnvelopeReason.MALFORMED),
    "bad trace id": ({"trace_id": "not-a-traceparent"}, EnvelopeReason.MALFORMED),
    "bad token id": ({"token_id": "t-1"}, EnvelopeReason.MALFORMED),
    "bad sender id": ({"sender": "Gemeente Velsen"}, EnvelopeReason.MALFORMED),
    "expires at created": ({"expires_at": CREATED}, EnvelopeReason.MALFORMED),
    "negative time": ({"created_at": -5}, EnvelopeReason.MALFORMED),
}


@pytest.mark.parametrize(("changes", "reason"), list(SEAL_CASES.values()), ids=list(SEAL_CASES))
def test_seal_refuses(changes: dict[str, Any], reason: EnvelopeReason) -> None:
    om = world().pool[1]
    if "recipients" in changes:
        entries = []
        for partner_id, what in changes["recipients"]:
            assert partner_id == om.id
            if what == "BAD-KID":
                # Kid of one key over another's public bytes.
                entry = msgspec.structs.replace(
                    _entry_of(om, KeyUse.ENCRYPT), kid=world().pool[0].encrypt.kid
                )
            else:
                entry = _entry_of(om, KeyUse[what])
            entries.append((partner_id, entry))
        changes = changes | {"recipients": entries}
    with pytest.raises(env.SealError) as caught:
        env.seal(**(seal_args([om]) | changes))
    assert caught.value.reason is reason
