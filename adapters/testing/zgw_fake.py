"""A fake municipal zaaksysteem: the subset of the ZGW Zaken API (1.5) and Documenten API (1.5)
that the ``zgw`` adapter uses, in memory, on 127.0.0.1, for tests and the demo.

Rules kept here:

* Paths, field names, required fields, status codes and list shapes follow the VNG
  specifications (copied into ``tests/specs/zgw/``; ``tests/adapters/test_partner_zgw.py``
  validates the answers against their schemas): paginated lists
  ``{count, next, previous, results}``; ``zaakinformatieobjecten`` and
  ``zaakeigenschappen`` plain arrays; errors as ``Fout`` / ``ValidatieFout``
  (``application/problem+json``); ``API-version`` on every answer.
* Every request needs a ZGW JWT (HS256, ``client_id``/``iss`` claim naming a known client,
  ``iat`` within ``max_skew_s`` of the fake's clock): 401 otherwise. ``/zaken`` needs
  ``Accept-Crs`` (and ``Content-Crs`` with a body): 412 otherwise.
* A status whose statustype is in ``eindstatustypen`` closes the zaak (``einddatum``).
* The helpers (``create_zaak``, ``add_rol``, ``set_eigenschap``, ``set_status``,
  ``informatieobjecten``) act on the same memory the HTTP side serves; the clock is injected.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlencode

import jwt
from aiohttp import web

from adapters.base import Clock
from adapters.testing._server import LocalServer

ZAKEN_VERSION: Final = "1.5.1"
DOCUMENTEN_VERSION: Final = "1.5.0"
ZAKEN_PREFIX: Final = "/zaken/api/v1"
DOCUMENTEN_PREFIX: Final = "/documenten/api/v1"
CATALOGI_PREFIX: Final = "/catalogi/api/v1"
_NS: Final = uuid.UUID("0b8a8c7e-5a8f-4f1e-9f51-6f6b6e2d9a10")
Json = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Problem(Exception):
    def __init__(self, status: int, code: str, title: str, invalid: list[Json] | None = None):
        super().__init__(title)
        self.status = status
        self.code = code
        self.title = title
        self.invalid = invalid


@dataclass
class FakeZgw(LocalServer):
    """The fake Zaken + Documenten APIs. ``async with FakeZgw(...) as zgw`` serves them."""

    clients: Mapping[str, bytes]
    clock: Clock
    page_size: int = 100
    eindstatustypen: frozenset[str] = frozenset()
    max_skew_s: int = 300
    base: str = ""
    zaken: dict[str, Json] = field(default_factory=dict)
    statussen: dict[str, Json] = field(default_factory=dict)
    rollen: dict[str, Json] = field(default_factory=dict)
    zaakeigenschappen: dict[str, Json] = field(default_factory=dict)
    zaakinformatieobjecten: dict[str, Json] = field(default_factory=dict)
    eios: dict[str, Json] = field(default_factory=dict)
    contents: dict[str, bytes] = field(default_factory=dict)
    # Catalogi: eigenschap URL → naam (the Zaken API copies the naam from there).
    catalogus_eigenschappen: dict[str, str] = field(default_factory=dict)
    # (method, path) of every authenticated request, for tests that count calls.
    requests: list[tuple[str, str]] = field(default_factory=list)
    _serial: int = 0

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def zaken_api(self) -> str:
        return self.base + ZAKEN_PREFIX

    @property
    def documenten_api(self) -> str:
        return self.base + DOCUMENTEN_PREFIX

    def catalogi(self, resource: str, name: str) -> str:
        """A stable Catalogi API URL for a named resource (``zaaktypen``, ``statustypen``…)."""
        return f"{self.base}{CATALOGI_PREFIX}/{resource}/{uuid.uuid5(_NS, resource + name)}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application(middlewares=[self._middleware])
        z, d = ZAKEN_PREFIX, DOCUMENTEN_PREFIX
        app.router.add_get(f"{z}/zaken", self._list_zaken)
        app.router.add_post(f"{z}/zaken", self._create_zaak)
        app.router.add_get(f"{z}/zaken/{{uuid}}", self._get_zaak)
        app.router.add_patch(f"{z}/zaken/{{uuid}}", self._patch_zaak)
        app.router.add_get(f"{z}/zaken/{{uuid}}/zaakeigenschappen", self._list_eigenschappen)
        app.router.add_post(f"{z}/zaken/{{uuid}}/zaakeigenschappen", self._create_eigenschap)
        app.router.add_get(f"{z}/statussen", self._list_statussen)
        app.router.add_post(f"{z}/statussen", self._create_status)
        app.router.add_get(f"{z}/statussen/{{uuid}}", self._get_status)
        app.router.add_get(f"{z}/rollen", self._list_rollen)
        app.router.add_post(f"{z}/rollen", self._create_rol)
        app.router.add_get(f"{z}/zaakinformatieobjecten", self._list_zios)
        app.router.add_post(f"{z}/zaakinformatieobjecten", self._create_zio)
        app.router.add_get(f"{d}/enkelvoudiginformatieobjecten", self._list_eios)
        app.router.add_post(f"{d}/enkelvoudiginformatieobjecten", self._create_eio)
        app.router.add_get(f"{d}/enkelvoudiginformatieobjecten/{{uuid}}", self._get_eio)
        app.router.add_get(f"{d}/enkelvoudiginformatieobjecten/{{uuid}}/download", self._download)
        bound_host, bound_port = await self._serve(app, host, port)
        self.base = f"http://{bound_host}:{bound_port}"

    # -- helpers for tests and the demo --------------------------------------------------

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.clock.now(), datetime.UTC)

    def _next_identificatie(self, prefix: str) -> str:
        self._serial += 1
        return f"{prefix}-{self._now().year}-{self._serial:010d}"

    def create_zaak(
        self, *, zaaktype: str, bronorganisatie: str, identificatie: str | None = None, **more: Any
    ) -> Json:
        """A new zaak as a case worker registers it; its JSON."""
        return self._new_zaak(
            {
                "zaaktype": zaaktype,
                "bronorganisatie": bronorganisatie,
                "verantwoordelijkeOrganisatie": bronorganisatie,
                "startdatum": self._now().date().isoformat(),
                **({"identificatie": identificatie} if identificatie else {}),
                **more,
            }
        )

    def add_rol(
        self,
        zaak: str,
        *,
        roltype: str,
        betrokkene_type: str = "natuurlijk_persoon",
        identificatie: Json | None = None,
        omschrijving: str = "Jongere",
        omschrijving_generiek: str = "betrokkene",
        toelichting: str = "",
    ) -> Json:
        key = str(uuid.uuid4())
        rol: Json = {
            "url": f"{self.zaken_api}/rollen/{key}",
            "uuid": key,
            "zaak": zaak,
            "betrokkeneType": betrokkene_type,
            "roltype": roltype,
            "omschrijving": omschrijving,
            "omschrijvingGeneriek": omschrijving_generiek,
            "roltoelichting": toelichting,
            "registratiedatum": self._now().isoformat(),
            "indicatieMachtiging": "",
            "statussen": [],
            "betrokkeneIdentificatie": identificatie or {},
        }
        self.rollen[key] = rol
        self._zaak(zaak)["rollen"].append(rol["url"])
        return rol

    def set_eigenschap(self, zaak: str, naam: str, waarde: str) -> Json:
        """Set (or replace) a zaakeigenschap by naam."""
        eigenschap = self.catalogi("eigenschappen", naam)
        self.catalogus_eigenschappen[eigenschap] = naam
        for existing in self.zaakeigenschappen.values():
            if existing["zaak"] == zaak and existing["eigenschap"] == eigenschap:
                existing["waarde"] = waarde
                return existing
        return self._new_eigenschap(zaak, eigenschap, waarde)

    def set_status(
        self, zaak: str, statustype: str, *, at: int | None = None, toelichting: str = ""
    ) -> Json:
        """A new status on ``zaak`` (as the case worker's application would POST it)."""
        moment = self._now() if at is None else datetime.datetime.fromtimestamp(at, datetime.UTC)
        return self._new_status(
            {
                "zaak": zaak,
                "statustype": statustype,
                "datumStatusGezet": moment.isoformat(),
                "statustoelichting": toelichting,
            }
        )

    def informatieobjecten(self, zaak: str) -> list[tuple[Json, bytes]]:
        """The informatieobjecten related to ``zaak`` with their content, oldest first."""
        out = []
        for zio in self.zaakinformatieobjecten.values():
            if zio["zaak"] == zaak:
                eio = self.eios[_uuid(zio["informatieobject"])]
                out.append((eio, self.contents[eio["uuid"]]))
        return out

    def zaak_by_kenmerk(self, kenmerk: str) -> list[Json]:
        return [
            z
            for z in self.zaken.values()
            if any(k.get("kenmerk") == kenmerk for k in z.get("kenmerken", []))
        ]

    # -- middleware ----------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        version = (
            DOCUMENTEN_VERSION if request.path.startswith(DOCUMENTEN_PREFIX) else ZAKEN_VERSION
        )
        try:
            self._authenticate(request)
            self._check_crs(request)
            self.requests.append((request.method, request.path))
            response = await handler(request)
        except _Problem as problem:
            response = self._problem(request, problem)
        except web.HTTPNotFound:
            response = self._problem(request, _Problem(404, "not_found", "Niet gevonden."))
        response.headers["API-version"] = version
        return response

    def _authenticate(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme != "Bearer" or not token:
            raise _Problem(401, "not_authenticated", "Authenticatiegegevens zijn niet opgegeven.")
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
            client_id = str(claims.get("client_id") or claims.get("iss") or "")
            secret = self.clients.get(client_id)
            if secret is None:
                raise _Problem(401, "not_authenticated", "Onbekende client_id.")
            claims = jwt.decode(
                token,
                secret,
                algorithms=["HS256"],
                # The fake judges iat with its own (injected) clock below.
                options={"verify_iat": False, "require": ["iat", "client_id"]},
            )
        except jwt.PyJWTError as exc:
            raise _Problem(401, "not_authenticated", f"Ongeldig JWT: {exc}") from None
        iat = claims.get("iat")
        if not isinstance(iat, int) or abs(self.clock.now() - iat) > self.max_skew_s:
            raise _Problem(401, "jwt-expired", "Het JWT is verlopen of nog niet geldig.")

    def _check_crs(self, request: web.Request) -> None:
        zaak_path = request.path.startswith(f"{ZAKEN_PREFIX}/zaken") and (
            "zaakeigenschappen" not in request.path
        )
        if not zaak_path:
            return
        if request.headers.get("Accept-Crs") != "EPSG:4326":
            raise _Problem(412, "precondition_failed", "'Accept-Crs' header ontbreekt")
        if request.method in ("POST", "PUT", "PATCH") and (
            request.headers.get("Content-Crs") != "EPSG:4326"
        ):
            raise _Problem(412, "precondition_failed", "'Content-Crs' header ontbreekt")

    @staticmethod
    def _problem(request: web.Request, problem: _Problem) -> web.Response:
        body: Json = {
            "type": f"https://zaken-api.vng.cloud/ref/fouten/{problem.code}/",
            "code": problem.code,
            "title": problem.title,
            "status": problem.status,
            "detail": problem.title,
            "instance": f"urn:uuid:{uuid.uuid4()}",
        }
        if problem.invalid is not None:
            body["invalidParams"] = problem.invalid
        return web.json_response(
            body, status=problem.status, content_type="application/problem+json"
        )

    # -- common --------------------------------------------------------------------------

    async def _body(self, request: web.Request, required: tuple[str, ...]) -> Json:
        try:
            body = await request.json()
        except ValueError:
            raise _Problem(400, "parse_error", "JSON parse error") from None
        if not isinstance(body, dict):
            raise _Problem(400, "invalid", "Een object is vereist.")
        missing = [name for name in required if body.get(name) in (None, "")]
        if missing:
            raise _Problem(
                400,
                "invalid",
                "Invalid input.",
                [
                    {"name": name, "code": "required", "reason": "Dit veld is vereist."}
                    for name in missing
                ],
            )
        return body

    def _page(self, request: web.Request, items: list[Json]) -> web.Response:
        try:
            page = int(request.query.get("page", "1"))
        except ValueError:
            raise _Problem(400, "invalid", "Ongeldige pagina.") from None
        start = (page - 1) * self.page_size
        if page < 1 or (start >= len(items) and page != 1):
            raise _Problem(404, "not_found", "Ongeldige pagina.")

        def link(number: int) -> str:
            query = {**request.query, "page": str(number)}
            return f"{self.base}{request.path}?{urlencode(query)}"

        more = start + self.page_size < len(items)
        return web.json_response(
            {
                "count": len(items),
                "next": link(page + 1) if more else None,
                "previous": link(page - 1) if page > 1 else None,
                "results": items[start : start + self.page_size],
            }
        )

    @staticmethod
    def _filtered(
        items: Mapping[str, Json], request: web.Request, names: tuple[str, ...]
    ) -> list[Json]:
        wanted = {n: request.query[n] for n in names if n in request.query}
        return [i for i in items.values() if all(str(i.get(k)) == v for k, v in wanted.items())]

    def _zaak(self, url: str) -> Json:
        zaak = self.zaken.get(_uuid(url))
        if zaak is None or zaak["url"] != url:
            raise _Problem(400, "invalid", "Ongeldige zaak.", [_invalid("zaak", "does_not_exist")])
        return zaak

    # -- zaken ---------------------------------------------------------------------------

    def _new_zaak(self, body: Json) -> Json:
        key = str(uuid.uuid4())
        zaak: Json = {
            "url": f"{self.zaken_api}/zaken/{key}",
            "uuid": key,
            "identificatie": body.get("identificatie") or self._next_identificatie("ZAAK"),
            "bronorganisatie": body["bronorganisatie"],
            "omschrijving": body.get("omschrijving", ""),
            "toelichting": body.get("toelichting", ""),
            "zaaktype": body["zaaktype"],
            "registratiedatum": body.get("registratiedatum", self._now().date().isoformat()),
            "verantwoordelijkeOrganisatie": body["verantwoordelijkeOrganisatie"],
            "startdatum": body["startdatum"],
            "einddatum": None,
            "einddatumGepland": body.get("einddatumGepland"),
            "uiterlijkeEinddatumAfdoening": None,
            "publicatiedatum": None,
            "productenOfDiensten": [],
            "vertrouwelijkheidaanduiding": body.get("vertrouwelijkheidaanduiding", "vertrouwelijk"),
            "betalingsindicatie": "",
            "betalingsindicatieWeergave": "",
            "laatsteBetaaldatum": None,
            # zaakgeometrie, verlenging and opschorting are left out rather than null: the
            # spec declares them as nullable ``allOf`` references, which OpenAPI 3.0 tools
            # read as "not nullable" (the spec's own ambiguity), and the adapter uses none.
            "hoofdzaak": None,
            "deelzaken": [],
            "relevanteAndereZaken": [],
            "eigenschappen": [],
            "rollen": [],
            "status": None,
            "zaakinformatieobjecten": [],
            "zaakobjecten": [],
            "kenmerken": _kenmerken(body.get("kenmerken", [])),
            "archiefnominatie": None,
            "archiefstatus": "nog_te_archiveren",
            "archiefactiedatum": None,
            "resultaat": None,
        }
        self.zaken[key] = zaak
        return zaak

    async def _list_zaken(self, request: web.Request) -> web.Response:
        items = self._filtered(
            self.zaken, request, ("zaaktype", "identificatie", "bronorganisatie")
        )
        return self._page(request, items)

    async def _create_zaak(self, request: web.Request) -> web.Response:
        body = await self._body(
            request, ("bronorganisatie", "verantwoordelijkeOrganisatie", "startdatum", "zaaktype")
        )
        return web.json_response(self._new_zaak(body), status=201)

    def _zaak_of(self, request: web.Request) -> Json:
        zaak = self.zaken.get(request.match_info["uuid"])
        if zaak is None:
            raise _Problem(404, "not_found", "Niet gevonden.")
        return zaak

    async def _get_zaak(self, request: web.Request) -> web.Response:
        return web.json_response(self._zaak_of(request))

    async def _patch_zaak(self, request: web.Request) -> web.Response:
        zaak = self._zaak_of(request)
        body = await self._body(request, ())
        writable = {"omschrijving", "toelichting", "einddatumGepland", "kenmerken"}
        for name, value in body.items():
            if name not in writable:
                continue
            zaak[name] = _kenmerken(value) if name == "kenmerken" else value
        return web.json_response(zaak)

    # -- zaakeigenschappen ---------------------------------------------------------------

    def _new_eigenschap(self, zaak: str, eigenschap: str, waarde: str) -> Json:
        key = str(uuid.uuid4())
        record: Json = {
            "url": f"{zaak}/zaakeigenschappen/{key}",
            "uuid": key,
            "zaak": zaak,
            "eigenschap": eigenschap,
            "naam": self.catalogus_eigenschappen[eigenschap],
            "waarde": waarde,
        }
        self.zaakeigenschappen[key] = record
        self._zaak(zaak)["eigenschappen"].append(record["url"])
        return record

    async def _list_eigenschappen(self, request: web.Request) -> web.Response:
        zaak = self._zaak_of(request)
        items = [e for e in self.zaakeigenschappen.values() if e["zaak"] == zaak["url"]]
        return web.json_response(items)

    async def _create_eigenschap(self, request: web.Request) -> web.Response:
        zaak = self._zaak_of(request)
        body = await self._body(request, ("zaak", "eigenschap", "waarde"))
        if body["eigenschap"] not in self.catalogus_eigenschappen:
            raise _Problem(400, "invalid", "Invalid input.", [_invalid("eigenschap", "bad-url")])
        return web.json_response(
            self._new_eigenschap(zaak["url"], body["eigenschap"], str(body["waarde"])), status=201
        )

    # -- statussen -----------------------------------------------------------------------

    def _new_status(self, body: Json) -> Json:
        zaak = self._zaak(str(body["zaak"]))
        key = str(uuid.uuid4())
        for other in self.statussen.values():
            if other["zaak"] == zaak["url"]:
                other["indicatieLaatstGezetteStatus"] = False
        status: Json = {
            "url": f"{self.zaken_api}/statussen/{key}",
            "uuid": key,
            "zaak": zaak["url"],
            "statustype": body["statustype"],
            "datumStatusGezet": body["datumStatusGezet"],
            "statustoelichting": body.get("statustoelichting", ""),
            "indicatieLaatstGezetteStatus": True,
            "zaakinformatieobjecten": [],
        }
        self.statussen[key] = status
        zaak["status"] = status["url"]
        if body["statustype"] in self.eindstatustypen:
            zaak["einddatum"] = str(body["datumStatusGezet"])[:10]
        return status

    async def _list_statussen(self, request: web.Request) -> web.Response:
        return self._page(request, self._filtered(self.statussen, request, ("zaak", "statustype")))

    async def _create_status(self, request: web.Request) -> web.Response:
        body = await self._body(request, ("zaak", "statustype", "datumStatusGezet"))
        return web.json_response(self._new_status(body), status=201)

    async def _get_status(self, request: web.Request) -> web.Response:
        status = self.statussen.get(request.match_info["uuid"])
        if status is None:
            raise _Problem(404, "not_found", "Niet gevonden.")
        return web.json_response(status)

    # -- rollen --------------------------------------------------------------------------

    async def _list_rollen(self, request: web.Request) -> web.Response:
        items = self._filtered(
            self.rollen, request, ("zaak", "betrokkeneType", "omschrijvingGeneriek")
        )
        return self._page(request, items)

    async def _create_rol(self, request: web.Request) -> web.Response:
        body = await self._body(request, ("zaak", "betrokkeneType", "roltype", "roltoelichting"))
        self._zaak(str(body["zaak"]))
        rol = self.add_rol(
            str(body["zaak"]),
            roltype=str(body["roltype"]),
            betrokkene_type=str(body["betrokkeneType"]),
            identificatie=body.get("betrokkeneIdentificatie"),
            toelichting=str(body["roltoelichting"]),
        )
        return web.json_response(rol, status=201)

    # -- zaakinformatieobjecten ----------------------------------------------------------

    async def _list_zios(self, request: web.Request) -> web.Response:
        items = self._filtered(self.zaakinformatieobjecten, request, ("zaak", "informatieobject"))
        return web.json_response(items)

    async def _create_zio(self, request: web.Request) -> web.Response:
        body = await self._body(request, ("zaak", "informatieobject"))
        zaak = self._zaak(str(body["zaak"]))
        informatieobject = str(body["informatieobject"])
        eio = self.eios.get(_uuid(informatieobject))
        if eio is None or eio["url"] != informatieobject:
            raise _Problem(
                400, "invalid", "Invalid input.", [_invalid("informatieobject", "bad-url")]
            )
        for existing in self.zaakinformatieobjecten.values():
            if existing["zaak"] == zaak["url"] and existing["informatieobject"] == informatieobject:
                raise _Problem(
                    400, "invalid", "Invalid input.", [_invalid("nonFieldErrors", "unique")]
                )
        key = str(uuid.uuid4())
        zio: Json = {
            "url": f"{self.zaken_api}/zaakinformatieobjecten/{key}",
            "uuid": key,
            "informatieobject": informatieobject,
            "zaak": zaak["url"],
            "aardRelatieWeergave": "Hoort bij, omgekeerd: kent",
            "titel": str(body.get("titel", ""))[:200],
            "beschrijving": str(body.get("beschrijving", "")),
            "registratiedatum": self._now().isoformat(),
            "vernietigingsdatum": None,
            "status": None,
        }
        self.zaakinformatieobjecten[key] = zio
        zaak["zaakinformatieobjecten"].append(zio["url"])
        return web.json_response(zio, status=201)

    # -- enkelvoudiginformatieobjecten ---------------------------------------------------

    async def _list_eios(self, request: web.Request) -> web.Response:
        items = self._filtered(self.eios, request, ("identificatie", "bronorganisatie"))
        return self._page(request, items)

    async def _create_eio(self, request: web.Request) -> web.Response:
        body = await self._body(
            request,
            ("bronorganisatie", "creatiedatum", "titel", "auteur", "taal", "informatieobjecttype"),
        )
        try:
            content = base64.b64decode(str(body.get("inhoud") or ""), validate=True)
        except (binascii.Error, ValueError):
            raise _Problem(
                400, "invalid", "Invalid input.", [_invalid("inhoud", "invalid")]
            ) from None
        identificatie = body.get("identificatie") or self._next_identificatie("DOCUMENT")
        for existing in self.eios.values():
            if (existing["identificatie"], existing["bronorganisatie"]) == (
                identificatie,
                body["bronorganisatie"],
            ):
                raise _Problem(
                    400,
                    "invalid",
                    "Invalid input.",
                    [_invalid("identificatie", "identificatie-niet-uniek")],
                )
        key = str(uuid.uuid4())
        url = f"{self.documenten_api}/enkelvoudiginformatieobjecten/{key}"
        eio: Json = {
            "url": url,
            "identificatie": identificatie,
            "bronorganisatie": body["bronorganisatie"],
            "creatiedatum": body["creatiedatum"],
            "titel": body["titel"],
            "vertrouwelijkheidaanduiding": body.get("vertrouwelijkheidaanduiding", ""),
            "auteur": body["auteur"],
            "status": body.get("status", ""),
            "formaat": body.get("formaat", ""),
            "taal": body["taal"],
            "versie": 1,
            "beginRegistratie": self._now().isoformat(),
            "bestandsnaam": body.get("bestandsnaam", ""),
            "inhoud": f"{url}/download?versie=1",
            "bestandsomvang": len(content),
            "link": "",
            "beschrijving": body.get("beschrijving", ""),
            "ontvangstdatum": body.get("ontvangstdatum"),
            "verzenddatum": body.get("verzenddatum"),
            "indicatieGebruiksrecht": body.get("indicatieGebruiksrecht"),
            "verschijningsvorm": body.get("verschijningsvorm", ""),
            "ondertekening": None,
            "integriteit": None,
            "informatieobjecttype": body["informatieobjecttype"],
            "locked": False,
            "bestandsdelen": [],
            "trefwoorden": body.get("trefwoorden") or [],
            "inhoudIsVervallen": False,
        }
        eio["uuid"] = key  # kept for the helpers; stripped from answers
        self.eios[key] = eio
        self.contents[key] = content
        return web.json_response(_public(eio), status=201)

    async def _get_eio(self, request: web.Request) -> web.Response:
        eio = self.eios.get(request.match_info["uuid"])
        if eio is None:
            raise _Problem(404, "not_found", "Niet gevonden.")
        return web.json_response(_public(eio))

    async def _download(self, request: web.Request) -> web.Response:
        key = request.match_info["uuid"]
        if key not in self.contents:
            raise _Problem(404, "not_found", "Niet gevonden.")
        return web.Response(body=self.contents[key], content_type="application/octet-stream")


def _uuid(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def _invalid(name: str, code: str) -> Json:
    return {"name": name, "code": code, "reason": f"{name}: {code}"}


def _kenmerken(value: Any) -> list[Json]:
    if not isinstance(value, list):
        raise _Problem(400, "invalid", "Invalid input.", [_invalid("kenmerken", "not_a_list")])
    out = []
    for item in value:
        if not isinstance(item, dict) or not item.get("kenmerk") or not item.get("bron"):
            raise _Problem(400, "invalid", "Invalid input.", [_invalid("kenmerken", "required")])
        if len(str(item["kenmerk"])) > 40 or len(str(item["bron"])) > 40:
            raise _Problem(400, "invalid", "Invalid input.", [_invalid("kenmerken", "max_length")])
        out.append({"kenmerk": str(item["kenmerk"]), "bron": str(item["bron"])})
    return out


def _public(eio: Json) -> Json:
    return {k: v for k, v in eio.items() if k != "uuid"}
