"""The restore guard: the highest audit checkpoint this gateway has published, kept outside
the store, and the start-up check against it.

Rules kept here (issue 7 item 2, docs/operations.md "Backup and restore"):

* **The mark.** ``PublishedMark`` is the size, root and signed note of the largest checkpoint the
  gateway has committed (and so may have handed out in a receipt or at
  ``GET /v1/audit/checkpoint``). It lives in a small JSON file **outside** the store
  (``<sqlite file>.published`` by default), so restoring the store from a backup cannot restore
  the mark with it. The file is replaced atomically (temporary file, fsync, rename, fsync of the
  directory) and only ever moves forward, except by ``reset`` after an explained restore.
* **Only committed heads are recorded.** The mark is read from ``Store.audit_head`` after the
  commit, never from the signer inside the transaction: a checkpoint of a batch whose commit
  failed never reaches the mark, so a crash can never leave the mark ahead of the store. The
  price is a lag: ``serve`` records the head every ``RECORD_INTERVAL_S`` and once more when it
  stops, so a checkpoint handed out in the last interval before a crash may be missing from the
  mark. A restore is caught whenever the backup is older than that.
* **The check at start** (``guard``): the store's head must be the mark's tree or a consistent
  extension of it (the same consistency proof a witness demands). A store that is **behind**
  the mark was restored: ``RestoreRefusedError`` unless the operator passed ``--after-restore``,
  which appends a signed ``restore`` audit entry and resets the mark to the new head. A store
  that is as large but **inconsistent** is another history: refused always, also with the
  flag. ``--after-restore`` on a store that is not behind is refused too, so the flag cannot
  sit in a unit file and silently wave through the next restore.
* **The restore entry** is metadata only: ``decision = restore``, ``reason =
  restored_from_backup``, ``count`` = how many audit entries of the published history the store
  no longer has. Its own leaf index is the restored head's size (``to``); ``to + count`` is the
  published size (``from``). The published root and note are logged and kept in the mark's
  ``previous`` field; the entry format has no field for them yet (see the report of issue 7).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from gateway.errors import GatewayError
from gateway.protocol.auditentry import AuditDecision, AuditEntry, seal_entry
from gateway.protocol.merkle import ConsistencyProof, MerkleError, verify_consistency
from gateway.store.base import AuditHead, AuditRecord

logger = logging.getLogger("gateway.published")

# How often ``serve`` reads the committed head and advances the mark, in seconds: the longest a
# published checkpoint may be missing from the mark after a crash.
RECORD_INTERVAL_S: Final = 1.0
MARK_FORMAT: Final = "ketenpost-published/1"
RESTORE_REASON: Final = "restored_from_backup"
# The suffix of the default mark file beside a SQLite store.
MARK_SUFFIX: Final = ".published"


class PublishedError(GatewayError):
    """The mark file cannot be read or written, or does not parse."""


class RestoreRefusedError(GatewayError):
    """The store does not continue the published history; ``serve`` must not start."""


@dataclass(frozen=True)
class PublishedMark:
    size: int
    root: bytes
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "root": base64.b64encode(self.root).decode(),
            "checkpoint": self.note,
        }

    @classmethod
    def from_json(cls, doc: Any) -> PublishedMark:
        try:
            size, root, note = doc["size"], doc["root"], doc.get("checkpoint", "")
            decoded = base64.b64decode(root, validate=True)
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise PublishedError(f"published mark does not parse: {exc}") from None
        if not isinstance(size, int) or size < 0 or not isinstance(note, str):
            raise PublishedError("published mark does not parse: size or checkpoint")
        return cls(size, decoded, note)

    @classmethod
    def of(cls, head: AuditHead) -> PublishedMark:
        return cls(head.size, head.root, head.checkpoint)


def default_mark_path(sqlite_path: Path) -> Path:
    """``<store file>.published``: beside the store, outside it."""
    return sqlite_path.with_name(sqlite_path.name + MARK_SUFFIX)


class MarkFile:
    """The mark on disk. Reads and writes are small and synchronous (a local file).

    ``advance`` and ``reset`` hold one lock across their read and write, so they may run on
    worker threads (``serve`` advances off the event loop): two advances never interleave, and
    a smaller head can never be renamed over a larger one that was recorded in between.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def read(self) -> PublishedMark | None:
        """The recorded mark; None when nothing was recorded yet. Raises ``PublishedError``."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise PublishedError(f"cannot read {self.path}: {exc}") from None
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise PublishedError(f"{self.path} is not JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != MARK_FORMAT:
            raise PublishedError(f"{self.path} is not a {MARK_FORMAT} file")
        return PublishedMark.from_json(doc.get("published"))

    def advance(self, head: AuditHead) -> bool:
        """Record ``head`` if it is larger than the recorded mark; True if it was written.
        Thread-safe: read, compare and write happen under the file's lock."""
        with self._lock:
            current = self.read()
            if current is not None and head.size <= current.size:
                return False
            self._write({"format": MARK_FORMAT, "published": PublishedMark.of(head).to_json()})
            return True

    def reset(self, head: AuditHead, previous: PublishedMark) -> None:
        """After an explained restore: the mark becomes ``head``; ``previous`` is kept beside
        it as the record of what was published before."""
        with self._lock:
            self._write(
                {
                    "format": MARK_FORMAT,
                    "published": PublishedMark.of(head).to_json(),
                    "previous": previous.to_json(),
                }
            )

    def _write(self, doc: dict[str, Any]) -> None:
        data = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
        directory = self.path.parent
        try:
            fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", dir=directory)
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            fsync_directory(directory)
        except OSError as exc:
            raise PublishedError(f"cannot write {self.path}: {exc}") from None


def fsync_directory(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class GuardedStore(Protocol):
    """What ``guard`` needs of the store (``SqliteStore`` and ``PostgresStore`` have it)."""

    async def audit_head(self) -> AuditHead: ...
    async def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]: ...
    async def record_audit(self, record: AuditRecord) -> int: ...


@dataclass(frozen=True)
class GuardOutcome:
    """What ``guard`` found: the head served from, and the restore entry's index if one was
    appended."""

    head: AuditHead
    restored_from: PublishedMark | None = None
    restore_index: int | None = None


async def guard(
    store: GuardedStore, marks: MarkFile, *, after_restore: bool, now: int
) -> GuardOutcome:
    """The start-up check (module rules). Raises ``RestoreRefusedError`` (do not serve) or
    ``PublishedError`` (the mark file is unusable: a person must look)."""
    mark = marks.read()
    head = await store.audit_head()
    if mark is None:
        if after_restore:
            raise RestoreRefusedError(
                f"--after-restore given, but no published checkpoint is recorded in "
                f"{marks.path}: start without it"
            )
        marks.advance(head)
        return GuardOutcome(head)
    if head.size >= mark.size:
        await _require_consistent(store, mark, head)
        if after_restore:
            raise RestoreRefusedError(
                f"--after-restore given, but the store (audit tree {head.size}) is not behind "
                f"the published checkpoint ({mark.size}): start without it"
            )
        marks.advance(head)
        return GuardOutcome(head)
    if not after_restore:
        raise RestoreRefusedError(
            f"the store's audit tree ({head.size} entries) is older than the checkpoint this "
            f"gateway has published ({mark.size} entries, recorded in {marks.path}): it was "
            "restored from a backup. Partners hold receipts the store no longer knows. If this "
            "restore is intended, start once with --after-restore: it records a signed restore "
            "event in the audit log (see docs/operations.md, 'Backup and restore')"
        )
    entry = AuditEntry(
        time=now,
        decision=AuditDecision.RESTORE,
        reason=RESTORE_REASON,
        count=mark.size - head.size,
    )
    sealed = seal_entry(entry)
    index = await store.record_audit(
        AuditRecord(entry=sealed.entry_bytes, salt=sealed.salt, token_id=None)
    )
    new_head = await store.audit_head()
    marks.reset(new_head, mark)
    logger.warning(
        "store_restore_recorded",
        extra={
            "from_size": mark.size,
            "from_root": base64.b64encode(mark.root).decode(),
            "to_size": head.size,
            "restore_index": index,
            "new_size": new_head.size,
        },
    )
    return GuardOutcome(new_head, restored_from=mark, restore_index=index)


async def _require_consistent(store: GuardedStore, mark: PublishedMark, head: AuditHead) -> None:
    if head.size == mark.size:
        if head.root != mark.root:
            raise RestoreRefusedError(
                f"the store's audit tree of {head.size} entries has another root than the "
                f"checkpoint this gateway published ({marks_hint(mark)}): this store is another "
                "history, not a restore of this gateway's; refusing to serve"
            )
        return
    if mark.size == 0:
        return
    hashes = await store.consistency_proof(mark.size, head.size)
    try:
        verify_consistency(
            ConsistencyProof(old_size=mark.size, new_size=head.size, hashes=tuple(hashes)),
            mark.root,
            head.root,
        )
    except MerkleError as exc:
        raise RestoreRefusedError(
            f"the store's audit tree ({head.size}) is not consistent with the checkpoint this "
            f"gateway published ({marks_hint(mark)}): {exc}; refusing to serve"
        ) from None


def marks_hint(mark: PublishedMark) -> str:
    return f"size {mark.size}, root {base64.b64encode(mark.root).decode()}"


__all__ = [
    "RECORD_INTERVAL_S",
    "GuardOutcome",
    "MarkFile",
    "PublishedError",
    "PublishedMark",
    "RestoreRefusedError",
    "default_mark_path",
    "guard",
]
