"""Rotation, retirement, pruning and revocation rules, and the partner's own revocation.

Tables of named cases in python-tuf's key-rotation style; time is passed in, nothing sleeps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import pytest

from gateway.protocol import labels
from keys.directory import Directory, DirectoryContents, DirectoryKey, GatewayEntry, Partner, Role
from keys.errors import BadSignatureError, DirectoryError, KeysReason, KeyStateError
from keys.framing import framed
from keys.keypair import Ed25519KeyPair, HybridKemKeyPair, KeyUse, TlsKeyPair
from keys.revocation import (
    KeyRevocation,
    RevocationError,
    RevocationRefusal,
    decode_revocation,
    encode_revocation,
    sign_revocation,
    verify_revocation,
)
from keys.rotation import (
    RotationPlan,
    add_partner,
    apply_key_change,
    apply_revocation,
    check_rotation,
    may_prune,
    plan_rotation,
    prunable_at,
    remove_partner,
    revoke_key,
    settle_plan,
)
from keys.state import KeyState

T0 = 1_750_000_000
HOUR = 3_600
DAY = 86_400
REFRESH = HOUR
SKEW = 300
LIFETIME = 30 * DAY


def _ed(use: KeyUse, i: int) -> Ed25519KeyPair:
    return Ed25519KeyPair.from_seed(use, bytes([i]) * 32)


def _entry(
    pair: Ed25519KeyPair | HybridKemKeyPair | TlsKeyPair, **times: int | None
) -> DirectoryKey:
    return DirectoryKey(
        kid=pair.kid,
        use=pair.use,
        alg=pair.algorithm,
        public=pair.public,
        active_from=times.pop("active_from", T0) or T0,
        **times,
    )


HALT_SIGN = _ed(KeyUse.SIGN, 1)
HALT_SIGN_NEXT = _ed(KeyUse.SIGN, 2)
HALT_SIGN_REVOKED = _ed(KeyUse.SIGN, 3)
OM_SIGN = _ed(KeyUse.SIGN, 4)
VELSEN_SIGN = _ed(KeyUse.SIGN, 5)
VELSEN_TOKEN = _ed(KeyUse.TOKEN, 6)
HALT_ENCRYPT = HybridKemKeyPair.generate()
GATEWAY_SIGN = _ed(KeyUse.SIGN, 9)


def _contents() -> DirectoryContents:
    halt = Partner(
        id="halt",
        name="Halt",
        oin="00000099000000007000",
        role=Role.HALT,
        keys=(
            _entry(HALT_SIGN),
            _entry(HALT_ENCRYPT),
            _entry(HALT_SIGN_NEXT, active_from=T0 + HOUR),
            _entry(HALT_SIGN_REVOKED, revoked_at=T0, compromised_since=None),
        ),
    )
    om = Partner(
        id="om",
        name="OM",
        oin="00000099000000006000",
        role=Role.PROSECUTION,
        keys=(_entry(OM_SIGN),),
    )
    velsen = Partner(
        id="gemeente-velsen",
        name="Gemeente Velsen",
        oin="00000099000000004000",
        role=Role.MUNICIPALITY,
        keys=(_entry(VELSEN_SIGN), _entry(VELSEN_TOKEN)),
        coordinator=True,
    )
    return DirectoryContents(
        covenant="test",
        partners=(halt, om, velsen),
        gateway=GatewayEntry(id="gateway", keys=(_entry(GATEWAY_SIGN),)),
        policy=b"{}",
        refresh_interval_s=REFRESH,
        clock_skew_s=SKEW,
    )


def test_framed_is_byte_for_byte_the_protocols_framing() -> None:
    fields = (b"", b"a", b"\x00" * 70_000)
    assert framed(b"ketenpost/v1/x", *fields) == labels.framed(b"ketenpost/v1/x", *fields)


def test_the_revocation_label_is_distinct_from_every_protocol_label() -> None:
    from keys.revocation import KEY_REVOCATION

    assert KEY_REVOCATION not in labels.ALL_LABELS
    assert not any(label.startswith(KEY_REVOCATION) for label in labels.ALL_LABELS)


# --- rotation times -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("refresh", "skew", "active_from", "retire_at"),
    [
        pytest.param(HOUR, 300, T0 + HOUR, T0 + 2 * HOUR + 300, id="default-interval"),
        pytest.param(300, 0, T0 + 300, T0 + 600, id="short-interval-no-skew"),
        pytest.param(DAY, 3600, T0 + DAY, T0 + 2 * DAY + 3600, id="daily-refresh"),
    ],
)
@pytest.mark.parametrize("use", list(KeyUse))
def test_rotation_times_per_use(
    use: KeyUse, refresh: int, skew: int, active_from: int, retire_at: int
) -> None:
    # The rule is the same for every use: one key, one use, one timetable.
    plan = plan_rotation(T0, refresh_interval_s=refresh, clock_skew_s=skew)
    assert plan == RotationPlan(active_from=active_from, retire_at=retire_at)
    check_rotation(plan, T0, refresh_interval_s=refresh, clock_skew_s=skew)


@pytest.mark.parametrize(
    ("plan", "reason"),
    [
        pytest.param(
            RotationPlan(T0 + HOUR - 1, T0 + 3 * HOUR),
            KeysReason.KEY_NOT_YET_ACTIVE,
            id="active-too-soon",
        ),
        pytest.param(
            RotationPlan(T0 + HOUR, T0 + 2 * HOUR + 299),
            KeysReason.KEY_RETIRED,
            id="retired-before-skew",
        ),
        pytest.param(
            RotationPlan(T0 + HOUR, T0 + HOUR),
            KeysReason.KEY_RETIRED,
            id="retired-at-successor-start",
        ),
    ],
)
def test_rotation_that_breaks_the_rules_is_refused(plan: RotationPlan, reason: KeysReason) -> None:
    with pytest.raises(KeyStateError) as exc:
        check_rotation(plan, T0, refresh_interval_s=HOUR, clock_skew_s=300)
    assert exc.value.reason is reason


def test_a_late_proposal_moves_the_times_later_never_earlier() -> None:
    made_at_partner = plan_rotation(T0, refresh_interval_s=REFRESH, clock_skew_s=SKEW)
    settled = settle_plan(made_at_partner, _contents(), T0 + DAY)
    assert settled == plan_rotation(T0 + DAY, refresh_interval_s=REFRESH, clock_skew_s=SKEW)
    assert settle_plan(made_at_partner, _contents(), T0) == made_at_partner


# --- retirement and pruning -----------------------------------------------------------------


@dataclass(frozen=True)
class PruneCase:
    retire_at: int | None
    revoked_at: int | None
    now: int
    prunable: bool


PRUNE_CASES = {
    "current-key-never": PruneCase(None, None, T0 + 10 * 365 * DAY, False),
    "retiring-not-yet": PruneCase(T0 + DAY, None, T0 + 2 * DAY, False),
    "retired-within-message-lifetime": PruneCase(T0, None, T0 + LIFETIME, False),
    "retired-lifetime-and-skew-passed": PruneCase(T0, None, T0 + LIFETIME + SKEW, True),
    "revoked-before-retire-counts-from-revocation": PruneCase(
        T0 + 90 * DAY, T0, T0 + LIFETIME + SKEW, True
    ),
    "revoked-recently": PruneCase(None, T0, T0 + DAY, False),
}


@pytest.mark.parametrize("case", PRUNE_CASES.values(), ids=PRUNE_CASES.keys())
def test_prune_rule(case: PruneCase) -> None:
    key = _entry(HALT_SIGN, retire_at=case.retire_at, revoked_at=case.revoked_at)
    assert (
        may_prune(key, case.now, max_message_lifetime_s=LIFETIME, clock_skew_s=SKEW)
        is case.prunable
    )
    at = prunable_at(key, max_message_lifetime_s=LIFETIME, clock_skew_s=SKEW)
    assert (at is None) is (case.retire_at is None and case.revoked_at is None)


def test_key_change_adds_the_successor_and_retires_the_predecessor() -> None:
    contents = _contents()
    new = _ed(KeyUse.SIGN, 20)
    plan = plan_rotation(T0, refresh_interval_s=REFRESH, clock_skew_s=SKEW)
    updated = apply_key_change(
        contents,
        "om",
        _entry(new, active_from=plan.active_from),
        retire=[(OM_SIGN.kid, plan.retire_at)],
    )
    d = Directory(updated)
    assert d.owned_key("om", OM_SIGN.kid, KeyUse.SIGN).retire_at == plan.retire_at
    assert d.current_key("om", KeyUse.SIGN, T0).kid == OM_SIGN.kid
    assert d.current_key("om", KeyUse.SIGN, plan.active_from).kid == new.kid
    assert d.owned_key("om", OM_SIGN.kid, KeyUse.SIGN).state(plan.retire_at) is KeyState.RETIRED


@pytest.mark.parametrize(
    ("partner", "new", "retire", "error"),
    [
        pytest.param(
            "om",
            _ed(KeyUse.SIGN, 21),
            [(OM_SIGN.kid, T0 + HOUR)],
            KeyStateError,
            id="retire-too-soon",
        ),
        pytest.param(
            "om",
            _ed(KeyUse.SIGN, 22),
            [(HALT_SIGN.kid, T0 + DAY)],
            DirectoryError,
            id="another-partners-key",
        ),
        pytest.param(
            "halt", _ed(KeyUse.TOKEN, 23), [], DirectoryError, id="token-for-non-coordinator"
        ),
        pytest.param("om", OM_SIGN, [], DirectoryError, id="kid-listed-twice"),
    ],
)
def test_key_change_refusals(
    partner: str, new: Ed25519KeyPair, retire: list[tuple[str, int]], error: type[Exception]
) -> None:
    with pytest.raises(error):
        apply_key_change(_contents(), partner, _entry(new, active_from=T0 + HOUR), retire=retire)


def test_a_leaving_partner_keeps_its_entry_with_keys_retired() -> None:
    updated = remove_partner(_contents(), "gemeente-velsen", T0 + DAY)
    velsen = Directory(updated).partner("gemeente-velsen")
    assert velsen.left_at == T0 + DAY
    assert not velsen.coordinator
    assert all(k.state(T0 + DAY) is KeyState.RETIRED for k in velsen.keys)
    with pytest.raises(DirectoryError) as exc:
        remove_partner(updated, "gemeente-velsen", T0 + 2 * DAY)
    assert exc.value.reason is KeysReason.PARTNER_LEFT


def test_adding_a_partner_refuses_a_taken_id_or_oin() -> None:
    om = Directory(_contents()).partner("om")
    with pytest.raises(DirectoryError):
        add_partner(_contents(), om)
    twin = msgspec.structs.replace(om, id="om-twin", keys=(_entry(_ed(KeyUse.SIGN, 30)),))
    with pytest.raises(DirectoryError):
        add_partner(_contents(), twin)


# --- revocation -----------------------------------------------------------------------------

REVOKE_CASES = {
    # (earlier revoked_at, earlier compromised_since, now, new compromised_since) -> result
    "first-known": (None, None, T0, T0 - DAY, (T0, T0 - DAY)),
    "first-unknown": (None, None, T0, None, (T0, None)),
    "again-keeps-earlier-revocation": (T0, T0 - DAY, T0 + DAY, T0 - DAY, (T0, T0 - DAY)),
    "again-widens-window": (T0, T0 - DAY, T0 + DAY, T0 - 2 * DAY, (T0, T0 - 2 * DAY)),
    "again-never-narrows": (T0, T0 - 2 * DAY, T0 + DAY, T0 - DAY, (T0, T0 - 2 * DAY)),
    "unknown-stays-unknown": (T0, None, T0 + DAY, T0 - DAY, (T0, None)),
    "unknown-overrides-known": (T0, T0 - DAY, T0 + DAY, None, (T0, None)),
}


@pytest.mark.parametrize("case", REVOKE_CASES.values(), ids=REVOKE_CASES.keys())
def test_revocation_only_widens(
    case: tuple[int | None, int | None, int, int | None, tuple[int, int | None]],
) -> None:
    revoked_at, since, now, new_since, expected = case
    key = _entry(OM_SIGN, revoked_at=revoked_at, compromised_since=since if revoked_at else None)
    revoked = revoke_key(key, now=now, compromised_since=new_since)
    assert (revoked.revoked_at, revoked.compromised_since) == expected


def test_a_compromise_after_the_revocation_is_refused() -> None:
    with pytest.raises(KeyStateError):
        apply_revocation(_contents(), "om", OM_SIGN.kid, now=T0, compromised_since=T0 + 1)


# --- the partner's own revocation statement -------------------------------------------------


def _statement(
    kid: str, signer: Ed25519KeyPair, partner: str = "halt", since: int | None = None, at: int = T0
) -> KeyRevocation:
    return sign_revocation(
        partner=partner, kid=kid, revoked_at=at, compromised_since=since, signing_key=signer
    )


def test_a_statement_signed_by_another_own_key_verifies_and_round_trips() -> None:
    directory = Directory(_contents())
    for signer in (HALT_SIGN, HALT_SIGN_NEXT):  # active, and a listed pending successor
        statement = _statement(HALT_ENCRYPT.kid, signer, since=T0 - DAY)
        verify_revocation(statement, directory, T0)
        assert decode_revocation(encode_revocation(statement)) == statement


def _forged_same_key() -> KeyRevocation:
    statement = _statement(HALT_ENCRYPT.kid, HALT_SIGN)
    # What an attacker holding only HALT_SIGN would send to revoke HALT_SIGN itself.
    return msgspec.structs.replace(
        statement,
        kid=HALT_SIGN.kid,
        signature=HALT_SIGN.sign(
            msgspec.structs.replace(statement, kid=HALT_SIGN.kid).signed_bytes()
        ),
    )


REFUSED: dict[str, tuple[Callable[[], KeyRevocation], RevocationRefusal]] = {
    "signed-by-the-revoked-key": (_forged_same_key, RevocationRefusal.SIGNED_BY_REVOKED_KEY),
    "signed-by-another-partners-key": (
        lambda: _statement(HALT_ENCRYPT.kid, OM_SIGN),
        RevocationRefusal.FOREIGN_SIGNING_KEY,
    ),
    "revoking-another-partners-key": (
        lambda: _statement(OM_SIGN.kid, HALT_SIGN),
        RevocationRefusal.FOREIGN_SIGNING_KEY,
    ),
    "signed-by-a-token-key": (
        lambda: msgspec.structs.replace(
            _statement(
                VELSEN_SIGN.kid,
                _ed(KeyUse.SIGN, 6),
                partner="gemeente-velsen",
            ),
            signing_kid=VELSEN_TOKEN.kid,
        ),
        RevocationRefusal.NOT_A_SIGN_KEY,
    ),
    "signed-by-a-revoked-key": (
        lambda: _statement(HALT_ENCRYPT.kid, HALT_SIGN_REVOKED),
        RevocationRefusal.SIGNING_KEY_UNUSABLE,
    ),
    "unknown-key": (
        lambda: _statement(_ed(KeyUse.SIGN, 40).kid, HALT_SIGN),
        RevocationRefusal.UNKNOWN_KEY,
    ),
    "dated-in-the-future": (
        lambda: _statement(HALT_ENCRYPT.kid, HALT_SIGN, at=T0 + SKEW + 1),
        RevocationRefusal.BAD_TIMES,
    ),
}


@pytest.mark.parametrize("case", REFUSED.values(), ids=REFUSED.keys())
def test_self_revocation_refusals(
    case: tuple[Callable[[], KeyRevocation], RevocationRefusal],
) -> None:
    make, refusal = case
    with pytest.raises(RevocationError) as exc:
        verify_revocation(make(), Directory(_contents()), T0)
    assert exc.value.refusal is refusal


def test_a_key_cannot_even_sign_its_own_revocation() -> None:
    with pytest.raises(RevocationError) as exc:
        _statement(HALT_SIGN.kid, HALT_SIGN)
    assert exc.value.refusal is RevocationRefusal.SIGNED_BY_REVOKED_KEY


@pytest.mark.parametrize(
    "field",
    ["revoked_at", "compromised_since", "kid"],
)
def test_a_tampered_statement_does_not_verify(field: str) -> None:
    statement = _statement(HALT_ENCRYPT.kid, HALT_SIGN, since=T0 - DAY)
    changed = {"revoked_at": T0 - 1, "compromised_since": None, "kid": HALT_SIGN_NEXT.kid}[field]
    with pytest.raises(BadSignatureError):
        verify_revocation(
            msgspec.structs.replace(statement, **{field: changed}), Directory(_contents()), T0
        )
