"""Errors of the ``keys`` package.

Rules kept here (house rule 3): one base exception, ``KeysError``; every specific failure is a
subclass that carries a machine-readable ``reason``, so callers (the relay decision, the adapter
SDK, the CLI) can map it to a refusal reason code or an exit status without parsing messages.
Verification raises; it never returns a bool (pyca style).
"""

from __future__ import annotations

import enum


class KeysReason(enum.StrEnum):
    """Machine-readable reasons for ``KeysError``. Values are stable: they appear in logs."""

    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    WRONG_KEY_USE = "wrong_key_use"
    KEY_NOT_YET_ACTIVE = "key_not_yet_active"
    KEY_RETIRED = "key_retired"
    KEY_REVOKED = "key_revoked"
    KEY_COMPROMISED = "key_compromised"
    MALFORMED_KEY = "malformed_key"
    KEY_FILE_EXISTS = "key_file_exists"
    KEY_FILE_PERMISSIONS = "key_file_permissions"
    KEY_FILE_MALFORMED = "key_file_malformed"
    WRONG_PASSPHRASE = "wrong_passphrase"
    PASSPHRASE_REQUIRED = "passphrase_required"
    # The passphrase source (file or environment variable) is missing or empty.
    PASSPHRASE_UNAVAILABLE = "passphrase_unavailable"
    UNKNOWN_PARTNER = "unknown_partner"
    # Directory (TUF) verification.
    DIRECTORY_ROLLBACK = "directory_rollback"
    DIRECTORY_EXPIRED = "directory_expired"
    DIRECTORY_TIMESTAMP_STALE = "directory_timestamp_stale"
    DIRECTORY_THRESHOLD = "directory_threshold"
    DIRECTORY_MISMATCH = "directory_mismatch"
    DIRECTORY_MALFORMED = "directory_malformed"
    # No directory verified or published yet, or a directory file is absent.
    DIRECTORY_MISSING = "directory_missing"
    # Certificates and TLS identity.
    CERTIFICATE_INVALID = "certificate_invalid"
    CERTIFICATE_UNTRUSTED = "certificate_untrusted"
    CERTIFICATE_OIN_UNKNOWN = "certificate_oin_unknown"
    CERTIFICATE_SPKI_MISMATCH = "certificate_spki_mismatch"
    # The certificate names a partner that has left the covenant.
    PARTNER_LEFT = "partner_left"


class KeysError(Exception):
    """Base of every error raised by ``keys``.

    ``reason`` is the machine-readable cause; ``str(error)`` is a sentence for a person.
    """

    reason: KeysReason = KeysReason.MALFORMED_KEY

    def __init__(self, message: str, reason: KeysReason | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class BadSignatureError(KeysError):
    """A signature did not verify. Deliberately opaque: no detail on why."""

    reason = KeysReason.BAD_SIGNATURE


class KeyStateError(KeysError):
    """A key exists but may not be used for this purpose at this time."""


class KeyFileError(KeysError):
    """A key file could not be written or read safely."""


class DirectoryError(KeysError):
    """The signed key directory failed verification, or a lookup in it failed."""


class CertificateError(KeysError):
    """A certificate or a TLS peer identity failed verification."""
