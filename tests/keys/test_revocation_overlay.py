"""``keys.revocation.with_revocations``: partners' own revocations laid over a directory.

Named cases: per key the earliest ``revoked_at`` wins and the compromise window only widens (an
unknown time beats a known one, else the earliest known), whatever the directory says; a
statement about a key or partner the directory does not list changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import pytest

from keys.directory import Directory, DirectoryContents
from keys.revocation import KeyRevocation, statement_hash, with_revocations
from tests.keys.test_rotation import (
    DAY,
    HALT_ENCRYPT,
    HALT_SIGN,
    OM_SIGN,
    T0,
    _contents,
    _statement,
)


def _halt_encrypt(contents: DirectoryContents, **times: int | None) -> DirectoryContents:
    partners = tuple(
        msgspec.structs.replace(
            p,
            keys=tuple(
                msgspec.structs.replace(k, **times) if k.kid == HALT_ENCRYPT.kid else k
                for k in p.keys
            ),
        )
        for p in contents.partners
    )
    return msgspec.structs.replace(contents, partners=partners)


@dataclass(frozen=True)
class Case:
    directory: dict[str, int | None]
    statements: tuple[tuple[int, int | None], ...]  # (revoked_at, compromised_since)
    expected: tuple[int | None, int | None]


CASES = {
    "unknown-compromise": Case({}, ((T0, None),), (T0, None)),
    "known-compromise": Case({}, ((T0, T0 - DAY),), (T0, T0 - DAY)),
    "earliest-revocation-and-compromise": Case(
        {}, ((T0, T0 - DAY), (T0 - 10, T0 - 2 * DAY)), (T0 - 10, T0 - 2 * DAY)
    ),
    "unknown-beats-known": Case({}, ((T0, T0 - DAY), (T0 + 5, None)), (T0, None)),
    "directory-later-and-known-is-overruled": Case(
        {"revoked_at": T0 + DAY, "compromised_since": T0}, ((T0, None),), (T0, None)
    ),
    "directory-earlier-and-wider-stays": Case(
        {"revoked_at": T0 - DAY, "compromised_since": None}, ((T0, T0 - 5),), (T0 - DAY, None)
    ),
    "directory-known-compromise-before-revocation-counts": Case(
        {"compromised_since": T0 - 3 * DAY}, ((T0, T0 - DAY),), (T0, T0 - 3 * DAY)
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_the_strictest_revocation_wins(case: Case) -> None:
    base = Directory(_halt_encrypt(_contents(), **case.directory), version=7)
    statements = [
        _statement(HALT_ENCRYPT.kid, HALT_SIGN, since=since, at=at) for at, since in case.statements
    ]
    view = with_revocations(base, statements)
    assert view.version == 7
    _owner, key = view.key(HALT_ENCRYPT.kid)
    assert (key.revoked_at, key.compromised_since) == case.expected
    # Nothing else changes.
    others = [k for p in view.partners() for k in p.keys if k.kid != HALT_ENCRYPT.kid]
    assert others == [k for p in base.partners() for k in p.keys if k.kid != HALT_ENCRYPT.kid]


def test_no_statement_is_the_same_directory() -> None:
    base = Directory(_contents())
    assert with_revocations(base, []) is base


def test_a_statement_the_directory_cannot_place_changes_nothing() -> None:
    base = Directory(_contents())
    unknown = msgspec.structs.replace(_statement(HALT_ENCRYPT.kid, HALT_SIGN), kid="ab" * 32)
    foreign = _statement(OM_SIGN.kid, HALT_SIGN)  # names halt, but the key is the OM's
    assert with_revocations(base, [unknown, foreign]) is base


def test_the_statement_hash_ignores_how_the_json_was_spaced() -> None:
    statement = _statement(HALT_ENCRYPT.kid, HALT_SIGN)
    spaced = msgspec.json.format(msgspec.json.encode(statement), indent=4)
    again = msgspec.json.decode(spaced, type=KeyRevocation)
    assert statement_hash(again) == statement_hash(statement)
