"""Key state, derived from the times in the directory and never from a flag alone.

Rules kept here (DESIGN.md "Identities and keys"):

* A key is *pending* before ``active_from``, *active* from then, *retiring* once ``retire_at``
  is set and not yet reached (still valid for verifying and as an encryption recipient),
  *retired* from ``retire_at``, and *revoked* from ``revoked_at``.
* Signatures are judged at the gateway's audited ``accepted_at``, never at a sender-chosen time.
  A signature accepted at or after ``compromised_since`` is void; when a revoked key's
  compromise time is unknown, every signature it made is void, including those accepted before
  the revocation (their messages are purged if still queued).
* Every function takes the time as an argument (house rule 5). Times are integer Unix seconds.
"""

from __future__ import annotations

import enum
from typing import Protocol

from keys.errors import KeysReason, KeyStateError


class KeyTimes(Protocol):
    """The times of a directory key entry that its state is derived from."""

    @property
    def active_from(self) -> int: ...
    @property
    def retire_at(self) -> int | None: ...
    @property
    def revoked_at(self) -> int | None: ...
    @property
    def compromised_since(self) -> int | None: ...


class KeyState(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    RETIRING = "retiring"
    RETIRED = "retired"
    REVOKED = "revoked"


def key_state(key: KeyTimes, now: int) -> KeyState:
    """The state of ``key`` at ``now``. Revocation wins over every other state."""
    if key.revoked_at is not None and now >= key.revoked_at:
        return KeyState.REVOKED
    if now < key.active_from:
        return KeyState.PENDING
    if key.retire_at is not None:
        return KeyState.RETIRED if now >= key.retire_at else KeyState.RETIRING
    return KeyState.ACTIVE


def check_usable(key: KeyTimes, at: int) -> None:
    """Raise ``KeyStateError`` unless ``key`` may sign, verify or receive at time ``at``.

    Usable means active or retiring: a retiring key stays valid for verifying and as an
    encryption recipient until ``retire_at``.
    """
    state = key_state(key, at)
    if state is KeyState.PENDING:
        raise KeyStateError("key is not active yet", KeysReason.KEY_NOT_YET_ACTIVE)
    if state is KeyState.RETIRED:
        raise KeyStateError("key is retired", KeysReason.KEY_RETIRED)
    if state is KeyState.REVOKED:
        raise KeyStateError("key is revoked", KeysReason.KEY_REVOKED)


def check_signature_time(key: KeyTimes, accepted_at: int, now: int) -> None:
    """Raise ``KeyStateError`` unless a signature accepted at ``accepted_at`` still stands at
    ``now``.

    The key had to be usable at ``accepted_at``; and if by ``now`` the key has been revoked, the
    signature stands only when the compromise time is known and ``accepted_at`` precedes it.
    """
    check_usable(key, accepted_at)
    if key.revoked_at is not None and now >= key.revoked_at:
        if key.compromised_since is None:
            raise KeyStateError(
                "key was revoked with an unknown compromise time", KeysReason.KEY_COMPROMISED
            )
        if accepted_at >= key.compromised_since:
            raise KeyStateError(
                "signature falls in the key's compromise window", KeysReason.KEY_COMPROMISED
            )
