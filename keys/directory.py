"""The key directory's contents: partners, their keys and roles, and the covenant policy.

Rules kept here:

* Roles come **only** from the directory. A municipality marked ``coordinator`` may issue
  approach tokens.
* The directory carries the covenant policy as opaque canonical bytes: ``keys`` imports nothing
  of ours, so it cannot parse the policy; ``gateway.protocol.policy`` does. The policy is named
  everywhere by ``policy_hash`` (SHA-256 of those bytes).
* This module is the data model and its lookups only. Signing and verifying the directory with
  TUF's rules lives in ``keys.signed_directory`` (data model apart from workflow, as python-tuf).
* Schemas are ``msgspec.Struct(frozen=True, forbid_unknown_fields=True)``; they evolve only by
  adding fields with defaults.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import re
from typing import Annotated

import msgspec

from keys.errors import DirectoryError, KeysReason, KeyStateError
from keys.keypair import Algorithm, KeyUse, compute_kid
from keys.state import KeyState, check_usable, key_state

# Python's ``$`` also matches before a final newline; ``(?!\n)`` closes that in a form that
# ECMA-262 regexes (JSON Schema) read the same way.
PARTNER_ID_PATTERN = r"^[a-z][a-z0-9-]{1,62}(?!\n)$"
OIN_PATTERN = r"^[0-9]{20}(?!\n)$"

PartnerId = Annotated[str, msgspec.Meta(pattern=PARTNER_ID_PATTERN)]
Oin = Annotated[str, msgspec.Meta(pattern=OIN_PATTERN)]
Kid = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$", min_length=64, max_length=64)]
UnixTime = Annotated[int, msgspec.Meta(ge=0)]

_PARTNER_ID_RE = re.compile(PARTNER_ID_PATTERN)


class Role(enum.StrEnum):
    MUNICIPALITY = "municipality"
    POLICE = "police"
    PROSECUTION = "prosecution"
    HALT = "halt"
    YOUTH_CARE = "youth-care"
    WELFARE = "welfare"


class DirectoryKey(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One public key of a partner (or of the gateway), with the times its state derives from."""

    kid: Kid
    use: KeyUse
    alg: Algorithm
    public: bytes
    active_from: UnixTime
    retire_at: UnixTime | None = None
    revoked_at: UnixTime | None = None
    compromised_since: UnixTime | None = None

    def check_kid(self) -> None:
        """Raise ``DirectoryError`` unless ``kid`` is the key id of ``public``."""
        if compute_kid(self.use, self.alg, self.public) != self.kid:
            raise DirectoryError(
                f"key {self.kid[:16]}… does not match its kid", KeysReason.DIRECTORY_MALFORMED
            )

    def state(self, now: int) -> KeyState:
        return key_state(self, now)


class Partner(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A covenant partner as the directory lists it."""

    id: PartnerId
    name: str
    oin: Oin
    role: Role
    keys: tuple[DirectoryKey, ...]
    coordinator: bool = False
    # Case-message schema versions this partner's adapter accepts.
    schema_versions: tuple[int, ...] = (1,)
    # Set when the partner leaves the covenant: from then on it is neither sender nor recipient.
    left_at: UnixTime | None = None


class GatewayEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The gateway's own public keys: ``sign`` (receipts, checkpoints, sender events) and
    ``tls`` (its server certificate SPKI)."""

    id: PartnerId
    keys: tuple[DirectoryKey, ...]


# ``dict=True`` gives instances a ``__dict__`` for ``functools.cached_property`` alone; it adds
# no field, so encoding, equality and hashing are those of the fields.
class DirectoryContents(msgspec.Struct, frozen=True, forbid_unknown_fields=True, dict=True):
    """What the signed directory says. Serialised as canonical JSON inside a TUF target."""

    covenant: str
    partners: tuple[Partner, ...]
    gateway: GatewayEntry
    policy: bytes
    # How often adapters and gateways fetch the directory, in seconds. A successor key's
    # ``active_from`` lies at least one interval ahead, and ``retire_at`` at least one interval
    # plus skew after the successor's ``active_from``.
    refresh_interval_s: Annotated[int, msgspec.Meta(ge=1)] = 3600
    clock_skew_s: Annotated[int, msgspec.Meta(ge=0)] = 300

    @functools.cached_property
    def policy_hash(self) -> str:
        """SHA-256 hex of ``policy``. Computed once per object: the struct is frozen and
        ``policy`` is ``bytes``, so the hash cannot change, and the relay's token check asks
        for it on every message."""
        return hashlib.sha256(self.policy).hexdigest()


class Directory:
    """Lookups over verified ``DirectoryContents``. Build once per directory version.

    Every lookup raises ``DirectoryError`` (reason ``unknown_partner`` or ``unknown_key``)
    rather than returning ``None``.
    """

    def __init__(self, contents: DirectoryContents, version: int = 0) -> None:
        self.contents = contents
        self.version = version
        self._partners = {p.id: p for p in contents.partners}
        self._by_oin = {p.oin: p for p in contents.partners}
        self._keys: dict[str, tuple[str, DirectoryKey]] = {}
        if len(self._partners) != len(contents.partners):
            raise DirectoryError("duplicate partner id", KeysReason.DIRECTORY_MALFORMED)
        if len(self._by_oin) != len(contents.partners):
            raise DirectoryError("duplicate OIN", KeysReason.DIRECTORY_MALFORMED)
        owners: list[tuple[str, tuple[DirectoryKey, ...]]] = [
            (p.id, p.keys) for p in contents.partners
        ]
        owners.append((contents.gateway.id, contents.gateway.keys))
        for owner, keys in owners:
            for key in keys:
                key.check_kid()
                if key.kid in self._keys:
                    raise DirectoryError(
                        f"key {key.kid[:16]}… listed twice", KeysReason.DIRECTORY_MALFORMED
                    )
                self._keys[key.kid] = (owner, key)

    @property
    def policy(self) -> bytes:
        return self.contents.policy

    @property
    def policy_hash(self) -> str:
        return self.contents.policy_hash

    @property
    def gateway(self) -> GatewayEntry:
        return self.contents.gateway

    def partners(self) -> tuple[Partner, ...]:
        return self.contents.partners

    def partner(self, partner_id: str) -> Partner:
        try:
            return self._partners[partner_id]
        except KeyError:
            raise DirectoryError(
                f"unknown partner {partner_id!r}", KeysReason.UNKNOWN_PARTNER
            ) from None

    def partner_by_oin(self, oin: str) -> Partner:
        try:
            return self._by_oin[oin]
        except KeyError:
            raise DirectoryError(
                "no partner has this OIN", KeysReason.CERTIFICATE_OIN_UNKNOWN
            ) from None

    def key(self, kid: str) -> tuple[str, DirectoryKey]:
        """Return ``(owner id, key)`` for ``kid``; the owner is a partner id or the gateway id."""
        try:
            return self._keys[kid]
        except KeyError:
            raise DirectoryError("unknown key id", KeysReason.UNKNOWN_KEY) from None

    def owned_key(self, owner: str, kid: str, use: KeyUse) -> DirectoryKey:
        """The key ``kid`` if it belongs to ``owner`` and has ``use``; else ``DirectoryError``."""
        key_owner, key = self.key(kid)
        if key_owner != owner:
            raise DirectoryError("key belongs to another partner", KeysReason.UNKNOWN_KEY)
        if key.use is not use:
            raise DirectoryError(f"key is not a {use} key", KeysReason.WRONG_KEY_USE)
        return key

    def current_key(self, owner: str, use: KeyUse, now: int) -> DirectoryKey:
        """The newest key of ``owner`` for ``use`` that is usable at ``now``.

        "Encrypt with the newest, accept all listed" (MultiFernet): senders use this to choose
        the recipient key and their own signing key; verifiers accept any usable listed key.
        """
        keys = (
            self.contents.gateway.keys
            if owner == self.contents.gateway.id
            else self.partner(owner).keys
        )
        usable = []
        for key in keys:
            if key.use is not use:
                continue
            try:
                check_usable(key, now)
            except KeyStateError:
                continue
            usable.append(key)
        if not usable:
            raise DirectoryError(f"{owner} has no usable {use} key", KeysReason.UNKNOWN_KEY)
        return max(usable, key=lambda k: k.active_from)

    def coordinators(self) -> tuple[Partner, ...]:
        return tuple(p for p in self.contents.partners if p.coordinator)


def is_partner_id(value: str) -> bool:
    return _PARTNER_ID_RE.fullmatch(value) is not None
