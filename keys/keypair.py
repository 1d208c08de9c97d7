"""Key pairs, one per use, and their key ids.

Rules kept here:

* One key, one use (DESIGN.md "Identities and keys"): ``sign`` and ``token`` are Ed25519,
  ``encrypt`` is the hybrid ML-KEM-768 + X25519 KEM used by HPKE, ``tls`` is the key of the
  partner's X.509 certificate (ECDSA P-256, so TLS 1.2 peers can use it).
* ``kid = SHA-256(use ‖ 0x00 ‖ algorithm ‖ 0x00 ‖ public key bytes)``, hex-encoded. The zero
  separators make the concatenation unambiguous (use and algorithm names never contain NUL).
  For ``encrypt`` the public key bytes are the ML-KEM-768 encapsulation key (1,184 bytes)
  followed by the X25519 public key (32 bytes); both lengths are fixed, so that is unambiguous.
  For ``tls`` they are the DER SubjectPublicKeyInfo of the certificate key.
* Ed25519 signing and verification go through libsodium (PyNaCl): measured 1.5x faster than
  pyca for verification, and it is the gateway's hot path. Verification raises
  ``BadSignatureError``; it never returns a bool.
* Private key material never appears in ``repr``.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from functools import lru_cache

import nacl.exceptions
import nacl.signing
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec, mlkem, x25519

from keys.errors import BadSignatureError, KeysError, KeysReason


class KeyUse(enum.StrEnum):
    """What a key may be used for. A key has exactly one use."""

    SIGN = "sign"
    ENCRYPT = "encrypt"
    TOKEN = "token"
    TLS = "tls"


class Algorithm(enum.StrEnum):
    """Algorithm names as they enter the kid and the directory."""

    ED25519 = "ed25519"
    MLKEM768_X25519 = "mlkem768-x25519"
    TLS_SPKI = "x509-spki"


ALGORITHM_FOR_USE: dict[KeyUse, Algorithm] = {
    KeyUse.SIGN: Algorithm.ED25519,
    KeyUse.TOKEN: Algorithm.ED25519,
    KeyUse.ENCRYPT: Algorithm.MLKEM768_X25519,
    KeyUse.TLS: Algorithm.TLS_SPKI,
}

ED25519_PUBLIC_LEN = 32
ED25519_SIGNATURE_LEN = 64
MLKEM768_PUBLIC_LEN = 1184
X25519_PUBLIC_LEN = 32
MLKEM_SEED_LEN = 64
X25519_PRIVATE_LEN = 32


def compute_kid(use: KeyUse, algorithm: Algorithm, public: bytes) -> str:
    """Return the hex key id of a public key: SHA-256(use ‖ 0 ‖ algorithm ‖ 0 ‖ public)."""
    h = hashlib.sha256()
    h.update(use.value.encode("ascii"))
    h.update(b"\x00")
    h.update(algorithm.value.encode("ascii"))
    h.update(b"\x00")
    h.update(public)
    return h.hexdigest()


@lru_cache(maxsize=4096)
def _verify_key(public: bytes) -> nacl.signing.VerifyKey:
    # Building a VerifyKey validates the point; caching it by its public bytes is safe because
    # the object is immutable and keyed by exactly what it was built from.
    return nacl.signing.VerifyKey(public)


def verify_ed25519(public: bytes, message: bytes, signature: bytes) -> None:
    """Verify an Ed25519 signature; raise ``BadSignatureError`` if it does not verify.

    Wrong lengths of key or signature are reported as a bad signature too: the outside world
    learns one opaque error.
    """
    if len(public) != ED25519_PUBLIC_LEN or len(signature) != ED25519_SIGNATURE_LEN:
        raise BadSignatureError("signature did not verify")
    try:
        _verify_key(public).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        raise BadSignatureError("signature did not verify") from None


@dataclass(frozen=True, repr=False)
class Ed25519KeyPair:
    """An Ed25519 key pair for ``sign`` or ``token`` use."""

    use: KeyUse
    _signing_key: nacl.signing.SigningKey

    @classmethod
    def generate(cls, use: KeyUse) -> Ed25519KeyPair:
        if ALGORITHM_FOR_USE[use] is not Algorithm.ED25519:
            raise KeysError(f"use {use} is not an Ed25519 use", KeysReason.WRONG_KEY_USE)
        return cls(use, nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, use: KeyUse, seed: bytes) -> Ed25519KeyPair:
        if len(seed) != 32:
            raise KeysError("an Ed25519 seed is 32 bytes", KeysReason.MALFORMED_KEY)
        return cls(use, nacl.signing.SigningKey(seed))

    @property
    def algorithm(self) -> Algorithm:
        return Algorithm.ED25519

    @property
    def public(self) -> bytes:
        return bytes(self._signing_key.verify_key)

    @property
    def kid(self) -> str:
        return compute_kid(self.use, Algorithm.ED25519, self.public)

    def secret_bytes(self) -> bytes:
        """The 32-byte seed. Only key files may call this."""
        return bytes(self._signing_key)

    def sign(self, message: bytes) -> bytes:
        """Return the 64-byte detached signature over ``message``."""
        return self._signing_key.sign(message).signature

    def __repr__(self) -> str:
        return f"Ed25519KeyPair(use={self.use.value}, kid={self.kid[:16]}…)"


@dataclass(frozen=True, repr=False)
class HybridKemKeyPair:
    """The ``encrypt`` key: ML-KEM-768 + X25519, as HPKE's ``KEM.MLKEM768_X25519``.

    Stored as its two components (a 64-byte ML-KEM seed and a 32-byte X25519 private key)
    because pyca's combined key object has no byte form.
    """

    _mlkem: mlkem.MLKEM768PrivateKey
    _x25519: x25519.X25519PrivateKey

    use = KeyUse.ENCRYPT

    @classmethod
    def generate(cls) -> HybridKemKeyPair:
        return cls(mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate())

    @classmethod
    def from_secret_bytes(cls, secret: bytes) -> HybridKemKeyPair:
        """Rebuild from ``mlkem seed (64) ‖ x25519 private (32)``."""
        if len(secret) != MLKEM_SEED_LEN + X25519_PRIVATE_LEN:
            raise KeysError("an encrypt key secret is 96 bytes", KeysReason.MALFORMED_KEY)
        return cls(
            mlkem.MLKEM768PrivateKey.from_seed_bytes(secret[:MLKEM_SEED_LEN]),
            x25519.X25519PrivateKey.from_private_bytes(secret[MLKEM_SEED_LEN:]),
        )

    @property
    def algorithm(self) -> Algorithm:
        return Algorithm.MLKEM768_X25519

    @property
    def public_mlkem(self) -> bytes:
        return self._mlkem.public_key().public_bytes_raw()

    @property
    def public_x25519(self) -> bytes:
        return self._x25519.public_key().public_bytes_raw()

    @property
    def public(self) -> bytes:
        return self.public_mlkem + self.public_x25519

    @property
    def kid(self) -> str:
        return compute_kid(KeyUse.ENCRYPT, Algorithm.MLKEM768_X25519, self.public)

    def secret_bytes(self) -> bytes:
        """``mlkem seed ‖ x25519 private``. Only key files may call this."""
        return self._mlkem.private_bytes_raw() + self._x25519.private_bytes_raw()

    def hpke_private_key(self) -> hpke.MLKEM768X25519PrivateKey:
        return hpke.MLKEM768X25519PrivateKey(self._mlkem, self._x25519)

    def __repr__(self) -> str:
        return f"HybridKemKeyPair(kid={self.kid[:16]}…)"


def hpke_public_key(public: bytes) -> hpke.MLKEM768X25519PublicKey:
    """Build the HPKE recipient key from ``mlkem public (1184) ‖ x25519 public (32)``."""
    if len(public) != MLKEM768_PUBLIC_LEN + X25519_PUBLIC_LEN:
        raise KeysError("an encrypt public key is 1,216 bytes", KeysReason.MALFORMED_KEY)
    try:
        return hpke.MLKEM768X25519PublicKey(
            mlkem.MLKEM768PublicKey.from_public_bytes(public[:MLKEM768_PUBLIC_LEN]),
            x25519.X25519PublicKey.from_public_bytes(public[MLKEM768_PUBLIC_LEN:]),
        )
    except ValueError:
        raise KeysError("malformed encrypt public key", KeysReason.MALFORMED_KEY) from None


@dataclass(frozen=True, repr=False)
class TlsKeyPair:
    """The key of a partner's (or the gateway's) TLS certificate: ECDSA P-256."""

    _key: ec.EllipticCurvePrivateKey

    use = KeyUse.TLS

    @classmethod
    def generate(cls) -> TlsKeyPair:
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @property
    def algorithm(self) -> Algorithm:
        return Algorithm.TLS_SPKI

    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey:
        return self._key

    @property
    def public(self) -> bytes:
        """DER SubjectPublicKeyInfo: what the directory pins and certificates carry."""
        return self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def kid(self) -> str:
        return compute_kid(KeyUse.TLS, Algorithm.TLS_SPKI, self.public)

    def __repr__(self) -> str:
        return f"TlsKeyPair(kid={self.kid[:16]}…)"


def spki_kid(spki_der: bytes) -> str:
    """The ``tls`` kid of a certificate's DER SubjectPublicKeyInfo."""
    return compute_kid(KeyUse.TLS, Algorithm.TLS_SPKI, spki_der)


KeyPair = Ed25519KeyPair | HybridKemKeyPair | TlsKeyPair


def generate(use: KeyUse) -> KeyPair:
    """Generate a fresh key pair for ``use``."""
    match use:
        case KeyUse.SIGN | KeyUse.TOKEN:
            return Ed25519KeyPair.generate(use)
        case KeyUse.ENCRYPT:
            return HybridKemKeyPair.generate()
        case KeyUse.TLS:
            return TlsKeyPair.generate()
