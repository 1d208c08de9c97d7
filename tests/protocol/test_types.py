"""Identifier constraints refuse a trailing newline (Python's ``$`` would let it through)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from gateway.protocol.signed import Kid as SignedKid
from gateway.protocol.types import Hex32, Hex64, PartnerId
from keys.directory import Kid as DirectoryKid
from keys.directory import Oin
from keys.directory import PartnerId as DirectoryPartnerId

CASES: list[tuple[str, Any, str]] = [
    ("hex64", Hex64, "a" * 64),
    ("hex32", Hex32, "a" * 32),
    ("partner-id", PartnerId, "halt"),
    ("directory-partner-id", DirectoryPartnerId, "halt"),
    ("oin", Oin, "0" * 20),
    ("directory-kid", DirectoryKid, "b" * 64),
    ("signed-kid", SignedKid, "c" * 64),
]


@pytest.mark.parametrize(
    ("kind", "value"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES]
)
def test_valid_value_passes_and_trailing_newline_is_refused(kind: Any, value: str) -> None:
    assert msgspec.convert(value, kind) == value
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(value + "\n", kind)
