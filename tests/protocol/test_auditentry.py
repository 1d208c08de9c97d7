"""Audit entries: salted leaves, tampering detected, retention leaves a verifiable tree, the
pre-signature refusal rule, and the encoding round trip."""

from __future__ import annotations

import hashlib

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.protocol.auditentry import (
    SALT_LEN,
    AuditDecision,
    AuditEntry,
    AuditEntryError,
    AuditEntryReason,
    decode_entry,
    encode_entry,
    entry_leaf,
    new_entry_leaf,
    new_salt,
    seal_entry,
    verify_entry,
)
from gateway.protocol.labels import AUDIT_ENTRY, framed
from gateway.protocol.merkle import (
    InMemoryNodeStore,
    MerkleLog,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from gateway.protocol.types import MessageType

SALT = bytes(range(SALT_LEN))
HEADER_HASH = "ab" * 32
POLICY_HASH = "cd" * 32
TOKEN_ID = "0f" * 16
SUBJECT = "1e" * 16
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"

ACCEPTED = AuditEntry(
    time=1_760_000_000,
    decision=AuditDecision.ACCEPTED,
    sender="politie-ijmond",
    recipients=("halt", "cjg"),
    message_type=MessageType.REFERRAL,
    token_id=TOKEN_ID,
    subjects=(SUBJECT,),
    policy_hash=POLICY_HASH,
    header_hash=HEADER_HASH,
    trace_id=TRACE_ID,
)


def test_leaf_is_the_labelled_hash_of_salt_and_entry_bytes() -> None:
    data = encode_entry(ACCEPTED)
    expected = hashlib.sha256(framed(AUDIT_ENTRY, SALT, data)).digest()
    assert entry_leaf(data, SALT) == expected
    assert new_entry_leaf(ACCEPTED, SALT) == expected
    assert new_entry_leaf(data, SALT) == expected


def test_verify_entry_accepts_the_original() -> None:
    sealed = seal_entry(ACCEPTED, SALT)
    verify_entry(sealed.entry_bytes, sealed.salt, sealed.leaf)
    verify_entry(ACCEPTED, SALT, sealed.leaf)
    assert sealed.leaf_hash == leaf_hash(sealed.leaf)
    assert decode_entry(sealed.entry_bytes) == ACCEPTED


def test_modified_entry_salt_or_leaf_is_detected() -> None:
    sealed = seal_entry(ACCEPTED, SALT)
    cases: dict[str, tuple[AuditEntry | bytes, bytes, bytes]] = {
        "other recipients": (
            msgspec.structs.replace(ACCEPTED, recipients=("halt",)),
            SALT,
            sealed.leaf,
        ),
        "other decision": (
            msgspec.structs.replace(ACCEPTED, decision=AuditDecision.DELIVERED),
            SALT,
            sealed.leaf,
        ),
        "flipped byte": (
            sealed.entry_bytes[:-1] + bytes([sealed.entry_bytes[-1] ^ 1]),
            SALT,
            sealed.leaf,
        ),
        "other salt": (sealed.entry_bytes, bytes(SALT_LEN), sealed.leaf),
        "other leaf": (sealed.entry_bytes, SALT, hashlib.sha256(b"x").digest()),
    }
    for name, (entry, salt, leaf) in cases.items():
        with pytest.raises(AuditEntryError) as e:
            verify_entry(entry, salt, leaf)
        assert e.value.reason is AuditEntryReason.LEAF_MISMATCH, name


def test_salt_must_be_32_bytes() -> None:
    with pytest.raises(AuditEntryError) as e:
        entry_leaf(encode_entry(ACCEPTED), b"short")
    assert e.value.reason is AuditEntryReason.MALFORMED


def test_salts_are_fresh_and_hide_guessable_entries() -> None:
    """Two identical entries give unrelated leaves: without the salt nothing can be confirmed."""
    a, b = seal_entry(ACCEPTED), seal_entry(ACCEPTED)
    assert len(a.salt) == SALT_LEN
    assert a.salt != b.salt
    assert a.leaf != b.leaf
    assert new_salt() != new_salt()


def test_retention_deletes_entries_and_the_tree_still_verifies() -> None:
    """Issue 8: at the retention deadline entry and salt go, leaves and proofs stay valid."""
    entries = [
        msgspec.structs.replace(ACCEPTED, time=ACCEPTED.time + i, subjects=(f"{i:032x}",))
        for i in range(9)
    ]
    sealed = [seal_entry(e) for e in entries]
    store = InMemoryNodeStore()
    log = MerkleLog(store)
    old = log.append_many(s.leaf_hash for s in sealed[:5])
    kept: dict[int, tuple[bytes, bytes]] = {
        i: (s.entry_bytes, s.salt) for i, s in enumerate(sealed)
    }
    new = log.append_many(s.leaf_hash for s in sealed[5:])
    # Retention: entries 1..3 (one approach) deleted with their salts; only leaves remain.
    for i in (1, 2, 3):
        del kept[i]
    assert not any(SUBJECT.encode() in data for data, _ in kept.values())
    for i in range(9):
        proof = log.inclusion_proof(i)
        verify_inclusion(log.leaf_hash(i), proof, new.root)
        if i in kept:
            data, salt = kept[i]
            verify_entry(data, salt, sealed[i].leaf)
            assert leaf_hash(entry_leaf(data, salt)) == log.leaf_hash(i)
    verify_consistency(log.consistency_proof(old.size), old.root, new.root)


# -- the pre-signature refusal rule ------------------------------------------------------------


def test_unverified_refusal_records_only_tls_identity_header_hash_and_reason() -> None:
    entry = AuditEntry.unverified_refusal(1, "politie-ijmond", HEADER_HASH, "bad_signature")
    assert decode_entry(encode_entry(entry)) == entry
    # An unknown certificate is recorded by its key id.
    AuditEntry.unverified_refusal(1, "ef" * 32, None, "unknown_sender")


@pytest.mark.parametrize(
    "field",
    [
        {"sender": "politie-ijmond"},
        {"recipients": ("halt",)},
        {"message_type": MessageType.SIGNAL},
        {"token_id": TOKEN_ID},
        {"subjects": (SUBJECT,)},
        {"policy_hash": POLICY_HASH},
        {"trace_id": TRACE_ID},
    ],
    ids=lambda f: next(iter(f)),
)
def test_unverified_refusal_may_not_carry_unauthenticated_header_fields(
    field: dict[str, object],
) -> None:
    with pytest.raises(ValueError, match="only TLS identity"):
        AuditEntry(
            time=1,
            decision=AuditDecision.REFUSED,
            reason="bad_signature",
            tls_identity="politie-ijmond",
            header_hash=HEADER_HASH,
            **field,  # type: ignore[arg-type]
        )


def test_tls_identity_only_on_refusals_and_refusals_need_a_reason() -> None:
    with pytest.raises(ValueError, match="TLS identity"):
        AuditEntry(time=1, decision=AuditDecision.ACCEPTED, tls_identity="halt")
    with pytest.raises(ValueError, match="reason"):
        AuditEntry(time=1, decision=AuditDecision.REFUSED)


def test_decoding_enforces_the_rules_too() -> None:
    raw = msgspec.msgpack.encode(
        {
            "time": 1,
            "decision": "refused",
            "reason": "bad_signature",
            "tls_identity": "halt",
            "subjects": [SUBJECT],
        }
    )
    with pytest.raises(AuditEntryError) as e:
        decode_entry(raw)
    assert e.value.reason is AuditEntryReason.MALFORMED


BAD_ENTRIES = {
    "unknown field": {"time": 1, "decision": "accepted", "body": "x"},
    "unknown decision": {"time": 1, "decision": "maybe"},
    "negative time": {"time": -1, "decision": "accepted"},
    "float time": {"time": 1.5, "decision": "accepted"},
    "bad pseudonym": {"time": 1, "decision": "accepted", "subjects": ["Jan Jansen"]},
    "bad partner": {"time": 1, "decision": "accepted", "sender": "Politie IJmond"},
    "bad reason code": {"time": 1, "decision": "refused", "reason": "Bad Signature!"},
    "zero trace id": {"time": 1, "decision": "accepted", "trace_id": "0" * 32},
    "not msgpack": None,
}


@pytest.mark.parametrize("name", BAD_ENTRIES)
def test_malformed_entries_do_not_decode(name: str) -> None:
    value = BAD_ENTRIES[name]
    raw = b"\xc1" if value is None else msgspec.msgpack.encode(value)
    with pytest.raises(AuditEntryError) as e:
        decode_entry(raw)
    assert e.value.reason is AuditEntryReason.MALFORMED


def test_encode_refuses_an_entry_it_could_not_read_back() -> None:
    # msgspec checks constraints on decode only; encode_entry decodes to make sure.
    bad = AuditEntry(time=1, decision=AuditDecision.ACCEPTED, sender="Not A Partner Id")
    with pytest.raises(AuditEntryError):
        encode_entry(bad)


def test_defaults_are_omitted_so_added_fields_keep_old_bytes() -> None:
    entry = AuditEntry(time=7, decision=AuditDecision.EXPIRED, token_id=TOKEN_ID, count=3)
    assert msgspec.msgpack.decode(encode_entry(entry)) == {
        "time": 7,
        "decision": "expired",
        "token_id": TOKEN_ID,
        "count": 3,
    }


# -- property: the encoding round-trips and the leaf verifies ---------------------------------

hex32 = st.binary(min_size=16, max_size=16).map(bytes.hex)
hex64 = st.binary(min_size=32, max_size=32).map(bytes.hex)
partner = st.from_regex(r"\A[a-z][a-z0-9-]{1,20}\Z")


@st.composite
def verified_entries(draw: st.DrawFn) -> AuditEntry:
    decision = draw(st.sampled_from(AuditDecision))
    return AuditEntry(
        time=draw(st.integers(min_value=0, max_value=2**40)),
        decision=decision,
        reason=draw(st.from_regex(r"\A[a-z][a-z0-9_]{0,20}\Z"))
        if decision is AuditDecision.REFUSED
        else draw(st.none() | st.from_regex(r"\A[a-z][a-z0-9_]{0,20}\Z")),
        sender=draw(st.none() | partner),
        recipients=tuple(draw(st.lists(partner, max_size=4))),
        message_type=draw(st.none() | st.sampled_from(MessageType)),
        token_id=draw(st.none() | hex32),
        subjects=tuple(draw(st.lists(hex32, max_size=4))),
        policy_hash=draw(st.none() | hex64),
        header_hash=draw(st.none() | hex64),
        trace_id=draw(st.none() | hex32.filter(lambda t: t != "0" * 32)),
        count=draw(st.none() | st.integers(min_value=0, max_value=10**6)),
    )


@given(entry=verified_entries(), salt=st.binary(min_size=SALT_LEN, max_size=SALT_LEN))
def test_round_trip_property(entry: AuditEntry, salt: bytes) -> None:
    data = encode_entry(entry)
    assert decode_entry(data) == entry
    assert encode_entry(decode_entry(data)) == data
    verify_entry(data, salt, new_entry_leaf(entry, salt))
