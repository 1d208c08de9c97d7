"""Signed objects: a payload carried as its exact signed bytes, never re-encoded.

Rules kept here:

* A signed object is ``{payload: bytes, kid: str, sig: bytes}``. ``payload`` is the msgpack
  encoding of a frozen msgspec struct; the signature covers
  ``framed(label, payload)`` (see ``labels.framed``), so each object type has its own label.
* Verifying decodes the payload **after** the signature verified, from the very bytes that were
  signed (house rule: never sign a re-encoding).
* Verification raises ``keys.BadSignatureError``; the caller chooses which keys are acceptable
  (``public_for_kid``), because who may sign what differs per object.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

import msgspec

from gateway.protocol.labels import framed
from keys import BadSignatureError, Ed25519KeyPair, verify_ed25519

T = TypeVar("T")

Kid = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$", min_length=64, max_length=64)]

_ENCODER = msgspec.msgpack.Encoder()


class SignedObject(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    payload: bytes
    kid: Kid
    sig: Annotated[bytes, msgspec.Meta(min_length=64, max_length=64)]


def encode_payload(value: msgspec.Struct) -> bytes:
    return _ENCODER.encode(value)


def sign_object(label: bytes, value: msgspec.Struct, key: Ed25519KeyPair) -> SignedObject:
    """Encode ``value`` once and sign those bytes under ``label``."""
    payload = _ENCODER.encode(value)
    return SignedObject(payload=payload, kid=key.kid, sig=key.sign(framed(label, payload)))


def verify_object(
    label: bytes,
    obj: SignedObject,
    payload_type: type[T],
    public_for_kid: Callable[[str], bytes],
) -> T:
    """Verify ``obj`` under ``label`` and return its decoded payload.

    ``public_for_kid`` returns the Ed25519 public key acceptable for ``obj.kid`` or raises (the
    caller's check of owner, use and key state). A payload that does not decode as
    ``payload_type`` after a valid signature is reported as a bad signature too: a signer never
    produces one, so it is a forgery or a bug, and the outside gets one opaque error.
    """
    public = public_for_kid(obj.kid)
    verify_ed25519(public, framed(label, obj.payload), obj.sig)
    try:
        return msgspec.msgpack.decode(obj.payload, type=payload_type)
    except msgspec.ValidationError:
        raise BadSignatureError("signed payload does not decode") from None
