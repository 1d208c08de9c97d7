"""Key rotation, retirement, revocation and pruning: the rules, as pure functions of ``now``.

Rules kept here (DESIGN.md "Identities and keys"; issue 6):

* A successor key becomes active one directory refresh interval after it is proposed:
  ``active_from = now + refresh_interval_s``. By then every adapter and gateway has fetched a
  directory listing it, so no verifier meets a signature by a key it has never seen.
* The predecessor stays valid for verifying and as an encryption recipient until
  ``retire_at >= successor.active_from + refresh_interval_s + clock_skew_s``: a sender still on
  the previous directory for one more interval, with its clock off by the skew, is never refused.
* Revocation sets ``revoked_at`` and, when known, ``compromised_since`` (not after
  ``revoked_at``). Unknown means every signature the key made is void (``keys.state``). A second
  revocation of the same key can only widen the window: the earlier ``revoked_at`` and the earlier
  compromise time are kept, and "unknown" is never narrowed to a time.
* A private key may be deleted once every message that could use it has expired: from
  ``min(retire_at, revoked_at) + max message lifetime + clock skew``. A key without either time
  (still current) and a key the directory does not list (a successor not yet published) are
  never prunable.
* A partner that leaves keeps its entry with ``left_at`` set, and its keys retire at that time:
  the directory still names what it signed before.
* Every function returns new values (``DirectoryContents`` and its parts are frozen) and raises
  ``KeysError`` subclasses with a machine-readable reason. Nothing here reads the clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import msgspec

from keys.directory import Directory, DirectoryContents, DirectoryKey, Partner
from keys.errors import DirectoryError, KeysReason, KeyStateError
from keys.keypair import KeyUse
from keys.state import KeyTimes


@dataclass(frozen=True)
class RotationPlan:
    """When a successor becomes active and its predecessor retires, in Unix seconds."""

    active_from: int
    retire_at: int


def successor_active_from(now: int, refresh_interval_s: int) -> int:
    """The earliest ``active_from`` of a key proposed at ``now``: one refresh interval ahead."""
    return now + refresh_interval_s


def earliest_retire_at(successor_active_from: int, refresh_interval_s: int, skew_s: int) -> int:
    """The earliest ``retire_at`` of the key a successor active from ``successor_active_from``
    replaces."""
    return successor_active_from + refresh_interval_s + skew_s


def plan_rotation(now: int, *, refresh_interval_s: int, clock_skew_s: int) -> RotationPlan:
    """The times of a rotation started at ``now`` (the earliest the rules allow)."""
    active_from = successor_active_from(now, refresh_interval_s)
    return RotationPlan(
        active_from=active_from,
        retire_at=earliest_retire_at(active_from, refresh_interval_s, clock_skew_s),
    )


def plan_for(contents: DirectoryContents, now: int) -> RotationPlan:
    """``plan_rotation`` with the refresh interval and skew the directory states."""
    return plan_rotation(
        now, refresh_interval_s=contents.refresh_interval_s, clock_skew_s=contents.clock_skew_s
    )


def check_rotation(
    plan: RotationPlan, now: int, *, refresh_interval_s: int, clock_skew_s: int
) -> None:
    """Raise ``KeyStateError`` unless ``plan`` keeps the rules when published at ``now``.

    ``key_not_yet_active`` names a successor active too soon; ``key_retired`` a predecessor
    retired too soon.
    """
    earliest = successor_active_from(now, refresh_interval_s)
    if plan.active_from < earliest:
        raise KeyStateError(
            f"the successor would be active at {plan.active_from}, before {earliest} "
            "(one refresh interval after publication)",
            KeysReason.KEY_NOT_YET_ACTIVE,
        )
    retire = earliest_retire_at(plan.active_from, refresh_interval_s, clock_skew_s)
    if plan.retire_at < retire:
        raise KeyStateError(
            f"the predecessor would retire at {plan.retire_at}, before {retire} "
            "(successor active_from + refresh interval + skew)",
            KeysReason.KEY_RETIRED,
        )


def settle_plan(plan: RotationPlan, contents: DirectoryContents, now: int) -> RotationPlan:
    """``plan`` moved later where needed so that it keeps the rules if published at ``now``.

    A key-change fragment is made at the partner; by the time the officers propose it, its
    ``active_from`` may lie too close. Times only ever move later.
    """
    earliest = plan_for(contents, now)
    active_from = max(plan.active_from, earliest.active_from)
    retire_at = max(
        plan.retire_at,
        earliest_retire_at(active_from, contents.refresh_interval_s, contents.clock_skew_s),
    )
    return RotationPlan(active_from=active_from, retire_at=retire_at)


# --- pruning --------------------------------------------------------------------------------


def end_of_use(key: KeyTimes) -> int | None:
    """When ``key`` stops being used for new messages: the earlier of retirement and
    revocation; ``None`` while it is current."""
    times = [t for t in (key.retire_at, key.revoked_at) if t is not None]
    return min(times) if times else None


def prunable_at(key: KeyTimes, *, max_message_lifetime_s: int, clock_skew_s: int) -> int | None:
    """When the private key of ``key`` may be deleted; ``None`` while it is current."""
    end = end_of_use(key)
    if end is None:
        return None
    return end + max_message_lifetime_s + clock_skew_s


def may_prune(key: KeyTimes, now: int, *, max_message_lifetime_s: int, clock_skew_s: int) -> bool:
    """Whether the private key of ``key`` may be deleted at ``now`` (see ``prunable_at``)."""
    at = prunable_at(key, max_message_lifetime_s=max_message_lifetime_s, clock_skew_s=clock_skew_s)
    return at is not None and now >= at


# --- revocation -----------------------------------------------------------------------------


def revoke_key(key: DirectoryKey, *, now: int, compromised_since: int | None) -> DirectoryKey:
    """``key`` revoked at ``now``; ``compromised_since`` ``None`` means unknown.

    Raises ``KeyStateError`` (``key_compromised``) for a compromise time after ``now``. Revoking
    a revoked key keeps the earlier revocation and the wider compromise window.
    """
    if compromised_since is not None and compromised_since > now:
        raise KeyStateError(
            "a compromise cannot begin after the revocation", KeysReason.KEY_COMPROMISED
        )
    revoked_at = now if key.revoked_at is None else min(key.revoked_at, now)
    since: int | None
    if key.revoked_at is None:
        since = compromised_since
    elif key.compromised_since is None or compromised_since is None:
        since = None  # "unknown" is the widest window, and it stays
    else:
        since = min(compromised_since, key.compromised_since)
    if since is not None:
        since = min(since, revoked_at)
    return msgspec.structs.replace(key, revoked_at=revoked_at, compromised_since=since)


# --- directory changes ----------------------------------------------------------------------


def _replace_partner(contents: DirectoryContents, partner: Partner) -> DirectoryContents:
    partners = tuple(partner if p.id == partner.id else p for p in contents.partners)
    updated = msgspec.structs.replace(contents, partners=partners)
    Directory(updated)  # duplicate ids, OINs and kids, and kid mismatches, raise here
    return updated


def _partner(contents: DirectoryContents, partner_id: str) -> Partner:
    for p in contents.partners:
        if p.id == partner_id:
            return p
    raise DirectoryError(f"unknown partner {partner_id!r}", KeysReason.UNKNOWN_PARTNER)


def add_partner(contents: DirectoryContents, partner: Partner) -> DirectoryContents:
    """``contents`` with ``partner`` added; ``DirectoryError`` for a taken id, OIN or kid."""
    if any(p.id == partner.id for p in contents.partners):
        raise DirectoryError(
            f"partner {partner.id!r} is already listed", KeysReason.DIRECTORY_MALFORMED
        )
    updated = msgspec.structs.replace(contents, partners=(*contents.partners, partner))
    Directory(updated)
    return updated


def remove_partner(contents: DirectoryContents, partner_id: str, now: int) -> DirectoryContents:
    """``contents`` with ``partner_id`` marked as left at ``now`` and its keys retired then.

    The entry stays (what it signed before stays verifiable in the audit trail); the gateway
    treats it as neither sender nor recipient from ``left_at`` on.
    """
    partner = _partner(contents, partner_id)
    if partner.left_at is not None:
        raise DirectoryError(
            f"partner {partner_id!r} left at {partner.left_at}", KeysReason.PARTNER_LEFT
        )
    keys = tuple(
        k
        if k.retire_at is not None and k.retire_at <= now
        else msgspec.structs.replace(k, retire_at=now)
        for k in partner.keys
    )
    return _replace_partner(
        contents, msgspec.structs.replace(partner, keys=keys, left_at=now, coordinator=False)
    )


def apply_key_change(
    contents: DirectoryContents,
    partner_id: str,
    new_key: DirectoryKey,
    *,
    retire: Iterable[tuple[str, int]],
) -> DirectoryContents:
    """``contents`` with ``new_key`` added to ``partner_id`` and the named keys retiring.

    ``retire`` holds ``(kid, retire_at)`` pairs; each kid must be the partner's and of the same
    use as ``new_key``, and ``retire_at`` keep the rule against ``new_key.active_from``
    (``KeyStateError`` otherwise). A key already retiring earlier keeps its earlier time.
    """
    new_key.check_kid()
    partner = _partner(contents, partner_id)
    if partner.left_at is not None:
        raise DirectoryError(f"partner {partner_id!r} has left", KeysReason.PARTNER_LEFT)
    if new_key.use is KeyUse.TOKEN and not partner.coordinator:
        raise DirectoryError(
            f"{partner_id} is not a coordinator and holds no token key", KeysReason.WRONG_KEY_USE
        )
    floor = earliest_retire_at(
        new_key.active_from, contents.refresh_interval_s, contents.clock_skew_s
    )
    retiring = dict(retire)
    by_kid = {k.kid: k for k in partner.keys}
    for kid, retire_at in retiring.items():
        old = by_kid.get(kid)
        if old is None:
            raise DirectoryError(f"{partner_id} has no key {kid[:16]}…", KeysReason.UNKNOWN_KEY)
        if old.use is not new_key.use:
            raise DirectoryError(
                f"key {kid[:16]}… is a {old.use} key, not {new_key.use}", KeysReason.WRONG_KEY_USE
            )
        if retire_at < floor:
            raise KeyStateError(
                f"key {kid[:16]}… would retire at {retire_at}, before {floor} "
                "(successor active_from + refresh interval + skew)",
                KeysReason.KEY_RETIRED,
            )
    keys = []
    for k in partner.keys:
        if k.kid in retiring and (k.retire_at is None or k.retire_at > retiring[k.kid]):
            keys.append(msgspec.structs.replace(k, retire_at=retiring[k.kid]))
        else:
            keys.append(k)
    keys.append(new_key)
    return _replace_partner(contents, msgspec.structs.replace(partner, keys=tuple(keys)))


def apply_revocation(
    contents: DirectoryContents,
    partner_id: str,
    kid: str,
    *,
    now: int,
    compromised_since: int | None,
) -> DirectoryContents:
    """``contents`` with ``kid`` of ``partner_id`` revoked (see ``revoke_key``)."""
    partner = _partner(contents, partner_id)
    if not any(k.kid == kid for k in partner.keys):
        raise DirectoryError(f"{partner_id} has no key {kid[:16]}…", KeysReason.UNKNOWN_KEY)
    keys = tuple(
        revoke_key(k, now=now, compromised_since=compromised_since) if k.kid == kid else k
        for k in partner.keys
    )
    return _replace_partner(contents, msgspec.structs.replace(partner, keys=keys))


def replace_policy(contents: DirectoryContents, policy: bytes) -> DirectoryContents:
    """``contents`` with the covenant policy replaced by ``policy`` (opaque canonical bytes)."""
    if not policy:
        raise DirectoryError("the policy is empty", KeysReason.DIRECTORY_MALFORMED)
    return msgspec.structs.replace(contents, policy=policy)
