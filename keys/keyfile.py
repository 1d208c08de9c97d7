"""Private key files: our own key files for ``sign``/``token``/``encrypt``, and PEM TLS keys.

Rules kept here (DESIGN.md "Identities and keys"):

* A private key file is created with ``O_CREAT | O_EXCL`` and mode 0600, written in full,
  ``fsync``'d, and its directory ``fsync``'d: it is never overwritten (``KEY_FILE_EXISTS``), and
  once this module returns, the file survives a crash. ``O_EXCL`` also refuses a symlink at the
  path, so nobody can redirect the write elsewhere.
* A private key file is read only if neither group nor others may read or write it
  (``KEY_FILE_PERMISSIONS``; the message says ``chmod 600 PATH``). The mode is checked with
  ``fstat`` on the descriptor actually read, so a swap between check and read gains nothing.
* Our own key files are a small versioned JSON document (``KeyFileV1``, msgspec,
  ``forbid_unknown_fields``). The secret is either in clear or sealed with a passphrase:
  Argon2id (libsodium's memory-hard KDF, via PyNaCl) derives a 32-byte key from the passphrase
  and a random salt, and XChaCha20-Poly1305 (libsodium's ``Aead``) encrypts the secret with
  every header field as associated data, so swapping the public key, kid, use or KDF cost of a
  sealed file is detected. The Argon2id cost is stored in the file and bounded on read, so a
  hostile file cannot make the reader allocate without limit.
* On read the kid must be the key id of the public key and the secret must rebuild exactly that
  public key; otherwise ``KEY_FILE_MALFORMED``. A wrong passphrase is ``WRONG_PASSPHRASE``; a
  sealed file read without one is ``PASSPHRASE_REQUIRED``. A passphrase given for a clear file is
  ignored, as OpenSSL does.
* TLS private keys are PEM PKCS#8 so that Python's ``ssl`` (OpenSSL) can load them directly,
  optionally encrypted with pyca's ``BestAvailableEncryption`` (PBES2: PBKDF2-HMAC-SHA256 and
  AES-256-CBC). The memory-hard KDF applies to our own key files only: OpenSSL cannot read an
  Argon2id-sealed key, and pyca offers no stronger KDF for PKCS#8. pyca fixes PBKDF2 at 2,048
  rounds, which slows offline guessing very little, so a TLS key passphrase must be a
  high-entropy random value (a generated credential), never a memorable one. The TLS key is also
  the least valuable key a partner holds: it only authenticates the transport, the directory
  pins its SPKI, and messages stay end-to-end protected by the ``sign`` and ``encrypt`` keys.
* A passphrase comes from a file or an environment variable (``PassphraseSource``), never from
  a command-line argument value, which every local user can read in the process list.
* Key material never appears in an exception message or ``repr``.
"""

from __future__ import annotations

import contextlib
import enum
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final, Literal

import msgspec
import nacl.exceptions
import nacl.pwhash.argon2id
import nacl.secret
import nacl.utils
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from keys.errors import KeyFileError, KeysError, KeysReason
from keys.keypair import (
    ALGORITHM_FOR_USE,
    Algorithm,
    Ed25519KeyPair,
    HybridKemKeyPair,
    KeyUse,
    TlsKeyPair,
    compute_kid,
)

# Format tag and version of our own key files. A reader refuses any other pair: there is no
# negotiation, and a future version gets a new number.
KEY_FILE_FORMAT: Final = "ketenpost-key"
KEY_FILE_VERSION: Final = 1

# Domain-separation label for the associated data of a sealed secret. It names what the AD
# protects, so the same passphrase-derived key can never authenticate a header of another kind.
KEY_FILE_AD_LABEL = b"ketenpost key file v1 header\x00"

PRIVATE_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644

# Key files are tiny (an encrypt key file is about 2 KiB); anything much larger is not ours and
# is refused before parsing.
MAX_KEY_FILE_BYTES = 64 * 1024
MAX_PASSPHRASE_BYTES = 4 * 1024

# Argon2id cost bounds, applied when writing and when reading. The floor is libsodium's
# "interactive" profile (64 MiB, 2 passes); the ceiling is its "sensitive" profile's memory
# (1 GiB), so a hostile key file cannot make a reader allocate more than that.
ARGON2ID_MIN_OPSLIMIT = nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE
ARGON2ID_MAX_OPSLIMIT = 16
ARGON2ID_MIN_MEMLIMIT = nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE
ARGON2ID_MAX_MEMLIMIT = nacl.pwhash.argon2id.MEMLIMIT_SENSITIVE
ARGON2ID_SALT_LEN = nacl.pwhash.argon2id.SALTBYTES
AEAD_NONCE_LEN = nacl.secret.Aead.NONCE_SIZE

_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

Kid = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
OpsLimit = Annotated[int, msgspec.Meta(ge=ARGON2ID_MIN_OPSLIMIT, le=ARGON2ID_MAX_OPSLIMIT)]
MemLimit = Annotated[int, msgspec.Meta(ge=ARGON2ID_MIN_MEMLIMIT, le=ARGON2ID_MAX_MEMLIMIT)]
Salt = Annotated[bytes, msgspec.Meta(min_length=ARGON2ID_SALT_LEN, max_length=ARGON2ID_SALT_LEN)]
Nonce = Annotated[bytes, msgspec.Meta(min_length=AEAD_NONCE_LEN, max_length=AEAD_NONCE_LEN)]

# Protection schemes of the secret, the tag of ``KeyFileV1.protection``.
CLEAR_SCHEME = "clear"
SEALED_SCHEME = "argon2id-xchacha20poly1305"

# Our own key files hold only these uses; a TLS key is a PEM file (see ``write_tls_key``).
KeyFilePair = Ed25519KeyPair | HybridKemKeyPair


# --------------------------------------------------------------------------------------------
# The file format


class ClearSecret(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="scheme", tag=CLEAR_SCHEME
):
    """The secret in clear. Protected by the file mode alone."""

    secret: bytes


class SealedSecret(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="scheme", tag=SEALED_SCHEME
):
    """The secret sealed under a passphrase: Argon2id, then XChaCha20-Poly1305."""

    opslimit: OpsLimit
    memlimit: MemLimit
    salt: Salt
    nonce: Nonce
    ciphertext: bytes


class KeyFileV1(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A ``sign``, ``token`` or ``encrypt`` private key file, version 1."""

    format: Literal["ketenpost-key"]
    version: Literal[1]
    use: KeyUse
    alg: Algorithm
    kid: Kid
    public: bytes
    protection: ClearSecret | SealedSecret


class _SealedHeader(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Every header field of a sealed key file, encoded as the AEAD's associated data.

    msgspec encodes struct fields in declaration order, so the encoding is a function of the
    values alone; it is rebuilt from the decoded file, never taken from the file's bytes.
    """

    format: str
    version: int
    use: str
    alg: str
    kid: str
    public: bytes
    scheme: str
    opslimit: int
    memlimit: int
    salt: bytes


@dataclass(frozen=True)
class Argon2idCost:
    """How expensive the passphrase KDF is. Defaults to libsodium's "moderate" profile
    (3 passes over 256 MiB, about half a second here); tests may pass the interactive floor."""

    opslimit: int = nacl.pwhash.argon2id.OPSLIMIT_MODERATE
    memlimit_bytes: int = nacl.pwhash.argon2id.MEMLIMIT_MODERATE

    def __post_init__(self) -> None:
        if not ARGON2ID_MIN_OPSLIMIT <= self.opslimit <= ARGON2ID_MAX_OPSLIMIT:
            raise ValueError(
                f"opslimit must lie in [{ARGON2ID_MIN_OPSLIMIT}, {ARGON2ID_MAX_OPSLIMIT}]"
            )
        if not ARGON2ID_MIN_MEMLIMIT <= self.memlimit_bytes <= ARGON2ID_MAX_MEMLIMIT:
            raise ValueError(
                f"memlimit_bytes must lie in [{ARGON2ID_MIN_MEMLIMIT}, {ARGON2ID_MAX_MEMLIMIT}]"
            )


_DECODER = msgspec.json.Decoder(KeyFileV1)
_ENCODER = msgspec.json.Encoder()


def _sealed_ad(
    use: KeyUse,
    alg: Algorithm,
    kid: str,
    public: bytes,
    *,
    opslimit: int,
    memlimit: int,
    salt: bytes,
) -> bytes:
    header = _SealedHeader(
        format=KEY_FILE_FORMAT,
        version=KEY_FILE_VERSION,
        use=use.value,
        alg=alg.value,
        kid=kid,
        public=public,
        scheme=SEALED_SCHEME,
        opslimit=opslimit,
        memlimit=memlimit,
        salt=salt,
    )
    return KEY_FILE_AD_LABEL + _ENCODER.encode(header)


def _derive_key(passphrase: bytes, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    return nacl.pwhash.argon2id.kdf(
        nacl.secret.Aead.KEY_SIZE, passphrase, salt, opslimit=opslimit, memlimit=memlimit
    )


# --------------------------------------------------------------------------------------------
# Files: create exclusively, read privately


def create_file_exclusive(path: str | os.PathLike[str], data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode``, write ``data``, and make it durable.

    Raises ``KeyFileError`` (``KEY_FILE_EXISTS``) if anything exists at ``path``, including a
    symlink. If writing fails, the partly written file (which this call created) is removed.
    """
    target = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(target, flags, mode)
    except FileExistsError:
        raise KeyFileError(
            f"{target} already exists; refusing to overwrite it", KeysReason.KEY_FILE_EXISTS
        ) from None
    try:
        # The umask can only have removed bits; set the exact mode so a certificate is 0644
        # whatever the umask, and a key is 0600.
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            target.unlink()
        raise
    os.close(fd)
    _fsync_directory(target.parent)


def _fsync_directory(directory: Path) -> None:
    # Makes the new directory entry durable; without it a crash may lose a file we reported
    # as written.
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _permission_error(path: Path, mode: int) -> KeyFileError:
    return KeyFileError(
        f"{path} is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
        f"a private key file must be 0600: run `chmod 600 {path}`",
        KeysReason.KEY_FILE_PERMISSIONS,
    )


def read_private_file(path: str | os.PathLike[str], max_bytes: int = MAX_KEY_FILE_BYTES) -> bytes:
    """Read a secret file, refusing it unless only its owner may read or write it.

    Raises ``KeyFileError``: ``KEY_FILE_PERMISSIONS`` for a group- or world-accessible file,
    ``KEY_FILE_MALFORMED`` for a missing, non-regular or oversized one.
    """
    target = Path(path)
    try:
        # O_NONBLOCK: a FIFO planted at the path must not hang the reader; it is refused
        # below as not a regular file. It changes nothing for regular files.
        fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise KeyFileError(
            f"cannot open {target}: {exc.strerror}", KeysReason.KEY_FILE_MALFORMED
        ) from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"{target} is not a regular file", KeysReason.KEY_FILE_MALFORMED)
        if info.st_mode & 0o077:
            raise _permission_error(target, info.st_mode)
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise KeyFileError(f"{target} is too large to be a key file", KeysReason.KEY_FILE_MALFORMED)
    return data


def check_private_file_mode(path: str | os.PathLike[str]) -> None:
    """Raise ``KeyFileError`` (``KEY_FILE_PERMISSIONS``) unless ``path`` is 0600 or stricter.

    For files this process hands to another reader (``ssl.SSLContext.load_cert_chain``) and so
    cannot check on the descriptor it reads.
    """
    read_private_file(path)


# --------------------------------------------------------------------------------------------
# Passphrases


class PassphraseKind(enum.StrEnum):
    FILE = "file"
    ENV = "env"


@dataclass(frozen=True)
class PassphraseSource:
    """Where a passphrase comes from: a file (0600, one trailing newline stripped) or an
    environment variable. Never the value itself, so configuration and command lines only ever
    name the place. ``parse`` reads the ``file:PATH`` / ``env:NAME`` form used by the CLI."""

    kind: PassphraseKind
    where: str

    def __post_init__(self) -> None:
        if self.kind is PassphraseKind.ENV and not _ENV_NAME_RE.fullmatch(self.where):
            raise ValueError(f"{self.where!r} is not an environment variable name")
        if self.kind is PassphraseKind.FILE and not self.where:
            raise ValueError("a passphrase file path is empty")

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> PassphraseSource:
        return cls(PassphraseKind.FILE, os.fspath(path))

    @classmethod
    def from_env(cls, name: str) -> PassphraseSource:
        return cls(PassphraseKind.ENV, name)

    @classmethod
    def parse(cls, spec: str) -> PassphraseSource:
        """``file:PATH`` or ``env:NAME``; raises ``ValueError`` for anything else."""
        kind, sep, where = spec.partition(":")
        if not sep or kind not in {k.value for k in PassphraseKind}:
            raise ValueError("a passphrase source is file:PATH or env:NAME")
        return cls(PassphraseKind(kind), where)

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.where}"


def resolve_passphrase(source: PassphraseSource, environ: Mapping[str, str] | None = None) -> bytes:
    """Return the passphrase bytes that ``source`` names.

    A file must be 0600 or stricter (it is a secret like the key); one trailing newline
    (``\\n`` or ``\\r\\n``) is stripped, nothing else. An environment variable is encoded as
    UTF-8, with ``surrogateescape`` so a non-UTF-8 value gives back its original bytes.
    ``environ`` defaults to ``os.environ``. Raises ``KeyFileError`` (``PASSPHRASE_UNAVAILABLE``)
    if the source is missing or empty, or the file errors of ``read_private_file``.
    """
    match source.kind:
        case PassphraseKind.FILE:
            path = Path(source.where)
            if not path.exists():
                raise KeyFileError(
                    f"passphrase file {path} does not exist", KeysReason.PASSPHRASE_UNAVAILABLE
                )
            value = read_private_file(path, MAX_PASSPHRASE_BYTES)
            if value.endswith(b"\r\n"):
                value = value[:-2]
            elif value.endswith(b"\n"):
                value = value[:-1]
        case PassphraseKind.ENV:
            env = os.environ if environ is None else environ
            if source.where not in env:
                raise KeyFileError(
                    f"environment variable {source.where} is not set",
                    KeysReason.PASSPHRASE_UNAVAILABLE,
                )
            value = env[source.where].encode("utf-8", "surrogateescape")
    if not value:
        raise KeyFileError(
            f"the passphrase from {source} is empty", KeysReason.PASSPHRASE_UNAVAILABLE
        )
    return value


# --------------------------------------------------------------------------------------------
# Our own key files


def encode_key_file(
    key: KeyFilePair, passphrase: bytes | None = None, cost: Argon2idCost | None = None
) -> bytes:
    """The bytes of a key file for ``key``, sealed if ``passphrase`` is given."""
    if not isinstance(key, Ed25519KeyPair | HybridKemKeyPair):
        raise KeyFileError(
            "only sign, token and encrypt keys go in a key file; TLS keys are PEM",
            KeysReason.WRONG_KEY_USE,
        )
    use, alg, public, kid = key.use, key.algorithm, key.public, key.kid
    protection: ClearSecret | SealedSecret
    if passphrase is None:
        protection = ClearSecret(secret=key.secret_bytes())
    else:
        if not passphrase:
            raise KeyFileError("the passphrase is empty", KeysReason.PASSPHRASE_UNAVAILABLE)
        cost = cost or Argon2idCost()
        salt = nacl.utils.random(ARGON2ID_SALT_LEN)
        box = nacl.secret.Aead(_derive_key(passphrase, salt, cost.opslimit, cost.memlimit_bytes))
        ad = _sealed_ad(
            use, alg, kid, public, opslimit=cost.opslimit, memlimit=cost.memlimit_bytes, salt=salt
        )
        sealed = box.encrypt(key.secret_bytes(), ad)
        protection = SealedSecret(
            opslimit=cost.opslimit,
            memlimit=cost.memlimit_bytes,
            salt=salt,
            nonce=sealed.nonce,
            ciphertext=sealed.ciphertext,
        )
    doc = KeyFileV1(
        format=KEY_FILE_FORMAT,
        version=KEY_FILE_VERSION,
        use=use,
        alg=alg,
        kid=kid,
        public=public,
        protection=protection,
    )
    return _ENCODER.encode(doc) + b"\n"


def write_key_file(
    path: str | os.PathLike[str],
    key: KeyFilePair,
    passphrase: bytes | None = None,
    cost: Argon2idCost | None = None,
) -> None:
    """Write ``key`` to a new 0600 file at ``path``; see ``create_file_exclusive``."""
    create_file_exclusive(path, encode_key_file(key, passphrase, cost), PRIVATE_FILE_MODE)


def decode_key_file(
    data: bytes, passphrase: bytes | None = None, *, source: str = "key file"
) -> KeyFilePair:
    """Rebuild the key pair in ``data``; ``source`` names the file in error messages.

    Raises ``KeyFileError``: ``KEY_FILE_MALFORMED`` (not a version-1 key file, kid not matching
    the public key, or secret not matching it), ``PASSPHRASE_REQUIRED``, ``WRONG_PASSPHRASE``.
    """
    try:
        doc = _DECODER.decode(data)
    except msgspec.ValidationError as exc:
        # msgspec's message names the field and the expected type, never a value.
        raise KeyFileError(
            f"{source} is not a version-{KEY_FILE_VERSION} Ketenpost key file: {exc}",
            KeysReason.KEY_FILE_MALFORMED,
        ) from None
    except msgspec.DecodeError:
        raise KeyFileError(f"{source} is not valid JSON", KeysReason.KEY_FILE_MALFORMED) from None
    if doc.use is KeyUse.TLS or ALGORITHM_FOR_USE[doc.use] is not doc.alg:
        raise KeyFileError(
            f"{source}: algorithm {doc.alg} does not fit use {doc.use}",
            KeysReason.KEY_FILE_MALFORMED,
        )
    # Checked before any decryption, so an edited header is reported as such and not as a
    # wrong passphrase.
    if compute_kid(doc.use, doc.alg, doc.public) != doc.kid:
        raise KeyFileError(
            f"{source}: the kid does not match the public key", KeysReason.KEY_FILE_MALFORMED
        )
    match doc.protection:
        case ClearSecret(secret=secret):
            pass
        case SealedSecret() as sealed:
            if passphrase is None:
                raise KeyFileError(
                    f"{source} is protected by a passphrase and none was given",
                    KeysReason.PASSPHRASE_REQUIRED,
                )
            box = nacl.secret.Aead(
                _derive_key(passphrase, sealed.salt, sealed.opslimit, sealed.memlimit)
            )
            ad = _sealed_ad(
                doc.use,
                doc.alg,
                doc.kid,
                doc.public,
                opslimit=sealed.opslimit,
                memlimit=sealed.memlimit,
                salt=sealed.salt,
            )
            try:
                secret = box.decrypt(sealed.ciphertext, ad, sealed.nonce)
            except nacl.exceptions.CryptoError:
                # The AEAD cannot tell a wrong passphrase from an edited header; say both.
                raise KeyFileError(
                    f"wrong passphrase for {source} (or the file was altered)",
                    KeysReason.WRONG_PASSPHRASE,
                ) from None
    try:
        key: KeyFilePair
        if doc.use is KeyUse.ENCRYPT:
            key = HybridKemKeyPair.from_secret_bytes(secret)
        else:
            key = Ed25519KeyPair.from_seed(doc.use, secret)
    except (KeysError, ValueError):
        raise KeyFileError(
            f"{source}: the secret is not a valid {doc.alg} key", KeysReason.KEY_FILE_MALFORMED
        ) from None
    if key.public != doc.public:
        raise KeyFileError(
            f"{source}: the secret does not match the public key", KeysReason.KEY_FILE_MALFORMED
        )
    return key


def read_key_file(path: str | os.PathLike[str], passphrase: bytes | None = None) -> KeyFilePair:
    """Read a key file written by ``write_key_file``.

    Raises the ``KeyFileError``s of ``read_private_file`` and ``decode_key_file``.
    """
    return decode_key_file(read_private_file(path), passphrase, source=os.fspath(path))


def load_ed25519_key(
    path: str | os.PathLike[str], use: KeyUse, passphrase: bytes | None = None
) -> Ed25519KeyPair:
    """Read a ``sign`` or ``token`` key; ``WRONG_KEY_USE`` if the file holds another use."""
    key = read_key_file(path, passphrase)
    if not isinstance(key, Ed25519KeyPair) or key.use is not use:
        raise KeyFileError(f"{os.fspath(path)} is not a {use} key", KeysReason.WRONG_KEY_USE)
    return key


def load_encrypt_key(
    path: str | os.PathLike[str], passphrase: bytes | None = None
) -> HybridKemKeyPair:
    """Read an ``encrypt`` key; ``WRONG_KEY_USE`` if the file holds another use."""
    key = read_key_file(path, passphrase)
    if not isinstance(key, HybridKemKeyPair):
        raise KeyFileError(f"{os.fspath(path)} is not an encrypt key", KeysReason.WRONG_KEY_USE)
    return key


# --------------------------------------------------------------------------------------------
# TLS private keys (PEM PKCS#8, readable by OpenSSL)

_PEM_CLEAR = b"-----BEGIN PRIVATE KEY-----"
_PEM_ENCRYPTED = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"


def encode_tls_key(key: TlsKeyPair, passphrase: bytes | None = None) -> bytes:
    """PEM PKCS#8 of ``key``, encrypted with ``BestAvailableEncryption`` if ``passphrase``."""
    encryption: serialization.KeySerializationEncryption
    if passphrase is None:
        encryption = serialization.NoEncryption()
    elif not passphrase:
        raise KeyFileError("the passphrase is empty", KeysReason.PASSPHRASE_UNAVAILABLE)
    else:
        encryption = serialization.BestAvailableEncryption(passphrase)
    return key.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def write_tls_key(
    path: str | os.PathLike[str], key: TlsKeyPair, passphrase: bytes | None = None
) -> None:
    """Write ``key`` as PEM PKCS#8 to a new 0600 file; see ``create_file_exclusive``."""
    create_file_exclusive(path, encode_tls_key(key, passphrase), PRIVATE_FILE_MODE)


def decode_tls_key(
    data: bytes, passphrase: bytes | None = None, *, source: str = "TLS key file"
) -> TlsKeyPair:
    """Rebuild an ECDSA P-256 ``TlsKeyPair`` from PEM PKCS#8.

    Raises ``KeyFileError``: ``KEY_FILE_MALFORMED`` (not PKCS#8 PEM, or not a P-256 key),
    ``PASSPHRASE_REQUIRED``, ``WRONG_PASSPHRASE``.
    """
    stripped = data.lstrip()
    if stripped.startswith(_PEM_ENCRYPTED):
        if passphrase is None:
            raise KeyFileError(
                f"{source} is protected by a passphrase and none was given",
                KeysReason.PASSPHRASE_REQUIRED,
            )
        password: bytes | None = passphrase
    elif stripped.startswith(_PEM_CLEAR):
        password = None
    else:
        raise KeyFileError(f"{source} is not a PEM PKCS#8 key", KeysReason.KEY_FILE_MALFORMED)
    try:
        private = serialization.load_pem_private_key(data, password)
    except ValueError:
        if password is not None:
            raise KeyFileError(
                f"wrong passphrase for {source} (or the file was altered)",
                KeysReason.WRONG_PASSPHRASE,
            ) from None
        raise KeyFileError(f"{source} is not a valid key", KeysReason.KEY_FILE_MALFORMED) from None
    except (TypeError, UnsupportedAlgorithm):
        raise KeyFileError(f"{source} is not a valid key", KeysReason.KEY_FILE_MALFORMED) from None
    if not isinstance(private, ec.EllipticCurvePrivateKey) or not isinstance(
        private.curve, ec.SECP256R1
    ):
        raise KeyFileError(f"{source} is not an ECDSA P-256 key", KeysReason.KEY_FILE_MALFORMED)
    return TlsKeyPair(private)


def read_tls_key(path: str | os.PathLike[str], passphrase: bytes | None = None) -> TlsKeyPair:
    """Read a TLS key written by ``write_tls_key``; errors as ``read_private_file`` and
    ``decode_tls_key``."""
    return decode_tls_key(read_private_file(path), passphrase, source=os.fspath(path))
