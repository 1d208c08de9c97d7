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
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from adapters.errors import AdapterError
from keys import Directory, DirectoryError, KeysError, KeyUse
from keys.signed_directory import DirectoryBundle, TrustedDirectory, decode_bundle, read_bundle
from keys.state import KeyState


class DirectoryUnavailableError(AdapterError):
    """No verified, unexpired directory is available; ``reason`` is the keys reason."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class DirectoryKeeper:
    """Holds the trusted directory of one adapter."""

    def __init__(self, trust_folder: Path, bundle_folder: Path | None = None) -> None:
        self._folder = trust_folder
        try:
            self._trusted = TrustedDirectory.load(trust_folder)
        except DirectoryError as exc:
            raise DirectoryUnavailableError(f"{trust_folder}: {exc}", exc.reason.value) from None
        self._bundle_folder = bundle_folder
        self.last_error: str | None = None

    @property
    def version(self) -> int:
        return self._trusted.version

    def load_local(self, now: int) -> None:
        """Verify the bundle in the partner folder (``ketenpost init`` puts one there)."""
        if self._bundle_folder is None:
            return
        try:
            bundle = read_bundle(self._bundle_folder)
        except DirectoryError as exc:
            self.last_error = str(exc)
            return
        self.update(bundle, now)

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
        """The last good directory if still fresh at ``now``; ``DirectoryUnavailableError``."""
        try:
            return self._trusted.current(now)
        except DirectoryError as exc:
            raise DirectoryUnavailableError(str(exc), exc.reason.value) from None

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
