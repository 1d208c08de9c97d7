"""The covenant policy: strict validation, canonical bytes and hash, the default's rules."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import msgspec
import pytest

from gateway.protocol.errors import PolicyError
from gateway.protocol.policy import (
    Policy,
    allowed,
    allowed_types,
    decode_policy,
    default_policy,
    encode_policy,
    policy_from_directory,
    policy_hash,
    sendable_types,
)
from gateway.protocol.reasons import Reason
from gateway.protocol.types import ApproachKind, MessageType
from keys import Role
from tests.protocol._builders_token import World

GROUP, PERSON = ApproachKind.GROUP, ApproachKind.PERSON
T = MessageType


def _minimal() -> dict[str, Any]:
    return {
        "name": "Testconvenant",
        "version": 1,
        "rules": {"group": {"police": {"halt": ["referral"]}}},
        "roles": {
            role: {
                "legal_basis": [{"text": "Grondslag.", "reference": "Wpg art. 20"}],
                "processing_activities": [f"test/{role}"],
            }
            for role in ("police", "halt")
        },
    }


def _with(path: tuple[str, ...], value: Any) -> bytes:
    doc = _minimal()
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return json.dumps(doc).encode()


def _without(path: tuple[str, ...]) -> bytes:
    doc = _minimal()
    node = doc
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return json.dumps(doc).encode()


INVALID = [
    pytest.param(b"{not json", "malformed", id="not JSON"),
    pytest.param(
        _with(("rules", "group", "baker"), {"halt": ["signal"]}), "baker", id="unknown sender role"
    ),
    pytest.param(
        _with(("rules", "group", "police"), {"mayor": ["signal"]}),
        "mayor",
        id="unknown recipient role",
    ),
    pytest.param(
        _with(("rules", "group", "police", "halt"), ["gossip"]), "gossip", id="unknown message type"
    ),
    pytest.param(_with(("rules", "group", "police", "halt"), []), "length", id="empty type list"),
    pytest.param(
        _with(("rules", "group", "police", "halt"), ["referral", "referral"]),
        "twice",
        id="duplicate type",
    ),
    pytest.param(
        _with(("rules", "group", "police"), {}), "no recipient", id="sender with no recipients"
    ),
    pytest.param(_with(("rules",), {}), "no rules", id="no rules at all"),
    pytest.param(_with(("rules", "solo"), {}), "solo", id="unknown approach kind"),
    pytest.param(_without(("roles", "halt")), "no legal basis", id="role without legal basis"),
    pytest.param(_with(("roles", "halt", "legal_basis"), []), "length", id="empty legal basis"),
    pytest.param(
        _with(("roles", "halt", "legal_basis"), [{"text": "", "reference": "x"}]),
        "length",
        id="empty legal basis text",
    ),
    pytest.param(
        _with(("roles", "halt", "processing_activities"), ["Not An Id"]),
        "regex",
        id="bad processing-activity id",
    ),
    pytest.param(_with(("extra",), 1), "unknown field", id="unknown field"),
    pytest.param(_without(("version",)), "version", id="missing version"),
    pytest.param(_with(("version",), 0), "version", id="version zero"),
]


@pytest.mark.parametrize(("data", "message"), INVALID)
def test_decode_refuses(data: bytes, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        decode_policy(data)
    assert caught.value.reason is Reason.POLICY_INVALID
    assert message in str(caught.value)


def test_minimal_policy_decodes() -> None:
    policy = decode_policy(json.dumps(_minimal()).encode())
    assert allowed(policy, GROUP, Role.POLICE, Role.HALT, T.REFERRAL)
    assert not allowed(policy, PERSON, Role.POLICE, Role.HALT, T.REFERRAL)


def test_canonical_bytes_and_hash() -> None:
    policy = default_policy()
    data = encode_policy(policy)
    # Stable: same policy, same bytes; and decode → encode is the identity on canonical bytes.
    assert encode_policy(default_policy()) == data
    assert decode_policy(data, require_canonical=True) == policy
    assert policy_hash(policy) == hashlib.sha256(data).hexdigest()
    # Canonical: compact UTF-8 JSON with keys sorted at every level.
    assert data == json.dumps(
        json.loads(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def test_type_order_does_not_change_the_hash() -> None:
    data = json.dumps(
        _minimal() | {"rules": {"group": {"police": {"halt": ["signal", "referral"]}}}}
    )
    reordered = json.dumps(
        _minimal() | {"rules": {"group": {"police": {"halt": ["referral", "signal"]}}}}
    )
    assert policy_hash(decode_policy(data.encode())) == policy_hash(
        decode_policy(reordered.encode())
    )


def test_non_canonical_bytes_refused_where_required() -> None:
    pretty = json.dumps(json.loads(encode_policy(default_policy())), indent=2).encode()
    assert decode_policy(pretty) == default_policy()
    with pytest.raises(PolicyError, match="canonical"):
        decode_policy(pretty, require_canonical=True)


def test_hash_equals_the_directory_policy_hash() -> None:
    directory = World.create().directory(policy=default_policy())
    assert directory.policy_hash == policy_hash(default_policy())
    assert policy_from_directory(directory) == default_policy()


def test_policy_from_directory_refuses_non_canonical_bytes() -> None:
    pretty = json.dumps(json.loads(encode_policy(default_policy())), indent=1).encode()
    with pytest.raises(PolicyError):
        policy_from_directory(World.create().directory(policy=pretty))


def test_any_change_changes_the_hash() -> None:
    base = default_policy()
    assert policy_hash(msgspec.structs.replace(base, version=2)) != policy_hash(base)
    rules = {k: {s: dict(r) for s, r in v.items()} for k, v in base.rules.items()}
    rules[GROUP][Role.POLICE][Role.HALT] = (T.REFERRAL,)
    assert policy_hash(msgspec.structs.replace(base, rules=rules)) != policy_hash(base)


DEFAULT_RULES = [
    # (kind, sender, recipient, type, allowed)
    pytest.param(
        GROUP, Role.POLICE, Role.MUNICIPALITY, T.SIGNAL, True, id="police signals coordinator"
    ),
    pytest.param(GROUP, Role.POLICE, Role.HALT, T.REFERRAL, True, id="police refers to halt"),
    pytest.param(GROUP, Role.POLICE, Role.HALT, T.SIGNAL, True, id="police signals halt"),
    pytest.param(PERSON, Role.PROSECUTION, Role.HALT, T.REFERRAL, True, id="OM refers to halt"),
    pytest.param(GROUP, Role.HALT, Role.PROSECUTION, T.PROGRESS, True, id="halt reports to OM"),
    pytest.param(
        GROUP, Role.HALT, Role.MUNICIPALITY, T.PROGRESS, True, id="halt reports to coordinator"
    ),
    pytest.param(
        GROUP,
        Role.MUNICIPALITY,
        Role.WELFARE,
        T.APPROACH_NOTICE,
        True,
        id="coordinator notifies welfare",
    ),
    pytest.param(
        PERSON,
        Role.MUNICIPALITY,
        Role.POLICE,
        T.CASE_CONFERENCE,
        True,
        id="coordinator convenes police",
    ),
    pytest.param(GROUP, Role.MUNICIPALITY, Role.HALT, T.CLOSURE, True, id="coordinator closes"),
    pytest.param(
        GROUP, Role.YOUTH_CARE, Role.MUNICIPALITY, T.PROGRESS, True, id="cjg reports progress"
    ),
    pytest.param(
        GROUP,
        Role.WELFARE,
        Role.MUNICIPALITY,
        T.CASE_CONFERENCE,
        True,
        id="welfare to case conference",
    ),
    pytest.param(
        PERSON, Role.YOUTH_CARE, Role.WELFARE, T.PROGRESS, True, id="person: cjg and welfare"
    ),
    pytest.param(GROUP, Role.WELFARE, Role.POLICE, T.SIGNAL, False, id="welfare signals police"),
    pytest.param(GROUP, Role.YOUTH_CARE, Role.POLICE, T.PROGRESS, False, id="cjg to police"),
    pytest.param(
        GROUP, Role.YOUTH_CARE, Role.WELFARE, T.PROGRESS, False, id="group: cjg and welfare"
    ),
    pytest.param(GROUP, Role.HALT, Role.POLICE, T.REFERRAL, False, id="halt refers"),
    pytest.param(GROUP, Role.POLICE, Role.YOUTH_CARE, T.SIGNAL, False, id="police signals cjg"),
    pytest.param(GROUP, Role.POLICE, Role.HALT, T.APPROACH_NOTICE, False, id="police notifies"),
    pytest.param(GROUP, Role.MUNICIPALITY, Role.HALT, T.REFERRAL, False, id="municipality refers"),
]


@pytest.mark.parametrize(("kind", "sender", "recipient", "message_type", "expected"), DEFAULT_RULES)
def test_default_policy_rules(
    kind: ApproachKind, sender: Role, recipient: Role, message_type: MessageType, expected: bool
) -> None:
    assert allowed(default_policy(), kind, sender, recipient, message_type) is expected


def test_default_policy_covers_every_role_and_type() -> None:
    policy: Policy = default_policy()
    assert set(policy.roles) == set(Role)
    sent = {t for kind in ApproachKind for role in Role for t in sendable_types(policy, kind, role)}
    assert sent == set(MessageType)
    # Only municipalities send approach-notice.
    for role in Role:
        for recipient in Role:
            types = allowed_types(policy, GROUP, role, recipient)
            assert (T.APPROACH_NOTICE in types) is (role is Role.MUNICIPALITY)
    for basis in policy.roles.values():
        assert basis.legal_basis
        assert basis.processing_activities
