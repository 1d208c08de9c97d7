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
from typing import Any, Literal

from aiohttp import web

DownMode = Literal["unavailable", "dropped"]


@dataclass(frozen=True)
class Client:
    clientnummer: str
    voornaam: str
    achternaam: str
    geboortedatum: datetime.date
    bsn: str | None = None


@dataclass
class FakeCjgSystem:
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
    _answers: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    _refusal_keys: set[str] = field(default_factory=set)
    _runner: web.AppRunner | None = None

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
        app = web.Application(middlewares=[self._guard])
        app.router.add_get(f"{self.prefix}/events", self._events)
        app.router.add_post(f"{self.prefix}/inbound", self._inbound)
        app.router.add_post(f"{self.prefix}/refusals", self._refusal)
        self._runner = web.AppRunner(app, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeCjgSystem:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.down == "unavailable":
            return web.json_response({"reden": "onderhoud"}, status=503)
        if self.down == "dropped" and request.transport is not None:
            request.transport.close()
            return web.Response(status=503)  # never reaches the client
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
            return web.json_response(
                {"reden": "schema_invalid", "toelichting": "Idempotency-Key ontbreekt"},
                status=400,
            )
        self.inbound_calls.append(key)
        if key in self._answers:
            status, first = self._answers[key]
            return web.json_response(first, status=200 if status == 201 else status)
        document = await request.json()
        self.inbound.append(document)
        answer: dict[str, Any] = {"status": "verwerkt", "berichtId": key}
        if document.get("soort") == "approach-notice":
            answer["koppelingen"] = [
                {"pseudoniem": p["pseudoniem"], "clientnummer": number}
                for p in document.get("personen", [])
                if (number := self.match(p)) is not None
            ]
        self._answers[key] = (201, answer)
        return web.json_response(answer, status=201)

    async def _refusal(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key", "")
        if not key:
            return web.json_response({"reden": "Idempotency-Key ontbreekt"}, status=400)
        if key not in self._refusal_keys:
            self._refusal_keys.add(key)
            self.refusals.append(await request.json())
        return web.json_response({"status": "geregistreerd"}, status=201)

    def refusals_for(self, event_id: str) -> list[dict[str, Any]]:
        return [r for r in self.refusals if r.get("gebeurtenisId") == event_id]


def _same(a: str, b: object) -> bool:
    return isinstance(b, str) and a.casefold().strip() == b.casefold().strip()
