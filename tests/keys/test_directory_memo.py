"""``DirectoryContents.policy_hash`` is computed once per object (``functools.cached_property``
on a frozen struct with ``dict=True``): it is always the SHA-256 of the policy bytes, and the
memo changes neither the encoding, equality nor hashing of the struct."""

from __future__ import annotations

import hashlib

import msgspec
import pytest

from keys.directory import DirectoryContents, GatewayEntry


def contents(policy: bytes) -> DirectoryContents:
    return DirectoryContents(
        covenant="test", partners=(), gateway=GatewayEntry(id="gateway", keys=()), policy=policy
    )


POLICIES = [
    pytest.param(b"", id="empty"),
    pytest.param(b'{"rules":[]}', id="small"),
    pytest.param(bytes(range(256)) * 64, id="16-kib"),
]


@pytest.mark.parametrize("policy", POLICIES)
def test_the_memo_is_the_sha256_of_the_policy(policy: bytes) -> None:
    c = contents(policy)
    expected = hashlib.sha256(policy).hexdigest()
    assert c.policy_hash == expected
    assert c.policy_hash == expected  # the remembered value


@pytest.mark.parametrize("policy", POLICIES)
def test_the_memo_leaves_encoding_equality_and_hash_alone(policy: bytes) -> None:
    fresh, used = contents(policy), contents(policy)
    encoded = msgspec.json.encode(fresh)
    _ = used.policy_hash
    assert msgspec.json.encode(used) == encoded
    assert b"policy_hash" not in encoded
    assert used == fresh
    assert hash(used) == hash(fresh)
    decoded = msgspec.json.decode(encoded, type=DirectoryContents)
    assert decoded.policy_hash == used.policy_hash


def test_another_policy_gets_its_own_hash() -> None:
    first = contents(b"one")
    _ = first.policy_hash
    second = msgspec.structs.replace(first, policy=b"two")
    assert second.policy_hash == hashlib.sha256(b"two").hexdigest()
    assert first.policy_hash == hashlib.sha256(b"one").hexdigest()


def test_the_struct_stays_frozen() -> None:
    c = contents(b"one")
    _ = c.policy_hash
    with pytest.raises(AttributeError):
        c.policy = b"two"  # type: ignore[misc]
