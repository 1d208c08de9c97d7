"""The adapter's view of the signed key directory, refreshed from the gateway.

Rules kept here:

* The directory is trusted only through ``keys.signed_directory.TrustedDirectory``: a bundle
  the gateway serves is verified (threshold signatures, versions never go back, the key
  authority's short-lived timestamp) before it is used. The gateway is only the courier.
* A refused bundle (rollback, freeze, bad signature) changes nothing: the last good directory
  stays in use, and the refusal is reported to the caller to alarm on.
* ``current(now)`` raises once the last good directory is past its timestamp expiry (a frozen
  gateway cannot keep a partner on an old directory unnoticed); the caller alarms and keeps
  refreshing.
* The trusted state is saved in the partner folder (``trusted-state.json`` beside
  ``root.json``) after each successful update, so a restart never goes back either.
* **Partners' own key revocations** (ADR 0011) are laid over the verified directory with
  ``keys.revocation.with_revocations`` — the gateway's own overlay function — so every check
  that uses keys (``current``) sees a self-revoked key as revoked. A statement is held only
  after ``keys.revocation.verify_revocation`` passed against this keeper's own verified
  directory with the statements already held laid over it (``adopt_revocations``; a key one
  statement revoked signs no further one, as at the gateway). Held statements are never
  dropped: no later directory and no gateway's silence undoes one (the caller keeps them in
  ``adapter.db`` and gives them back with ``hold_revocations`` after a restart).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from adapters.errors import AdapterError
from keys import Directory, DirectoryError, KeysError, KeyUse
from keys.errors import KeysReason
from keys.revocation import (
    KeyRevocation,
    RevocationError,
    statement_hash,
    verify_revocation,
    with_revocations,
)
from keys.signed_directory import DirectoryBundle, TrustedDirectory, decode_bundle, read_bundle
from keys.state import KeyState


class DirectoryUnavailableError(AdapterError):
    """No verified, unexpired directory is available; ``reason`` is the keys reason."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class RefusedRevocation:
    """A served statement that did not verify; ``reason`` is a stable code for logs and
    metrics (a ``RevocationRefusal`` value, or ``bad_signature``)."""

    statement: KeyRevocation
    statement_hash: str
    reason: str
    detail: str


@dataclass(frozen=True)
class RevocationIntake:
    """What ``adopt_revocations`` did with the statements a gateway served."""

    adopted: tuple[KeyRevocation, ...]
    refused: tuple[RefusedRevocation, ...]


class DirectoryKeeper:
    """Holds the trusted directory of one adapter, with the verified self-revocations."""

    def __init__(self, trust_folder: Path, bundle_folder: Path | None = None) -> None:
        self._folder = trust_folder
        try:
            self._trusted = TrustedDirectory.load(trust_folder)
        except DirectoryError as exc:
            raise DirectoryUnavailableError(f"{trust_folder}: {exc}", exc.reason.value) from None
        self._bundle_folder = bundle_folder
        self.last_error: str | None = None
        # Verified statements by ``statement_hash``, in the order they were adopted.
        self._revocations: dict[str, KeyRevocation] = {}
        # (verified directory, the overlay of it): ``with_revocations`` once per version.
        self._view: tuple[Directory, Directory] | None = None

    @property
    def version(self) -> int:
        return self._trusted.version

    def load_local(self, now: int) -> None:
        """Verify the bundle in the partner folder (``ketenpost init`` puts one there).

        A local bundle older than the trusted state (the adapter has refreshed since the
        folder was written; a restart after that must not fail) is simply not used. Any other
        refusal raises ``DirectoryUnavailableError`` as ``update`` does.
        """
        if self._bundle_folder is None:
            return
        try:
            bundle = read_bundle(self._bundle_folder)
        except DirectoryError as exc:
            self.last_error = str(exc)
            return
        try:
            self.update(bundle, now)
        except DirectoryUnavailableError as exc:
            if exc.reason != KeysReason.DIRECTORY_ROLLBACK.value:
                raise
            self.last_error = None

    def update(self, bundle: DirectoryBundle, now: int) -> Directory:
        """Verify ``bundle`` and make it current; raise ``DirectoryUnavailableError`` (and keep
        the last good directory) if it is refused."""
        try:
            directory = self._trusted.update(bundle, now)
        except DirectoryError as exc:
            self.last_error = f"{exc.reason.value}: {exc}"
            raise DirectoryUnavailableError(str(exc), exc.reason.value) from None
        self._trusted.save(self._folder)
        self.last_error = None
        return directory

    def update_from_bytes(self, data: bytes, now: int) -> Directory:
        try:
            bundle = decode_bundle(data)
        except DirectoryError as exc:
            self.last_error = f"{exc.reason.value}: {exc}"
            raise DirectoryUnavailableError(str(exc), exc.reason.value) from None
        return self.update(bundle, now)

    def current(self, now: int) -> Directory:
        """The last good directory if still fresh at ``now``, with the held self-revocations
        laid over it; ``DirectoryUnavailableError``."""
        try:
            verified = self._trusted.current(now)
        except DirectoryError as exc:
            raise DirectoryUnavailableError(str(exc), exc.reason.value) from None
        if not self._revocations:
            return verified
        if self._view is None or self._view[0] is not verified:
            self._view = (verified, with_revocations(verified, self._revocations.values()))
        return self._view[1]

    @property
    def revocations(self) -> tuple[KeyRevocation, ...]:
        """The verified self-revocation statements held, in the order they were adopted."""
        return tuple(self._revocations.values())

    def revoked_kids(self, partner_id: str) -> frozenset[str]:
        """Kids of ``partner_id`` that a held statement revokes (from any time on)."""
        return frozenset(s.kid for s in self._revocations.values() if s.partner == partner_id)

    def hold_revocations(self, statements: Iterable[KeyRevocation]) -> None:
        """Hold statements verified before (read back from ``adapter.db`` after a restart)."""
        for statement in statements:
            self._revocations.setdefault(statement_hash(statement), statement)
        self._view = None

    def adopt_revocations(self, served: Iterable[KeyRevocation], now: int) -> RevocationIntake:
        """Verify each statement not held yet, in the order served, against the fresh
        directory with the statements held (and adopted just before) laid over it, and hold
        those that verify. Raises ``DirectoryUnavailableError`` when no fresh directory is
        at hand (nothing is adopted then). A statement already held is not judged again."""
        adopted: list[KeyRevocation] = []
        refused: list[RefusedRevocation] = []
        for statement in served:
            digest = statement_hash(statement)
            if digest in self._revocations:
                continue
            try:
                verify_revocation(statement, self.current(now), now)
            except RevocationError as exc:
                refused.append(RefusedRevocation(statement, digest, exc.refusal.value, str(exc)))
                continue
            except KeysError as exc:  # BadSignatureError: opaque, as everywhere
                refused.append(RefusedRevocation(statement, digest, exc.reason.value, str(exc)))
                continue
            self._revocations[digest] = statement
            self._view = None
            adopted.append(statement)
        return RevocationIntake(tuple(adopted), tuple(refused))

    def expires_at(self) -> int | None:
        try:
            return self._trusted.expiry.earliest
        except DirectoryError:
            return None


_K = TypeVar("_K")
_USABLE = frozenset({KeyState.ACTIVE, KeyState.RETIRING})


def newest_active(
    pairs: Sequence[_K],
    directory: Directory,
    partner_id: str,
    use: KeyUse,
    now: int,
) -> _K | None:
    """Of ``pairs`` (own keys, oldest first, each with a ``kid``), the newest whose directory
    entry for ``partner_id`` and ``use`` is usable at ``now`` (``active``, or ``retiring``:
    a predecessor is still valid until its ``retire_at``); ``None`` if none is.

    "Use the newest, accept all listed" (MultiFernet): a successor is only signed with from
    its ``active_from`` on, when every verifier's directory lists it (it was published one
    refresh interval before), so nothing signed with it is refused as unknown.
    """
    try:
        partner = directory.partner(partner_id)
    except KeysError:  # unknown_partner: not (or no longer) in the directory
        return None
    active = {k.kid for k in partner.keys if k.use is use and k.state(now) in _USABLE}
    for pair in reversed(pairs):
        if getattr(pair, "kid", None) in active:
            return pair
    return None
