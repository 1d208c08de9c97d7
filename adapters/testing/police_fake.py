"""A realistic fake of police team IJmond's system, for tests and the demo.

What it does, as the police system would:

* keeps a **person register** (``persoonsnummer`` → name, date of birth, BSN when known);
* serves the **webhook** the adapter POSTs inbound case messages to
  (``POST /ketenpost/berichten``), deduplicated on the ``Idempotency-Key`` header: a repeated
  key replays the first answer and stores nothing new. For an ``approach-notice`` it matches
  each person on name and date of birth in its register and answers with ``koppelingen``
  (pseudonym → persoonsnummer);
* takes **refusal reports** (``POST /ketenpost/weigeringen``), deduplicated the same way;
* keeps **delivery annotations** on its incidents (``POST
  /api/incidenten/{incidentnummer}/afleveringen``: "delivered to <recipient>"), deduplicated
  the same way (``201`` first, ``200`` for a repeat), which its users see as "Halt has
  received this referral";
* can be switched **down** (``"unavailable"``: 503; ``"dropped"``: the connection is closed
  without an answer), have only its incident API answer 503 (``incidents_down``), or be told
  to refuse the next message with a reason (422);
* and **POSTs incidents** to the adapter's local endpoint (``post_incident``), building
  realistic incidents with ``incident(...)``.

Nothing here is used by the adapter itself.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from adapters.testing._server import (
    Answers,
    DownMode,
    LocalServer,
    down_switch,
    keep,
    koppelingen,
    missing_key,
    replay,
    take_refusal,
)


@dataclass(frozen=True)
class Persoon:
    persoonsnummer: str
    voornaam: str
    achternaam: str
    geboortedatum: datetime.date
    bsn: str | None = None


@dataclass
class FakePoliceSystem(LocalServer):
    """The police system. ``async with`` starts it on 127.0.0.1 (``port`` 0: any)."""

    host: str = "127.0.0.1"
    port: int = 0
    register: dict[str, Persoon] = field(default_factory=dict)
    # The webhook documents stored, in arrival order (a row per message, as the police
    # system's own table would hold them; only the Idempotency-Key check keeps it to one).
    berichten: list[dict[str, Any]] = field(default_factory=list)
    # The refusal reports stored, in arrival order, deduplicated the same way.
    weigeringen: list[dict[str, Any]] = field(default_factory=list)
    # Every Idempotency-Key the webhook was called with, repeats included.
    webhook_calls: list[str] = field(default_factory=list)
    # incidentnummer → its delivery annotations, in arrival order, deduplicated.
    afleveringen: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # Every Idempotency-Key the delivery annotation endpoint was called with, repeats included.
    aflevering_calls: list[str] = field(default_factory=list)
    down: DownMode | None = None
    # Only the incident API is in maintenance (503); the webhook and refusals still answer.
    incidents_down: bool = False
    # (status, reden, toelichting) for the next new message; cleared once used.
    refuse_next: tuple[int, str, str] | None = None
    _answers: Answers = field(default_factory=dict)
    _refusal_keys: set[str] = field(default_factory=set)

    # -- the register --------------------------------------------------------------------

    def add_person(
        self,
        persoonsnummer: str,
        voornaam: str,
        achternaam: str,
        geboortedatum: datetime.date,
        bsn: str | None = None,
    ) -> Persoon:
        person = Persoon(persoonsnummer, voornaam, achternaam, geboortedatum, bsn)
        self.register[persoonsnummer] = person
        return person

    def match(self, details: dict[str, Any]) -> str | None:
        """The persoonsnummer of the one registered person with this name and birth date."""
        found = [
            p.persoonsnummer
            for p in self.register.values()
            if _same(p.voornaam, details.get("voornaam"))
            and _same(p.achternaam, details.get("achternaam"))
            and p.geboortedatum.isoformat() == details.get("geboortedatum")
        ]
        return found[0] if len(found) == 1 else None

    def messages_of(self, soort: str) -> list[dict[str, Any]]:
        return [m for m in self.berichten if m.get("soort") == soort]

    # -- the server ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def webhook_url(self) -> str:
        return f"{self.url}/ketenpost/berichten"

    @property
    def refusals_url(self) -> str:
        return f"{self.url}/ketenpost/weigeringen"

    @property
    def incidents_url(self) -> str:
        return f"{self.url}/api/incidenten"

    async def start(self) -> None:
        app = web.Application(middlewares=[down_switch(lambda: self.down)])
        app.router.add_post("/ketenpost/berichten", self._webhook)
        app.router.add_post("/ketenpost/weigeringen", self._refusal)
        app.router.add_post("/api/incidenten/{incidentnummer}/afleveringen", self._delivered)
        _, self.port = await self._serve(app, self.host, self.port)

    async def _webhook(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key")
        if not key:
            return missing_key()
        self.webhook_calls.append(key)
        if (again := replay(self._answers, key)) is not None:
            return again
        document = await request.json()
        if self.refuse_next is not None:
            status, reden, toelichting = self.refuse_next
            self.refuse_next = None
            return keep(self._answers, key, status, {"reden": reden, "toelichting": toelichting})
        self.berichten.append(document)
        answer: dict[str, Any] = {"status": "verwerkt", "berichtId": key}
        if document.get("soort") == "approach-notice":
            answer["koppelingen"] = koppelingen(document, self.match, "persoonsnummer")
        return keep(self._answers, key, 201, answer)

    async def _refusal(self, request: web.Request) -> web.Response:
        return await take_refusal(request, self._refusal_keys, self.weigeringen)

    def refusals_for(self, incidentnummer: str) -> list[dict[str, Any]]:
        return [w for w in self.weigeringen if w.get("incidentnummer") == incidentnummer]

    async def _delivered(self, request: web.Request) -> web.Response:
        if self.incidents_down:
            return web.json_response({"reden": "onderhoud"}, status=503)
        key = request.headers.get("Idempotency-Key")
        if not key:
            return missing_key()
        self.aflevering_calls.append(key)
        if (again := replay(self._answers, key)) is not None:
            return again
        document = await request.json()
        if not isinstance(document.get("ontvanger"), str) or not document.get("berichtId"):
            return web.json_response(
                {"reden": "schema_invalid", "toelichting": "ontvanger of berichtId ontbreekt"},
                status=400,
            )
        number = request.match_info["incidentnummer"]
        self.afleveringen.setdefault(number, []).append(document)
        return keep(self._answers, key, 201, {"status": "geregistreerd", "incident": number})

    def delivered_to(self, incidentnummer: str) -> list[str]:
        """The recipients the incident shows as delivered to, one entry per annotation."""
        return [a["ontvanger"] for a in self.afleveringen.get(incidentnummer, [])]


def _same(a: str, b: object) -> bool:
    return isinstance(b, str) and a.casefold().strip() == b.casefold().strip()


def incident(
    incidentnummer: str,
    betrokkenen: Sequence[tuple[str, str]],
    *,
    ontvangers: Sequence[str] = ("gemeente-velsen", "halt"),
    datum: str = "2026-03-01T22:40:00+01:00",
    categorie: str = "overlast",
    omschrijving: str = (
        "Groep jongeren veroorzaakt na 22.00 uur geluidsoverlast bij het winkelcentrum "
        "Velserbroek; na aanspreken weggegaan."
    ),
    gemeente: str = "Velsen",
    aanpak: str | None = None,
) -> dict[str, Any]:
    """A realistic incident as the police system POSTs it; ``betrokkenen`` are
    (persoonsnummer, rol) pairs."""
    doc: dict[str, Any] = {
        "incidentnummer": incidentnummer,
        "datum": datum,
        "categorie": categorie,
        "omschrijving": omschrijving,
        "betrokkenen": [{"persoonsnummer": n, "rol": r} for n, r in betrokkenen],
        "gemeente": gemeente,
        "ontvangers": list(ontvangers),
        "registratie": {"eenheid": "Noord-Holland", "basisteam": "IJmond", "mutatie": 1},
    }
    if aanpak is not None:
        doc["aanpak"] = aanpak
    return doc


async def post_incident(
    adapter_url: str,
    document: dict[str, Any] | bytes,
    *,
    content_type: str = "application/json",
    token: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """POST an incident to the adapter's endpoint as the police system does; returns the
    status and the decoded JSON answer."""
    data = document if isinstance(document, bytes) else json.dumps(document).encode()
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{adapter_url}/incidenten", data=data, headers=headers) as response,
    ):
        return response.status, await response.json()
