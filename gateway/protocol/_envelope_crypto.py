"""The envelope's primitives, composed exactly one way. Private to ``gateway.protocol``.

Rules kept here:

* No home-made cryptography: XChaCha20-Poly1305 comes from libsodium (PyNaCl), HPKE (RFC 9180)
  and HKDF from pyca ``cryptography``; this module only fixes how they are called, so the
  envelope and the tests that hold these calls against published vectors use the very same
  code.
* Every input to a derivation or a wrap is built with ``labels.framed`` under its own label.
* Failures raise ``CryptoFailure``; the envelope turns them into its own reasons. Nothing here
  returns a bool, and no failure says more than "it did not open".
* Lengths are checked before any decryption is attempted, so a wrong-length input never reaches
  a primitive (the HPKE stanza in particular).
"""

from __future__ import annotations

import hmac
import secrets
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl import bindings as sodium
from nacl.exceptions import CryptoError

from gateway.protocol import labels

CONTENT_KEY_LEN: Final = 32
NONCE_LEN: Final = 24  # XChaCha20's extended nonce: random nonces never collide in practice.
TAG_LEN: Final = 16
COMMITMENT_LEN: Final = 32
# HPKE with MLKEM768_X25519: the encapsulated key (1,088-byte ML-KEM ciphertext + 32-byte X25519
# share) followed by the sealed 32-byte content key and its 16-byte ChaCha20-Poly1305 tag.
STANZA_LEN: Final = hpke.KEM.MLKEM768_X25519.enc_length() + CONTENT_KEY_LEN + TAG_LEN

# The HPKE suite is immutable; building it once is building it the one way.
_SUITE: Final = hpke.Suite(
    hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305
)


class CryptoFailure(Exception):
    """A primitive refused its input (wrong length, wrong key, altered data). Opaque."""


def new_content_key() -> bytes:
    """A fresh random 32-byte content key, one per message."""
    return secrets.token_bytes(CONTENT_KEY_LEN)


def hpke_info(message_id: str, sender_kid: str, recipient_kid: str) -> bytes:
    """HPKE ``info``: binds a stanza to one message, one sender key and one recipient key."""
    return labels.framed(
        labels.HPKE_WRAP,
        message_id.encode("ascii"),
        sender_kid.encode("ascii"),
        recipient_kid.encode("ascii"),
    )


def wrap_content_key(
    content_key: bytes, recipient: hpke.MLKEM768X25519PublicKey, info: bytes
) -> bytes:
    """HPKE base-mode seal of the content key to one recipient: the 1,168-byte stanza."""
    if len(content_key) != CONTENT_KEY_LEN:
        raise CryptoFailure("content key has the wrong length")
    stanza = _SUITE.encrypt(content_key, recipient, info=info)
    # A different length would mean a different suite slipped in; fail loudly at the sender.
    if len(stanza) != STANZA_LEN:
        raise CryptoFailure("HPKE produced a stanza of unexpected length")
    return stanza


def unwrap_content_key(
    stanza: bytes, recipient: hpke.MLKEM768X25519PrivateKey, info: bytes
) -> bytes:
    """Open one stanza; raise ``CryptoFailure`` unless it yields a 32-byte content key.

    The length is checked first: a wrong-length stanza never reaches HPKE decryption.
    """
    if len(stanza) != STANZA_LEN:
        raise CryptoFailure("stanza has the wrong length")
    try:
        content_key = _SUITE.decrypt(stanza, recipient, info=info)
    except (InvalidTag, ValueError):
        raise CryptoFailure("stanza did not open") from None
    if len(content_key) != CONTENT_KEY_LEN:
        raise CryptoFailure("stanza holds no content key")
    return content_key


def key_commitment(content_key: bytes, message_id: str) -> bytes:
    """``HKDF-SHA256(ikm=content key, salt=none, info=framed(KEY_COMMITMENT, message id))``.

    XChaCha20-Poly1305 does not commit to its key: a ciphertext can be made that opens under two
    keys to two plaintexts, one per recipient. Publishing this value in the signed header and
    checking it before decrypting pins every recipient to the same key.
    """
    return HKDF(
        algorithm=hashes.SHA256(),
        length=COMMITMENT_LEN,
        salt=None,
        info=labels.framed(labels.KEY_COMMITMENT, message_id.encode("ascii")),
    ).derive(content_key)


def check_key_commitment(content_key: bytes, message_id: str, commitment: bytes) -> None:
    """Raise ``CryptoFailure`` unless ``commitment`` is the content key's commitment."""
    # Constant-time: the comparison must not tell a prober how many leading bytes matched.
    if not hmac.compare_digest(key_commitment(content_key, message_id), commitment):
        raise CryptoFailure("key commitment does not match")


def aead_encrypt(content_key: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """``nonce (24, random) ‖ XChaCha20-Poly1305(key, nonce, ad, plaintext) ‖ tag (16)``."""
    return aead_encrypt_with_nonce(
        content_key, secrets.token_bytes(NONCE_LEN), plaintext, associated_data
    )


def aead_encrypt_with_nonce(
    content_key: bytes, nonce: bytes, plaintext: bytes, associated_data: bytes
) -> bytes:
    """As ``aead_encrypt`` with a given nonce. Only tests pass a nonce (for known answers)."""
    if len(content_key) != CONTENT_KEY_LEN or len(nonce) != NONCE_LEN:
        raise CryptoFailure("wrong key or nonce length")
    sealed = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
        plaintext, associated_data, nonce, content_key
    )
    return nonce + sealed


def aead_decrypt(content_key: bytes, data: bytes, associated_data: bytes) -> bytes:
    """Invert ``aead_encrypt``; raise ``CryptoFailure`` if anything was altered."""
    if len(content_key) != CONTENT_KEY_LEN or len(data) < NONCE_LEN + TAG_LEN:
        raise CryptoFailure("wrong key or ciphertext length")
    try:
        return sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
            data[NONCE_LEN:], associated_data, data[:NONCE_LEN], content_key
        )
    except (CryptoError, ValueError, TypeError):
        raise CryptoFailure("ciphertext did not open") from None
