"""Errors of the adapter SDK: one base, ``AdapterError``; adapter bases wrap foreign
exceptions into it (house rule 3)."""

from __future__ import annotations


class AdapterError(Exception):
    """Base of every error raised by ``adapters``."""


class AdapterConfigError(AdapterError):
    """``adapter.toml`` is missing or invalid; the message is one line naming the problem."""
