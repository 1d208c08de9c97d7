"""Key state derived from the directory's times (DESIGN.md "Identities and keys")."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from keys import KeysReason, KeyState, KeyStateError, check_signature_time, check_usable, key_state

ACTIVE_FROM = 1_000
RETIRE_AT = 2_000
REVOKED_AT = 3_000


@dataclass(frozen=True)
class Times:
    active_from: int = ACTIVE_FROM
    retire_at: int | None = None
    revoked_at: int | None = None
    compromised_since: int | None = None


STATE_CASES = [
    pytest.param(Times(), 999, KeyState.PENDING, id="before active_from: pending"),
    pytest.param(Times(), 1_000, KeyState.ACTIVE, id="at active_from: active"),
    pytest.param(
        Times(retire_at=RETIRE_AT), 1_500, KeyState.RETIRING, id="retire_at set: retiring"
    ),
    pytest.param(Times(retire_at=RETIRE_AT), 2_000, KeyState.RETIRED, id="at retire_at: retired"),
    pytest.param(Times(revoked_at=REVOKED_AT), 2_999, KeyState.ACTIVE, id="before revoked_at"),
    pytest.param(Times(revoked_at=REVOKED_AT), 3_000, KeyState.REVOKED, id="at revoked_at"),
    pytest.param(
        Times(retire_at=RETIRE_AT, revoked_at=1_500), 1_600, KeyState.REVOKED, id="revocation wins"
    ),
]


@pytest.mark.parametrize(("times", "now", "expected"), STATE_CASES)
def test_state_from_times(times: Times, now: int, expected: KeyState) -> None:
    assert key_state(times, now) is expected


USABLE_CASES = [
    pytest.param(Times(), 999, KeysReason.KEY_NOT_YET_ACTIVE, id="pending"),
    pytest.param(Times(), 1_000, None, id="active"),
    pytest.param(Times(retire_at=RETIRE_AT), 1_999, None, id="retiring is still valid"),
    pytest.param(Times(retire_at=RETIRE_AT), 2_000, KeysReason.KEY_RETIRED, id="retired"),
    pytest.param(Times(revoked_at=REVOKED_AT), 3_000, KeysReason.KEY_REVOKED, id="revoked"),
]


@pytest.mark.parametrize(("times", "at", "reason"), USABLE_CASES)
def test_usable(times: Times, at: int, reason: KeysReason | None) -> None:
    if reason is None:
        check_usable(times, at)
    else:
        with pytest.raises(KeyStateError) as caught:
            check_usable(times, at)
        assert caught.value.reason is reason


# A signature is judged at the gateway's audited accepted_at; the revocation at ``now``.
SIGNATURE_CASES = [
    pytest.param(Times(), 1_500, 9_000, None, id="active key, never revoked"),
    pytest.param(
        Times(retire_at=RETIRE_AT), 1_999, 9_000, None, id="accepted while retiring stands"
    ),
    pytest.param(
        Times(retire_at=RETIRE_AT), 2_000, 2_000, KeysReason.KEY_RETIRED, id="accepted retired"
    ),
    pytest.param(
        Times(revoked_at=REVOKED_AT, compromised_since=2_500),
        2_499,
        9_000,
        None,
        id="accepted before the compromise window stands",
    ),
    pytest.param(
        Times(revoked_at=REVOKED_AT, compromised_since=2_500),
        2_500,
        9_000,
        KeysReason.KEY_COMPROMISED,
        id="accepted inside the compromise window is void",
    ),
    pytest.param(
        Times(revoked_at=REVOKED_AT),
        1_500,
        9_000,
        KeysReason.KEY_COMPROMISED,
        id="unknown compromise time voids every signature",
    ),
    pytest.param(
        Times(revoked_at=REVOKED_AT),
        1_500,
        2_999,
        None,
        id="before the revocation takes effect it stands",
    ),
]


@pytest.mark.parametrize(("times", "accepted_at", "now", "reason"), SIGNATURE_CASES)
def test_signature_time(
    times: Times, accepted_at: int, now: int, reason: KeysReason | None
) -> None:
    if reason is None:
        check_signature_time(times, accepted_at, now)
    else:
        with pytest.raises(KeyStateError) as caught:
            check_signature_time(times, accepted_at, now)
        assert caught.value.reason is reason
