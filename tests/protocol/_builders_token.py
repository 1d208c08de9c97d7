"""Builders for token and receipt tests: an in-memory IJmond world and directories over it.

Keys are made once per ``World`` (Ed25519 only: tokens and receipts need no encrypt keys);
``World.directory`` builds a ``keys.Directory`` from ``keys.directory`` structs directly, with
per-test changes to partners and key times, so each named case states exactly what differs.
Nothing here reads the clock.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from gateway.protocol.policy import Policy, default_policy, encode_policy, sendable_types
from gateway.protocol.signed import SignedObject
from gateway.protocol.token import (
    PrivatePartOpening,
    RolePurpose,
    TokenSubject,
    issue,
)
from gateway.protocol.types import ApproachKind, MessageType
from keys import (
    Directory,
    DirectoryContents,
    DirectoryKey,
    Ed25519KeyPair,
    GatewayEntry,
    KeyUse,
    Partner,
    Role,
)

GATEWAY_ID = "ketenpost-gateway"
DAY = 86_400
# 2026-05-28T…Z: an arbitrary fixed "now" for every case.
T0 = 1_780_000_000

# id, role, coordinator
PARTNERS: tuple[tuple[str, Role, bool], ...] = (
    ("gemeente-velsen", Role.MUNICIPALITY, True),
    ("gemeente-beverwijk", Role.MUNICIPALITY, True),
    ("gemeente-uitgeest", Role.MUNICIPALITY, False),
    ("politie-ijmond", Role.POLICE, False),
    ("om", Role.PROSECUTION, False),
    ("halt", Role.HALT, False),
    ("cjg", Role.YOUTH_CARE, False),
    ("welzijn-ijmond", Role.WELFARE, False),
)

# Fixed pseudonyms so case tables can name them.
INFORMED = "a" * 32
DEFERRED = "b" * 32
NOT_YET_INFORMED = "c" * 32
STRANGER = "d" * 32


def key_entry(pair: Ed25519KeyPair, **times: int | None) -> DirectoryKey:
    """The directory entry for ``pair``; ``times`` overrides ``active_from`` (0) and friends."""
    fields: dict[str, Any] = {"active_from": 0} | times
    return DirectoryKey(
        kid=pair.kid, use=pair.use, alg=pair.algorithm, public=pair.public, **fields
    )


@dataclass
class World:
    """Key pairs for every partner (``sign`` and ``token``, plus a spare ``token`` key for
    rotation cases) and for the gateway."""

    sign: dict[str, Ed25519KeyPair] = field(default_factory=dict)
    token: dict[str, Ed25519KeyPair] = field(default_factory=dict)
    token_next: dict[str, Ed25519KeyPair] = field(default_factory=dict)
    gateway_sign: Ed25519KeyPair = field(
        default_factory=lambda: Ed25519KeyPair.generate(KeyUse.SIGN)
    )

    @classmethod
    def create(cls) -> World:
        world = cls()
        for partner_id, _, _ in PARTNERS:
            world.sign[partner_id] = Ed25519KeyPair.generate(KeyUse.SIGN)
            world.token[partner_id] = Ed25519KeyPair.generate(KeyUse.TOKEN)
            world.token_next[partner_id] = Ed25519KeyPair.generate(KeyUse.TOKEN)
        return world

    def directory(
        self,
        *,
        policy: Policy | bytes | None = None,
        partner_changes: Mapping[str, Mapping[str, Any]] | None = None,
        token_key_times: Mapping[str, Mapping[str, int | None]] | None = None,
        sign_key_times: Mapping[str, Mapping[str, int | None]] | None = None,
        token_keys_for: Iterable[str] | None = None,
        next_token_keys_for: Iterable[str] = (),
    ) -> Directory:
        """A directory of the world's partners.

        ``token_keys_for`` lists who has a ``token`` key (default: the coordinators);
        ``partner_changes`` replaces ``Partner`` fields; ``*_key_times`` set key times.
        """
        token_owners = (
            {pid for pid, _, coordinator in PARTNERS if coordinator}
            if token_keys_for is None
            else set(token_keys_for)
        )
        partners = []
        for index, (partner_id, role, coordinator) in enumerate(PARTNERS):
            keys = [key_entry(self.sign[partner_id], **(sign_key_times or {}).get(partner_id, {}))]
            if partner_id in token_owners:
                keys.append(
                    key_entry(self.token[partner_id], **(token_key_times or {}).get(partner_id, {}))
                )
            if partner_id in next_token_keys_for:
                keys.append(key_entry(self.token_next[partner_id]))
            partner = Partner(
                id=partner_id,
                name=partner_id.replace("-", " ").title(),
                oin=f"{index + 1:020d}",
                role=role,
                keys=tuple(keys),
                coordinator=coordinator,
            )
            changes = (partner_changes or {}).get(partner_id)
            if changes:
                partner = msgspec.structs.replace(partner, **changes)
            partners.append(partner)
        if policy is None:
            policy = default_policy()
        policy_bytes = policy if isinstance(policy, bytes) else encode_policy(policy)
        return Directory(
            DirectoryContents(
                covenant="IJmond",
                partners=tuple(partners),
                gateway=GatewayEntry(id=GATEWAY_ID, keys=(key_entry(self.gateway_sign),)),
                policy=policy_bytes,
            )
        )


DEFAULT_PARTICIPANTS = (
    "gemeente-velsen",
    "politie-ijmond",
    "om",
    "halt",
    "cjg",
    "welzijn-ijmond",
)


def issue_token(
    world: World,
    *,
    key: Ed25519KeyPair | None = None,
    coordinator: str = "gemeente-velsen",
    kind: ApproachKind = ApproachKind.GROUP,
    subjects: Iterable[TokenSubject] | None = None,
    participants: Iterable[str] = DEFAULT_PARTICIPANTS,
    allowed: Mapping[Role, Iterable[MessageType]] | None = None,
    valid_from: int = T0,
    valid_until: int = T0 + 180 * DAY,
    policy: Policy | None = None,
    supersedes: str | None = None,
    now: int = T0,
) -> tuple[SignedObject, PrivatePartOpening]:
    """A token of ``coordinator`` (signed with its token key unless ``key`` is given)."""
    policy = default_policy() if policy is None else policy
    if subjects is None:
        subjects = (
            TokenSubject(pseudonym=INFORMED, informed_at=T0 - DAY),
            TokenSubject(pseudonym=DEFERRED, informing_deferred_until=T0 + 30 * DAY),
            TokenSubject(pseudonym=NOT_YET_INFORMED, informed_at=T0 + 5 * DAY),
        )
    subjects = tuple(subjects)
    if allowed is None:
        # Everything the policy lets each role send: the widest token possible.
        allowed = {role: sorted(sendable_types(policy, kind, role)) for role in Role}
    return issue(
        key=world.token[coordinator] if key is None else key,
        coordinator=coordinator,
        kind=kind,
        subjects=subjects,
        participants=participants,
        allowed=allowed,
        valid_from=valid_from,
        valid_until=valid_until,
        retention_until=valid_until + 365 * DAY,
        policy=policy,
        purposes={
            Role.MUNICIPALITY: RolePurpose(
                purpose="Regie op de groepsaanpak.", legal_basis="Convenant art. 4"
            ),
            Role.POLICE: RolePurpose(
                purpose="Signalering van overlast.", legal_basis="Wet politiegegevens art. 20"
            ),
        },
        decided_by="Regisseur jeugd en veiligheid",
        decided_on=datetime.date(2026, 5, 25),
        decision_reference="VLS-2026-001",
        informing={s.pseudonym: "Per brief en huisbezoek geïnformeerd." for s in subjects},
        now=now,
        supersedes=supersedes,
    )
