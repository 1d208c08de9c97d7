"""The audit log's Merkle tree: RFC 6962 known answers, proofs for every pair in small trees,
the incremental log against the RFC's recursive definitions, and tampering detected."""

from __future__ import annotations

import hashlib

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocol.merkle import (
    EMPTY_ROOT,
    ConsistencyProof,
    InclusionProof,
    InMemoryNodeStore,
    MerkleError,
    MerkleLog,
    MerkleReason,
    TreeHead,
    leaf_hash,
    node_hash,
    root_from_inclusion_proof,
    root_of,
    verify_consistency,
    verify_inclusion,
)

# The reference tree of the Certificate Transparency test suite (google/certificate-transparency,
# cpp/merkletree/merkle_tree_test.cc; the same data in transparency-dev/merkle): eight leaf
# inputs, the root after each of them, and paths and proofs generated there. Leaf numbers in
# that file are 1-based; here they are converted to RFC 9162's 0-based indexes.
CT_INPUTS = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# (0-based leaf index, tree size, path)
CT_PATHS = [
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (0, 1, []),
]
# (old size, new size, proof)
CT_CONSISTENCY = [
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]


# -- the RFC 9162 §2.1 definitions, written recursively as the RFC states them: the oracle -------


def ref_root(leaves: list[bytes]) -> bytes:
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + ref_root(leaves[:k]) + ref_root(leaves[k:])).digest()


def ref_path(m: int, leaves: list[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*ref_path(m, leaves[:k]), ref_root(leaves[k:])]
    return [*ref_path(m - k, leaves[k:]), ref_root(leaves[:k])]


def ref_subproof(m: int, leaves: list[bytes], b: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if b else [ref_root(leaves)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*ref_subproof(m, leaves[:k], b), ref_root(leaves[k:])]
    return [*ref_subproof(m - k, leaves[k:], False), ref_root(leaves[:k])]


def ref_consistency(m: int, leaves: list[bytes]) -> list[bytes]:
    if m == 0 or m == len(leaves):
        return []
    return ref_subproof(m, leaves, True)


# -- helpers ----------------------------------------------------------------------------------


def leaves_for(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


def build(leaves: list[bytes]) -> tuple[MerkleLog, InMemoryNodeStore]:
    store = InMemoryNodeStore()
    log = MerkleLog(store)
    for leaf in leaves:
        log.append(leaf)
    return log, store


def h(hexes: list[str]) -> tuple[bytes, ...]:
    return tuple(bytes.fromhex(x) for x in hexes)


class CountingStore(InMemoryNodeStore):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def get(self, level: int, index: int) -> bytes | None:
        self.reads += 1
        return super().get(level, index)


CT_LEAVES = [leaf_hash(d) for d in CT_INPUTS]
CT_LOG, _ = build(CT_LEAVES)
SMALL = 17
SMALL_LEAVES = leaves_for(SMALL)
SMALL_LOG, _ = build(SMALL_LEAVES)


# -- known answers ----------------------------------------------------------------------------


def test_empty_tree_root_is_sha256_of_nothing() -> None:
    assert EMPTY_ROOT.hex() == CT_ROOTS[0]
    assert root_of([]) == EMPTY_ROOT
    assert MerkleLog(InMemoryNodeStore()).root() == EMPTY_ROOT


def test_hash_prefixes() -> None:
    assert leaf_hash(b"").hex() == CT_ROOTS[1]
    assert (
        node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    )


@pytest.mark.parametrize("size", range(len(CT_ROOTS)))
def test_ct_reference_roots(size: int) -> None:
    assert root_of(CT_LEAVES[:size]).hex() == CT_ROOTS[size]
    assert CT_LOG.root(size).hex() == CT_ROOTS[size]
    assert ref_root(CT_LEAVES[:size]).hex() == CT_ROOTS[size]


@pytest.mark.parametrize(("index", "size", "path"), CT_PATHS)
def test_ct_reference_inclusion_paths(index: int, size: int, path: list[str]) -> None:
    proof = CT_LOG.inclusion_proof(index, size)
    assert proof == InclusionProof(leaf_index=index, tree_size=size, hashes=h(path))
    verify_inclusion(CT_LEAVES[index], proof, bytes.fromhex(CT_ROOTS[size]))


@pytest.mark.parametrize(("old", "new", "path"), CT_CONSISTENCY)
def test_ct_reference_consistency_proofs(old: int, new: int, path: list[str]) -> None:
    proof = CT_LOG.consistency_proof(old, new)
    assert proof == ConsistencyProof(old_size=old, new_size=new, hashes=h(path))
    verify_consistency(proof, bytes.fromhex(CT_ROOTS[old]), bytes.fromhex(CT_ROOTS[new]))


# -- every pair in small trees -----------------------------------------------------------------


def test_every_inclusion_proof_verifies_and_matches_the_rfc() -> None:
    for size in range(1, SMALL + 1):
        root = SMALL_LOG.root(size)
        assert root == ref_root(SMALL_LEAVES[:size])
        for index in range(size):
            proof = SMALL_LOG.inclusion_proof(index, size)
            assert list(proof.hashes) == ref_path(index, SMALL_LEAVES[:size])
            verify_inclusion(SMALL_LEAVES[index], proof, root)


def test_every_consistency_proof_verifies_and_matches_the_rfc() -> None:
    for new in range(SMALL + 1):
        new_root = SMALL_LOG.root(new)
        for old in range(new + 1):
            proof = SMALL_LOG.consistency_proof(old, new)
            assert list(proof.hashes) == ref_consistency(old, SMALL_LEAVES[:new])
            verify_consistency(proof, SMALL_LOG.root(old), new_root)


def test_every_modified_inclusion_is_detected() -> None:
    """Each changed proof hash, leaf, root, index or size of every proof in a small tree."""
    size = 11
    root = SMALL_LOG.root(size)
    for index in range(size):
        proof = SMALL_LOG.inclusion_proof(index, size)
        leaf = SMALL_LEAVES[index]
        for j in range(len(proof.hashes)):
            hashes = list(proof.hashes)
            hashes[j] = bytes([hashes[j][0] ^ 1]) + hashes[j][1:]
            bad = InclusionProof(leaf_index=index, tree_size=size, hashes=tuple(hashes))
            with pytest.raises(MerkleError) as e:
                verify_inclusion(leaf, bad, root)
            assert e.value.reason is MerkleReason.PROOF_MISMATCH
        with pytest.raises(MerkleError):
            verify_inclusion(SMALL_LEAVES[(index + 1) % size], proof, root)
        with pytest.raises(MerkleError):
            verify_inclusion(leaf, proof, SMALL_LOG.root(size - 1))
        # The wrong-position cases of the CT verifier tests. (A path alone does not bind every
        # size, e.g. index 0's path in 3 leaves also fits 4; the signed checkpoint binds size
        # and root together.)
        for other_index, other_size in (
            (index - 1, size),
            (index + 1, size),
            (index, size * 2),
            (index, size // 2),
        ):
            if 0 <= other_index < size:
                moved = InclusionProof(
                    leaf_index=other_index, tree_size=other_size, hashes=proof.hashes
                )
                with pytest.raises(MerkleError):
                    verify_inclusion(leaf, moved, root)
        for other in ((*proof.hashes, root), proof.hashes[:-1], (root, *proof.hashes)):
            if other != proof.hashes:
                changed = InclusionProof(leaf_index=index, tree_size=size, hashes=other)
                with pytest.raises(MerkleError):
                    verify_inclusion(leaf, changed, root)


def test_every_modified_consistency_is_detected() -> None:
    new = 13
    new_root = SMALL_LOG.root(new)
    for old in range(1, new):
        old_root = SMALL_LOG.root(old)
        proof = SMALL_LOG.consistency_proof(old, new)
        for j in range(len(proof.hashes)):
            hashes = list(proof.hashes)
            hashes[j] = bytes([hashes[j][0] ^ 1]) + hashes[j][1:]
            bad = ConsistencyProof(old_size=old, new_size=new, hashes=tuple(hashes))
            with pytest.raises(MerkleError):
                verify_consistency(bad, old_root, new_root)
        with pytest.raises(MerkleError):
            verify_consistency(proof, SMALL_LOG.root(old - 1), new_root)
        with pytest.raises(MerkleError):
            verify_consistency(proof, old_root, SMALL_LOG.root(new + 1))
        with pytest.raises(MerkleError):
            verify_consistency(proof, new_root, old_root)
        for other in ((), proof.hashes[:-1], (*proof.hashes, new_root), (old_root, *proof.hashes)):
            changed = ConsistencyProof(old_size=old, new_size=new, hashes=other)
            with pytest.raises(MerkleError):
                verify_consistency(changed, old_root, new_root)


def test_a_forked_log_fails_consistency() -> None:
    """Same first 5 leaves, a different 6th: the later tree does not extend the earlier one."""
    forked, _ = build([*SMALL_LEAVES[:5], leaf_hash(b"rewritten"), *SMALL_LEAVES[6:10]])
    proof = forked.consistency_proof(7, 10)
    with pytest.raises(MerkleError) as e:
        verify_consistency(proof, SMALL_LOG.root(7), forked.root(10))
    assert e.value.reason is MerkleReason.PROOF_MISMATCH


# -- trivial and malformed cases ------------------------------------------------------------------

NAMED_BAD_INCLUSIONS = {
    "index equals size": (
        InclusionProof(leaf_index=3, tree_size=3, hashes=()),
        MerkleReason.MALFORMED,
    ),
    "empty tree": (InclusionProof(leaf_index=0, tree_size=0, hashes=()), MerkleReason.MALFORMED),
    "short hash": (
        InclusionProof(leaf_index=0, tree_size=2, hashes=(b"x" * 31,)),
        MerkleReason.MALFORMED,
    ),
    "missing hashes": (
        InclusionProof(leaf_index=0, tree_size=2, hashes=()),
        MerkleReason.MALFORMED,
    ),
}


@pytest.mark.parametrize("name", NAMED_BAD_INCLUSIONS)
def test_malformed_inclusion_proofs(name: str) -> None:
    proof, reason = NAMED_BAD_INCLUSIONS[name]
    with pytest.raises(MerkleError) as e:
        verify_inclusion(SMALL_LEAVES[0], proof, SMALL_LOG.root(2))
    assert e.value.reason is reason


def test_trivial_consistency() -> None:
    verify_consistency(
        ConsistencyProof(old_size=0, new_size=5, hashes=()), EMPTY_ROOT, SMALL_LOG.root(5)
    )
    verify_consistency(
        ConsistencyProof(old_size=5, new_size=5, hashes=()), SMALL_LOG.root(5), SMALL_LOG.root(5)
    )
    with pytest.raises(MerkleError):
        verify_consistency(
            ConsistencyProof(old_size=5, new_size=5, hashes=()),
            SMALL_LOG.root(4),
            SMALL_LOG.root(5),
        )
    with pytest.raises(MerkleError):
        verify_consistency(
            ConsistencyProof(old_size=0, new_size=5, hashes=()),
            SMALL_LOG.root(1),
            SMALL_LOG.root(5),
        )
    with pytest.raises(MerkleError) as e:
        verify_consistency(
            ConsistencyProof(old_size=6, new_size=5, hashes=()),
            SMALL_LOG.root(6),
            SMALL_LOG.root(5),
        )
    assert e.value.reason is MerkleReason.MALFORMED


def test_log_refuses_out_of_range_queries() -> None:
    for call in (
        lambda: SMALL_LOG.root(SMALL + 1),
        lambda: SMALL_LOG.inclusion_proof(SMALL, SMALL),
        lambda: SMALL_LOG.inclusion_proof(0, 0),
        lambda: SMALL_LOG.consistency_proof(3, SMALL + 1),
        lambda: SMALL_LOG.consistency_proof(4, 3),
        lambda: SMALL_LOG.leaf_hash(SMALL),
    ):
        with pytest.raises(MerkleError) as e:
            call()
        assert e.value.reason is MerkleReason.MALFORMED


def test_append_refuses_a_leaf_that_is_not_a_hash() -> None:
    with pytest.raises(MerkleError):
        MerkleLog(InMemoryNodeStore()).append(b"short")


# -- the store ----------------------------------------------------------------------------------


def test_store_keeps_complete_subtrees_only() -> None:
    _, store = build(leaves_for(5))
    # Leaves 0..4, pairs (0,1) and (2,3), the four-leaf subtree; nothing over the ragged edge.
    assert len(store) == 5 + 2 + 1
    assert store.get(1, 2) is None
    assert store.get(2, 0) == root_of(leaves_for(4))


def test_store_refuses_to_rewrite_a_node() -> None:
    store = InMemoryNodeStore()
    store.put(0, 0, b"a" * 32)
    store.put(0, 0, b"a" * 32)
    with pytest.raises(MerkleError) as e:
        store.put(0, 0, b"b" * 32)
    assert e.value.reason is MerkleReason.NODE_CONFLICT


def test_a_missing_node_is_reported() -> None:
    store = InMemoryNodeStore()
    log = MerkleLog(store, size=4)  # a store that lost its nodes
    with pytest.raises(MerkleError) as e:
        log.root()
    assert e.value.reason is MerkleReason.MISSING_NODE


def test_a_log_reopened_over_its_store_continues() -> None:
    log, store = build(SMALL_LEAVES[:6])
    reopened = MerkleLog(store, size=log.size)
    head = reopened.append_many(SMALL_LEAVES[6:])
    assert head == TreeHead(SMALL, SMALL_LOG.root())


def test_proofs_read_logarithmically_many_nodes() -> None:
    size = 1000
    store = CountingStore()
    log = MerkleLog(store)
    log.append_many(leaves_for(size))
    bound = 2 * size.bit_length() + 2
    for query in (
        log.root,
        lambda: log.root(777),
        lambda: log.inclusion_proof(0),
        lambda: log.inclusion_proof(999),
        lambda: log.inclusion_proof(513, 777),
        lambda: log.consistency_proof(1, size),
        lambda: log.consistency_proof(511, 777),
        lambda: log.consistency_proof(999, size),
    ):
        store.reads = 0
        query()
        assert store.reads <= bound
    store.reads = 0
    log.append(leaf_hash(b"one more"))
    assert store.reads <= bound


# -- properties: the incremental log against the recursive definitions -----------------------


@settings(max_examples=60, deadline=None)
@given(data=st.data(), size=st.integers(min_value=1, max_value=300))
def test_incremental_log_matches_the_rfc(data: st.DataObject, size: int) -> None:
    leaves = leaves_for(size)
    log, _ = build(leaves)
    new = data.draw(st.integers(min_value=1, max_value=size))
    old = data.draw(st.integers(min_value=0, max_value=new))
    index = data.draw(st.integers(min_value=0, max_value=new - 1))
    assert log.root(new) == ref_root(leaves[:new]) == root_of(leaves[:new])
    inclusion = log.inclusion_proof(index, new)
    assert list(inclusion.hashes) == ref_path(index, leaves[:new])
    verify_inclusion(leaves[index], inclusion, log.root(new))
    consistency = log.consistency_proof(old, new)
    assert list(consistency.hashes) == ref_consistency(old, leaves[:new])
    verify_consistency(consistency, log.root(old), log.root(new))


@settings(max_examples=50, deadline=None)
@given(
    index=st.integers(min_value=0, max_value=40),
    size=st.integers(min_value=1, max_value=41),
)
def test_proofs_round_trip_through_msgpack_and_json(index: int, size: int) -> None:
    index = index % size
    log, _ = build(leaves_for(size))
    for encode, decode in (
        (msgspec.msgpack.encode, msgspec.msgpack.decode),
        (msgspec.json.encode, msgspec.json.decode),
    ):
        inc = log.inclusion_proof(index)
        assert decode(encode(inc), type=InclusionProof) == inc
        con = log.consistency_proof(index)
        assert decode(encode(con), type=ConsistencyProof) == con


def test_decoding_refuses_malformed_proofs() -> None:
    bad = msgspec.json.encode({"leaf_index": 0, "tree_size": 2, "hashes": ["AAAA"]})
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(bad, type=InclusionProof)
    extra = msgspec.json.encode({"old_size": 0, "new_size": 2, "hashes": [], "note": "x"})
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(extra, type=ConsistencyProof)


def test_root_from_inclusion_proof_is_the_root() -> None:
    proof = SMALL_LOG.inclusion_proof(9, 15)
    assert root_from_inclusion_proof(SMALL_LEAVES[9], proof) == SMALL_LOG.root(15)
