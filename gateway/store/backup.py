"""Backup and restore of the embedded SQLite store (``ketenpost store backup|restore``).

Rules kept here (docs/operations.md "Backup and restore"):

* **Backup** copies the live database with SQLite's online backup API from a connection of its
  own, in **one step**: one read transaction, so the copy is one committed state of the store
  (WAL lets the gateway go on committing meanwhile; a stepwise copy would restart whenever the
  gateway wrote). The copy is made in a temporary file beside the target, switched out of WAL
  (one self-contained file), fsync'd, checked with ``PRAGMA integrity_check``, and only then
  linked to its name with ``os.link``, which fails rather than overwrite: a backup never
  replaces an existing file. The manifest (``<backup>.manifest.json``) is created the same way
  and names the newest checkpoint in the copy, the schema version, the time, the size and the
  SHA-256 of the file.
* **Restore** verifies the backup first (manifest present and of this format, SHA-256 and
  size as in the manifest, integrity check, the newest checkpoint and schema version as in the
  manifest) and then replaces the store file only while **no other process holds the store**:
  it takes the gateway's lock file (``<store>.lock``, held by ``ketenpost serve`` for its
  lifetime) and an exclusive SQLite lock on the current database, and refuses if either is
  held. The current database (with its WAL, if any) is moved aside to
  ``<store>.pre-restore-<UTC time>``, never deleted; the verified copy is renamed into place and
  the directory fsync'd.
* The restore does **not** touch the published mark (``gateway.published``): the next ``serve``
  sees a store older than what it published and refuses until started with ``--after-restore``.
* PostgreSQL is backed up with its own tools (base backup and WAL archiving, point-in-time
  recovery): ``PostgresBackupRefusedError`` says so and names the procedure.
* Every failure raises ``BackupError`` (or a subclass) with a one-line message.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from gateway.published import fsync_directory
from gateway.store.errors import StoreError
from gateway.store.migrations import LATEST_VERSION

MANIFEST_FORMAT: Final = "ketenpost-sqlite-backup/1"
MANIFEST_SUFFIX: Final = ".manifest.json"
LOCK_SUFFIX: Final = ".lock"
POSTGRES_PROCEDURE: Final = (
    "a PostgreSQL store is backed up with PostgreSQL's own tools: a base backup "
    "(pg_basebackup or pgBackRest) plus continuous WAL archiving, restored by point-in-time "
    "recovery; see docs/operations.md, 'Backup and restore', PostgreSQL"
)
_CHUNK: Final = 1 << 20


class BackupError(StoreError):
    """A backup or restore failed or was refused; the message says why."""


class PostgresBackupRefusedError(BackupError):
    """``store backup|restore`` was asked for a PostgreSQL store."""

    def __init__(self) -> None:
        super().__init__(POSTGRES_PROCEDURE)


class StoreInUseError(BackupError):
    """Another process (a running gateway) holds the store."""


@dataclass(frozen=True)
class Manifest:
    """What a backup holds, written beside it."""

    created_at: int
    schema_version: int
    checkpoint_size: int
    checkpoint_root: bytes
    checkpoint: str
    sha256: str
    bytes: int
    source: str

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "created_at": self.created_at,
            "created": _iso(self.created_at),
            "schema_version": self.schema_version,
            "checkpoint": {
                "size": self.checkpoint_size,
                "root": base64.b64encode(self.checkpoint_root).decode(),
                "note": self.checkpoint,
            },
            "sha256": self.sha256,
            "bytes": self.bytes,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, doc: Any) -> Manifest:
        if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
            raise BackupError(f"the manifest is not a {MANIFEST_FORMAT} manifest")
        try:
            cp = doc["checkpoint"]
            return cls(
                created_at=int(doc["created_at"]),
                schema_version=int(doc["schema_version"]),
                checkpoint_size=int(cp["size"]),
                checkpoint_root=base64.b64decode(cp["root"], validate=True),
                checkpoint=str(cp["note"]),
                sha256=str(doc["sha256"]),
                bytes=int(doc["bytes"]),
                source=str(doc["source"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BackupError(f"the manifest does not parse: {exc}") from None


@dataclass(frozen=True)
class Restored:
    store: Path
    backup: Path
    moved_aside: Path | None
    manifest: Manifest


def manifest_path(backup: Path) -> Path:
    return backup.with_name(backup.name + MANIFEST_SUFFIX)


def lock_path(store: Path) -> Path:
    return store.with_name(store.name + LOCK_SUFFIX)


@contextlib.contextmanager
def store_lock(store: Path, *, holder: str) -> Iterator[None]:
    """Hold ``<store>.lock`` (an advisory ``flock``) for the block. Raises ``StoreInUseError``
    at once when another process holds it: ``ketenpost serve`` holds it while it runs."""
    path = lock_path(store)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise BackupError(f"cannot open the lock file {path}: {exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreInUseError(
                f"another process holds {path}: a gateway is running on {store}; stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{holder} {os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def backup_sqlite(store: Path, out: Path, *, now: int | None = None) -> Manifest:
    """Copy the live store at ``store`` to the new file ``out`` and write its manifest.

    Raises ``BackupError``: ``out`` or its manifest exists, the store cannot be read, or the
    copy fails its integrity check (nothing is left under ``out`` then).
    """
    now = int(time.time()) if now is None else now
    manifest_file = manifest_path(out)
    for target in (out, manifest_file):
        if target.exists():
            raise BackupError(f"{target} exists; a backup never overwrites a file")
    if not store.exists():
        raise BackupError(f"no store at {store}")
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        _copy(store, partial)
        schema, size, root, note = _inspect(partial)
        digest, length = _sha256(partial)
        manifest = Manifest(now, schema, size, root, note, digest, length, str(store))
        try:
            os.link(partial, out)
        except FileExistsError:
            raise BackupError(f"{out} exists; a backup never overwrites a file") from None
        _create_exclusive(manifest_file, json.dumps(manifest.to_json(), indent=2) + "\n")
        fsync_directory(out.parent)
    except OSError as exc:
        raise BackupError(f"backup failed: {exc}") from None
    finally:
        with contextlib.suppress(OSError):
            partial.unlink()
    return manifest


def _copy(store: Path, target: Path) -> None:
    # A read-only connection: the backup never writes to the live store.
    source = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=30.0)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        dest = sqlite3.connect(target, isolation_level=None)
        try:
            # pages=-1: the whole database in one step, one read transaction: one state.
            source.backup(dest, pages=-1)
            # One self-contained file: no WAL beside the backup.
            dest.execute("PRAGMA journal_mode = DELETE").fetchone()
        finally:
            dest.close()
    except sqlite3.Error as exc:
        raise BackupError(f"cannot copy {store}: {exc}") from None
    finally:
        source.close()
    with target.open("rb") as f:
        os.fsync(f.fileno())


def _inspect(path: Path) -> tuple[int, int, bytes, str]:
    """Integrity check; (schema version, newest checkpoint size, root, note)."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open {path}: {exc}") from None
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
        if [r[0] for r in rows] != ["ok"]:
            detail = "; ".join(str(r[0]) for r in rows[:5])
            raise BackupError(f"{path} fails the integrity check: {detail}")
        schema = int(conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0] or 0)
        row = conn.execute(
            "SELECT size, root, note FROM checkpoints ORDER BY size DESC LIMIT 1"
        ).fetchone()
    except sqlite3.Error as exc:
        raise BackupError(f"{path} is not a Ketenpost store: {exc}") from None
    finally:
        conn.close()
    if row is None:
        return schema, 0, b"", ""
    return schema, int(row[0]), bytes(row[1]), str(row[2])


def _sha256(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    length = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            length += len(chunk)
    return digest.hexdigest(), length


def _create_exclusive(path: Path, text: str) -> None:
    with path.open("x", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def verify_backup(backup: Path) -> Manifest:
    """Check ``backup`` against its manifest (module rules); the manifest. ``BackupError``."""
    try:
        doc = json.loads(manifest_path(backup).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackupError(f"no manifest {manifest_path(backup)} beside the backup") from None
    except (OSError, ValueError) as exc:
        raise BackupError(f"cannot read the manifest: {exc}") from None
    manifest = Manifest.from_json(doc)
    try:
        digest, length = _sha256(backup)
    except OSError as exc:
        raise BackupError(f"cannot read {backup}: {exc}") from None
    if (digest, length) != (manifest.sha256, manifest.bytes):
        raise BackupError(f"{backup} is not the file its manifest describes (SHA-256 or size)")
    schema, size, root, _note = _inspect(backup)
    if (schema, size, root) != (
        manifest.schema_version,
        manifest.checkpoint_size,
        manifest.checkpoint_root,
    ):
        raise BackupError(f"{backup}: newest checkpoint or schema differs from the manifest")
    if schema > LATEST_VERSION:
        raise BackupError(
            f"{backup} has schema version {schema}; this ketenpost knows up to {LATEST_VERSION}"
        )
    return manifest


def restore_sqlite(store: Path, backup: Path, *, now: int | None = None) -> Restored:
    """Replace the store file with the verified ``backup``. Raises ``StoreInUseError`` while a
    gateway (or any other process) holds the store, ``BackupError`` for a backup that does not
    verify. The old database is moved aside, never deleted."""
    now = int(time.time()) if now is None else now
    manifest = verify_backup(backup)
    staged = store.with_name(f".{store.name}.restore-{os.getpid()}")
    aside: Path | None = None
    try:
        with store_lock(store, holder="restore"):
            _require_unheld(store)
            _stage(backup, staged)
            if store.exists():
                stamp = datetime.datetime.fromtimestamp(now, tz=datetime.UTC)
                aside = store.with_name(f"{store.name}.pre-restore-{stamp:%Y%m%dT%H%M%SZ}")
                if aside.exists():
                    raise BackupError(f"{aside} exists; not overwriting it")
                os.rename(store, aside)
                for suffix in ("-wal", "-journal"):
                    side = store.with_name(store.name + suffix)
                    if side.exists():
                        os.rename(side, aside.with_name(aside.name + suffix))
            # The shared-memory index belongs to the database moved aside; it is rebuilt.
            with contextlib.suppress(FileNotFoundError):
                store.with_name(store.name + "-shm").unlink()
            os.rename(staged, store)
            fsync_directory(store.parent)
    except OSError as exc:
        raise BackupError(f"restore failed: {exc}") from None
    finally:
        with contextlib.suppress(OSError):
            staged.unlink()
    return Restored(store, backup, aside, manifest)


def _require_unheld(store: Path) -> None:
    """Refuse while any connection is open on ``store`` (a gateway without the lock file, a
    shell): an exclusive lock is only granted when no one else holds the database. Closing
    the connection checkpoints any WAL into the file, so the file moved aside is whole."""
    if not store.exists():
        return
    try:
        conn = sqlite3.connect(store, isolation_level=None, timeout=0)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open {store}: {exc}") from None
    try:
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        conn.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        raise StoreInUseError(
            f"{store} is in use by another process ({exc}); stop the gateway first"
        ) from None
    finally:
        conn.close()


def _stage(backup: Path, staged: Path) -> None:
    with backup.open("rb") as src, staged.open("xb") as dst:
        while chunk := src.read(_CHUNK):
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    _inspect(staged)


def _iso(at: int) -> str:
    return datetime.datetime.fromtimestamp(at, tz=datetime.UTC).isoformat().replace("+00:00", "Z")


__all__ = [
    "BackupError",
    "Manifest",
    "PostgresBackupRefusedError",
    "Restored",
    "StoreInUseError",
    "backup_sqlite",
    "manifest_path",
    "restore_sqlite",
    "store_lock",
    "verify_backup",
]
