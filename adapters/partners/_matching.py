"""Linking the persons of an approach-notice to a partner's own ids (private to
``adapters.partners``).

An approach-notice names each youth by pseudonym with identifying details (what the
recipient's role may hold); the recipient's adapter links the pseudonym to its own id for that
person (dossier number, person number, client number). The rules kept here:

* **Never a guess.** Exactly one registered person matches, or none does: a wrong link would
  send one youth's case to another youth's file, which is worse than no link (a person at the
  partner then links it by hand).
* **By BSN first**, when the notice carries one and the register knows it; otherwise by family
  name and date of birth (and the first name when the notice gives one), among registered
  persons whose BSN does not contradict the notice's. A name alone never matches.
* **Names compare folded**: case, diacritics, hyphens and spacing do not tell two Dutch names
  apart (``normalise_name``).

A partner whose register is shaped differently (welfare's ``tussenvoegsel`` column, looked up
by date of birth in SQL) keeps its own rule next to its register and uses ``normalise_name``.
"""

from __future__ import annotations

import datetime
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.protocol.messages import PersonDetails


def normalise_name(value: str) -> str:
    """Case, accents, hyphens and spacing folded: ``"  de  Vriës"`` → ``"de vries"``."""
    decomposed = unicodedata.normalize("NFKD", value)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(stripped.casefold().replace("-", " ").split())


@dataclass(frozen=True)
class RegisteredPerson:
    """One person in a partner system's register: the local id and what identifies them."""

    local_id: str
    given_names: str
    family_name: str
    date_of_birth: datetime.date
    bsn: str | None = None


def match_person(person: PersonDetails, register: Sequence[RegisteredPerson]) -> str | None:
    """The local id of the one registered person ``person`` is, or ``None``.

    By BSN when the notice carries one and the register knows it; otherwise by family name,
    date of birth and (when given) first name, among registered persons whose BSN does not
    contradict the notice's. A name alone never matches, and two candidates match none: a
    wrong link would send one youth's case to another's file.
    """
    if person.bsn is not None:
        by_bsn = [r for r in register if r.bsn == person.bsn]
        if len(by_bsn) == 1:
            return by_bsn[0].local_id
        if by_bsn:
            return None
    if person.family_name is None or person.date_of_birth is None:
        return None
    family = normalise_name(person.family_name)
    given = normalise_name(person.given_name) if person.given_name else None
    candidates = [
        r
        for r in register
        if r.date_of_birth == person.date_of_birth
        and normalise_name(r.family_name) == family
        and (person.bsn is None or r.bsn is None or r.bsn == person.bsn)
        and (given is None or given in normalise_name(r.given_names).split())
    ]
    return candidates[0].local_id if len(candidates) == 1 else None


def match_persons(
    persons: Sequence[PersonDetails], register: Sequence[RegisteredPerson]
) -> dict[str, str]:
    """pseudonym → local id for the persons found (exactly once) in ``register``."""
    out: dict[str, str] = {}
    for person in persons:
        local = match_person(person, register)
        if local is not None:
            out[person.pseudonym] = local
    return out
