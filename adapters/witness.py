"""Witnessing the gateway's audit log: keep every checkpoint seen, prove they are consistent.

Rules kept here:

* A checkpoint counts only after its signature verified with a ``sign`` key of the
  directory's gateway entry, under the log's origin (C2SP: the key name is the origin).
* The origin is pinned: from the ``origin`` argument when configured, else on first sight in
  ``adapter.db`` (trust on first use), and a checkpoint for another origin is refused after.
* Every verified checkpoint is kept. Each new one is compared with the largest kept: a head
  (``GET /v1/audit/checkpoint``) smaller than a tree seen before, the same size with another
  root, or a consistency proof that does not verify is an **inconsistency**: the gateway showed
  two histories. That raises ``WitnessAlarm``; the engine counts it, logs it and turns
  ``/healthz`` red. A checkpoint from an older receipt is fine if it is consistent with the
  largest one (receipts are returned again for a resubmitted envelope).
* Consistency proofs come from the gateway, which is the party being checked; a proof it cannot
  give (an error answer) is not an inconsistency but is retried at the next observation.
* **Inclusion pending.** An acceptance receipt without its audit entry (made before receipts
  carried one) is checked against the leaf the gateway serves at ``leaf_index``. When that
  fetch fails (unreachable, a refusal) nothing wrong has been shown: the row is ``accepted``
  and its message id is kept in ``PendingInclusions`` to be checked again with bounded
  retries. Only an answer that is wrong (a proof that does not lead to the signed root, a
  malformed answer) makes a row ``disputed``. The pending set is one JSON document in
  ``adapter.db``'s settings, written in one statement, so it survives a restart.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass

from adapters.errors import AdapterError
from adapters.outbox import AdapterStore, CheckpointRow
from gateway.protocol.checkpoint import (
    Checkpoint,
    CheckpointError,
    parse_checkpoint,
    verify_checkpoint,
)
from gateway.protocol.merkle import ConsistencyProof, MerkleError, verify_consistency
from keys import Directory, KeyUse

ORIGIN_SETTING = "checkpoint_origin"
INCLUSION_SETTING = "inclusion_pending"

ConsistencyFetch = Callable[[int, int], Awaitable[Sequence[bytes]]]


class CheckpointInvalidError(AdapterError):
    """A checkpoint does not verify (signature, key, origin, form)."""


class WitnessAlarm(AdapterError):
    """The gateway showed checkpoints that cannot both be true."""


class Witness:
    """Checks and keeps checkpoints in ``store``."""

    def __init__(self, store: AdapterStore, origin: str | None = None) -> None:
        self._store = store
        self._origin = origin

    def verify(self, note: str, directory: Directory, now: int) -> Checkpoint:
        """Verify ``note``'s gateway signature and origin; ``CheckpointInvalidError``."""
        try:
            origin = self._origin or self._store.setting(ORIGIN_SETTING)
            if origin is None:
                origin = parse_checkpoint(note).origin
            last: CheckpointError | None = None
            for key in directory.gateway.keys:
                if key.use is not KeyUse.SIGN:
                    continue
                try:
                    checkpoint = verify_checkpoint(note, origin, origin, key.public)
                except CheckpointError as exc:
                    last = exc
                    continue
                if self._store.setting(ORIGIN_SETTING) is None:
                    self._store.set_setting(ORIGIN_SETTING, origin)
                return checkpoint
        except CheckpointError as exc:
            raise CheckpointInvalidError(f"{exc.reason.value}: {exc}") from None
        detail = f"{last.reason.value}: {last}" if last else "the gateway has no sign key"
        raise CheckpointInvalidError(detail)

    async def observe(
        self, checkpoint: Checkpoint, prove: ConsistencyFetch, now: int, *, head: bool
    ) -> None:
        """Keep ``checkpoint`` after checking it against the largest one kept.

        ``head``: it is the gateway's current head, which must never be smaller than a tree
        seen before. Raises ``WitnessAlarm`` on an inconsistency (the checkpoint is kept as
        evidence), ``AdapterError`` if a proof could not be fetched.
        """
        last = self._store.last_checkpoint()
        size, root = checkpoint.size, checkpoint.root_hash
        try:
            await self._compare(last, size, root, prove, head=head)
        except WitnessAlarm:
            # Kept as the evidence of the alarm.
            self._store.keep_checkpoint(size, root, checkpoint.text, now)
            raise
        # Not kept when a proof could not be fetched (that raised above): it is observed again.
        self._store.keep_checkpoint(size, root, checkpoint.text, now)

    @staticmethod
    async def _compare(
        last: CheckpointRow | None, size: int, root: bytes, prove: ConsistencyFetch, *, head: bool
    ) -> None:
        if last is None or (last.size == size and last.root == root):
            return
        if last.size == size:
            raise WitnessAlarm(f"two different roots for tree size {size}")
        if head and size < last.size:
            raise WitnessAlarm(f"the log head shrank from {last.size} to {size} entries")
        old_size, old_root, new_size, new_root = (
            (last.size, last.root, size, root)
            if size > last.size
            else (size, root, last.size, last.root)
        )
        if old_size == 0:
            return
        hashes = await prove(old_size, new_size)
        try:
            verify_consistency(
                ConsistencyProof(old_size=old_size, new_size=new_size, hashes=tuple(hashes)),
                old_root,
                new_root,
            )
        except MerkleError as exc:
            raise WitnessAlarm(
                f"tree {new_size} is not consistent with tree {old_size}: {exc}"
            ) from None


@dataclass(frozen=True)
class PendingInclusion:
    """An accepted message whose receipt's inclusion proof is still to be checked.

    ``attempts`` counts failed checks; ``abandoned`` is set when the retries ran out (an alarm
    was raised then); the entry stays as the record of it.
    """

    message_id: str
    attempts: int
    next_check_at: int
    detail: str
    abandoned: bool = False


class PendingInclusions:
    """The "accepted, inclusion pending" set in ``store`` (see the module rules)."""

    def __init__(self, store: AdapterStore) -> None:
        self._store = store

    def _load(self) -> dict[str, PendingInclusion]:
        raw = self._store.setting(INCLUSION_SETTING)
        items = json.loads(raw) if raw else []
        return {item["message_id"]: PendingInclusion(**item) for item in items}

    def _save(self, items: dict[str, PendingInclusion]) -> None:
        self._store.set_setting(
            INCLUSION_SETTING, json.dumps([asdict(i) for i in items.values()], sort_keys=True)
        )

    def all(self) -> list[PendingInclusion]:
        return list(self._load().values())

    def due(self, now: int) -> list[PendingInclusion]:
        """Entries not abandoned whose next check is due at ``now``."""
        return [i for i in self._load().values() if not i.abandoned and i.next_check_at <= now]

    def put(self, item: PendingInclusion) -> None:
        items = self._load()
        items[item.message_id] = item
        self._save(items)

    def remove(self, message_id: str) -> None:
        items = self._load()
        if items.pop(message_id, None) is not None:
            self._save(items)
