"""The Halt adapter: CSV files in drop folders (semicolon-separated, UTF-8 with BOM, Dutch dates).

Halt's registration system and the adapter share these folders (``[system]`` in
``adapter.toml``, relative to the partner folder; ``DEFAULT_SYSTEM_TOML`` is the development
layout). The folders are named from Halt's side, as Halt's staff see them:

* ``uit/`` — Halt's system exports progress reports (*voortgang*) here, ``*.csv``, one row per
  youth. Columns (header row, any order, names case-insensitive):

  ============================ ========= =====================================================
  ``halt-dossiernummer``       required  Halt's dossier number: the adapter's local id
  ``datum``                    required  ``dd-mm-jjjj``
  ``status``                   required  ``loopt`` | ``zorgen`` | ``positief afgerond`` |
                                         ``negatief afgerond`` | ``geen contact``
  ``toelichting``              required  free text
  ``ontvangers``               required  partner ids, comma-separated (``om,gemeente-velsen``)
  ``onderdeel``                optional  e.g. ``Halt-afdoening``
  ``aanpak-id``                optional  the approach (token id); default: the newest approach
                                         that covers the dossier
  ============================ ========= =====================================================

  Names starting with ``.`` and names not ending in ``.csv`` are never read (a careful writer
  writes ``.name.csv.part`` and renames); a file is left alone until it is ``settle_s`` seconds
  old, which keeps a careless writer's half-written file from being read.
* ``in/`` — the adapter writes one file per inbound message, ``<message id>.csv``, one row per
  youth (per action for a plan), the columns of the message type (``INBOUND_COLUMNS``), and
  ``weigering-<message id>[-<recipient>].csv`` when one of Halt's own reports was finally
  refused.
* ``mislukt/`` — what could not be sent, each with ``<name>.fout.txt`` beside it: a whole file
  (not UTF-8, wrong columns, bad CSV quoting, no rows, larger than ``max_file_bytes``) is moved
  here; a bad **row** is copied here as ``<stem>.regel-<n>.csv`` while the file's good rows
  are sent.
* ``verwerkt/`` — a file is moved here once all its rows are in the outbox or in ``mislukt/``.
* ``register`` — Halt's dossier export (``halt-dossiernummer;voornamen;achternaam;
  geboortedatum;bsn``), used to link the pseudonyms of an approach-notice to dossiers by BSN,
  or by family name + date of birth (+ first name), never by a guess.

Rules kept here:

* **One record per row**: record id = file name + ":" + line number + ":" + SHA-256 of the
  header and that row. A row read twice (a crash before the file was moved, Halt exporting the
  same file again) is the same record, hence one message; a bad row never holds back the good
  rows of its file. A file-level problem makes one record for the file (name + ":" + SHA-256
  of the file). There is no pull cursor: presence in ``uit/`` is the state.
* Reading is strict: UTF-8 (the BOM is expected and removed; a file without one is accepted if
  it is valid UTF-8), ``;`` separated, ``"`` quoted, CSV quoting errors are file errors.
* Writing: UTF-8 with BOM, ``;``, CRLF, ``dd-mm-jjjj`` dates, times in ``timezone``; cells
  that a spreadsheet would run as a formula (starting ``= + - @``) get a leading ``'``. Files
  are written atomically and idempotently (temp file, fsync, link, ledger — as the OM adapter
  does, with the same helpers: ``adapters/partners/_dropfolder.py``).
"""

from __future__ import annotations

import asyncio
import csv
import datetime
import hashlib
import io
import logging
import re
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

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
    Refusal,
    SourceBase,
    SourceRecord,
    Transport,
)
from adapters.config import AdapterConfig
from adapters.errors import AdapterError
from adapters.partners._dropfolder import (
    DropLimits,
    Folder,
    Ledger,
    MaxFileBytes,
    MaxFilesPerPull,
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
from adapters.partners._settings import config_error, distinct_folders, struct_settings
from gateway.protocol.messages import (
    ActionPlan,
    ApproachChange,
    ApproachNotice,
    CaseConference,
    Closure,
    ClosureReason,
    OffenceCategory,
    Progress,
    ProgressStatus,
    Referral,
    Signal,
    SignalCategory,
)
from gateway.protocol.types import ApproachKind, MessageType

logger = logging.getLogger(__name__)

TRANSPORT: Final = "halt-csv"
CONTENT_TYPE: Final = "text/csv; charset=utf-8"
BOM: Final = "\ufeff"
DELIMITER: Final = ";"

DEFAULT_SYSTEM_TOML: Final = """\
[system]
# Halt's CSV drop folders (adapters/partners/halt.py), relative to this folder.
transport = "halt-csv"
uit_dir = "uitwisseling/uit"            # Halt's system exports voortgang CSV files here
in_dir = "uitwisseling/in"              # the adapter writes inbound messages here
mislukt_dir = "uitwisseling/mislukt"    # refused files and rows, each with <name>.fout.txt
verwerkt_dir = "uitwisseling/verwerkt"  # files already in the outbox
register = "uitwisseling/register/dossiers.csv"  # Halt's dossier export
state_dir = "state/halt"                # the adapter's ledger of files written to in/
timezone = "Europe/Amsterdam"           # for times written into in/ files
max_file_bytes = 1048576                # larger files are refused unread
settle_s = 2                            # a file is read once it is this many seconds old
max_files_per_pull = 100
"""

# -- configuration -------------------------------------------------------------------------


class HaltSystemConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``[system]`` table of the Halt adapter; sizes in bytes, times in seconds."""

    transport: str = TRANSPORT
    uit_dir: Folder = "uitwisseling/uit"
    in_dir: Folder = "uitwisseling/in"
    mislukt_dir: Folder = "uitwisseling/mislukt"
    verwerkt_dir: Folder = "uitwisseling/verwerkt"
    register: Folder = "uitwisseling/register/dossiers.csv"
    state_dir: Folder = "state/halt"
    timezone: Folder = "Europe/Amsterdam"
    max_file_bytes: MaxFileBytes = 1024 * 1024
    settle_s: SettleSeconds = 2
    max_files_per_pull: MaxFilesPerPull = 100


# -- the CSV formats -----------------------------------------------------------------------

REQUIRED_COLUMNS: Final = ("halt-dossiernummer", "datum", "status", "toelichting", "ontvangers")
OPTIONAL_COLUMNS: Final = ("onderdeel", "aanpak-id")
REGISTER_COLUMNS: Final = ("halt-dossiernummer", "voornamen", "achternaam", "geboortedatum")

STATUS_FROM_HALT: Final[Mapping[str, ProgressStatus]] = {
    "loopt": ProgressStatus.ON_TRACK,
    "zorgen": ProgressStatus.CONCERN,
    "positief afgerond": ProgressStatus.COMPLETED,
    "negatief afgerond": ProgressStatus.NOT_COMPLETED,
    "geen contact": ProgressStatus.NO_CONTACT,
}
STATUS_TO_HALT: Final = {v: k for k, v in STATUS_FROM_HALT.items()}
# Halt's words in the files its staff read. Most are the OM's words too (``om.OFFENCE_NL``…),
# but each table is its partner's format, not a shared one: a change in Halt's import must
# not change what the OM's XSD accepts, and the closure reasons already differ.
OFFENCE_HALT: Final[Mapping[OffenceCategory, str]] = {
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
SIGNAL_HALT: Final[Mapping[SignalCategory, str]] = {
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
CLOSURE_HALT: Final[Mapping[ClosureReason, str]] = {
    ClosureReason.GOALS_REACHED: "doelen bereikt",
    ClosureReason.NO_LONGER_NEEDED: "niet meer nodig",
    ClosureReason.MOVED_AWAY: "verhuisd",
    ClosureReason.HANDED_OVER: "overgedragen",
    ClosureReason.OTHER: "overig",
}
TYPE_HALT: Final[Mapping[MessageType, str]] = {
    MessageType.APPROACH_NOTICE: "aanpakmelding",
    MessageType.SIGNAL: "signaal",
    MessageType.REFERRAL: "verwijzing",
    MessageType.CASE_CONFERENCE: "casusoverleg",
    MessageType.ACTION_PLAN: "plan-van-aanpak",
    MessageType.PROGRESS: "voortgang",
    MessageType.CLOSURE: "afsluiting",
}

COMMON_COLUMNS: Final = (
    "berichtid",
    "berichttype",
    "afzender",
    "aanpak-id",
    "ontvangen",
    "halt-dossiernummer",
    "pseudoniem",
)
# The columns of ``in/<message id>.csv`` per message type, after ``COMMON_COLUMNS``.
INBOUND_COLUMNS: Final[Mapping[MessageType, tuple[str, ...]]] = {
    MessageType.APPROACH_NOTICE: (
        "soort",
        "wijziging",
        "voornaam",
        "achternaam",
        "geboortedatum",
        "bsn",
        "adres",
        "contact",
    ),
    MessageType.SIGNAL: ("incidentdatum", "categorie", "gemeente", "bronkenmerk", "toelichting"),
    MessageType.REFERRAL: (
        "delictcategorie",
        "pleegdatum",
        "verwijsdatum",
        "halt-waardig",
        "zaaknummer",
        "toelichting",
    ),
    MessageType.CASE_CONFERENCE: ("datum", "deelnemers", "agenda", "besluiten", "volgende-datum"),
    MessageType.ACTION_PLAN: ("doel", "evaluatiedatum", "actie", "eigenaar", "uiterlijk"),
    MessageType.PROGRESS: ("datum", "status", "onderdeel", "toelichting"),
    MessageType.CLOSURE: ("datum", "reden", "toelichting"),
}
REFUSAL_COLUMNS: Final = (
    "berichtid",
    "bronbestand",
    "regel",
    "door",
    "reden",
    "ontvanger",
    "toelichting",
)

_DATE: Final = re.compile(r"^(\d{2})-(\d{2})-(\d{4})$")
_DOSSIER: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{2,39}$")
_PARTNER: Final = re.compile(r"^[a-z][a-z0-9-]{1,62}$")
_TOKEN_ID: Final = re.compile(r"^[0-9a-f]{32}$")
# Cells a spreadsheet would evaluate (CSV injection, OWASP); prefixed with "'".
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")


def parse_dutch_date(value: str) -> datetime.date:
    """``dd-mm-jjjj`` → date; ``ValueError`` otherwise."""
    m = _DATE.match(value.strip())
    if m is None:
        raise ValueError("not dd-mm-jjjj")
    return datetime.date(int(m[3]), int(m[2]), int(m[1]))


def dutch_date(value: datetime.date) -> str:
    return value.strftime("%d-%m-%Y")


def _cell(value: str | None) -> str:
    if value is None:
        return ""
    return f"'{value}" if value.startswith(_FORMULA_START) else value


def render_csv(
    header: Sequence[str], rows: Sequence[Sequence[str | None]], *, defuse: bool = True
) -> bytes:
    """UTF-8 with BOM, ``;``, CRLF, minimal quoting; formula-like cells defused (for files
    Halt's staff open; not for the copy of a row as Halt wrote it)."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter=DELIMITER, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(v) if defuse else (v or "") for v in row])
    return (BOM + out.getvalue()).encode("utf-8")


class CsvFileError(ValueError):
    """A whole file cannot be read as Halt CSV."""


@dataclass(frozen=True)
class CsvRow:
    line: int
    values: list[str]


def decode_text(data: bytes) -> str:
    """UTF-8 (BOM removed); ``CsvFileError`` naming the first bad byte."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CsvFileError(
            f"the file is not UTF-8: byte 0x{data[exc.start]:02x} on line {line} "
            "(export it as 'CSV UTF-8')"
        ) from None
    return text.removeprefix(BOM)


def read_rows(text: str) -> tuple[list[str], list[CsvRow]]:
    """Header (lower-cased, trimmed) and rows with their starting line numbers."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=DELIMITER, strict=True)
    rows: list[CsvRow] = []
    header: list[str] | None = None
    try:
        line = reader.line_num + 1
        for values in reader:
            if header is None:
                header = [h.strip().lower() for h in values]
            elif any(v.strip() for v in values):  # blank lines are not rows
                rows.append(CsvRow(line, values))
            line = reader.line_num + 1
    except csv.Error as exc:
        raise CsvFileError(f"line {reader.line_num}: not valid CSV: {exc}") from None
    if header is None:
        raise CsvFileError("the file is empty (no header row)")
    return header, rows


def check_header(header: Sequence[str], required: Sequence[str], optional: Sequence[str]) -> None:
    """``CsvFileError`` listing missing, unknown and doubled columns."""
    problems = []
    missing = [c for c in required if c not in header]
    unknown = [c for c in header if c not in required and c not in optional]
    doubled = sorted({c for c in header if header.count(c) > 1})
    if missing:
        problems.append("missing column(s): " + ", ".join(missing))
    if unknown:
        problems.append("unknown column(s): " + ", ".join(repr(c) for c in unknown))
    if doubled:
        problems.append("column(s) twice: " + ", ".join(doubled))
    if problems:
        expected = ";".join([*required, *optional])
        raise CsvFileError(
            "the header row is not Halt's voortgang export: "
            + "; ".join(problems)
            + f" (expected: {expected}, the last {len(optional)} optional)"
        )


def read_export(data: bytes) -> tuple[list[str], list[CsvRow]]:
    """A voortgang export's header and rows; ``CsvFileError`` for a file-level problem."""
    header, rows = read_rows(decode_text(data))
    check_header(header, REQUIRED_COLUMNS, OPTIONAL_COLUMNS)
    if not rows:
        raise CsvFileError("the file has a header row but no rows")
    return header, rows


# -- Source ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HaltFolders:
    uit: Path
    inbox: Path
    mislukt: Path
    verwerkt: Path
    register: Path
    ledger: Path


@dataclass
class _PendingFile:
    path: Path
    name: str
    digest: str
    open_ids: set[str] = field(default_factory=set)
    whole_file_failed: bool = False


class HaltSource(SourceBase):
    """Reads ``uit/``: one record per row (or one per unreadable file)."""

    def __init__(self, folders: HaltFolders, limits: DropLimits, clock: Clock) -> None:
        self.folders = folders
        self.limits = limits
        self.clock = clock
        self._files: dict[str, _PendingFile] = {}  # file name → rows not yet settled
        self._file_of: dict[str, str] = {}  # record id → file name

    async def pull(self, cursor: str | None) -> PullBatch:
        return await asyncio.to_thread(self._pull)

    def _pull(self) -> PullBatch:
        now = self.clock.now()
        try:
            found = candidates(self.folders.uit, ".csv")
        except OSError as exc:
            raise AdapterError(f"Halt drop folder unreadable: {exc}") from None
        records: list[SourceRecord] = []
        files = 0
        for mtime_ns, name, path in found:
            if files >= self.limits.max_files:
                break
            if self.limits.settling(mtime_ns, now):
                continue
            try:
                file_records, digest = self._read(name, path)
            except FileNotFoundError:
                continue
            files += 1
            pending = _PendingFile(path, name, digest, {r.record_id for r in file_records})
            self._files[name] = pending
            for record in file_records:
                self._file_of[record.record_id] = name
            records.extend(file_records)
        return PullBatch(records)

    def _read(self, name: str, path: Path) -> tuple[list[SourceRecord], str]:
        data, digest = read_picked(path, self.limits.max_file_bytes)
        if data is None:
            report = self.limits.too_large(path)
            return [self._file_record(name, digest, b"", report)], digest
        try:
            header, rows = read_export(data)
        except CsvFileError as exc:
            return [self._file_record(name, digest, data, str(exc))], digest
        out = []
        for row in rows:
            row_data = render_csv(header, [row.values], defuse=False)
            row_digest = hashlib.sha256(row_data).hexdigest()
            metadata = {"file": name, "regel": str(row.line), "sha256": digest}
            if len(row.values) != len(header):
                metadata["refused"] = (
                    f"line {row.line}: {len(row.values)} fields; the header has {len(header)}"
                )
            out.append(
                SourceRecord(f"{name}:{row.line}:{row_digest}", row_data, CONTENT_TYPE, metadata)
            )
        return out, digest

    @staticmethod
    def _file_record(name: str, digest: str, data: bytes, report: str) -> SourceRecord:
        metadata = {"file": name, "sha256": digest, "refused": report, "whole_file": "yes"}
        return SourceRecord(f"{name}:{digest}", data, CONTENT_TYPE, metadata)

    def _settle(self, record_id: str, *, whole_file_failed: bool = False) -> _PendingFile | None:
        """Mark a record done; the file when it has no open rows left (and is still ours)."""
        name = self._file_of.pop(record_id, None)
        pending = self._files.get(name) if name is not None else None
        if pending is None:
            return None
        pending.open_ids.discard(record_id)
        pending.whole_file_failed |= whole_file_failed
        if pending.open_ids:
            return None
        del self._files[pending.name]
        return pending

    async def acknowledge(self, record_ids: Sequence[str]) -> None:
        await asyncio.to_thread(self._acknowledge, record_ids)

    def _acknowledge(self, record_ids: Sequence[str]) -> None:
        for record_id in record_ids:
            done = self._settle(record_id)
            if done is None or done.whole_file_failed:
                continue
            try:
                move_aside(done.path, self.folders.verwerkt, done.digest)
            except OSError as exc:  # left in uit/: read again, harmless (same record ids)
                logger.warning("dropfolder_move_failed", extra={"detail": str(exc)})

    async def quarantine(self, record: SourceRecord, report: str) -> None:
        await asyncio.to_thread(self._quarantine, record, report)

    def _quarantine(self, record: SourceRecord, report: str) -> None:
        name = record.metadata.get("file", record.record_id.partition(":")[0])
        digest = record.metadata.get("sha256", "")
        now = self.clock.now()
        hint = "Correct it and export it to uit/ again (the good rows were sent already)."
        if record.metadata.get("whole_file"):
            pending = self._files.get(name)
            target: Path | None = None
            if pending is not None:
                target = move_aside(pending.path, self.folders.mislukt, pending.digest)
            self._settle(record.record_id, whole_file_failed=True)
            report_name = f"{(target.name if target else name)}.fout.txt"
            hint = "Correct the file and export it to uit/ again."
        else:
            stem = name.removesuffix(".csv")
            copy = f"{stem}.regel-{record.metadata.get('regel', '?')}.csv"
            replace_file(self.folders.mislukt / copy, record.data)  # header + row, with BOM
            report_name = f"{copy}.fout.txt"
        replace_file(
            self.folders.mislukt / report_name,
            refusal_report("halt", name, digest, report, now, hint),
        )


# -- Mapping ---------------------------------------------------------------------------------


class HaltMapping:
    """One ``voortgang`` row → a ``progress`` message about that dossier's youth."""

    def map(self, record: SourceRecord, context: MappingContext) -> Outbound:
        if refused := record.metadata.get("refused"):
            raise MalformedRecordError(refused)
        line = record.metadata.get("regel", "?")
        header, rows = read_rows(decode_text(record.data))
        row = dict(zip(header, (v.strip() for v in rows[0].values), strict=True))

        def bad(column: str, why: str) -> MalformedRecordError:
            return MalformedRecordError(f"line {line}, column {column}: {why}")

        dossier = row["halt-dossiernummer"]
        if not _DOSSIER.match(dossier):
            raise bad("halt-dossiernummer", "not a dossier number (letters, digits and '-')")
        try:
            reported_on = parse_dutch_date(row["datum"])
        except ValueError:
            raise bad("datum", f"{row['datum']!r} is not a date (dd-mm-jjjj)") from None
        status = STATUS_FROM_HALT.get(" ".join(row["status"].lower().split()))
        if status is None:
            raise bad("status", f"{row['status']!r} is not one of: " + ", ".join(STATUS_FROM_HALT))
        summary = row["toelichting"]
        if not summary:
            raise bad("toelichting", "empty")
        recipients = tuple(r.strip() for r in row["ontvangers"].split(",") if r.strip())
        if not recipients or not all(_PARTNER.match(r) for r in recipients):
            raise bad("ontvangers", "partner ids separated by commas, e.g. 'om,gemeente-velsen'")
        token_id = row.get("aanpak-id", "")
        if token_id:
            if not _TOKEN_ID.match(token_id):
                raise bad("aanpak-id", "not an approach id (32 hex characters)")
            subjects: tuple[str, ...] = (context.pseudonym(token_id, dossier),)
        else:
            approach = context.approach_for([dossier])
            token_id, subjects = approach.token_id, (approach.pseudonyms[dossier],)
        return Outbound(
            recipients=recipients,
            token_id=token_id,
            body=Progress(
                subjects=subjects,
                status=status,
                summary=summary,
                reported_on=reported_on,
                action=row.get("onderdeel") or None,
            ),
        )


# -- Destination -----------------------------------------------------------------------------


def read_register(path: Path) -> list[RegisteredPerson]:
    """Halt's dossier export; ``DestinationUnavailableError`` if absent or unreadable."""
    try:
        header, rows = read_rows(decode_text(path.read_bytes()))
        check_header(header, REGISTER_COLUMNS, ("bsn",))
        out = []
        for row in rows:
            values = dict(zip(header, (v.strip() for v in row.values), strict=True))
            out.append(
                RegisteredPerson(
                    local_id=values["halt-dossiernummer"],
                    given_names=values["voornamen"],
                    family_name=values["achternaam"],
                    date_of_birth=parse_dutch_date(values["geboortedatum"]),
                    bsn=values.get("bsn") or None,
                )
            )
    except (OSError, ValueError) as exc:
        # The export is Halt's to repair; meanwhile the approach-notice waits (redelivered).
        raise DestinationUnavailableError(f"Halt dossier register unusable: {exc}") from None
    return out


def _yes_no(value: bool) -> str:
    return "ja" if value else "nee"


def _joined(items: Sequence[str]) -> str:
    return " | ".join(items)


class HaltDestination:
    """Writes ``in/<message id>.csv`` and ``in/weigering-….csv``, once each."""

    def __init__(self, folders: HaltFolders, tz: datetime.tzinfo) -> None:
        self.folders = folders
        self.tz = tz
        self.ledger = Ledger(folders.ledger)

    async def apply(self, message: InboundMessage) -> Applied:
        return await asyncio.to_thread(self._apply, message)

    def _apply(self, message: InboundMessage) -> Applied:
        name = f"{checked_message_id(message.message_id)}.csv"
        try:
            done = self.ledger.get(name)
            if done is not None:
                return Applied(done)
            local_ids: dict[str, str] = {}
            if isinstance(message.body, ApproachNotice):
                local_ids = match_persons(
                    message.body.persons, read_register(self.folders.register)
                )
            shown = {**message.local_ids, **local_ids}
            header, rows = self.render(message, shown)
            write_new_file(self.folders.inbox, name, render_csv(header, rows))
            self.ledger.put(name, local_ids)
        except OSError as exc:
            raise DestinationUnavailableError(f"Halt drop folder: {exc}") from None
        return Applied(local_ids)

    def render(
        self, message: InboundMessage, local_ids: Mapping[str, str]
    ) -> tuple[tuple[str, ...], list[list[str | None]]]:
        """The header and rows of ``in/<message id>.csv``."""
        received = datetime.datetime.fromtimestamp(message.received_at, self.tz)

        def common(pseudonym: str | None) -> list[str | None]:
            return [
                message.message_id,
                TYPE_HALT[message.message_type],
                message.sender,
                message.token_id,
                received.strftime("%d-%m-%Y %H:%M"),
                local_ids.get(pseudonym, "") if pseudonym else "",
                pseudonym or "",
            ]

        body = message.body
        header = (*COMMON_COLUMNS, *INBOUND_COLUMNS[message.message_type])
        rows: list[list[str | None]] = []
        match body:
            case ApproachNotice():
                kind = "groepsaanpak" if body.approach_kind is ApproachKind.GROUP else "persoon"
                change = "gestart" if body.change is ApproachChange.STARTED else "gewijzigd"
                for p in body.persons:
                    address = (
                        f"{p.address.street} {p.address.house_number}, {p.address.postcode} "
                        f"{p.address.city}"
                        if p.address
                        else None
                    )
                    birth = dutch_date(p.date_of_birth) if p.date_of_birth else None
                    rows.append(
                        [
                            *common(p.pseudonym),
                            *(kind, change, p.given_name, p.family_name, birth, p.bsn),
                            *(address, body.contact),
                        ]
                    )
            case Signal():
                for s in body.subjects:
                    rows.append(
                        [
                            *common(s),
                            dutch_date(body.incident_date),
                            SIGNAL_HALT[body.category],
                            body.location_municipality,
                            body.source_reference,
                            body.summary,
                        ]
                    )
            case Referral():
                for s in body.subjects:
                    rows.append(
                        [
                            *common(s),
                            OFFENCE_HALT[body.offence_category],
                            dutch_date(body.offence_date),
                            dutch_date(body.referral_date),
                            _yes_no(body.halt_eligible),
                            body.case_reference,
                            body.summary,
                        ]
                    )
            case CaseConference():
                next_date = dutch_date(body.next_date) if body.next_date else None
                for s in body.subjects:
                    rows.append(
                        [
                            *common(s),
                            dutch_date(body.date),
                            ", ".join(body.participants),
                            _joined(body.agenda),
                            _joined(body.decisions),
                            next_date,
                        ]
                    )
            case ActionPlan():
                review = dutch_date(body.review_date) if body.review_date else None
                for action in body.actions:
                    rows.append(
                        [
                            *common(action.subject),
                            body.goal,
                            review,
                            action.description,
                            action.owner,
                            dutch_date(action.due),
                        ]
                    )
            case Progress():
                for s in body.subjects:
                    rows.append(
                        [
                            *common(s),
                            dutch_date(body.reported_on),
                            STATUS_TO_HALT[body.status],
                            body.action,
                            body.summary,
                        ]
                    )
            case Closure():
                for s in body.subjects:
                    rows.append(
                        [
                            *common(s),
                            dutch_date(body.closed_on),
                            CLOSURE_HALT[body.reason],
                            body.summary,
                        ]
                    )
        return header, rows

    async def report_refusal(self, record_id: str, refusal: Refusal) -> None:
        await asyncio.to_thread(self._report, record_id, refusal)

    def _report(self, record_id: str, refusal: Refusal) -> None:
        checked_message_id(refusal.message_id)
        name = refusal_file_name(refusal, ".csv")
        source, _, rest = record_id.partition(":")
        line = rest.partition(":")[0] if rest.count(":") == 1 else ""
        try:
            if self.ledger.get(name) is not None:
                return
            data = render_csv(
                REFUSAL_COLUMNS,
                [
                    [
                        refusal.message_id,
                        source,
                        line,
                        refusal.by,
                        refusal.reason,
                        refusal.recipient,
                        refusal.detail or None,
                    ]
                ],
            )
            write_new_file(self.folders.inbox, name, data)
            self.ledger.put(name, {})
        except OSError as exc:
            raise DestinationUnavailableError(f"Halt drop folder: {exc}") from None


# -- factory ---------------------------------------------------------------------------------


def create_transport(config: AdapterConfig, clock: Clock) -> Transport:
    """The Halt transport from ``[system]``; ``AdapterConfigError`` names a bad setting.

    Creates the folders if they are missing (a development deployment starts empty)."""
    settings = struct_settings(config, HaltSystemConfig)
    try:
        tz = zoneinfo.ZoneInfo(settings.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise config_error(config, "timezone", f"unknown time zone {settings.timezone!r}") from None
    paths = distinct_folders(
        config,
        {
            "uit_dir": settings.uit_dir,
            "in_dir": settings.in_dir,
            "mislukt_dir": settings.mislukt_dir,
            "verwerkt_dir": settings.verwerkt_dir,
            "state_dir": settings.state_dir,
        },
    )
    folders = HaltFolders(
        uit=paths["uit_dir"],
        inbox=paths["in_dir"],
        mislukt=paths["mislukt_dir"],
        verwerkt=paths["verwerkt_dir"],
        register=config.path(settings.register),
        ledger=paths["state_dir"] / "applied",
    )
    make_folders((folders.uit, folders.inbox, folders.mislukt, folders.verwerkt, folders.ledger))
    limits = DropLimits(settings.max_file_bytes, settings.settle_s, settings.max_files_per_pull)
    return Transport(
        HaltSource(folders, limits, clock), HaltMapping(), HaltDestination(folders, tz)
    )
