"""Store errors. The relay maps them to refusal reasons (``store_unavailable`` is transient)."""

from __future__ import annotations


class StoreError(Exception):
    """Base of store errors."""


class StoreUnavailableError(StoreError):
    """The store could not be reached or a commit failed; nothing of the operation persisted."""


class StoreVersionError(StoreError):
    """The store's schema is older than this gateway needs (run ``ketenpost store migrate``)."""


class DuplicateMessageError(StoreError):
    """The message id was already accepted with other bytes."""
