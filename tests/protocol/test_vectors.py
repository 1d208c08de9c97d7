"""Published test vectors against the primitives exactly as the project calls them.

* RFC 8032 section 7.1 Ed25519 vectors (typed in) against ``keys.Ed25519KeyPair`` and
  ``keys.verify_ed25519``.
* Wycheproof ``ed25519_test.json`` against ``verify_ed25519``: valid verifies, invalid raises
  ``BadSignatureError``. (The file has no ``acceptable`` cases.)
* Wycheproof ``x25519_test.json`` against pyca's X25519, the Diffie-Hellman inside the hybrid
  HPKE KEM. ``acceptable`` cases (twist points, non-canonical and low-order public keys) are
  held to this rule: pyca must compute the listed shared secret, except where that secret is
  all zeros (a low-order public key), which pyca must refuse with ``ValueError`` — the check
  RFC 9180 section 7.1.4 asks of DHKEM, so a contributory-behaviour failure can never pass
  silently. Valid cases must compute the listed secret.
* Wycheproof ``xchacha20_poly1305_test.json`` against the libsodium calls the envelope makes
  (``gateway.protocol._envelope_crypto``): valid vectors encrypt to the listed ciphertext and
  decrypt to the message, invalid ones fail to decrypt.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519
from nacl import bindings as sodium
from nacl.exceptions import CryptoError

from gateway.protocol import _envelope_crypto as crypto
from keys import BadSignatureError, Ed25519KeyPair, KeyUse, verify_ed25519

VECTORS = Path(__file__).resolve().parent.parent / "vectors"


def _tests(name: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``(group, test)`` pairs of a Wycheproof file."""
    data = json.loads((VECTORS / name).read_text())
    return [(group, test) for group in data["testGroups"] for test in group["tests"]]


def _ids(cases: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[str]:
    return [f"tc{test['tcId']}-{test['result']}" for _, test in cases]


# --- RFC 8032 section 7.1 ------------------------------------------------------------------

RFC8032 = [
    pytest.param(
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        id="TEST 1",
    ),
    pytest.param(
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        id="TEST 2",
    ),
    pytest.param(
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
        id="TEST 3",
    ),
    pytest.param(
        "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
        "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b58909351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
        id="TEST SHA(abc)",
    ),
]


@pytest.mark.parametrize(("secret", "public", "message", "signature"), RFC8032)
def test_rfc8032_ed25519(secret: str, public: str, message: str, signature: str) -> None:
    pair = Ed25519KeyPair.from_seed(KeyUse.SIGN, bytes.fromhex(secret))
    msg = bytes.fromhex(message)
    assert pair.public.hex() == public
    assert pair.sign(msg).hex() == signature
    verify_ed25519(bytes.fromhex(public), msg, bytes.fromhex(signature))
    # The same signature over any other message must not verify.
    with pytest.raises(BadSignatureError):
        verify_ed25519(bytes.fromhex(public), msg + b"\x00", bytes.fromhex(signature))


# --- Wycheproof Ed25519 --------------------------------------------------------------------

ED25519 = _tests("ed25519_test.json")


@pytest.mark.parametrize(("group", "test"), ED25519, ids=_ids(ED25519))
def test_wycheproof_ed25519(group: dict[str, Any], test: dict[str, Any]) -> None:
    public = bytes.fromhex(group["publicKey"]["pk"])
    message = bytes.fromhex(test["msg"])
    signature = bytes.fromhex(test["sig"])
    if test["result"] == "valid":
        verify_ed25519(public, message, signature)
    else:
        assert test["result"] == "invalid"
        with pytest.raises(BadSignatureError):
            verify_ed25519(public, message, signature)


# --- Wycheproof X25519 ---------------------------------------------------------------------

X25519 = _tests("x25519_test.json")


@pytest.mark.parametrize(("group", "test"), X25519, ids=_ids(X25519))
def test_wycheproof_x25519(group: dict[str, Any], test: dict[str, Any]) -> None:
    assert group["curve"] == "curve25519"
    private = x25519.X25519PrivateKey.from_private_bytes(bytes.fromhex(test["private"]))
    peer = x25519.X25519PublicKey.from_public_bytes(bytes.fromhex(test["public"]))
    shared = bytes.fromhex(test["shared"])
    assert test["result"] in {"valid", "acceptable"}  # The file lists no invalid cases.
    if shared == bytes(32):
        assert test["result"] == "acceptable"
        # pyca refuses an all-zero shared secret with a bare ValueError.
        with pytest.raises(ValueError):
            private.exchange(peer)
    else:
        assert private.exchange(peer) == shared


# --- Wycheproof XChaCha20-Poly1305 ---------------------------------------------------------

XCHACHA = _tests("xchacha20_poly1305_test.json")


@pytest.mark.parametrize(("group", "test"), XCHACHA, ids=_ids(XCHACHA))
def test_wycheproof_xchacha20_poly1305(group: dict[str, Any], test: dict[str, Any]) -> None:
    key = bytes.fromhex(test["key"])
    nonce = bytes.fromhex(test["iv"])
    aad = bytes.fromhex(test["aad"])
    msg = bytes.fromhex(test["msg"])
    sealed = bytes.fromhex(test["ct"]) + bytes.fromhex(test["tag"])
    assert group["tagSize"] == 128
    if test["result"] == "valid":
        # The libsodium binding as the envelope calls it…
        assert sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(msg, aad, nonce, key) == sealed
        assert sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(sealed, aad, nonce, key) == msg
        # …and the envelope's own layout, nonce ‖ ciphertext ‖ tag.
        assert crypto.aead_encrypt_with_nonce(key, nonce, msg, aad) == nonce + sealed
        assert crypto.aead_decrypt(key, nonce + sealed, aad) == msg
    else:
        assert test["result"] == "invalid"
        with pytest.raises((CryptoError, ValueError, TypeError)):
            sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(sealed, aad, nonce, key)
        if len(nonce) == crypto.NONCE_LEN:
            with pytest.raises(crypto.CryptoFailure):
                crypto.aead_decrypt(key, nonce + sealed, aad)
