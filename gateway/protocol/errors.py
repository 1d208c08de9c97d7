"""Errors of ``gateway.protocol``.

Rules kept here (house rule 3):

* One base exception, ``ProtocolError``; every specific failure is a subclass that carries a
  machine-readable ``reason`` from ``gateway.protocol.reasons.Reason``. The relay decision turns
  that reason into its problem+json refusal, the adapter SDK into a rejection, the CLI into an
  exit status — none of them parses the message text.
* ``str(error)`` is a sentence for a person (logs, CLI). It may name fields and values from the
  object that failed, never key material, plaintext or personal data.
* Verification raises; it never returns a bool (pyca style).
"""

from __future__ import annotations

from gateway.protocol.reasons import Reason


class ProtocolError(Exception):
    """Base of every error raised by ``gateway.protocol``.

    ``reason`` is the machine-readable cause; ``str(error)`` is a sentence for a person.
    """

    reason: Reason = Reason.MALFORMED_ENVELOPE

    def __init__(self, message: str, reason: Reason | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    @property
    def transient(self) -> bool:
        """Whether retrying later (possibly after resealing) may succeed."""
        return self.reason.transient


class PolicyError(ProtocolError):
    """The covenant policy does not decode or is inconsistent, or it forbids an action."""

    reason = Reason.POLICY_INVALID


class TokenError(ProtocolError):
    """An approach token, its private part or a revocation statement failed a check."""

    reason = Reason.TOKEN_BAD_SIGNATURE


class ReceiptError(ProtocolError):
    """An acceptance receipt, delivery receipt, rejection or sender event failed a check."""

    reason = Reason.BAD_RECEIPT_SIGNATURE


class SchemaError(ProtocolError):
    """A case-message body does not decode as the schema of its type."""

    reason = Reason.SCHEMA_INVALID
