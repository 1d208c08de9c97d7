"""The signed directory against TUF's rules: tables of named cases, time passed in, no sleeps.

Every attack is built the way its attacker could build it: a replayed older file, or new
metadata signed by the keys that attacker holds (a compromised key authority, a compromised
threshold of officers, the gateway's own key). ``forge_*`` sign with whatever they are given and
check nothing; the repository under test refuses to publish such things, clients must refuse
to accept them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from securesystemslib.signer import CryptoSigner, SSlibKey  # type: ignore[attr-defined]
from tuf.api.metadata import (  # type: ignore[attr-defined]
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from keys.directory import DirectoryContents, DirectoryKey, GatewayEntry, Partner, Role
from keys.errors import DirectoryError, KeysReason
from keys.keypair import Ed25519KeyPair, KeyUse
from keys.signed_directory import (
    DIRECTORY_LABEL,
    LABEL_FIELD,
    TRUSTED_STATE_FILE,
    DirectoryBundle,
    DirectoryRepository,
    ExpiryPolicy,
    TrustedDirectory,
    decode_bundle,
    draft_root,
    draft_targets,
    encode_bundle,
    encode_contents,
    read_bundle,
    sign_metadata,
    signing_status,
    tuf_signer,
    write_bundle,
    write_trusted_root,
)

T0 = 1_750_000_000
HOUR = 3_600
DAY = 86_400
YEAR = 365 * DAY


def _pair(i: int) -> Ed25519KeyPair:
    # Fixed seeds: the same keys every run, and no key generation cost.
    return Ed25519KeyPair.from_seed(KeyUse.SIGN, bytes([i + 1]) * 32)


KEYS = tuple(_pair(i) for i in range(16))
ROOT = (0, 1, 2)
DIRECTORY = (3, 4, 5)
AUTHORITY = 6
NEW_ROOT = (7, 8, 9)
NEW_DIRECTORY = (10, 11, 12)
NEW_AUTHORITY = 13
GATEWAY = 14  # the gateway operator's key: never one of the directory's roles


def pairs(indexes: tuple[int, ...]) -> list[Ed25519KeyPair]:
    return [KEYS[i] for i in indexes]


def publics(indexes: tuple[int, ...]) -> list[bytes]:
    return [KEYS[i].public for i in indexes]


def _entry(pair: Ed25519KeyPair) -> DirectoryKey:
    return DirectoryKey(
        kid=pair.kid, use=pair.use, alg=pair.algorithm, public=pair.public, active_from=T0
    )


def contents(n: int) -> DirectoryContents:
    """A small valid directory whose policy names its version ``n``."""
    return DirectoryContents(
        covenant="ijmond",
        partners=(
            Partner(
                id="gemeente-velsen",
                name="Gemeente Velsen",
                oin="00000001234567890000",
                role=Role.MUNICIPALITY,
                keys=(_entry(_pair(100)),),
                coordinator=True,
            ),
        ),
        gateway=GatewayEntry(id="ketenpost-gateway", keys=(_entry(_pair(101)),)),
        policy=f"policy version {n}".encode(),
    )


def new_repo(now: int = T0, expiry: ExpiryPolicy | None = None) -> DirectoryRepository:
    return DirectoryRepository.create(
        root_keys=pairs(ROOT),
        directory_keys=pairs(DIRECTORY),
        authority_key=KEYS[AUTHORITY],
        contents=contents(1),
        now=now,
        expiry=expiry,
    )


# --- forgeries: metadata signed by whoever holds the given keys, nothing checked ----------


def _label(with_label: bool) -> dict[str, Any]:
    return {LABEL_FIELD: DIRECTORY_LABEL} if with_label else {}


def _to_bytes(md: Metadata[Any]) -> bytes:
    return md.to_bytes(JSONSerializer(compact=False))


def forge_targets(
    directory: bytes, *, version: int, signers: tuple[int, ...], expires: int = T0 + YEAR
) -> bytes:
    md = Metadata(
        Targets(
            version=version,
            expires=_dt(expires),
            targets={"directory.json": TargetFile.from_data("directory.json", directory)},
            unrecognized_fields=_label(True),
        )
    )
    for i in signers:
        md.sign(tuf_signer(KEYS[i]), append=True)
    return _to_bytes(md)


def forge_snapshot(
    targets: bytes,
    *,
    version: int,
    signer: int,
    expires: int = T0 + YEAR,
    targets_version: int | None = None,
) -> bytes:
    if targets_version is None:
        targets_version = Metadata[Targets].from_bytes(targets).signed.version
    md = Metadata(
        Snapshot(
            version=version,
            expires=_dt(expires),
            meta={"targets.json": MetaFile.from_data(targets_version, targets, ["sha256"])},
            unrecognized_fields=_label(True),
        )
    )
    md.sign(tuf_signer(KEYS[signer]))
    return _to_bytes(md)


def forge_timestamp(
    snapshot: bytes,
    *,
    version: int,
    signer: int,
    expires: int = T0 + YEAR,
    with_label: bool = True,
    snapshot_version: int | None = None,
) -> bytes:
    if snapshot_version is None:
        snapshot_version = Metadata[Snapshot].from_bytes(snapshot).signed.version
    md = Metadata(
        Timestamp(
            version=version,
            expires=_dt(expires),
            snapshot_meta=MetaFile.from_data(snapshot_version, snapshot, ["sha256"]),
            unrecognized_fields=_label(with_label),
        )
    )
    md.sign(tuf_signer(KEYS[signer]))
    return _to_bytes(md)


def _dt(unix: int) -> datetime:
    return datetime.fromtimestamp(unix, tz=UTC)


def with_forged_top(
    base: DirectoryBundle,
    *,
    targets: bytes,
    directory: bytes,
    version: int,
    authority: int = AUTHORITY,
) -> DirectoryBundle:
    """``base`` with new targets, and a snapshot and timestamp of ``version`` over them."""
    snapshot = forge_snapshot(targets, version=version, signer=authority)
    timestamp = forge_timestamp(snapshot, version=version, signer=authority)
    return msgspec.structs.replace(
        base, targets=targets, directory=directory, snapshot=snapshot, timestamp=timestamp
    )


def compact(data: bytes) -> bytes:
    """The same metadata, serialised differently: signatures still verify, hashes do not."""
    return json.dumps(json.loads(data), separators=(",", ":")).encode()


def refused(client: TrustedDirectory, bundle: DirectoryBundle, now: int) -> KeysReason:
    with pytest.raises(DirectoryError) as info:
        client.update(bundle, now)
    return info.value.reason


# --- happy path ------------------------------------------------------------------------------


def test_happy_path_and_next_version() -> None:
    repo = new_repo()
    client = TrustedDirectory(repo.initial_root())

    directory = client.update(repo.bundle(), T0 + HOUR)

    assert directory.version == 1
    assert directory.policy_hash == contents(1).policy_hash
    assert directory.partner("gemeente-velsen").coordinator
    assert client.expiry.timestamp == T0 + DAY
    assert client.expiry.targets == T0 + 90 * DAY
    assert client.expiry.root == T0 + YEAR
    assert client.expiry.earliest == T0 + DAY
    assert repo.expiry() == client.expiry

    repo.publish(contents(2), pairs(DIRECTORY), KEYS[AUTHORITY], T0 + 2 * HOUR)
    directory = client.update(repo.bundle(), T0 + 3 * HOUR)
    assert directory.version == 2
    assert directory.policy == b"policy version 2"
    # Fetching the same bundle again is not a rollback.
    assert client.update(repo.bundle(), T0 + 4 * HOUR).version == 2


# --- rollback --------------------------------------------------------------------------------


@dataclass(frozen=True)
class History:
    """Version 1 under root v1; then root v2 (same keys), version 2, a snapshot refresh and a
    timestamp refresh. ``earlier_*`` are what those refreshes replaced: the earlier snapshot
    lists the same targets version as the current one."""

    repo: DirectoryRepository
    v1: DirectoryBundle
    v2: DirectoryBundle
    earlier_snapshot: bytes
    earlier_timestamp: bytes


def _history() -> History:
    repo = new_repo()
    v1 = repo.bundle()
    repo.rotate_root(
        old_root_keys=pairs(ROOT),
        new_root_keys=pairs(ROOT),
        directory_keys=publics(DIRECTORY),
        authority_key=KEYS[AUTHORITY].public,
        now=T0 + HOUR,
    )
    repo.publish(contents(2), pairs(DIRECTORY), KEYS[AUTHORITY], T0 + HOUR)
    earlier_snapshot = repo.bundle().snapshot
    repo.refresh_snapshot(KEYS[AUTHORITY], T0 + 80 * 60)
    earlier_timestamp = repo.bundle().timestamp
    repo.refresh_timestamp(KEYS[AUTHORITY], T0 + 90 * 60)
    return History(repo, v1, repo.bundle(), earlier_snapshot, earlier_timestamp)


def _snapshot_names_older_targets(h: History) -> DirectoryBundle:
    # A compromised key authority re-signs snapshot and timestamp over the old targets.
    return with_forged_top(h.v2, targets=h.v1.targets, directory=h.v1.directory, version=9)


def _timestamp_names_older_snapshot(h: History) -> DirectoryBundle:
    # A compromised key authority points a new timestamp at an earlier snapshot (which lists
    # the current targets, so only the snapshot's own version gives it away).
    timestamp = forge_timestamp(h.earlier_snapshot, version=9, signer=AUTHORITY)
    return msgspec.structs.replace(h.v2, timestamp=timestamp, snapshot=h.earlier_snapshot)


ROLLBACK_CASES: dict[str, Callable[[History], DirectoryBundle]] = {
    "replayed older bundle": lambda h: msgspec.structs.replace(h.v1, roots=h.v2.roots),
    "older timestamp with current snapshot": lambda h: msgspec.structs.replace(
        h.v2, timestamp=h.v1.timestamp
    ),
    "earlier timestamp of the same snapshot": lambda h: msgspec.structs.replace(
        h.v2, timestamp=h.earlier_timestamp
    ),
    "timestamp names older snapshot": _timestamp_names_older_snapshot,
    "snapshot names older targets": _snapshot_names_older_targets,
    "bundle ends at an older root": lambda h: msgspec.structs.replace(h.v2, roots=h.v1.roots),
}


@pytest.mark.parametrize("make_bundle", ROLLBACK_CASES.values(), ids=ROLLBACK_CASES.keys())
def test_rollback_refused(make_bundle: Callable[[History], DirectoryBundle]) -> None:
    history = _history()
    client = TrustedDirectory(history.repo.initial_root())
    client.update(history.v2, T0 + 2 * HOUR)

    assert refused(client, make_bundle(history), T0 + 3 * HOUR) is KeysReason.DIRECTORY_ROLLBACK
    # The trusted state is unchanged and still accepts the current bundle.
    assert client.update(history.v2, T0 + 3 * HOUR).version == 2


# --- freeze: expiry at ``now`` ----------------------------------------------------------------

SHORT = ExpiryPolicy(root_s=30 * DAY, targets_s=10 * DAY, snapshot_s=20 * DAY, timestamp_s=DAY)


@dataclass(frozen=True)
class FreezeCase:
    expiry: ExpiryPolicy
    refresh_at: int | None  # the key authority refreshes the timestamp then
    now: int
    reason: KeysReason | None


FREEZE_CASES = {
    "fresh timestamp": FreezeCase(SHORT, None, T0 + DAY - 1, None),
    "timestamp stale at its expiry": FreezeCase(
        SHORT, None, T0 + DAY, KeysReason.DIRECTORY_TIMESTAMP_STALE
    ),
    "timestamp stale days later": FreezeCase(
        SHORT, None, T0 + 5 * DAY, KeysReason.DIRECTORY_TIMESTAMP_STALE
    ),
    "refreshed timestamp unfreezes": FreezeCase(SHORT, T0 + 5 * DAY, T0 + 5 * DAY + HOUR, None),
    "targets expired under a fresh timestamp": FreezeCase(
        SHORT, T0 + 10 * DAY, T0 + 10 * DAY + HOUR, KeysReason.DIRECTORY_EXPIRED
    ),
    "snapshot expired under a fresh timestamp": FreezeCase(
        ExpiryPolicy(snapshot_s=5 * DAY), T0 + 6 * DAY, T0 + 6 * DAY, KeysReason.DIRECTORY_EXPIRED
    ),
    "root expired under a fresh timestamp": FreezeCase(
        ExpiryPolicy(root_s=7 * DAY), T0 + 8 * DAY, T0 + 8 * DAY, KeysReason.DIRECTORY_EXPIRED
    ),
}


@pytest.mark.parametrize("case", FREEZE_CASES.values(), ids=FREEZE_CASES.keys())
def test_freeze(case: FreezeCase) -> None:
    repo = new_repo(expiry=case.expiry)
    if case.refresh_at is not None:
        repo.refresh_timestamp(KEYS[AUTHORITY], case.refresh_at)
    client = TrustedDirectory(repo.initial_root())

    if case.reason is None:
        assert client.update(repo.bundle(), case.now).version == 1
    else:
        assert refused(client, repo.bundle(), case.now) is case.reason


def test_cached_directory_goes_stale_without_updates() -> None:
    repo = new_repo()
    client = TrustedDirectory(repo.initial_root())
    client.update(repo.bundle(), T0)

    assert client.current(T0 + DAY - 1).version == 1
    with pytest.raises(DirectoryError) as info:
        client.current(T0 + DAY)
    assert info.value.reason is KeysReason.DIRECTORY_TIMESTAMP_STALE


def test_nothing_verified_yet_is_missing() -> None:
    client = TrustedDirectory(new_repo().initial_root())
    with pytest.raises(DirectoryError) as info:
        client.current(T0)
    assert info.value.reason is KeysReason.DIRECTORY_MISSING


# --- thresholds -------------------------------------------------------------------------------


def _targets_v2(signers: tuple[int, ...]) -> Callable[[DirectoryBundle], DirectoryBundle]:
    def make(base: DirectoryBundle) -> DirectoryBundle:
        targets, directory = draft_targets(contents(2), version=2, expires=T0 + YEAR)
        for i in signers:
            targets = sign_metadata(targets, KEYS[i])
        return with_forged_top(base, targets=targets, directory=directory, version=2)

    return make


def _corrupt_timestamp_signature(base: DirectoryBundle) -> DirectoryBundle:
    md = json.loads(base.timestamp)
    sig = md["signatures"][0]["sig"]
    md["signatures"][0]["sig"] = ("0" if sig[0] != "0" else "1") + sig[1:]
    return msgspec.structs.replace(base, timestamp=json.dumps(md).encode())


THRESHOLD_CASES: dict[str, Callable[[DirectoryBundle], DirectoryBundle]] = {
    "targets signed by 1 of 2 directory keys": _targets_v2((3,)),
    "targets signed by 2 root keys, not directory keys": _targets_v2((0, 1)),
    "targets signed by the key authority and one officer": _targets_v2((AUTHORITY, 3)),
    "snapshot signed by the gateway": lambda b: msgspec.structs.replace(
        b,
        snapshot=(s := forge_snapshot(b.targets, version=2, signer=GATEWAY)),
        timestamp=forge_timestamp(s, version=2, signer=AUTHORITY),
    ),
    "timestamp signed by the gateway": lambda b: msgspec.structs.replace(
        b, timestamp=forge_timestamp(b.snapshot, version=2, signer=GATEWAY)
    ),
    "timestamp signature corrupted": _corrupt_timestamp_signature,
}


@pytest.mark.parametrize("make_bundle", THRESHOLD_CASES.values(), ids=THRESHOLD_CASES.keys())
def test_threshold_not_met(make_bundle: Callable[[DirectoryBundle], DirectoryBundle]) -> None:
    repo = new_repo()
    client = TrustedDirectory(repo.initial_root())
    client.update(repo.bundle(), T0)

    assert refused(client, make_bundle(repo.bundle()), T0 + HOUR) is KeysReason.DIRECTORY_THRESHOLD
    assert client.current(T0 + HOUR).version == 1


def test_threshold_control_two_officers_accepted() -> None:
    # The positive twin of the table above: the same forgery with 2 of 3 officers verifies.
    repo = new_repo()
    client = TrustedDirectory(repo.initial_root())
    assert client.update(_targets_v2((3, 5))(repo.bundle()), T0 + HOUR).version == 2


def test_initial_root_below_threshold_refused() -> None:
    root = draft_root(
        version=1,
        root_keys=publics(ROOT),
        directory_keys=publics(DIRECTORY),
        authority_key=KEYS[AUTHORITY].public,
        expires=T0 + YEAR,
    )
    root = sign_metadata(root, KEYS[0])
    for build in (TrustedDirectory, DirectoryRepository):
        with pytest.raises(DirectoryError) as info:
            build(root)
        assert info.value.reason is KeysReason.DIRECTORY_THRESHOLD


def test_repository_refuses_to_publish_below_threshold() -> None:
    repo = new_repo()
    draft = repo.draft_targets(contents(2), T0 + HOUR)
    with pytest.raises(DirectoryError) as info:
        repo.publish_targets(sign_metadata(draft, KEYS[3]), contents(2), KEYS[AUTHORITY], T0)
    assert info.value.reason is KeysReason.DIRECTORY_THRESHOLD
    with pytest.raises(DirectoryError) as info:
        repo.refresh_timestamp(KEYS[GATEWAY], T0 + HOUR)
    assert info.value.reason is KeysReason.DIRECTORY_THRESHOLD
    assert repo.version == 1


# --- root rotation (python-tuf's table form) --------------------------------------------------


@dataclass(frozen=True)
class RootVersion:
    keys: tuple[int, ...]
    threshold: int
    sigs: tuple[int, ...]
    reason: KeysReason | None = None


BELOW = KeysReason.DIRECTORY_THRESHOLD

# fmt: off
ROOT_ROTATION_CASES: dict[str, list[RootVersion]] = {
    "all keys rotated, signed by old and new thresholds": [
        RootVersion(keys=(7, 8, 9), threshold=2, sigs=(0, 1, 7, 8)),
    ],
    "all keys rotated, signed by new keys only": [
        RootVersion(keys=(7, 8, 9), threshold=2, sigs=(7, 8, 9), reason=BELOW),
    ],
    "all keys rotated, signed by old keys only": [
        RootVersion(keys=(7, 8, 9), threshold=2, sigs=(0, 1, 2), reason=BELOW),
    ],
    "one old and two new signatures": [
        RootVersion(keys=(7, 8, 9), threshold=2, sigs=(0, 7, 8), reason=BELOW),
    ],
    "one key replaced, two signatures count for both": [
        RootVersion(keys=(0, 1, 7), threshold=2, sigs=(0, 1)),
    ],
    "threshold raised to 3, new threshold not met": [
        RootVersion(keys=(0, 1, 2), threshold=3, sigs=(0, 1), reason=BELOW),
    ],
    "threshold lowered to 1, old threshold not met": [
        RootVersion(keys=(0, 1, 2), threshold=1, sigs=(0,), reason=BELOW),
    ],
    "two rotations walked one at a time": [
        RootVersion(keys=(7, 8, 9), threshold=2, sigs=(0, 1, 7, 8)),
        RootVersion(keys=(10, 11, 12), threshold=2, sigs=(7, 9, 10, 12)),
    ],
    "second rotation signed by the first root's keys": [
        RootVersion(keys=(7, 8, 9), threshold=2, sigs=(0, 1, 7, 8)),
        RootVersion(keys=(10, 11, 12), threshold=2, sigs=(0, 1, 10, 11), reason=BELOW),
    ],
}
# fmt: on


def _signed_root(version: int, spec: RootVersion) -> bytes:
    root = draft_root(
        version=version,
        root_keys=publics(spec.keys),
        directory_keys=publics(DIRECTORY),
        authority_key=KEYS[AUTHORITY].public,
        expires=T0 + YEAR,
        root_threshold=spec.threshold,
    )
    for i in spec.sigs:
        root = sign_metadata(root, KEYS[i])
    return root


@pytest.mark.parametrize("versions", ROOT_ROTATION_CASES.values(), ids=ROOT_ROTATION_CASES.keys())
def test_root_rotation(versions: list[RootVersion]) -> None:
    repo = new_repo()
    roots = [_signed_root(2 + n, spec) for n, spec in enumerate(versions)]
    bundle = msgspec.structs.replace(repo.bundle(), roots=(repo.initial_root(), *roots))
    client = TrustedDirectory(repo.initial_root())
    expected = versions[-1].reason

    if expected is None:
        assert client.update(bundle, T0 + HOUR).version == 1
        assert client.root_version == 1 + len(versions)
    else:
        assert refused(client, bundle, T0 + HOUR) is expected
        # Roots before the bad one verified and stay trusted (TUF 5.3.9).
        assert client.root_version == len(versions)

    # The authoring side refuses to publish what clients would refuse.
    for root, spec in zip(roots, versions, strict=True):
        if spec.reason is None:
            repo.publish_root(root)
        else:
            with pytest.raises(DirectoryError) as info:
                repo.publish_root(root)
            assert info.value.reason is spec.reason


def test_root_chain_with_a_gap_refused() -> None:
    repo = new_repo()
    v3 = _signed_root(3, RootVersion(keys=(0, 1, 2), threshold=2, sigs=(0, 1)))
    bundle = msgspec.structs.replace(repo.bundle(), roots=(repo.initial_root(), v3))
    assert (
        refused(TrustedDirectory(repo.initial_root()), bundle, T0) is KeysReason.DIRECTORY_MALFORMED
    )


def _rotated_to_new_keys() -> tuple[DirectoryRepository, TrustedDirectory]:
    repo = new_repo()
    client = TrustedDirectory(repo.initial_root())
    client.update(repo.bundle(), T0)
    repo.rotate_root(
        old_root_keys=pairs(ROOT),
        new_root_keys=pairs(NEW_ROOT),
        directory_keys=publics(NEW_DIRECTORY),
        authority_key=KEYS[NEW_AUTHORITY].public,
        now=T0 + DAY,
    )
    repo.publish(contents(2), pairs(NEW_DIRECTORY), KEYS[NEW_AUTHORITY], T0 + DAY)
    return repo, client


def test_rotation_to_new_directory_and_authority_keys() -> None:
    repo, client = _rotated_to_new_keys()

    directory = client.update(repo.bundle(), T0 + DAY + HOUR)

    assert directory.version == 2
    assert client.root_version == 2
    # The new keys keep working for the next version and timestamp.
    repo.publish(contents(3), pairs(NEW_DIRECTORY[1:]), KEYS[NEW_AUTHORITY], T0 + 2 * DAY)
    repo.refresh_timestamp(KEYS[NEW_AUTHORITY], T0 + 3 * DAY)
    assert client.update(repo.bundle(), T0 + 3 * DAY).version == 3


OLD_KEY_CASES: dict[str, Callable[[DirectoryBundle], DirectoryBundle]] = {
    "old directory keys sign a new version": lambda b: with_forged_top(
        b,
        targets=forge_targets(encode_contents(contents(9)), version=3, signers=DIRECTORY),
        directory=encode_contents(contents(9)),
        version=3,
        authority=NEW_AUTHORITY,
    ),
    "old authority key signs a timestamp": lambda b: msgspec.structs.replace(
        b, timestamp=forge_timestamp(b.snapshot, version=3, signer=AUTHORITY)
    ),
}


@pytest.mark.parametrize("make_bundle", OLD_KEY_CASES.values(), ids=OLD_KEY_CASES.keys())
def test_rotated_out_keys_no_longer_count(
    make_bundle: Callable[[DirectoryBundle], DirectoryBundle],
) -> None:
    repo, client = _rotated_to_new_keys()
    client.update(repo.bundle(), T0 + DAY + HOUR)

    assert (
        refused(client, make_bundle(repo.bundle()), T0 + DAY + HOUR)
        is KeysReason.DIRECTORY_THRESHOLD
    )
    with pytest.raises(DirectoryError) as info:
        repo.publish(contents(3), pairs(DIRECTORY), KEYS[NEW_AUTHORITY], T0 + DAY + HOUR)
    assert info.value.reason is KeysReason.DIRECTORY_THRESHOLD


def _fast_forward_timestamp(repo: DirectoryRepository) -> DirectoryBundle:
    b = repo.bundle()
    return msgspec.structs.replace(
        b, timestamp=forge_timestamp(b.snapshot, version=1000, signer=AUTHORITY)
    )


def _fast_forward_targets(repo: DirectoryRepository) -> DirectoryBundle:
    directory = encode_contents(contents(9))
    targets = forge_targets(directory, version=1000, signers=(3, 4))
    return with_forged_top(repo.bundle(), targets=targets, directory=directory, version=1000)


def _recover_authority(repo: DirectoryRepository) -> None:
    repo.rotate_root(
        old_root_keys=pairs(ROOT),
        new_root_keys=pairs(ROOT),
        directory_keys=publics(DIRECTORY),
        authority_key=KEYS[NEW_AUTHORITY].public,
        now=T0 + DAY,
    )
    repo.refresh_snapshot(KEYS[NEW_AUTHORITY], T0 + DAY)


def _recover_directory_and_authority(repo: DirectoryRepository) -> None:
    repo.rotate_root(
        old_root_keys=pairs(ROOT),
        new_root_keys=pairs(ROOT),
        directory_keys=publics(NEW_DIRECTORY),
        authority_key=KEYS[NEW_AUTHORITY].public,
        now=T0 + DAY,
    )
    repo.publish(contents(2), pairs(NEW_DIRECTORY), KEYS[NEW_AUTHORITY], T0 + DAY)


FAST_FORWARD_CASES = {
    "timestamp inflated by the old authority key": (_fast_forward_timestamp, _recover_authority),
    "targets inflated by old directory keys": (
        _fast_forward_targets,
        _recover_directory_and_authority,
    ),
}


@pytest.mark.parametrize(
    ("attack", "recover"), FAST_FORWARD_CASES.values(), ids=FAST_FORWARD_CASES.keys()
)
def test_key_rotation_recovers_from_fast_forward(
    attack: Callable[[DirectoryRepository], DirectoryBundle],
    recover: Callable[[DirectoryRepository], None],
) -> None:
    # Compromised keys sign version 1000; clients accept it, and would refuse every honest
    # version after it. Rotating those keys away resets their rollback floor (TUF 5.3.11).
    repo = new_repo()
    client = TrustedDirectory(repo.initial_root())
    client.update(attack(repo), T0 + HOUR)

    recover(repo)

    client.update(repo.bundle(), T0 + DAY + HOUR)
    assert client.root_version == 2
    assert client.floors.timestamp < 1000
    assert client.floors.targets < 1000


def test_directory_signed_by_rotated_out_keys_is_forgotten() -> None:
    repo = new_repo()
    client = TrustedDirectory(repo.initial_root())
    client.update(repo.bundle(), T0)
    repo.rotate_root(
        old_root_keys=pairs(ROOT),
        new_root_keys=pairs(ROOT),
        directory_keys=publics(DIRECTORY),
        authority_key=KEYS[NEW_AUTHORITY].public,
        now=T0 + HOUR,
    )

    # The new root verifies and is kept; the timestamp, still by the old key, is refused, and
    # what the old key vouched for is no longer served from the cache.
    assert refused(client, repo.bundle(), T0 + HOUR) is KeysReason.DIRECTORY_THRESHOLD
    assert client.root_version == 2
    with pytest.raises(DirectoryError) as info:
        client.current(T0 + HOUR)
    assert info.value.reason is KeysReason.DIRECTORY_MISSING


# --- hashes, lengths and versions between roles -----------------------------------------------


def _equivocating_targets(b: DirectoryBundle) -> DirectoryBundle:
    # A compromised threshold of officers signs a second, different version 1.
    directory = encode_contents(contents(9))
    targets = forge_targets(directory, version=1, signers=(3, 4))
    return with_forged_top(b, targets=targets, directory=directory, version=2)


MISMATCH_CASES: dict[str, Callable[[DirectoryBundle], DirectoryBundle]] = {
    "directory.json replaced": lambda b: msgspec.structs.replace(
        b, directory=encode_contents(contents(2))
    ),
    "directory.json truncated": lambda b: msgspec.structs.replace(b, directory=b.directory[:-1]),
    "targets.json re-serialised after the snapshot": lambda b: msgspec.structs.replace(
        b, targets=compact(b.targets)
    ),
    "snapshot.json re-serialised after the timestamp": lambda b: msgspec.structs.replace(
        b, snapshot=compact(b.snapshot)
    ),
    "snapshot names another targets version": lambda b: msgspec.structs.replace(
        b,
        snapshot=(s := forge_snapshot(b.targets, version=2, signer=AUTHORITY, targets_version=2)),
        timestamp=forge_timestamp(s, version=2, signer=AUTHORITY),
    ),
    "timestamp names another snapshot version": lambda b: msgspec.structs.replace(
        b, timestamp=forge_timestamp(b.snapshot, version=2, signer=AUTHORITY, snapshot_version=2)
    ),
    "same targets version with other contents": _equivocating_targets,
}


@pytest.mark.parametrize("make_bundle", MISMATCH_CASES.values(), ids=MISMATCH_CASES.keys())
def test_mismatch_between_roles(make_bundle: Callable[[DirectoryBundle], DirectoryBundle]) -> None:
    repo = new_repo()
    client = TrustedDirectory(repo.initial_root())
    client.update(repo.bundle(), T0)

    assert refused(client, make_bundle(repo.bundle()), T0 + HOUR) is KeysReason.DIRECTORY_MISMATCH


# --- malformed input --------------------------------------------------------------------------


def _root_with_one_key_under_two_ids(b: DirectoryBundle) -> DirectoryBundle:
    # python-tuf counts signatures per key id. If one key could appear under a second id, its
    # holder alone would meet a threshold of 2.
    key = KEYS[0]
    own = tuf_signer(key).public_key
    alias = SSlibKey("ab" * 32, own.keytype, own.scheme, dict(own.keyval))
    root = Metadata[Root].from_bytes(b.roots[0]).signed
    root.version = 2
    root.roles["root"].keyids = [own.keyid, alias.keyid]
    root.keys = {k: v for k, v in root.keys.items() if k in root.roles["targets"].keyids}
    root.keys.update({own.keyid: own, alias.keyid: alias})
    authority = tuf_signer(KEYS[AUTHORITY]).public_key
    root.keys[authority.keyid] = authority
    md = Metadata(root)
    md.sign(tuf_signer(KEYS[1]), append=True)
    md.sign(tuf_signer(key), append=True)
    private = Ed25519PrivateKey.from_private_bytes(key.secret_bytes())
    md.sign(CryptoSigner(private, alias), append=True)
    return msgspec.structs.replace(b, roots=(b.roots[0], _to_bytes(md)))


def _directory_not_a_directory(b: DirectoryBundle) -> DirectoryBundle:
    directory = b'{"covenant": 1}'
    targets = forge_targets(directory, version=2, signers=(3, 4))
    return with_forged_top(b, targets=targets, directory=directory, version=2)


MALFORMED_CASES: dict[str, Callable[[DirectoryBundle], DirectoryBundle]] = {
    "timestamp is not JSON": lambda b: msgspec.structs.replace(b, timestamp=b"not json"),
    "snapshot in the timestamp's place": lambda b: msgspec.structs.replace(b, timestamp=b.snapshot),
    "timestamp of another TUF repository (no label)": lambda b: msgspec.structs.replace(
        b, timestamp=forge_timestamp(b.snapshot, version=2, signer=AUTHORITY, with_label=False)
    ),
    "root lists one key under two ids": _root_with_one_key_under_two_ids,
    "directory.json is not a directory": _directory_not_a_directory,
    "no roots": lambda b: msgspec.structs.replace(b, roots=()),
}


@pytest.mark.parametrize("make_bundle", MALFORMED_CASES.values(), ids=MALFORMED_CASES.keys())
def test_malformed(make_bundle: Callable[[DirectoryBundle], DirectoryBundle]) -> None:
    repo = new_repo()
    client = TrustedDirectory(repo.initial_root())

    assert refused(client, make_bundle(repo.bundle()), T0) is KeysReason.DIRECTORY_MALFORMED


@pytest.fixture(scope="module")
def base_bundle() -> tuple[bytes, DirectoryBundle]:
    repo = new_repo()
    return repo.initial_root(), repo.bundle()


FIELDS = ("roots", "timestamp", "snapshot", "targets", "directory")


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(field=st.sampled_from(FIELDS), where=st.integers(min_value=0), delta=st.integers(1, 255))
def test_any_byte_change_is_refused_or_harmless(
    base_bundle: tuple[bytes, DirectoryBundle], field: str, where: int, delta: int
) -> None:
    root, bundle = base_bundle
    original = bundle.roots[0] if field == "roots" else getattr(bundle, field)
    data = bytearray(original)
    data[where % len(data)] = (data[where % len(data)] + delta) % 256
    changed = bytes(data)
    value: Any = (changed,) if field == "roots" else changed
    client = TrustedDirectory(root)
    try:
        directory = client.update(msgspec.structs.replace(bundle, **{field: value}), T0)
    except DirectoryError:
        return  # refused with our error, never a foreign one
    # Accepted only where the change cannot matter (JSON whitespace, an already trusted root).
    assert directory.contents == contents(1)


# --- persisted trusted state ------------------------------------------------------------------


def test_saved_state_still_refuses_rollback(tmp_path: Path) -> None:
    history = _history()
    client = TrustedDirectory(history.repo.initial_root())
    client.update(history.v2, T0 + 2 * HOUR)
    client.save(tmp_path)

    reloaded = TrustedDirectory.load(tmp_path)

    assert reloaded.root_version == 2
    assert reloaded.current(T0 + 2 * HOUR).version == 2
    replayed = msgspec.structs.replace(history.v1, roots=history.v2.roots)
    assert refused(reloaded, replayed, T0 + 3 * HOUR) is KeysReason.DIRECTORY_ROLLBACK
    older_root = msgspec.structs.replace(history.v2, roots=history.v1.roots)
    assert refused(reloaded, older_root, T0 + 3 * HOUR) is KeysReason.DIRECTORY_ROLLBACK
    assert reloaded.update(history.v2, T0 + 3 * HOUR).version == 2


def test_client_starts_from_trusted_root_file(tmp_path: Path) -> None:
    repo = new_repo()
    write_trusted_root(tmp_path, repo.initial_root())

    client = TrustedDirectory.load(tmp_path)

    assert client.update(repo.bundle(), T0).version == 1
    with pytest.raises(DirectoryError) as info:
        write_trusted_root(tmp_path, repo.initial_root())
    assert info.value.reason is KeysReason.KEY_FILE_EXISTS


def test_tampered_saved_state_refused(tmp_path: Path) -> None:
    repo = new_repo()
    client = TrustedDirectory(repo.initial_root())
    client.update(repo.bundle(), T0)
    client.save(tmp_path)
    state = json.loads((tmp_path / TRUSTED_STATE_FILE).read_bytes())
    state["directory"] = msgspec.json.encode(encode_contents(contents(2))).decode().strip('"')
    (tmp_path / TRUSTED_STATE_FILE).write_text(json.dumps(state))

    with pytest.raises(DirectoryError) as info:
        TrustedDirectory.load(tmp_path)
    assert info.value.reason is KeysReason.DIRECTORY_MISMATCH


def test_load_without_any_state_is_missing(tmp_path: Path) -> None:
    with pytest.raises(DirectoryError) as info:
        TrustedDirectory.load(tmp_path)
    assert info.value.reason is KeysReason.DIRECTORY_MISSING


# --- bundles on disk and on the wire -----------------------------------------------------------


def test_bundle_round_trips_through_folder_and_json(tmp_path: Path) -> None:
    bundle = _history().v2
    write_bundle(bundle, tmp_path)

    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "1.root.json",
        "2.root.json",
        "directory.json",
        "snapshot.json",
        "targets.json",
        "timestamp.json",
    ]
    assert read_bundle(tmp_path) == bundle
    assert decode_bundle(encode_bundle(bundle)) == bundle
    client = TrustedDirectory(bundle.roots[0])
    assert client.update(read_bundle(tmp_path), T0 + 2 * HOUR).version == 2


BROKEN_FOLDER_CASES: dict[str, tuple[str, KeysReason]] = {
    "root version gap": ("2.root.json", KeysReason.DIRECTORY_MALFORMED),
    "no timestamp": ("timestamp.json", KeysReason.DIRECTORY_MISSING),
    "no directory": ("directory.json", KeysReason.DIRECTORY_MISSING),
}


@pytest.mark.parametrize(
    ("missing", "reason"), BROKEN_FOLDER_CASES.values(), ids=BROKEN_FOLDER_CASES.keys()
)
def test_broken_bundle_folder(tmp_path: Path, missing: str, reason: KeysReason) -> None:
    history = _history()
    history.repo.rotate_root(
        old_root_keys=pairs(ROOT),
        new_root_keys=pairs(ROOT),
        directory_keys=publics(DIRECTORY),
        authority_key=KEYS[AUTHORITY].public,
        now=T0 + HOUR,
    )
    write_bundle(history.repo.bundle(), tmp_path)
    (tmp_path / missing).unlink()

    with pytest.raises(DirectoryError) as info:
        read_bundle(tmp_path)
    assert info.value.reason is reason


def test_decode_bundle_garbage_is_malformed() -> None:
    with pytest.raises(DirectoryError) as info:
        decode_bundle(b'{"roots": 1}')
    assert info.value.reason is KeysReason.DIRECTORY_MALFORMED


def test_repository_resumes_from_its_bundle() -> None:
    history = _history()
    repo = DirectoryRepository.from_bundle(history.v2)
    repo.refresh_timestamp(KEYS[AUTHORITY], T0 + 2 * DAY)

    client = TrustedDirectory(history.v2.roots[0])
    assert client.update(repo.bundle(), T0 + 2 * DAY).version == 2


# --- offline signing, one signature at a time --------------------------------------------------


def test_offline_targets_signing_one_key_at_a_time() -> None:
    repo = new_repo()
    draft = repo.draft_targets(contents(2), T0 + HOUR)

    status = repo.signing_status(draft)
    assert (status.role, status.version, status.complete) == ("targets", 2, False)
    assert status.thresholds[0].missing == 2

    one = sign_metadata(draft, KEYS[3])
    assert repo.signing_status(one).thresholds[0].missing == 1
    with pytest.raises(DirectoryError):
        repo.publish_targets(one, contents(2), KEYS[AUTHORITY], T0 + HOUR)

    two = sign_metadata(one, KEYS[5])
    assert repo.signing_status(two).complete
    repo.publish_targets(two, contents(2), KEYS[AUTHORITY], T0 + HOUR)

    client = TrustedDirectory(repo.initial_root())
    assert client.update(repo.bundle(), T0 + HOUR).version == 2


def test_offline_root_signing_reports_old_and_new_thresholds() -> None:
    repo = new_repo()
    draft = repo.draft_root(
        root_keys=publics(NEW_ROOT),
        directory_keys=publics(DIRECTORY),
        authority_key=KEYS[AUTHORITY].public,
        now=T0,
    )
    signed = sign_metadata(sign_metadata(draft, KEYS[0]), KEYS[2])

    status = signing_status(signed, repo.root())
    assert [(t.by, t.missing) for t in status.thresholds] == [("root v1", 0), ("root v2", 2)]
    assert not status.complete

    for i in (7, 9):
        signed = sign_metadata(signed, KEYS[i])
    assert repo.signing_status(signed).complete
    repo.publish_root(signed)
    assert repo.root_version == 2
