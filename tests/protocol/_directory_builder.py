"""Test builders for a key directory held in memory: partners with fresh keys, no signing.

For tests of ``gateway.protocol`` (envelope, tokens, receipts) that need a ``keys.Directory``
without going through the signed directory. Every builder takes times as arguments; nothing
here reads the clock. Keys are fresh per call, so build a world once per module (key
generation is cheap, but ML-KEM keys are not free) and share it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import msgspec

from keys import (
    Directory,
    DirectoryContents,
    DirectoryKey,
    Ed25519KeyPair,
    GatewayEntry,
    HybridKemKeyPair,
    KeyUse,
    Partner,
    Role,
)

GATEWAY_ID = "ketenpost-gateway"


def directory_key(
    pair: Ed25519KeyPair | HybridKemKeyPair,
    *,
    active_from: int = 0,
    retire_at: int | None = None,
    revoked_at: int | None = None,
    compromised_since: int | None = None,
) -> DirectoryKey:
    """The directory entry for ``pair``'s public key, with the given times."""
    return DirectoryKey(
        kid=pair.kid,
        use=pair.use,
        alg=pair.algorithm,
        public=pair.public,
        active_from=active_from,
        retire_at=retire_at,
        revoked_at=revoked_at,
        compromised_since=compromised_since,
    )


def oin_for(partner_id: str) -> str:
    """A stable, distinct 20-digit OIN for a partner id (test data, not a real OIN)."""
    digits = int.from_bytes(hashlib.sha256(partner_id.encode()).digest()[:8], "big") % 10**13
    return f"0000000{digits:013d}"


@dataclass(frozen=True)
class PartnerKeys:
    """A partner as the directory lists it, with its private keys.

    ``token`` is set for coordinators only. ``encrypt_keys`` maps kid to every ``encrypt``
    private key the partner holds (what ``envelope.open_envelope`` takes).
    """

    partner: Partner
    sign: Ed25519KeyPair
    encrypt: HybridKemKeyPair
    token: Ed25519KeyPair | None = None
    old_encrypt: tuple[HybridKemKeyPair, ...] = field(default=())

    @property
    def id(self) -> str:
        return self.partner.id

    @property
    def encrypt_keys(self) -> Mapping[str, HybridKemKeyPair]:
        return {pair.kid: pair for pair in (self.encrypt, *self.old_encrypt)}

    def key_entry(self, kid: str) -> DirectoryKey:
        """This partner's directory entry for ``kid``."""
        for key in self.partner.keys:
            if key.kid == kid:
                return key
        raise KeyError(kid)

    def with_keys(
        self, *keys: DirectoryKey, old_encrypt: tuple[HybridKemKeyPair, ...] = ()
    ) -> PartnerKeys:
        """A copy whose directory entry lists ``keys`` instead (for rotation and state cases);
        ``old_encrypt`` adds retired private keys the partner still holds."""
        return PartnerKeys(
            partner=msgspec.structs.replace(self.partner, keys=keys),
            sign=self.sign,
            encrypt=self.encrypt,
            token=self.token,
            old_encrypt=self.old_encrypt + old_encrypt,
        )


def make_partner(
    partner_id: str,
    role: Role,
    coordinator: bool = False,
    *,
    active_from: int = 0,
    name: str | None = None,
) -> PartnerKeys:
    """A partner with fresh ``sign`` and ``encrypt`` keys (and ``token`` when a coordinator),
    all active from ``active_from``."""
    sign = Ed25519KeyPair.generate(KeyUse.SIGN)
    encrypt = HybridKemKeyPair.generate()
    token = Ed25519KeyPair.generate(KeyUse.TOKEN) if coordinator else None
    keys = [
        directory_key(sign, active_from=active_from),
        directory_key(encrypt, active_from=active_from),
    ]
    if token is not None:
        keys.append(directory_key(token, active_from=active_from))
    partner = Partner(
        id=partner_id,
        name=name or partner_id,
        oin=oin_for(partner_id),
        role=role,
        keys=tuple(keys),
        coordinator=coordinator,
    )
    return PartnerKeys(partner=partner, sign=sign, encrypt=encrypt, token=token)


def make_gateway(*, active_from: int = 0) -> tuple[GatewayEntry, Ed25519KeyPair]:
    """The gateway's directory entry with a fresh ``sign`` key, and that key."""
    sign = Ed25519KeyPair.generate(KeyUse.SIGN)
    return GatewayEntry(id=GATEWAY_ID, keys=(directory_key(sign, active_from=active_from),)), sign


def make_directory(
    *partners: PartnerKeys | Partner,
    gateway: GatewayEntry | None = None,
    policy: bytes = b"{}",
    version: int = 0,
) -> Directory:
    """A ``Directory`` over the given partners (unsigned: for protocol tests only)."""
    listed = tuple(p.partner if isinstance(p, PartnerKeys) else p for p in partners)
    contents = DirectoryContents(
        covenant="test-covenant",
        partners=listed,
        gateway=gateway if gateway is not None else make_gateway()[0],
        policy=policy,
    )
    return Directory(contents, version=version)
