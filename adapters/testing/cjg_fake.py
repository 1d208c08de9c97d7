"""A realistic fake of the CJG client system's REST API, for tests and the demo.

What it does, as the CJG system would:

* keeps a **client register** (``clientnummer`` → name, date of birth, BSN when known);
* publishes the covenant **export feed** ``GET /events?since=CURSOR&limit=N``: events in the
  order they were made, paged, each page with the ``cursor`` to continue from and ``meer``
  when more follow. The cursor is opaque to clients (here a zero-padded sequence number);
* requires ``Authorization: Bearer <token>`` on every call (``401`` otherwise);
* takes inbound messages (``POST /inbound``), deduplicated on ``Idempotency-Key``: a repeated
  key replays the first answer and stores nothing new. For an ``approach-notice`` it matches
  each person to a client by BSN, or else by name and date of birth, and answers with
  ``koppelingen`` (pseudonym → clientnummer);
* takes refusal reports (``POST /refusals``), deduplicated the same way;
* can be switched **down** (``"unavailable"``: 503; ``"dropped"``: connection closed);
* and can **inject malformed events** (any JSON value, or raw bytes, on the feed).

Nothing here is used by the adapter itself.
"""

from __future__ import annotations

import datetime
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from adapters.testing._server import (
    Answers,
    DownMode,
    Handler,
    LocalServer,
    down_switch,
    keep,
    koppelingen,
    missing_key,
    replay,
    take_refusal,
)


@dataclass(frozen=True)
class Client:
    clientnummer: str
    voornaam: str
    achternaam: str
    geboortedatum: datetime.date
    bsn: str | None = None


@dataclass
class FakeCjgSystem(LocalServer):
    """The CJG system. ``async with`` starts it on 127.0.0.1 (``port`` 0: any)."""

    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    host: str = "127.0.0.1"
    port: int = 0
    prefix: str = "/api/v1"
    clients: dict[str, Client] = field(default_factory=dict)
    # The feed: the exact JSON bytes of each event, in order (sequence number = index + 1).
    feed: list[bytes] = field(default_factory=list)
    # Inbound documents and refusal reports stored, in arrival order (a row each, as the CJG
    # system's own tables would hold them; only the Idempotency-Key check keeps it to one).
    inbound: list[dict[str, Any]] = field(default_factory=list)
    refusals: list[dict[str, Any]] = field(default_factory=list)
    # Every Idempotency-Key POST /inbound was called with, repeats included.
    inbound_calls: list[str] = field(default_factory=list)
    # The ``since`` of every feed request (``None``: from the start).
    feed_requests: list[str | None] = field(default_factory=list)
    down: DownMode | None = None
    _answers: Answers = field(default_factory=dict)
    _refusal_keys: set[str] = field(default_factory=set)

    # -- register and feed ---------------------------------------------------------------

    def add_client(
        self,
        clientnummer: str,
        voornaam: str,
        achternaam: str,
        geboortedatum: datetime.date,
        bsn: str | None = None,
    ) -> Client:
        client = Client(clientnummer, voornaam, achternaam, geboortedatum, bsn)
        self.clients[clientnummer] = client
        return client

    def match(self, person: dict[str, Any]) -> str | None:
        """The clientnummer of the one client with this BSN, or else name and birth date."""
        bsn = person.get("bsn")
        if bsn:
            by_bsn = [c.clientnummer for c in self.clients.values() if c.bsn == bsn]
            if len(by_bsn) == 1:
                return by_bsn[0]
        found = [
            c.clientnummer
            for c in self.clients.values()
            if _same(c.voornaam, person.get("voornaam"))
            and _same(c.achternaam, person.get("achternaam"))
            and c.geboortedatum.isoformat() == person.get("geboortedatum")
        ]
        return found[0] if len(found) == 1 else None

    def _event(
        self,
        soort: str,
        clientnummers: Sequence[str],
        ontvangers: Sequence[str],
        aanpak: str | None,
        part: dict[str, Any],
        event_id: str | None,
    ) -> str:
        event_id = event_id or f"evt-{len(self.feed) + 1:06d}-{secrets.token_hex(4)}"
        doc: dict[str, Any] = {
            "id": event_id,
            "soort": soort,
            "aangemaakt": "2026-03-02T10:15:00+01:00",
            "medewerker": "J. de Boer, jeugdverpleegkundige",
            "clientnummers": list(clientnummers),
            "ontvangers": list(ontvangers),
            soort: part,
        }
        if aanpak is not None:
            doc["aanpak"] = aanpak
        self.feed.append(json.dumps(doc, ensure_ascii=False).encode())
        return event_id

    def add_progress(
        self,
        clientnummers: Sequence[str],
        *,
        ontvangers: Sequence[str] = ("gemeente-velsen",),
        status: str = "op-koers",
        samenvatting: str = (
            "Opvoedondersteuning loopt; ouders houden zich aan de afspraken over avondtijden."
        ),
        datum: str = "2026-03-02",
        actie: str | None = "Opvoedondersteuning",
        aanpak: str | None = None,
        event_id: str | None = None,
    ) -> str:
        part: dict[str, Any] = {"status": status, "samenvatting": samenvatting, "datum": datum}
        if actie is not None:
            part["actie"] = actie
        return self._event("voortgang", clientnummers, ontvangers, aanpak, part, event_id)

    def add_case_conference(
        self,
        clientnummers: Sequence[str],
        *,
        ontvangers: Sequence[str] = ("gemeente-velsen",),
        datum: str = "2026-03-09",
        deelnemers: Sequence[str] = ("gemeente-velsen", "cjg", "politie-ijmond", "halt"),
        agenda: Sequence[str] = ("Stand van zaken jeugdhulp", "Afspraken met school"),
        besluiten: Sequence[str] = ("CJG start gezinscoaching, acht weken.",),
        vervolgdatum: str | None = "2026-04-06",
        aanpak: str | None = None,
        event_id: str | None = None,
    ) -> str:
        part: dict[str, Any] = {
            "datum": datum,
            "deelnemers": list(deelnemers),
            "agenda": list(agenda),
            "besluiten": list(besluiten),
        }
        if vervolgdatum is not None:
            part["vervolgdatum"] = vervolgdatum
        return self._event("casusoverleg", clientnummers, ontvangers, aanpak, part, event_id)

    def inject(self, event: object | bytes) -> None:
        """Put a malformed event on the feed: a JSON value, or raw bytes that must themselves
        be one JSON value (the page stays JSON, as a real serializer would keep it)."""
        self.feed.append(event if isinstance(event, bytes) else json.dumps(event).encode())

    def inbound_of(self, soort: str) -> list[dict[str, Any]]:
        return [m for m in self.inbound if m.get("soort") == soort]

    # -- the server ----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}{self.prefix}"

    async def start(self) -> None:
        # Down before unauthorised: a system that is down checks no token.
        app = web.Application(middlewares=[down_switch(lambda: self.down), self._guard])
        app.router.add_get(f"{self.prefix}/events", self._events)
        app.router.add_post(f"{self.prefix}/inbound", self._inbound)
        app.router.add_post(f"{self.prefix}/refusals", self._refusal)
        _, self.port = await self._serve(app, self.host, self.port)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response(
                {"reden": "niet_geautoriseerd"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="cjg"'},
            )
        response: web.StreamResponse = await handler(request)
        return response

    async def _events(self, request: web.Request) -> web.Response:
        since = request.query.get("since")
        self.feed_requests.append(since)
        try:
            start = int(since) if since is not None else 0
            limit = min(500, int(request.query.get("limit", "50")))
        except ValueError:
            return web.json_response({"reden": "ongeldige cursor of limit"}, status=400)
        if start < 0 or start > len(self.feed) or limit < 1:
            return web.json_response({"reden": "ongeldige cursor of limit"}, status=400)
        page = self.feed[start : start + limit]
        end = start + len(page)
        body = (
            b'{"gebeurtenissen":['
            + b",".join(page)
            + b'],"cursor":'
            + json.dumps(f"{end:012d}").encode()
            + b',"meer":'
            + (b"true" if end < len(self.feed) else b"false")
            + b"}"
        )
        return web.Response(body=body, content_type="application/json")

    async def _inbound(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key")
        if not key:
            return missing_key()
        self.inbound_calls.append(key)
        if (again := replay(self._answers, key)) is not None:
            return again
        document = await request.json()
        self.inbound.append(document)
        answer: dict[str, Any] = {"status": "verwerkt", "berichtId": key}
        if document.get("soort") == "approach-notice":
            answer["koppelingen"] = koppelingen(document, self.match, "clientnummer")
        return keep(self._answers, key, 201, answer)

    async def _refusal(self, request: web.Request) -> web.Response:
        return await take_refusal(request, self._refusal_keys, self.refusals)

    def refusals_for(self, event_id: str) -> list[dict[str, Any]]:
        return [r for r in self.refusals if r.get("gebeurtenisId") == event_id]


def _same(a: str, b: object) -> bool:
    return isinstance(b, str) and a.casefold().strip() == b.casefold().strip()
