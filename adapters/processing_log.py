"""Processing logs in the form of Logius' *Logboek Dataverwerkingen* (LDV), kept per adapter.

Every processing of a case message by this adapter — **sent** (the gateway accepted it),
**refused** (the gateway or the adapter refused it for good), **received** (delivered, opened
and every check passed), **applied** (handed to the partner system and recorded), **rejected**
(answered with a signed rejection) — becomes one or more log records, stored in ``adapter.db``
(table ``processing_log``, migration 2) and exported as JSON lines
(``ketenpost adapter processing-log``).

Rules kept here (the standard's text: Logius-standaarden/logboek-dataverwerkingen,
``sections/specificaties.md``, "Component: Logboek" and "Component: Applicatie"):

* Record fields are the standard's: ``trace_id`` (16 bytes, 32 hex), ``span_id`` (8 bytes, 16
  hex), ``parent_span_id``, ``name`` (for people), ``status`` (``Unset`` | ``Ok`` | ``Error``),
  ``start_time`` and ``end_time`` (milliseconds since the epoch), ``resource.attributes``, and
  ``attributes`` with exactly the ``dpl.core`` keys: ``dpl.core.processing_activity_id``,
  ``dpl.core.data_subject_id``, ``dpl.core.data_subject_id_type`` and, for an action started
  by another partner's action, ``dpl.core.foreign_operation.processor``. The standard allows
  other attribute namespaces only from an adopted extension, so Ketenpost's own details
  (operation, message id, type, approach, partners, reason) sit beside them in a separate
  top-level ``ketenpost`` object, never in ``attributes``.
* The trace id is the one of the envelope header's W3C ``traceparent``; the header's parent-id
  is the sender's span of its *sent* action. A recipient's *received* record has that span as
  ``parent_span_id`` and names the sender in ``dpl.core.foreign_operation.processor`` (the
  standard: a parent span with that attribute is another application's action); its *applied*
  record is a child of *received*, and the partner system gets a ``traceparent`` whose
  parent-id is the *applied* span, so a reply it sends continues the trace from there.
* ``dpl.core.data_subject_id`` is the **pseudonym**, never a BSN or local id (the standard
  recommends pseudonymising it; ours is random per youth per approach). One record names at most
  one subject: an action about several subjects is one record without a subject plus a child
  record per subject (the standard's rule for several data subjects).
* ``dpl.core.processing_activity_id`` is the first processing activity the covenant policy
  lists for this partner's role (``policy.roles[role].processing_activities``).
* Statuses: ``Ok`` for an action that did what it was for; ``Unset`` for a refusal or
  rejection, which the standard counts as handled without an internal error; ``Error`` is not
  written (a failure of our own answers nothing and the gateway delivers again).
* Span ids are derived (SHA-256 of a label, partner, message id, operation and subject), so a
  redelivered message or a resubmitted envelope writes nothing twice (``INSERT OR IGNORE`` on the
  span id) and the *applied* span is known before the partner system is called.
* The subjects of a rejection are logged only when the envelope opened (its header signature
  verified): an unverified header could plant a pseudonym in our log.
* Records are never changed; they are deleted with everything else of the approach at its
  retention deadline (``AdapterStore.apply_retention``, table ``processing_log``).
"""

from __future__ import annotations

import enum
import hashlib
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from adapters.directory import DirectoryUnavailableError
from adapters.outbox import AdapterStore, OutboxRow, ProcessingRow
from gateway.protocol.envelope import Header, decode_envelope
from gateway.protocol.messages import decode_body, subjects_of
from gateway.protocol.policy import policy_from_directory
from keys import Directory

# What the standard calls the type of ``dpl.core.data_subject_id``.
SUBJECT_ID_TYPE: Final = "ketenpost-pseudoniem"
# ``dpl.core.foreign_operation.processor`` is a URL of the other application; a partner's
# adapter has none that is public, so the partner is named by a URN under this prefix.
PROCESSOR_PREFIX: Final = "urn:ketenpost:partner:"
SERVICE_NAME: Final = "ketenpost-adapter"
# Domain separation of derived span ids (a hash of this label, never of bare ids).
SPAN_LABEL: Final = b"ketenpost/processing-log/span/v1\x00"

_TRACEPARENT_RE: Final = re.compile(
    r"00-(?!0{32}-)([0-9a-f]{32})-(?!0{16}-)([0-9a-f]{16})-([0-9a-f]{2})"
)
_TYPE_NAMES: Final = {
    "approach-notice": "Aanpakmelding",
    "signal": "Signaal",
    "referral": "Verwijzing",
    "case-conference": "Casusoverleg",
    "action-plan": "Plan van aanpak",
    "progress": "Voortgangsbericht",
    "closure": "Afsluiting",
}


class Operation(enum.StrEnum):
    SENT = "sent"
    REFUSED = "refused"
    RECEIVED = "received"
    APPLIED = "applied"
    REJECTED = "rejected"


class Status(enum.StrEnum):
    """The standard's ``status`` values."""

    UNSET = "Unset"
    OK = "Ok"
    ERROR = "Error"


class Resource(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    attributes: dict[str, str]


class KetenpostDetails(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Ketenpost's own fields of a record (outside the standard's ``attributes``)."""

    operation: Operation
    partner: str
    message_id: str
    message_type: str | None = None
    token_id: str | None = None
    other_partners: tuple[str, ...] = ()
    reason: str | None = None


class ProcessingRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One LDV log record (one action about at most one data subject)."""

    trace_id: str
    span_id: str
    name: str
    status: Status
    start_time: int
    end_time: int
    attributes: dict[str, str]
    resource: Resource
    ketenpost: KetenpostDetails
    parent_span_id: str | None = None


_ENCODER: Final = msgspec.json.Encoder(order="sorted")
_DECODER: Final = msgspec.json.Decoder(ProcessingRecord)


def decode_record(line: bytes | str) -> ProcessingRecord:
    """One exported JSON line back as a record (for tests and tools)."""
    return _DECODER.decode(line)


@dataclass(frozen=True)
class TraceParent:
    """A W3C ``traceparent`` (version 00): trace id, parent span id, flags."""

    trace_id: str
    span_id: str
    flags: str = "01"

    @classmethod
    def parse(cls, value: str | None) -> TraceParent | None:
        match = _TRACEPARENT_RE.fullmatch(value or "")
        return None if match is None else cls(match[1], match[2], match[3])

    def __str__(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


def derive_span_id(partner: str, message_id: str, operation: str, subject: str = "") -> str:
    """The span id of one action: 8 bytes of SHA-256 over a label and its names, never zero."""
    digest = hashlib.sha256(
        SPAN_LABEL + "\x00".join((partner, message_id, operation, subject)).encode()
    ).digest()[:8]
    return digest.hex() if any(digest) else "0000000000000001"


def _name(message_type: str | None) -> str:
    return _TYPE_NAMES.get(message_type or "", "Bericht")


@dataclass(frozen=True)
class _Action:
    operation: Operation
    message_id: str
    trace_id: str
    name: str
    status: Status
    start_s: int
    end_s: int
    subjects: Sequence[str]
    parent_span_id: str | None = None
    foreign: str | None = None
    message_type: str | None = None
    token_id: str | None = None
    other_partners: tuple[str, ...] = ()
    reason: str | None = None


class ProcessingLog:
    """Writes the LDV records of one adapter into its ``AdapterStore``.

    ``directory`` returns the current directory (for this partner's role and the policy's
    processing activity); when it raises ``DirectoryUnavailableError`` the last activity id
    seen is used.
    """

    def __init__(
        self, store: AdapterStore, partner_id: str, directory: Callable[[], Directory]
    ) -> None:
        self._store = store
        self._partner = partner_id
        self._directory = directory
        self._activity: str | None = None

    # -- trace context -------------------------------------------------------------------

    def outbound_trace(self, message_id: str, upstream: str | None) -> tuple[str, str | None]:
        """The ``traceparent`` for a new outbound message and the partner system's span.

        The trace continues ``upstream`` (the partner system's traceparent) when it is a valid
        one, else starts afresh; the parent-id is this adapter's *sent* span.
        """
        parent = TraceParent.parse(upstream)
        trace = parent.trace_id if parent is not None else secrets.token_hex(16)
        span = derive_span_id(self._partner, message_id, Operation.SENT)
        flags = parent.flags if parent is not None else "01"
        return str(TraceParent(trace, span, flags)), parent.span_id if parent else None

    def inbound_traceparent(self, header: Header) -> str:
        """The ``traceparent`` handed to the partner system: our *applied* span as parent."""
        parent = TraceParent.parse(header.trace_id)
        trace = parent.trace_id if parent is not None else secrets.token_hex(16)
        span = derive_span_id(self._partner, header.message_id, Operation.APPLIED)
        return str(TraceParent(trace, span, parent.flags if parent else "01"))

    # -- the hooks -----------------------------------------------------------------------

    def sent(self, row: OutboxRow, accepted_at: int, now: int) -> None:
        """The gateway accepted ``row``'s envelope (receipt verified)."""
        self._outbound(row, Operation.SENT, Status.OK, None, max(accepted_at, row.created_at))

    def refused(self, row: OutboxRow, reason: str, now: int) -> None:
        """``row`` was refused for good (by the gateway, or before sealing)."""
        self._outbound(row, Operation.REFUSED, Status.UNSET, reason.split(":", 1)[0], now)

    def received(self, header: Header, now: int) -> None:
        """A delivery opened and passed every check."""
        parent = TraceParent.parse(header.trace_id)
        self._write(
            _Action(
                operation=Operation.RECEIVED,
                message_id=header.message_id,
                trace_id=parent.trace_id if parent else secrets.token_hex(16),
                name=f"{_name(header.message_type)} ontvangen van {header.sender}",
                status=Status.OK,
                start_s=now,
                end_s=now,
                subjects=tuple(header.subjects),
                parent_span_id=parent.span_id if parent else None,
                foreign=header.sender,
                message_type=header.message_type.value,
                token_id=header.token_id,
                other_partners=(header.sender,),
            )
        )

    def applied(self, header: Header, now: int) -> None:
        """The partner system took the message in and the processed row committed."""
        parent = TraceParent.parse(header.trace_id)
        self._write(
            _Action(
                operation=Operation.APPLIED,
                message_id=header.message_id,
                trace_id=parent.trace_id if parent else secrets.token_hex(16),
                name=f"{_name(header.message_type)} van {header.sender} verwerkt in bronsysteem",
                status=Status.OK,
                start_s=now,
                end_s=now,
                subjects=tuple(header.subjects),
                parent_span_id=derive_span_id(self._partner, header.message_id, Operation.RECEIVED),
                message_type=header.message_type.value,
                token_id=header.token_id,
                other_partners=(header.sender,),
            )
        )

    def rejected(
        self, message_id: str, sender: str, envelope: bytes, reason: str, *, opened: bool, now: int
    ) -> None:
        """A delivery was answered with a signed rejection for ``reason``."""
        try:
            header: Header | None = decode_envelope(envelope).header
        except Exception:  # not even the header decodes: log what the delivery says
            header = None
        parent = TraceParent.parse(header.trace_id if header is not None else None)
        self._write(
            _Action(
                operation=Operation.REJECTED,
                message_id=message_id,
                trace_id=parent.trace_id if parent else secrets.token_hex(16),
                name=f"Bericht van {sender} afgewezen ({reason})",
                status=Status.UNSET,
                start_s=now,
                end_s=now,
                subjects=tuple(header.subjects) if header is not None and opened else (),
                parent_span_id=parent.span_id if parent else None,
                foreign=sender,
                message_type=header.message_type.value if header is not None else None,
                token_id=header.token_id if header is not None and opened else None,
                other_partners=(sender,),
                reason=reason,
            )
        )

    # -- reading -------------------------------------------------------------------------

    def export(self, since_ms: int = 0) -> list[str]:
        """The records ending at or after ``since_ms``, as JSON lines, in the order written."""
        return self._store.processing_records(since_ms)

    # -- internals -----------------------------------------------------------------------

    def _outbound(
        self,
        row: OutboxRow,
        operation: Operation,
        status: Status,
        reason: str | None,
        end_s: int,
    ) -> None:
        own = TraceParent.parse(row.trace_id)
        try:
            subjects: Sequence[str] = tuple(subjects_of(decode_body(row.body))) if row.body else ()
        except Exception:  # a body that no longer decodes: the action without subjects
            subjects = ()
        to = ", ".join(row.recipients) or "niemand"
        name = (
            f"{_name(row.message_type)} verstrekt aan {to}"
            if operation is Operation.SENT
            else f"Verstrekking van {_name(row.message_type).lower()} aan {to} geweigerd"
        )
        self._write(
            _Action(
                operation=operation,
                message_id=row.message_id,
                trace_id=own.trace_id if own else secrets.token_hex(16),
                name=name,
                status=status,
                start_s=min(row.created_at, end_s),
                end_s=end_s,
                subjects=subjects,
                parent_span_id=row.parent_span_id,
                message_type=row.message_type or None,
                token_id=row.token_id or None,
                other_partners=tuple(row.recipients),
                reason=reason,
            ),
            span=derive_span_id(self._partner, row.message_id, Operation.SENT),
        )

    def _activity_id(self) -> str | None:
        try:
            directory = self._directory()
            role = directory.partner(self._partner).role
            basis = policy_from_directory(directory).roles.get(role)
        except DirectoryUnavailableError:
            return self._activity
        if basis is not None and basis.processing_activities:
            self._activity = basis.processing_activities[0]
        return self._activity

    def _write(self, action: _Action, span: str | None = None) -> None:
        span = span or derive_span_id(self._partner, action.message_id, action.operation)
        activity = self._activity_id()
        base: dict[str, str] = {}
        if activity is not None:
            base["dpl.core.processing_activity_id"] = activity
        details = KetenpostDetails(
            operation=action.operation,
            partner=self._partner,
            message_id=action.message_id,
            message_type=action.message_type,
            token_id=action.token_id,
            other_partners=action.other_partners,
            reason=action.reason,
        )
        resource = Resource(
            attributes={
                "service.name": SERVICE_NAME,
                "service.namespace": "ketenpost",
                "service.instance.id": self._partner,
            }
        )
        records: list[tuple[ProcessingRecord, str | None]] = []

        def record(
            span_id: str, parent: str | None, subject: str | None, foreign: str | None, name: str
        ) -> None:
            attributes = dict(base)
            if subject is not None:
                attributes["dpl.core.data_subject_id"] = subject
                attributes["dpl.core.data_subject_id_type"] = SUBJECT_ID_TYPE
            if foreign is not None:
                attributes["dpl.core.foreign_operation.processor"] = PROCESSOR_PREFIX + foreign
            records.append(
                (
                    ProcessingRecord(
                        trace_id=action.trace_id,
                        span_id=span_id,
                        parent_span_id=parent,
                        name=name,
                        status=action.status,
                        start_time=action.start_s * 1000,
                        end_time=action.end_s * 1000,
                        attributes=attributes,
                        resource=resource,
                        ketenpost=details,
                    ),
                    subject,
                )
            )

        subjects = list(dict.fromkeys(action.subjects))
        if len(subjects) == 1:
            record(span, action.parent_span_id, subjects[0], action.foreign, action.name)
        else:
            record(span, action.parent_span_id, None, action.foreign, action.name)
            for subject in subjects:
                child = derive_span_id(self._partner, action.message_id, action.operation, subject)
                record(child, span, subject, None, f"{action.name} (betrokkene)")
        self._store.add_processing_records(
            [
                ProcessingRow(
                    span_id=r.span_id,
                    trace_id=r.trace_id,
                    operation=action.operation.value,
                    message_id=action.message_id,
                    token_id=action.token_id,
                    data_subject_id=subject,
                    end_ms=r.end_time,
                    record=_ENCODER.encode(r).decode(),
                )
                for r, subject in records
            ]
        )


def records_as_dicts(lines: Sequence[str]) -> list[dict[str, Any]]:
    """Exported lines as plain dicts (what a reader of the JSON lines sees)."""
    return [msgspec.json.decode(line) for line in lines]
