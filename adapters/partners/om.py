"""The OM adapter: XML files in drop folders, validated against ``om.xsd`` (ships beside it).

The Openbaar Ministerie's system and the adapter share four folders (``[system]`` in
``adapter.toml``, relative to the partner folder; ``DEFAULT_SYSTEM_TOML`` is the development
layout):

* ``in/`` — the OM system drops its outbound documents here (``<Verwijzing>``, ``<Voortgang>``),
  one ``*.xml`` file each. Names starting with ``.`` and names not ending in ``.xml`` are never
  read, so a careful writer writes ``.name.xml.part`` and renames; a file is also left alone
  until it is ``settle_s`` seconds old (modification time, by the adapter's clock), which keeps
  a careless writer's half-written file from being read.
* ``out/`` — the adapter writes one ``<Ketenbericht>`` per inbound message, named
  ``<message id>.xml``, and one ``<Weigering>`` per final refusal of an OM document, named
  ``weigering-<message id>[-<recipient>].xml``.
* ``failed/`` — a document that is not well-formed, not XSD-valid, not a document the OM sends,
  or larger than ``max_file_bytes`` is moved here with ``<name>.error.txt`` beside it.
* ``archive/`` — a document is moved here once it is durably in the outbox.
* ``register`` — a ``<Personenregister>`` the OM system exports, used to link the pseudonyms of
  an approach-notice to OM person numbers (the adapter's local ids).

Rules kept here:

* **Record id = file name + ":" + SHA-256 of the content.** The same file read twice (a crash
  before it was archived, or the OM system dropping it again) is the same record, hence one
  message; a corrected file under the same name is a new record. There is no pull cursor:
  presence in ``in/`` is the state, and a file leaves ``in/`` only after the SDK committed it
  (``acknowledge`` → ``archive/``) or stored it as failed (``quarantine`` → ``failed/``). A file
  changed after it was read is not moved; the next pull reads the new content.
* **Parsing is hardened**: no DTD loading, no entity expansion, no network, no huge-tree mode;
  any DOCTYPE is refused; files larger than ``max_file_bytes`` are never parsed.
* **Inbound writes are atomic and idempotent**: temp file (``.<name>.tmp``) + fsync + rename +
  fsync of the folder, so the OM system never sees half a file; an existing file is never
  overwritten. A ledger (``state_dir/applied/<name>.json``, written after the file) remembers
  what was written even after the OM system took the file away, so a redelivery (a crash
  between ``apply`` and the SDK's commit) never makes a second file. Every file written is
  validated against the XSD first: what the OM system reads is always schema-valid. (The
  drop-folder handling is shared with the Halt adapter: ``adapters/partners/_dropfolder.py``.)
* Reports are for a person at the OM: what is wrong and where (line, XSD path); never the
  document's personal data.
"""

from __future__ import annotations

import asyncio
import datetime
import importlib.resources
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

import msgspec
from lxml import etree

from adapters.base import (
    Applied,
    Clock,
    DestinationRejectedError,
    DestinationUnavailableError,
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
from adapters.partners import _dropfolder, _matching, _settings
from adapters.partners._dropfolder import (
    DropLimits,
    Folder,
    Ledger,
    MaxFileBytes,
    MaxFilesPerPull,
    PickedFile,
    SettleSeconds,
    candidates,
    checked_message_id,
    make_folders,
    move_aside,
    read_picked,
    refusal_file_name,
    refusal_report,
    replace_file,
    write_new_file,
)
from adapters.partners._matching import RegisteredPerson, match_persons
from adapters.partners._settings import distinct_folders, struct_settings
from gateway.protocol.messages import (
    ActionPlan,
    ApproachChange,
    ApproachNotice,
    CaseConference,
    CaseMessage,
    Closure,
    ClosureReason,
    OffenceCategory,
    Progress,
    ProgressStatus,
    Referral,
    Signal,
    SignalCategory,
)
from gateway.protocol.reasons import RejectionReason
from gateway.protocol.types import ApproachKind, MessageType

logger = logging.getLogger(__name__)

# Public names of this module from before its drop-folder, matching and settings helpers
# moved to the private modules (shared with the Halt adapter); kept so that callers outside
# the package keep working. Code in the package imports them from the private modules.
file_sha256 = _dropfolder.file_sha256
fsync_dir = _dropfolder.fsync_dir
read_limited = _dropfolder.read_limited
match_person = _matching.match_person
normalise_name = _matching.normalise_name
system_settings = _settings.struct_settings

TRANSPORT: Final = "om-xml"
NAMESPACE: Final = "https://ketenpost.nl/xml/om/v1"
FORMAT_VERSION: Final = "1"
CONTENT_TYPE: Final = "application/xml"
XSD_NAME: Final = "om.xsd"
# How many XSD errors a report lists; the rest are counted.
MAX_REPORTED_ERRORS: Final = 10

DEFAULT_SYSTEM_TOML: Final = """\
[system]
# The OM system's XML drop folders (adapters/partners/om.py), relative to this folder.
transport = "om-xml"
in_dir = "drop/in"            # the OM system writes <Verwijzing>/<Voortgang> files here
out_dir = "drop/out"          # the adapter writes <Ketenbericht>/<Weigering> files here
failed_dir = "drop/failed"    # refused files, each with <name>.error.txt beside it
archive_dir = "drop/archive"  # files already in the outbox
register = "drop/register/personen.xml"  # the OM system's <Personenregister> export
state_dir = "state/om"        # the adapter's ledger of files written to out/
max_file_bytes = 1048576      # larger files are refused unread
settle_s = 2                  # a file is read once it is this many seconds old
max_files_per_pull = 100
"""

# -- configuration -------------------------------------------------------------------------


class OmSystemConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``[system]`` table of the OM adapter; sizes in bytes, times in seconds."""

    transport: str = TRANSPORT
    in_dir: Folder = "drop/in"
    out_dir: Folder = "drop/out"
    failed_dir: Folder = "drop/failed"
    archive_dir: Folder = "drop/archive"
    register: Folder = "drop/register/personen.xml"
    state_dir: Folder = "state/om"
    max_file_bytes: MaxFileBytes = 1024 * 1024
    settle_s: SettleSeconds = 2
    max_files_per_pull: MaxFilesPerPull = 100


# -- hardened XML --------------------------------------------------------------------------


def safe_parser() -> etree.XMLParser:
    """A parser that loads no DTD, expands no entity, touches no network, and keeps libxml2's
    limits on depth and text size (no ``huge_tree``)."""
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        huge_tree=False,
        load_dtd=False,
        dtd_validation=False,
        remove_pis=True,
    )


def load_schema() -> etree.XMLSchema:
    """The XSD that ships with this adapter (``adapters/partners/om.xsd``)."""
    data = importlib.resources.files("adapters.partners").joinpath(XSD_NAME).read_bytes()
    return etree.XMLSchema(etree.fromstring(data, safe_parser()))


def _q(name: str) -> str:
    return f"{{{NAMESPACE}}}{name}"


def parse_document(data: bytes, schema: etree.XMLSchema) -> etree._Element:
    """Parse and validate one OM document; ``MalformedRecordError`` says what and where."""
    parser = safe_parser()
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        line, column = exc.position
        raise MalformedRecordError(
            f"not well-formed XML (truncated or damaged?): line {line}, column {column}: {exc.msg}"
        ) from None
    # Any DOCTYPE at all, whether it declares entities, points at an external DTD or neither.
    if root.getroottree().docinfo.internalDTD is not None:
        raise MalformedRecordError(
            "the document has a DOCTYPE; OM documents may not declare a DTD or entities"
        )
    if not schema.validate(root):
        errors = schema_errors(schema)
        lines = [
            f"line {e.line}: {readable_path(root, e.path)}: {_without_values(e.message)}"
            for e in errors[:MAX_REPORTED_ERRORS]
        ]
        more = len(errors) - MAX_REPORTED_ERRORS
        if more > 0:
            lines.append(f"… and {more} more")
        raise MalformedRecordError(
            f"not valid against {XSD_NAME} (version {FORMAT_VERSION}):\n  " + "\n  ".join(lines)
        )
    return root


# libxml2 quotes the offending value ("The value '123456789' is not accepted by the pattern");
# reports are logged, so values (a BSN, a name) are left out: the line and path say where.
_QUOTED_VALUE: Final = re.compile(r"The value '[^']*'")


def _without_values(message: str) -> str:
    return _QUOTED_VALUE.sub("The value", message)


def readable_path(root: etree._Element, path: str | None) -> str:
    """libxml2's ``/*/*[5]`` as ``/Verwijzing/Delictcategorie`` (local names)."""
    if not path:
        return "/"
    try:
        found = root.getroottree().xpath(path)
    except etree.XPathError:
        return path
    if not isinstance(found, list) or not found or not isinstance(found[0], etree._Element):
        return path
    element = found[0]
    chain = [element, *element.iterancestors()]
    return "/" + "/".join(etree.QName(e).localname for e in reversed(chain))


def schema_errors(schema: etree.XMLSchema) -> list[Any]:
    """The last validation's errors (lxml-stubs do not declare ``_ErrorLog`` iterable)."""
    return list(cast("Iterable[Any]", schema.error_log))


def new_root(name: str) -> etree._Element:
    """An empty ``<name versie="1">`` root with the OM namespace as the default namespace."""
    return etree.fromstring(
        f'<{name} xmlns="{NAMESPACE}" versie="{FORMAT_VERSION}"/>'.encode(), safe_parser()
    )


def _text(parent: etree._Element, name: str) -> str | None:
    child = parent.find(_q(name))
    return None if child is None else (child.text or "")


def _required(parent: etree._Element, name: str) -> str:
    value = _text(parent, name)
    if value is None:  # the XSD makes it required; a mismatch here is a bug, reported as such
        raise MalformedRecordError(f"{name}: missing")
    return value.strip()


def _date(value: str) -> datetime.date:
    return datetime.date.fromisoformat(value.strip())


def _boolean(value: str) -> bool:
    return value.strip() in ("true", "1")


def _utc(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- Dutch vocabulary ⇄ case messages -------------------------------------------------------

OFFENCE_NL: Final[Mapping[OffenceCategory, str]] = {
    OffenceCategory.SHOPLIFTING: "winkeldiefstal",
    OffenceCategory.VANDALISM: "vernieling",
    OffenceCategory.FIREWORKS: "vuurwerk",
    OffenceCategory.NUISANCE: "overlast",
    OffenceCategory.THEFT: "diefstal",
    OffenceCategory.ASSAULT: "mishandeling",
    OffenceCategory.ONLINE: "online",
    OffenceCategory.TRUANCY: "schoolverzuim",
    OffenceCategory.OTHER: "overig",
}
SIGNAL_NL: Final[Mapping[SignalCategory, str]] = {
    SignalCategory.NUISANCE: "overlast",
    SignalCategory.VANDALISM: "vernieling",
    SignalCategory.THEFT: "diefstal",
    SignalCategory.VIOLENCE: "geweld",
    SignalCategory.THREAT: "bedreiging",
    SignalCategory.DRUGS: "drugs",
    SignalCategory.WEAPONS: "wapens",
    SignalCategory.ONLINE: "online",
    SignalCategory.SCHOOL_ABSENCE: "schoolverzuim",
    SignalCategory.CONCERN: "zorg",
    SignalCategory.OTHER: "overig",
}
PROGRESS_NL: Final[Mapping[ProgressStatus, str]] = {
    ProgressStatus.ON_TRACK: "volgens-plan",
    ProgressStatus.CONCERN: "zorgen",
    ProgressStatus.COMPLETED: "afgerond",
    ProgressStatus.NOT_COMPLETED: "niet-afgerond",
    ProgressStatus.NO_CONTACT: "geen-contact",
}
CLOSURE_NL: Final[Mapping[ClosureReason, str]] = {
    ClosureReason.GOALS_REACHED: "doelen-bereikt",
    ClosureReason.NO_LONGER_NEEDED: "niet-meer-nodig",
    ClosureReason.MOVED_AWAY: "verhuisd",
    ClosureReason.HANDED_OVER: "overgedragen",
    ClosureReason.OTHER: "overig",
}
TYPE_NL: Final[Mapping[MessageType, str]] = {
    MessageType.APPROACH_NOTICE: "aanpakmelding",
    MessageType.SIGNAL: "signaal",
    MessageType.REFERRAL: "verwijzing",
    MessageType.CASE_CONFERENCE: "casusoverleg",
    MessageType.ACTION_PLAN: "plan-van-aanpak",
    MessageType.PROGRESS: "voortgang",
    MessageType.CLOSURE: "afsluiting",
}
_OFFENCE_FROM_NL: Final = {v: k for k, v in OFFENCE_NL.items()}
_PROGRESS_FROM_NL: Final = {v: k for k, v in PROGRESS_NL.items()}


# -- the person register (approach-notice → local ids) -------------------------------------


def read_register(path: Path, schema: etree.XMLSchema) -> list[RegisteredPerson]:
    """The OM ``<Personenregister>``; ``DestinationUnavailableError`` if absent or invalid
    (the OM system exports it again; meanwhile the approach-notice waits)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DestinationUnavailableError(f"OM person register unreadable: {exc}") from None
    try:
        root = parse_document(data, schema)
    except MalformedRecordError as exc:
        raise DestinationUnavailableError(f"OM person register invalid: {exc.report}") from None
    if root.tag != _q("Personenregister"):
        raise DestinationUnavailableError("OM person register: root is not <Personenregister>")
    return [
        RegisteredPerson(
            local_id=_required(p, "Persoonsnummer"),
            given_names=_required(p, "Voornamen"),
            family_name=_required(p, "Achternaam"),
            date_of_birth=_date(_required(p, "Geboortedatum")),
            bsn=(_text(p, "Bsn") or None),
        )
        for p in root.iterfind(_q("Persoon"))
    ]


# -- Source ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OmFolders:
    inbox: Path
    outbox: Path
    failed: Path
    archive: Path
    register: Path
    ledger: Path


class OmSource(SourceBase):
    """Reads ``in/``; archives acknowledged files and moves refused ones to ``failed/``."""

    def __init__(self, folders: OmFolders, limits: DropLimits, clock: Clock) -> None:
        self.folders = folders
        self.limits = limits
        self.clock = clock
        # record id → file, for the records of the last pulls not yet acknowledged.
        self._picked: dict[str, PickedFile] = {}

    async def pull(self, cursor: str | None) -> PullBatch:
        return await asyncio.to_thread(self._pull)

    def _pull(self) -> PullBatch:
        now = self.clock.now()
        records: list[SourceRecord] = []
        try:
            found = candidates(self.folders.inbox, ".xml")
        except OSError as exc:
            raise AdapterError(f"OM drop folder unreadable: {exc}") from None
        for mtime_ns, name, path in found:
            if len(records) >= self.limits.max_files:
                break
            if self.limits.settling(mtime_ns, now):
                continue
            try:
                data, digest = read_picked(path, self.limits.max_file_bytes)
            except FileNotFoundError:
                continue
            metadata = {"file": name, "sha256": digest}
            if data is None:
                metadata["refused"] = self.limits.too_large(path)
                data = b""
            record_id = f"{name}:{digest}"
            self._picked[record_id] = PickedFile(path, name, digest)
            records.append(SourceRecord(record_id, data, CONTENT_TYPE, metadata))
        return PullBatch(records)

    async def acknowledge(self, record_ids: Sequence[str]) -> None:
        await asyncio.to_thread(self._move, record_ids, self.folders.archive)

    def _move(self, record_ids: Sequence[str], folder: Path) -> list[Path]:
        moved = []
        for record_id in record_ids:
            picked = self._picked.pop(record_id, None)
            if picked is None:
                continue
            try:
                target = move_aside(picked.path, folder, picked.digest)
            except OSError as exc:
                # Left in in/: read again next time, which is harmless (same record id).
                logger.warning("dropfolder_move_failed", extra={"detail": str(exc)})
                continue
            if target is not None:
                moved.append(target)
        return moved

    async def quarantine(self, record: SourceRecord, report: str) -> None:
        await asyncio.to_thread(self._quarantine, record, report)

    def _quarantine(self, record: SourceRecord, report: str) -> None:
        name = record.metadata.get("file", record.record_id.partition(":")[0])
        digest = record.metadata.get("sha256", "")
        moved = self._move([record.record_id], self.folders.failed)
        target_name = moved[0].name if moved else name
        replace_file(
            self.folders.failed / f"{target_name}.error.txt",
            refusal_report(
                "om",
                name,
                digest,
                report,
                self.clock.now(),
                "Correct the document and put it in in/ again (under the same or a new name).",
            ),
        )


# -- Mapping ---------------------------------------------------------------------------------


class OmMapping:
    """``<Verwijzing>`` → ``referral``, ``<Voortgang>`` → ``progress``."""

    def __init__(self, schema: etree.XMLSchema) -> None:
        self.schema = schema

    def map(self, record: SourceRecord, context: MappingContext) -> Outbound:
        if refused := record.metadata.get("refused"):
            raise MalformedRecordError(refused)
        root = parse_document(record.data, self.schema)
        kind = etree.QName(root).localname
        if kind not in ("Verwijzing", "Voortgang"):
            raise MalformedRecordError(
                f"<{kind}> is valid but is not a document the OM sends "
                "(expected <Verwijzing> or <Voortgang>)"
            )
        recipients = tuple(
            (e.text or "").strip() for e in root.iterfind(f"{_q('Ontvangers')}/{_q('Ontvanger')}")
        )
        numbers = [
            str(e.get("persoonsnummer"))
            for e in root.iterfind(f"{_q('Jeugdigen')}/{_q('Jeugdige')}")
        ]
        if len(set(numbers)) != len(numbers):
            raise MalformedRecordError("Jeugdigen: a persoonsnummer is listed twice")
        token_id = _text(root, "AanpakId")
        if token_id:
            token_id = token_id.strip()
            subjects = tuple(sorted(context.pseudonym(token_id, n) for n in numbers))
        else:
            approach = context.approach_for(numbers)
            token_id = approach.token_id
            subjects = tuple(sorted(approach.pseudonyms[n] for n in numbers))
        body: CaseMessage
        if kind == "Verwijzing":
            body = Referral(
                subjects=subjects,
                offence_category=_OFFENCE_FROM_NL[_required(root, "Delictcategorie")],
                offence_date=_date(_required(root, "Pleegdatum")),
                referral_date=_date(_required(root, "Verwijsdatum")),
                halt_eligible=_boolean(_required(root, "HaltWaardig")),
                summary=_required(root, "Toelichting"),
                case_reference=_required(root, "Parketnummer"),
            )
        else:
            action = _text(root, "Onderdeel")
            body = Progress(
                subjects=subjects,
                status=_PROGRESS_FROM_NL[_required(root, "Status")],
                summary=_required(root, "Toelichting"),
                reported_on=_date(_required(root, "Datum")),
                action=action.strip() if action else None,
            )
        return Outbound(recipients=recipients, token_id=token_id, body=body)


# -- Destination -----------------------------------------------------------------------------


def _element(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    child = etree.SubElement(parent, _q(name))
    if text is not None:
        child.text = text
    return child


def _optional(parent: etree._Element, name: str, text: str | None) -> None:
    if text is not None:
        _element(parent, name, text)


def _body_element(root: etree._Element, body: CaseMessage) -> None:
    match body:
        case ApproachNotice():
            raise AssertionError("rendered by _notice_element")
        case Signal():
            e = _element(root, "Signaal")
            _element(e, "Incidentdatum", body.incident_date.isoformat())
            _element(e, "Categorie", SIGNAL_NL[body.category])
            _element(e, "Gemeente", body.location_municipality)
            _optional(e, "Bronkenmerk", body.source_reference)
            _element(e, "Toelichting", body.summary)
        case Referral():
            e = _element(root, "Verwijzing")
            _element(e, "Delictcategorie", OFFENCE_NL[body.offence_category])
            _element(e, "Pleegdatum", body.offence_date.isoformat())
            _element(e, "Verwijsdatum", body.referral_date.isoformat())
            _element(e, "HaltWaardig", "true" if body.halt_eligible else "false")
            _optional(e, "Zaaknummer", body.case_reference)
            _element(e, "Toelichting", body.summary)
        case CaseConference():
            e = _element(root, "Casusoverleg")
            _element(e, "Datum", body.date.isoformat())
            group = _element(e, "Deelnemers")
            for partner in body.participants:
                _element(group, "Deelnemer", partner)
            agenda = _element(e, "Agenda")
            for item in body.agenda:
                _element(agenda, "Punt", item)
            decisions = _element(e, "Besluiten")
            for decision in body.decisions:
                _element(decisions, "Besluit", decision)
            _optional(e, "VolgendeDatum", body.next_date.isoformat() if body.next_date else None)
        case ActionPlan():
            e = _element(root, "PlanVanAanpak")
            _element(e, "Doel", body.goal)
            actions = _element(e, "Acties")
            for action in body.actions:
                a = _element(actions, "Actie")
                if action.subject is not None:
                    a.set("pseudoniem", action.subject)
                _element(a, "Omschrijving", action.description)
                _element(a, "Eigenaar", action.owner)
                _element(a, "Uiterlijk", action.due.isoformat())
            _optional(
                e, "Evaluatiedatum", body.review_date.isoformat() if body.review_date else None
            )
        case Progress():
            e = _element(root, "Voortgang")
            _element(e, "Datum", body.reported_on.isoformat())
            _element(e, "Status", PROGRESS_NL[body.status])
            _optional(e, "Onderdeel", body.action)
            _element(e, "Toelichting", body.summary)
        case Closure():
            e = _element(root, "Afsluiting")
            _element(e, "Datum", body.closed_on.isoformat())
            _element(e, "Reden", CLOSURE_NL[body.reason])
            _optional(e, "Toelichting", body.summary)


def _notice_element(
    root: etree._Element, body: ApproachNotice, local_ids: Mapping[str, str]
) -> None:
    e = _element(root, "Aanpakmelding")
    _element(
        e, "Soort", "groepsaanpak" if body.approach_kind is ApproachKind.GROUP else "persoonsaanpak"
    )
    _element(e, "Wijziging", "gestart" if body.change is ApproachChange.STARTED else "gewijzigd")
    _optional(e, "Contact", body.contact)
    persons = _element(e, "Personen")
    for person in body.persons:
        p = _element(persons, "Persoon")
        p.set("pseudoniem", person.pseudonym)
        if person.pseudonym in local_ids:
            p.set("persoonsnummer", local_ids[person.pseudonym])
        _optional(p, "Voornaam", person.given_name)
        _optional(p, "Achternaam", person.family_name)
        _optional(
            p, "Geboortedatum", person.date_of_birth.isoformat() if person.date_of_birth else None
        )
        _optional(p, "Bsn", person.bsn)
        if person.address is not None:
            a = _element(p, "Adres")
            _element(a, "Straat", person.address.street)
            _element(a, "Huisnummer", person.address.house_number)
            _element(a, "Postcode", person.address.postcode)
            _element(a, "Woonplaats", person.address.city)


def render_message(message: InboundMessage, local_ids: Mapping[str, str]) -> bytes:
    """The ``<Ketenbericht>`` of ``message``; ``local_ids`` maps pseudonyms to persoonsnummers.

    Raises ``ValueError`` for text XML cannot carry (control characters)."""
    root = new_root("Ketenbericht")
    _element(root, "BerichtId", message.message_id)
    _element(root, "Afzender", message.sender)
    _element(root, "Berichttype", TYPE_NL[message.message_type])
    _element(root, "AanpakId", message.token_id)
    _element(root, "Geaccepteerd", _utc(message.accepted_at))
    _element(root, "Ontvangen", _utc(message.received_at))
    _element(root, "TraceId", message.trace_id)
    youths = _element(root, "Jeugdigen")
    for pseudonym in message.subjects:
        j = _element(youths, "Jeugdige")
        j.set("pseudoniem", pseudonym)
        if pseudonym in local_ids:
            j.set("persoonsnummer", local_ids[pseudonym])
    if isinstance(message.body, ApproachNotice):
        _notice_element(root, message.body, local_ids)
    else:
        _body_element(root, message.body)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True))


def render_refusal(record_id: str, refusal: Refusal) -> bytes:
    root = new_root("Weigering")
    _element(root, "BerichtId", refusal.message_id)
    _element(root, "Bronbestand", record_id.partition(":")[0][:200] or "?")
    _element(root, "Door", refusal.by)
    _element(root, "Reden", refusal.reason)
    _optional(root, "Ontvanger", refusal.recipient)
    _optional(root, "Toelichting", refusal.detail[:8000] or None)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True))


class OmDestination:
    """Writes ``<Ketenbericht>`` / ``<Weigering>`` files into ``out/``, once each."""

    def __init__(self, folders: OmFolders, schema: etree.XMLSchema) -> None:
        self.folders = folders
        self.schema = schema
        self.ledger = Ledger(folders.ledger)

    async def apply(self, message: InboundMessage) -> Applied:
        return await asyncio.to_thread(self._apply, message)

    def _apply(self, message: InboundMessage) -> Applied:
        name = f"{checked_message_id(message.message_id)}.xml"
        try:
            done = self.ledger.get(name)
            if done is not None:
                return Applied(done)
            local_ids: dict[str, str] = {}
            if isinstance(message.body, ApproachNotice):
                register = read_register(self.folders.register, self.schema)
                local_ids = match_persons(message.body.persons, register)
                shown = {**message.local_ids, **local_ids}
            else:
                shown = dict(message.local_ids)
            data = self._valid(lambda: render_message(message, shown))
            write_new_file(self.folders.outbox, name, data)
            self.ledger.put(name, local_ids)
        except OSError as exc:
            raise DestinationUnavailableError(f"OM drop folder: {exc}") from None
        return Applied(local_ids)

    def _valid(self, render: Callable[[], bytes]) -> bytes:
        try:
            data = render()
        except ValueError as exc:
            raise DestinationRejectedError(
                RejectionReason.SCHEMA_INVALID, f"cannot be written as OM XML: {exc}"
            ) from None
        root = etree.fromstring(data, safe_parser())
        if not self.schema.validate(root):
            errors = schema_errors(self.schema)
            detail = f"{errors[0].path}: {errors[0].message}" if errors else "invalid"
            raise DestinationRejectedError(
                RejectionReason.SCHEMA_INVALID, f"does not fit {XSD_NAME}: {detail}"
            )
        return data

    async def report_refusal(self, record_id: str, refusal: Refusal) -> None:
        await asyncio.to_thread(self._report, record_id, refusal)

    def _report(self, record_id: str, refusal: Refusal) -> None:
        checked_message_id(refusal.message_id)
        name = refusal_file_name(refusal, ".xml")
        try:
            if self.ledger.get(name) is not None:
                return
            try:
                data = self._valid(lambda: render_refusal(record_id, refusal))
            except DestinationRejectedError:
                data = render_refusal(record_id, Refusal(refusal.message_id, refusal.by, "?"))
            write_new_file(self.folders.outbox, name, data)
            self.ledger.put(name, {})
        except OSError as exc:
            raise DestinationUnavailableError(f"OM drop folder: {exc}") from None


# -- factory ---------------------------------------------------------------------------------


def create_transport(config: AdapterConfig, clock: Clock) -> Transport:
    """The OM transport from ``[system]``; ``AdapterConfigError`` names a bad setting.

    Creates the folders if they are missing (a development deployment starts empty)."""
    settings = struct_settings(config, OmSystemConfig)
    paths = distinct_folders(
        config,
        {
            "in_dir": settings.in_dir,
            "out_dir": settings.out_dir,
            "failed_dir": settings.failed_dir,
            "archive_dir": settings.archive_dir,
            "state_dir": settings.state_dir,
        },
    )
    folders = OmFolders(
        inbox=paths["in_dir"],
        outbox=paths["out_dir"],
        failed=paths["failed_dir"],
        archive=paths["archive_dir"],
        register=config.path(settings.register),
        ledger=paths["state_dir"] / "applied",
    )
    make_folders((folders.inbox, folders.outbox, folders.failed, folders.archive, folders.ledger))
    schema = load_schema()
    limits = DropLimits(settings.max_file_bytes, settings.settle_s, settings.max_files_per_pull)
    return Transport(
        OmSource(folders, limits, clock), OmMapping(schema), OmDestination(folders, schema)
    )
