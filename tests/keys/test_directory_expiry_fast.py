"""``TrustedDirectory.current``'s fast path (issue 3): before the earliest expiry of the four
roles it answers without the four ``datetime`` checks; from that second on the full check runs
and gives the reason it always gave. Tables of named cases, time passed in, no sleeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

import keys.signed_directory
from keys.errors import DirectoryError, KeysReason
from keys.signed_directory import ExpiryPolicy, TrustedDirectory
from tests.keys.test_signed_directory import AUTHORITY, DAY, HOUR, KEYS, T0, contents, new_repo

LONG = 40 * DAY


@dataclass(frozen=True)
class ExpiryCase:
    expiry: ExpiryPolicy
    expires_at: int  # the first second at which ``current`` refuses
    reason: KeysReason


EXPIRY_CASES = {
    "timestamp first": ExpiryCase(
        ExpiryPolicy(root_s=LONG, targets_s=LONG, snapshot_s=LONG, timestamp_s=DAY),
        T0 + DAY,
        KeysReason.DIRECTORY_TIMESTAMP_STALE,
    ),
    "targets first": ExpiryCase(
        ExpiryPolicy(root_s=LONG, targets_s=5 * DAY, snapshot_s=LONG, timestamp_s=LONG),
        T0 + 5 * DAY,
        KeysReason.DIRECTORY_EXPIRED,
    ),
    "snapshot first": ExpiryCase(
        ExpiryPolicy(root_s=LONG, targets_s=LONG, snapshot_s=5 * DAY, timestamp_s=LONG),
        T0 + 5 * DAY,
        KeysReason.DIRECTORY_EXPIRED,
    ),
    "root first": ExpiryCase(
        ExpiryPolicy(root_s=5 * DAY, targets_s=LONG, snapshot_s=LONG, timestamp_s=LONG),
        T0 + 5 * DAY,
        KeysReason.DIRECTORY_EXPIRED,
    ),
    "root and timestamp in the same second: root's reason": ExpiryCase(
        ExpiryPolicy(root_s=5 * DAY, targets_s=LONG, snapshot_s=LONG, timestamp_s=5 * DAY),
        T0 + 5 * DAY,
        KeysReason.DIRECTORY_EXPIRED,
    ),
    "timestamp and targets in the same second: the timestamp's reason": ExpiryCase(
        ExpiryPolicy(root_s=LONG, targets_s=5 * DAY, snapshot_s=LONG, timestamp_s=5 * DAY),
        T0 + 5 * DAY,
        KeysReason.DIRECTORY_TIMESTAMP_STALE,
    ),
}


@pytest.fixture
def full_checks(monkeypatch: pytest.MonkeyPatch) -> list[KeysReason]:
    """Counts the per-role checks (``_check_expired``) the client runs."""
    real = keys.signed_directory._check_expired
    seen: list[KeysReason] = []

    def counting(signed: object, now: int | None, reason: KeysReason) -> None:
        seen.append(reason)
        real(signed, now, reason)  # type: ignore[arg-type]

    monkeypatch.setattr(keys.signed_directory, "_check_expired", counting)
    return seen


def _reason(client: TrustedDirectory, now: int) -> KeysReason | None:
    try:
        client.current(now)
    except DirectoryError as exc:
        return exc.reason
    return None


@pytest.mark.parametrize("case", EXPIRY_CASES.values(), ids=EXPIRY_CASES.keys())
@pytest.mark.parametrize("warm", [True, False], ids=["after fast answers", "first call"])
def test_reason_at_each_roles_expiry(case: ExpiryCase, warm: bool) -> None:
    repo = new_repo(expiry=case.expiry)
    client = TrustedDirectory(repo.initial_root())
    client.update(repo.bundle(), T0)
    if warm:
        for now in (T0, T0 + HOUR, case.expires_at - 1):
            assert _reason(client, now) is None

    assert _reason(client, case.expires_at - 1) is None
    assert _reason(client, case.expires_at) is case.reason
    assert _reason(client, case.expires_at + DAY) is case.reason
    # An earlier ``now`` (a clock stepped back) is answered as before the change, too.
    assert _reason(client, case.expires_at - 1) is None


def test_fast_path_skips_the_role_checks(full_checks: list[KeysReason]) -> None:
    repo = new_repo()
    client = TrustedDirectory(repo.initial_root())
    client.update(repo.bundle(), T0)
    full_checks.clear()

    client.current(T0)
    assert len(full_checks) == 4  # the first call checks in full
    for now in (T0, T0 + 1, T0 + DAY - 1):
        assert client.current(now).version == 1
    assert len(full_checks) == 4  # the fast path answered these

    with pytest.raises(DirectoryError):
        client.current(T0 + DAY)
    assert len(full_checks) > 4


def test_a_new_top_level_is_checked_in_full_once(full_checks: list[KeysReason]) -> None:
    repo = new_repo()
    client = TrustedDirectory(repo.initial_root())
    client.update(repo.bundle(), T0)
    client.current(T0)

    repo.publish(contents(2), [KEYS[i] for i in (3, 4)], KEYS[AUTHORITY], T0 + HOUR)
    client.update(repo.bundle(), T0 + HOUR)
    full_checks.clear()
    assert client.current(T0 + HOUR).version == 2
    assert len(full_checks) == 4
    assert client.current(T0 + HOUR + 1).version == 2
    assert len(full_checks) == 4


def test_refreshed_timestamp_moves_the_earliest_expiry() -> None:
    repo = new_repo()
    client = TrustedDirectory(repo.initial_root())
    client.update(repo.bundle(), T0)
    assert _reason(client, T0 + DAY - 1) is None

    repo.refresh_timestamp(KEYS[AUTHORITY], T0 + DAY - 1)
    client.update(repo.bundle(), T0 + DAY - 1)
    assert _reason(client, T0 + DAY) is None
    assert _reason(client, T0 + 2 * DAY - 2) is None
    assert _reason(client, T0 + 2 * DAY - 1) is KeysReason.DIRECTORY_TIMESTAMP_STALE


def test_loaded_state_is_checked_in_full(tmp_path: Path) -> None:
    folder = tmp_path
    repo = new_repo()
    client = TrustedDirectory(repo.initial_root())
    client.update(repo.bundle(), T0)
    client.current(T0)
    client.save(folder)

    reloaded = TrustedDirectory.load(folder)
    assert _reason(reloaded, T0 + DAY) is KeysReason.DIRECTORY_TIMESTAMP_STALE
    assert _reason(reloaded, T0 + DAY - 1) is None
