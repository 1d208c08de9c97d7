"""Drop folders shared with a partner system (private to ``adapters.partners``; used by the OM
XML and Halt CSV adapters).

The partner system and the adapter exchange files in folders both can see. The rules kept
here, whatever the file format:

* **Reading.** Only regular files are read (a symlink could point anywhere), never names
  starting with ``.`` (a careful writer writes ``.name.part`` and renames), and a file only once
  it is ``settle_s`` seconds old, which keeps a careless writer's half-written file from being
  read. A file larger than ``max_file_bytes`` is never read past the limit.
* **Moving a file away** (archived or failed) only while it still has the content that was
  read (``move_aside`` compares SHA-256): a file replaced after it was read stays and is read
  again.
* **Writing is atomic and never overwrites**: temp file (``.<name>.tmp``), fsync, a hard link to
  the final name (which fails rather than replace a file), fsync of the folder; the partner
  system never sees half a file and a power cut does not lose the name.
* **Written once per message.** A ledger (``Ledger``) remembers what was written even after the
  partner system took the file away, so a redelivery never makes a second file.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final

import msgspec

from adapters.base import DestinationRejectedError, Refusal
from adapters.errors import AdapterConfigError
from gateway.protocol.reasons import RejectionReason

logger = logging.getLogger(__name__)

_MESSAGE_ID: Final = re.compile(r"^[0-9a-f]{64}$")

# The ``[system]`` settings every drop-folder adapter has, with the same limits: a folder
# (relative to the partner folder), the largest file read (bytes), how old a file must be
# before it is read (seconds), and how many files one pull takes.
Folder = Annotated[str, msgspec.Meta(min_length=1)]
MaxFileBytes = Annotated[int, msgspec.Meta(ge=1024, le=256 * 1024 * 1024)]
SettleSeconds = Annotated[int, msgspec.Meta(ge=0, le=3600)]
MaxFilesPerPull = Annotated[int, msgspec.Meta(ge=1, le=10_000)]


# -- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DropLimits:
    """How a source reads its folder: sizes in bytes, times in seconds."""

    max_file_bytes: int
    settle_s: int
    max_files: int

    def settling(self, mtime_ns: int, now: int) -> bool:
        """Whether a file last written at ``mtime_ns`` may still be being written at ``now``."""
        return bool(self.settle_s) and now - mtime_ns // 1_000_000_000 < self.settle_s

    def too_large(self, path: Path) -> str:
        """The report for a file that was not read because it is larger than allowed."""
        return (
            f"the file is {path.stat().st_size} bytes; the limit is {self.max_file_bytes} "
            "bytes (max_file_bytes); it was not read"
        )


@dataclass(frozen=True)
class PickedFile:
    path: Path
    name: str
    digest: str


def candidates(folder: Path, suffix: str) -> list[tuple[int, str, Path]]:
    """Regular ``*<suffix>`` files not starting with ``.``, oldest first (creation order)."""
    found: list[tuple[int, str, Path]] = []
    for entry in os.scandir(folder):
        if entry.name.startswith(".") or not entry.name.lower().endswith(suffix):
            continue
        st = entry.stat(follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):  # a symlink could point anywhere: never followed
            logger.warning("dropfolder_skipped", extra={"file": entry.name})
            continue
        found.append((st.st_mtime_ns, entry.name, Path(entry.path)))
    found.sort()
    return found


def read_limited(path: Path, limit: int) -> bytes | None:
    """The file's bytes, or ``None`` when it holds more than ``limit`` bytes (read no more)."""
    with path.open("rb") as f:
        data = f.read(limit + 1)
    return None if len(data) > limit else data


def read_picked(path: Path, limit: int) -> tuple[bytes | None, str]:
    """The file's bytes (``None`` when larger than ``limit``) and its SHA-256, hashed from the
    bytes read when there are any, so the digest is of exactly what was read."""
    data = read_limited(path, limit)
    if data is None:
        return None, file_sha256(path)
    return data, hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# -- moving and writing ----------------------------------------------------------------------


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    """Create or truncate ``path`` (0640) and write ``data`` through to the disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new_file(folder: Path, name: str, data: bytes) -> bool:
    """Write ``folder/name`` atomically unless it exists; True if written.

    Temp file ``.<name>.tmp`` (the partner system never reads dot-files), fsync, then a hard
    link to the final name, which fails rather than replace an existing file, then fsync of
    the folder so the name survives a power cut.
    """
    final = folder / name
    if final.exists():
        return False
    tmp = folder / f".{name}.tmp"
    _write_synced(tmp, data)
    try:
        os.link(tmp, final)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(folder)
    return True


def replace_file(path: Path, data: bytes) -> None:
    """Write ``path`` atomically, replacing what was there (reports, ledger entries)."""
    tmp = path.with_name(f".{path.name}.tmp")
    _write_synced(tmp, data)
    tmp.replace(path)
    fsync_dir(path.parent)


def move_aside(path: Path, folder: Path, digest: str) -> Path | None:
    """Move ``path`` into ``folder`` under its own name (or ``stem.<hash>.suffix`` if a file of
    that name with other content is there). ``None`` if ``path`` is gone or no longer has
    ``digest`` — then it was replaced after it was read and must be read again."""
    try:
        if file_sha256(path) != digest:
            return None
    except FileNotFoundError:
        return None
    target = folder / path.name
    if target.exists():
        if file_sha256(target) == digest:
            path.unlink()
            fsync_dir(path.parent)
            return target
        target = folder / f"{path.stem}.{digest[:16]}{path.suffix}"
    path.replace(target)
    fsync_dir(folder)
    fsync_dir(path.parent)
    return target


def make_folders(folders: Iterable[Path]) -> None:
    """Create missing folders (a development deployment starts empty);
    ``AdapterConfigError`` when one cannot be made."""
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AdapterConfigError(f"[system]: cannot create {folder}: {exc}") from None


class Ledger:
    """What the adapter wrote into the partner's inbound folder, kept after the partner system
    took the file away: ``<folder>/<file name>.json`` holding the local ids it reported."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def get(self, name: str) -> dict[str, str] | None:
        try:
            data = (self.folder / f"{name}.json").read_bytes()
        except FileNotFoundError:
            return None
        entry = json.loads(data)
        return {str(k): str(v) for k, v in entry.get("local_ids", {}).items()}

    def put(self, name: str, local_ids: Mapping[str, str]) -> None:
        replace_file(
            self.folder / f"{name}.json",
            json.dumps({"local_ids": dict(local_ids)}, sort_keys=True).encode(),
        )


# -- names and reports -----------------------------------------------------------------------


def checked_message_id(message_id: str) -> str:
    """The message id, safe as a file name (the SDK checked the header; this is belt and
    braces against a path in a name)."""
    if not _MESSAGE_ID.match(message_id):
        raise DestinationRejectedError(RejectionReason.SCHEMA_INVALID, "message id is not 64 hex")
    return message_id


def refusal_file_name(refusal: Refusal, suffix: str) -> str:
    recipient = f"-{refusal.recipient}" if refusal.recipient else ""
    return f"weigering-{refusal.message_id}{recipient}{suffix}"


def refusal_report(
    partner: str, name: str, digest: str, report: str, now: int, retry_hint: str
) -> bytes:
    """The text put beside a refused file, for a person at the partner: what and why, never
    the file's content."""
    refused = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f"Ketenpost adapter ({partner}): this file was NOT sent.\n"
        f"file:     {name}\n"
        f"sha256:   {digest}\n"
        f"refused:  {refused}\n"
        f"reason:\n  {report.replace(chr(10), chr(10) + '  ')}\n\n"
        f"{retry_hint}\n"
    ).encode()
