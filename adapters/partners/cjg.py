"""The adapter of the Centrum voor Jeugd en Gezin (``cjg``): polling the CJG client system's
REST API, and POSTing inbound messages back to it.

The CJG client system publishes an export feed for the covenant, ``GET /events?since=CURSOR``:
a care worker who decides to share something about a client (Jeugdwet art. 7.3.11) puts an
event on it — a progress report (``voortgang``) or a contribution to a case conference
(``casusoverleg``) about clients by their own client numbers. The adapter turns these into
``progress`` and ``case-conference`` messages for the coordinating municipality (youth care may
send only to the municipality under the covenant policy; anything else is refused and reported).

Rules kept here:

* **Pull with the CJG's own cursor.** ``pull`` asks for the events after the cursor it is
  given and follows ``meer`` (more) page by page up to ``MAX_RECORDS_PER_PULL``; the SDK
  commits the records and the last page's cursor in one transaction, so after a crash the
  same events are read again and, having the same event ids, make no second message. When the
  feed has nothing more, the source waits ``poll_interval_s`` (on the injected clock) before it
  asks again.
* **Every event on the feed is meant for the covenant**, so an event that is not what this
  adapter expects (a field missing, a wrong type, a bad date, an unknown ``soort``, larger than
  ``max_event_bytes``) is a malformed record: it goes to the failed place with a report and
  the cursor moves on. A page that is not JSON at all, an HTTP error or an unreachable system
  raises ``AdapterError``: nothing is stored and the cursor stays where it was.
* **Record id = the event id** (``id``, stable in the CJG system); an event without a usable
  id gets ``onleesbaar/<SHA-256 of its bytes>``.
* **Bearer token from a file** (``api_token_file``), never from adapter.toml; it is read again
  after a ``401`` so a rotated token is picked up without a restart.
* **Inbound is idempotent by message id**: ``POST /inbound`` with ``Idempotency-Key: <message
  id>``. Transient (``DestinationUnavailableError``): connection failures, timeouts, ``5xx``,
  ``401``/``403``/``404``/``405``/``408``/``425``/``429``. Any other ``4xx`` is a final refusal
  with the CJG's reason. An ``approach-notice`` is answered with ``koppelingen`` (pseudonym →
  client number): the CJG system matches its clients by BSN, or by name and date of birth.
* Refusals of the CJG's events go to ``POST /refusals``, idempotent by the same kind of key.
  (The HTTP plumbing and the status-code rules are shared with the police adapter:
  ``adapters/partners/_rest.py``; unlike the police adapter, this one also polls with ``GET``
  and re-reads its token after a ``401``.)
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import msgspec
import yarl

from adapters.base import (
    Applied,
    Clock,
    InboundMessage,
    MalformedRecordError,
    MappingContext,
    Outbound,
    PullBatch,
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
    refusal_key,
)
from adapters.partners._settings import check_keys, config_error, http_url
from gateway.protocol.messages import (
    ApproachNotice,
    CaseConference,
    CaseMessage,
    Progress,
    ProgressStatus,
)

logger = logging.getLogger("adapters.partners.cjg")

TRANSPORT: Final = "cjg-rest"
MAX_RECORDS_PER_PULL: Final = 1000

# What ``ketenpost init`` writes into cjg's adapter.toml for a development deployment: the
# fake CJG system (``adapters.testing.cjg_fake``) serves its API under this base URL, and the
# token file must hold the token it expects.
DEFAULT_SYSTEM_TOML: Final = """\
[system]
transport = "cjg-rest"
# The CJG client system's API: GET /events?since=CURSOR, POST /inbound, POST /refusals.
base_url = "http://127.0.0.1:8463/api/v1"
# The bearer token for that API, in a file (relative to this folder), never here.
api_token_file = "secrets/cjg-api-token"
# Seconds between polls of a feed that had nothing more.
poll_interval_s = 5
page_size = 100
timeout_s = 10
connect_timeout_s = 3
max_event_bytes = 262144
"""

_KEYS: Final = frozenset(
    {
        "transport",
        "base_url",
        "api_token_file",
        "poll_interval_s",
        "page_size",
        "timeout_s",
        "connect_timeout_s",
        "max_event_bytes",
    }
)
_MAX_PAGE_BYTES: Final = 64 * 1024 * 1024
_KEPT_BYTES: Final = 65_536  # of an oversized event, as evidence in the failed place
_REJECTED_KEY: Final = "afgewezen"
_EVENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")
_PARTNER_ID = re.compile(r"^[a-z][a-z0-9-]{1,62}$")
_TOKEN_ID = re.compile(r"^[0-9a-f]{32}$")

# The CJG's progress statuses → the covenant's.
STATUSES: Final[Mapping[str, ProgressStatus]] = {
    "op-koers": ProgressStatus.ON_TRACK,
    "zorgen": ProgressStatus.CONCERN,
    "afgerond": ProgressStatus.COMPLETED,
    "niet-afgerond": ProgressStatus.NOT_COMPLETED,
    "geen-contact": ProgressStatus.NO_CONTACT,
}
SOORTEN: Final = ("voortgang", "casusoverleg")


# -- configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class CjgSettings:
    """The ``[system]`` table, validated. Times in seconds, sizes in bytes."""

    base_url: str
    api_token_file: Path
    poll_interval_s: int = 30
    page_size: int = 100
    timeout_s: float = 10.0
    connect_timeout_s: float = 3.0
    max_event_bytes: int = 262_144


def _number(
    config: AdapterConfig, key: str, default: float, *, minimum: float, integer: bool = False
) -> float:
    value: object = config.system.get(key, default)
    wrong_kind = isinstance(value, bool) or (integer and not isinstance(value, int))
    if wrong_kind or not isinstance(value, int | float) or value < minimum:
        kind = "an integer" if integer else "a number"
        raise config_error(config, key, f"{value!r} is not {kind} of at least {minimum:g}")
    return float(value)


def read_token(path: Path) -> str:
    """The bearer token in ``path``; ``AdapterError`` when it cannot be read or is empty."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise AdapterError(f"cannot read the CJG API token {path}: {exc.strerror}") from None
    if not token:
        raise AdapterError(f"the CJG API token file {path} is empty")
    return token


def parse_settings(config: AdapterConfig) -> CjgSettings:
    """Validate ``[system]``; ``AdapterConfigError`` with one line naming the bad key."""
    system = config.system
    check_keys(config, _KEYS, TRANSPORT)
    base_url = http_url(config, "base_url", system.get("base_url"), query=False)
    token_file = system.get("api_token_file")
    if not isinstance(token_file, str) or not token_file:
        raise config_error(config, "api_token_file", "is missing (a file holding the bearer token)")
    path = config.path(token_file)
    try:
        read_token(path)
    except AdapterError as exc:
        raise config_error(config, "api_token_file", str(exc)) from None
    return CjgSettings(
        base_url=base_url.rstrip("/"),
        api_token_file=path,
        poll_interval_s=int(_number(config, "poll_interval_s", 30, minimum=0, integer=True)),
        page_size=int(_number(config, "page_size", 100, minimum=1, integer=True)),
        timeout_s=_number(config, "timeout_s", 10.0, minimum=0.001),
        connect_timeout_s=_number(config, "connect_timeout_s", 3.0, minimum=0.001),
        max_event_bytes=int(
            _number(config, "max_event_bytes", 262_144, minimum=1024, integer=True)
        ),
    )


# -- the event format ----------------------------------------------------------------------


class Voortgang(msgspec.Struct, frozen=True):
    status: str
    samenvatting: str
    datum: str
    actie: str | None = None


class Casusoverleg(msgspec.Struct, frozen=True):
    datum: str
    deelnemers: list[str]
    agenda: list[str]
    besluiten: list[str] = []
    vervolgdatum: str | None = None


class Event(msgspec.Struct, frozen=True):
    """One event of the CJG's export feed. Unknown fields are ignored (the CJG system may
    add fields; none of them is forwarded)."""

    id: str
    soort: str
    aangemaakt: str
    clientnummers: list[str]
    ontvangers: list[str]
    aanpak: str | None = None
    voortgang: Voortgang | None = None
    casusoverleg: Casusoverleg | None = None


class _Page(msgspec.Struct, frozen=True):
    gebeurtenissen: list[msgspec.Raw]
    cursor: str
    meer: bool = False


_EVENT_DECODER: Final = msgspec.json.Decoder(Event)
_PAGE_DECODER: Final = msgspec.json.Decoder(_Page)


def _date(value: str, where: str) -> datetime.date:
    """A date as the CJG system writes it: ``JJJJ-MM-DD``."""
    if len(value) == 10:
        try:
            return datetime.date.fromisoformat(value)
        except ValueError:
            pass
    raise MalformedRecordError(f"{where}: {value!r} is not a date (JJJJ-MM-DD)")


def parse_event(data: bytes) -> Event:
    """Decode and check an event; ``MalformedRecordError`` saying what and where."""
    try:
        event = _EVENT_DECODER.decode(data)
    except msgspec.DecodeError as exc:
        raise MalformedRecordError(f"event is not the JSON expected: {exc}") from None
    try:
        datetime.datetime.fromisoformat(event.aangemaakt)
    except ValueError:
        raise MalformedRecordError(
            f"aangemaakt: {event.aangemaakt!r} is not an ISO 8601 time"
        ) from None
    if event.soort not in SOORTEN:
        raise MalformedRecordError(f"soort: {event.soort!r} is not one of {', '.join(SOORTEN)}")
    if getattr(event, event.soort) is None:
        raise MalformedRecordError(f"{event.soort}: missing for an event of soort {event.soort!r}")
    if not event.clientnummers or not all(c.strip() for c in event.clientnummers):
        raise MalformedRecordError("clientnummers: the event names no client")
    if not event.ontvangers:
        raise MalformedRecordError("ontvangers: the event names no recipient")
    for n, partner in enumerate(event.ontvangers):
        if not _PARTNER_ID.match(partner):
            raise MalformedRecordError(f"ontvangers[{n}]: {partner!r} is not a partner id")
    if event.aanpak is not None and not _TOKEN_ID.match(event.aanpak):
        raise MalformedRecordError("aanpak: not an approach token id (32 hex characters)")
    return event


def _body(event: Event, subjects: tuple[str, ...]) -> CaseMessage:
    if event.voortgang is not None and event.soort == "voortgang":
        v = event.voortgang
        if v.status not in STATUSES:
            known = ", ".join(STATUSES)
            raise MalformedRecordError(f"voortgang.status: {v.status!r} is not one of {known}")
        return Progress(
            subjects=subjects,
            status=STATUSES[v.status],
            summary=v.samenvatting,
            reported_on=_date(v.datum, "voortgang.datum"),
            action=v.actie,
        )
    c = event.casusoverleg
    assert c is not None  # parse_event checked that the soort's part is there
    for n, partner in enumerate(c.deelnemers):
        if not _PARTNER_ID.match(partner):
            raise MalformedRecordError(
                f"casusoverleg.deelnemers[{n}]: {partner!r} is not a partner id"
            )
    return CaseConference(
        subjects=subjects,
        date=_date(c.datum, "casusoverleg.datum"),
        participants=tuple(c.deelnemers),
        agenda=tuple(c.agenda),
        decisions=tuple(c.besluiten),
        next_date=None
        if c.vervolgdatum is None
        else _date(c.vervolgdatum, "casusoverleg.vervolgdatum"),
    )


class EventMapping:
    """CJG event → ``progress`` or ``case-conference`` (pure; no I/O)."""

    def map(self, record: SourceRecord, context: MappingContext) -> Outbound:
        rejected = record.metadata.get(_REJECTED_KEY)
        if rejected:
            raise MalformedRecordError(rejected)
        event = parse_event(record.data)
        clients = list(dict.fromkeys(event.clientnummers))
        if event.aanpak is not None:
            token_id = event.aanpak
            pseudonyms = [context.pseudonym(token_id, c) for c in clients]
        else:
            approach = context.approach_for(clients)
            token_id = approach.token_id
            pseudonyms = [approach.pseudonyms[c] for c in clients]
        return Outbound(
            recipients=tuple(dict.fromkeys(event.ontvangers)),
            token_id=token_id,
            body=_body(event, tuple(sorted(pseudonyms))),
        )


def record_for(raw: bytes, cursor: str, max_bytes: int) -> SourceRecord:
    """The record of one raw event of a page (see the module docstring for its id)."""
    digest = hashlib.sha256(raw).hexdigest()
    try:
        event_id = msgspec.json.decode(raw, type=dict[str, Any]).get("id")
    except msgspec.DecodeError:
        event_id = None
    record_id = (
        event_id if isinstance(event_id, str) and _EVENT_ID.match(event_id) else None
    ) or f"onleesbaar/{digest}"
    metadata = {"cursor": cursor}
    if len(raw) > max_bytes:
        metadata[_REJECTED_KEY] = (
            f"the event is {len(raw)} bytes, more than {max_bytes}; the first "
            f"{_KEPT_BYTES} bytes are kept"
        )
        raw = raw[:_KEPT_BYTES]
    return SourceRecord(record_id, raw, "application/json", metadata)


# -- HTTP to the CJG system ----------------------------------------------------------------


class CjgApi:
    """The CJG client system's REST API, with the bearer token from the token file."""

    def __init__(self, settings: CjgSettings) -> None:
        self.settings = settings
        self._http = JsonHttp(
            "CJG system", timeout_s=settings.timeout_s, connect_timeout_s=settings.connect_timeout_s
        )
        self._token = read_token(settings.api_token_file)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}

    def _unauthorised(self) -> None:
        # The token may have been rotated: read the file again for the next call.
        try:
            self._token = read_token(self.settings.api_token_file)
        except AdapterError as exc:
            logger.error("cjg_token_unreadable", extra={"detail": str(exc)})  # noqa: TRY400

    @property
    def system(self) -> str:
        return self._http.system

    async def close(self) -> None:
        await self._http.close()

    async def events(self, cursor: str | None) -> _Page:
        """One page of the feed after ``cursor``; ``AdapterError`` when it cannot be read."""
        query = {"limit": str(self.settings.page_size)}
        if cursor is not None:
            query["since"] = cursor
        url = yarl.URL(f"{self.settings.base_url}/events").with_query(query)
        try:
            async with self._http.session().get(url, headers=self._headers()) as response:
                if response.status == 401:
                    self._unauthorised()
                if response.status != 200:
                    raise AdapterError(f"CJG events feed answered {response.status}")
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.content.iter_chunked(65_536):
                    size += len(chunk)
                    if size > _MAX_PAGE_BYTES:
                        raise AdapterError(f"CJG events page larger than {_MAX_PAGE_BYTES} bytes")
                    chunks.append(chunk)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise AdapterError(f"CJG events feed unreachable: {type(exc).__name__}") from None
        try:
            return _PAGE_DECODER.decode(b"".join(chunks))
        except msgspec.DecodeError as exc:
            raise AdapterError(f"CJG events page is not the JSON expected: {exc}") from None

    async def post(self, path: str, document: Mapping[str, Any], key: str) -> tuple[int, Any]:
        """POST JSON; (status, decoded answer or ``None``). Connection failures and timeouts
        raise ``DestinationUnavailableError``."""
        url = f"{self.settings.base_url}{path}"
        status, answer = await self._http.post(url, document, key, self._headers())
        if status == 401:
            self._unauthorised()
        return status, answer


# -- source and destination ----------------------------------------------------------------


class CjgSource(SourceBase):
    """Polls ``GET /events?since=CURSOR``."""

    def __init__(self, api: CjgApi, clock: Clock) -> None:
        self.api = api
        self.clock = clock
        self._idle_until = 0

    async def pull(self, cursor: str | None) -> PullBatch:
        if self.clock.now() < self._idle_until:
            return PullBatch(())
        records: list[SourceRecord] = []
        next_cursor = cursor
        while True:
            page = await self.api.events(next_cursor)
            if page.cursor == next_cursor and page.gebeurtenissen:
                raise AdapterError("CJG events feed did not move its cursor past a full page")
            next_cursor = page.cursor
            records.extend(
                record_for(bytes(raw), page.cursor, self.api.settings.max_event_bytes)
                for raw in page.gebeurtenissen
            )
            if not page.meer or not page.gebeurtenissen:
                self._idle_until = self.clock.now() + self.api.settings.poll_interval_s
                break
            if len(records) >= MAX_RECORDS_PER_PULL:
                break
        return PullBatch(records, next_cursor)

    async def close(self) -> None:
        await self.api.close()


class CjgDestination:
    """Inbound case messages → ``POST /inbound``; refusals → ``POST /refusals``."""

    def __init__(self, api: CjgApi) -> None:
        self.api = api

    @staticmethod
    def document(message: InboundMessage) -> dict[str, Any]:
        """The ``POST /inbound`` body: a Dutch envelope around the covenant message as sent."""
        return envelope(message, "clienten", "clientnummer")

    async def apply(self, message: InboundMessage) -> Applied:
        status, answer = await self.api.post("/inbound", self.document(message), message.message_id)
        system = self.api.system
        check_answer(status, answer, system=system, what=f"message {message.message_id}")
        if not isinstance(message.body, ApproachNotice):
            return Applied()
        return Applied(couplings(answer, set(message.subjects), "clientnummer", system=system))

    async def report_refusal(self, record_id: str, refusal: Refusal) -> None:
        document = {
            "gebeurtenisId": record_id,
            "berichtId": refusal.message_id,
            "geweigerdDoor": refusal.by,
            "reden": refusal.reason,
            "toelichting": refusal.detail,
            "ontvanger": refusal.recipient,
        }
        status, answer = await self.api.post("/refusals", document, refusal_key(refusal))
        check_refusal_answer(status, answer, system=self.api.system)


def create_transport(config: AdapterConfig, clock: Clock) -> Transport:
    """The CJG transport from ``[system]``; ``AdapterConfigError`` naming the bad key."""
    api = CjgApi(parse_settings(config))
    return Transport(CjgSource(api, clock), EventMapping(), CjgDestination(api))
