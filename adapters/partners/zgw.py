"""The municipalities' adapter: a client of the ZGW Zaken and Documenten APIs, and the
coordinator that turns the municipality's case decisions into approach tokens.

One *zaak* (of the configured zaaktype) is one approach. The adapter **polls** the Zaken API
(``GET /zaken?zaaktype=…``, then ``GET /statussen?zaak=…`` for each zaak whose current status
moved); a Notificaties API subscription would only replace that poll. Each new status of a
configured statustype is one zaak event:

==========================  ====================================================================
statustype (``[system]``)   what the coordinator does
==========================  ====================================================================
``statustype_gestart``      issue an approach token from the zaak's decision, register it at the
                            gateway, write its id into the zaak's ``kenmerken``, and send an
                            ``approach-notice`` (``started``) to every other participant
``statustype_gewijzigd``    issue a token that ``supersedes`` the zaak's current one (subjects
                            keep their pseudonyms; new youth get fresh ones), register it, add
                            its id to the ``kenmerken``, ``approach-notice`` (``changed``)
``statustype_casusoverleg`` ``case-conference`` to the participants
``statustype_plan``         ``action-plan`` to the participants
``statustype_beeindigd``    ``closure`` to the participants; the token is **revoked** once every
                            recipient answered the closure (a revocation purges undelivered
                            messages, so revoking at once would swallow the closure)
``statustype_ingetrokken``  revoke the token at once (the legal basis is gone; nothing more may
                            be sent, so no closure)
==========================  ====================================================================

The decision is read from the zaak: ``zaakeigenschappen`` by ``naam`` (``aanpak_soort``
``persoonsgericht|groepsaanpak``, ``aanpak_deelnemers`` partner ids, ``geinformeerd_op`` or
``informeren_uitgesteld_tot`` with ``informeren_toelichting``, ``regisseur``, …), the youth from
the ``rollen`` of the configured ``roltype_jongere`` (natural persons), the decider from a
``beslisser`` rol, the reference from the zaak's ``identificatie``, the decision date from the
status's ``datumStatusGezet``, the end from ``einddatumGepland``.

Rules kept here:

* **Crash-safe, idempotent coordinator steps.** The token id of a zaak event is derived from
  the status URL with the outbox key (``HMAC``), so re-reading the same event after a crash
  finds the token already kept (``Adapter.remember_token``, before registering) and reuses it:
  the same bytes are registered again (the gateway answers idempotently), the same kenmerk is
  written once, the same record ids give the same message ids. Pseudonyms are random (128 bit)
  per subject per approach, never derived from a BSN or a name.
* **Per-role identifying details** (``adapters.role_details``: ``ROLE_DETAILS``, applied by
  ``details_for_role``, which ``ketenpost approach notice`` calls too): each recipient's
  approach-notice holds only what its role may hold; one record per recipient.
* **Inbound.** Every delivered message becomes one ``EnkelvoudigInformatieObject`` (a readable
  JSON rendering; ``identificatie`` ``KP`` + the first 38 hex digits of the message id, the full
  id in ``beschrijving``), related by ``zaakinformatieobjecten`` to *the* zaak of its approach,
  found by the token id in the zaak's ``kenmerken`` (bron ``ketenpost``). Both steps look up
  before they create, so a redelivery makes nothing new. A zaak is created for an approach of
  another coordinator the first time one of its messages arrives; a ``changed`` notice adds the
  new token id to the zaak of the one it supersedes.
* **Nothing is dropped.** A zaak event whose data cannot make a token or message becomes a
  record the mapping refuses with a report (the SDK's failed place) and the report is written
  to the zaak as an informatieobject; refusals of our messages are written to the zaak too.
  Reports name fields, never a youth's details.
* The ZGW JWT secret is read from ``secret_file`` (relative to the partner folder), never from
  the config; the token key from ``[keys] token``.
* The SDK hands a transport no coordinator handle; this module uses the ``RecordSink`` that
  ``Source.start`` receives, which is the ``Adapter`` (see the report of the SDK gap).
"""

from __future__ import annotations

import datetime
import enum
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import msgspec

from adapters.base import (
    Applied,
    Clock,
    DestinationUnavailableError,
    InboundMessage,
    MalformedRecordError,
    MappingContext,
    Outbound,
    PullBatch,
    RecordSink,
    Refusal,
    SourceBase,
    SourceRecord,
    Transport,
)
from adapters.client import RefusedError
from adapters.config import AdapterConfig, key_family
from adapters.directory import newest_active
from adapters.engine import Adapter
from adapters.errors import AdapterConfigError, AdapterError
from adapters.partners._settings import check_keys
from adapters.partners._settings import where as settings_where
from adapters.partners._zgw_client import (
    ZgwClient,
    ZgwCredentials,
    ZgwError,
    ZgwRefusedError,
    ZgwUnavailableError,
)
from adapters.role_details import details_for_role
from gateway.protocol.envelope import derive_message_id
from gateway.protocol.errors import ProtocolError
from gateway.protocol.messages import (
    Action,
    ActionPlan,
    Address,
    ApproachChange,
    ApproachNotice,
    CaseConference,
    CaseMessage,
    Closure,
    ClosureReason,
    PersonDetails,
    bsn_valid,
)
from gateway.protocol.policy import Policy, policy_from_directory, sendable_types
from gateway.protocol.signed import SignedObject
from gateway.protocol.token import (
    PrivatePartOpening,
    RolePurpose,
    TokenSubject,
    decode_signed,
    encode_signed,
    issue,
    revoke,
    verify_token_signature,
)
from gateway.protocol.types import ApproachKind, new_pseudonym
from keys import Directory, Ed25519KeyPair, KeyUse, Role
from keys.keyfile import PassphraseSource, load_ed25519_key, resolve_passphrase

logger = logging.getLogger("adapters.partners.zgw")

TRANSPORT: Final = "zgw"
DAY_S: Final = 86_400
# The bron of the kenmerken that carry a zaak's approach token ids.
KENMERK_BRON: Final = "ketenpost"
# Domain separation of the token ids derived from zaak events (HMAC with the outbox key).
TOKEN_ID_LABEL: Final = b"ketenpost zgw token id v1\x00"
# The gateway judges validity with its own clock, which may lag ours by the covenant's skew.
VALID_FROM_SLACK_S: Final = 300
DEFAULT_VALID_DAYS: Final = 90
# Case files of an approach are kept a year after it ends (what such covenants agree).
RETENTION_AFTER_S: Final = 365 * DAY_S
CURSOR_VERSION: Final = 1
MAX_TEXT: Final = 2000
RSIN_RE: Final = re.compile(r"[0-9]{9}")
VERTROUWELIJKHEID: Final = frozenset(
    {
        "openbaar",
        "beperkt_openbaar",
        "intern",
        "zaakvertrouwelijk",
        "vertrouwelijk",
        "confidentieel",
        "geheim",
        "zeer_geheim",
    }
)

# Zaakeigenschappen (by naam) that describe the decision.
EIG_KIND: Final = "aanpak_soort"
EIG_PARTICIPANTS: Final = "aanpak_deelnemers"
EIG_INFORMED: Final = "geinformeerd_op"
EIG_DEFERRED: Final = "informeren_uitgesteld_tot"
EIG_INFORMING_NOTE: Final = "informeren_toelichting"
EIG_CONTACT: Final = "regisseur"
EIG_CONFERENCE_DATE: Final = "casusoverleg_datum"
EIG_CONFERENCE_AGENDA: Final = "casusoverleg_agenda"
EIG_PLAN_GOAL: Final = "plan_doel"
EIG_PLAN_ACTIONS: Final = "plan_acties"
EIG_PLAN_REVIEW: Final = "plan_evaluatiedatum"
EIG_CLOSURE_REASON: Final = "beeindiging_reden"

_KINDS: Final[Mapping[str, ApproachKind]] = {
    "persoonsgericht": ApproachKind.PERSON,
    "person": ApproachKind.PERSON,
    "groepsaanpak": ApproachKind.GROUP,
    "group": ApproachKind.GROUP,
}


DEFAULT_SYSTEM_TOML: Final = """\
[system]
# The municipality's zaaksysteem through the ZGW APIs (Zaken 1.5, Documenten 1.4).
# Outbound by polling the Zaken API every poll_interval_s; inbound messages become
# informatieobjecten on the zaak of their approach.
transport = "zgw"
zaken_api = "http://127.0.0.1:8800/zaken/api/v1"
documenten_api = "http://127.0.0.1:8800/documenten/api/v1"
# The application as the Autorisaties API knows it; the JWT secret is read from this file
# (relative to this folder, 0600), never written here.
client_id = "ketenpost"
secret_file = "zgw.secret"
user_id = "ketenpost-adapter"
zaaktype = "http://127.0.0.1:8800/catalogi/api/v1/zaaktypen/6f1d3c2a-6a4e-4c55-9a83-0d6b1a0c7a01"
informatieobjecttype = "http://127.0.0.1:8800/catalogi/api/v1/informatieobjecttypen/6f1d3c2a-6a4e-4c55-9a83-0d6b1a0c7a02"
roltype_jongere = "http://127.0.0.1:8800/catalogi/api/v1/roltypen/6f1d3c2a-6a4e-4c55-9a83-0d6b1a0c7a03"
statustype_gestart = "http://127.0.0.1:8800/catalogi/api/v1/statustypen/6f1d3c2a-6a4e-4c55-9a83-0d6b1a0c7a11"
statustype_gewijzigd = "http://127.0.0.1:8800/catalogi/api/v1/statustypen/6f1d3c2a-6a4e-4c55-9a83-0d6b1a0c7a12"
statustype_casusoverleg = "http://127.0.0.1:8800/catalogi/api/v1/statustypen/6f1d3c2a-6a4e-4c55-9a83-0d6b1a0c7a13"
statustype_plan = "http://127.0.0.1:8800/catalogi/api/v1/statustypen/6f1d3c2a-6a4e-4c55-9a83-0d6b1a0c7a14"
statustype_beeindigd = "http://127.0.0.1:8800/catalogi/api/v1/statustypen/6f1d3c2a-6a4e-4c55-9a83-0d6b1a0c7a15"
statustype_ingetrokken = "http://127.0.0.1:8800/catalogi/api/v1/statustypen/6f1d3c2a-6a4e-4c55-9a83-0d6b1a0c7a16"
# RSIN of the municipality (9 digits, eleven-test); a development value.
bronorganisatie = "999990007"
vertrouwelijkheidaanduiding = "vertrouwelijk"
poll_interval_s = 30
"""

_STATUS_KEYS: Final = (
    "statustype_gestart",
    "statustype_gewijzigd",
    "statustype_casusoverleg",
    "statustype_plan",
    "statustype_beeindigd",
    "statustype_ingetrokken",
)
_URL_KEYS: Final = (
    "zaken_api",
    "documenten_api",
    "zaaktype",
    "informatieobjecttype",
    "roltype_jongere",
    *_STATUS_KEYS,
)
_KNOWN_KEYS: Final = frozenset(
    {
        "transport",
        *_URL_KEYS,
        "client_id",
        "secret_file",
        "user_id",
        "user_representation",
        "bronorganisatie",
        "vertrouwelijkheidaanduiding",
        "poll_interval_s",
        "valid_days",
    }
)


class ZaakEvent(enum.StrEnum):
    STARTED = "gestart"
    CHANGED = "gewijzigd"
    CONFERENCE = "casusoverleg"
    PLAN = "plan"
    ENDED = "beeindigd"
    REVOKED = "ingetrokken"


# -- configuration ------------------------------------------------------------------------


def rsin_valid(rsin: str) -> bool:
    """RSIN: nine digits passing the same eleven-test as a BSN."""
    return bool(RSIN_RE.fullmatch(rsin)) and bsn_valid(rsin)


@dataclass(frozen=True)
class ZgwSettings:
    """The ``[system]`` table of a ``zgw`` adapter, validated."""

    zaken_api: str
    documenten_api: str
    client_id: str
    secret_file: Path
    user_id: str
    user_representation: str
    zaaktype: str
    informatieobjecttype: str
    roltype_jongere: str
    statustypes: Mapping[str, ZaakEvent]
    bronorganisatie: str
    vertrouwelijkheidaanduiding: str
    poll_interval_s: float
    valid_days: int

    @classmethod
    def from_config(cls, config: AdapterConfig) -> ZgwSettings:
        """Raise ``AdapterConfigError`` with one line naming the bad key."""
        table = config.system
        where = settings_where(config)

        def text(key: str, default: str | None = None) -> str:
            value = table.get(key, default)
            if not isinstance(value, str) or not value.strip():
                raise AdapterConfigError(f"{where} {key}: a non-empty string is required")
            return value.strip()

        def url(key: str) -> str:
            value = text(key)
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise AdapterConfigError(f"{where} {key}: {value!r} is not an http(s) URL")
            return value.rstrip("/") if key.endswith("_api") else value

        check_keys(config, _KNOWN_KEYS, TRANSPORT, unknown_why="unknown key for transport 'zgw'")
        urls = {key: url(key) for key in _URL_KEYS}
        statustypes: dict[str, ZaakEvent] = {}
        for key in _STATUS_KEYS:
            if urls[key] in statustypes:
                raise AdapterConfigError(f"{where} {key}: the same statustype is named twice")
            statustypes[urls[key]] = ZaakEvent(key.removeprefix("statustype_"))
        if "secret" in table:
            raise AdapterConfigError(f"{where} secret: never inline; name a secret_file")
        rsin = text("bronorganisatie")
        if not rsin_valid(rsin):
            raise AdapterConfigError(
                f"{where} bronorganisatie: {rsin!r} is not an RSIN (9 digits, eleven-test)"
            )
        vertrouwelijk = text("vertrouwelijkheidaanduiding", "vertrouwelijk")
        if vertrouwelijk not in VERTROUWELIJKHEID:
            raise AdapterConfigError(
                f"{where} vertrouwelijkheidaanduiding: {vertrouwelijk!r} is not one of "
                f"{', '.join(sorted(VERTROUWELIJKHEID))}"
            )
        interval = table.get("poll_interval_s", 30)
        if isinstance(interval, bool) or not isinstance(interval, int | float) or interval < 0:
            raise AdapterConfigError(f"{where} poll_interval_s: a number of seconds >= 0")
        valid_days = table.get("valid_days", DEFAULT_VALID_DAYS)
        if isinstance(valid_days, bool) or not isinstance(valid_days, int) or valid_days < 1:
            raise AdapterConfigError(f"{where} valid_days: a whole number of days >= 1")
        client_id = text("client_id")
        return cls(
            zaken_api=urls["zaken_api"],
            documenten_api=urls["documenten_api"],
            client_id=client_id,
            secret_file=config.path(text("secret_file")),
            user_id=text("user_id", "ketenpost-adapter"),
            user_representation=text("user_representation", f"Ketenpost {config.partner.id}"),
            zaaktype=urls["zaaktype"],
            informatieobjecttype=urls["informatieobjecttype"],
            roltype_jongere=urls["roltype_jongere"],
            statustypes=statustypes,
            bronorganisatie=rsin,
            vertrouwelijkheidaanduiding=vertrouwelijk,
            poll_interval_s=float(interval),
            valid_days=valid_days,
        )

    def credentials(self) -> ZgwCredentials:
        """The JWT credentials; ``AdapterConfigError`` when the secret file is unusable."""
        try:
            secret = self.secret_file.read_bytes().strip()
        except OSError as exc:
            raise AdapterConfigError(
                f"[system] secret_file: cannot read {self.secret_file}: {exc.strerror}"
            ) from None
        if len(secret) < 32:
            raise AdapterConfigError("[system] secret_file: the secret is shorter than 32 bytes")
        return ZgwCredentials(self.client_id, secret, self.user_id, self.user_representation)


# -- the records the source hands the SDK ---------------------------------------------------


class ZaakRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One outbound message (or one refused zaak event) as the source hands it over.

    The record carries the finished body: the mapping does no I/O, so the source, which may,
    builds it. ``report`` set means the zaak event is malformed and must go to the failed
    place.
    """

    zaak: str
    status: str
    to: tuple[str, ...] = ()
    token_id: str = ""
    body: CaseMessage | None = None
    report: str | None = None


_RECORD_DECODER: Final = msgspec.json.Decoder(ZaakRecord)
_RECORD_ENCODER: Final = msgspec.json.Encoder()


class MalformedZaakError(AdapterError):
    """A zaak event's data cannot make a token or a message; ``report`` says where."""


def _uuid_of(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def _record_id(zaak: str, status: str, part: str) -> str:
    return f"zgw:{_uuid_of(zaak)}/{_uuid_of(status)}/{part}"


def _record(zaak: str, status: str, part: str, record: ZaakRecord) -> SourceRecord:
    return SourceRecord(
        record_id=_record_id(zaak, status, part),
        data=_RECORD_ENCODER.encode(record),
        content_type="application/json",
        metadata={"zaak": zaak, "status": status},
    )


# -- reading a decision from a zaak ---------------------------------------------------------


@dataclass(frozen=True)
class Youth:
    """A youth of the approach as the zaak names it (a ``rol`` of the jongere roltype)."""

    local_id: str
    given_name: str
    family_name: str
    date_of_birth: datetime.date
    bsn: str | None
    address: Address | None

    def person(self, pseudonym: str) -> PersonDetails:
        """Every detail the zaak holds, under ``pseudonym``; ``details_for_role`` minimises."""
        return PersonDetails(
            pseudonym=pseudonym,
            given_name=self.given_name,
            family_name=self.family_name,
            date_of_birth=self.date_of_birth,
            bsn=self.bsn,
            address=self.address,
        )


@dataclass(frozen=True)
class Decision:
    """The municipality's decision to start or change an approach, read from the zaak."""

    kind: ApproachKind
    participants: tuple[str, ...]
    informed_at: int | None
    deferred_until: int | None
    informing_note: str
    contact: str | None
    youths: tuple[Youth, ...]
    decided_by: str
    decided_on: datetime.date
    reference: str
    valid_until: int


def _day_start(day: datetime.date) -> int:
    return int(datetime.datetime.combine(day, datetime.time(0), datetime.UTC).timestamp())


def _date(value: str, where: str, problems: list[str]) -> datetime.date | None:
    text = value.strip()
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return datetime.datetime.strptime(text, fmt).replace(tzinfo=datetime.UTC).date()
        except ValueError:
            continue
    problems.append(f"{where}: {text[:20]!r} is not a date (YYYY-MM-DD)")
    return None


def _status_time(status: Mapping[str, Any]) -> datetime.datetime:
    raw = str(status.get("datumStatusGezet", ""))
    try:
        moment = datetime.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise MalformedZaakError(f"status: datumStatusGezet {raw[:40]!r} is not a date-time")
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def _address(raw: Any, where: str, problems: list[str]) -> Address | None:
    if not isinstance(raw, dict):
        return None
    number = raw.get("aoaHuisnummer")
    letter = str(raw.get("aoaHuisletter") or "")
    addition = str(raw.get("aoaHuisnummertoevoeging") or "")
    suffix = f"{letter}{'-' if letter and addition else ''}{addition}"
    postcode = str(raw.get("aoaPostcode") or "").replace(" ", "").upper()
    try:
        address = Address(
            street=str(raw.get("gorOpenbareRuimteNaam") or ""),
            house_number=f"{number}{' ' + suffix if suffix else ''}",
            postcode=postcode,
            city=str(raw.get("wplWoonplaatsNaam") or ""),
        )
        # Constructing a struct does not run its constraints; a round trip does.
        return msgspec.json.decode(msgspec.json.encode(address), type=Address)
    except msgspec.ValidationError as exc:
        problems.append(f"{where}: verblijfsadres is not a Dutch address ({exc})")
        return None


def _youths(rollen: Sequence[Mapping[str, Any]], roltype: str, problems: list[str]) -> list[Youth]:
    youths: list[Youth] = []
    for n, rol in enumerate(
        (r for r in rollen if r.get("roltype") == roltype),
        start=1,
    ):
        where = f"rol jongere {n}"
        if rol.get("betrokkeneType") != "natuurlijk_persoon":
            problems.append(f"{where}: betrokkeneType must be natuurlijk_persoon")
            continue
        ident = rol.get("betrokkeneIdentificatie")
        if not isinstance(ident, dict):
            problems.append(f"{where}: betrokkeneIdentificatie is missing")
            continue
        bsn = str(ident.get("inpBsn") or "") or None
        anp = str(ident.get("anpIdentificatie") or "") or None
        if bsn is not None and not bsn_valid(bsn):
            problems.append(f"{where}: inpBsn fails the eleven-test")
            continue
        if bsn is None and anp is None:
            problems.append(f"{where}: neither inpBsn nor anpIdentificatie is given")
            continue
        given = str(ident.get("voornamen") or "").strip()
        prefix = str(ident.get("voorvoegselGeslachtsnaam") or "").strip()
        family = f"{prefix} {ident.get('geslachtsnaam') or ''}".strip()
        if not given or not ident.get("geslachtsnaam"):
            problems.append(f"{where}: voornamen and geslachtsnaam are required")
            continue
        born = _date(str(ident.get("geboortedatum") or ""), f"{where}: geboortedatum", problems)
        if born is None:
            continue
        youths.append(
            Youth(
                local_id=bsn if bsn is not None else f"anp:{anp}",
                given_name=given[:200],
                family_name=family[:200],
                date_of_birth=born,
                bsn=bsn,
                address=_address(ident.get("verblijfsadres"), where, problems),
            )
        )
    return youths


def _decider(rollen: Sequence[Mapping[str, Any]], fallback: str) -> str:
    for rol in rollen:
        if rol.get("omschrijvingGeneriek") != "beslisser":
            continue
        ident = rol.get("betrokkeneIdentificatie")
        if isinstance(ident, dict):
            name = " ".join(
                str(ident.get(k) or "").strip() for k in ("voorletters", "achternaam")
            ).strip()
            if name:
                return name[:200]
        if rol.get("roltoelichting"):
            return str(rol["roltoelichting"])[:200]
    return fallback


def read_decision(
    *,
    zaak: Mapping[str, Any],
    status: Mapping[str, Any],
    eigenschappen: Mapping[str, str],
    rollen: Sequence[Mapping[str, Any]],
    settings: ZgwSettings,
    directory: Directory,
    me: str,
    now: int,
) -> Decision:
    """The decision a zaak records; ``MalformedZaakError`` listing every problem found."""
    problems: list[str] = []
    kind_text = eigenschappen.get(EIG_KIND, "").strip().lower()
    kind = _KINDS.get(kind_text)
    if kind is None:
        problems.append(
            f"eigenschap {EIG_KIND}: {kind_text[:40]!r} is not persoonsgericht or groepsaanpak"
        )
    participants = [me]
    for partner in re.split(r"[,\s]+", eigenschappen.get(EIG_PARTICIPANTS, "").strip()):
        if not partner or partner in participants:
            continue
        try:
            directory.partner(partner)
        except Exception:  # keys' DirectoryError: name the entry, not the whole directory
            problems.append(
                f"eigenschap {EIG_PARTICIPANTS}: {partner[:64]!r} is not a covenant partner"
            )
            continue
        participants.append(partner)
    if len(participants) < 2:
        problems.append(f"eigenschap {EIG_PARTICIPANTS}: names no other partner")
    informed_at = deferred_until = None
    informed_raw = eigenschappen.get(EIG_INFORMED, "").strip()
    deferred_raw = eigenschappen.get(EIG_DEFERRED, "").strip()
    if bool(informed_raw) == bool(deferred_raw):
        problems.append(f"eigenschap {EIG_INFORMED} or {EIG_DEFERRED}: exactly one is required")
    elif informed_raw:
        day = _date(informed_raw, f"eigenschap {EIG_INFORMED}", problems)
        if day is not None:
            informed_at = _day_start(day)
            if informed_at > now:
                problems.append(
                    f"eigenschap {EIG_INFORMED}: lies in the future; youth and parents are "
                    "informed before the approach starts, or informing is deferred"
                )
    else:
        day = _date(deferred_raw, f"eigenschap {EIG_DEFERRED}", problems)
        if day is not None:
            deferred_until = _day_start(day)
            if deferred_until <= now:
                problems.append(f"eigenschap {EIG_DEFERRED}: lies in the past")
    note = eigenschappen.get(EIG_INFORMING_NOTE, "").strip()
    if not note:
        if informed_at is not None:
            note = (
                "Jongere en ouders/verzorgers geïnformeerd op "
                f"{datetime.datetime.fromtimestamp(informed_at, datetime.UTC).date()}."
            )
        elif deferred_until is not None:
            problems.append(
                f"eigenschap {EIG_INFORMING_NOTE}: required when informing is deferred (why)"
            )
    youths = _youths(rollen, settings.roltype_jongere, problems)
    if not youths and not any("rol jongere" in p for p in problems):
        problems.append("rollen: no youth (rol of the jongere roltype) is named")
    if len({y.local_id for y in youths}) != len(youths):
        problems.append("rollen: a youth is named twice")
    reference = str(zaak.get("identificatie") or "").strip()
    if not reference:
        problems.append("zaak: identificatie is missing (it is the decision reference)")
    valid_until = now + settings.valid_days * DAY_S
    planned = zaak.get("einddatumGepland")
    if planned:
        end = _date(str(planned), "zaak: einddatumGepland", problems)
        if end is not None:
            valid_until = _day_start(end) + DAY_S
            if valid_until <= now:
                problems.append("zaak: einddatumGepland lies in the past")
    decided = _status_time(status)
    if problems or kind is None:
        raise MalformedZaakError("; ".join(problems))
    return Decision(
        kind=kind,
        participants=tuple(participants),
        informed_at=informed_at,
        deferred_until=deferred_until,
        informing_note=note[:MAX_TEXT],
        contact=(eigenschappen.get(EIG_CONTACT, "").strip()[:200] or None),
        youths=tuple(youths),
        decided_by=_decider(rollen, me),
        decided_on=decided.date(),
        reference=reference[:200],
        valid_until=valid_until,
    )


def _purpose(policy: Policy, role: Role, kind: ApproachKind) -> RolePurpose:
    """Purpose and legal basis of ``role``, from the covenant policy in the directory (the
    same text ``ketenpost approach issue`` writes)."""
    basis = policy.roles.get(role)
    if basis is None:
        raise MalformedZaakError(f"the covenant policy gives the {role} role no legal basis")
    legal = "; ".join(f"{b.text} ({b.reference})" for b in basis.legal_basis)
    purpose = (
        f"Participation as {role} in the {kind} approach of the covenant "
        f"({policy.name}); processing activities: {', '.join(basis.processing_activities)}"
    )
    return RolePurpose(purpose=purpose[:MAX_TEXT], legal_basis=legal[:MAX_TEXT])


# -- the ZGW session shared by source and destination -----------------------------------------


class _Zgw:
    """The ZGW client, opened on first use, and the zaak look-ups both sides need."""

    def __init__(self, settings: ZgwSettings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self._client: ZgwClient | None = None
        # token id → zaak URL: a zaak never loses a kenmerk, so a hit stays true.
        self._zaak_of: dict[str, str] = {}

    async def client(self) -> ZgwClient:
        if self._client is None:
            client = ZgwClient(
                self.settings.zaken_api,
                self.settings.documenten_api,
                self.settings.credentials(),
                self.clock,
            )
            await client.__aenter__()
            self._client = client
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def zaken(self) -> list[dict[str, Any]]:
        return await (await self.client()).zaken(self.settings.zaaktype)

    async def zaak_for_token(self, token_id: str) -> str | None:
        """The URL of the zaak whose kenmerken name ``token_id``, if any."""
        if token_id in self._zaak_of:
            return self._zaak_of[token_id]
        for zaak in await self.zaken():
            for token in _token_ids(zaak):
                self._zaak_of.setdefault(token, str(zaak["url"]))
        return self._zaak_of.get(token_id)

    async def add_kenmerk(self, zaak: Mapping[str, Any], token_id: str) -> dict[str, Any]:
        """Write ``token_id`` into the zaak's kenmerken (once)."""
        url = str(zaak["url"])
        self._zaak_of[token_id] = url
        kenmerken = list(zaak.get("kenmerken") or [])
        if token_id in _token_ids(zaak):
            return dict(zaak)
        kenmerken.append({"kenmerk": token_id, "bron": KENMERK_BRON})
        return await (await self.client()).patch_zaak(url, {"kenmerken": kenmerken})

    async def document(
        self,
        zaak: str,
        *,
        identificatie: str,
        marker: str,
        titel: str,
        auteur: str,
        content: bytes,
        bestandsnaam: str,
        creatiedatum: datetime.date,
        ontvangstdatum: datetime.date | None = None,
        trefwoorden: Sequence[str] = (),
    ) -> str:
        """Create (once) an informatieobject and relate it (once) to ``zaak``; its URL.

        Idempotent: an informatieobject with this ``identificatie`` of our bronorganisatie
        whose ``beschrijving`` holds ``marker`` is reused, and the relation is looked up first.
        """
        client = await self.client()
        found = [
            doc
            for doc in await client.informatieobjecten(identificatie, self.settings.bronorganisatie)
            if marker in str(doc.get("beschrijving", ""))
        ]
        if found:
            informatieobject = str(found[0]["url"])
        else:
            body: dict[str, Any] = {
                "identificatie": identificatie,
                "bronorganisatie": self.settings.bronorganisatie,
                "creatiedatum": creatiedatum.isoformat(),
                "titel": titel[:200],
                "vertrouwelijkheidaanduiding": self.settings.vertrouwelijkheidaanduiding,
                "auteur": auteur[:200],
                "status": "definitief",
                "formaat": "application/json",
                "taal": "nld",
                "bestandsnaam": bestandsnaam[:255],
                "beschrijving": marker[:1000],
                "informatieobjecttype": self.settings.informatieobjecttype,
                "indicatieGebruiksrecht": False,
                "trefwoorden": list(trefwoorden),
            }
            if ontvangstdatum is not None:
                body["ontvangstdatum"] = ontvangstdatum.isoformat()
            created = await client.create_informatieobject(body, content)
            informatieobject = str(created["url"])
        if not await client.zaakinformatieobjecten(zaak, informatieobject):
            await client.relate(zaak, informatieobject, titel[:200])
        return informatieobject


def _token_ids(zaak: Mapping[str, Any]) -> list[str]:
    return [
        str(k.get("kenmerk"))
        for k in zaak.get("kenmerken") or []
        if isinstance(k, dict) and k.get("bron") == KENMERK_BRON
    ]


def _day(unix: int) -> datetime.date:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).date()


def _render(document: Mapping[str, Any]) -> bytes:
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


# -- outbound: the zaak events ---------------------------------------------------------------


@dataclass
class _Cursor:
    """What the source has handled: per zaak the URLs of its statuses handled, and
    revocations that wait for the answers to a closure (token id → the closure's record ids)."""

    zaken: dict[str, list[str]]
    revoke_after: dict[str, list[str]]

    @classmethod
    def parse(cls, text: str | None) -> _Cursor:
        if not text:
            return cls({}, {})
        try:
            doc = json.loads(text)
            version = doc.get("v")
            cursor = cls(
                {k: list(v) for k, v in doc["zaken"].items()},
                {k: list(v) for k, v in doc["revoke_after"].items()},
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise AdapterError(f"the zgw cursor in adapter.db is unreadable: {exc}") from None
        if version != CURSOR_VERSION:
            raise AdapterError(f"the zgw cursor in adapter.db has unknown version {version!r}")
        return cursor

    def dump(self) -> str:
        return json.dumps(
            {"v": CURSOR_VERSION, "zaken": self.zaken, "revoke_after": self.revoke_after},
            sort_keys=True,
        )


class ZgwSource(SourceBase):
    """Polls the Zaken API for zaak events and runs the coordinator's part of each."""

    def __init__(self, zgw: _Zgw, config: AdapterConfig) -> None:
        self._zgw = zgw
        self._config = config
        self._settings = zgw.settings
        self._host: Adapter | None = None
        # The token key family, read again when the directory changes (``token_key``).
        self._token_keys: tuple[Ed25519KeyPair, ...] | None = None
        self._token_keys_for: Directory | None = None
        self._last_poll: int | None = None

    async def start(self, sink: RecordSink) -> None:
        # The SDK passes the Adapter as the sink; the coordinator needs it to keep, register
        # and revoke tokens. Another sink (a test harness) gets a source without coordinator.
        self._host = sink if isinstance(sink, Adapter) else None

    async def close(self) -> None:
        await self._zgw.close()

    @property
    def host(self) -> Adapter:
        if self._host is None:
            raise AdapterError("the zgw source runs only inside an Adapter (it coordinates)")
        return self._host

    def token_key(self, directory: Directory, now: int) -> Ed25519KeyPair:
        """The coordinator's newest token key that ``directory`` lists as usable at ``now``
        (the configured one and its rotated successors beside it, ``token-2.key``, …, read
        again after each directory change, so a rotation needs no restart); the configured
        one when the directory lists none. ``MalformedZaakError`` when there is none."""
        keys = self._config.keys
        if keys.token is None:
            raise MalformedZaakError(
                f"{self._config.partner.id} has no token key ([keys] token): only a "
                "coordinating municipality starts approaches"
            )
        if self._token_keys is None or self._token_keys_for is not directory:
            try:
                passphrase = (
                    resolve_passphrase(PassphraseSource.parse(keys.passphrase))
                    if keys.passphrase
                    else None
                )
                self._token_keys = tuple(
                    load_ed25519_key(path, KeyUse.TOKEN, passphrase)
                    for path in key_family(self._config.path(keys.token))
                )
            except Exception as exc:  # keys' own errors and OSError: one line, then retry
                raise AdapterError(f"cannot load the token key: {exc}") from None
            self._token_keys_for = directory
        chosen = newest_active(
            self._token_keys, directory, self._config.partner.id, KeyUse.TOKEN, now
        )
        return chosen if chosen is not None else self._token_keys[0]

    async def pull(self, cursor: str | None) -> PullBatch:
        now = self._zgw.clock.now()
        if self._last_poll is not None and now - self._last_poll < self._settings.poll_interval_s:
            return PullBatch(())
        state = _Cursor.parse(cursor)
        records: list[SourceRecord] = []
        try:
            await self._due_revocations(state, now)
            for listed in await self._zgw.zaken():
                zaak = listed
                url = str(zaak.get("url", ""))
                current = zaak.get("status")
                if not url or not current or current in state.zaken.get(url, ()):
                    continue
                handled = state.zaken.setdefault(url, [])
                statussen = await (await self._zgw.client()).statussen(url)
                # In the order they were set; a stable sort keeps the API's order for equal
                # times. Handled ones are remembered by URL, so equal times cannot hide one.
                statussen.sort(key=lambda s: str(s.get("datumStatusGezet")))
                new = [s for s in statussen if str(s.get("url")) not in handled]
                for status in new:
                    event = self._settings.statustypes.get(str(status.get("statustype")))
                    if event is not None:
                        records.extend(await self._event(zaak, status, event, state, now))
                        zaak = await (await self._zgw.client()).zaak(url)
                    handled.append(str(status.get("url")))
        except ZgwError as exc:
            raise AdapterError(f"the Zaken API: {exc}") from None
        self._last_poll = now
        return PullBatch(records, state.dump())

    async def _event(
        self,
        zaak: dict[str, Any],
        status: Mapping[str, Any],
        event: ZaakEvent,
        state: _Cursor,
        now: int,
    ) -> list[SourceRecord]:
        url, status_url = str(zaak["url"]), str(status["url"])
        try:
            if event is ZaakEvent.STARTED:
                return await self._start(zaak, status, now, supersede=False)
            if event is ZaakEvent.CHANGED:
                return await self._start(zaak, status, now, supersede=True)
            if event is ZaakEvent.REVOKED:
                token_id = self._current_token(zaak)
                await self._revoke(token_id, now, "approach revoked by the coordinator's decision")
                state.revoke_after.pop(token_id, None)
                return []
            records = await self._message(zaak, status, event)
        except (MalformedZaakError, ZgwRefusedError) as exc:
            ident = str(zaak.get("identificatie") or _uuid_of(url))
            why = (
                f"the ZGW API refused a request: {exc}" if isinstance(exc, ZgwRefusedError) else exc
            )
            report = f"zaak {ident}, status {event.value}: {why}"
            return [
                _record(
                    url,
                    status_url,
                    "invalid",
                    ZaakRecord(zaak=url, status=status_url, report=report),
                )
            ]
        if event is ZaakEvent.ENDED:
            # Revoked once every recipient answered the closure (``_due_revocations``).
            state.revoke_after[self._current_token(zaak)] = [r.record_id for r in records]
        return records

    # -- coordinator steps --------------------------------------------------------------

    def _directory(self) -> Directory:
        return self.host.current_directory()

    def _derived_token_id(self, status_url: str) -> str:
        mac = hmac.new(
            self.host.identity.outbox_key, TOKEN_ID_LABEL + status_url.encode(), hashlib.sha256
        )
        return mac.hexdigest()[:32]

    def _chain(self, zaak: Mapping[str, Any]) -> list[str]:
        """The zaak's token ids that this coordinator issued, oldest first."""
        return [t for t in _token_ids(zaak) if self.host.store.token(t) is not None]

    def _current_token(self, zaak: Mapping[str, Any]) -> str:
        """The zaak's token that no other of its tokens supersedes; ``MalformedZaakError``."""
        chain = self._chain(zaak)
        superseded = set()
        for token_id in chain:
            row = self.host.store.token(token_id)
            assert row is not None
            payload = msgspec.msgpack.decode(decode_signed(row.signed).payload)
            if payload.get("supersedes"):
                superseded.add(payload["supersedes"])
        heads = [t for t in chain if t not in superseded]
        if not heads:
            raise MalformedZaakError(
                "the zaak has no approach token of this coordinator (no 'aanpak gestart' yet)"
            )
        return heads[-1]

    async def _start(
        self, zaak: dict[str, Any], status: Mapping[str, Any], now: int, *, supersede: bool
    ) -> list[SourceRecord]:
        host = self.host
        url, status_url = str(zaak["url"]), str(status["url"])
        directory = self._directory()
        policy = policy_from_directory(directory)
        previous = self._current_token(zaak) if supersede else None
        token_id = self._derived_token_id(status_url)
        client = await self._zgw.client()
        eigenschappen = {
            str(e.get("naam")): str(e.get("waarde", ""))
            for e in await client.zaakeigenschappen(url)
        }
        # Read every time: the notices need the youth's details, which only the zaak holds.
        decision = read_decision(
            zaak=zaak,
            status=status,
            eigenschappen=eigenschappen,
            rollen=await client.rollen(url),
            settings=self._settings,
            directory=directory,
            me=host.partner_id,
            now=now,
        )
        row = host.store.token(token_id)
        if row is None or row.opening is None:
            keep = (
                {local: p for p, local in host.store.local_ids(previous).items()}
                if previous
                else {}
            )
            pseudonyms = {
                y.local_id: keep.get(y.local_id) or new_pseudonym() for y in decision.youths
            }
            roles = {directory.partner(p).role for p in decision.participants}
            try:
                signed, opening = issue(
                    key=self.token_key(directory, now),
                    coordinator=host.partner_id,
                    kind=decision.kind,
                    subjects=[
                        TokenSubject(
                            pseudonym=pseudonyms[y.local_id],
                            informed_at=decision.informed_at,
                            informing_deferred_until=decision.deferred_until,
                        )
                        for y in decision.youths
                    ],
                    participants=decision.participants,
                    allowed={r: sorted(sendable_types(policy, decision.kind, r)) for r in Role},
                    valid_from=now - VALID_FROM_SLACK_S,
                    valid_until=decision.valid_until,
                    retention_until=decision.valid_until + RETENTION_AFTER_S,
                    policy=policy,
                    purposes={r: _purpose(policy, r, decision.kind) for r in sorted(roles)},
                    decided_by=decision.decided_by,
                    decided_on=decision.decided_on,
                    decision_reference=decision.reference,
                    informing={
                        pseudonyms[y.local_id]: decision.informing_note for y in decision.youths
                    },
                    now=now,
                    supersedes=previous,
                    token_id=token_id,
                )
            except ProtocolError as exc:
                raise MalformedZaakError(f"no approach token can be issued: {exc}") from None
            # Kept before it is registered: after a crash the same token is found again.
            host.remember_token(signed, opening, {p: local for local, p in pseudonyms.items()})
            row = host.store.token(token_id)
            assert row is not None
        signed = decode_signed(row.signed)
        assert row.opening is not None
        opening = msgspec.msgpack.decode(row.opening, type=PrivatePartOpening)
        if row.registered_at is None:
            registered_at = await self._register(signed)
            local_ids = host.store.local_ids(token_id)
            host.remember_token(signed, opening, local_ids, registered_at=registered_at)
        zaak.update(await self._zgw.add_kenmerk(zaak, token_id))
        return self._notices(
            zaak,
            status_url,
            signed,
            opening,
            directory,
            youths={y.local_id: y for y in decision.youths},
            contact=decision.contact,
            changed=supersede,
        )

    async def _register(self, signed: SignedObject) -> int:
        try:
            registered = await self.host.client.register_token(encode_signed(signed))
        except RefusedError as exc:
            if exc.transient or exc.status >= 500:
                raise AdapterError(f"the gateway cannot register the token now: {exc}") from None
            raise MalformedZaakError(f"the gateway refused the approach token: {exc}") from None
        return int(registered["registered_at"])

    def _notices(
        self,
        zaak: Mapping[str, Any],
        status_url: str,
        signed: SignedObject,
        opening: PrivatePartOpening,
        directory: Directory,
        *,
        youths: Mapping[str, Youth],
        contact: str | None,
        changed: bool,
    ) -> list[SourceRecord]:
        url = str(zaak["url"])
        token = verify_token_signature(signed, directory)
        local_ids = self.host.store.local_ids(token.token_id)
        records = []
        for recipient in token.participants:
            if recipient == self.host.partner_id:
                continue
            role = directory.partner(recipient).role
            persons = tuple(
                details_for_role(youths[local].person(pseudonym), role)
                for pseudonym, local in sorted(local_ids.items())
                if local in youths
            )
            body = ApproachNotice(
                subjects=tuple(sorted(token.subject_pseudonyms)),
                token_id=token.token_id,
                approach_kind=token.kind,
                change=ApproachChange.CHANGED if changed else ApproachChange.STARTED,
                token=signed,
                token_private=opening,
                persons=persons,
                contact=contact,
            )
            record = ZaakRecord(
                zaak=url, status=status_url, to=(recipient,), token_id=token.token_id, body=body
            )
            records.append(_record(url, status_url, f"notice:{recipient}", record))
        return records

    async def _message(
        self, zaak: Mapping[str, Any], status: Mapping[str, Any], event: ZaakEvent
    ) -> list[SourceRecord]:
        url, status_url = str(zaak["url"]), str(status["url"])
        token_id = self._current_token(zaak)
        row = self.host.store.token(token_id)
        assert row is not None
        token = verify_token_signature(decode_signed(row.signed), self._directory())
        subjects = tuple(sorted(token.subject_pseudonyms))
        recipients = tuple(p for p in token.participants if p != self.host.partner_id)
        client = await self._zgw.client()
        eig = {
            str(e.get("naam")): str(e.get("waarde", ""))
            for e in await client.zaakeigenschappen(url)
        }
        problems: list[str] = []
        day = _status_time(status).date()
        body: CaseMessage
        if event is ZaakEvent.CONFERENCE:
            when = _date(
                eig.get(EIG_CONFERENCE_DATE, ""), f"eigenschap {EIG_CONFERENCE_DATE}", problems
            )
            agenda = tuple(
                line.strip()[:200]
                for line in eig.get(EIG_CONFERENCE_AGENDA, "").splitlines()
                if line.strip()
            )
            if not agenda:
                problems.append(f"eigenschap {EIG_CONFERENCE_AGENDA}: no agenda item (one a line)")
            if problems or when is None:
                raise MalformedZaakError("; ".join(problems))
            body = CaseConference(
                subjects=subjects, date=when, participants=token.participants, agenda=agenda
            )
        elif event is ZaakEvent.PLAN:
            goal = eig.get(EIG_PLAN_GOAL, "").strip()
            if not goal:
                problems.append(f"eigenschap {EIG_PLAN_GOAL}: required")
            actions = []
            for n, line in enumerate(eig.get(EIG_PLAN_ACTIONS, "").splitlines(), start=1):
                if not line.strip():
                    continue
                parts = [p.strip() for p in line.split(";", 2)]
                where = f"eigenschap {EIG_PLAN_ACTIONS} line {n}"
                if len(parts) != 3 or not parts[2]:
                    problems.append(f"{where}: expected 'partner; YYYY-MM-DD; description'")
                    continue
                if parts[0] not in token.participants:
                    problems.append(f"{where}: {parts[0][:64]!r} is not a participant")
                    continue
                due = _date(parts[1], where, problems)
                if due is not None:
                    actions.append(Action(description=parts[2][:MAX_TEXT], owner=parts[0], due=due))
            if not actions and not problems:
                problems.append(f"eigenschap {EIG_PLAN_ACTIONS}: no action")
            review_raw = eig.get(EIG_PLAN_REVIEW, "").strip()
            review = (
                _date(review_raw, f"eigenschap {EIG_PLAN_REVIEW}", problems) if review_raw else None
            )
            if problems:
                raise MalformedZaakError("; ".join(problems))
            body = ActionPlan(
                subjects=subjects, goal=goal[:MAX_TEXT], actions=tuple(actions), review_date=review
            )
        else:
            reason_raw = (
                eig.get(EIG_CLOSURE_REASON, "").strip() or ClosureReason.GOALS_REACHED.value
            )
            try:
                reason = ClosureReason(reason_raw)
            except ValueError:
                raise MalformedZaakError(
                    f"eigenschap {EIG_CLOSURE_REASON}: {reason_raw[:40]!r} is not one of "
                    f"{', '.join(r.value for r in ClosureReason)}"
                ) from None
            summary = str(status.get("statustoelichting") or "").strip()
            body = Closure(
                subjects=subjects, reason=reason, closed_on=day, summary=summary[:MAX_TEXT] or None
            )
        record = ZaakRecord(
            zaak=url, status=status_url, to=recipients, token_id=token_id, body=body
        )
        return [_record(url, status_url, event.value, record)]

    async def _revoke(self, token_id: str, now: int, reason: str) -> None:
        row = self.host.store.token(token_id)
        if row is None:
            return
        directory = self._directory()
        token = verify_token_signature(decode_signed(row.signed), directory)
        revocation = revoke(token, key=self.token_key(directory, now), now=now, reason=reason)
        try:
            await self.host.client.revoke_token(token_id, encode_signed(revocation))
        except RefusedError as exc:
            if exc.transient or exc.status >= 500:
                raise AdapterError(f"the gateway cannot revoke the token now: {exc}") from None
            raise MalformedZaakError(f"the gateway refused the revocation: {exc}") from None
        logger.info("token_revoked", extra={"token_id": token_id})

    async def _due_revocations(self, state: _Cursor, now: int) -> None:
        """Revoke the tokens whose closure every recipient answered (or that cannot be)."""
        store = self.host.store
        for token_id, record_ids in list(state.revoke_after.items()):
            done = True
            for record_id in record_ids:
                message_id = derive_message_id(self.host.identity.outbox_key, record_id)
                row = store.outbox_row(message_id)
                if row is None or row.state in ("refused", "disputed"):
                    continue
                if row.expires_at is not None and row.expires_at <= now:
                    continue
                if not set(row.recipients) <= set(store.outcomes(message_id)):
                    done = False
            if done:
                try:
                    await self._revoke(
                        token_id, now, "approach ended by the coordinator's decision"
                    )
                except MalformedZaakError as exc:
                    logger.warning("revocation_refused", extra={"detail": str(exc)})
                del state.revoke_after[token_id]

    async def quarantine(self, record: SourceRecord, report: str) -> None:
        """Write the report onto the zaak, where the case worker looks."""
        zaak = record.metadata.get("zaak")
        if not zaak:
            return
        digest = hashlib.sha256(record.record_id.encode()).hexdigest()
        content = _render(
            {
                "ketenpost_fout": {
                    "record": record.record_id,
                    "status": record.metadata.get("status"),
                    "rapport": report,
                }
            }
        )
        try:
            await self._zgw.document(
                zaak,
                identificatie=f"KPF{digest[:37]}",
                marker=f"Ketenpost-record {record.record_id}",
                titel="Ketenpost: zaakgegevens niet verwerkt",
                auteur=self._config.partner.id,
                content=content,
                bestandsnaam=f"ketenpost-fout-{digest[:12]}.json",
                creatiedatum=_day(self._zgw.clock.now()),
                trefwoorden=("ketenpost", "fout"),
            )
        except ZgwError as exc:
            # The SDK's failed place holds the record and the report already; this copy is
            # for the case worker's convenience.
            logger.warning("quarantine_not_written", extra={"detail": str(exc)})


# -- mapping -----------------------------------------------------------------------------------


class ZgwMapping:
    """A ``ZaakRecord`` → its message; a record with a report is a malformed zaak event."""

    def map(self, record: SourceRecord, context: MappingContext) -> Outbound:
        try:
            parsed = _RECORD_DECODER.decode(record.data)
        except msgspec.DecodeError as exc:
            raise MalformedRecordError(
                f"the zaak event does not make a case message: {exc}"
            ) from None
        if parsed.report is not None:
            raise MalformedRecordError(parsed.report)
        if parsed.body is None or not parsed.to or not parsed.token_id:
            raise MalformedRecordError("the zaak event names no message, recipient or approach")
        return Outbound(recipients=parsed.to, token_id=parsed.token_id, body=parsed.body)


# -- inbound -----------------------------------------------------------------------------------


class ZgwDestination:
    """Each delivered message becomes an informatieobject on the zaak of its approach."""

    def __init__(self, zgw: _Zgw, partner_id: str) -> None:
        self._zgw = zgw
        self._partner_id = partner_id

    async def _zaak(self, message: InboundMessage) -> str:
        """The zaak of the message's approach: found by token id, else by the token a changed
        notice supersedes, else created (an approach another municipality coordinates)."""
        found = await self._zgw.zaak_for_token(message.token_id)
        if found is not None:
            return found
        client = await self._zgw.client()
        body = message.body
        if isinstance(body, ApproachNotice):
            supersedes = msgspec.msgpack.decode(body.token.payload).get("supersedes")
            if supersedes:
                previous = await self._zgw.zaak_for_token(str(supersedes))
                if previous is not None:
                    await self._zgw.add_kenmerk(await client.zaak(previous), message.token_id)
                    return previous
        settings = self._zgw.settings
        created = await client.create_zaak(
            {
                "bronorganisatie": settings.bronorganisatie,
                "verantwoordelijkeOrganisatie": settings.bronorganisatie,
                "zaaktype": settings.zaaktype,
                "startdatum": _day(message.accepted_at).isoformat(),
                "omschrijving": "Ketenpost-aanpak (gecoördineerd door een andere gemeente)",
                "vertrouwelijkheidaanduiding": settings.vertrouwelijkheidaanduiding,
                "kenmerken": [{"kenmerk": message.token_id, "bron": KENMERK_BRON}],
            }
        )
        return await self._remembered(created, message.token_id)

    async def _remembered(self, zaak: Mapping[str, Any], token_id: str) -> str:
        return str((await self._zgw.add_kenmerk(zaak, token_id))["url"])

    async def apply(self, message: InboundMessage) -> Applied:
        try:
            zaak = await self._zaak(message)
            await self._zgw.document(
                zaak,
                identificatie=f"KP{message.message_id[:38]}",
                marker=f"Ketenpost-bericht {message.message_id}",
                titel=f"Ketenpost: {message.message_type.value} van {message.sender}",
                auteur=message.sender,
                content=_render(
                    {
                        "ketenpost_bericht": {
                            "bericht_id": message.message_id,
                            "type": message.message_type.value,
                            "afzender": message.sender,
                            "aanpak_token": message.token_id,
                            "geaccepteerd_op": _iso(message.accepted_at),
                            "ontvangen_op": _iso(message.received_at),
                            "traceparent": message.trace_id,
                            "betrokkenen": [
                                {"pseudoniem": p, "lokaal_id": message.local_ids.get(p)}
                                for p in message.subjects
                            ],
                        },
                        "inhoud": json.loads(message.body_bytes),
                    }
                ),
                bestandsnaam=f"ketenpost-{message.message_type.value}-{message.message_id[:16]}.json",
                creatiedatum=_day(message.accepted_at),
                ontvangstdatum=_day(message.received_at),
                trefwoorden=("ketenpost", message.message_type.value),
            )
        except ZgwError as exc:
            # Unreachable, or a request the APIs refuse (configuration): nothing is
            # acknowledged, the gateway delivers again and an operator sees the log.
            raise DestinationUnavailableError(f"the zaaksysteem: {exc}") from None
        if isinstance(message.body, ApproachNotice):
            return Applied({p.pseudonym: p.bsn for p in message.body.persons if p.bsn})
        return Applied()

    async def report_refusal(self, record_id: str, refusal: Refusal) -> None:
        match = re.fullmatch(r"zgw:([0-9a-fA-F-]{36})/([^/]+)/(.+)", record_id)
        if match is None:
            logger.warning("refusal_of_unknown_record", extra={"record_id": record_id})
            return
        zaak = f"{self._zgw.settings.zaken_api}/zaken/{match.group(1)}"
        key = f"{record_id}|{refusal.by}|{refusal.reason}|{refusal.recipient or ''}"
        digest = hashlib.sha256(key.encode()).hexdigest()
        try:
            await self._zgw.document(
                zaak,
                identificatie=f"KPR{digest[:37]}",
                marker=f"Ketenpost-weigering {digest}",
                titel=f"Ketenpost: bericht geweigerd ({refusal.reason})",
                auteur=self._partner_id,
                content=_render(
                    {
                        "ketenpost_weigering": {
                            "record": record_id,
                            "bericht_id": refusal.message_id,
                            "door": refusal.by,
                            "reden": refusal.reason,
                            "toelichting": refusal.detail,
                            "ontvanger": refusal.recipient,
                        }
                    }
                ),
                bestandsnaam=f"ketenpost-weigering-{digest[:12]}.json",
                creatiedatum=_day(self._zgw.clock.now()),
                trefwoorden=("ketenpost", "weigering"),
            )
        except ZgwRefusedError as exc:
            logger.warning("refusal_not_written", extra={"detail": str(exc)})
        except ZgwUnavailableError as exc:
            raise DestinationUnavailableError(f"the zaaksysteem: {exc}") from None


def _iso(unix: int) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).isoformat()


def create_transport(config: AdapterConfig, clock: Clock) -> Transport:
    """The ``zgw`` transport of ``config`` (``[system]`` validated: ``AdapterConfigError``)."""
    settings = ZgwSettings.from_config(config)
    settings.credentials()  # the secret file must be readable now, not at the first poll
    zgw = _Zgw(settings, clock)
    return Transport(ZgwSource(zgw, config), ZgwMapping(), ZgwDestination(zgw, config.partner.id))
