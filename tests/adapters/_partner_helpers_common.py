"""What the partner adapters' end-to-end helpers share (``_partner_helpers_files`` for the
drop-folder adapters, ``_partner_helpers_rest`` for the REST ones).

* ``open_adapter`` opens an ``Adapter`` on the test's real gateway with its manual clock, and
  has ``Net`` close it.
* ``announce`` has Velsen (the coordinator, on the SDK's fake case system) issue and register
  a token about ``people`` and send the approach-notice to ``to``; the recipients' adapters
  still have to take it in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from adapters.base import Transport
from adapters.config import AdapterConfig
from adapters.engine import Adapter, EngineSettings
from gateway.protocol.messages import PersonDetails
from gateway.protocol.token import TokenSubject
from tests.adapters.conftest import Net
from tests.gateway.conftest import DAY, Token


async def open_adapter(
    net: Net,
    config: AdapterConfig,
    transport: Transport,
    *,
    faults: Callable[[str], None] | None = None,
) -> Adapter:
    adapter = Adapter(
        config,
        transport,
        clock=net.gw.clock,
        settings=EngineSettings(backoff_base_s=1),
        gateway_url=net.gw.url,
        faults=faults,
    )
    await adapter.open()
    net.open_adapters.append(adapter)
    return adapter


async def announce(
    net: Net, people: Sequence[PersonDetails], to: Sequence[str]
) -> tuple[Token, Adapter]:
    """Velsen starts an approach for ``people`` and sends the approach-notice to ``to``.

    Velsen's own local ids are the BSNs. Returns the token and Velsen's adapter."""
    gw = net.gw
    token = gw.issue_token(
        subjects=[
            TokenSubject(pseudonym=p.pseudonym, informed_at=gw.clock.now() - DAY) for p in people
        ]
    )
    registered = await (await gw.client("gemeente-velsen")).register_token(token.body)
    velsen = await net.adapter("gemeente-velsen")
    velsen.remember_token(
        token.signed,
        token.opening,
        {p.pseudonym: str(p.bsn) for p in people if p.bsn},
        registered_at=registered["registered_at"],
    )
    system = net.system("gemeente-velsen")
    system.approaches[token.token_id] = (token.signed, token.opening, tuple(people))
    system.add_event(
        f"notice-{token.token_id}",
        {"type": "approach-notice", "token_id": token.token_id, "to": list(to)},
    )
    assert await velsen.ingest_once() == 1
    sent = await velsen.send_once()
    assert len(sent.accepted) == 1, velsen.store.outbox()
    return token, velsen
