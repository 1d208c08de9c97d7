"""The audit log's Merkle tree: RFC 6962 / RFC 9162 hashing, proofs, and an incremental log.

Rules kept here:

* Hashing is exactly RFC 9162 §2.1.1 with SHA-256, so any Certificate Transparency or C2SP
  tlog verifier (Go ``transparency-dev/merkle``, Sigsum, witnesses) checks our proofs:
  ``leaf hash = SHA-256(0x00 ‖ leaf data)``, ``node hash = SHA-256(0x01 ‖ left ‖ right)``, the
  empty tree's root is ``SHA-256("")``, and a tree of ``n > 1`` leaves splits at ``k``, the
  largest power of two below ``n``. The 0x00/0x01 prefixes keep a leaf from ever passing as an
  inner node (second-preimage resistance).
* Proofs are RFC 9162 audit paths: inclusion (§2.1.3) and consistency (§2.1.4), bare lists of
  32-byte hashes ordered from the leaf (or the old tree) upwards; ``leaf_index`` is 0-based.
  Verification follows the RFC's algorithms step by step and **raises** ``MerkleError`` with a
  reason; it never returns a bool.
* ``MerkleLog`` works over a ``NodeStore`` that keeps the hashes of **complete** subtrees only:
  node ``(level, index)`` is the root of leaves ``[index·2^level, (index+1)·2^level)``; level 0
  holds the leaf hashes. A complete subtree never changes once the log has grown past it, so the
  store is append-only and every cached node stays valid for ever (a store refuses to overwrite
  one with another value). Appending a leaf writes at most ``1 + log2(n)`` nodes; a root, an
  inclusion proof or a consistency proof reads ``O(log n)`` nodes, because every range the RFC's
  recursion needs is either a complete subtree (one read) or the ragged right edge of the tree,
  which splits into at most ``log2(n)`` complete subtrees and is needed at most once per proof.
* ``MerkleLog`` holds no lock and no cache: the relay builds one per store transaction from the
  size it read in that transaction, so replicas sharing one database agree on the tree.
* Sizes are bounded by ``MAX_TREE_SIZE`` (2^63 - 1, a signed 64-bit database integer).

Written here rather than taken from a library: see ``docs/adr/0004-merkle-audit-log.md``.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Iterable, Sequence
from typing import Annotated, Final, NamedTuple, Protocol

import msgspec

HASH_LEN: Final = 32
MAX_TREE_SIZE: Final = 2**63 - 1
# A proof for a tree below 2^63 leaves has at most 63 hashes (inclusion) or 64 (consistency,
# whose first element may be the old root itself); anything longer is refused before hashing.
MAX_PROOF_HASHES: Final = 64

EMPTY_ROOT: Final = hashlib.sha256(b"").digest()

_LEAF_PREFIX: Final = b"\x00"
_NODE_PREFIX: Final = b"\x01"


class MerkleReason(enum.StrEnum):
    """Why a Merkle operation failed. Values are stable: they appear in logs."""

    # A proof, hash or size is not well formed (wrong hash length, size out of range, index
    # not below the size, too many hashes).
    MALFORMED = "merkle_malformed"
    # A well-formed proof does not lead to the claimed root(s): the leaf, the proof or the
    # root was changed, or the log forked.
    PROOF_MISMATCH = "merkle_proof_mismatch"
    # The store lacks a node the tree needs: a store corruption, never a client's fault.
    MISSING_NODE = "merkle_missing_node"
    # The store already holds another hash at this position: someone rewrote history.
    NODE_CONFLICT = "merkle_node_conflict"


class MerkleError(Exception):
    """A Merkle proof failed to verify, or the node store is inconsistent.

    ``reason`` is the machine-readable cause; ``str(error)`` is a sentence for a person.
    """

    def __init__(self, message: str, reason: MerkleReason) -> None:
        super().__init__(message)
        self.reason = reason


Hash = Annotated[bytes, msgspec.Meta(min_length=HASH_LEN, max_length=HASH_LEN)]
TreeSize = Annotated[int, msgspec.Meta(ge=0, le=MAX_TREE_SIZE)]
ProofHashes = Annotated[tuple[Hash, ...], msgspec.Meta(max_length=MAX_PROOF_HASHES)]


class InclusionProof(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """RFC 9162 inclusion proof: the audit path of leaf ``leaf_index`` in the tree of
    ``tree_size`` leaves, sibling hashes from the leaf upwards. Carried in acceptance receipts
    and by ``GET /v1/audit/proof?index=N``."""

    leaf_index: TreeSize
    tree_size: TreeSize
    hashes: ProofHashes


class ConsistencyProof(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """RFC 9162 consistency proof that the tree of ``new_size`` leaves extends the tree of
    ``old_size`` leaves. Served by ``GET /v1/audit/proof?from=M&to=N``."""

    old_size: TreeSize
    new_size: TreeSize
    hashes: ProofHashes


class TreeHead(NamedTuple):
    """A tree size and its root hash: what a checkpoint signs."""

    size: int
    root: bytes


# --------------------------------------------------------------------------------------------
# Hashing (RFC 9162 §2.1.1)


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 ‖ data)``: the hash of one leaf."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 ‖ left ‖ right)``: the hash of an inner node."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """The root of the tree over ``leaf_hashes`` (already leaf-hashed), in O(n) time.

    Folds a stack of complete subtrees the way ``MerkleLog.append`` does, so it needs no store;
    adapters use it to recompute a small tree, ``audit verify`` to recompute the whole log.
    """
    _check_hashes(leaf_hashes)
    stack: list[bytes] = []
    for i, h in enumerate(leaf_hashes):
        stack.append(h)
        # Each trailing 1-bit of the new leaf's index closes one complete subtree.
        n = i
        while n & 1:
            right = stack.pop()
            stack[-1] = node_hash(stack[-1], right)
            n >>= 1
    return _fold_right(stack) if stack else EMPTY_ROOT


def _fold_right(subtrees: Sequence[bytes]) -> bytes:
    """Combine complete-subtree roots, largest (leftmost) first, into the root of their range.

    The RFC's split puts the ragged part on the right, so the range's root is
    ``H(s0, H(s1, … H(s_{k-2}, s_{k-1})))``.
    """
    acc = subtrees[-1]
    for h in reversed(subtrees[:-1]):
        acc = node_hash(h, acc)
    return acc


# --------------------------------------------------------------------------------------------
# Verification (RFC 9162 §2.1.3.2 and §2.1.4.2)


def _check_hashes(hashes: Iterable[bytes]) -> None:
    for h in hashes:
        if len(h) != HASH_LEN:
            raise MerkleError("a hash is not 32 bytes", MerkleReason.MALFORMED)


def _check_size(size: int, what: str) -> None:
    if not 0 <= size <= MAX_TREE_SIZE:
        raise MerkleError(f"{what} {size} is out of range", MerkleReason.MALFORMED)


def root_from_inclusion_proof(leaf: bytes, proof: InclusionProof) -> bytes:
    """The root that ``proof`` leads to from the leaf hash ``leaf`` (RFC 9162 §2.1.3.2).

    Raises ``MerkleError`` (``MALFORMED``) if the proof cannot be a proof for its index and
    size (index not below size, wrong number of hashes, a hash not 32 bytes).
    """
    _check_size(proof.tree_size, "tree size")
    _check_hashes((leaf, *proof.hashes))
    if len(proof.hashes) > MAX_PROOF_HASHES:
        raise MerkleError("inclusion proof has too many hashes", MerkleReason.MALFORMED)
    if not 0 <= proof.leaf_index < proof.tree_size:
        raise MerkleError("leaf index is not below the tree size", MerkleReason.MALFORMED)
    fn, sn = proof.leaf_index, proof.tree_size - 1
    r = leaf
    for p in proof.hashes:
        if sn == 0:
            raise MerkleError("inclusion proof is too long", MerkleReason.MALFORMED)
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            # A left child on the tree's right edge has no sibling on the levels it skips.
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise MerkleError("inclusion proof is too short", MerkleReason.MALFORMED)
    return r


def verify_inclusion(leaf: bytes, proof: InclusionProof, root: bytes) -> None:
    """Check that leaf hash ``leaf`` is leaf ``proof.leaf_index`` of the tree with ``root``.

    Raises ``MerkleError``: ``MALFORMED`` for a proof of the wrong shape, ``PROOF_MISMATCH``
    when it leads to another root (the leaf, a proof hash or the root was changed).
    """
    _check_hashes((root,))
    computed = root_from_inclusion_proof(leaf, proof)
    if not hmac.compare_digest(computed, root):
        raise MerkleError("inclusion proof does not lead to the root", MerkleReason.PROOF_MISMATCH)


def verify_consistency(proof: ConsistencyProof, old_root: bytes, new_root: bytes) -> None:
    """Check that the tree with ``new_root`` extends the tree with ``old_root`` (RFC 9162
    §2.1.4.2).

    Sizes: ``0 <= old_size <= new_size``. Equal sizes need an empty proof and equal roots; the
    empty tree (``old_root`` must then be ``EMPTY_ROOT``) is a prefix of every tree and needs an
    empty proof. Raises ``MerkleError``: ``MALFORMED`` for a proof of the wrong shape,
    ``PROOF_MISMATCH`` when the proof does not lead to both roots (a fork or a tampered proof).
    """
    old, new, path = proof.old_size, proof.new_size, proof.hashes
    _check_size(old, "old size")
    _check_size(new, "new size")
    _check_hashes((old_root, new_root, *path))
    if old > new:
        raise MerkleError("old size is larger than new size", MerkleReason.MALFORMED)
    if len(path) > MAX_PROOF_HASHES:
        raise MerkleError("consistency proof has too many hashes", MerkleReason.MALFORMED)
    if old in (0, new):
        if path:
            raise MerkleError("consistency proof must be empty", MerkleReason.MALFORMED)
        expected_old = EMPTY_ROOT if old == 0 else new_root
        if not hmac.compare_digest(old_root, expected_old):
            raise MerkleError("roots are not consistent", MerkleReason.PROOF_MISMATCH)
        return
    # Step 1: a non-trivial proof is never empty.
    if not path:
        raise MerkleError("consistency proof is empty", MerkleReason.MALFORMED)
    # Step 2: when the old tree is a complete subtree its root is the proof's implicit start.
    hashes = list(path)
    if old & (old - 1) == 0:
        hashes.insert(0, old_root)
    # Steps 3 and 4.
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # Step 5.
    fr = sr = hashes[0]
    # Step 6.
    for c in hashes[1:]:
        if sn == 0:
            raise MerkleError("consistency proof is too long", MerkleReason.MALFORMED)
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    # Step 7.
    if sn != 0:
        raise MerkleError("consistency proof is too short", MerkleReason.MALFORMED)
    old_ok = hmac.compare_digest(fr, old_root)
    new_ok = hmac.compare_digest(sr, new_root)
    if not (old_ok and new_ok):
        raise MerkleError(
            "consistency proof does not lead to the roots", MerkleReason.PROOF_MISMATCH
        )


# --------------------------------------------------------------------------------------------
# The incremental log over a node store


class NodeStore(Protocol):
    """Where a ``MerkleLog`` keeps the hashes of complete subtrees.

    ``(level, index)`` names the root of leaves ``[index·2^level, (index+1)·2^level)``; level 0
    are the leaf hashes. Implementations: ``InMemoryNodeStore`` here, the gateway's SQLite and
    PostgreSQL stores (inside the transaction that stores the audit entry, so the entry, its
    leaf and the nodes it completes commit together or not at all).
    """

    def get(self, level: int, index: int) -> bytes | None:
        """The node's hash, or ``None`` if the store does not hold it."""
        ...

    def put(self, level: int, index: int, node: bytes) -> None:
        """Store a node. Must raise ``MerkleError`` (``NODE_CONFLICT``) rather than replace a
        node already stored with a different hash; storing the same hash again is harmless."""
        ...


class InMemoryNodeStore:
    """A ``NodeStore`` in a dict: for tests, adapters and ``audit verify``."""

    def __init__(self) -> None:
        self._nodes: dict[tuple[int, int], bytes] = {}

    def get(self, level: int, index: int) -> bytes | None:
        return self._nodes.get((level, index))

    def put(self, level: int, index: int, node: bytes) -> None:
        old = self._nodes.setdefault((level, index), node)
        if old != node:
            raise MerkleError(
                f"node ({level}, {index}) is already stored with another hash",
                MerkleReason.NODE_CONFLICT,
            )

    def __len__(self) -> int:
        return len(self._nodes)


class MerkleLog:
    """An append-only RFC 6962 tree of ``size`` leaves whose complete subtrees live in ``store``.

    Build one per transaction from the size the store holds (``MerkleLog(store, size)``); it is
    not thread-safe and needs no lock, since the store's transaction serialises appends.
    """

    def __init__(self, store: NodeStore, size: int = 0) -> None:
        _check_size(size, "tree size")
        self._store = store
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    # -- appending -----------------------------------------------------------------------------

    def append(self, leaf: bytes) -> TreeHead:
        """Append one leaf hash; store it and every subtree it completes. O(log n)."""
        self._append(leaf)
        return TreeHead(self._size, self.root())

    def append_many(self, leaves: Iterable[bytes]) -> TreeHead:
        """Append several leaf hashes (a group commit) and compute the root once."""
        for leaf in leaves:
            self._append(leaf)
        return TreeHead(self._size, self.root())

    def _append(self, leaf: bytes) -> None:
        _check_hashes((leaf,))
        index = self._size
        if index >= MAX_TREE_SIZE:
            raise MerkleError("the log is full", MerkleReason.MALFORMED)
        self._store.put(0, index, leaf)
        node, level = leaf, 0
        # The new leaf is a right child as long as its index's low bit is set: each such level
        # completes a subtree whose left half is already stored.
        while index & 1:
            node = node_hash(self._node(level, index - 1), node)
            index >>= 1
            level += 1
            self._store.put(level, index, node)
        self._size += 1

    # -- reading ---------------------------------------------------------------------------------

    def leaf_hash(self, index: int) -> bytes:
        """The leaf hash at ``index``."""
        if not 0 <= index < self._size:
            raise MerkleError("leaf index is not below the tree size", MerkleReason.MALFORMED)
        return self._node(0, index)

    def root(self, size: int | None = None) -> bytes:
        """The root of the tree's first ``size`` leaves (default: all). O(log n) reads."""
        size = self._size if size is None else size
        self._check_within(size)
        return self._range_hash(0, size)

    def tree_head(self, size: int | None = None) -> TreeHead:
        size = self._size if size is None else size
        return TreeHead(size, self.root(size))

    def inclusion_proof(self, index: int, size: int | None = None) -> InclusionProof:
        """RFC 9162 §2.1.3.1 ``PATH(index, D[size])``. O(log n) reads."""
        size = self._size if size is None else size
        self._check_within(size)
        if not 0 <= index < size:
            raise MerkleError("leaf index is not below the tree size", MerkleReason.MALFORMED)
        path: list[bytes] = []
        start, end = 0, size
        # Walk down from the root to the leaf, collecting the sibling of each step, then
        # reverse: the RFC orders the path from the leaf upwards.
        while end - start > 1:
            k = _split(end - start)
            if index < start + k:
                path.append(self._range_hash(start + k, end))
                end = start + k
            else:
                path.append(self._range_hash(start, start + k))
                start += k
        path.reverse()
        return InclusionProof(leaf_index=index, tree_size=size, hashes=tuple(path))

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> ConsistencyProof:
        """RFC 9162 §2.1.4.1 ``PROOF(old_size, D[new_size])``. O(log n) reads.

        Empty when ``old_size`` is 0 or equal to ``new_size``.
        """
        new_size = self._size if new_size is None else new_size
        self._check_within(new_size)
        if not 0 <= old_size <= new_size:
            raise MerkleError("old size is not between 0 and new size", MerkleReason.MALFORMED)
        path: list[bytes] = []
        if 0 < old_size < new_size:
            # SUBPROOF(m, D[start:end], b), unrolled: m counts the old tree's leaves inside the
            # current range, ``whole`` is the RFC's flag b (the range's left part is the whole
            # old tree, whose root the verifier already has).
            m, start, end, whole = old_size, 0, new_size, True
            while m != end - start:
                k = _split(end - start)
                if m <= k:
                    path.append(self._range_hash(start + k, end))
                    end = start + k
                else:
                    path.append(self._range_hash(start, start + k))
                    m -= k
                    start += k
                    whole = False
            if not whole:
                path.append(self._range_hash(start, end))
            path.reverse()
        return ConsistencyProof(old_size=old_size, new_size=new_size, hashes=tuple(path))

    # -- internals ------------------------------------------------------------------------------

    def _check_within(self, size: int) -> None:
        if not 0 <= size <= self._size:
            raise MerkleError(
                f"size {size} is beyond the log's {self._size} leaves", MerkleReason.MALFORMED
            )

    def _node(self, level: int, index: int) -> bytes:
        node = self._store.get(level, index)
        if node is None:
            raise MerkleError(f"node ({level}, {index}) is missing", MerkleReason.MISSING_NODE)
        return node

    def _range_hash(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for a range the RFC's recursion produces.

        Such a range starts at a multiple of a power of two at least as large as the range, so
        it splits, left to right, into complete subtrees of the sizes of ``end - start``'s
        1-bits, largest first — each one stored node.
        """
        if start == end:
            return EMPTY_ROOT
        subtrees: list[bytes] = []
        pos, remaining = start, end - start
        while remaining:
            level = remaining.bit_length() - 1
            width = 1 << level
            subtrees.append(self._node(level, pos >> level))
            pos += width
            remaining -= width
        return _fold_right(subtrees)
