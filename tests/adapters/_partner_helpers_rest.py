"""Helpers for the REST partner adapters' end-to-end tests (police, CJG).

* ``open_partner_adapter`` writes a ``[system]`` table into the partner's copied folder,
  builds the transport through the registry (as ``ketenpost adapter run`` does) and opens an
  ``Adapter`` on the test's real gateway with its manual clock.
* ``start_approach`` has Velsen (the coordinator, on the SDK's fake case system) issue and
  register a token about ``YOUTHS`` and send the approach-notice; the caller lets each
  recipient's adapter take it in.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from adapters.config import load_partner_dir
from adapters.engine import Adapter
from adapters.registry import default_registry
from gateway.protocol.messages import PersonDetails
from gateway.protocol.types import new_pseudonym
from tests.adapters._partner_helpers_common import announce, open_adapter
from tests.adapters.conftest import BSN_A, BSN_B, Net
from tests.gateway.conftest import Token


@dataclass(frozen=True)
class Youth:
    given_name: str
    family_name: str
    date_of_birth: datetime.date
    bsn: str


DAAN = Youth("Daan", "de Vries", datetime.date(2010, 5, 17), BSN_A)
SEM = Youth("Sem", "Bakker", datetime.date(2011, 1, 9), BSN_B)
YOUTHS = (DAAN, SEM)


@dataclass(frozen=True)
class Approach:
    token: Token
    # BSN → pseudonym
    pseudonyms: dict[str, str]


def write_system(net: Net, partner: str, system_toml: str) -> None:
    """Replace the ``[system]`` table of the partner's adapter.toml (if any) by ours."""
    path = net.folder(partner) / "adapter.toml"
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"(?ms)^\[system\]\n.*?(?=^\[|\Z)", "", text)
    path.write_text(text.rstrip() + "\n\n" + system_toml, encoding="utf-8")


async def open_partner_adapter(
    net: Net,
    partner: str,
    system_toml: str,
    *,
    faults: Callable[[str], None] | None = None,
) -> Adapter:
    write_system(net, partner, system_toml)
    config = load_partner_dir(net.folder(partner))
    transport = default_registry().create(config, net.gw.clock)
    return await open_adapter(net, config, transport, faults=faults)


async def start_approach(
    net: Net, to: Sequence[str], youths: Sequence[Youth] = YOUTHS
) -> tuple[Approach, Adapter]:
    """Velsen starts an approach about ``youths`` and sends the notice to ``to``.

    Returns the approach and Velsen's adapter; the recipients still have to receive."""
    people = tuple(
        PersonDetails(
            pseudonym=new_pseudonym(),
            given_name=y.given_name,
            family_name=y.family_name,
            date_of_birth=y.date_of_birth,
            bsn=y.bsn,
        )
        for y in youths
    )
    token, velsen = await announce(net, people, to)
    return Approach(token, {str(p.bsn): p.pseudonym for p in people}), velsen


async def velsen_sends(
    net: Net, velsen: Adapter, event_id: str, kind: str, about: Sequence[str], to: Sequence[str]
) -> str:
    """Velsen's case system sends a ``kind`` message (``progress`` or ``signal``) about BSNs;
    returns its message id."""
    net.system("gemeente-velsen").add_event(
        event_id,
        {
            "type": kind,
            "about": list(about),
            "to": list(to),
            "date": "2026-03-05",
            "summary": "Huisbezoek afgelegd; afspraken over avondtijden gemaakt.",
        },
    )
    assert await velsen.ingest_once() == 1
    sent = await velsen.send_once()
    assert len(sent.accepted) == 1, velsen.store.outbox()
    row = next(r for r in velsen.store.outbox() if r.record_id == event_id)
    return row.message_id


async def delivery_states(net: Net, sender: str, message_id: str) -> dict[str, str]:
    status = await (await net.gw.client(sender)).message_status(message_id)
    return {r["recipient"]: r["state"] for r in status["recipients"]}
