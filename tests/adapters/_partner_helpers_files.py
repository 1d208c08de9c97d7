"""Helpers for the file-based partner adapters' tests (OM XML, Halt CSV).

* ``file_adapter`` opens an ``Adapter`` for a partner with a transport factory and a
  ``[system]`` table, on the real gateway with its manual clock; ``Net`` closes it.
* ``start_approach`` has Velsen (the coordinator, on the SDK's fake case system) issue and
  register a token for the given youths and send the approach-notice; the recipients' adapters
  take it in with ``receive_once``.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from adapters.base import Clock, Transport
from adapters.config import AdapterConfig, load_partner_dir
from adapters.engine import Adapter
from gateway.protocol.messages import PersonDetails
from gateway.protocol.types import new_pseudonym
from tests.adapters._partner_helpers_common import announce, open_adapter
from tests.adapters.conftest import BSN_A, BSN_B, Net
from tests.gateway.conftest import Token

TransportFactory = Callable[[AdapterConfig, Clock], Transport]

DAAN_BORN = datetime.date(2010, 5, 17)
SEM_BORN = datetime.date(2011, 1, 9)


def daan() -> PersonDetails:
    """A youth as Velsen's notice describes him (a fresh pseudonym each time)."""
    return PersonDetails(
        pseudonym=new_pseudonym(),
        given_name="Daan",
        family_name="de Vries",
        date_of_birth=DAAN_BORN,
        bsn=BSN_A,
    )


def sem(*, bsn: str | None = BSN_B) -> PersonDetails:
    return PersonDetails(
        pseudonym=new_pseudonym(),
        given_name="Sem",
        family_name="Bakker",
        date_of_birth=SEM_BORN,
        bsn=bsn,
    )


async def file_adapter(
    net: Net,
    partner: str,
    factory: TransportFactory,
    system: Mapping[str, Any],
    *,
    faults: Callable[[str], None] | None = None,
) -> Adapter:
    config = load_partner_dir(net.folder(partner))
    config = msgspec.structs.replace(config, system=dict(system))
    return await open_adapter(net, config, factory(config, net.gw.clock), faults=faults)


async def start_approach(
    net: Net, people: Sequence[PersonDetails], to: Sequence[str] = ("om", "halt")
) -> Token:
    """Velsen starts an approach for ``people`` and sends the approach-notice to ``to``.

    Velsen's own local ids are the BSNs; the recipients still have to ``receive_once``."""
    token, _velsen = await announce(net, people, to)
    return token
