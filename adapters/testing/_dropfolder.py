"""What the fakes of drop-folder partner systems share (private to ``adapters.testing``; used
by the OM and Halt fakes): the folder layout from the adapter's development ``[system]``
table, writing a file the careful way, and reading back reports.

Nothing here uses the adapter's own file handling (``adapters/partners/_dropfolder.py``): a
fake that shared it would hide the adapter's bugs instead of finding them.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def system_table(default_toml: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The ``[system]`` table the adapter should run with: the development layout
    (``DEFAULT_SYSTEM_TOML``) with ``overrides``."""
    table: dict[str, Any] = tomllib.loads(default_toml)["system"]
    table.update(overrides)
    return table


def write_carefully(folder: Path, name: str, data: bytes) -> Path:
    """Write ``folder/name`` as a careful partner system does: a dot-named temp file, fsync,
    rename; the adapter never sees half a file."""
    tmp = folder / f".{name}.part"
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    final = folder / name
    tmp.replace(final)
    return final


def take_away(folder: Path, names: Iterable[str], imported: dict[str, bytes]) -> list[str]:
    """The partner system imports ``names`` from ``folder`` and removes them (as the real one
    does), keeping their bytes in ``imported``."""
    taken = []
    for name in names:
        path = folder / name
        imported[name] = path.read_bytes()
        path.unlink()
        taken.append(name)
    return taken


def reports(folder: Path, suffix: str) -> dict[str, str]:
    """``<name>`` → the text of ``<name><suffix>`` beside it (the adapter's refusal reports)."""
    if not folder.exists():
        return {}
    return {
        p.name.removesuffix(suffix): p.read_text(encoding="utf-8")
        for p in folder.glob(f"*{suffix}")
    }


def pending(folder: Path) -> list[str]:
    """Names still in ``folder`` (not yet taken by the adapter), dot-files left out."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
