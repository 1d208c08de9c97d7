"""Which identifying details of a youth each covenant role may hold (ADR 9).

An approach-notice tells each participant which pseudonym stands for which youth, with only the
details the recipient's role may hold. One rule for every sender of notices: the ZGW adapter
(``adapters.partners.zgw``) and ``ketenpost approach notice`` (``adapters.cli_partner``) both
call ``details_for_role``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

from gateway.protocol.messages import PersonDetails
from keys import Role


class Detail(enum.StrEnum):
    """An identifying detail of a youth an approach-notice may carry."""

    NAME = "name"
    DATE_OF_BIRTH = "date_of_birth"
    BSN = "bsn"
    ADDRESS = "address"


# What each recipient role may hold about the youth behind a pseudonym (data minimisation,
# AVG art. 5(1)(c)). Police, OM and Halt identify a youth in their own systems by name and date
# of birth. The CJG also gets the address (youth care visits the family) and the BSN, which
# youth-care providers must use (Jeugdwet art. 7.3.6). Welfare (jongerenwerk) works with the
# youth by name only. A participating municipality holds everything already (BRP).
ROLE_DETAILS: Final[Mapping[Role, frozenset[Detail]]] = {
    Role.MUNICIPALITY: frozenset(Detail),
    Role.POLICE: frozenset({Detail.NAME, Detail.DATE_OF_BIRTH}),
    Role.PROSECUTION: frozenset({Detail.NAME, Detail.DATE_OF_BIRTH}),
    Role.HALT: frozenset({Detail.NAME, Detail.DATE_OF_BIRTH}),
    Role.YOUTH_CARE: frozenset({Detail.NAME, Detail.DATE_OF_BIRTH, Detail.ADDRESS, Detail.BSN}),
    # Name and date of birth: a name alone cannot safely tell two clients of a welfare
    # organisation apart, and linking the wrong client would share a youth's case with the
    # wrong family. The address and BSN stay out (data minimisation; ADR 9).
    Role.WELFARE: frozenset({Detail.NAME, Detail.DATE_OF_BIRTH}),
}


def details_for_role(person: PersonDetails, role: Role) -> PersonDetails:
    """``person`` as an approach-notice to a partner of ``role`` carries it: the pseudonym and
    only the details ``ROLE_DETAILS`` lets that role hold, none for a role the table does not
    name (ADR 9). Pure; the command line's ``approach notice`` calls it too: one rule."""
    allowed = ROLE_DETAILS.get(role, frozenset())
    name = Detail.NAME in allowed
    return PersonDetails(
        pseudonym=person.pseudonym,
        given_name=person.given_name if name else None,
        family_name=person.family_name if name else None,
        date_of_birth=person.date_of_birth if Detail.DATE_OF_BIRTH in allowed else None,
        bsn=person.bsn if Detail.BSN in allowed else None,
        address=person.address if Detail.ADDRESS in allowed else None,
    )
