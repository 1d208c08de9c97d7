"""The contracts between the adapter SDK and one partner system: Source, Mapping, Destination.

A partner adapter is only a mapping and a transport. The SDK (``adapters.engine.Adapter``)
does everything else — outbox, sealing, retries, receipts, opening, token and policy checks,
idempotent apply, witnessing — and calls these three objects at fixed points.

Rules kept here (the contracts; ``docs/adapters.md`` explains them with an example):

* **Source** (the partner system's outbound side). A record has an id that is stable in the
  partner system (``SourceRecord.record_id``); the message id is
  ``HMAC(outbox key, record id)``, so handing the SDK the same record twice makes one message.
  Pull sources return batches with an opaque cursor (``PullBatch.cursor``); the SDK commits the
  outbox rows **and** that cursor in one transaction and hands the cursor back on the next
  ``pull``. Push sources get a ``RecordSink`` in ``start`` and must ``await sink.accept(...)``
  before acknowledging the push to the partner system: when it returns the record is durably
  in the outbox. ``acknowledge`` is called after the commit (move a file, mark a row) and may
  be lost in a crash, which is harmless because a re-read record is a duplicate. ``quarantine``
  is told about a malformed record after the SDK stored it in its failed place.
* **Mapping** turns a record into an ``Outbound`` (recipients, token, case-message body) or
  raises ``MalformedRecordError(report)`` with a report a person can act on, or
  ``NoApproachError`` when no started approach covers the subjects. Mappings are pure
  functions of the record and the ``MappingContext`` (pseudonym look-ups); they do no I/O.
* **Destination** (the partner system's inbound side). ``apply`` writes one verified, opened,
  schema-valid message into the partner system **idempotently, keyed by message id**: the SDK
  may call it again for a message it already applied (a crash after ``apply`` and before the
  SDK's own commit), and the second call must not create a second record. It raises
  ``DestinationUnavailableError`` for a transient failure (nothing is acknowledged; the
  gateway redelivers after the lease) or ``DestinationRejectedError(reason)`` for a message the
  partner system refuses for good (the SDK sends a signed rejection). ``report_refusal`` tells
  the partner system that one of its outbound records was finally refused (by the gateway, by
  a recipient, or by expiry/purge) with the reason; it is idempotent too.
* **DeliveryReporter** (optional). A destination that also has ``report_delivery`` is told,
  once per (message, recipient), that one of its outbound records was delivered: the
  recipient's signed delivery receipt reached us in a verified sender event. Like
  ``report_refusal`` it is idempotent and raises ``DestinationUnavailableError`` to be asked
  again later. A destination without it is never asked, and deliveries learnt while it had
  none are never reported afterwards.
* Everything here is plain data or a ``Protocol``; no fakes live in this package.
"""

from __future__ import annotations

import collections.abc
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol, runtime_checkable

from adapters.errors import AdapterError
from gateway.protocol.messages import CaseMessage, type_of
from gateway.protocol.reasons import RejectionReason
from gateway.protocol.types import MessageType

DEFAULT_EXPIRES_IN_S: Final = 14 * 86_400


class Clock(Protocol):
    """The one place the adapter reads the time (house rule 5)."""

    def now(self) -> int:
        """Integer Unix seconds (UTC)."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> int:
        return int(time.time())


# -- errors --------------------------------------------------------------------------------


class MalformedRecordError(AdapterError):
    """A source record cannot become a case message. ``report`` is for a person: what is
    wrong and where (a field, a line, an XSD path); never the record's personal data."""

    def __init__(self, report: str) -> None:
        super().__init__(report)
        self.report = report


class NoApproachError(AdapterError):
    """No started approach (token with a pseudonym mapping) covers the record's subjects.

    Not a malformed record: the record is fine, the legal basis is missing. The SDK refuses
    it locally with reason ``no_token`` and reports that to the partner system."""


class DestinationUnavailableError(AdapterError):
    """The partner system cannot take the message now. Transient: nothing is acknowledged,
    the gateway delivers the message again after its lease."""


class DestinationRejectedError(AdapterError):
    """The partner system refuses the message for good; the SDK sends a signed rejection."""

    def __init__(self, reason: RejectionReason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail


# -- outbound ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceRecord:
    """One record of the partner system's outbound side, as read.

    ``record_id`` must be stable: the same partner record read again has the same id (a file
    name plus its content hash, a database key, a ZGW URL plus version, an event id).
    ``metadata`` is for the transport (a file path, an ETag); the SDK stores it with a failed
    record and otherwise ignores it.
    """

    record_id: str
    data: bytes
    content_type: str
    metadata: collections.abc.Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PullBatch:
    """Records read from a pull source and the cursor to resume after them.

    ``cursor`` is opaque to the SDK; it is committed together with the records' outbox rows and
    passed back to the next ``pull``. ``None`` keeps the previous cursor.
    """

    records: Sequence[SourceRecord]
    cursor: str | None = None


class RecordSink(Protocol):
    """What a push source hands records to."""

    async def accept(self, records: Sequence[SourceRecord], cursor: str | None = None) -> None:
        """Map, validate and commit ``records`` (and ``cursor``) in one transaction.

        Returns once they are durable: only then may the source acknowledge the push. A
        malformed record does not raise (it goes to the failed place); ``AdapterError`` is
        raised only when nothing could be stored, and then nothing was.
        """
        ...


@runtime_checkable
class Source(Protocol):
    """The partner system's outbound side. Subclass ``SourceBase`` for the no-op defaults."""

    async def start(self, sink: RecordSink) -> None:
        """Start push listeners (a local HTTP endpoint); pull sources do nothing."""
        ...

    async def pull(self, cursor: str | None) -> PullBatch:
        """Read records after ``cursor`` (``None``: from the start). Push sources return an
        empty batch. Raise ``AdapterError`` when the partner system is unreachable."""
        ...

    async def acknowledge(self, record_ids: Sequence[str]) -> None:
        """The records are durable in the outbox (or the failed place): tidy up if needed."""
        ...

    async def quarantine(self, record: SourceRecord, report: str) -> None:
        """A malformed record was stored in the failed place; mirror it (a ``failed/`` file
        with the report beside it) if the partner system has such a place."""
        ...

    async def close(self) -> None: ...


class SourceBase:
    """No-op defaults for ``Source``; a pull source overrides ``pull``, a push one ``start``."""

    async def start(self, sink: RecordSink) -> None:
        return None

    async def pull(self, cursor: str | None) -> PullBatch:
        return PullBatch(())

    async def acknowledge(self, record_ids: Sequence[str]) -> None:
        return None

    async def quarantine(self, record: SourceRecord, report: str) -> None:
        return None

    async def close(self) -> None:
        return None


@dataclass(frozen=True)
class Approach:
    """A started approach as this adapter knows it: the token and the subjects' pseudonyms."""

    token_id: str
    # local id → pseudonym, for the local ids asked about.
    pseudonyms: collections.abc.Mapping[str, str]


class MappingContext(Protocol):
    """Look-ups a mapping may make (backed by the adapter's store)."""

    @property
    def partner_id(self) -> str: ...

    def approach_for(self, local_ids: Sequence[str]) -> Approach:
        """The newest known approach whose pseudonym mapping covers every local id.

        Raises ``NoApproachError`` if none does."""
        ...

    def pseudonym(self, token_id: str, local_id: str) -> str:
        """The pseudonym of ``local_id`` in the approach ``token_id``; ``NoApproachError``."""
        ...


@dataclass(frozen=True)
class Outbound:
    """A case message to send: what a ``Mapping`` returns.

    ``body`` carries the subjects (pseudonyms) and the type; the SDK validates it against the
    schema (encode and decode again) before it is stored. ``token_id`` names an approach the
    adapter knows (from an approach-notice, or issued by this coordinator).
    """

    recipients: tuple[str, ...]
    token_id: str
    body: CaseMessage
    expires_in_s: int = DEFAULT_EXPIRES_IN_S
    # A W3C traceparent to continue the partner system's trace; the SDK makes one if None.
    trace_id: str | None = None

    @property
    def message_type(self) -> MessageType:
        return type_of(self.body)


class Mapping(Protocol):
    """Record → case message (the module docstring states the contract)."""

    def map(self, record: SourceRecord, context: MappingContext) -> Outbound:
        """Raise ``MalformedRecordError(report)`` or ``NoApproachError``; nothing else."""
        ...


# -- inbound -------------------------------------------------------------------------------


@dataclass(frozen=True)
class InboundMessage:
    """A delivered message after every check passed: what ``Destination.apply`` receives.

    ``local_ids`` maps the subjects' pseudonyms to this partner's local ids where known (from
    earlier approach-notices); for an approach-notice itself it is what earlier notices gave.
    """

    message_id: str
    sender: str
    message_type: MessageType
    token_id: str
    subjects: tuple[str, ...]
    body: CaseMessage
    body_bytes: bytes
    # The gateway's audited acceptance time, verified against the message's acceptance
    # receipt and the audit log (``adapters.acceptance``).
    accepted_at: int
    received_at: int
    trace_id: str
    local_ids: collections.abc.Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Applied:
    """What ``apply`` tells the SDK: for an approach-notice, the local id the partner system
    uses for each pseudonym (its own client or case number). Kept by the SDK, in the same
    transaction that marks the message processed, and used by ``MappingContext``."""

    local_ids: collections.abc.Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Refusal:
    """Why an outbound record did not reach (every) recipient, for ``report_refusal``.

    ``by`` is ``adapter`` (refused before sending, e.g. ``no_token``), ``gateway`` (a final
    relay refusal), ``recipient`` (a signed rejection) or ``gateway-expiry`` / ``gateway-purge``.
    ``reason`` is a stable code (``Reason`` / ``RejectionReason`` values).
    """

    message_id: str
    by: str
    reason: str
    detail: str = ""
    recipient: str | None = None


@dataclass(frozen=True)
class Delivered:
    """That an outbound record reached one recipient, for ``report_delivery``.

    ``at`` (Unix seconds) is the ``at`` of the gateway-signed sender event that carried the
    recipient's signed delivery receipt: the gateway's audited time at which it took that
    receipt. It is the time the adapter records for the outcome; the recipient's own
    ``received_at`` inside the receipt is its claim and is not used here.
    """

    message_id: str
    recipient: str
    at: int


@runtime_checkable
class Destination(Protocol):
    """The partner system's inbound side."""

    async def apply(self, message: InboundMessage) -> Applied:
        """Write ``message`` into the partner system, idempotently by ``message_id``.

        Raises ``DestinationUnavailableError`` (transient) or ``DestinationRejectedError``."""
        ...

    async def report_refusal(self, record_id: str, refusal: Refusal) -> None:
        """Tell the partner system its record ``record_id`` was finally refused; idempotent.
        Raises ``DestinationUnavailableError`` to be asked again later."""
        ...


@runtime_checkable
class DeliveryReporter(Protocol):
    """What a ``Destination`` MAY also implement to learn that its records were delivered.

    The SDK checks for it with ``isinstance`` when it records a recipient's receipt: a
    receipt recorded while the destination has no ``report_delivery`` is never reported,
    also not after a later version adds it (enabling it does not flood the partner system
    with old deliveries).
    """

    async def report_delivery(self, record_id: str, delivered: Delivered) -> None:
        """Tell the partner system its record ``record_id`` was delivered to one recipient
        (``delivered.recipient``); idempotent, one call per (message, recipient) after it
        returned. Raises ``DestinationUnavailableError`` to be asked again later."""
        ...


@dataclass(frozen=True)
class Transport:
    """One partner system as the SDK sees it: built by a transport factory (``registry``)."""

    source: Source
    mapping: Mapping
    destination: Destination
