"""The adapter of police team IJmond (``politie-ijmond``): REST/JSON both ways.

The police system pushes incidents to the adapter's local endpoint; the adapter turns an
incident about youths in an approach into a ``signal`` for the coordinator and Halt (the only
police → municipality/Halt type this mapping makes). Inbound case messages are POSTed to the
police system's webhook; refusals of its incidents to its refusals URL; and, when
``incidents_url`` is set, each delivery of an incident's signal to a recipient is annotated on
that incident in the police system's incident API.

Rules kept here:

* **Push, acknowledged only when durable.** ``POST /incidenten`` answers ``202`` only after
  ``RecordSink.accept`` returned, so the incident is in the outbox (or the failed place). A
  malformed incident is answered ``400`` with a readable JSON report *and* kept in the failed
  place with that report; a body larger than ``max_body_bytes`` is answered ``413`` and its
  first bytes are kept there too. Nothing the police system sent is dropped; when nothing could
  be stored the answer is ``503`` and the police system sends again.
* **Stable record ids.** ``<incidentnummer>/<SHA-256 of the body, 16 hex>``: the police
  system re-sending the same incident (after a lost answer) is one message; an amended
  incident (other content) is a new signal. A body without a readable incident number gets
  ``onleesbaar/<SHA-256>``.
* **Only suspects and involved youths become subjects.** Victims, witnesses and reporters
  (``slachtoffer``, ``getuige``, ``melder``) are never shared. The signal goes out only when one
  started approach covers *every* shared person (``MappingContext.approach_for``, or the
  approach named in ``aanpak``); otherwise the SDK refuses it locally (``no_token``) and the
  refusal is reported back — a signal never names a youth without a legal basis.
* **Inbound is idempotent by message id.** Each webhook call carries ``Idempotency-Key:
  <message id>``; the police system deduplicates on it. ``5xx``, ``408``, ``425``, ``429``,
  connection failures and timeouts are transient (``DestinationUnavailableError``), and so are
  ``401``/``403``/``404``/``405``, which mean our configuration or theirs is wrong and a person
  must look — rejecting the message for good would lose it. Any other ``4xx`` is a final
  refusal (``DestinationRejectedError``) with the police system's reason.
* **Deliveries are annotated on the incident** (optional, ``incidents_url``). Once a
  recipient's signed delivery receipt reached the adapter, ``POST
  {incidents_url}/{incidentnummer}/afleveringen`` records "delivered to <recipient>" on the
  incident the record came from, with ``Idempotency-Key: <message id>:afgeleverd:<recipient>``
  (one annotation per recipient, however often the SDK asks). Any answer but ``2xx`` (the
  police system down, ``404`` for an incident it does not know) is asked again later
  (``DestinationUnavailableError``): there is nothing to reject. Without ``incidents_url`` the
  destination has no ``report_delivery`` and the police system is told of no deliveries, as
  before.
* **Approach-notice → person numbers.** The notice's identifying details go to the webhook;
  the police system matches them (name and date of birth) in its own register and answers with
  ``koppelingen`` (pseudonym → ``persoonsnummer``). Persons it does not know get no mapping.
* The mapping does no I/O; the HTTP session is shared by source and destination and closed
  by ``Source.close`` (the SDK has no close hook on ``Destination``). The HTTP plumbing and
  the status-code rules are shared with the CJG adapter: ``adapters/partners/_rest.py``.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import msgspec
from aiohttp import web

from adapters.base import (
    Applied,
    Clock,
    Delivered,
    DestinationUnavailableError,
    InboundMessage,
    MalformedRecordError,
    MappingContext,
    Outbound,
    RecordSink,
    Refusal,
    SourceBase,
    SourceRecord,
    Transport,
)
from adapters.config import AdapterConfig
from adapters.errors import AdapterError
from adapters.partners._rest import (
    JsonHttp,
    check_answer,
    check_refusal_answer,
    couplings,
    envelope,
    reason_text,
    refusal_key,
)
from adapters.partners._settings import check_keys, config_error, http_url
from gateway.protocol.messages import ApproachNotice, Signal, SignalCategory

logger = logging.getLogger("adapters.partners.police")

TRANSPORT: Final = "police-rest"
INCIDENTS_PATH: Final = "/incidenten"
# Under ``incidents_url``/{incidentnummer}: where a delivery is annotated on the incident.
DELIVERIES_PATH: Final = "afleveringen"

# What ``ketenpost init`` writes into politie-ijmond's adapter.toml for a development
# deployment: the fake police system (``adapters.testing.police_fake``) listens on 8462.
DEFAULT_SYSTEM_TOML: Final = """\
[system]
transport = "police-rest"
# The local endpoint the police system POSTs incidents to (POST /incidenten).
listen = "127.0.0.1:8461"
# The police system's webhook for inbound case messages, and where refusals are reported.
webhook_url = "http://127.0.0.1:8462/ketenpost/berichten"
refusals_url = "http://127.0.0.1:8462/ketenpost/weigeringen"
# The police system's incident API: deliveries are annotated on the incident
# (POST …/{incidentnummer}/afleveringen). Empty or left out: no delivery reports.
incidents_url = "http://127.0.0.1:8462/api/incidenten"
timeout_s = 10
connect_timeout_s = 3
max_body_bytes = 1048576
# A file holding the bearer token the police system must present; empty: no token required.
ingest_token_file = ""
"""

_KEYS: Final = frozenset(
    {
        "transport",
        "listen",
        "webhook_url",
        "refusals_url",
        "incidents_url",
        "timeout_s",
        "connect_timeout_s",
        "max_body_bytes",
        "ingest_token_file",
    }
)
# How much of an oversized body the failed place keeps as evidence.
_OVERSIZED_KEPT_BYTES: Final = 65_536
_REJECTED_KEY: Final = "afgewezen"  # record metadata: a transport-level report for the mapping

_INCIDENT_NUMBER = re.compile(r"^PL[0-9]{4}-[0-9]{4}-?[0-9]{5,8}$")
_PARTNER_ID = re.compile(r"^[a-z][a-z0-9-]{1,62}$")
_TOKEN_ID = re.compile(r"^[0-9a-f]{32}$")
_TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")

# The police system's incident categories → the covenant's signal categories.
CATEGORIES: Final[Mapping[str, SignalCategory]] = {
    "overlast": SignalCategory.NUISANCE,
    "vernieling": SignalCategory.VANDALISM,
    "diefstal": SignalCategory.THEFT,
    "geweld": SignalCategory.VIOLENCE,
    "bedreiging": SignalCategory.THREAT,
    "drugs": SignalCategory.DRUGS,
    "wapenbezit": SignalCategory.WEAPONS,
    "online": SignalCategory.ONLINE,
    "schoolverzuim": SignalCategory.SCHOOL_ABSENCE,
    "zorgmelding": SignalCategory.CONCERN,
    "overig": SignalCategory.OTHER,
}
# Roles of a person in an incident; only the first two make a youth a subject of the signal.
SHARED_ROLES: Final = frozenset({"verdachte", "betrokkene"})
ROLES: Final = SHARED_ROLES | {"slachtoffer", "getuige", "melder"}


# -- configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class PoliceSettings:
    """The ``[system]`` table, validated. Times in seconds, sizes in bytes."""

    listen_host: str
    listen_port: int
    webhook_url: str
    refusals_url: str
    # The incident API's base URL for delivery annotations; ``None``: no delivery reports.
    incidents_url: str | None = None
    timeout_s: float = 10.0
    connect_timeout_s: float = 3.0
    max_body_bytes: int = 1_048_576
    # The bearer token the police system must present; ``None``: none required.
    ingest_token: str | None = None


def _positive(config: AdapterConfig, key: str, value: object, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise config_error(config, key, f"{value!r} is not a positive number of seconds")
    return float(value)


def _listen(config: AdapterConfig, value: object) -> tuple[str, int]:
    if not isinstance(value, str) or ":" not in value:
        raise config_error(config, "listen", f"{value!r} is not HOST:PORT")
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or int(port) > 65_535:
        raise config_error(config, "listen", f"{value!r} is not HOST:PORT")
    return host, int(port)


def _token_file(config: AdapterConfig, key: str, value: object) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise config_error(config, key, "must be a file path")
    path = config.path(value)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise config_error(config, key, f"cannot read {path}: {exc.strerror}") from None
    if not token:
        raise config_error(config, key, f"{path} is empty")
    return token


def parse_settings(config: AdapterConfig) -> PoliceSettings:
    """Validate ``[system]``; ``AdapterConfigError`` with one line naming the bad key."""
    system = config.system
    check_keys(config, _KEYS, TRANSPORT)
    host, port = _listen(config, system.get("listen"))
    max_body = system.get("max_body_bytes", 1_048_576)
    if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 1024:
        raise config_error(
            config, "max_body_bytes", f"{max_body!r} is not a size of at least 1024 bytes"
        )
    return PoliceSettings(
        listen_host=host,
        listen_port=port,
        webhook_url=http_url(config, "webhook_url", system.get("webhook_url")),
        refusals_url=http_url(config, "refusals_url", system.get("refusals_url")),
        incidents_url=(
            None
            if system.get("incidents_url") in (None, "")
            else http_url(config, "incidents_url", system["incidents_url"], query=False)
        ),
        timeout_s=_positive(config, "timeout_s", system.get("timeout_s"), 10.0),
        connect_timeout_s=_positive(
            config, "connect_timeout_s", system.get("connect_timeout_s"), 3.0
        ),
        max_body_bytes=max_body,
        ingest_token=_token_file(config, "ingest_token_file", system.get("ingest_token_file")),
    )


# -- the incident format -------------------------------------------------------------------


class Betrokkene(msgspec.Struct, frozen=True):
    """A person in an incident, by the police system's own person number."""

    persoonsnummer: str
    rol: str


class Incident(msgspec.Struct, frozen=True):
    """An incident as the police system POSTs it. Unknown fields are ignored: the police
    system may send more than the covenant needs, and none of it is forwarded."""

    incidentnummer: str
    datum: str
    categorie: str
    omschrijving: str
    betrokkenen: list[Betrokkene]
    gemeente: str
    ontvangers: list[str]
    # The approach the police know the incident belongs to (a token id); optional.
    aanpak: str | None = None


_INCIDENT_DECODER: Final = msgspec.json.Decoder(Incident)


def incident_date(value: str) -> datetime.date:
    """``datum`` as the police system writes it: ``JJJJ-MM-DD`` or an ISO 8601 time with an
    offset (``2026-03-01T22:40:00+01:00``), whose local date is the incident's date."""
    try:
        if len(value) == 10:
            return datetime.date.fromisoformat(value)
        return datetime.datetime.fromisoformat(value).date()
    except ValueError:
        raise MalformedRecordError(
            f"datum: {value!r} is not a date (JJJJ-MM-DD or an ISO 8601 time)"
        ) from None


def parse_incident(data: bytes) -> Incident:
    """Decode and check an incident; ``MalformedRecordError`` saying what and where."""
    try:
        incident = _INCIDENT_DECODER.decode(data)
    except msgspec.DecodeError as exc:
        # msgspec names the path and the expected type, never the value of a string field.
        raise MalformedRecordError(f"incident is not the JSON expected: {exc}") from None
    if not _INCIDENT_NUMBER.match(incident.incidentnummer):
        raise MalformedRecordError(
            "incidentnummer: not a police registration number (PLnnnn-jjjj-nnnnnnn)"
        )
    incident_date(incident.datum)
    if incident.categorie not in CATEGORIES:
        known = ", ".join(sorted(CATEGORIES))
        raise MalformedRecordError(f"categorie: {incident.categorie!r} is not one of {known}")
    if not incident.omschrijving.strip() or len(incident.omschrijving) > 8000:
        raise MalformedRecordError("omschrijving: must be 1 to 8000 characters")
    if not incident.gemeente.strip() or len(incident.gemeente) > 200:
        raise MalformedRecordError("gemeente: must be 1 to 200 characters")
    if not incident.betrokkenen:
        raise MalformedRecordError("betrokkenen: the incident names no person")
    for n, person in enumerate(incident.betrokkenen):
        if not person.persoonsnummer.strip() or len(person.persoonsnummer) > 64:
            raise MalformedRecordError(f"betrokkenen[{n}].persoonsnummer: empty or too long")
        if person.rol not in ROLES:
            raise MalformedRecordError(
                f"betrokkenen[{n}].rol: {person.rol!r} is not one of {', '.join(sorted(ROLES))}"
            )
    if not incident.ontvangers:
        raise MalformedRecordError("ontvangers: the incident names no recipient")
    for n, partner in enumerate(incident.ontvangers):
        if not _PARTNER_ID.match(partner):
            raise MalformedRecordError(f"ontvangers[{n}]: {partner!r} is not a partner id")
    if incident.aanpak is not None and not _TOKEN_ID.match(incident.aanpak):
        raise MalformedRecordError("aanpak: not an approach token id (32 hex characters)")
    return incident


def record_id_for(data: bytes) -> str:
    """The stable record id of a pushed body (see the module docstring)."""
    digest = hashlib.sha256(data).hexdigest()
    try:
        number = msgspec.json.decode(data, type=dict[str, Any]).get("incidentnummer")
    except msgspec.DecodeError:
        number = None
    if isinstance(number, str) and _INCIDENT_NUMBER.match(number):
        return f"{number}/{digest[:16]}"
    return f"onleesbaar/{digest}"


def incident_number_of(record_id: str) -> str | None:
    number, _, _ = record_id.rpartition("/")
    return number if _INCIDENT_NUMBER.match(number) else None


class IncidentMapping:
    """Incident → ``Signal`` to the incident's ``ontvangers`` (pure; no I/O)."""

    def map(self, record: SourceRecord, context: MappingContext) -> Outbound:
        rejected = record.metadata.get(_REJECTED_KEY)
        if rejected:
            raise MalformedRecordError(rejected)
        incident = parse_incident(record.data)
        local_ids = list(
            dict.fromkeys(p.persoonsnummer for p in incident.betrokkenen if p.rol in SHARED_ROLES)
        )
        if not local_ids:
            raise MalformedRecordError(
                "betrokkenen: no person with rol 'verdachte' or 'betrokkene'; a signal is "
                "about a youth in an approach"
            )
        if incident.aanpak is not None:
            token_id = incident.aanpak
            subjects = [context.pseudonym(token_id, local) for local in local_ids]
        else:
            approach = context.approach_for(local_ids)
            token_id = approach.token_id
            subjects = [approach.pseudonyms[local] for local in local_ids]
        trace = record.metadata.get("traceparent")
        return Outbound(
            recipients=tuple(dict.fromkeys(incident.ontvangers)),
            token_id=token_id,
            body=Signal(
                subjects=tuple(sorted(subjects)),
                incident_date=incident_date(incident.datum),
                category=CATEGORIES[incident.categorie],
                summary=incident.omschrijving,
                location_municipality=incident.gemeente,
                source_reference=incident.incidentnummer,
            ),
            trace_id=trace if trace and _TRACEPARENT.match(trace) else None,
        )


# -- source: the local endpoint ------------------------------------------------------------


def _problem(status: int, fout: str, melding: str, **extra: str) -> web.Response:
    return web.json_response(
        {"status": "afgewezen", "fout": fout, "melding": melding, **extra}, status=status
    )


class PoliceSource(SourceBase):
    """The local endpoint the police system POSTs incidents to (a push source)."""

    def __init__(self, settings: PoliceSettings, http: JsonHttp) -> None:
        self.settings = settings
        self._http = http
        self._sink: RecordSink | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        # record id → report, filled by ``quarantine`` while ``accept`` runs.
        self._reports: dict[str, str] = {}
        self._lock = asyncio.Lock()

    @property
    def url(self) -> str:
        """The endpoint's base URL once started (the real port when ``listen`` used 0)."""
        if self._runner is None or not self._runner.addresses:
            raise AdapterError("the police endpoint is not started")
        host, port = self._runner.addresses[0][:2]
        return f"http://{host}:{port}"

    async def start(self, sink: RecordSink) -> None:
        self._sink = sink
        app = web.Application(client_max_size=self.settings.max_body_bytes + 1)
        app.router.add_post(INCIDENTS_PATH, self._incident)
        self._runner = web.AppRunner(app, shutdown_timeout=1)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.settings.listen_host, self.settings.listen_port)
        await self._site.start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self._http.close()

    async def quarantine(self, record: SourceRecord, report: str) -> None:
        self._reports[record.record_id] = report

    async def _read(self, request: web.Request) -> tuple[bytes, bool]:
        """The body, or its first bytes and ``True`` when it is larger than allowed."""
        limit = self.settings.max_body_bytes
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = await request.content.read(min(65_536, limit + 1 - size))
            if not chunk:
                return b"".join(chunks), False
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)[:_OVERSIZED_KEPT_BYTES], True

    def _authorised(self, request: web.Request) -> bool:
        expected = self.settings.ingest_token
        if expected is None:
            return True
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {expected}".encode())

    async def _incident(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            # Unauthenticated input is not kept: anyone could fill the failed place.
            return _problem(401, "niet_geautoriseerd", "Authorization: Bearer TOKEN ontbreekt")
        assert self._sink is not None
        try:
            data, oversized = await self._read(request)
        except (aiohttp.ClientError, OSError) as exc:
            return _problem(400, "onvolledig", f"the body could not be read: {exc}")
        metadata: dict[str, str] = {}
        trace = request.headers.get("traceparent")
        if trace:
            metadata["traceparent"] = trace[:55]
        if oversized:
            record_id = f"te-groot/{hashlib.sha256(data).hexdigest()}"
            metadata[_REJECTED_KEY] = (
                f"the body is larger than {self.settings.max_body_bytes} bytes; "
                f"the first {len(data)} bytes are kept"
            )
        else:
            record_id = record_id_for(data)
            if request.content_type != "application/json":
                metadata[_REJECTED_KEY] = (
                    f"Content-Type: {request.content_type!r}; expected application/json"
                )
        content_type = request.content_type or "application/octet-stream"
        record = SourceRecord(record_id, data, content_type, metadata)
        async with self._lock:
            # One push at a time, so the report ``quarantine`` leaves is this record's.
            self._reports.pop(record_id, None)
            try:
                await self._sink.accept([record])
            except AdapterError as exc:
                logger.exception("incident_not_stored", extra={"detail": str(exc)})
                return _problem(503, "niet_beschikbaar", "not stored; send again later")
            report = self._reports.pop(record_id, None)
        if oversized:
            return _problem(413, "te_groot", report or "", kenmerk=record_id)
        if report is not None:
            return _problem(400, "ongeldig_incident", report, kenmerk=record_id)
        return web.json_response({"status": "aangenomen", "kenmerk": record_id}, status=202)


# -- destination: the webhook --------------------------------------------------------------


class PoliceDestination:
    """Inbound case messages → the police system's webhook; refusals → its refusals URL."""

    def __init__(self, settings: PoliceSettings, http: JsonHttp) -> None:
        self.settings = settings
        self._http = http

    @staticmethod
    def document(message: InboundMessage) -> dict[str, Any]:
        """The webhook body: a Dutch envelope around the covenant message as sent."""
        return envelope(message, "betrokkenen", "persoonsnummer")

    async def apply(self, message: InboundMessage) -> Applied:
        status, answer = await self._http.post(
            self.settings.webhook_url, self.document(message), message.message_id
        )
        check_answer(
            status,
            answer,
            system=self._http.system,
            what=f"message {message.message_id}",
            on_misconfigured=_misconfigured,
        )
        if not isinstance(message.body, ApproachNotice):
            return Applied()
        return Applied(
            couplings(answer, set(message.subjects), "persoonsnummer", system=self._http.system)
        )

    async def report_refusal(self, record_id: str, refusal: Refusal) -> None:
        document = {
            "kenmerk": record_id,
            "incidentnummer": incident_number_of(record_id),
            "berichtId": refusal.message_id,
            "geweigerdDoor": refusal.by,
            "reden": refusal.reason,
            "toelichting": refusal.detail,
            "ontvanger": refusal.recipient,
        }
        key = refusal_key(refusal)
        status, answer = await self._http.post(self.settings.refusals_url, document, key)
        check_refusal_answer(status, answer, system=self._http.system)


class PoliceDeliveryDestination(PoliceDestination):
    """``PoliceDestination`` that also annotates deliveries on the incident (``incidents_url``
    set; implements ``adapters.base.DeliveryReporter``)."""

    def __init__(self, settings: PoliceSettings, http: JsonHttp, incidents_url: str) -> None:
        super().__init__(settings, http)
        self._incidents_url = incidents_url.rstrip("/")

    async def report_delivery(self, record_id: str, delivered: Delivered) -> None:
        number = incident_number_of(record_id)
        if number is None:
            # Only a readable incident becomes a message (anything else is malformed), so
            # this is not reached; were it, there is no incident to annotate.
            logger.warning("delivery_without_incident", extra={"detail": "no incident number"})
            return
        document = {
            "kenmerk": record_id,
            "berichtId": delivered.message_id,
            "status": "afgeleverd",
            "ontvanger": delivered.recipient,
            "afgeleverdOp": datetime.datetime.fromtimestamp(delivered.at, datetime.UTC).isoformat(),
        }
        key = f"{delivered.message_id}:afgeleverd:{delivered.recipient}"
        url = f"{self._incidents_url}/{number}/{DELIVERIES_PATH}"
        status, answer = await self._http.post(url, document, key)
        if not 200 <= status < 300:
            detail = f"{self._http.system} answered {status} to a delivery report"
            raise DestinationUnavailableError(f"{detail}: {reason_text(answer)}")


def _misconfigured(detail: str) -> None:
    # A person must look (a URL, the token or a permission is wrong); the message waits.
    logger.error("police_webhook_misconfigured", extra={"detail": detail})


def create_transport(config: AdapterConfig, clock: Clock) -> Transport:
    """The police transport from ``[system]``; ``AdapterConfigError`` naming the bad key."""
    del clock  # the police system timestamps its own incidents
    settings = parse_settings(config)
    http = JsonHttp(
        "police system", timeout_s=settings.timeout_s, connect_timeout_s=settings.connect_timeout_s
    )
    destination = (
        PoliceDestination(settings, http)
        if settings.incidents_url is None
        else PoliceDeliveryDestination(settings, http, settings.incidents_url)
    )
    return Transport(PoliceSource(settings, http), IncidentMapping(), destination)
