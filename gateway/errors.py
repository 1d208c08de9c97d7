"""Errors of the relay service (``gateway``, apart from ``gateway.protocol``).

Rules kept here (house rule 3):

* One base exception, ``GatewayError``; every specific failure is a subclass that carries a
  machine-readable ``reason`` from ``GatewayReason``, so the command line, the server and the
  tests act on the reason and never parse a message.
* ``str(error)`` is one line for a person. It never contains a secret: a configuration error
  names the key and the problem, and shows a rejected value only when that key is not secret.
* Refusals of the relay decision are not exceptions of this module: their reason codes are
  part of the wire protocol and live in ``gateway.protocol``.
"""

from __future__ import annotations

import enum


class GatewayReason(enum.StrEnum):
    """Machine-readable reasons for ``GatewayError``. Values are stable: they appear in logs."""

    # The configuration file could not be read or is not TOML.
    CONFIG_UNREADABLE = "config_unreadable"
    # A key is unknown, missing, of the wrong type or out of range, or names a missing file.
    CONFIG_INVALID = "config_invalid"
    # ``write_default_config`` found a file already there and did not touch it.
    CONFIG_EXISTS = "config_exists"
    # The relay refused a request; the wire reason (``gateway.protocol.reasons.Reason``) is on
    # the error as ``code``.
    REFUSED = "refused"


class GatewayError(Exception):
    """Base of every error raised by the relay service.

    ``reason`` is the machine-readable cause; ``str(error)`` is a sentence for a person.
    """

    reason: GatewayReason = GatewayReason.CONFIG_INVALID

    def __init__(self, message: str, reason: GatewayReason | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class ConfigError(GatewayError):
    """The gateway configuration is unusable.

    ``key`` names the setting (``limits.max_recipients``, ``--listen``, or the file itself),
    ``problem`` says what is wrong with it; the message is ``"<key>: <problem>"``, one line, so
    ``ketenpost config check`` can print it as it is.
    """

    reason = GatewayReason.CONFIG_INVALID

    def __init__(self, key: str, problem: str, reason: GatewayReason | None = None) -> None:
        # One line, whatever a TOML parser or the operating system put in ``problem``.
        problem = " ".join(problem.split())
        super().__init__(f"{key}: {problem}", reason)
        self.key = key
        self.problem = problem
