"""Key files: modes on disk, no overwrite, permission refusal, passphrases, tampering."""

from __future__ import annotations

import json
import os
import stat
from base64 import b64decode, b64encode
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nacl.pwhash.argon2id
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from keys.errors import KeyFileError, KeysReason
from keys.keyfile import (
    ARGON2ID_MAX_MEMLIMIT,
    Argon2idCost,
    PassphraseKind,
    PassphraseSource,
    check_private_file_mode,
    create_file_exclusive,
    decode_key_file,
    encode_key_file,
    load_ed25519_key,
    load_encrypt_key,
    read_key_file,
    read_tls_key,
    resolve_passphrase,
    write_key_file,
    write_tls_key,
)
from keys.keypair import Ed25519KeyPair, HybridKemKeyPair, KeyUse, TlsKeyPair

# The cheapest cost the module accepts, so the suite stays fast; production uses the default.
FAST = Argon2idCost(
    opslimit=nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE,
    memlimit_bytes=nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE,
)
PASSPHRASE = b"correct horse battery staple"

KeyFactory = Callable[[], Ed25519KeyPair | HybridKemKeyPair]

KEYS: dict[str, KeyFactory] = {
    "sign": lambda: Ed25519KeyPair.generate(KeyUse.SIGN),
    "token": lambda: Ed25519KeyPair.generate(KeyUse.TOKEN),
    "encrypt": HybridKemKeyPair.generate,
}


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------------------------
# Round trips and modes


@pytest.mark.parametrize("use", list(KEYS))
@pytest.mark.parametrize("passphrase", [None, PASSPHRASE], ids=["clear", "sealed"])
def test_round_trip_for_each_use(tmp_path: Path, use: str, passphrase: bytes | None) -> None:
    key = KEYS[use]()
    path = tmp_path / f"{use}.key"
    write_key_file(path, key, passphrase, FAST)
    assert mode_of(path) == 0o600
    loaded = read_key_file(path, passphrase)
    assert type(loaded) is type(key)
    assert loaded.use is key.use
    assert loaded.kid == key.kid
    assert loaded.public == key.public
    assert loaded.secret_bytes() == key.secret_bytes()


def test_sealed_file_does_not_contain_the_secret(tmp_path: Path) -> None:
    key = Ed25519KeyPair.generate(KeyUse.SIGN)
    path = tmp_path / "sign.key"
    write_key_file(path, key, PASSPHRASE, FAST)
    raw = path.read_bytes()
    assert key.secret_bytes() not in raw
    assert b64encode(key.secret_bytes()) not in raw
    assert json.loads(raw)["protection"]["scheme"] == "argon2id-xchacha20poly1305"


def test_mode_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_key_file(tmp_path / "k", Ed25519KeyPair.generate(KeyUse.SIGN))
        write_tls_key(tmp_path / "t", TlsKeyPair.generate())
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "k") == 0o600
    assert mode_of(tmp_path / "t") == 0o600


@given(seed=st.binary(min_size=32, max_size=32), use=st.sampled_from([KeyUse.SIGN, KeyUse.TOKEN]))
@settings(max_examples=50)
def test_property_encode_decode_round_trips(seed: bytes, use: KeyUse) -> None:
    key = Ed25519KeyPair.from_seed(use, seed)
    loaded = decode_key_file(encode_key_file(key))
    assert isinstance(loaded, Ed25519KeyPair)
    assert (loaded.use, loaded.secret_bytes(), loaded.kid) == (use, seed, key.kid)


def test_two_sealings_differ(tmp_path: Path) -> None:
    # Fresh salt and nonce each time: the same key and passphrase never give the same file.
    key = Ed25519KeyPair.generate(KeyUse.SIGN)
    assert encode_key_file(key, PASSPHRASE, FAST) != encode_key_file(key, PASSPHRASE, FAST)


# --------------------------------------------------------------------------------------------
# Never overwritten


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "sign.key"
    first = Ed25519KeyPair.generate(KeyUse.SIGN)
    write_key_file(path, first)
    before = path.read_bytes()
    with pytest.raises(KeyFileError) as info:
        write_key_file(path, Ed25519KeyPair.generate(KeyUse.SIGN))
    assert info.value.reason is KeysReason.KEY_FILE_EXISTS
    assert path.read_bytes() == before


def test_refuses_to_write_through_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    link = tmp_path / "sign.key"
    link.symlink_to(target)
    with pytest.raises(KeyFileError) as info:
        write_key_file(link, Ed25519KeyPair.generate(KeyUse.SIGN))
    assert info.value.reason is KeysReason.KEY_FILE_EXISTS
    assert not target.exists()


def test_tls_key_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "tls.key"
    write_tls_key(path, TlsKeyPair.generate())
    with pytest.raises(KeyFileError) as info:
        write_tls_key(path, TlsKeyPair.generate())
    assert info.value.reason is KeysReason.KEY_FILE_EXISTS


def test_create_file_exclusive_sets_the_exact_mode(tmp_path: Path) -> None:
    create_file_exclusive(tmp_path / "cert.pem", b"public", 0o644)
    assert mode_of(tmp_path / "cert.pem") == 0o644


# --------------------------------------------------------------------------------------------
# Permissions on read


@pytest.mark.parametrize(
    "mode", [0o644, 0o640, 0o604, 0o660, 0o602, 0o620, 0o666], ids=lambda m: f"{m:04o}"
)
def test_refuses_a_file_accessible_by_others(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "sign.key"
    write_key_file(path, Ed25519KeyPair.generate(KeyUse.SIGN))
    path.chmod(mode)
    with pytest.raises(KeyFileError) as info:
        read_key_file(path)
    assert info.value.reason is KeysReason.KEY_FILE_PERMISSIONS
    assert f"chmod 600 {path}" in str(info.value)
    assert f"{mode:04o}" in str(info.value)


@pytest.mark.parametrize("mode", [0o600, 0o400], ids=lambda m: f"{m:04o}")
def test_accepts_owner_only_modes(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "sign.key"
    key = Ed25519KeyPair.generate(KeyUse.SIGN)
    write_key_file(path, key)
    path.chmod(mode)
    assert read_key_file(path).kid == key.kid


def test_tls_key_refuses_0644(tmp_path: Path) -> None:
    path = tmp_path / "tls.key"
    write_tls_key(path, TlsKeyPair.generate())
    path.chmod(0o644)
    with pytest.raises(KeyFileError) as info:
        read_tls_key(path)
    assert info.value.reason is KeysReason.KEY_FILE_PERMISSIONS
    assert f"chmod 600 {path}" in str(info.value)
    with pytest.raises(KeyFileError):
        check_private_file_mode(path)


def test_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "sign.key"
    os.mkfifo(path, 0o600)
    with pytest.raises(KeyFileError) as info:
        read_key_file(path)
    assert info.value.reason is KeysReason.KEY_FILE_MALFORMED


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError) as info:
        read_key_file(tmp_path / "absent.key")
    assert info.value.reason is KeysReason.KEY_FILE_MALFORMED


# --------------------------------------------------------------------------------------------
# Passphrases


@pytest.mark.parametrize("use", list(KEYS))
def test_wrong_passphrase(tmp_path: Path, use: str) -> None:
    path = tmp_path / "k"
    write_key_file(path, KEYS[use](), PASSPHRASE, FAST)
    with pytest.raises(KeyFileError) as info:
        read_key_file(path, b"Tr0ub4dor&3")
    assert info.value.reason is KeysReason.WRONG_PASSPHRASE
    assert "wrong passphrase" in str(info.value)


def test_sealed_file_without_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "k"
    write_key_file(path, Ed25519KeyPair.generate(KeyUse.SIGN), PASSPHRASE, FAST)
    with pytest.raises(KeyFileError) as info:
        read_key_file(path)
    assert info.value.reason is KeysReason.PASSPHRASE_REQUIRED


def test_clear_file_read_with_a_passphrase_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "k"
    key = Ed25519KeyPair.generate(KeyUse.SIGN)
    write_key_file(path, key)
    assert read_key_file(path, PASSPHRASE).kid == key.kid


def test_empty_passphrase_is_refused_on_write(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError) as info:
        write_key_file(tmp_path / "k", Ed25519KeyPair.generate(KeyUse.SIGN), b"", FAST)
    assert info.value.reason is KeysReason.PASSPHRASE_UNAVAILABLE
    assert not (tmp_path / "k").exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(b"secret\n", b"secret", id="one-newline-stripped"),
        pytest.param(b"secret\r\n", b"secret", id="crlf-stripped"),
        pytest.param(b"secret\n\n", b"secret\n", id="only-one-newline-stripped"),
        pytest.param(b"secret", b"secret", id="no-newline"),
        pytest.param(b" secret ", b" secret ", id="spaces-kept"),
    ],
)
def test_passphrase_from_file(tmp_path: Path, content: bytes, expected: bytes) -> None:
    path = tmp_path / "passphrase"
    create_file_exclusive(path, content, 0o600)
    assert resolve_passphrase(PassphraseSource.from_file(path)) == expected


def test_passphrase_file_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "passphrase"
    create_file_exclusive(path, b"secret\n", 0o644)
    with pytest.raises(KeyFileError) as info:
        resolve_passphrase(PassphraseSource.from_file(path))
    assert info.value.reason is KeysReason.KEY_FILE_PERMISSIONS


def test_passphrase_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KETENPOST_TEST_PASSPHRASE", "geheim wachtwoord\n")
    # Environment values are taken as they are: no newline stripping.
    source = PassphraseSource.from_env("KETENPOST_TEST_PASSPHRASE")
    assert resolve_passphrase(source) == b"geheim wachtwoord\n"
    assert resolve_passphrase(source, {"KETENPOST_TEST_PASSPHRASE": "ander"}) == b"ander"


@pytest.mark.parametrize(
    ("source", "environ", "content"),
    [
        pytest.param(PassphraseSource.from_env("NOT_SET"), {}, None, id="env-unset"),
        pytest.param(PassphraseSource.from_env("EMPTY"), {"EMPTY": ""}, None, id="env-empty"),
        pytest.param(PassphraseSource.from_file("absent"), {}, None, id="file-missing"),
        pytest.param(PassphraseSource.from_file("empty"), {}, b"\n", id="file-only-newline"),
    ],
)
def test_passphrase_unavailable(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    source: PassphraseSource,
    environ: dict[str, str],
    content: bytes | None,
) -> None:
    monkeypatch.chdir(tmp_path)
    if content is not None:
        create_file_exclusive(tmp_path / source.where, content, 0o600)
    with pytest.raises(KeyFileError) as info:
        resolve_passphrase(source, environ)
    assert info.value.reason is KeysReason.PASSPHRASE_UNAVAILABLE


@pytest.mark.parametrize(
    ("spec", "kind", "where"),
    [
        pytest.param(
            "file:/run/secrets/key-passphrase",
            PassphraseKind.FILE,
            "/run/secrets/key-passphrase",
            id="file",
        ),
        pytest.param(
            "env:KETENPOST_KEY_PASSPHRASE", PassphraseKind.ENV, "KETENPOST_KEY_PASSPHRASE", id="env"
        ),
        pytest.param("file:a:b", PassphraseKind.FILE, "a:b", id="file-with-colon"),
    ],
)
def test_passphrase_source_parse(spec: str, kind: PassphraseKind, where: str) -> None:
    source = PassphraseSource.parse(spec)
    assert (source.kind, source.where) == (kind, where)
    assert str(source) == spec


@pytest.mark.parametrize(
    "spec", ["hunter2", "pass:hunter2", "env:", "env:NOT-A-NAME", "env:1ABC", "file:", ":x"]
)
def test_passphrase_source_parse_refuses(spec: str) -> None:
    # In particular a literal value ("pass:…") is not a source: passphrases never come from
    # the command line.
    with pytest.raises(ValueError):
        PassphraseSource.parse(spec)


def test_round_trip_with_passphrase_from_file_and_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passphrase_file = tmp_path / "passphrase"
    create_file_exclusive(passphrase_file, PASSPHRASE + b"\n", 0o600)
    monkeypatch.setenv("KETENPOST_KEY_PASSPHRASE", PASSPHRASE.decode())
    key = HybridKemKeyPair.generate()
    write_key_file(
        tmp_path / "encrypt.key",
        key,
        resolve_passphrase(PassphraseSource.from_file(passphrase_file)),
        FAST,
    )
    env_passphrase = resolve_passphrase(PassphraseSource.from_env("KETENPOST_KEY_PASSPHRASE"))
    assert load_encrypt_key(tmp_path / "encrypt.key", env_passphrase).kid == key.kid


# --------------------------------------------------------------------------------------------
# Tampered and malformed files

Doc = dict[str, Any]


def _flip_b64(value: str) -> str:
    raw = bytearray(b64decode(value))
    raw[-1] ^= 0x01
    return b64encode(bytes(raw)).decode()


def _swap_public(doc: Doc) -> None:
    # Replace the public key and recompute its kid, so only the secret (clear) or the AD
    # (sealed) can notice.
    other = Ed25519KeyPair.generate(KeyUse(doc["use"]))
    doc["public"] = b64encode(other.public).decode()
    doc["kid"] = other.kid


def _set(field: str, value: object) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        doc[field] = value

    return mutate


def _set_protection(field: str, value: object) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        doc["protection"][field] = value

    return mutate


def _flip_protection(field: str) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        doc["protection"][field] = _flip_b64(doc["protection"][field])

    return mutate


MALFORMED = KeysReason.KEY_FILE_MALFORMED
WRONG = KeysReason.WRONG_PASSPHRASE
_B64_31 = b64encode(b"x" * 31).decode()
_B64_12 = b64encode(b"n" * 12).decode()
_HUGE = ARGON2ID_MAX_MEMLIMIT * 2
_OPS = FAST.opslimit + 1


def _flip(field: str) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        doc[field] = _flip_b64(doc[field])

    return mutate


TAMPER_CASES = [
    # (name, sealed?, mutation, expected reason)
    ("kid-changed", False, _set("kid", "0" * 64), MALFORMED),
    ("public-flipped", False, _flip("public"), MALFORMED),
    ("public-and-kid-swapped", False, _swap_public, MALFORMED),
    ("secret-short", False, _set_protection("secret", _B64_31), MALFORMED),
    ("secret-flipped", False, _flip_protection("secret"), MALFORMED),
    ("use-changed", False, _set("use", "token"), MALFORMED),
    ("use-tls", False, _set("use", "tls"), MALFORMED),
    ("alg-mismatch", False, _set("alg", "mlkem768-x25519"), MALFORMED),
    ("unknown-field", False, _set("comment", "hello"), MALFORMED),
    ("version-2", False, _set("version", 2), MALFORMED),
    ("other-format", False, _set("format", "age-key"), MALFORMED),
    ("unknown-scheme", False, _set_protection("scheme", "rot13"), MALFORMED),
    ("sealed-public-and-kid-swapped", True, _swap_public, WRONG),
    ("sealed-ciphertext-flipped", True, _flip_protection("ciphertext"), WRONG),
    ("sealed-nonce-flipped", True, _flip_protection("nonce"), WRONG),
    ("sealed-salt-flipped", True, _flip_protection("salt"), WRONG),
    ("sealed-opslimit-raised", True, _set_protection("opslimit", _OPS), WRONG),
    ("sealed-memlimit-unbounded", True, _set_protection("memlimit", _HUGE), MALFORMED),
    ("sealed-opslimit-too-low", True, _set_protection("opslimit", 1), MALFORMED),
    ("sealed-nonce-short", True, _set_protection("nonce", _B64_12), MALFORMED),
    ("sealed-kid-changed", True, _set("kid", "f" * 64), MALFORMED),
]  # fmt: skip


@pytest.mark.parametrize(
    ("sealed", "mutate", "reason"),
    [pytest.param(s, m, r, id=name) for name, s, m, r in TAMPER_CASES],
)
def test_tampered_file(
    tmp_path: Path, sealed: bool, mutate: Callable[[Doc], None], reason: KeysReason
) -> None:
    path = tmp_path / "sign.key"
    passphrase = PASSPHRASE if sealed else None
    write_key_file(path, Ed25519KeyPair.generate(KeyUse.SIGN), passphrase, FAST)
    doc = json.loads(path.read_bytes())
    mutate(doc)
    tampered = tmp_path / "tampered.key"
    create_file_exclusive(tampered, json.dumps(doc).encode(), 0o600)
    with pytest.raises(KeyFileError) as info:
        read_key_file(tampered, passphrase)
    assert info.value.reason is reason


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"[]", id="array"),
        pytest.param(b'{"format": "ketenpost-key"', id="truncated"),
        pytest.param(b" " * 70_000, id="oversized"),
    ],
)
def test_malformed_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "k"
    create_file_exclusive(path, content, 0o600)
    with pytest.raises(KeyFileError) as info:
        read_key_file(path)
    assert info.value.reason is KeysReason.KEY_FILE_MALFORMED


def test_truncated_real_file(tmp_path: Path) -> None:
    path = tmp_path / "k"
    write_key_file(path, HybridKemKeyPair.generate())
    truncated = tmp_path / "t"
    create_file_exclusive(truncated, path.read_bytes()[:-40], 0o600)
    with pytest.raises(KeyFileError) as info:
        read_key_file(truncated)
    assert info.value.reason is KeysReason.KEY_FILE_MALFORMED


# --------------------------------------------------------------------------------------------
# Typed loaders


def test_load_by_use(tmp_path: Path) -> None:
    sign = Ed25519KeyPair.generate(KeyUse.SIGN)
    encrypt = HybridKemKeyPair.generate()
    write_key_file(tmp_path / "sign.key", sign)
    write_key_file(tmp_path / "encrypt.key", encrypt)
    assert load_ed25519_key(tmp_path / "sign.key", KeyUse.SIGN).kid == sign.kid
    assert load_encrypt_key(tmp_path / "encrypt.key").kid == encrypt.kid
    for call in (
        lambda: load_ed25519_key(tmp_path / "sign.key", KeyUse.TOKEN),
        lambda: load_ed25519_key(tmp_path / "encrypt.key", KeyUse.SIGN),
        lambda: load_encrypt_key(tmp_path / "sign.key"),
    ):
        with pytest.raises(KeyFileError) as info:
            call()
        assert info.value.reason is KeysReason.WRONG_KEY_USE


def test_tls_key_is_not_written_as_a_key_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError) as info:
        write_key_file(tmp_path / "k", TlsKeyPair.generate())  # type: ignore[arg-type]
    assert info.value.reason is KeysReason.WRONG_KEY_USE
    assert not (tmp_path / "k").exists()


def test_argon2id_cost_bounds() -> None:
    with pytest.raises(ValueError):
        Argon2idCost(opslimit=1)
    with pytest.raises(ValueError):
        Argon2idCost(memlimit_bytes=ARGON2ID_MAX_MEMLIMIT * 2)


# --------------------------------------------------------------------------------------------
# TLS keys (PEM PKCS#8)


@pytest.mark.parametrize("passphrase", [None, PASSPHRASE], ids=["clear", "encrypted"])
def test_tls_key_round_trip(tmp_path: Path, passphrase: bytes | None) -> None:
    key = TlsKeyPair.generate()
    path = tmp_path / "tls.key"
    write_tls_key(path, key, passphrase)
    assert mode_of(path) == 0o600
    header = (
        b"-----BEGIN ENCRYPTED PRIVATE KEY-----" if passphrase else b"-----BEGIN PRIVATE KEY-----"
    )
    assert path.read_bytes().startswith(header)
    assert read_tls_key(path, passphrase).kid == key.kid


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        pytest.param(None, KeysReason.PASSPHRASE_REQUIRED, id="missing"),
        pytest.param(b"wrong", KeysReason.WRONG_PASSPHRASE, id="wrong"),
    ],
)
def test_tls_key_passphrase_errors(tmp_path: Path, given: bytes | None, reason: KeysReason) -> None:
    path = tmp_path / "tls.key"
    write_tls_key(path, TlsKeyPair.generate(), PASSPHRASE)
    with pytest.raises(KeyFileError) as info:
        read_tls_key(path, given)
    assert info.value.reason is reason


def _pem(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(_pem(ed25519.Ed25519PrivateKey.generate()), id="ed25519"),
        pytest.param(_pem(ec.generate_private_key(ec.SECP384R1())), id="p384"),
        pytest.param(
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", id="garbage"
        ),
        pytest.param(b"-----BEGIN EC PRIVATE KEY-----\n", id="not-pkcs8"),
        pytest.param(b"", id="empty"),
    ],
)
def test_tls_key_malformed(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "tls.key"
    create_file_exclusive(path, content, 0o600)
    with pytest.raises(KeyFileError) as info:
        read_tls_key(path)
    assert info.value.reason is KeysReason.KEY_FILE_MALFORMED
