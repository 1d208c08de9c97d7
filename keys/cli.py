"""``ketenpost keys …``: thin front ends for security teams, officers and the key authority.

Rules kept here (age's command-line style, house rule 10; DESIGN.md "Identities and keys"):

* Data goes to stdout (JSON, or a table where a person reads it); what a verb changed and any
  advice go to stderr; errors end the verb as ``ketenpost: error: <one line>`` with a non-zero
  exit status (``KeysError``, mapped by ``ketenpost.main``).
* Secrets never reach stdout or stderr: only public keys, kids and file names are printed.
  Private keys are written 0600 in 0700 folders and never overwritten (``O_EXCL``); public files
  are 0644 and also never overwritten, except a proposal, which each officer's signature updates
  in place (atomically).
* A passphrase comes from ``--passphrase file:PATH`` or ``env:NAME``, never from the command
  line itself.
* Destructive steps (``keys prune``) only list what they would do unless given ``--yes``.
* Every verb that judges time reads the clock once, here at the edge, and passes ``now`` on;
  ``--now TIME`` replaces the clock for rehearsals and tests.
* Directory changes go through a *proposal* file: drafted from the published bundle
  (``propose``, ``renew``, ``revoke``, ``rotate-root``), signed offline by each officer
  (``sign``), then published with the key authority's snapshot and timestamp (``publish``).
  A proposal records the root and targets version it builds on; publishing a stale proposal is
  refused, and so is one below threshold, with the number of signatures missing.
* ``keys`` imports nothing of ours, so the adapter's ``adapter.toml`` is read (``[partner] id``,
  key paths, the ``[tls]`` pair) and touched only to append a new ``encrypt`` key path
  (``append_encrypt_key_path``); every other switch to a new key is the adapter's own: it holds
  ``sign-N``/``token-N``/``tls-N`` beside the configured files and uses the newest one its
  directory lists as usable, from ``active_from`` on, without an edit or a restart.
* A verb that calls the gateway with ``--partner-dir`` presents the pair the adapter would
  (``keys.tlspairs.choose_tls_pair`` by the folder's verified directory), so a rotated
  certificate is used from its key's ``active_from`` and the old one is never presented after
  its ``retire_at``; the configured pair when none qualifies.
* The gateway and the deployment's folders never part without a message saying so:
  ``directory publish --gateway`` verifies, sends, and writes the local folders only when the
  gateway accepted (a refusal exits 3, an unreachable gateway 1, and the proposal can simply be
  published again). ``timestamp --gateway`` does the opposite: what the key authority signs is
  recorded locally first, so it can never sign two different documents with one version (the
  gateway would refuse the second as ``directory_mismatch``); a failed send then says so and
  ``directory push`` sends the folder's bundle again. A gateway takes the bundle it already has
  again, unchanged, so ``push`` is safe to repeat.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import secrets
import ssl
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from tuf.api.metadata import Metadata, Root  # type: ignore[attr-defined]

from keys.ca import (
    csr_subject,
    load_ca,
    make_csr,
    read_csr_pem,
    sign_csr,
    write_certificates_pem,
    write_csr_pem,
)
from keys.directory import (
    Directory,
    DirectoryContents,
    DirectoryKey,
    Kid,
    Oin,
    Partner,
    PartnerId,
    Role,
    UnixTime,
)
from keys.errors import DirectoryError, KeyFileError, KeysError, KeysReason
from keys.keyfile import (
    PRIVATE_FILE_MODE,
    PUBLIC_FILE_MODE,
    KeyFileV1,
    PassphraseSource,
    create_file_exclusive,
    load_ed25519_key,
    read_private_file,
    read_tls_key,
    resolve_passphrase,
    write_key_file,
    write_tls_key,
)
from keys.keypair import (
    ALGORITHM_FOR_USE,
    Algorithm,
    Ed25519KeyPair,
    HybridKemKeyPair,
    KeyUse,
    TlsKeyPair,
    compute_kid,
    generate,
)
from keys.revocation import (
    KeyRevocation,
    decode_revocation,
    encode_revocation,
    sign_revocation,
    verify_revocation,
)
from keys.rotation import (
    RotationPlan,
    add_partner,
    apply_key_change,
    apply_revocation,
    plan_for,
    prunable_at,
    remove_partner,
    replace_policy,
    settle_plan,
)
from keys.signed_directory import (
    TIMESTAMP_ROLE,
    TRUSTED_ROOT_FILE,
    DirectoryBundle,
    DirectoryExpiry,
    DirectoryRepository,
    ExpiryPolicy,
    SigningStatus,
    TrustedDirectory,
    decode_bundle,
    decode_contents,
    draft_targets,
    encode_bundle,
    encode_contents,
    read_bundle,
    sign_metadata,
    signing_status,
    tuf_key,
    write_bundle,
)
from keys.state import KeyState
from keys.tlsidentity import TlsFiles, client_context
from keys.tlspairs import SkipKind, choose_tls_pair

PROG: Final = "ketenpost"
DAY_S: Final = 86_400
# The gateway's default ``limits.message_lifetime_s`` (gateway/config.py). ``keys`` cannot read
# the gateway's configuration; ``keys prune`` takes the covenant's value as a flag.
DEFAULT_MAX_MESSAGE_LIFETIME_S: Final = 30 * DAY_S
PRIVATE_DIR_MODE: Final = 0o700
OUTBOX_KEY_BYTES: Final = 32

PARTNER_BUNDLE_FORMAT: Final = "ketenpost/v1/partner-bundle"
KEY_CHANGE_FORMAT: Final = "ketenpost/v1/key-change"
PROPOSAL_FORMAT: Final = "ketenpost/v1/directory-proposal"
PUBLIC_KEY_FORMAT: Final = "ketenpost/v1/public-key"
ADAPTER_TOML: Final = "adapter.toml"

# How long ``publish --gateway`` waits for the gateway's answer.
GATEWAY_TIMEOUT_S: Final = 30.0
# The exit status of a verb whose request the gateway refused (as ``ketenpost send``).
EXIT_REFUSED: Final = 3


# --- files exchanged between partners, officers and the key authority ----------------------


class PublicKey(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A public key as a partner hands it over: no times (the officers set those)."""

    kid: Kid
    use: KeyUse
    alg: Algorithm
    public: bytes


class PartnerBundle(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What ``keys generate`` writes at the partner for the officers: public data only."""

    format: Literal["ketenpost/v1/partner-bundle"]
    id: PartnerId
    name: str
    oin: Oin
    role: Role
    keys: tuple[PublicKey, ...]
    csr_pem: str
    coordinator: bool = False
    schema_versions: tuple[int, ...] = (1,)


class KeyRetirement(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    kid: Kid
    retire_at: UnixTime


class KeyChange(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What ``keys rotate`` writes for the officers: the successor and what it replaces."""

    format: Literal["ketenpost/v1/key-change"]
    partner: PartnerId
    key: DirectoryKey
    retire: tuple[KeyRetirement, ...]
    csr_pem: str | None = None


class Proposal(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A directory change on its way to publication; every document is TUF metadata text.

    ``root`` (a root rotation) is published before ``targets``; ``directory`` is the
    ``directory.json`` that ``targets`` lists.
    """

    format: Literal["ketenpost/v1/directory-proposal"]
    covenant: str
    base_targets_version: int
    base_root: str
    changes: tuple[str, ...]
    root: str | None = None
    targets: str | None = None
    directory: str | None = None


class PublicKeyFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An officer's (or the key authority's) public key, as ``keys officer-key`` writes it."""

    format: Literal["ketenpost/v1/public-key"]
    kid: Kid
    use: KeyUse
    alg: Algorithm
    public: bytes


def _decode(data: bytes, kind: type[Any], what: str) -> Any:
    try:
        return msgspec.json.decode(data, type=kind)
    except msgspec.DecodeError as exc:
        raise KeysError(f"{what}: {exc}", KeysReason.DIRECTORY_MALFORMED) from None


def _pretty(obj: Any) -> bytes:
    return msgspec.json.format(msgspec.json.encode(obj), indent=2) + b"\n"


# --- small helpers at the edge -------------------------------------------------------------


class CliError(KeysError):
    """A command-line input is unusable (missing file, bad time, wrong folder)."""


class GatewayUnansweredError(CliError):
    """The request went out but no answer came back (a timeout, a connection reset): the
    gateway may have acted on it."""


class GatewayRefusedError(KeysError):
    """The gateway answered with a refusal (a problem document). The verb ends with
    ``ketenpost: error: refused: <reason>: <detail>`` and exit status 3 (``EXIT_REFUSED``), as
    ``ketenpost send`` does; ``refusal`` is the gateway's reason code, which need not be a
    ``KeysReason`` (``unknown_sender``, ``key_revocation_unknown_key``, …)."""

    def __init__(self, refusal: str, detail: str, *, note: str = "") -> None:
        super().__init__(f"refused: {refusal}: {detail}")
        self.refusal = refusal
        self.detail = detail
        self.note = note


def parse_time(text: str) -> int:
    """``now``, Unix seconds, or ISO 8601 with a UTC offset (``2025-06-01T09:00:00Z``)."""
    if text == "now":
        return int(time.time())
    if re.fullmatch(r"[0-9]{1,12}", text):
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"{text!r} is not a time (Unix seconds or ISO 8601)") from None
    if moment.tzinfo is None:
        raise CliError(f"{text!r} has no UTC offset; add Z or +01:00")
    return int(moment.timestamp())


def iso(unix: int | None) -> str:
    if unix is None:
        return "-"
    return datetime.fromtimestamp(unix, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now(args: argparse.Namespace) -> int:
    text: str | None = getattr(args, "now", None)
    return int(time.time()) if text is None else parse_time(text)


def _out(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False))


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def _passphrase(args: argparse.Namespace) -> bytes | None:
    spec: str | None = getattr(args, "passphrase", None)
    if not spec:
        return None
    try:
        source = PassphraseSource.parse(spec)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return resolve_passphrase(source)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {what} {path}: {exc.strerror}") from None


def _atomic_replace(path: Path, data: bytes) -> None:
    """Replace a public file (a proposal) so a reader sees the old or the new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, PUBLIC_FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(PRIVATE_DIR_MODE)
    return path


def _handler(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn file-system and value errors at the edge into ``CliError`` (one line, exit 1), and
    a gateway's refusal into its one line and exit 3."""

    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except GatewayRefusedError as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            if exc.note:
                _say(exc.note)
            return EXIT_REFUSED
        except KeysError:
            raise
        except OSError as exc:
            where = f" {exc.filename}" if exc.filename else ""
            raise CliError(f"{exc.strerror or exc}{where}") from None

    return run


# --- reading the directory -----------------------------------------------------------------


def verified_directory(folder: Path, now: int) -> tuple[Directory, DirectoryExpiry]:
    """The bundle in ``folder`` verified from ``folder/root.json`` at ``now``."""
    trusted = TrustedDirectory.load(folder)
    directory = trusted.update(read_bundle(folder), now)
    return directory, trusted.expiry


def _deployment_directory(deployment: Path) -> Path:
    folder = deployment / "directory"
    if not (folder / TRUSTED_ROOT_FILE).exists():
        raise CliError(f"{deployment} is not a deployment: {folder / TRUSTED_ROOT_FILE} missing")
    return folder


def _repository(deployment: Path) -> DirectoryRepository:
    return DirectoryRepository.from_bundle(read_bundle(_deployment_directory(deployment)))


def _published_contents(repo: DirectoryRepository) -> DirectoryContents:
    return decode_contents(repo.bundle().directory)


@dataclass(frozen=True)
class _Listing:
    directory: Directory
    expiry: DirectoryExpiry | None
    verified: str


def _listing(path: Path, now: int) -> _Listing:
    """Read a directory for ``keys list``: verified if possible, and saying how far."""
    if path.is_dir():
        bundle = read_bundle(path)
        if (path / TRUSTED_ROOT_FILE).exists():
            try:
                directory, expiry = verified_directory(path, now)
                return _Listing(directory, expiry, "verified from the trusted root")
            except DirectoryError as exc:
                _say(f"warning: the directory does not verify now ({exc.reason}): {exc}")
        repo = DirectoryRepository.from_bundle(bundle)
        return _Listing(
            Directory(_published_contents(repo), repo.version),
            repo.expiry(),
            "signatures checked, expiry not, no trusted root",
        )
    data = _read(path, "directory")
    with contextlib.suppress(DirectoryError):
        repo = DirectoryRepository.from_bundle(decode_bundle(data))
        return _Listing(
            Directory(_published_contents(repo), repo.version),
            repo.expiry(),
            "signatures checked, expiry not, no trusted root",
        )
    _say("warning: a bare directory.json: nothing about it is verified")
    return _Listing(Directory(decode_contents(data)), None, "not verified")


# --- keys list -----------------------------------------------------------------------------


def _days(until: int | None, now: int) -> float | None:
    return None if until is None else round((until - now) / DAY_S, 1)


def _key_row(owner: str, role: str, key: DirectoryKey, now: int) -> dict[str, Any]:
    expiry = key.revoked_at if key.revoked_at is not None else key.retire_at
    return {
        "partner": owner,
        "role": role,
        "use": key.use.value,
        "kid": key.kid,
        "state": key.state(now).value,
        "active_from": iso(key.active_from),
        "retire_at": iso(key.retire_at),
        "revoked_at": iso(key.revoked_at),
        "compromised_since": iso(key.compromised_since)
        if key.revoked_at is not None and key.compromised_since is not None
        else ("unknown" if key.revoked_at is not None else "-"),
        "days_to_expiry": _days(expiry, now),
    }


def _cmd_list(args: argparse.Namespace) -> int:
    now = _now(args)
    path = _deployment_directory(Path(args.deployment)) if args.deployment else Path(args.directory)
    listing = _listing(path, now)
    rows: list[dict[str, Any]] = []
    for p in listing.directory.partners():
        role = p.role.value + (" (coordinator)" if p.coordinator else "")
        if p.left_at is not None:
            role += f" (left {iso(p.left_at)})"
        rows.extend(_key_row(p.id, role, k, now) for k in p.keys)
    gw = listing.directory.gateway
    rows.extend(_key_row(gw.id, "gateway", k, now) for k in gw.keys)
    rows = [
        r
        for r in rows
        if (args.partner is None or r["partner"] == args.partner)
        and (args.use is None or r["use"] == args.use)
        and (args.state is None or r["state"] == args.state)
    ]
    roles: dict[str, Any] = {}
    if listing.expiry is not None:
        for name in ("root", "targets", "snapshot", TIMESTAMP_ROLE):
            at = getattr(listing.expiry, name)
            roles[name] = {"expires": iso(at), "days_to_expiry": _days(at, now)}
    if args.format == "kid":
        for r in rows:
            print(r["kid"])
        return 0
    if args.format == "json":
        _out(
            {
                "version": listing.directory.version,
                "covenant": listing.directory.contents.covenant,
                "verified": listing.verified,
                "now": iso(now),
                "refresh_interval_s": listing.directory.contents.refresh_interval_s,
                "clock_skew_s": listing.directory.contents.clock_skew_s,
                "metadata": roles,
                "keys": rows,
            }
        )
        return 0
    print(
        f"directory v{listing.directory.version} of {listing.directory.contents.covenant} "
        f"({listing.verified}); now {iso(now)}"
    )
    for name, info in roles.items():
        print(f"  {name:<9} expires {info['expires']}  ({info['days_to_expiry']} days)")
    columns = ("partner", "use", "kid", "state", "active_from", "retire_at", "revoked_at")
    header = (*columns, "days")
    table = [
        (
            r["partner"],
            r["use"],
            r["kid"][:16],
            r["state"],
            r["active_from"],
            r["retire_at"],
            r["revoked_at"],
            "-" if r["days_to_expiry"] is None else str(r["days_to_expiry"]),
        )
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *table, strict=False)]
    for line in (header, *table):
        print("  ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
    return 0


# --- keys generate (at the partner) --------------------------------------------------------


def _key_path_free(path: Path) -> None:
    if path.exists() or path.is_symlink():
        raise KeyFileError(
            f"{path} already exists; refusing to overwrite it", KeysReason.KEY_FILE_EXISTS
        )


def _public(pair: Ed25519KeyPair | HybridKemKeyPair | TlsKeyPair) -> PublicKey:
    return PublicKey(kid=pair.kid, use=pair.use, alg=pair.algorithm, public=pair.public)


def _cmd_generate(args: argparse.Namespace) -> int:
    out = Path(args.out)
    keys_dir = out / "keys"
    uses = [KeyUse.SIGN, KeyUse.ENCRYPT, KeyUse.TLS] + ([KeyUse.TOKEN] if args.coordinator else [])
    bundle_path = out / f"{args.partner}.public.json"
    planned = [keys_dir / f"{u.value}.key" for u in uses]
    planned += [keys_dir / "outbox.key", keys_dir / "tls.csr", bundle_path]
    for path in planned:
        _key_path_free(path)
    passphrase = _passphrase(args)
    pairs: dict[KeyUse, Ed25519KeyPair | HybridKemKeyPair | TlsKeyPair] = {
        u: generate(u) for u in uses
    }
    tls = pairs[KeyUse.TLS]
    assert isinstance(tls, TlsKeyPair)
    csr = make_csr(tls, args.partner, args.oin, args.name)  # validates id, OIN and name
    _private_dir(keys_dir)
    for use, pair in pairs.items():
        path = keys_dir / f"{use.value}.key"
        if isinstance(pair, TlsKeyPair):
            write_tls_key(path, pair, passphrase)
        else:
            write_key_file(path, pair, passphrase)
    create_file_exclusive(
        keys_dir / "outbox.key",
        secrets.token_hex(OUTBOX_KEY_BYTES).encode() + b"\n",
        PRIVATE_FILE_MODE,
    )
    write_csr_pem(keys_dir / "tls.csr", csr)
    bundle = PartnerBundle(
        format=PARTNER_BUNDLE_FORMAT,
        id=args.partner,
        name=args.name,
        oin=args.oin,
        role=Role(args.role),
        keys=tuple(_public(p) for p in pairs.values()),
        csr_pem=csr.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        coordinator=args.coordinator,
    )
    create_file_exclusive(bundle_path, _pretty(bundle), PUBLIC_FILE_MODE)
    _out(
        {
            "partner": args.partner,
            "public_bundle": str(bundle_path),
            "certificate_request": str(keys_dir / "tls.csr"),
            "keys": {u.value: p.kid for u, p in pairs.items()},
            "private_files": [str(p) for p in planned if p.suffix == ".key"],
        }
    )
    _say(
        f"made {len(pairs)} keys and an outbox key in {keys_dir} (0600; they never leave this "
        f"machine); hand {bundle_path} to the covenant officers and {keys_dir / 'tls.csr'} to "
        "the CA"
    )
    return 0


# --- keys certify (the CA) -----------------------------------------------------------------


def _cmd_certify(args: argparse.Namespace) -> int:
    ca_dir = Path(args.ca)
    now = _now(args)
    ca = load_ca(ca_dir / "ca.crt", ca_dir / "ca.key", _passphrase(args))
    csr = read_csr_pem(args.csr)
    subject = csr_subject(csr)
    if args.partner is not None and subject.partner_id != args.partner:
        raise CliError(f"the request names {subject.partner_id!r}, not {args.partner!r}")
    certificate = sign_csr(ca, csr, now, days=args.days)
    write_certificates_pem(args.out, certificate)
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _out(
        {
            "certificate": str(args.out),
            "partner": subject.partner_id,
            "oin": subject.oin,
            "name": subject.name,
            "serial": format(certificate.serial_number, "x"),
            "not_after": iso(int(certificate.not_valid_after_utc.timestamp())),
            "tls_kid": compute_kid(KeyUse.TLS, Algorithm.TLS_SPKI, spki),
        }
    )
    _say(f"issued a certificate for {subject.partner_id} (OIN {subject.oin}) to {args.out}")
    return 0


# --- the partner's folder ------------------------------------------------------------------


def _partner_id(partner_dir: Path, explicit: str | None) -> str:
    if explicit:
        return explicit
    toml = partner_dir / ADAPTER_TOML
    if toml.exists():
        try:
            data = tomllib.loads(toml.read_text(encoding="utf-8"))
            value = data.get("partner", {}).get("id")
        except tomllib.TOMLDecodeError as exc:
            raise CliError(f"{toml}: not valid TOML: {exc}") from None
        if isinstance(value, str):
            return value
    return partner_dir.resolve().name


def _file_kid(path: Path, passphrase: bytes | None) -> tuple[str | None, str]:
    """The kid of the private key in ``path`` and a note; ``None`` if it cannot be told."""
    if path.name == "outbox.key":
        return None, "outbox key (not in the directory)"
    data = read_private_file(path)
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            return read_tls_key(path, passphrase).kid, ""
        except KeyFileError as exc:
            return None, f"cannot read: {exc.reason}"
    try:
        header = msgspec.json.decode(data, type=KeyFileV1)
    except msgspec.DecodeError:
        return None, "not a key file"
    return header.kid, ""


def _adapter_key_paths(partner_dir: Path) -> set[Path]:
    """Every key path ``adapter.toml`` names (resolved), so prune never deletes one in use."""
    toml = partner_dir / ADAPTER_TOML
    if not toml.exists():
        return set()
    data = tomllib.loads(toml.read_text(encoding="utf-8"))
    names: list[str] = []
    for table in ("keys", "tls"):
        for value in data.get(table, {}).values():
            if isinstance(value, str):
                names.append(value)
            elif isinstance(value, list):
                names.extend(v for v in value if isinstance(v, str))
    return {(partner_dir / n).resolve() for n in names}


_ENCRYPT_LINE = re.compile(r"^(\s*encrypt\s*=\s*\[)(.*)(\]\s*)(#.*)?$")
_TABLE_LINE = re.compile(r"^\s*\[([A-Za-z0-9_.-]+)\]\s*(#.*)?$")


def append_encrypt_key_path(toml_path: Path, relative: str) -> bool:
    """Append ``relative`` to ``[keys] encrypt`` in an ``adapter.toml``; ``False`` if present.

    Additive only, and only on the one-line array ``ketenpost init`` writes: the result is
    parsed again and must differ from the original by exactly that path, or nothing is written
    (``CliError``: add the path by hand).
    """
    text = toml_path.read_text(encoding="utf-8")
    before = tomllib.loads(text).get("keys", {}).get("encrypt", ["keys/encrypt.key"])
    if relative in before:
        return False
    lines = text.splitlines(keepends=True)
    table = ""
    done = False
    for i, line in enumerate(lines):
        if m := _TABLE_LINE.match(line):
            table = m[1]
            continue
        if table == "keys" and (m := _ENCRYPT_LINE.match(line.rstrip("\n"))):
            inner = m[2].rstrip().rstrip(",")
            sep = ", " if inner.strip() else ""
            lines[i] = f"{m[1]}{inner}{sep}{json.dumps(relative)}{m[3]}{m[4] or ''}".rstrip() + "\n"
            done = True
            break
    new = "".join(lines)
    if not done or tomllib.loads(new).get("keys", {}).get("encrypt") != [*before, relative]:
        raise CliError(f"cannot add {relative} to [keys] encrypt in {toml_path}; add it by hand")
    _atomic_replace(toml_path, new.encode("utf-8"))
    return True


# --- keys rotate ---------------------------------------------------------------------------


def _next_free(keys_dir: Path, use: KeyUse) -> int:
    n = 2
    while any((keys_dir / f"{use.value}-{n}{ext}").exists() for ext in (".key", ".csr", ".crt")):
        n += 1
    return n


def _cmd_rotate(args: argparse.Namespace) -> int:
    now = _now(args)
    partner_dir = Path(args.partner_dir)
    use = KeyUse(args.use)
    partner_id = _partner_id(partner_dir, args.partner)
    directory, _ = verified_directory(partner_dir / "directory", now)
    partner = directory.partner(partner_id)
    if use is KeyUse.TOKEN and not partner.coordinator:
        raise CliError(f"{partner_id} is not a coordinator; it has no token key")
    old = [k for k in partner.keys if k.use is use and k.retire_at is None and k.revoked_at is None]
    plan = plan_for(directory.contents, now)
    keys_dir = partner_dir / "keys"
    n = _next_free(keys_dir, use)
    key_path = keys_dir / f"{use.value}-{n}.key"
    out = (
        Path(args.out)
        if args.out
        else partner_dir / "outgoing" / f"key-change-{use.value}-{n}.json"
    )
    _key_path_free(out)
    passphrase = _passphrase(args)
    pair = generate(use)
    csr_path: Path | None = None
    csr_pem: str | None = None
    if isinstance(pair, TlsKeyPair):
        write_tls_key(key_path, pair, passphrase)
        csr = make_csr(pair, partner.id, partner.oin, partner.name)
        csr_path = keys_dir / f"tls-{n}.csr"
        write_csr_pem(csr_path, csr)
        csr_pem = csr.public_bytes(serialization.Encoding.PEM).decode("ascii")
    else:
        write_key_file(key_path, pair, passphrase)
    change = KeyChange(
        format=KEY_CHANGE_FORMAT,
        partner=partner.id,
        key=DirectoryKey(
            kid=pair.kid,
            use=use,
            alg=ALGORITHM_FOR_USE[use],
            public=pair.public,
            active_from=plan.active_from,
        ),
        retire=tuple(KeyRetirement(kid=k.kid, retire_at=plan.retire_at) for k in old),
        csr_pem=csr_pem,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    create_file_exclusive(out, _pretty(change), PUBLIC_FILE_MODE)
    adapter_note: str | None = None
    toml = partner_dir / ADAPTER_TOML
    relative = f"keys/{key_path.name}"
    if use is KeyUse.ENCRYPT and toml.exists() and append_encrypt_key_path(toml, relative):
        adapter_note = f"appended {relative} to [keys] encrypt"
    _out(
        {
            "partner": partner.id,
            "use": use.value,
            "key_file": str(key_path),
            "certificate_request": None if csr_path is None else str(csr_path),
            "kid": pair.kid,
            "active_from": iso(plan.active_from),
            "retires": [{"kid": k.kid, "retire_at": iso(plan.retire_at)} for k in old],
            "key_change": str(out),
            "adapter_toml": adapter_note,
        }
    )
    _say(f"wrote {key_path} (0600) and the key change {out}; hand the key change to the officers")
    _say(_switch_note(use, relative, iso(plan.active_from), n))
    return 0


def _switch_note(use: KeyUse, relative: str, active_from: str, n: int) -> str:
    """What happens to the new key once the officers published it (stderr advice)."""
    when = f"from its active_from on (planned: {active_from})"
    no_edit = "(no edit of adapter.toml, no restart)"
    refresh = f"after its next directory refresh {no_edit}"
    match use:
        case KeyUse.SIGN:
            return f"the adapter signs with {relative} {when}, {refresh}"
        case KeyUse.ENCRYPT:
            return (
                "the adapter opens messages with every key in [keys] encrypt; senders seal to "
                f"{relative} {when}, after their next directory refresh"
            )
        case KeyUse.TLS:
            return (
                f"send keys/tls-{n}.csr to the CA (keys certify): the adapter presents the new "
                f"certificate {when}, {refresh}; put the CA's certificate beside it as "
                f"keys/tls-{n}.crt before then"
            )
        case KeyUse.TOKEN:
            return (
                "approach issue/revoke and the ZGW coordinator adapter sign with the newest "
                f"usable token key: {relative} {when}, after their next directory refresh "
                f"{no_edit}"
            )


# --- keys prune ----------------------------------------------------------------------------


def _cmd_prune(args: argparse.Namespace) -> int:
    now = _now(args)
    partner_dir = Path(args.partner_dir)
    partner_id = _partner_id(partner_dir, args.partner)
    directory, _ = verified_directory(partner_dir / "directory", now)
    listed = {k.kid: k for k in directory.partner(partner_id).keys}
    in_use = _adapter_key_paths(partner_dir)
    passphrase = _passphrase(args)
    skew = directory.contents.clock_skew_s
    decisions: list[dict[str, Any]] = []
    doomed: list[Path] = []
    for path in sorted((partner_dir / "keys").glob("*.key")):
        kid, note = _file_kid(path, passphrase)
        entry: dict[str, Any] = {"file": str(path), "kid": kid, "decision": "keep", "why": note}
        key = listed.get(kid) if kid else None
        if kid is not None and key is None:
            entry["why"] = "not in the directory (a successor not yet published?)"
        elif key is not None:
            at = prunable_at(
                key, max_message_lifetime_s=args.max_message_lifetime, clock_skew_s=skew
            )
            entry["use"] = key.use.value
            entry["state"] = key.state(now).value
            entry["prunable_at"] = iso(at)
            if at is None:
                entry["why"] = "current"
            elif now < at:
                entry["why"] = "messages that could need it may still exist"
            elif path.resolve() in in_use:
                entry["why"] = "still named in adapter.toml; remove it there first"
            else:
                entry["decision"] = "delete" if args.yes else "would delete"
                entry["why"] = "retired and every message that could use it has expired"
                doomed.append(path)
        decisions.append(entry)
    if doomed and not args.yes:
        _out({"partner": partner_id, "now": iso(now), "files": decisions})
        raise CliError(f"would delete {len(doomed)} private key files; run again with --yes")
    for path in doomed:
        path.unlink()
    _out({"partner": partner_id, "now": iso(now), "files": decisions})
    _say(
        f"deleted {len(doomed)} private key files"
        if doomed
        else "nothing to prune: no private key is past its last possible use"
    )
    return 0


# --- proposals -----------------------------------------------------------------------------


def _load_proposal(path: Path) -> Proposal:
    proposal: Proposal = _decode(_read(path, "proposal"), Proposal, str(path))
    return proposal


def _targets_root(proposal: Proposal) -> bytes:
    """The root that names the keys that must sign the proposal's targets."""
    return (proposal.root or proposal.base_root).encode("utf-8")


def _status(proposal: Proposal) -> list[SigningStatus]:
    statuses = []
    if proposal.root is not None:
        statuses.append(
            signing_status(proposal.root.encode("utf-8"), proposal.base_root.encode("utf-8"))
        )
    if proposal.targets is not None:
        statuses.append(signing_status(proposal.targets.encode("utf-8"), _targets_root(proposal)))
    return statuses


def _status_json(statuses: Sequence[SigningStatus]) -> list[dict[str, Any]]:
    return [
        {
            "role": s.role,
            "version": s.version,
            "complete": s.complete,
            "thresholds": [
                {
                    "by": t.by,
                    "threshold": t.threshold,
                    "signed": [k[:16] for k in t.signed],
                    "missing": t.missing,
                }
                for t in s.thresholds
            ],
        }
        for s in statuses
    ]


def _missing(statuses: Sequence[SigningStatus]) -> str:
    return "; ".join(
        f"{s.role} v{s.version} has {len(t.signed)} of the {t.threshold} signatures {t.by} "
        f"requires ({t.missing} missing)"
        for s in statuses
        for t in s.thresholds
        if t.missing
    )


def _new_proposal(
    repo: DirectoryRepository,
    contents: DirectoryContents | None,
    changes: Sequence[str],
    now: int,
    *,
    root: bytes | None = None,
) -> Proposal:
    targets = None if contents is None else repo.draft_targets(contents, now)
    return Proposal(
        format=PROPOSAL_FORMAT,
        covenant=_published_contents(repo).covenant,
        base_targets_version=repo.version,
        base_root=repo.root().decode("utf-8"),
        changes=tuple(changes),
        root=None if root is None else root.decode("utf-8"),
        targets=None if targets is None else targets.decode("utf-8"),
        directory=None if contents is None else encode_contents(contents).decode("utf-8"),
    )


def _write_proposal(path: Path, proposal: Proposal, *, new: bool) -> None:
    if new:
        create_file_exclusive(path, _pretty(proposal), PUBLIC_FILE_MODE)
    else:
        _atomic_replace(path, _pretty(proposal))


def _report_proposal(path: Path, proposal: Proposal) -> None:
    statuses = _status(proposal)
    _out(
        {
            "proposal": str(path),
            "builds_on": {
                "targets_version": proposal.base_targets_version,
                "root_version": int(json.loads(proposal.base_root)["signed"]["version"]),
            },
            "changes": list(proposal.changes),
            "signing": _status_json(statuses),
        }
    )


def _partner_from_bundle(bundle: PartnerBundle, now: int) -> Partner:
    """Check a partner's public bundle and turn it into a directory entry active at ``now``."""
    uses = sorted(k.use.value for k in bundle.keys)
    wanted = sorted(
        u.value
        for u in (KeyUse.SIGN, KeyUse.ENCRYPT, KeyUse.TLS)
        + ((KeyUse.TOKEN,) if bundle.coordinator else ())
    )
    if uses != wanted:
        raise CliError(f"{bundle.id}: the bundle holds keys for {uses}, expected {wanted}")
    entries = []
    for k in bundle.keys:
        entry = DirectoryKey(kid=k.kid, use=k.use, alg=k.alg, public=k.public, active_from=now)
        entry.check_kid()
        entries.append(entry)
    csr = read_csr_from_text(bundle.csr_pem)
    subject = csr_subject(csr)
    if (subject.partner_id, subject.oin, subject.name) != (bundle.id, bundle.oin, bundle.name):
        raise CliError(f"{bundle.id}: the certificate request names another partner")
    spki = csr.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    tls = next(k for k in bundle.keys if k.use is KeyUse.TLS)
    if spki != tls.public:
        raise CliError(f"{bundle.id}: the certificate request is not for the bundle's tls key")
    return Partner(
        id=bundle.id,
        name=bundle.name,
        oin=bundle.oin,
        role=bundle.role,
        keys=tuple(entries),
        coordinator=bundle.coordinator,
        schema_versions=bundle.schema_versions,
    )


def read_csr_from_text(pem: str) -> x509.CertificateSigningRequest:
    try:
        return x509.load_pem_x509_csr(pem.encode("ascii"))
    except ValueError:
        raise CliError("the bundle's certificate request does not parse") from None


def _apply_changes(
    args: argparse.Namespace, contents: DirectoryContents, directory: Directory, now: int
) -> tuple[DirectoryContents, list[str]]:
    changes: list[str] = []
    for path in args.add_partner or ():
        bundle: PartnerBundle = _decode(_read(Path(path), "bundle"), PartnerBundle, path)
        partner = _partner_from_bundle(bundle, now)
        contents = add_partner(contents, partner)
        changes.append(
            f"add partner {partner.id} ({partner.role.value}, OIN {partner.oin}) with "
            + ", ".join(f"{k.use.value} {k.kid[:16]}" for k in partner.keys)
        )
    for partner_id in args.remove_partner or ():
        contents = remove_partner(contents, partner_id, now)
        changes.append(f"partner {partner_id} leaves at {iso(now)}; its keys retire then")
    for path in args.key_change or ():
        change: KeyChange = _decode(_read(Path(path), "key change"), KeyChange, path)
        retire_at = max((r.retire_at for r in change.retire), default=change.key.active_from)
        plan = settle_plan(RotationPlan(change.key.active_from, retire_at), contents, now)
        new_key = msgspec.structs.replace(change.key, active_from=plan.active_from)
        contents = apply_key_change(
            contents,
            change.partner,
            new_key,
            retire=[(r.kid, max(r.retire_at, plan.retire_at)) for r in change.retire],
        )
        changes.append(
            f"{change.partner}: new {new_key.use.value} key {new_key.kid[:16]} active from "
            f"{iso(plan.active_from)}"
            + "".join(f"; {r.kid[:16]} retires at {iso(plan.retire_at)}" for r in change.retire)
        )
    if args.policy:
        contents = replace_policy(contents, _read(Path(args.policy), "policy"))
        changes.append(f"policy replaced (sha256 {contents.policy_hash[:16]})")
    for path in args.revocation or ():
        statement = decode_revocation(_read(Path(path), "revocation statement"))
        verify_revocation(statement, directory, now)
        contents = apply_revocation(
            contents,
            statement.partner,
            statement.kid,
            now=statement.revoked_at,
            compromised_since=statement.compromised_since,
        )
        changes.append(
            _revocation_change(
                statement.partner, statement.kid, statement.revoked_at, statement.compromised_since
            )
            + " (the partner's own statement)"
        )
    return contents, changes


def _revocation_change(partner: str, kid: str, at: int, since: int | None) -> str:
    window = "compromise time unknown" if since is None else f"compromised since {iso(since)}"
    return f"{partner}: key {kid[:16]} revoked at {iso(at)}, {window}"


def _cmd_propose(args: argparse.Namespace) -> int:
    now = _now(args)
    deployment = Path(args.deployment)
    out = Path(args.out)
    _key_path_free(out)
    repo = _repository(deployment)
    contents = _published_contents(repo)
    directory = Directory(contents, repo.version)
    contents, changes = _apply_changes(args, contents, directory, now)
    if not changes:
        raise CliError(
            "nothing to propose: give --add-partner, --remove-partner, --key-change, --policy "
            "or --revocation (or use 'keys directory renew')"
        )
    proposal = _new_proposal(repo, contents, changes, now)
    _write_proposal(out, proposal, new=True)
    _report_proposal(out, proposal)
    _say(f"drafted directory v{repo.version + 1} in {out}; each officer now signs it offline")
    return 0


def _cmd_renew(args: argparse.Namespace) -> int:
    now = _now(args)
    out = Path(args.out)
    _key_path_free(out)
    repo = _repository(Path(args.deployment))
    contents = _published_contents(repo)
    expires = now + ExpiryPolicy().targets_s
    proposal = _new_proposal(
        repo, contents, [f"renew: the same directory, expiring {iso(expires)}"], now
    )
    _write_proposal(out, proposal, new=True)
    _report_proposal(out, proposal)
    _say(f"drafted directory v{repo.version + 1} (renewal) in {out}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    path = Path(args.proposal)
    _report_proposal(path, _load_proposal(path))
    return 0


def _cmd_sign(args: argparse.Namespace) -> int:
    path = Path(args.proposal)
    proposal = _load_proposal(path)
    key = load_ed25519_key(args.key, KeyUse.SIGN, _passphrase(args))
    keyid = tuf_key(key.public).keyid
    signed_any = False
    root = proposal.root
    if root is not None:
        candidate = sign_metadata(root.encode("utf-8"), key)
        status = signing_status(candidate, proposal.base_root.encode("utf-8"))
        if any(keyid in t.signed for t in status.thresholds):
            root = candidate.decode("utf-8")
            signed_any = True
    targets = proposal.targets
    if targets is not None:
        targets_root = (root or proposal.base_root).encode("utf-8")
        candidate = sign_metadata(targets.encode("utf-8"), key)
        status = signing_status(candidate, targets_root)
        if any(keyid in t.signed for t in status.thresholds):
            targets = candidate.decode("utf-8")
            signed_any = True
    if not signed_any:
        raise CliError(
            f"{args.key} holds no key that this proposal's roots name (key id {keyid[:16]})"
        )
    proposal = msgspec.structs.replace(proposal, root=root, targets=targets)
    _write_proposal(path, proposal, new=False)
    _report_proposal(path, proposal)
    statuses = _status(proposal)
    _say(
        f"signed {path} with key {keyid[:16]}; "
        + (
            "complete: ready to publish"
            if all(s.complete for s in statuses)
            else _missing(statuses)
        )
    )
    return 0


def _deployment_bundle_folders(deployment: Path) -> list[Path]:
    folders = [deployment / "directory"]
    partners = deployment / "partners"
    if partners.is_dir():
        folders += sorted(p / "directory" for p in partners.iterdir() if (p / "directory").is_dir())
    return folders


def _write_folders(
    bundle: DirectoryBundle, deployment: Path, *, at_gateway: str | None
) -> list[str]:
    """Write ``bundle`` into the deployment's ``directory/`` and every partner folder's; the
    folders written. A folder that cannot be written ends the verb with a ``CliError`` that
    says which folders hold the bundle and, when ``at_gateway``, that the gateway serves it."""
    written: list[str] = []
    for folder in _deployment_bundle_folders(deployment):
        try:
            write_bundle(bundle, folder)
        except OSError as exc:
            if written:
                fix = f"copy the bundle from {written[0]} into the folders not written"
            elif at_gateway:
                # Published again, the proposal would be signed anew with the same versions,
                # which the gateway refuses as directory_mismatch: take back what it serves.
                fix = "write the bundle the gateway serves (GET /v1/directory) into them"
            else:
                fix = "nothing was written; run the verb again once it is writable"
            served = (
                f"the gateway at {at_gateway} serves the new version, but " if at_gateway else ""
            )
            raise CliError(
                f"{served}writing {folder} failed: {exc.strerror or exc}; written: "
                f"{', '.join(written) or 'none'}; {fix}"
            ) from None
        written.append(str(folder))
    return written


def _adapter_tls(folder: Path) -> dict[str, Any]:
    """``adapter.toml``'s ``[tls]`` table (empty without the file or the table)."""
    toml = folder / ADAPTER_TOML
    if not toml.exists():
        return {}
    try:
        table = tomllib.loads(toml.read_text(encoding="utf-8")).get("tls", {})
    except tomllib.TOMLDecodeError as exc:
        raise CliError(f"{toml}: not valid TOML: {exc}") from None
    return table if isinstance(table, dict) else {}


def _configured_tls(args: argparse.Namespace, folder: Path | None) -> TlsFiles:
    """The client pair the options name: each of ``--tls-cert``, ``--tls-key`` and
    ``--trust-anchor``, else the partner folder's ``adapter.toml`` ``[tls]`` entry (relative to
    the folder), else the adapter's defaults ``keys/tls.crt``, ``keys/tls.key``,
    ``trust/ca.crt``."""
    table = _adapter_tls(folder) if folder is not None else {}

    def named(option: str | None, entry: str, default: str) -> Path | None:
        if option:
            return Path(option)
        if folder is None:
            return None
        value = table.get(entry, default)
        return folder / (value if isinstance(value, str) else default)

    cert = named(args.tls_cert, "cert", "keys/tls.crt")
    key = named(args.tls_key, "key", "keys/tls.key")
    anchors: list[Path] = [Path(a) for a in args.trust_anchor or ()]
    if not anchors and folder is not None:
        listed = table.get("trust_anchors", ["trust/ca.crt"])
        anchors = (
            [folder / a for a in listed if isinstance(a, str)] if isinstance(listed, list) else []
        )
    if cert is None or key is None or not anchors:
        raise CliError(
            "--gateway https://… needs --partner-dir, or --tls-cert, --tls-key and --trust-anchor"
        )
    try:
        source = PassphraseSource.parse(args.tls_passphrase) if args.tls_passphrase else None
    except ValueError as exc:
        raise CliError(f"--tls-passphrase: {exc}") from None
    return TlsFiles(
        certificate=cert, private_key=key, trust_anchors=tuple(anchors), passphrase=source
    )


def _presented_tls(configured: TlsFiles, folder: Path, partner_id: str, now: int) -> TlsFiles:
    """The pair the partner's adapter would present at ``now`` (``keys.tlspairs``): the newest
    of the configured pair's family that the folder's verified directory lists as usable; the
    configured pair when none qualifies or the directory does not verify (with a warning)."""
    try:
        directory, _ = verified_directory(folder / "directory", now)
        choice = choose_tls_pair(configured, directory, partner_id, now)
    except (KeysError, OSError) as exc:
        reason = exc.reason.value if isinstance(exc, KeysError) else "unreadable"
        _say(
            f"warning: cannot tell which TLS pair of {folder} to present ({reason}: {exc}); "
            f"presenting {configured.certificate}"
        )
        return configured
    for skipped in choice.skipped:
        # A successor before its active_from, or a retired predecessor, is no news.
        if skipped.kind is not SkipKind.NOT_USABLE:
            _say(
                f"warning: not presenting {skipped.certificate} ({skipped.kind}): {skipped.detail}"
            )
    if choice.pair is None:
        return configured
    if choice.pair.files.certificate != configured.certificate:
        _say(f"presenting {choice.pair.files.certificate} (tls key {choice.pair.kid[:16]})")
    return choice.pair.files


def _gateway_context(
    args: argparse.Namespace, now: int, partner_id: str | None = None
) -> ssl.SSLContext | None:
    """The mTLS context for ``--gateway https://…``; ``None`` for the operator listener's plain
    ``http://``.

    The client pair is a partner's: ``--tls-cert``/``--tls-key``/``--trust-anchor``, or
    ``--partner-dir``'s configured ``[tls]`` pair (``_configured_tls``). With ``--partner-dir``
    and neither ``--tls-cert`` nor ``--tls-key``, the pair presented is the one the partner's
    adapter presents at ``now`` (``_presented_tls``), so a rotated certificate is used from its
    key's ``active_from`` on, and one whose key retired is not. ``partner_id`` defaults to the
    folder's ``adapter.toml`` ``[partner] id`` (else its name).
    """
    url: str = args.gateway
    if url.startswith("http://"):
        return None
    if not url.startswith("https://"):
        raise CliError(f"--gateway {url}: not an https:// (or operator http://) URL")
    folder = Path(args.partner_dir) if args.partner_dir else None
    files = _configured_tls(args, folder)
    if folder is not None and not args.tls_cert and not args.tls_key:
        files = _presented_tls(files, folder, _partner_id(folder, partner_id), now)
    return client_context(files)


def _post(url: str, path: str, data: bytes, context: ssl.SSLContext | None) -> tuple[int, bytes]:
    """``POST`` ``data`` (JSON) to ``URL`` + ``path``; the status and the body, also of an
    error status. Raises ``CliError`` when the gateway cannot be reached (nothing was sent), and
    ``GatewayUnansweredError`` when the request went out but no answer came back."""
    # The scheme is http or https: ``_gateway_context`` refused any other before this.
    request = urllib.request.Request(  # noqa: S310
        url.rstrip("/") + path,
        data=data,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(  # noqa: S310 - http(s) only, checked above
            request, timeout=GATEWAY_TIMEOUT_S, context=context
        ) as r:
            status: int = r.status
            return status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except urllib.error.URLError as exc:
        # urllib wraps what fails while connecting and sending: the request did not arrive.
        raise CliError(f"cannot reach the gateway at {url}: {exc.reason}") from None
    except OSError as exc:
        # What fails afterwards (waiting for or reading the answer) is not wrapped.
        raise GatewayUnansweredError(
            f"the gateway at {url} did not answer ({exc}); it may have acted on the request"
        ) from None


def _answer(status: int, body: bytes) -> dict[str, Any]:
    """The gateway's JSON answer (a result, or the problem document of a refusal); raises
    ``CliError`` for anything else (not the gateway, or a proxy's error page)."""
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise CliError(f"the gateway answered {status}: {body[:200]!r}")
    return answer


def _refused(status: int, answer: dict[str, Any]) -> GatewayRefusedError:
    reason = str(answer.get("reason") or f"http_{status}")
    detail = str(answer.get("detail") or answer.get("title") or "")
    return GatewayRefusedError(reason, detail)


def post_bundle(url: str, data: bytes, context: ssl.SSLContext | None) -> dict[str, Any]:
    """``POST`` an encoded bundle to a gateway (``URL/v1/directory``, or ``URL/directory`` on
    the operator listener); the gateway's answer (``version``, ``partners``). A gateway takes a
    bundle it already has again, with the same answer.

    Raises ``GatewayRefusedError`` with the gateway's reason (``directory_rollback``,
    ``directory_timestamp_stale``, …) when it refuses, ``CliError`` when it cannot be reached
    or does not answer JSON.
    """
    path = "/v1/directory" if context is not None else "/directory"
    status, body = _post(url, path, data, context)
    answer = _answer(status, body)
    if status >= 400:
        raise _refused(status, answer)
    return answer


def _cmd_publish(args: argparse.Namespace) -> int:
    now = _now(args)
    context = _gateway_context(args, now) if args.gateway else None
    deployment = Path(args.deployment)
    path = Path(args.proposal)
    proposal = _load_proposal(path)
    repo = _repository(deployment)
    if (
        repo.root().decode("utf-8") != proposal.base_root
        or repo.version != proposal.base_targets_version
    ):
        raise DirectoryError(
            f"the proposal builds on directory v{proposal.base_targets_version}, but "
            f"v{repo.version} is published (root v{repo.root_version}); propose again",
            KeysReason.DIRECTORY_MISMATCH,
        )
    statuses = _status(proposal)
    if not all(s.complete for s in statuses):
        raise DirectoryError(
            f"refusing to publish below threshold: {_missing(statuses)}",
            KeysReason.DIRECTORY_THRESHOLD,
        )
    authority_path = Path(args.authority_key or deployment / "key-authority" / "timestamp.key")
    authority = load_ed25519_key(authority_path, KeyUse.SIGN, _passphrase(args))
    if proposal.root is not None:
        repo.publish_root(proposal.root.encode("utf-8"))
    if proposal.targets is not None and proposal.directory is not None:
        contents = decode_contents(proposal.directory.encode("utf-8"))
        repo.publish_targets(proposal.targets.encode("utf-8"), contents, authority, now)
    else:
        repo.refresh_snapshot(authority, now)
    bundle = repo.bundle()
    # What clients will do, done first: a bundle the deployment's own trusted root refuses is
    # never written or sent anywhere.
    trusted = TrustedDirectory.load(deployment / "directory")
    directory = trusted.update(bundle, now)
    gateway: dict[str, Any] | None = None
    if args.gateway:
        # The gateway first: the folders get the version only once the gateway took it, so a
        # refusal or an outage leaves the proposal publishable again, as it was.
        kept = (
            "nothing was written to the deployment's folders; the proposal can be published again"
        )
        try:
            gateway = post_bundle(args.gateway, encode_bundle(bundle), context)
        except GatewayRefusedError as exc:
            exc.note = kept
            raise
        except GatewayUnansweredError as exc:
            # Published again, the proposal gets a new snapshot and timestamp with the same
            # versions, which a gateway that took this one refuses (directory_mismatch).
            raise CliError(
                f"{exc}; nothing was written to the deployment's folders. If the gateway "
                "serves the new version (GET /v1/directory), write that bundle into them; "
                "otherwise publish the proposal again"
            ) from None
        except CliError as exc:
            raise CliError(f"{exc}; {kept}") from None
    written = _write_folders(bundle, deployment, at_gateway=args.gateway)
    _out(
        {
            "published": {"targets_version": repo.version, "root_version": repo.root_version},
            "changes": list(proposal.changes),
            "partners": len(directory.partners()),
            "written_to": written,
            "gateway": gateway,
        }
    )
    _say(
        f"published directory v{repo.version} (root v{repo.root_version}) "
        + (
            f"to the gateway at {args.gateway}, which serves it now, and into {len(written)} "
            "folders"
            if gateway is not None
            else f"into {len(written)} folders; a gateway reading one of them loads it on its "
            "next refresh (or send it: keys directory push)"
        )
    )
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    now = _now(args)
    context = _gateway_context(args, now)
    deployment = Path(args.deployment)
    folder = _deployment_directory(deployment)
    bundle = read_bundle(folder)
    # Not sent if the deployment's own trusted root refuses it (a stale timestamp: refresh it
    # with keys timestamp --gateway instead).
    TrustedDirectory.load(folder).update(bundle, now)
    repo = DirectoryRepository.from_bundle(bundle)
    answer = post_bundle(args.gateway, encode_bundle(bundle), context)
    _out(
        {
            "pushed": {"targets_version": repo.version, "root_version": repo.root_version},
            "timestamp_expires": iso(repo.expiry().timestamp),
            "from": str(folder),
            "gateway": answer,
        }
    )
    _say(
        f"sent directory v{repo.version} (root v{repo.root_version}) from {folder} to the "
        f"gateway at {args.gateway}, which serves it now (a version it already had is taken "
        "again, unchanged)"
    )
    return 0


# --- root rotation, officer keys, timestamps ----------------------------------------------


def _read_public_key(path: Path) -> bytes:
    """An Ed25519 public key from a ``.pub`` file (``keys officer-key``) or a key file."""
    data = _read(path, "public key")
    with contextlib.suppress(msgspec.DecodeError):
        pub = msgspec.json.decode(data, type=PublicKeyFile)
        return pub.public
    with contextlib.suppress(msgspec.DecodeError):
        header = msgspec.json.decode(read_private_file(path), type=KeyFileV1)
        if header.alg is Algorithm.ED25519:
            return header.public
    raise CliError(f"{path} is neither a public key file nor an Ed25519 key file")


def _root_role_keys(root: bytes, role: str) -> tuple[list[bytes], int]:
    md = Metadata.from_bytes(root)
    signed = md.signed
    assert isinstance(signed, Root)
    r = signed.roles[role]
    return [bytes.fromhex(signed.keys[k].keyval["public"]) for k in r.keyids], r.threshold


def _cmd_rotate_root(args: argparse.Namespace) -> int:
    now = _now(args)
    out = Path(args.out)
    _key_path_free(out)
    repo = _repository(Path(args.deployment))
    current = repo.root()
    old_directory_keys, old_directory_threshold = _root_role_keys(current, "targets")
    old_root_keys, old_root_threshold = _root_role_keys(current, "root")
    authority, _ = _root_role_keys(current, TIMESTAMP_ROLE)
    root_keys = (
        [_read_public_key(Path(p)) for p in args.root_key] if args.root_key else old_root_keys
    )
    directory_keys = (
        [_read_public_key(Path(p)) for p in args.directory_key]
        if args.directory_key
        else old_directory_keys
    )
    root_threshold = args.root_threshold or old_root_threshold
    directory_threshold = args.directory_threshold or old_directory_threshold
    draft = repo.draft_root(
        root_keys=root_keys,
        directory_keys=directory_keys,
        authority_key=authority[0],
        now=now,
        root_threshold=root_threshold,
        directory_threshold=directory_threshold,
    )
    changes = [
        f"root v{repo.root_version + 1}: {len(root_keys)} root keys (threshold {root_threshold}),"
        f" {len(directory_keys)} directory keys (threshold {directory_threshold})"
    ]
    contents: DirectoryContents | None = None
    if {bytes(k) for k in directory_keys} != {bytes(k) for k in old_directory_keys}:
        # The published targets were signed by the old directory keys; clients forget them when
        # the keys change, so the same directory is re-signed by the new keys in one step.
        contents = _published_contents(repo)
        changes.append(
            f"directory v{repo.version + 1}: the same directory, signed by the new directory keys"
        )
    proposal = _new_proposal(repo, contents, changes, now, root=draft)
    _write_proposal(out, proposal, new=True)
    _report_proposal(out, proposal)
    _say(
        f"drafted root v{repo.root_version + 1} in {out}: it needs {old_root_threshold} "
        f"signatures of the current root keys and {root_threshold} of the new ones"
    )
    return 0


def _cmd_officer_key(args: argparse.Namespace) -> int:
    out = Path(args.out)
    pub = out.with_name(out.name + ".pub")
    _key_path_free(out)
    _key_path_free(pub)
    key = Ed25519KeyPair.generate(KeyUse.SIGN)
    if out.parent != Path():
        _private_dir(out.parent)
    write_key_file(out, key, _passphrase(args))
    public = PublicKeyFile(
        format=PUBLIC_KEY_FORMAT, kid=key.kid, use=key.use, alg=key.algorithm, public=key.public
    )
    create_file_exclusive(pub, _pretty(public), PUBLIC_FILE_MODE)
    _out(
        {"key_file": str(out), "public_key_file": str(pub), "tuf_keyid": tuf_key(key.public).keyid}
    )
    _say(f"wrote {out} (0600; keep it offline) and {pub} (hand this one over)")
    return 0


def _cmd_timestamp(args: argparse.Namespace) -> int:
    now = _now(args)
    context = _gateway_context(args, now) if args.gateway else None
    deployment = Path(args.deployment)
    repo = _repository(deployment)
    key = load_ed25519_key(args.key, KeyUse.SIGN, _passphrase(args))
    if args.snapshot:
        repo.refresh_snapshot(key, now)
    else:
        repo.refresh_timestamp(key, now)
    bundle = repo.bundle()
    TrustedDirectory.load(deployment / "directory").update(bundle, now)
    # Written before it is sent (unlike ``publish``): the deployment's folder is the key
    # authority's record of what it signed, and the next refresh builds on it. Sent first and
    # then not written, the next refresh would sign another document with the same version,
    # which every client refuses as ``directory_mismatch``.
    written = _write_folders(bundle, deployment, at_gateway=None)
    expiry = repo.expiry()
    gateway: dict[str, Any] | None = None
    if args.gateway:
        resend = (
            f"the refreshed bundle is in the deployment's {len(written)} folders but not at the "
            f"gateway: send it with 'ketenpost keys directory push --deployment {deployment} "
            f"--gateway {args.gateway}' and the same TLS options"
        )
        try:
            gateway = post_bundle(args.gateway, encode_bundle(bundle), context)
        except GatewayRefusedError as exc:
            exc.note = resend
            raise
        except CliError as exc:
            raise CliError(f"{exc}; {resend}") from None
    _out(
        {
            "timestamp_expires": iso(expiry.timestamp),
            "snapshot_expires": iso(expiry.snapshot),
            "targets_expires": iso(expiry.targets),
            "written_to": written,
            "gateway": gateway,
        }
    )
    _say(
        f"refreshed the {'snapshot and ' if args.snapshot else ''}timestamp; "
        f"valid until {iso(expiry.timestamp)}"
        + (f"; the gateway at {args.gateway} serves it now" if gateway is not None else "")
    )
    return 0


# --- keys revoke ---------------------------------------------------------------------------


def _compromise(args: argparse.Namespace) -> int | None:
    if args.compromise_unknown:
        return None
    if args.compromised_since is None:
        raise CliError("revoke needs --compromised-since TIME or --compromise-unknown")
    return parse_time(args.compromised_since)


def _find_key_file(keys_dir: Path, kid: str) -> Path:
    for path in sorted(keys_dir.glob("*.key")):
        with contextlib.suppress(KeysError):
            found, _ = _file_kid(path, None)
            if found == kid:
                return path
    raise CliError(f"no key file in {keys_dir} holds key {kid[:16]}")


def _cmd_revoke(args: argparse.Namespace) -> int:
    now = _now(args)
    if args.submit:
        return _submit_statement(args, now)
    if not args.kid:
        raise CliError("revoke needs --kid (the key to revoke)")
    since = _compromise(args)
    out = Path(args.out) if args.out else None
    if args.self:
        if not args.partner_dir or not args.signing_kid or out is None:
            raise CliError("revoke --self needs --partner-dir, --signing-kid and --out")
        _key_path_free(out)
        partner_dir = Path(args.partner_dir)
        partner_id = _partner_id(partner_dir, args.partner)
        directory, _ = verified_directory(partner_dir / "directory", now)
        signing_path = _find_key_file(partner_dir / "keys", args.signing_kid)
        signing_key = load_ed25519_key(signing_path, KeyUse.SIGN, _passphrase(args))
        statement = sign_revocation(
            partner=partner_id,
            kid=args.kid,
            revoked_at=now,
            compromised_since=since,
            signing_key=signing_key,
        )
        verify_revocation(statement, directory, now)
        context = _revocation_gateway_context(args, now, partner_id) if args.gateway else None
        create_file_exclusive(out, encode_revocation(statement), PUBLIC_FILE_MODE)
        report = _statement_json(statement, out)
        if args.gateway:
            try:
                answer, first_time = submit_revocation(
                    args.gateway, encode_revocation(statement), context
                )
            except GatewayRefusedError as exc:
                _out(report)
                exc.note = (
                    f"the statement {out} is kept; the gateway did not record it (send it again: "
                    "keys revoke --submit)"
                )
                raise
            except CliError as exc:
                _out(report)
                raise CliError(
                    f"{exc}; the statement {out} is kept: send it with 'ketenpost keys revoke "
                    f"--submit {out} --gateway {args.gateway}' and the same TLS options"
                ) from None
            report["gateway"] = answer
            report["already_recorded"] = not first_time
        _out(report)
        _say(
            f"wrote the revocation statement {out}, signed by {signing_path.name}"
            + (
                f"; the gateway at {args.gateway} acts on it from now on. Hand it to the "
                "officers too (keys directory propose --revocation)"
                if args.gateway
                else "; hand it to the officers (keys directory propose --revocation) and "
                "submit it to the gateway (revoke --self --gateway URL, or any partner's "
                "POST /v1/keys/revocations)"
            )
        )
        return 0
    if not args.partner:
        raise CliError("revoke needs --partner (or --self)")
    change = _revocation_change(args.partner, args.kid, now, since)
    if args.proposal:
        path = Path(args.proposal)
        proposal = _load_proposal(path)
        if proposal.directory is None:
            raise CliError(f"{path} changes no directory contents (a root-only proposal)")
        contents = apply_revocation(
            decode_contents(proposal.directory.encode("utf-8")),
            args.partner,
            args.kid,
            now=now,
            compromised_since=since,
        )
        targets, raw = draft_targets(
            contents,
            version=proposal.base_targets_version + 1,
            expires=now + ExpiryPolicy().targets_s,
        )
        proposal = msgspec.structs.replace(
            proposal,
            changes=(*proposal.changes, change),
            targets=targets.decode("utf-8"),
            directory=raw.decode("utf-8"),
        )
        _write_proposal(path, proposal, new=False)
        _report_proposal(path, proposal)
        _say(f"added the revocation to {path}; earlier signatures on it were dropped")
        return 0
    if not args.deployment or out is None:
        raise CliError("revoke needs --deployment DIR --out PROPOSAL, or --proposal FILE")
    _key_path_free(out)
    repo = _repository(Path(args.deployment))
    contents = apply_revocation(
        _published_contents(repo), args.partner, args.kid, now=now, compromised_since=since
    )
    proposal = _new_proposal(repo, contents, [change], now)
    _write_proposal(out, proposal, new=True)
    _report_proposal(out, proposal)
    _say(f"drafted directory v{repo.version + 1} revoking {args.kid[:16]} in {out}")
    return 0


def _submit_statement(args: argparse.Namespace, now: int) -> int:
    """``revoke --submit FILE --gateway URL``: send a statement made before (the gateway was
    unreachable then, or another partner carries it), exactly as ``--self --gateway`` does."""
    making = {
        "--kid": args.kid,
        "--signing-kid": args.signing_kid,
        "--out": args.out,
        "--compromised-since": args.compromised_since,
        "--compromise-unknown": args.compromise_unknown,
    }
    if given := [flag for flag, value in making.items() if value]:
        raise CliError(
            f"revoke --submit sends the statement as it is; {', '.join(given)} "
            "belong to making one (revoke --self)"
        )
    if not args.gateway:
        raise CliError("revoke --submit needs --gateway URL (the partner listener, https://)")
    path = Path(args.submit)
    statement = decode_revocation(_read(path, "revocation statement"))
    context = _revocation_gateway_context(args, now, args.partner)
    # The canonical encoding, as --self sends it: the gateway names a statement by its hash.
    answer, first_time = submit_revocation(args.gateway, encode_revocation(statement), context)
    report = _statement_json(statement, path)
    report["gateway"] = answer
    report["already_recorded"] = not first_time
    _out(report)
    _say(
        f"the gateway at {args.gateway} "
        + (
            "acts on the statement from now on"
            if first_time
            else f"had recorded the statement already (at {iso(answer.get('recorded_at'))})"
        )
        + "; hand it to the officers too (keys directory propose --revocation)"
    )
    return 0


def _revocation_gateway_context(
    args: argparse.Namespace, now: int, partner_id: str | None = None
) -> ssl.SSLContext:
    context = _gateway_context(args, now, partner_id)
    if context is None:
        raise CliError(
            f"--gateway {args.gateway}: a key revocation goes to the partner listener (https://)"
        )
    return context


def post_key_revocation(
    url: str, data: bytes, context: ssl.SSLContext | None
) -> tuple[int, dict[str, Any]]:
    """``POST`` a statement to ``URL/v1/keys/revocations``; the status and the JSON answer
    (the recorded revocation, or the problem document of a refusal). Raises ``CliError`` when
    the gateway cannot be reached or answers something else than JSON."""
    status, body = _post(url, "/v1/keys/revocations", data, context)
    return status, _answer(status, body)


def submit_revocation(
    url: str, data: bytes, context: ssl.SSLContext | None
) -> tuple[dict[str, Any], bool]:
    """``post_key_revocation``, with a refusal raised as ``GatewayRefusedError``: the
    recorded revocation and whether this was the first time (201; 200: recorded before, the
    same document)."""
    status, answer = post_key_revocation(url, data, context)
    if status >= 400:
        raise _refused(status, answer)
    return answer, status == 201


def _statement_json(statement: KeyRevocation, path: Path) -> dict[str, Any]:
    return {
        "statement": str(path),
        "partner": statement.partner,
        "kid": statement.kid,
        "revoked_at": iso(statement.revoked_at),
        "compromised_since": "unknown"
        if statement.compromised_since is None
        else iso(statement.compromised_since),
        "signing_kid": statement.signing_kid,
    }


# --- the parser ----------------------------------------------------------------------------

_EPILOG: Final = """\
examples:
  ketenpost keys list --deployment ./dev-covenant --format table
  ketenpost keys generate --partner welzijn-velsen --oin 00000099000000042000 \\
      --role welfare --name "Welzijn Velsen" --out ./welzijn-velsen
  ketenpost keys certify --ca ./dev-covenant/ca --csr ./welzijn-velsen/keys/tls.csr \\
      --out ./welzijn-velsen/keys/tls.crt
  ketenpost keys rotate --partner-dir ./dev-covenant/partners/halt --use sign
  ketenpost keys directory propose --deployment ./dev-covenant \\
      --key-change ./dev-covenant/partners/halt/outgoing/key-change-sign-2.json --out p.json
  ketenpost keys directory sign p.json --key ./dev-covenant/officers/directory-1.key
  ketenpost keys directory publish p.json --deployment ./dev-covenant \\
      --gateway https://127.0.0.1:8443 --partner-dir ./dev-covenant/partners/om
  ketenpost keys directory push --deployment ./dev-covenant \\
      --gateway https://127.0.0.1:8443 --partner-dir ./dev-covenant/partners/om

Times (--now, --compromised-since) are Unix seconds or ISO 8601 with an offset.
Passphrases come from --passphrase file:PATH or env:NAME, never from the command line.
"""

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _verb(
    verbs: SubParsers,
    name: str,
    help_: str,
    handler: Callable[[argparse.Namespace], int],
    example: str,
) -> argparse.ArgumentParser:
    p = verbs.add_parser(
        name,
        help=help_,
        description=help_[0].upper() + help_[1:] + ".",
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(handler=_handler(handler))
    return p


def _add_now(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--now", metavar="TIME", help="take TIME as the current time (rehearsals, tests)"
    )


def _add_passphrase(p: argparse.ArgumentParser, what: str = "the key files") -> None:
    p.add_argument(
        "--passphrase", metavar="SOURCE", help=f"passphrase of {what}: file:PATH or env:NAME"
    )


def _add_compromise(p: argparse.ArgumentParser) -> None:
    # Not required by the parser: ``revoke --submit`` sends a statement that has its own.
    g = p.add_mutually_exclusive_group()
    g.add_argument("--compromised-since", metavar="TIME", help="when the compromise began")
    g.add_argument(
        "--compromise-unknown",
        action="store_true",
        help="the compromise time is unknown: every signature of the key is void",
    )


def _add_gateway_tls(p: argparse.ArgumentParser, partner_dir: str = "") -> None:
    """The client pair for ``--gateway https://…``: a partner folder's (the pair its adapter
    presents), or the files themselves."""
    p.add_argument(
        "--partner-dir",
        metavar="DIR",
        help=partner_dir
        + "mTLS files of this partner folder (its adapter.toml [tls] pair, or the newer "
        "tls-N pair its directory lists as usable)",
    )
    p.add_argument("--tls-cert", metavar="FILE", help="client certificate (PEM)")
    p.add_argument("--tls-key", metavar="FILE", help="its private key (PEM, 0600)")
    p.add_argument("--trust-anchor", action="append", metavar="FILE", help="CA certificate(s)")
    p.add_argument("--tls-passphrase", metavar="SOURCE", help="file:PATH or env:NAME")


def register(subparsers: SubParsers) -> None:
    """Add ``ketenpost keys`` and its verbs; each sets ``handler`` (args -> exit status)."""
    keys = subparsers.add_parser(
        "keys",
        help="list, generate, rotate, revoke and prune keys; change the signed directory",
        description="Key lifecycle for security teams, covenant officers and the key authority.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = keys.add_subparsers(dest="keys_command", required=True, metavar="VERB")

    p = _verb(
        verbs,
        "list",
        "list partners, keys, states, dates and days to expiry",
        _cmd_list,
        "ketenpost keys list --deployment ./dev-covenant --partner halt --format json",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--deployment", metavar="DIR", help="a deployment (its directory/ folder)")
    src.add_argument("--directory", metavar="FILE_OR_DIR", help="a bundle folder or file")
    p.add_argument("--format", choices=("table", "json", "kid"), default="table")
    p.add_argument("--partner", help="only this partner's keys")
    p.add_argument("--use", choices=[u.value for u in KeyUse], help="only keys of this use")
    p.add_argument("--state", choices=[s.value for s in KeyState], help="only keys in this state")
    _add_now(p)

    p = _verb(
        verbs,
        "generate",
        "make a partner's keys and certificate request (at the partner)",
        _cmd_generate,
        "ketenpost keys generate --partner welzijn-velsen --oin 00000099000000042000 "
        "--role welfare --name 'Welzijn Velsen' --out ./welzijn-velsen",
    )
    p.add_argument("--partner", required=True, metavar="ID")
    p.add_argument("--out", required=True, metavar="DIR", help="the partner's folder")
    p.add_argument("--oin", required=True, help="the organisation's 20-digit OIN")
    p.add_argument("--role", required=True, choices=[r.value for r in Role])
    p.add_argument("--name", required=True, help="the organisation's name (certificate O)")
    p.add_argument("--coordinator", action="store_true", help="also a token key (municipality)")
    _add_passphrase(p, "the new key files")

    p = _verb(
        verbs,
        "certify",
        "issue a partner certificate for a request (the dev CA)",
        _cmd_certify,
        "ketenpost keys certify --ca ./dev-covenant/ca --csr tls.csr --out tls.crt",
    )
    p.add_argument("--ca", required=True, metavar="DIR", help="folder with ca.crt and ca.key")
    p.add_argument("--csr", required=True, metavar="FILE")
    p.add_argument("--out", required=True, metavar="FILE")
    p.add_argument("--partner", metavar="ID", help="refuse a request naming anyone else")
    p.add_argument("--days", type=int, default=397, help="validity in days (default 397)")
    _add_passphrase(p, "the CA key")
    _add_now(p)

    p = _verb(
        verbs,
        "rotate",
        "make a successor key and a key change for the officers",
        _cmd_rotate,
        "ketenpost keys rotate --partner-dir ./dev-covenant/partners/halt --use encrypt",
    )
    p.add_argument("--partner-dir", required=True, metavar="DIR")
    p.add_argument("--use", required=True, choices=[u.value for u in KeyUse])
    p.add_argument("--partner", metavar="ID", help="default: adapter.toml's [partner] id")
    p.add_argument("--out", metavar="FILE", help="the key change (default: DIR/outgoing/…)")
    _add_passphrase(p, "the new key file")
    _add_now(p)

    p = _verb(
        verbs,
        "prune",
        "delete retired private keys nothing can need any more",
        _cmd_prune,
        "ketenpost keys prune --partner-dir ./dev-covenant/partners/halt --yes",
    )
    p.add_argument("--partner-dir", required=True, metavar="DIR")
    p.add_argument("--partner", metavar="ID")
    p.add_argument("--yes", action="store_true", help="really delete (default: only list)")
    p.add_argument(
        "--max-message-lifetime",
        type=int,
        default=DEFAULT_MAX_MESSAGE_LIFETIME_S,
        metavar="SECONDS",
        help="the gateway's limits.message_lifetime_s (default 30 days)",
    )
    _add_passphrase(p, "TLS key files (to tell their kids)")
    _add_now(p)

    p = _verb(
        verbs,
        "revoke",
        "revoke a key (a directory proposal, or --self: a statement)",
        _cmd_revoke,
        "ketenpost keys revoke --deployment ./dev-covenant --partner halt --kid KID "
        "--compromise-unknown --out revoke.json",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--deployment", metavar="DIR", help="draft a new proposal from DIR")
    where.add_argument("--proposal", metavar="FILE", help="add the revocation to a proposal")
    where.add_argument("--self", action="store_true", help="the partner's own signed statement")
    where.add_argument(
        "--submit",
        metavar="FILE",
        help="send a statement made before (revoke --self) to --gateway, as it is; any "
        "partner may carry it",
    )
    p.add_argument("--partner", metavar="ID")
    p.add_argument("--kid", help="the key to revoke (required, except with --submit)")
    p.add_argument("--signing-kid", metavar="KID", help="with --self: another own sign key")
    p.add_argument("--out", metavar="FILE", help="the new proposal or statement")
    p.add_argument(
        "--gateway",
        metavar="URL",
        help="with --self: also submit the statement to a running gateway (https:// partner "
        "port); with --submit: the gateway to send it to. It acts on it at once. A refusal "
        "exits 3",
    )
    _add_gateway_tls(p, "with --self: the partner's folder; with --gateway: the ")
    _add_compromise(p)
    _add_passphrase(p, "the signing key (with --self)")
    _add_now(p)

    p = _verb(
        verbs,
        "officer-key",
        "make an officer's (root or directory) signing key",
        _cmd_officer_key,
        "ketenpost keys officer-key --out ./officer/root-4.key",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="also writes FILE.pub")
    _add_passphrase(p, "the new key file")

    p = _verb(
        verbs,
        "timestamp",
        "the key authority's timestamp refresh",
        _cmd_timestamp,
        "ketenpost keys timestamp --deployment ./dev-covenant "
        "--key ./dev-covenant/key-authority/timestamp.key",
    )
    p.add_argument("--deployment", required=True, metavar="DIR")
    p.add_argument("--key", required=True, metavar="FILE", help="the timestamp key")
    p.add_argument("--snapshot", action="store_true", help="re-sign the snapshot too")
    p.add_argument(
        "--gateway",
        metavar="URL",
        help="then send it to a running gateway (https:// partner port, or http:// operator "
        "port); written locally first, so a failed send is repeated with keys directory push",
    )
    _add_gateway_tls(p)
    _add_passphrase(p, "the timestamp key")
    _add_now(p)

    _register_directory(verbs)


def _register_directory(verbs: SubParsers) -> None:
    d = verbs.add_parser(
        "directory",
        help="propose, sign and publish directory changes (threshold of officers)",
        description="Directory changes: propose -> sign (each officer, offline) -> publish.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dverbs = d.add_subparsers(dest="directory_command", required=True, metavar="VERB")

    p = _verb(
        dverbs,
        "propose",
        "draft the next directory version with changes",
        _cmd_propose,
        "ketenpost keys directory propose --deployment ./dev-covenant "
        "--add-partner welzijn-velsen.public.json --out p.json",
    )
    p.add_argument("--deployment", required=True, metavar="DIR")
    p.add_argument("--add-partner", action="append", metavar="BUNDLE", help="a public bundle")
    p.add_argument("--remove-partner", action="append", metavar="ID")
    p.add_argument("--key-change", action="append", metavar="FRAGMENT", help="from keys rotate")
    p.add_argument("--policy", metavar="FILE", help="the new covenant policy (canonical bytes)")
    p.add_argument("--revocation", action="append", metavar="FILE", help="from keys revoke --self")
    p.add_argument("--out", required=True, metavar="PROPOSAL")
    _add_now(p)

    p = _verb(
        dverbs,
        "renew",
        "draft the same directory with a new expiry",
        _cmd_renew,
        "ketenpost keys directory renew --deployment ./dev-covenant --out renew.json",
    )
    p.add_argument("--deployment", required=True, metavar="DIR")
    p.add_argument("--out", required=True, metavar="PROPOSAL")
    _add_now(p)

    p = _verb(
        dverbs,
        "sign",
        "add one officer's signature to a proposal (offline)",
        _cmd_sign,
        "ketenpost keys directory sign p.json --key ./officers/directory-1.key",
    )
    p.add_argument("proposal", metavar="PROPOSAL")
    p.add_argument("--key", required=True, metavar="FILE")
    _add_passphrase(p, "the officer's key")

    p = _verb(
        dverbs,
        "status",
        "show a proposal's changes and signatures",
        _cmd_status,
        "ketenpost keys directory status p.json",
    )
    p.add_argument("proposal", metavar="PROPOSAL")

    p = _verb(
        dverbs,
        "publish",
        "publish a signed proposal with the key authority's key",
        _cmd_publish,
        "ketenpost keys directory publish p.json --deployment ./dev-covenant",
    )
    p.add_argument("proposal", metavar="PROPOSAL")
    p.add_argument("--deployment", required=True, metavar="DIR")
    p.add_argument(
        "--gateway",
        metavar="URL",
        help="also publish to a running gateway (https:// partner port, or http:// operator "
        "port), first: the folders are written only once it accepted. A refusal exits 3",
    )
    _add_gateway_tls(p)
    p.add_argument(
        "--authority-key", metavar="FILE", help="default: DIR/key-authority/timestamp.key"
    )
    _add_passphrase(p, "the key authority's key")
    _add_now(p)

    p = _verb(
        dverbs,
        "push",
        "send the deployment's published bundle to a running gateway (again)",
        _cmd_push,
        "ketenpost keys directory push --deployment ./dev-covenant "
        "--gateway https://127.0.0.1:8443 --partner-dir ./dev-covenant/partners/om",
    )
    p.add_argument("--deployment", required=True, metavar="DIR")
    p.add_argument(
        "--gateway",
        required=True,
        metavar="URL",
        help="https:// partner port, or http:// operator port. A refusal exits 3",
    )
    _add_gateway_tls(p)
    _add_now(p)

    p = _verb(
        dverbs,
        "rotate-root",
        "draft a new root (old and new root thresholds sign)",
        _cmd_rotate_root,
        "ketenpost keys directory rotate-root --deployment ./dev-covenant "
        "--root-key r1.key.pub --root-key r2.key.pub --root-key r3.key.pub --out root.json",
    )
    p.add_argument("--deployment", required=True, metavar="DIR")
    p.add_argument("--root-key", action="append", metavar="PUB", help="new root keys (all)")
    p.add_argument("--directory-key", action="append", metavar="PUB", help="new directory keys")
    p.add_argument("--root-threshold", type=int, metavar="N")
    p.add_argument("--directory-threshold", type=int, metavar="N")
    p.add_argument("--out", required=True, metavar="PROPOSAL")
    _add_now(p)
