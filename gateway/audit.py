"""``ketenpost audit verify``: recompute the audit log from its leaves and check it all.

Rules kept here:

* Trusts nothing the store says about itself: the tree is recomputed from the stored leaf
  hashes (RFC 9162, ``merkle.root_of``); every stored checkpoint must carry a valid signature
  of the gateway key for the configured origin and name the root of exactly that many leaves;
  every entry still stored (with its salt) must be what its leaf commits to. An entry deleted
  at its retention deadline (no entry, no salt) is fine: its leaf stays.
* The first failure raises ``AuditVerifyError`` naming the leaf index or checkpoint size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.errors import GatewayError
from gateway.protocol.auditentry import AuditEntryError, entry_leaf
from gateway.protocol.checkpoint import CheckpointError, verify_checkpoint
from gateway.protocol.merkle import leaf_hash, root_of


class AuditVerifyError(GatewayError):
    """The audit log does not verify; the message says where."""


@dataclass(frozen=True)
class AuditReport:
    leaves: int
    entries_checked: int
    checkpoints_checked: int


def verify_log(
    leaves: Sequence[tuple[int, bytes, bytes | None, bytes | None]],
    checkpoints: Sequence[str],
    *,
    origin: str,
    public_key: bytes,
) -> AuditReport:
    """Check leaves (``(index, leaf hash, entry, salt)`` in order) and checkpoints."""
    hashes: list[bytes] = []
    entries = 0
    for position, (index, stored, entry, salt) in enumerate(leaves):
        if index != position:
            raise AuditVerifyError(f"leaf {position} is missing (found index {index})")
        if entry is not None and salt is not None:
            try:
                computed = leaf_hash(entry_leaf(entry, salt))
            except AuditEntryError as exc:
                raise AuditVerifyError(f"leaf {index}: {exc}") from None
            if computed != stored:
                raise AuditVerifyError(f"leaf {index}: the entry does not match its leaf hash")
            entries += 1
        elif (entry is None) != (salt is None):
            raise AuditVerifyError(f"leaf {index}: an entry without its salt, or the reverse")
        hashes.append(stored)
    for note in checkpoints:
        try:
            checkpoint = verify_checkpoint(note, origin, origin, public_key)
        except CheckpointError as exc:
            raise AuditVerifyError(f"checkpoint: {exc}") from None
        if checkpoint.size > len(hashes):
            raise AuditVerifyError(
                f"checkpoint of size {checkpoint.size} is larger than the log ({len(hashes)})"
            )
        if root_of(hashes[: checkpoint.size]) != checkpoint.root_hash:
            raise AuditVerifyError(
                f"checkpoint of size {checkpoint.size}: root differs from the recomputed tree"
            )
    return AuditReport(len(hashes), entries, len(checkpoints))
