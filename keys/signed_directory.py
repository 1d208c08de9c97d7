"""The signed key directory: ``DirectoryContents`` carried and verified with TUF's rules.

Rules kept here (DESIGN.md "Identities and keys", ADR 0003):

* Four TUF top-level roles, each held by a fixed party:

  - ``root``: the covenant's root keys (development: 3 keys, threshold 2). Root names the keys
    and thresholds of every role.
  - ``targets``: the directory keys, held by the covenant's officers (development: 3 keys,
    threshold 2). Targets lists one target file, ``directory.json``: the msgspec JSON encoding
    of ``DirectoryContents``, by length and SHA-256. The signed bytes are carried as they are,
    never re-encoded.
  - ``snapshot`` and ``timestamp``: the covenant key authority's own key, never the gateway's.
    The timestamp expires after a day, so a gateway that keeps serving an old directory is
    noticed within a day: partners then refuse it as stale.

* A new root is accepted only as version N+1 of the trusted root, signed by a threshold of the
  trusted (old) root's root keys **and** a threshold of its own. A bundle carries every root
  version; the chain is walked one version at a time. A bundle whose newest root is older than
  the trusted root is a rollback.
* Versions only increase: timestamp, snapshot and targets versions below the trusted ones are a
  rollback, and so is a snapshot or timestamp naming an older version of what it lists. The same
  version with other content is equivocation and refused as a mismatch. When a root rotation
  changes the keys of a role, the rollback floor of that role is reset (TUF's fast-forward
  recovery), and the previously verified directory is forgotten until the next one verifies.
* Expiry is judged at ``now``, an integer Unix time passed in by the caller: the final root, the
  timestamp (expired means *stale*), the snapshot and the targets. Nothing in this module reads
  the clock. Intermediate roots of the chain may have expired; only the final one matters.
* Only Ed25519 keys, and each key only under TUF's default key id (SHA-256 of its canonical
  form), so one key cannot be counted twice towards a threshold under two ids.
* Domain separation (house rule 6): the signed part of every role carries
  ``"ketenpost_label": "ketenpost/v1/directory"``; metadata without it (another TUF repository
  signed with the same keys, for instance) is refused. TUF's ``_type`` field separates the roles.
* Every failure raises ``DirectoryError`` with a specific ``KeysReason``. No exception of
  ``tuf``, ``securesystemslib`` or the parsers escapes: they are wrapped, their detail kept in
  the message and as ``__cause__``.
* The verifier uses tuf's public Metadata API (``verify_delegate``-style threshold results,
  ``is_expired(reference_time)``, ``verify_length_and_hashes``) and walks the specification's
  client workflow itself: tuf's ``TrustedMetadataSet`` is internal, reads the clock in its
  constructor and reports every failure with a few coarse exception types.
* A verified root is kept as soon as the chain up to it verifies (as in TUF); timestamp,
  snapshot, targets and the directory are replaced together or not at all.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar, cast

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

# Both packages re-export these names without ``__all__``; mypy's strict no-implicit-reexport
# flags that, though these are their documented public import paths.
from securesystemslib.signer import CryptoSigner, SSlibKey  # type: ignore[attr-defined]
from tuf.api.metadata import (  # type: ignore[attr-defined]
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
    VerificationResult,
)
from tuf.api.serialization.json import JSONSerializer

from keys.directory import Directory, DirectoryContents
from keys.errors import DirectoryError, KeysError, KeysReason
from keys.keypair import ED25519_PUBLIC_LEN, Ed25519KeyPair

# Carried in the signed part of every role: signatures made for this directory can never be
# taken for metadata of another TUF repository that happens to use the same keys.
DIRECTORY_LABEL: Final = "ketenpost/v1/directory"
LABEL_FIELD: Final = "ketenpost_label"

ROOT_ROLE: Final = Root.type
TARGETS_ROLE: Final = Targets.type
SNAPSHOT_ROLE: Final = Snapshot.type
TIMESTAMP_ROLE: Final = Timestamp.type

# File names of a directory bundle (the folder the gateway serves and partners keep).
DIRECTORY_FILE: Final = "directory.json"
TARGETS_FILE: Final = "targets.json"
SNAPSHOT_FILE: Final = "snapshot.json"
TIMESTAMP_FILE: Final = "timestamp.json"
ROOT_FILE_RE: Final = re.compile(r"^([1-9][0-9]{0,8})\.root\.json$")
# A client's trust folder: the out-of-band trusted root, and the state kept after updates.
TRUSTED_ROOT_FILE: Final = "root.json"
TRUSTED_STATE_FILE: Final = "trusted-state.json"

HASH_ALGORITHMS: Final = ("sha256",)
# Size limits, in bytes, checked before parsing: a malicious server must not make a partner
# parse (or hold in memory) something unbounded. Metadata of this repository is a few KiB; the
# directory of a regional covenant a few hundred KiB.
MAX_METADATA_BYTES: Final = 512 * 1024
MAX_DIRECTORY_BYTES: Final = 16 * 1024 * 1024

DAY_S: Final = 86_400
_STATE_FORMAT: Final = 1


class ExpiryPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How long each role's metadata is valid after signing, in seconds.

    The snapshot lives as long as the targets: both are re-signed with every directory version,
    and the key authority can refresh the snapshot alone. The timestamp is short: it is what
    makes a frozen directory noticeable.
    """

    root_s: int = 365 * DAY_S
    targets_s: int = 90 * DAY_S
    snapshot_s: int = 90 * DAY_S
    timestamp_s: int = 1 * DAY_S


class DirectoryExpiry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Expiry of each role as Unix seconds (for metrics and the relay's ``directory_expired``)."""

    root: int
    targets: int
    snapshot: int
    timestamp: int

    @property
    def earliest(self) -> int:
        return min(self.root, self.targets, self.snapshot, self.timestamp)


class RollbackFloors(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The lowest version of each role a client still accepts. 0 means no floor."""

    timestamp: int = 0
    snapshot: int = 0
    targets: int = 0


class DirectoryBundle(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything a client needs to verify the directory, as the exact signed bytes.

    ``roots`` holds every root version (``N.root.json``), oldest first, so a client holding any
    older trusted root can walk the chain. On disk it is a folder (``write_bundle``); over HTTP
    it can travel as one document (``encode_bundle``).
    """

    roots: tuple[bytes, ...]
    timestamp: bytes
    snapshot: bytes
    targets: bytes
    directory: bytes


class ThresholdStatus(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How far one signature threshold is met. ``by`` names the role defining it."""

    by: str
    threshold: int
    signed: tuple[str, ...]
    missing: int


class SigningStatus(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The signatures on one metadata document. A new root has two thresholds: old and new."""

    role: str
    version: int
    thresholds: tuple[ThresholdStatus, ...]

    @property
    def complete(self) -> bool:
        return all(t.missing == 0 for t in self.thresholds)


class _PersistedState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    format: int
    root: bytes
    floors: RollbackFloors
    timestamp: bytes | None = None
    snapshot: bytes | None = None
    targets: bytes | None = None
    directory: bytes | None = None


# Decoders are built once (msgspec's advice); they hold no state between calls.
_CONTENTS_DECODER: Final = msgspec.json.Decoder(DirectoryContents)
_BUNDLE_DECODER: Final = msgspec.json.Decoder(DirectoryBundle)
_STATE_DECODER: Final = msgspec.json.Decoder(_PersistedState)

_S = TypeVar("_S", Root, Targets, Snapshot, Timestamp)


# --- small helpers -------------------------------------------------------------------------


@contextlib.contextmanager
def _wrapped(reason: KeysReason, what: str) -> Iterator[None]:
    """Turn any exception of a foreign library into ``DirectoryError(reason)``.

    tuf, securesystemslib, pyca and msgspec raise many exception types (ValueError, KeyError,
    RepositoryError, VerificationError, DeserializationError, …); callers get one type.
    """
    try:
        yield
    except KeysError:
        raise
    except Exception as exc:  # wrapping every foreign type is the point (house rule 3)
        raise DirectoryError(f"{what}: {type(exc).__name__}: {exc}", reason) from exc


def _at(unix: int) -> datetime:
    return datetime.fromtimestamp(unix, tz=UTC)


def _unix(moment: datetime) -> int:
    return int(moment.timestamp())


def _label() -> dict[str, Any]:
    # A fresh dict each time: tuf keeps and may mutate ``unrecognized_fields``.
    return {LABEL_FIELD: DIRECTORY_LABEL}


def _serialize(md: Metadata[Any]) -> bytes:
    # Indented so officers can read what they sign; signatures cover the canonical form.
    with _wrapped(KeysReason.DIRECTORY_MALFORMED, "serialising metadata"):
        return md.to_bytes(JSONSerializer(compact=False))


def _check_size(data: bytes, limit: int, what: str) -> None:
    if len(data) > limit:
        raise DirectoryError(
            f"{what} is {len(data)} bytes, more than {limit}", KeysReason.DIRECTORY_MALFORMED
        )


def _parse_any(data: bytes) -> Metadata[Any]:
    _check_size(data, MAX_METADATA_BYTES, "metadata")
    with _wrapped(KeysReason.DIRECTORY_MALFORMED, "metadata does not parse"):
        md: Metadata[Any] = Metadata.from_bytes(data)
    if md.signed.unrecognized_fields.get(LABEL_FIELD) != DIRECTORY_LABEL:
        raise DirectoryError(
            f"{md.signed.type} metadata is not labelled {DIRECTORY_LABEL}",
            KeysReason.DIRECTORY_MALFORMED,
        )
    return md


def _parse(data: bytes, kind: type[_S]) -> Metadata[_S]:
    md = _parse_any(data)
    if not isinstance(md.signed, kind):
        raise DirectoryError(
            f"expected {kind.type} metadata, got {md.signed.type}", KeysReason.DIRECTORY_MALFORMED
        )
    return cast("Metadata[_S]", md)


def tuf_key(public: bytes) -> SSlibKey:
    """The TUF form of an Ed25519 public key, under TUF's default key id."""
    if len(public) != ED25519_PUBLIC_LEN:
        raise DirectoryError("an Ed25519 public key is 32 bytes", KeysReason.DIRECTORY_MALFORMED)
    with _wrapped(KeysReason.DIRECTORY_MALFORMED, "Ed25519 public key"):
        return SSlibKey.from_crypto(Ed25519PublicKey.from_public_bytes(public))


def tuf_signer(key: Ed25519KeyPair) -> CryptoSigner:
    """A securesystemslib signer for one of our Ed25519 key pairs."""
    with _wrapped(KeysReason.MALFORMED_KEY, "Ed25519 private key"):
        private = Ed25519PrivateKey.from_private_bytes(key.secret_bytes())
        return CryptoSigner(private, tuf_key(key.public))


def _check_root(root: Root) -> None:
    """Refuse a root naming anything but Ed25519 keys under their default ids, or thresholds
    that can never be met."""
    for keyid, key in root.keys.items():
        public_hex = key.keyval.get("public") if isinstance(key, SSlibKey) else None
        if not isinstance(public_hex, str) or key.keytype != "ed25519" or key.scheme != "ed25519":
            raise DirectoryError(
                f"root v{root.version} names a key that is not Ed25519",
                KeysReason.DIRECTORY_MALFORMED,
            )
        with _wrapped(KeysReason.DIRECTORY_MALFORMED, "root key"):
            expected = tuf_key(bytes.fromhex(public_hex))
        if keyid != expected.keyid or key != expected:
            raise DirectoryError(
                f"root v{root.version} lists a key under an id that is not its own",
                KeysReason.DIRECTORY_MALFORMED,
            )
    for name, role in root.roles.items():
        if any(keyid not in root.keys for keyid in role.keyids):
            raise DirectoryError(
                f"root v{root.version}: {name} names an unknown key", KeysReason.DIRECTORY_MALFORMED
            )
        if role.threshold > len(role.keyids):
            raise DirectoryError(
                f"root v{root.version}: {name} threshold {role.threshold} exceeds its "
                f"{len(role.keyids)} keys",
                KeysReason.DIRECTORY_MALFORMED,
            )


def _result(delegator: Root, role: str, md: Metadata[Any]) -> VerificationResult:
    # A signature that cannot even be checked (not hex, wrong length) counts as not signed.
    with _wrapped(KeysReason.DIRECTORY_THRESHOLD, f"{role} signature"):
        return delegator.get_verification_result(role, md.signed_bytes, md.signatures)


def _require_threshold(delegator: Root, role: str, md: Metadata[Any]) -> None:
    result = _result(delegator, role, md)
    if not result.verified:
        raise DirectoryError(
            f"{role} v{md.signed.version} carries {len(result.signed)} valid signatures of the "
            f"{result.threshold} that root v{delegator.version} requires",
            KeysReason.DIRECTORY_THRESHOLD,
        )


def _verify_new_root(trusted: Root, md: Metadata[Root]) -> None:
    """Check a root one version after ``trusted``: old and new thresholds, sane keys."""
    new = md.signed
    _check_root(new)
    old_result = _result(trusted, ROOT_ROLE, md)
    new_result = _result(new, ROOT_ROLE, md)
    if not old_result.verified:
        raise DirectoryError(
            f"root v{new.version} is not signed by {old_result.threshold} keys of root "
            f"v{trusted.version} (has {len(old_result.signed)})",
            KeysReason.DIRECTORY_THRESHOLD,
        )
    if not new_result.verified:
        raise DirectoryError(
            f"root v{new.version} is not signed by {new_result.threshold} of its own keys "
            f"(has {len(new_result.signed)})",
            KeysReason.DIRECTORY_THRESHOLD,
        )


def _verify_file(meta: MetaFile | TargetFile, data: bytes, what: str) -> None:
    if meta.length is None or not meta.hashes:
        raise DirectoryError(
            f"{what} is listed without length and hashes", KeysReason.DIRECTORY_MALFORMED
        )
    with _wrapped(KeysReason.DIRECTORY_MISMATCH, f"{what} does not match its listed hash"):
        meta.verify_length_and_hashes(data)


def _role_keys(root: Root, role: str) -> tuple[frozenset[str], int]:
    r = root.roles[role]
    return frozenset(r.keyids), r.threshold


def _public_keys(keys: Sequence[bytes], what: str) -> list[SSlibKey]:
    converted = [tuf_key(k) for k in keys]
    if len({k.keyid for k in converted}) != len(converted):
        raise DirectoryError(f"{what} lists a key twice", KeysReason.DIRECTORY_MALFORMED)
    if not converted:
        raise DirectoryError(f"{what} lists no keys", KeysReason.DIRECTORY_MALFORMED)
    return converted


# --- the directory contents as a target file -----------------------------------------------


def encode_contents(contents: DirectoryContents) -> bytes:
    """The bytes of ``directory.json``: msgspec JSON, deterministic for a given schema."""
    return msgspec.json.encode(contents, order="deterministic")


def decode_contents(data: bytes) -> DirectoryContents:
    """Decode ``directory.json``; ``DirectoryError(directory_malformed)`` if it does not fit."""
    _check_size(data, MAX_DIRECTORY_BYTES, DIRECTORY_FILE)
    with _wrapped(KeysReason.DIRECTORY_MALFORMED, f"{DIRECTORY_FILE} does not decode"):
        return _CONTENTS_DECODER.decode(data)


# --- drafting and signing (works offline, one signature at a time) -------------------------


def draft_root(
    *,
    version: int,
    root_keys: Sequence[bytes],
    directory_keys: Sequence[bytes],
    authority_key: bytes,
    expires: int,
    root_threshold: int = 2,
    directory_threshold: int = 2,
) -> bytes:
    """An unsigned root of ``version`` naming these Ed25519 public keys.

    Root keys hold ``root``, directory keys ``targets``, the key authority's key ``snapshot``
    and ``timestamp``. Raises ``DirectoryError(directory_malformed)`` for impossible thresholds
    or repeated keys.
    """
    if root_threshold < 1 or directory_threshold < 1:
        raise DirectoryError("thresholds are at least 1", KeysReason.DIRECTORY_MALFORMED)
    roots = _public_keys(root_keys, "root keys")
    directory = _public_keys(directory_keys, "directory keys")
    authority = tuf_key(authority_key)
    with _wrapped(KeysReason.DIRECTORY_MALFORMED, "drafting root"):
        root = Root(
            version=version,
            expires=_at(expires),
            consistent_snapshot=False,
            unrecognized_fields=_label(),
        )
        for key in roots:
            root.add_key(key, ROOT_ROLE)
        for key in directory:
            root.add_key(key, TARGETS_ROLE)
        root.add_key(authority, SNAPSHOT_ROLE)
        root.add_key(authority, TIMESTAMP_ROLE)
        root.roles[ROOT_ROLE].threshold = root_threshold
        root.roles[TARGETS_ROLE].threshold = directory_threshold
    _check_root(root)
    return _serialize(Metadata(root))


def draft_targets(
    contents: DirectoryContents, *, version: int, expires: int
) -> tuple[bytes, bytes]:
    """An unsigned targets ``version`` listing ``directory.json``; returns (targets, directory).

    The target's ``custom`` field names the covenant and the policy hash, so a reviewing officer
    (and metrics) can see them without decoding the directory.
    """
    directory = encode_contents(contents)
    _check_size(directory, MAX_DIRECTORY_BYTES, DIRECTORY_FILE)
    with _wrapped(KeysReason.DIRECTORY_MALFORMED, "drafting targets"):
        target = TargetFile.from_data(DIRECTORY_FILE, directory, list(HASH_ALGORITHMS))
        target.unrecognized_fields["custom"] = {
            "covenant": contents.covenant,
            "policy_hash": contents.policy_hash,
        }
        targets = Targets(
            version=version,
            expires=_at(expires),
            targets={DIRECTORY_FILE: target},
            unrecognized_fields=_label(),
        )
    return _serialize(Metadata(targets)), directory


def sign_metadata(data: bytes, key: Ed25519KeyPair) -> bytes:
    """Add ``key``'s signature to serialised metadata and return the new serialised form.

    Other signatures are kept (a signature by the same key is replaced). Whether the key counts
    is for ``signing_status`` and the verifier to judge.
    """
    md = _parse_any(data)
    with _wrapped(KeysReason.DIRECTORY_MALFORMED, "signing metadata"):
        md.sign(tuf_signer(key), append=True)
    return _serialize(md)


def signing_status(data: bytes, root: bytes | None = None) -> SigningStatus:
    """How far ``data`` meets its thresholds.

    For a root: ``root`` is the previous root (``None`` only for version 1), and both the
    previous and the new thresholds are reported. For other roles: ``root`` is the root that
    names the role's keys.
    """
    md = _parse_any(data)
    signed = md.signed
    checks: list[tuple[str, Root, str]] = []
    if isinstance(signed, Root):
        _check_root(signed)
        if root is not None:
            previous = _parse(root, Root).signed
            if signed.version != previous.version + 1:
                raise DirectoryError(
                    f"root v{signed.version} does not follow root v{previous.version}",
                    KeysReason.DIRECTORY_MISMATCH,
                )
            checks.append((f"root v{previous.version}", previous, ROOT_ROLE))
        elif signed.version != 1:
            raise DirectoryError(
                "the previous root is needed to judge a root after version 1",
                KeysReason.DIRECTORY_MALFORMED,
            )
        checks.append((f"root v{signed.version}", signed, ROOT_ROLE))
    else:
        if root is None:
            raise DirectoryError(
                f"the root is needed to judge {signed.type}", KeysReason.DIRECTORY_MALFORMED
            )
        delegator = _parse(root, Root).signed
        checks.append((f"root v{delegator.version}", delegator, signed.type))
    thresholds = []
    for by, delegator_root, role in checks:
        result = _result(delegator_root, role, md)
        thresholds.append(
            ThresholdStatus(
                by=by,
                threshold=result.threshold,
                signed=tuple(sorted(result.signed)),
                missing=result.missing,
            )
        )
    return SigningStatus(role=signed.type, version=signed.version, thresholds=tuple(thresholds))


def _sign_snapshot(
    root: Root, targets: bytes, authority: Ed25519KeyPair, *, version: int, expires: int
) -> bytes:
    targets_version = _parse(targets, Targets).signed.version
    with _wrapped(KeysReason.DIRECTORY_MALFORMED, "building snapshot"):
        meta = MetaFile.from_data(targets_version, targets, list(HASH_ALGORITHMS))
        md = Metadata(
            Snapshot(
                version=version,
                expires=_at(expires),
                meta={TARGETS_FILE: meta},
                unrecognized_fields=_label(),
            )
        )
        md.sign(tuf_signer(authority))
    _require_threshold(root, SNAPSHOT_ROLE, md)
    return _serialize(md)


def _sign_timestamp(
    root: Root, snapshot: bytes, authority: Ed25519KeyPair, *, version: int, expires: int
) -> bytes:
    snapshot_version = _parse(snapshot, Snapshot).signed.version
    with _wrapped(KeysReason.DIRECTORY_MALFORMED, "building timestamp"):
        meta = MetaFile.from_data(snapshot_version, snapshot, list(HASH_ALGORITHMS))
        md = Metadata(
            Timestamp(
                version=version,
                expires=_at(expires),
                snapshot_meta=meta,
                unrecognized_fields=_label(),
            )
        )
        md.sign(tuf_signer(authority))
    _require_threshold(root, TIMESTAMP_ROLE, md)
    return _serialize(md)


# --- verifying the top-level roles ----------------------------------------------------------


@dataclass(frozen=True)
class _TopLevel:
    """A verified timestamp, snapshot, targets and directory, with their exact bytes."""

    timestamp_raw: bytes
    timestamp: Metadata[Timestamp]
    snapshot_raw: bytes
    snapshot: Metadata[Snapshot]
    targets_raw: bytes
    targets: Metadata[Targets]
    directory_raw: bytes
    directory: Directory

    @property
    def floors(self) -> RollbackFloors:
        return RollbackFloors(
            timestamp=self.timestamp.signed.version,
            snapshot=self.snapshot.signed.version,
            targets=self.targets.signed.version,
        )


def _check_expired(signed: Signed, now: int | None, reason: KeysReason) -> None:
    if now is not None and signed.is_expired(_at(now)):
        raise DirectoryError(
            f"{signed.type} v{signed.version} expired at {_unix(signed.expires)}", reason
        )


def _check_version(
    new: Metadata[Any], floor: int, trusted: Metadata[Any] | None, what: str
) -> None:
    version: int = new.signed.version
    if version < floor:
        raise DirectoryError(
            f"{what} v{version} is older than the trusted v{floor}", KeysReason.DIRECTORY_ROLLBACK
        )
    # The same version with other content means a key holder signed two histories.
    if trusted is not None and version == trusted.signed.version and new.signed != trusted.signed:
        raise DirectoryError(
            f"two different {what} documents carry version {version}",
            KeysReason.DIRECTORY_MISMATCH,
        )


def _verify_top_level(
    root: Root,
    *,
    timestamp: bytes,
    snapshot: bytes,
    targets: bytes,
    directory: bytes,
    floors: RollbackFloors,
    trusted: _TopLevel | None,
    now: int | None,
) -> _TopLevel:
    """Verify timestamp → snapshot → targets → directory under ``root`` (spec 5.4 to 5.6).

    ``now`` ``None`` skips expiry: used only to reload state this client verified before.
    """
    ts_md = _parse(timestamp, Timestamp)
    _require_threshold(root, TIMESTAMP_ROLE, ts_md)
    _check_version(
        ts_md, floors.timestamp, None if trusted is None else trusted.timestamp, TIMESTAMP_ROLE
    )
    ts = ts_md.signed
    if ts.snapshot_meta.version < floors.snapshot:
        raise DirectoryError(
            f"timestamp v{ts.version} names snapshot v{ts.snapshot_meta.version}, older than "
            f"the trusted v{floors.snapshot}",
            KeysReason.DIRECTORY_ROLLBACK,
        )
    _check_expired(ts, now, KeysReason.DIRECTORY_TIMESTAMP_STALE)

    _verify_file(ts.snapshot_meta, snapshot, SNAPSHOT_FILE)
    snap_md = _parse(snapshot, Snapshot)
    _require_threshold(root, SNAPSHOT_ROLE, snap_md)
    snap = snap_md.signed
    if snap.version != ts.snapshot_meta.version:
        raise DirectoryError(
            f"timestamp names snapshot v{ts.snapshot_meta.version}, got v{snap.version}",
            KeysReason.DIRECTORY_MISMATCH,
        )
    _check_version(
        snap_md, floors.snapshot, None if trusted is None else trusted.snapshot, SNAPSHOT_ROLE
    )
    targets_meta = snap.meta.get(TARGETS_FILE)
    if targets_meta is None:
        raise DirectoryError(
            f"snapshot v{snap.version} does not list {TARGETS_FILE}",
            KeysReason.DIRECTORY_MALFORMED,
        )
    if targets_meta.version < floors.targets:
        raise DirectoryError(
            f"snapshot v{snap.version} names targets v{targets_meta.version}, older than the "
            f"trusted v{floors.targets}",
            KeysReason.DIRECTORY_ROLLBACK,
        )
    _check_expired(snap, now, KeysReason.DIRECTORY_EXPIRED)

    _verify_file(targets_meta, targets, TARGETS_FILE)
    targets_md = _parse(targets, Targets)
    _require_threshold(root, TARGETS_ROLE, targets_md)
    tgt = targets_md.signed
    if tgt.version != targets_meta.version:
        raise DirectoryError(
            f"snapshot names targets v{targets_meta.version}, got v{tgt.version}",
            KeysReason.DIRECTORY_MISMATCH,
        )
    _check_version(
        targets_md, floors.targets, None if trusted is None else trusted.targets, TARGETS_ROLE
    )
    _check_expired(tgt, now, KeysReason.DIRECTORY_EXPIRED)
    if tgt.delegations is not None:
        # One directory, one role: delegated targets would let other keys speak for it.
        raise DirectoryError("targets must not delegate", KeysReason.DIRECTORY_MALFORMED)
    target = tgt.targets.get(DIRECTORY_FILE)
    if target is None:
        raise DirectoryError(
            f"targets v{tgt.version} does not list {DIRECTORY_FILE}",
            KeysReason.DIRECTORY_MALFORMED,
        )
    _check_size(directory, MAX_DIRECTORY_BYTES, DIRECTORY_FILE)
    _verify_file(target, directory, DIRECTORY_FILE)
    contents = decode_contents(directory)
    custom = target.unrecognized_fields.get("custom")
    if isinstance(custom, dict) and custom.get("policy_hash") not in (None, contents.policy_hash):
        raise DirectoryError(
            "the policy hash listed in targets is not the directory's",
            KeysReason.DIRECTORY_MISMATCH,
        )
    return _TopLevel(
        timestamp_raw=timestamp,
        timestamp=ts_md,
        snapshot_raw=snapshot,
        snapshot=snap_md,
        targets_raw=targets,
        targets=targets_md,
        directory_raw=directory,
        directory=Directory(contents, version=tgt.version),
    )


def _expiry(root: Root, top: _TopLevel) -> DirectoryExpiry:
    return DirectoryExpiry(
        root=_unix(root.expires),
        targets=_unix(top.targets.signed.expires),
        snapshot=_unix(top.snapshot.signed.expires),
        timestamp=_unix(top.timestamp.signed.expires),
    )


# --- the client side ------------------------------------------------------------------------


class TrustedDirectory:
    """A client's trusted directory state: the latest verified root and directory.

    Start from a root obtained out of band (``ketenpost init`` puts it in each partner's
    folder), then ``update`` with each bundle fetched. Never goes back: a later bundle with
    older versions is refused, also after ``save`` and ``load``.
    """

    def __init__(self, trusted_root: bytes) -> None:
        """Trust ``trusted_root``; it must be signed by its own threshold.

        Raises ``DirectoryError`` (malformed, threshold). Expiry is not checked here: an
        expired trusted root can still verify its successor.
        """
        md = _parse(trusted_root, Root)
        _check_root(md.signed)
        _require_threshold(md.signed, ROOT_ROLE, md)
        self._root_raw = trusted_root
        self._root = md.signed
        self._floors = RollbackFloors()
        self._top: _TopLevel | None = None
        # ``current``'s fast path: the root and top-level metadata last found valid by the full
        # check, and the earliest expiry of their four roles (Unix seconds, rounded down). Until
        # then no role of that same pair can have expired. Kept by identity, so whatever
        # replaces the root or the top level (``update``, ``load``, a root rotation) is checked
        # in full once before the fast path answers for it.
        self._valid_before: tuple[Root, _TopLevel, int] | None = None

    @property
    def root_version(self) -> int:
        return self._root.version

    @property
    def version(self) -> int:
        """The targets version of the verified directory, 0 if none verified yet."""
        return 0 if self._top is None else self._top.targets.signed.version

    @property
    def floors(self) -> RollbackFloors:
        return self._floors

    @property
    def expiry(self) -> DirectoryExpiry:
        """Expiry of each role; ``DirectoryError(directory_missing)`` before a first update."""
        return _expiry(self._root, self._require_top())

    def trusted_root(self) -> bytes:
        """The exact bytes of the latest trusted root."""
        return self._root_raw

    def update(self, bundle: DirectoryBundle, now: int) -> Directory:
        """Verify ``bundle`` at ``now`` and make it the trusted state; return its directory.

        Raises ``DirectoryError`` with reason ``directory_rollback``, ``directory_expired``,
        ``directory_timestamp_stale``, ``directory_threshold``, ``directory_mismatch`` or
        ``directory_malformed`` (and the reasons of ``Directory`` for inconsistent contents).
        On failure the trusted directory is unchanged, except that roots verified before the
        failure stay trusted.
        """
        self._walk_roots(bundle.roots)
        _check_expired(self._root, now, KeysReason.DIRECTORY_EXPIRED)
        top = _verify_top_level(
            self._root,
            timestamp=bundle.timestamp,
            snapshot=bundle.snapshot,
            targets=bundle.targets,
            directory=bundle.directory,
            floors=self._floors,
            trusted=self._top,
            now=now,
        )
        self._top = top
        self._floors = top.floors
        return top.directory

    def current(self, now: int) -> Directory:
        """The verified directory if every role is still valid at ``now``.

        Without updates the directory freezes: from the timestamp's expiry on this raises
        ``directory_timestamp_stale`` (``directory_expired`` for root, snapshot, targets).
        """
        top = self._require_top()
        root = self._root
        valid = self._valid_before
        # Every role expires at or after ``valid[2]`` (``is_expired`` is ``now >= expires``),
        # so before it the full check below could only pass.
        if valid is not None and valid[0] is root and valid[1] is top and now < valid[2]:
            return top.directory
        _check_expired(root, now, KeysReason.DIRECTORY_EXPIRED)
        _check_expired(top.timestamp.signed, now, KeysReason.DIRECTORY_TIMESTAMP_STALE)
        _check_expired(top.snapshot.signed, now, KeysReason.DIRECTORY_EXPIRED)
        _check_expired(top.targets.signed, now, KeysReason.DIRECTORY_EXPIRED)
        if valid is None or valid[0] is not root or valid[1] is not top:
            expiry = _expiry(root, top)
            earliest = min(expiry.root, expiry.timestamp, expiry.snapshot, expiry.targets)
            self._valid_before = (root, top, earliest)
        return top.directory

    def save(self, folder: Path) -> None:
        """Write the trusted state to ``folder/trusted-state.json`` in one atomic replace."""
        top = self._top
        state = _PersistedState(
            format=_STATE_FORMAT,
            root=self._root_raw,
            floors=self._floors,
            timestamp=None if top is None else top.timestamp_raw,
            snapshot=None if top is None else top.snapshot_raw,
            targets=None if top is None else top.targets_raw,
            directory=None if top is None else top.directory_raw,
        )
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_write(folder / TRUSTED_STATE_FILE, msgspec.json.encode(state))

    @classmethod
    def load(cls, folder: Path) -> TrustedDirectory:
        """Reload what ``save`` wrote, or start from ``folder/root.json`` if nothing was saved.

        The saved metadata is verified again (signatures, hashes, consistency; not expiry);
        ``DirectoryError(directory_missing)`` if neither file exists.
        """
        state_path = folder / TRUSTED_STATE_FILE
        if not state_path.exists():
            return cls(_read_file(folder / TRUSTED_ROOT_FILE, MAX_METADATA_BYTES))
        data = _read_file(state_path, MAX_DIRECTORY_BYTES + 8 * MAX_METADATA_BYTES)
        with _wrapped(KeysReason.DIRECTORY_MALFORMED, f"{TRUSTED_STATE_FILE} does not decode"):
            state = _STATE_DECODER.decode(data)
        if state.format != _STATE_FORMAT:
            raise DirectoryError(
                f"unknown trusted state format {state.format}", KeysReason.DIRECTORY_MALFORMED
            )
        trusted = cls(state.root)
        parts = (state.timestamp, state.snapshot, state.targets, state.directory)
        if all(p is not None for p in parts):
            trusted._top = _verify_top_level(
                trusted._root,
                timestamp=cast("bytes", state.timestamp),
                snapshot=cast("bytes", state.snapshot),
                targets=cast("bytes", state.targets),
                directory=cast("bytes", state.directory),
                floors=RollbackFloors(),
                trusted=None,
                now=None,
            )
        elif any(p is not None for p in parts):
            raise DirectoryError("trusted state is incomplete", KeysReason.DIRECTORY_MALFORMED)
        trusted._floors = state.floors
        return trusted

    def _require_top(self) -> _TopLevel:
        if self._top is None:
            raise DirectoryError("no directory verified yet", KeysReason.DIRECTORY_MISSING)
        return self._top

    def _walk_roots(self, roots: Sequence[bytes]) -> None:
        """Advance the trusted root through ``roots`` one version at a time (spec 5.3)."""
        if not roots:
            raise DirectoryError("bundle carries no root", KeysReason.DIRECTORY_MALFORMED)
        parsed = sorted(
            ((_parse(raw, Root), raw) for raw in roots), key=lambda pair: pair[0].signed.version
        )
        newest = parsed[-1][0].signed.version
        if newest < self._root.version:
            raise DirectoryError(
                f"bundle's newest root v{newest} is older than the trusted v{self._root.version}",
                KeysReason.DIRECTORY_ROLLBACK,
            )
        for md, raw in parsed:
            version = md.signed.version
            if version <= self._root.version:
                continue  # history the client has already walked
            if version != self._root.version + 1:
                raise DirectoryError(
                    f"root chain jumps from v{self._root.version} to v{version}",
                    KeysReason.DIRECTORY_MALFORMED,
                )
            _verify_new_root(self._root, md)
            self._commit_root(raw, md.signed)

    def _commit_root(self, raw: bytes, new: Root) -> None:
        old = self._root
        floors = self._floors
        # Spec 5.3.11: when the keys of timestamp or snapshot change, their rollback floors go,
        # so that rotating away a compromised key also recovers from versions it inflated.
        # The same holds for the directory keys and the targets floor.
        authority_rotated = any(
            _role_keys(old, role) != _role_keys(new, role)
            for role in (TIMESTAMP_ROLE, SNAPSHOT_ROLE)
        )
        targets_rotated = _role_keys(old, TARGETS_ROLE) != _role_keys(new, TARGETS_ROLE)
        if authority_rotated:
            floors = msgspec.structs.replace(floors, timestamp=0, snapshot=0)
        if targets_rotated:
            floors = msgspec.structs.replace(floors, targets=0)
        if authority_rotated or targets_rotated:
            # What the old keys signed is no longer vouched for by the trusted root.
            self._top = None
        self._root_raw = raw
        self._root = new
        self._floors = floors


# --- the authoring side ---------------------------------------------------------------------


class DirectoryRepository:
    """The authoring side: keeps the published metadata (bytes) and makes new versions.

    Holds no private key: every method that signs takes the key it signs with, and every
    document that a threshold signs can be drafted, signed one key at a time (``sign_metadata``,
    possibly on an offline machine) and then published. Before publishing, each document is
    checked against the current root, so this side never publishes what clients would refuse.
    """

    def __init__(self, root: bytes, *, expiry: ExpiryPolicy | None = None) -> None:
        """Start a repository from a version 1 root signed by its own threshold."""
        md = _parse(root, Root)
        _check_root(md.signed)
        _require_threshold(md.signed, ROOT_ROLE, md)
        self._expiry = ExpiryPolicy() if expiry is None else expiry
        self._roots: list[bytes] = [root]
        self._root = md.signed
        self._timestamp: bytes | None = None
        self._snapshot: bytes | None = None
        self._targets: bytes | None = None
        self._directory: bytes | None = None

    @classmethod
    def create(
        cls,
        *,
        root_keys: Sequence[Ed25519KeyPair],
        directory_keys: Sequence[Ed25519KeyPair],
        authority_key: Ed25519KeyPair,
        contents: DirectoryContents,
        now: int,
        root_threshold: int = 2,
        directory_threshold: int = 2,
        expiry: ExpiryPolicy | None = None,
    ) -> DirectoryRepository:
        """Create a repository and publish version 1 of ``contents``, all keys at hand.

        For development and tests (``ketenpost init``): every root and directory key signs.
        """
        policy = ExpiryPolicy() if expiry is None else expiry
        root = draft_root(
            version=1,
            root_keys=[k.public for k in root_keys],
            directory_keys=[k.public for k in directory_keys],
            authority_key=authority_key.public,
            expires=now + policy.root_s,
            root_threshold=root_threshold,
            directory_threshold=directory_threshold,
        )
        for key in root_keys:
            root = sign_metadata(root, key)
        repo = cls(root, expiry=policy)
        repo.publish(contents, directory_keys, authority_key, now)
        return repo

    @classmethod
    def from_bundle(
        cls, bundle: DirectoryBundle, *, expiry: ExpiryPolicy | None = None
    ) -> DirectoryRepository:
        """Resume authoring from a bundle this side published (e.g. the key authority's copy).

        The root chain, signatures and hashes are verified; expiry is not, since refreshing
        expired metadata is what a resumed repository is for.
        """
        if not bundle.roots:
            raise DirectoryError("bundle carries no root", KeysReason.DIRECTORY_MALFORMED)
        ordered = sorted(bundle.roots, key=lambda raw: _parse(raw, Root).signed.version)
        repo = cls(ordered[0], expiry=expiry)
        for raw in ordered[1:]:
            repo.publish_root(raw)
        _verify_top_level(
            repo._root,
            timestamp=bundle.timestamp,
            snapshot=bundle.snapshot,
            targets=bundle.targets,
            directory=bundle.directory,
            floors=RollbackFloors(),
            trusted=None,
            now=None,
        )
        repo._timestamp = bundle.timestamp
        repo._snapshot = bundle.snapshot
        repo._targets = bundle.targets
        repo._directory = bundle.directory
        return repo

    @property
    def root_version(self) -> int:
        return self._root.version

    @property
    def version(self) -> int:
        """The targets version (the directory version) published last, 0 if none."""
        return 0 if self._targets is None else _parse(self._targets, Targets).signed.version

    def initial_root(self) -> bytes:
        """Root version 1: what a client that has never updated starts from."""
        return self._roots[0]

    def root(self) -> bytes:
        """The newest root."""
        return self._roots[-1]

    def bundle(self) -> DirectoryBundle:
        """Everything published, as a bundle; ``directory_missing`` before a first publish."""
        if (
            self._timestamp is None
            or self._snapshot is None
            or self._targets is None
            or self._directory is None
        ):
            raise DirectoryError("nothing published yet", KeysReason.DIRECTORY_MISSING)
        return DirectoryBundle(
            roots=tuple(self._roots),
            timestamp=self._timestamp,
            snapshot=self._snapshot,
            targets=self._targets,
            directory=self._directory,
        )

    def expiry(self) -> DirectoryExpiry:
        """Expiry of each published role (for the key authority's metrics and reminders)."""
        bundle = self.bundle()
        return DirectoryExpiry(
            root=_unix(self._root.expires),
            targets=_unix(_parse(bundle.targets, Targets).signed.expires),
            snapshot=_unix(_parse(bundle.snapshot, Snapshot).signed.expires),
            timestamp=_unix(_parse(bundle.timestamp, Timestamp).signed.expires),
        )

    def signing_status(self, data: bytes) -> SigningStatus:
        """``signing_status`` of a draft against this repository's newest root."""
        return signing_status(data, self.root())

    # Directory versions --------------------------------------------------------------------

    def draft_targets(
        self, contents: DirectoryContents, now: int, *, expires: int | None = None
    ) -> bytes:
        """An unsigned targets metadata for the next directory version of ``contents``."""
        targets, _ = draft_targets(
            contents,
            version=self.version + 1,
            expires=now + self._expiry.targets_s if expires is None else expires,
        )
        return targets

    def publish_targets(
        self,
        signed_targets: bytes,
        contents: DirectoryContents,
        authority_key: Ed25519KeyPair,
        now: int,
    ) -> None:
        """Publish targets signed by the directory keys; the key authority signs the rest.

        Raises ``directory_threshold`` if the directory keys' threshold is not met (or the
        authority key is not the one root names), ``directory_mismatch`` if the targets are not
        the next version or do not list ``contents``, ``directory_expired`` if already expired.
        """
        md = _parse(signed_targets, Targets)
        if md.signed.version != self.version + 1:
            raise DirectoryError(
                f"targets v{md.signed.version} is not the next version {self.version + 1}",
                KeysReason.DIRECTORY_MISMATCH,
            )
        _require_threshold(self._root, TARGETS_ROLE, md)
        _check_expired(md.signed, now, KeysReason.DIRECTORY_EXPIRED)
        if md.signed.delegations is not None:
            raise DirectoryError("targets must not delegate", KeysReason.DIRECTORY_MALFORMED)
        directory = encode_contents(contents)
        target = md.signed.targets.get(DIRECTORY_FILE)
        if target is None:
            raise DirectoryError(
                f"targets do not list {DIRECTORY_FILE}", KeysReason.DIRECTORY_MALFORMED
            )
        _verify_file(target, directory, DIRECTORY_FILE)
        snapshot, timestamp = self._sign_snapshot_and_timestamp(signed_targets, authority_key, now)
        # Assigned only once everything above succeeded: a failure publishes nothing.
        self._targets = signed_targets
        self._directory = directory
        self._snapshot = snapshot
        self._timestamp = timestamp

    def publish(
        self,
        contents: DirectoryContents,
        directory_keys: Sequence[Ed25519KeyPair],
        authority_key: Ed25519KeyPair,
        now: int,
    ) -> None:
        """Draft, sign with every given directory key, and publish the next version."""
        targets = self.draft_targets(contents, now)
        for key in directory_keys:
            targets = sign_metadata(targets, key)
        self.publish_targets(targets, contents, authority_key, now)

    def refresh_timestamp(self, authority_key: Ed25519KeyPair, now: int) -> None:
        """The key authority's routine: a new timestamp version over the same snapshot."""
        bundle = self.bundle()
        self._timestamp = _sign_timestamp(
            self._root,
            bundle.snapshot,
            authority_key,
            version=_parse(bundle.timestamp, Timestamp).signed.version + 1,
            expires=now + self._expiry.timestamp_s,
        )

    def refresh_snapshot(self, authority_key: Ed25519KeyPair, now: int) -> None:
        """A new snapshot (and timestamp) over the same targets, e.g. after an authority key
        rotation."""
        bundle = self.bundle()
        snapshot, timestamp = self._sign_snapshot_and_timestamp(bundle.targets, authority_key, now)
        self._snapshot = snapshot
        self._timestamp = timestamp

    def _sign_snapshot_and_timestamp(
        self, targets: bytes, authority_key: Ed25519KeyPair, now: int
    ) -> tuple[bytes, bytes]:
        snapshot_version = (
            1 if self._snapshot is None else _parse(self._snapshot, Snapshot).signed.version + 1
        )
        timestamp_version = (
            1 if self._timestamp is None else _parse(self._timestamp, Timestamp).signed.version + 1
        )
        snapshot = _sign_snapshot(
            self._root,
            targets,
            authority_key,
            version=snapshot_version,
            expires=now + self._expiry.snapshot_s,
        )
        timestamp = _sign_timestamp(
            self._root,
            snapshot,
            authority_key,
            version=timestamp_version,
            expires=now + self._expiry.timestamp_s,
        )
        return snapshot, timestamp

    # Root versions -------------------------------------------------------------------------

    def draft_root(
        self,
        *,
        root_keys: Sequence[bytes],
        directory_keys: Sequence[bytes],
        authority_key: bytes,
        now: int,
        root_threshold: int = 2,
        directory_threshold: int = 2,
        expires: int | None = None,
    ) -> bytes:
        """An unsigned next root; it needs the old root keys' and its own threshold."""
        return draft_root(
            version=self._root.version + 1,
            root_keys=root_keys,
            directory_keys=directory_keys,
            authority_key=authority_key,
            expires=now + self._expiry.root_s if expires is None else expires,
            root_threshold=root_threshold,
            directory_threshold=directory_threshold,
        )

    def publish_root(self, signed_root: bytes) -> None:
        """Publish the next root; ``directory_threshold`` unless old and new thresholds sign.

        If it changes the directory or authority keys, publish (or refresh the snapshot)
        afterwards: until then the published targets, snapshot or timestamp no longer verify.
        """
        md = _parse(signed_root, Root)
        if md.signed.version != self._root.version + 1:
            raise DirectoryError(
                f"root v{md.signed.version} is not the next version {self._root.version + 1}",
                KeysReason.DIRECTORY_MISMATCH,
            )
        _verify_new_root(self._root, md)
        self._roots.append(signed_root)
        self._root = md.signed

    def rotate_root(
        self,
        *,
        old_root_keys: Sequence[Ed25519KeyPair],
        new_root_keys: Sequence[Ed25519KeyPair],
        directory_keys: Sequence[bytes],
        authority_key: bytes,
        now: int,
        root_threshold: int = 2,
        directory_threshold: int = 2,
    ) -> None:
        """Draft the next root, sign it with the old and the new root keys, and publish it."""
        root = self.draft_root(
            root_keys=[k.public for k in new_root_keys],
            directory_keys=directory_keys,
            authority_key=authority_key,
            now=now,
            root_threshold=root_threshold,
            directory_threshold=directory_threshold,
        )
        signers = {k.public: k for k in (*old_root_keys, *new_root_keys)}
        for key in signers.values():
            root = sign_metadata(root, key)
        self.publish_root(root)


# --- bundles on disk and on the wire --------------------------------------------------------


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader sees the old or the new file, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # public metadata; mkstemp makes files 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _read_file(path: Path, limit: int) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise DirectoryError(f"{path.name} not found", KeysReason.DIRECTORY_MISSING) from None
    _check_size(data, limit, path.name)
    return data


def write_bundle(bundle: DirectoryBundle, folder: Path) -> None:
    """Write ``bundle`` as files into ``folder`` (created if needed).

    Each file is replaced atomically, roots first and the timestamp last, as TUF clients read
    them. ``OSError`` from the file system is not wrapped.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for raw in bundle.roots:
        version = _parse(raw, Root).signed.version
        _atomic_write(folder / f"{version}.root.json", raw)
    _atomic_write(folder / DIRECTORY_FILE, bundle.directory)
    _atomic_write(folder / TARGETS_FILE, bundle.targets)
    _atomic_write(folder / SNAPSHOT_FILE, bundle.snapshot)
    _atomic_write(folder / TIMESTAMP_FILE, bundle.timestamp)


def read_bundle(folder: Path) -> DirectoryBundle:
    """Read a bundle that ``write_bundle`` wrote; nothing is verified yet.

    Raises ``directory_missing`` for an absent file and ``directory_malformed`` for a gap in
    the root versions or an oversized file.
    """
    try:
        names = [p.name for p in folder.iterdir()]
    except FileNotFoundError:
        raise DirectoryError(f"{folder} not found", KeysReason.DIRECTORY_MISSING) from None
    versions = sorted(int(m[1]) for n in names if (m := ROOT_FILE_RE.fullmatch(n)))
    if not versions:
        raise DirectoryError("bundle has no root", KeysReason.DIRECTORY_MISSING)
    if versions != list(range(versions[0], versions[-1] + 1)):
        raise DirectoryError("bundle's root versions have a gap", KeysReason.DIRECTORY_MALFORMED)
    return DirectoryBundle(
        roots=tuple(_read_file(folder / f"{v}.root.json", MAX_METADATA_BYTES) for v in versions),
        timestamp=_read_file(folder / TIMESTAMP_FILE, MAX_METADATA_BYTES),
        snapshot=_read_file(folder / SNAPSHOT_FILE, MAX_METADATA_BYTES),
        targets=_read_file(folder / TARGETS_FILE, MAX_METADATA_BYTES),
        directory=_read_file(folder / DIRECTORY_FILE, MAX_DIRECTORY_BYTES),
    )


def write_trusted_root(folder: Path, root: bytes) -> None:
    """Put the out-of-band trusted root into a client's trust folder as ``root.json``.

    Refuses to replace an existing one (``key_file_exists``): changing a trust anchor is a
    deliberate act, not a side effect. ``TrustedDirectory.load(folder)`` starts from it.
    """
    _parse(root, Root)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with (folder / TRUSTED_ROOT_FILE).open("xb") as f:
            f.write(root)
    except FileExistsError:
        raise DirectoryError(
            f"{folder / TRUSTED_ROOT_FILE} exists", KeysReason.KEY_FILE_EXISTS
        ) from None


def encode_bundle(bundle: DirectoryBundle) -> bytes:
    """The bundle as one JSON document (file contents base64), e.g. for ``GET /v1/directory``."""
    return msgspec.json.encode(bundle)


def decode_bundle(data: bytes) -> DirectoryBundle:
    """Inverse of ``encode_bundle``; ``directory_malformed`` if it does not decode."""
    _check_size(data, 2 * (MAX_DIRECTORY_BYTES + 8 * MAX_METADATA_BYTES), "bundle")
    with _wrapped(KeysReason.DIRECTORY_MALFORMED, "bundle does not decode"):
        return _BUNDLE_DECODER.decode(data)
