"""The adapter runtime: one partner's outbox, inbox, receipts, witnessing and directory.

A transport (``adapters.base.Transport``: Source, Mapping, Destination) is all a partner
adapter writes; ``Adapter`` does the rest. Nothing here trusts the gateway about anything the
adapter can check itself.

Rules kept here:

* **Outbound.** Records are mapped and schema-validated (encode, then decode with the strict
  decoder) before they are stored; outbox rows, failed records and the source cursor are
  committed in one transaction (``AdapterStore.enqueue``). The message id is
  ``derive_message_id(outbox key, record id)``. Rows are sent in creation order. An envelope is
  sealed at send time with the current directory and its exact bytes are kept until the
  outcome is known: a retry after a lost answer (connection error, 5xx) resubmits the **same
  bytes** (the gateway answers with the first receipt); a definite transient refusal lets the
  next attempt **reseal with the same message id** (after a directory refresh when the reason
  is key-related). A gateway-wide condition (unreachable, 5xx, rate limited, store or
  directory trouble) stops the pass so later rows never overtake earlier ones; a
  message-specific transient refusal only delays that row. Backoff is durable
  (``next_attempt_at``), exponential, and at least ``Retry-After``. A final refusal marks the
  row ``refused`` and is reported to the partner system (``Destination.report_refusal``).
* **The gateway is pinned.** Every request goes over a connection whose server certificate
  was checked just before (``GatewayClient``'s ``peer_check``) against the directory's gateway
  ``tls`` key; on a mismatch the directory is refreshed once (the key may have rotated) and
  the server is judged again. A server that still fails gets nothing: an alarm
  (``gateway_identity``), and ``GatewayIdentityError``, a kind of unreachable, so every step
  waits and retries exactly as for a gateway that is down.
* **Our own TLS certificate follows the directory.** At start and after every directory
  refresh (``reload_tls``) the adapter presents the newest pair of ``[tls] cert``/``key`` and
  the rotated ``tls-N.crt``/``tls-N.key`` beside them that the directory lists as a usable
  ``tls`` key of ours and that chains to our trust anchors, is valid and names our OIN
  (``keys.tlspairs``); when none does, the one presented stays. The switch is
  ``GatewayClient.use_ssl_context``: requests in flight finish on their connections, new ones
  use the new certificate, and the gateway pin is checked on them as on every connection. The
  gateway accepts both certificates while both keys are listed (the predecessor until its
  ``retire_at``), so a switch anywhere in that window refuses nothing.
* **Acceptance receipts** are verified completely: the gateway's signature with the
  directory's gateway key, the message id and header hash, the checkpoint's signature and
  origin, the tree size, and the inclusion proof of **our own** leaf against the checkpoint's
  root: the receipt carries the acceptance audit entry and its salt, the entry must be the
  ``accepted`` entry of the header we sent (``receipts.acceptance_leaf``), and the leaf is
  computed from them — no request to the gateway. A receipt that fails is an alarm and leaves
  the row ``disputed``, never ``accepted``. A receipt made before receipts carried the entry
  is checked against the leaf ``GET /v1/audit/proof`` serves; when that fetch fails the row is
  ``accepted`` with its inclusion **pending** (``adapters.witness.PendingInclusions``),
  checked again with bounded backoff, an alarm when the retries run out, and ``disputed`` only
  when the gateway answers with a proof that is wrong.
* **Inbound**, per delivery and in this order: already processed → send the same signed answer
  again; the **acceptance** (``adapters.acceptance.check_delivery_acceptance``): the acceptance
  receipt the delivery carries is verified as a sender verifies its own — signature, message
  id and header hash, checkpoint, our own leaf from its audit entry, inclusion — its checkpoint
  witnessed, and its ``accepted_at`` must equal the inbox's, lie no more than the clock skew
  before the header's ``created_at`` or after our ``now``, and not before (less the skew) the
  last head we saw without its leaf; a failure is a ``delivery`` alarm and nothing else (no
  apply, no receipt, no rejection: the lease runs out and the gateway delivers again); open
  (``open_envelope`` with every encrypt key held: sender key at the **verified**
  ``accepted_at``, expiry, own kid listed, key commitment before decrypting, inner signature,
  body bound to the header), refreshing the directory once if the sender's key is unknown;
  schema version and schema; the token (from the approach-notice itself or the local store or
  ``GET /v1/approaches/{id}``, its hash equal to the header's; signature, status, then
  ``check_use`` with the covenant policy from **our** directory — a dishonest gateway cannot
  relay what the covenant forbids); the private part of an approach-notice against its
  commitment; then ``Destination.apply``; then one transaction that records the processed id
  with the exact signed answer, the token and the pseudonym mapping; then the answer is sent.
  A failed check is answered with a signed rejection (recorded the same way). A destination
  that is unavailable, or any failure of our own (directory stale, gateway unreachable while
  fetching a token), answers nothing: the lease expires and the gateway delivers again.
* **Exactly once.** A crash before the processed row commits makes the gateway deliver again
  and ``apply`` is called again with the same message id — which is why ``apply`` must be
  idempotent by message id (``adapters.base``). After the commit the message is never applied
  again; only the answer is repeated.
* **Sender events** are verified (gateway signature; the recipient's own signature on an
  embedded receipt or rejection) before their outcome is recorded per outbox row and acked.
  Rejections, expiries and purges are reported to the partner system
  (``Destination.report_refusal``); receipts are reported as deliveries, one per (message,
  recipient), when the destination implements ``DeliveryReporter.report_delivery`` at the
  time the receipt is recorded (a receipt recorded without it is never reported). Every
  report is marked done only after the call returned, is tried again at the next pass after
  ``DestinationUnavailableError``, and is never repeated after it succeeded. Refusals and
  deliveries are reported independently: a partner system that cannot take delivery reports
  never holds up its refusal reports.
* **After a gateway restore** (``recheck_after_restore``): a witness alarm on the head asks,
  durably, to look up every accepted row not yet answered by all recipients; one the gateway
  answers ``unknown_message`` for is resubmitted with the same bytes (docs/operations.md,
  "Backup and restore"). The alarm itself stays until an operator clears it.
* **Partners' own key revocations** (ADR 0011) are checked here too, not taken from the
  gateway: after every successful directory refresh ``GET /v1/keys/revocations`` is read and
  each statement not held yet is verified (``keys.revocation.verify_revocation``) against our
  own verified directory with the statements held laid over it (``DirectoryKeeper``). One that
  does not verify is ignored, logged and counted (``key_revocations_invalid``), never applied;
  a gateway that is unreachable, refuses, or stops serving a statement changes nothing held.
  Verified statements are kept in ``adapter.db`` (read back at ``open``) and laid over the
  directory with ``keys.revocation.with_revocations``, so every key check — sender keys at
  ``accepted_at``, token issuer keys, recipients' encrypt keys when sealing — treats a
  self-revoked key exactly as a key the directory lists as revoked. We never sign with an own
  key a statement revokes (``own_sign_key``; an alarm when none is left).
* **Alarms** (bad receipt, witness inconsistency, refused directory, stale directory, forged
  event, undecodable delivery) are persisted in ``adapter.db``, counted, logged, and turn
  ``/healthz`` red until an operator clears them.
* **Processing logs** (``adapters.processing_log``, Logboek Dataverwerkingen): one record per
  sent, refused, received, applied and rejected message, written by the named
  ``self._processing_log`` calls right after the state change they describe; the header's
  ``traceparent`` carries our *sent* span, and the partner system gets one naming our
  *applied* span.
* No globals: every collaborator is passed in; the time comes from the injected ``Clock``.
  ``faults`` is a hook called at named points of inbound handling (``FaultPoint``) so tests can
  simulate a crash at each step.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import hashlib
import logging
import secrets
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec

from adapters.acceptance import (
    DeliveryAcceptanceError,
    InclusionPending,
    ReceiptInvalidError,
    check_delivery_acceptance,
    check_inclusion,
    verify_receipt,
)
from adapters.base import (
    Approach,
    Clock,
    Delivered,
    DeliveryReporter,
    DestinationRejectedError,
    DestinationUnavailableError,
    InboundMessage,
    MalformedRecordError,
    NoApproachError,
    Outbound,
    Refusal,
    SourceRecord,
    SystemClock,
    Transport,
)
from adapters.client import (
    GatewayClient,
    GatewayIdentityError,
    GatewayUnreachableError,
    InboxDelivery,
    RefusedError,
)
from adapters.config import AdapterConfig, key_family
from adapters.directory import DirectoryKeeper, DirectoryUnavailableError, newest_active
from adapters.errors import AdapterError
from adapters.metrics import AdapterMetrics
from adapters.outbox import (
    AdapterStore,
    KeyRevocationRow,
    NewOutbound,
    OutboxRow,
    RetainedCounts,
    TokenRow,
)
from adapters.processing_log import ProcessingLog
from adapters.retention import apply_retention
from adapters.witness import (
    CheckpointInvalidError,
    PeerView,
    PendingInclusion,
    PendingInclusions,
    Witness,
    WitnessAlarm,
    WitnessExchange,
    file_fetch,
    url_fetch,
)
from gateway.protocol.checkpoint import parse_checkpoint
from gateway.protocol.envelope import (
    Envelope,
    EnvelopeError,
    EnvelopeReason,
    EnvelopeSignatureError,
    MalformedEnvelopeError,
    Opened,
    SealError,
    decode_envelope,
    derive_message_id,
    encode_envelope,
    header_hash,
    open_envelope,
    seal,
)
from gateway.protocol.errors import PolicyError, ReceiptError, SchemaError, TokenError
from gateway.protocol.messages import (
    SCHEMA_VERSION,
    ApproachNotice,
    CaseMessage,
    decode_body,
    encode_body,
    subjects_of,
)
from gateway.protocol.policy import policy_from_directory
from gateway.protocol.reasons import Reason, RejectionReason
from gateway.protocol.receipts import (
    AcceptanceReceipt,
    DeliveryReceipt,
    Rejection,
    SenderEvent,
    SenderEventKind,
    sign_delivery_receipt,
    sign_rejection,
    verify_sender_event,
)
from gateway.protocol.signed import SignedObject
from gateway.protocol.token import (
    ApproachToken,
    PrivatePartOpening,
    TokenStatus,
    check_private_part,
    check_token_status,
    check_use,
    decode_signed,
    encode_signed,
    token_hash,
    verify_token_signature,
)
from gateway.protocol.types import MessageType
from keys import (
    CertificateError,
    Directory,
    DirectoryError,
    Ed25519KeyPair,
    HybridKemKeyPair,
    KeysError,
    KeyState,
    KeyUse,
)
from keys.deployment import read_outbox_key
from keys.keyfile import PassphraseSource, load_ed25519_key, load_encrypt_key, resolve_passphrase
from keys.revocation import (
    KeyRevocation,
    decode_revocation,
    encode_revocation,
    statement_hash,
)
from keys.tlsidentity import TlsFiles, check_gateway_certificate, client_context
from keys.tlspairs import SkipKind, TlsPair, choose_tls_pair, describe_pair

logger = logging.getLogger("adapters.engine")

# The ``adapter.db`` setting that asks for ``recheck_after_restore`` (set on a witness alarm).
RESTORE_RECHECK_SETTING: Final = "restore_recheck"
# The ``adapter.db`` setting holding the expires_at up to which accepted messages were checked
# for overdue outcomes (``check_overdue_outcomes``).
OVERDUE_WATERMARK_SETTING: Final = "outcomes_checked_until"

# Refusals that a directory refresh and a reseal (same message id) may cure.
KEY_RELATED: Final = frozenset(
    {
        Reason.KEY_NOT_YET_ACTIVE,
        Reason.KEY_RETIRED,
        Reason.RECIPIENT_KEY_INVALID,
        Reason.DIRECTORY_CHANGING,
    }
)
# Transient refusals about the gateway, not the message: stop the pass to keep the order.
GATEWAY_WIDE: Final = frozenset(
    {
        Reason.RATE_LIMITED,
        Reason.STORE_UNAVAILABLE,
        Reason.AUDIT_UNAVAILABLE,
        Reason.DIRECTORY_EXPIRED,
        Reason.DIRECTORY_CHANGING,
    }
)
# Token failures that are the covenant saying no (as opposed to a broken or unknown token).
POLICY_REASONS: Final = frozenset(
    {
        Reason.TYPE_NOT_ALLOWED,
        Reason.SENDER_NOT_PARTICIPANT,
        Reason.RECIPIENT_NOT_PARTICIPANT,
        Reason.EXPIRES_AFTER_TOKEN,
        Reason.SUBJECT_NOT_IN_TOKEN,
        Reason.SUBJECT_NOT_INFORMED,
        Reason.POLICY_MISMATCH,
        Reason.UNKNOWN_SENDER,
        Reason.UNKNOWN_RECIPIENT,
    }
)
_ENVELOPE_REJECTION: Final[Mapping[EnvelopeReason, RejectionReason]] = {
    EnvelopeReason.NOT_A_RECIPIENT: RejectionReason.NOT_ADDRESSED,
    EnvelopeReason.INNER_SIGNATURE: RejectionReason.BAD_INNER_SIGNATURE,
    EnvelopeReason.BODY_MALFORMED: RejectionReason.SCHEMA_INVALID,
    EnvelopeReason.TYPE_MISMATCH: RejectionReason.SCHEMA_INVALID,
    EnvelopeReason.SUBJECTS_MISMATCH: RejectionReason.SUBJECTS_MISMATCH,
}
# Refusals the adapter decides itself, before the gateway sees anything.
LOCAL_REFUSALS: Final = frozenset({Reason.NO_TOKEN.value, "cannot_seal"})
_SIGNED_DECODER: Final = msgspec.msgpack.Decoder(SignedObject)
_ENVELOPE_DECODER: Final = msgspec.msgpack.Decoder(Envelope)
_RECEIPT_DECODER: Final = msgspec.msgpack.Decoder(AcceptanceReceipt)


class FaultPoint(enum.StrEnum):
    """Named points of inbound handling where a test may simulate a crash."""

    OPENED = "inbound.opened"  # checks passed, nothing applied
    APPLIED = "inbound.applied"  # applied to the partner system, not recorded
    RECORDED = "inbound.recorded"  # processed row committed, answer not sent
    ANSWERED = "inbound.answered"  # answer sent


class AlarmKind(enum.StrEnum):
    RECEIPT = "receipt"
    WITNESS = "witness"
    CHECKPOINT = "checkpoint"
    DIRECTORY_REFUSED = "directory_refused"
    DIRECTORY_STALE = "directory_stale"
    SENDER_EVENT = "sender_event"
    DELIVERY = "delivery"
    GATEWAY_IDENTITY = "gateway_identity"
    OWN_KEY_REVOKED = "own_key_revoked"
    OWN_KEY_UNKNOWN = "own_key_unknown"


@dataclass(frozen=True)
class EngineSettings:
    """Tunables with units in their names. Defaults suit production."""

    poll_wait_s: float = 25.0
    pull_interval_s: float = 5.0
    send_batch: int = 100
    backoff_base_s: int = 2
    backoff_max_s: int = 900
    witness_interval_s: float = 300.0
    # ``None``: the ``[directory] refresh_s`` of adapter.toml.
    directory_refresh_s: float | None = None
    token_status_max_age_s: int = 300
    # How long after a message's expires_at every recipient's outcome must have arrived before
    # its absence is an alarm (the gateway's expiry sweep, then the next inbox poll).
    outcome_grace_s: int = 3600
    # The audit log's origin; ``None`` pins it on first sight (see ``witness``).
    origin: str | None = None
    # host:port of the plain-HTTP /metrics and /healthz listener; ``None``: none.
    metrics_listen: str | None = None
    # Checks of a pending inclusion proof (an old receipt whose leaf could not be fetched)
    # before an alarm; spaced like send retries (``backoff_base_s`` doubling, capped).
    inclusion_attempts: int = 10
    # Seconds between retention sweeps (``retention_once``); deadlines are days apart.
    retention_interval_s: float = 3600.0


@dataclass(frozen=True)
class Identity:
    """The partner's own keys, loaded from the partner folder (again after each directory
    refresh, so a rotated key file is picked up without a restart).

    ``sign_key`` is the one ``adapter.toml`` names; ``sign_keys`` holds it and its rotated
    successors beside it (``adapters.config.key_family``), oldest first: the adapter signs
    with the newest one the directory lists as active (``Adapter.own_sign_key``). Every
    encrypt key found is held, retired ones too, for messages still queued to them. ``tls``
    is the configured certificate and key; their rotated successors are found beside them
    and picked by the directory too (``Adapter.reload_tls``).
    """

    partner_id: str
    sign_key: Ed25519KeyPair
    encrypt_keys: Mapping[str, HybridKemKeyPair]
    outbox_key: bytes
    tls: TlsFiles
    sign_keys: tuple[Ed25519KeyPair, ...] = ()

    @classmethod
    def load(cls, config: AdapterConfig, environ: Mapping[str, str] | None = None) -> Identity:
        """Raise ``AdapterError`` naming the file when a key cannot be read."""
        source = PassphraseSource.parse(config.keys.passphrase) if config.keys.passphrase else None
        try:
            passphrase = resolve_passphrase(source, environ) if source else None
            signs = [
                load_ed25519_key(path, KeyUse.SIGN, passphrase)
                for path in key_family(config.path(config.keys.sign))
            ]
            sign = signs[0]
            paths = [q for p in config.keys.encrypt for q in key_family(config.path(p))]
            encrypt = [load_encrypt_key(path, passphrase) for path in dict.fromkeys(paths)]
            outbox_key = read_outbox_key(config.path(config.keys.outbox))
        except Exception as exc:  # keys' own errors and OSError: one line for the operator
            raise AdapterError(f"cannot load the keys of {config.partner.id}: {exc}") from exc
        return cls(
            partner_id=config.partner.id,
            sign_key=sign,
            encrypt_keys={k.kid: k for k in encrypt},
            outbox_key=outbox_key,
            sign_keys=tuple(signs),
            tls=TlsFiles(
                certificate=config.path(config.tls.cert),
                private_key=config.path(config.tls.key),
                trust_anchors=tuple(config.path(a) for a in config.tls.trust_anchors),
                passphrase=source,
            ),
        )


class _Rejected(Exception):
    def __init__(self, reason: RejectionReason, detail: str, header_digest: bytes | None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.header_digest = header_digest


class _NotNow(Exception):
    pass


@dataclass(frozen=True)
class _Checked:
    opened: Opened
    body: CaseMessage
    token: ApproachToken
    token_row: TokenRow | None


class OwnKeyRevokedError(AdapterError):
    """Every own sign key held is revoked by one of our own statements: nothing is signed
    until a successor key is installed and listed."""


@dataclass
class PassResult:
    """What one ``send_once``/``receive_once`` did (for tests and logs)."""

    accepted: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    events: int = 0


class _Context:
    """``MappingContext`` over the adapter's store."""

    def __init__(self, store: AdapterStore, partner_id: str) -> None:
        self._store = store
        self._partner_id = partner_id

    @property
    def partner_id(self) -> str:
        return self._partner_id

    def approach_for(self, local_ids: Sequence[str]) -> Approach:
        if not local_ids:
            raise NoApproachError("no subjects named")
        for token_id, _ in self._store.approaches_of(local_ids[0]):
            by_local = {v: k for k, v in self._store.local_ids(token_id).items()}
            if all(local in by_local for local in local_ids):
                return Approach(token_id, {local: by_local[local] for local in local_ids})
        raise NoApproachError("no started approach covers these subjects")

    def pseudonym(self, token_id: str, local_id: str) -> str:
        for pseudonym, local in self._store.local_ids(token_id).items():
            if local == local_id:
                return pseudonym
        raise NoApproachError("the subject is not in this approach")


def new_traceparent() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise TokenError(message, Reason.TOKEN_MALFORMED)


def _b64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


class Adapter:
    """One partner's adapter. ``async with Adapter(...)`` opens store, client and source.

    Tests drive the steps (``ingest_once``, ``send_once``, ``receive_once``,
    ``refresh_directory``, ``witness_once``) one by one; ``run`` loops them until stopped.
    """

    def __init__(
        self,
        config: AdapterConfig,
        transport: Transport,
        *,
        clock: Clock | None = None,
        settings: EngineSettings | None = None,
        identity: Identity | None = None,
        gateway_url: str | None = None,
        faults: Callable[[str], None] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.transport = transport
        self.clock: Clock = clock or SystemClock()
        self.settings = settings or EngineSettings()
        self.identity = identity or Identity.load(config, environ)
        # Keys given by the caller are kept; keys from the folder are re-read on each refresh.
        self._reload_identity = identity is None
        self.partner_id = config.partner.id
        self.gateway_url = gateway_url or config.gateway.url
        self.metrics = AdapterMetrics(self.partner_id)
        self._faults = faults
        self._environ = environ
        self._store: AdapterStore | None = None
        self._client: GatewayClient | None = None
        self._plog: ProcessingLog | None = None
        trust = config.path(config.directory.trusted_root).parent
        self.directory = DirectoryKeeper(trust, config.path(config.directory.bundle))
        self._token_cache: dict[str, ApproachToken] = {}
        self._wake = asyncio.Event()
        # The kid of the TLS client certificate presented (``reload_tls``); set by ``open``.
        self._tls_kid: str | None = None
        # (statement hash, reason) of served statements already logged and counted as invalid:
        # a gateway serving the same bad statement at every refresh is told once per process.
        self._invalid_revocations: set[tuple[str, str]] = set()
        # True while ``_check_gateway_peer`` refreshes the directory (see ``refresh_directory``).
        self._judging_peer = False

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def store(self) -> AdapterStore:
        if self._store is None:
            raise AdapterError("the adapter is not open")
        return self._store

    @property
    def client(self) -> GatewayClient:
        if self._client is None:
            raise AdapterError("the adapter is not open")
        return self._client

    @property
    def _processing_log(self) -> ProcessingLog:
        if self._plog is None:
            raise AdapterError("the adapter is not open")
        return self._plog

    @property
    def witness(self) -> Witness:
        return Witness(self.store, self.settings.origin)

    @property
    def inclusions(self) -> PendingInclusions:
        """Accepted messages whose receipt's inclusion is still to be checked."""
        return PendingInclusions(self.store)

    async def open(self) -> None:
        self._store = AdapterStore(self.config.path(self.config.store.path))
        self._plog = ProcessingLog(self._store, self.partner_id, self.current_directory)
        self._hold_stored_revocations()
        now = self.clock.now()
        self.directory.load_local(now)
        # The newest own certificate the directory lists; the configured one when none
        # qualifies (or no directory is at hand yet), which fails here as it always did.
        pair = self._choose_tls(now)
        context = self._tls_context(pair) if pair is not None else None
        if pair is None or context is None:
            pair = None
            context = client_context(self.identity.tls, self._environ)
        # The engine does its own durable backoff; the client tries once per call.
        self._client = GatewayClient(
            self.gateway_url, context, attempts=1, peer_check=self._check_gateway_peer
        )
        await self._client.__aenter__()
        # ``client_context`` has just read the configured pair, so it reads.
        self._note_tls(pair or describe_pair(1, self.identity.tls, self._environ), switched=False)
        self.metrics.set_outbox_depth(self.store.outbox_depth())
        await self.transport.source.start(self)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.transport.source.close()
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self._store is not None:
            self._store.close()
            self._store = None

    async def __aenter__(self) -> Adapter:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _fault(self, point: FaultPoint) -> None:
        if self._faults is not None:
            self._faults(point.value)

    def alarm(self, kind: AlarmKind, detail: str) -> None:
        """Persist, count and log an alarm (deduplicated while one of the same text is open)."""
        now = self.clock.now()
        if any(a.kind == kind.value and a.detail == detail[:1000] for a in self.store.alarms()):
            return
        self.store.raise_alarm(kind.value, detail, now)
        self.metrics.alarm(kind.value)
        logger.error("alarm", extra={"alarm": kind.value, "detail": detail})

    def current_directory(self) -> Directory:
        """The fresh directory, or ``DirectoryUnavailableError`` (and an alarm)."""
        now = self.clock.now()
        try:
            directory = self.directory.current(now)
        except DirectoryUnavailableError as exc:
            self.metrics.directory(self.directory.version, stale=True)
            self.alarm(AlarmKind.DIRECTORY_STALE, f"{exc.reason}: {exc}")
            raise
        self.metrics.directory(self.directory.version, stale=False)
        return directory

    async def _check_gateway_peer(self, cert_der: bytes) -> None:
        """``GatewayClient``'s peer check, run for every connection before it carries a
        request: the server certificate's key must be a usable ``tls`` key of the directory's
        gateway (``check_gateway_certificate``), so a certificate a trust anchor mis-issued
        for the gateway's name cannot impersonate it.

        On a failure the directory is refreshed once — the gateway's ``tls`` key may have
        rotated, and the bundle comes over the client's unpinned session and verifies itself
        — and the server is judged again. Raises ``GatewayIdentityError``: after an alarm
        (``gateway_identity``) when the certificate is not the gateway's, without one when no
        fresh directory is at hand (``current_directory`` alarms for that).
        """
        stale: str | None = None
        problem = ""
        for attempt in range(2):
            if attempt:
                # Not the key revocations: they come over a pinned connection, which would be
                # judged by this very check. The next regular refresh reads them.
                self._judging_peer = True
                try:
                    await self.refresh_directory()
                finally:
                    self._judging_peer = False
            try:
                directory = self.current_directory()
            except DirectoryUnavailableError as exc:
                stale = f"no fresh directory to check the gateway's certificate with: {exc}"
                continue
            stale = None
            try:
                check_gateway_certificate(cert_der, directory, self.clock.now())
            except CertificateError as exc:
                problem = f"{exc.reason.value}: {exc}"
                continue
            return
        if stale is not None:
            raise GatewayIdentityError(stale)
        detail = f"the server at {self.gateway_url} is not the gateway: {problem}"
        self.alarm(AlarmKind.GATEWAY_IDENTITY, detail)
        raise GatewayIdentityError(detail)

    # -- coordinator support -------------------------------------------------------------

    def remember_token(
        self,
        signed: SignedObject,
        opening: PrivatePartOpening | None = None,
        local_ids: Mapping[str, str] | None = None,
        *,
        registered_at: int | None = None,
    ) -> None:
        """Keep a token this partner issued (a coordinator) with its subjects' local ids
        (pseudonym → local id), so records about them map to it."""
        now = self.clock.now()
        token_id = msgspec.msgpack.decode(signed.payload)["token_id"]
        self.store.put_token(
            TokenRow(
                token_id=token_id,
                token_hash=token_hash(signed),
                signed=encode_signed(signed),
                opening=None if opening is None else msgspec.msgpack.encode(opening),
                registered_at=registered_at,
                revoked_at=None,
                superseded_by=None,
                status_at=now,
            ),
            now,
            (local_ids or {}).items(),
        )

    # -- outbound: ingest ----------------------------------------------------------------

    async def ingest_once(self) -> int:
        """Pull one batch from the source and commit it; returns the records read."""
        cursor = self.store.cursor()
        batch = await self.transport.source.pull(cursor)
        if not batch.records and batch.cursor in (None, cursor):
            return 0
        await self.accept(batch.records, batch.cursor)
        return len(batch.records)

    def _validate(self, outbound: Outbound) -> bytes:
        """The body's bytes after a strict round trip; ``MalformedRecordError``."""
        try:
            body = encode_body(outbound.body)
            decode_body(body, expected_type=outbound.message_type)
        except (SchemaError, msgspec.EncodeError, ValueError) as exc:
            raise MalformedRecordError(f"the case message is not schema-valid: {exc}") from None
        if not outbound.recipients:
            raise MalformedRecordError("the record names no recipient")
        if self.partner_id in outbound.recipients:
            raise MalformedRecordError("a partner does not send to itself")
        if self.store.token(outbound.token_id) is None:
            raise NoApproachError("the approach is not known to this adapter")
        return body

    async def accept(self, records: Sequence[SourceRecord], cursor: str | None = None) -> None:
        """``RecordSink.accept``: map, validate, commit rows + failed + cursor in one txn."""
        now = self.clock.now()
        context = _Context(self.store, self.partner_id)
        rows: list[NewOutbound] = []
        refused: list[tuple[NewOutbound, str, str]] = []
        failed: list[tuple[str, str, bytes, dict[str, str], str]] = []
        quarantined: list[tuple[SourceRecord, str]] = []
        for record in records:
            message_id = derive_message_id(self.identity.outbox_key, record.record_id)
            try:
                outbound = self.transport.mapping.map(record, context)
                body = self._validate(outbound)
            except MalformedRecordError as exc:
                failed.append(
                    (
                        record.record_id,
                        record.content_type,
                        record.data,
                        dict(record.metadata),
                        exc.report,
                    )
                )
                quarantined.append((record, exc.report))
                continue
            except NoApproachError as exc:
                refused.append(
                    (
                        NewOutbound(record.record_id, message_id, "", (), "", b"", 0, ""),
                        Reason.NO_TOKEN.value,
                        str(exc),
                    )
                )
                continue
            except Exception as exc:  # a mapping bug must not drop the record either
                report = f"the mapping failed: {type(exc).__name__}: {exc}"
                failed.append(
                    (
                        record.record_id,
                        record.content_type,
                        record.data,
                        dict(record.metadata),
                        report,
                    )
                )
                quarantined.append((record, report))
                continue
            # The header's traceparent names our *sent* span; it continues the partner
            # system's trace (its span becomes the parent) when it gave one.
            trace, parent_span = self._processing_log.outbound_trace(message_id, outbound.trace_id)
            rows.append(
                NewOutbound(
                    record_id=record.record_id,
                    message_id=message_id,
                    token_id=outbound.token_id,
                    recipients=tuple(sorted(set(outbound.recipients))),
                    message_type=outbound.message_type.value,
                    body=body,
                    expires_in_s=outbound.expires_in_s,
                    trace_id=trace,
                    parent_span_id=parent_span,
                )
            )
        known_failed = {f.record_id for f in self.store.failed()}
        self.store.enqueue(rows, failed, refused, cursor, now)
        for record, report in quarantined:
            if record.record_id not in known_failed:
                self.metrics.failed_record()
                logger.warning(
                    "record_failed", extra={"record_id": record.record_id, "report": report}
                )
            await self.transport.source.quarantine(record, report)
        for _row, reason, _detail in refused:
            self.metrics.refused(reason)
        self.metrics.set_outbox_depth(self.store.outbox_depth())
        await self.transport.source.acknowledge([r.record_id for r in records])
        self._wake.set()

    # -- outbound: send ------------------------------------------------------------------

    def _backoff(self, attempts: int, retry_after: float | None = None) -> int:
        delay = min(self.settings.backoff_max_s, self.settings.backoff_base_s * 2**attempts)
        return int(max(delay, retry_after or 0))

    def _token(self, signed: SignedObject, directory: Directory) -> ApproachToken:
        # Only the signature check is cached (by token hash), as DESIGN.md allows.
        digest = token_hash(signed)
        token = self._token_cache.get(digest)
        if token is None:
            token = verify_token_signature(signed, directory)
            self._token_cache[digest] = token
        return token

    def _seal(self, row: OutboxRow, directory: Directory, now: int) -> tuple[bytes, int]:
        token_row = self.store.token(row.token_id)
        if token_row is None:
            raise SealError("the approach token is gone", EnvelopeReason.MALFORMED)
        signed = decode_signed(token_row.signed)
        token = self._token(signed, directory)
        # A message may not outlive its token (the gateway refuses that for good).
        expires_at = min(now + row.expires_in_s, token.valid_until)
        body = decode_body(row.body)
        recipients = [
            (partner, directory.current_key(partner, KeyUse.ENCRYPT, now))
            for partner in row.recipients
        ]
        envelope = seal(
            sender=self.partner_id,
            sign_key=self.own_sign_key(directory, now),
            recipients=recipients,
            body=row.body,
            message_id=row.message_id,
            token_id=row.token_id,
            token_hash=token_row.token_hash,
            subjects=subjects_of(body),
            message_type=MessageType(row.message_type),
            schema_version=SCHEMA_VERSION,
            created_at=now,
            expires_at=expires_at,
            trace_id=row.trace_id,
        )
        return encode_envelope(envelope), expires_at

    async def send_once(self) -> PassResult:
        """Submit due outbox rows in creation order; verify receipts; report refusals."""
        result = PassResult()
        try:
            directory = self.current_directory()
        except DirectoryUnavailableError:
            await self.refresh_directory()
            return result
        for row in self.store.pending(self.clock.now(), self.settings.send_batch):
            now = self.clock.now()
            envelope = row.envelope
            if envelope is None or row.expires_at is None or row.expires_at <= now:
                try:
                    envelope, expires_at = self._seal(row, directory, now)
                except (SealError, TokenError, SchemaError) as exc:
                    self._refuse(row, f"cannot_seal: {exc}", result)
                    continue
                except Exception as exc:  # keys' DirectoryError: no usable recipient key yet
                    reason = f"cannot seal yet: {exc}"
                    self.store.mark_retry(
                        row.message_id, reason, now + self._backoff(row.attempts), reseal=True
                    )
                    result.retried.append(row.message_id)
                    continue
                self.store.mark_sealed(row.message_id, envelope, expires_at)
            stop = await self._submit(row, envelope, directory, result)
            if stop:
                break
        await self.recheck_inclusions()
        await self.report_outcomes()
        self.metrics.set_outbox_depth(self.store.outbox_depth())
        return result

    def _refuse(self, row: OutboxRow, reason: str, result: PassResult) -> None:
        self.store.mark_refused(row.message_id, reason)
        self._processing_log.refused(row, reason, self.clock.now())
        self.metrics.refused(reason.split(":", 1)[0])
        result.refused.append(row.message_id)
        logger.warning("refused", extra={"message_id": row.message_id, "reason": reason})

    async def _submit(
        self, row: OutboxRow, envelope: bytes, directory: Directory, result: PassResult
    ) -> bool:
        """Submit one envelope; True stops the pass (a gateway-wide condition)."""
        now = self.clock.now()
        try:
            submitted = await self.client.submit(envelope)
        except GatewayUnreachableError as exc:
            code = "gateway_identity" if isinstance(exc, GatewayIdentityError) else "unreachable"
            self.store.mark_retry(
                row.message_id,
                f"{code}: {exc}",
                now + self._backoff(row.attempts),
                reseal=False,
            )
            self.metrics.send_retry(code)
            result.retried.append(row.message_id)
            return True
        except RefusedError as refusal:
            code = refusal.reason.value if refusal.reason else f"http_{refusal.status}"
            if not refusal.transient and refusal.reason is not None:
                self._refuse(row, f"{code}: {refusal.detail}", result)
                return False
            if refusal.reason is None and refusal.status < 500 and refusal.status != 429:
                # A 4xx without a reason: the request was not shaped right; a person must look.
                self._refuse(row, f"{code}: {refusal.detail}", result)
                return False
            definite = refusal.reason is not None
            if refusal.reason in KEY_RELATED:
                await self.refresh_directory()
            self.store.mark_retry(
                row.message_id,
                f"{code}: {refusal.detail}",
                now + self._backoff(row.attempts, refusal.retry_after),
                # A definite refusal: the id was not accepted, so fresh bytes may follow.
                reseal=definite,
            )
            self.metrics.send_retry(code)
            result.retried.append(row.message_id)
            return refusal.reason is None or refusal.reason in GATEWAY_WIDE
        try:
            receipt, unproven = await self._check_receipt(
                row, envelope, submitted.receipt, submitted.leaf_index, directory
            )
        except ReceiptInvalidError as exc:
            self.inclusions.remove(row.message_id)
            self.store.mark_disputed(row.message_id, submitted.receipt, str(exc))
            self.alarm(AlarmKind.RECEIPT, f"acceptance receipt does not verify: {exc}")
            return False
        if unproven is None:
            self.inclusions.remove(row.message_id)
        else:
            # Kept before the row turns accepted: a crash in between leaves the row ``sent``,
            # resubmitted for the same receipt, never accepted with nothing left to check.
            self.inclusions.put(
                PendingInclusion(row.message_id, 0, now + self._backoff(0), unproven)
            )
            logger.warning(
                "inclusion_pending", extra={"message_id": row.message_id, "detail": unproven}
            )
        self.store.mark_accepted(
            row.message_id, submitted.receipt, receipt.leaf_index, receipt.accepted_at
        )
        self._processing_log.sent(row, receipt.accepted_at, now)
        self.metrics.sent(row.message_type)
        self.metrics.success("outbound", now)
        result.accepted.append(row.message_id)
        return False

    async def _consistency(self, old_size: int, new_size: int) -> list[bytes]:
        doc = await self.client.consistency_proof(old_size, new_size)
        return [_b64(h) for h in doc["hashes"]]

    async def _check_receipt(
        self, row: OutboxRow, envelope: bytes, raw: bytes, leaf_index: int, directory: Directory
    ) -> tuple[AcceptanceReceipt, str | None]:
        """Verify an acceptance receipt completely (``adapters.acceptance.verify_receipt``),
        then witness its checkpoint; return it, and why its inclusion is still unproven
        (``None``: proven). Raises ``ReceiptInvalidError`` when anything is wrong."""
        now = self.clock.now()
        checked = await verify_receipt(
            raw,
            message_id=row.message_id,
            envelope=decode_envelope(envelope),
            directory=directory,
            witness=self.witness,
            now=now,
            leaf_index=leaf_index,
            served_leaf=(
                None if self.config.gateway.require_receipt_entries else self._check_served_leaf
            ),
        )
        try:
            await self.witness.observe(checked.checkpoint, self._consistency, now, head=False)
        except WitnessAlarm as exc:
            self.alarm(AlarmKind.WITNESS, str(exc))
        except AdapterError as exc:
            logger.warning("consistency_unchecked", extra={"detail": str(exc)})
        return checked.receipt, checked.unproven

    async def _check_served_leaf(self, receipt: AcceptanceReceipt, root: bytes) -> None:
        """For a receipt without its audit entry: the leaf the gateway serves at
        ``leaf_index`` is under the signed ``root``. That shows *a* leaf is there, not that it
        is this message's: the salted leaf cannot be recomputed without the entry.

        Raises ``InclusionPending`` when no answer came (unreachable, a refusal: nothing
        wrong shown yet), ``ReceiptInvalidError`` when the answer is wrong.
        """
        try:
            doc = await self.client.inclusion_proof(receipt.leaf_index, receipt.tree_size)
        except (GatewayUnreachableError, RefusedError) as exc:
            raise InclusionPending(f"no leaf for the inclusion proof yet: {exc}") from None
        except ValueError as exc:  # a 2xx that is not JSON
            raise ReceiptInvalidError(f"the gateway's proof answer: {exc}") from None
        try:
            leaf = _b64(doc["leaf_hash"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ReceiptInvalidError(f"the gateway's proof answer has no leaf: {exc!r}") from None
        check_inclusion(leaf, receipt, root)

    async def recheck_inclusions(self) -> int:
        """Check again the inclusion of receipts accepted with it pending, those due now.

        Proven: the entry goes. A wrong answer: the row becomes ``disputed``, with an alarm.
        Still no answer: the next check is backed off; after
        ``settings.inclusion_attempts`` failed checks an alarm is raised and the entry is kept,
        marked abandoned, as the record. A row no longer ``accepted`` (resubmitted after a
        restore: its new receipt is checked on its own) leaves the set. Returns how many
        were settled (proven or disputed).
        """
        now = self.clock.now()
        pending = self.inclusions
        settled = 0
        for item in pending.due(now):
            row = self.store.outbox_row(item.message_id)
            if row is None or row.state != "accepted" or row.receipt is None:
                pending.remove(item.message_id)
                continue
            # Our own stored bytes, verified when they arrived: only the root is needed now.
            receipt = _RECEIPT_DECODER.decode(_SIGNED_DECODER.decode(row.receipt).payload)
            try:
                await self._check_served_leaf(
                    receipt, parse_checkpoint(receipt.checkpoint).root_hash
                )
            except InclusionPending as exc:
                attempts = item.attempts + 1
                abandoned = attempts >= self.settings.inclusion_attempts
                pending.put(
                    PendingInclusion(
                        item.message_id,
                        attempts,
                        now + self._backoff(attempts),
                        str(exc),
                        abandoned=abandoned,
                    )
                )
                if abandoned:
                    self.alarm(
                        AlarmKind.RECEIPT,
                        f"the inclusion of {item.message_id} in the audit log is unverified "
                        f"after {attempts} attempts: {exc}",
                    )
                continue
            except ReceiptInvalidError as exc:
                pending.remove(item.message_id)
                self.store.mark_disputed(row.message_id, row.receipt, str(exc))
                self.alarm(
                    AlarmKind.RECEIPT,
                    f"acceptance receipt of {item.message_id} does not verify: {exc}",
                )
                settled += 1
                continue
            pending.remove(item.message_id)
            settled += 1
        return settled

    async def report_outcomes(self) -> None:
        """Tell the partner system about refusals and deliveries not yet reported (both
        idempotent, each stopping at its first ``DestinationUnavailableError``), and alarm for
        messages whose outcomes are overdue (``check_overdue_outcomes``)."""
        await self.report_refusals()
        await self.report_deliveries()
        self.check_overdue_outcomes()

    async def report_refusals(self) -> None:
        """Tell the partner system about final refusals not yet reported (idempotent)."""
        destination = self.transport.destination
        for row in self.store.unreported_refusals():
            reason, _, detail = (row.last_reason or "").partition(": ")
            try:
                by = "adapter" if reason in LOCAL_REFUSALS else "gateway"
                await destination.report_refusal(
                    row.record_id, Refusal(row.message_id, by, reason, detail)
                )
            except DestinationUnavailableError as exc:
                _report_deferred("report_refusal", exc)
                return
            self.store.mark_refusal_reported(row.message_id)
        for message_id, recipient, kind, why in self.store.unreported_outcomes():
            outbox_row = self.store.outbox_row(message_id)
            if outbox_row is None:
                self.store.mark_outcome_reported(message_id, recipient)
                continue
            by = "recipient" if kind == SenderEventKind.REJECTION.value else f"gateway-{kind}"
            try:
                await destination.report_refusal(
                    outbox_row.record_id,
                    Refusal(message_id, by, why or kind, recipient=recipient),
                )
            except DestinationUnavailableError as exc:
                _report_deferred("report_refusal", exc)
                return
            self.store.mark_outcome_reported(message_id, recipient)

    async def report_deliveries(self) -> None:
        """Tell the partner system about recipients' receipts not yet reported (idempotent).

        Only receipts recorded while the destination implemented ``DeliveryReporter`` are
        pending here. One is marked reported only after ``report_delivery`` returned; after
        ``DestinationUnavailableError`` it and the later ones wait for the next pass. If the
        destination no longer reports deliveries they are marked reported without a call.
        """
        destination = self.transport.destination
        reporter = destination if isinstance(destination, DeliveryReporter) else None
        for message_id, recipient, at in self.store.unreported_deliveries():
            outbox_row = self.store.outbox_row(message_id)
            if reporter is not None and outbox_row is not None:
                try:
                    await reporter.report_delivery(
                        outbox_row.record_id, Delivered(message_id, recipient, at)
                    )
                except DestinationUnavailableError as exc:
                    _report_deferred("report_delivery", exc)
                    return
                self.metrics.delivery_reported()
            self.store.mark_outcome_reported(message_id, recipient)

    # -- inbound -------------------------------------------------------------------------

    async def receive_once(self, wait_s: float = 0.0) -> PassResult:
        """One long-poll of the inbox: handle each delivery, then the sender events."""
        result = PassResult()
        batch = await self.client.inbox(wait_s=wait_s)
        self.metrics.success("inbound", self.clock.now())
        for delivery in batch.deliveries:
            await self._handle_delivery(delivery, result)
        acks = []
        for event in batch.events:
            if self._handle_event(event.event, event.message_id):
                acks.append(event.event_id)
        if acks:
            await self.client.send_receipts(acks=acks)
            result.events = len(acks)
        await self.report_outcomes()
        return result

    def _handle_event(self, raw: bytes, message_id: str) -> bool:
        """Verify and record a sender event; True to acknowledge it."""
        now = self.clock.now()
        try:
            directory = self.current_directory()
        except DirectoryUnavailableError:
            return False
        try:
            verified = verify_sender_event(
                _SIGNED_DECODER.decode(raw), directory, now=now, message_id=message_id
            )
        except (msgspec.DecodeError, ReceiptError) as exc:
            # Acknowledged anyway: the gateway would hand the same forgery out for ever; the
            # alarm and the gateway's own audit log keep the evidence.
            self.alarm(AlarmKind.SENDER_EVENT, f"sender event does not verify: {exc}")
            return True
        event = verified.event
        false_claim = self._false_claim(event)
        if false_claim is not None:
            # Acknowledged, not recorded: nothing false reaches the partner system, and the
            # signed event stays evidence in the alarm and in the gateway's own audit log.
            self.alarm(AlarmKind.SENDER_EVENT, false_claim)
            return True
        reason = verified.rejection.reason.value if verified.rejection else None
        if self.store.record_outcome(
            event.message_id,
            event.recipient,
            event.kind.value,
            reason,
            event.at,
            report_delivery=isinstance(self.transport.destination, DeliveryReporter),
        ):
            self.metrics.outcome(event.kind.value)
        return True

    def _false_claim(self, event: SenderEvent) -> str | None:
        """What is provably false in a verified sender event about one of our messages: it
        names a recipient the message does not have, or it claims an expiry before the
        message's signed ``expires_at``. ``None`` when nothing is (or the message is not in
        our outbox: ``ketenpost send`` shares the partner's inbox)."""
        row = self.store.outbox_row(event.message_id)
        if row is None:
            return None
        if event.recipient not in row.recipients:
            return (
                f"sender event {event.kind.value} for message {event.message_id} names "
                f"{event.recipient}, not one of its recipients"
            )
        if (
            event.kind is SenderEventKind.EXPIRY
            and row.expires_at is not None
            and event.at < row.expires_at
        ):
            return (
                f"expiry event for message {event.message_id} to {event.recipient} dated "
                f"{event.at}, before the message's expires_at {row.expires_at}"
            )
        return None

    def check_overdue_outcomes(self) -> int:
        """Alarm once for every accepted message whose ``expires_at`` passed more than
        ``outcome_grace_s`` ago without an outcome (receipt, rejection, expiry or purge) from
        every recipient: an honest gateway sends one of them for each. Each row is judged once
        (a durable watermark); returns how many alarms were raised."""
        until = self.clock.now() - self.settings.outcome_grace_s
        after = int(self.store.setting(OVERDUE_WATERMARK_SETTING) or 0)
        if until <= after:
            return 0
        raised = 0
        for row in self.store.accepted_expiring(after, until):
            missing = sorted(set(row.recipients) - set(self.store.outcomes(row.message_id)))
            if missing:
                self.alarm(
                    AlarmKind.SENDER_EVENT,
                    f"no outcome from {', '.join(missing)} for message {row.message_id}, "
                    f"expired at {row.expires_at}",
                )
                raised += 1
        self.store.set_setting(OVERDUE_WATERMARK_SETTING, str(until))
        return raised

    async def _answer(self, outcome: str, answer: bytes) -> None:
        if outcome == "applied":
            await self.client.send_receipts(receipts=[answer])
        else:
            await self.client.send_receipts(rejections=[answer])

    async def _handle_delivery(self, delivery: InboxDelivery, result: PassResult) -> None:
        self.metrics.received(delivery.sender)
        done = self.store.inbound(delivery.message_id)
        if done is not None:
            # Processed before (a crash before the answer went out): the same answer again.
            await self._answer(done.outcome, done.answer)
            result.deferred.append(delivery.message_id)
            return
        now = self.clock.now()
        try:
            accepted_at = await self._accepted_at(delivery, now)
            checked = await self._check(delivery, accepted_at, now)
        except DeliveryAcceptanceError as exc:
            self._untrusted(delivery, exc, result)
            return
        except _NotNow as exc:
            logger.warning(
                "delivery_deferred", extra={"message_id": delivery.message_id, "detail": str(exc)}
            )
            result.deferred.append(delivery.message_id)
            return
        except _Rejected as rejected:
            await self._reject(delivery, rejected, now, result)
            return
        self._fault(FaultPoint.OPENED)
        header = checked.opened.header
        self._processing_log.received(header, now)
        local_ids = self.store.local_ids(header.token_id)
        message = InboundMessage(
            message_id=header.message_id,
            sender=header.sender,
            message_type=header.message_type,
            token_id=header.token_id,
            subjects=tuple(header.subjects),
            body=checked.body,
            body_bytes=checked.opened.body,
            accepted_at=accepted_at,
            received_at=now,
            # Continues the sender's trace, with our *applied* action as the parent span.
            trace_id=self._processing_log.inbound_traceparent(header),
            local_ids={p: local_ids[p] for p in header.subjects if p in local_ids},
        )
        try:
            applied = await self.transport.destination.apply(message)
        except DestinationUnavailableError as exc:
            logger.warning("destination_unavailable", extra={"detail": str(exc)})
            result.deferred.append(delivery.message_id)
            return
        except DestinationRejectedError as exc:
            await self._reject(
                delivery,
                _Rejected(exc.reason, exc.detail, checked.opened.header_hash),
                now,
                result,
            )
            return
        self._fault(FaultPoint.APPLIED)
        receipt = msgspec.msgpack.encode(
            sign_delivery_receipt(
                DeliveryReceipt(
                    message_id=header.message_id,
                    header_hash=checked.opened.header_hash.hex(),
                    recipient=self.partner_id,
                    received_at=now,
                    plaintext_hash=hashlib.sha256(checked.opened.body).hexdigest(),
                ),
                self.own_sign_key(None, now),
            )
        )
        subjects = set(header.subjects)
        self.store.record_inbound(
            message_id=header.message_id,
            sender=header.sender,
            message_type=header.message_type.value,
            token_id=header.token_id,
            outcome="applied",
            reason=None,
            answer=receipt,
            now=now,
            token=checked.token_row,
            pseudonyms=[
                (header.token_id, p, local)
                for p, local in applied.local_ids.items()
                if p in subjects
            ],
        )
        self._processing_log.applied(header, now)
        self.metrics.applied(header.message_type.value)
        self._fault(FaultPoint.RECORDED)
        result.applied.append(header.message_id)
        with contextlib.suppress(AdapterError):  # redelivered later; answered from the row
            await self._answer("applied", receipt)
        self._fault(FaultPoint.ANSWERED)

    async def _accepted_at(self, delivery: InboxDelivery, now: int) -> int:
        """The delivery's acceptance time, verified against the receipt it carries and the
        log this adapter witnessed (``adapters.acceptance.check_delivery_acceptance``).

        An envelope that does not decode is not judged here: it is rejected unopened as
        before (decoding is ``open_envelope``'s first step, so no key is judged at any time)
        and the gateway's claimed time is returned unused. Raises
        ``DeliveryAcceptanceError``, or ``_NotNow`` without a fresh directory.
        """
        try:
            envelope = decode_envelope(delivery.envelope)
        except MalformedEnvelopeError:
            return delivery.accepted_at
        try:
            directory = self.current_directory()
        except DirectoryUnavailableError as exc:
            raise _NotNow(str(exc)) from None
        receipt = await check_delivery_acceptance(
            delivery,
            envelope,
            directory=directory,
            witness=self.witness,
            prove=self._consistency,
            now=now,
            witness_alarm=lambda detail: self.alarm(AlarmKind.WITNESS, detail),
        )
        return receipt.accepted_at

    def _untrusted(
        self, delivery: InboxDelivery, exc: DeliveryAcceptanceError, result: PassResult
    ) -> None:
        """A delivery whose acceptance does not hold: the gateway misbehaves, the sender did
        nothing wrong. Nothing is opened, applied or answered (no receipt, no rejection); an
        alarm for the operator; the lease runs out and the gateway hands it out again."""
        self.alarm(
            AlarmKind.DELIVERY,
            f"delivery {delivery.message_id} from {delivery.sender} not opened: the gateway's "
            f"acceptance of it does not hold: {exc}",
        )
        logger.warning(
            "delivery_acceptance_refused",
            extra={
                "message_id": delivery.message_id,
                "reason": exc.reason.value,
                "detail": exc.detail,
            },
        )
        result.deferred.append(delivery.message_id)

    async def _reject(
        self, delivery: InboxDelivery, rejected: _Rejected, now: int, result: PassResult
    ) -> None:
        if rejected.header_digest is None:
            # Not even the header decodes, so no rejection can name it: the gateway accepted
            # bytes it could not have verified.
            self.alarm(AlarmKind.DELIVERY, f"undecodable delivery: {rejected.detail}")
            result.deferred.append(delivery.message_id)
            return
        answer = msgspec.msgpack.encode(
            sign_rejection(
                Rejection(
                    message_id=delivery.message_id,
                    header_hash=rejected.header_digest.hex(),
                    recipient=self.partner_id,
                    rejected_at=now,
                    reason=rejected.reason,
                    detail=rejected.detail[:1000],
                ),
                self.own_sign_key(None, now),
            )
        )
        self.store.record_inbound(
            message_id=delivery.message_id,
            sender=delivery.sender,
            message_type=None,
            token_id=None,
            outcome="rejected",
            reason=rejected.reason.value,
            answer=answer,
            now=now,
        )
        self._processing_log.rejected(
            delivery.message_id,
            delivery.sender,
            delivery.envelope,
            rejected.reason.value,
            # Before the envelope opened its header is unverified: no subjects from it.
            opened=rejected.reason is not RejectionReason.CANNOT_OPEN,
            now=now,
        )
        self.metrics.rejected(rejected.reason.value)
        logger.warning(
            "delivery_rejected",
            extra={
                "message_id": delivery.message_id,
                "reason": rejected.reason.value,
                "detail": rejected.detail,
            },
        )
        self._fault(FaultPoint.RECORDED)
        result.rejected.append(delivery.message_id)
        with contextlib.suppress(AdapterError):
            await self._answer("rejected", answer)

    def _header_digest(self, raw: bytes) -> bytes | None:
        try:
            return header_hash(_ENVELOPE_DECODER.decode(raw).header)
        except msgspec.DecodeError:
            return None

    async def _open(self, delivery: InboxDelivery, accepted_at: int, now: int) -> Opened:
        for attempt in range(2):
            try:
                directory = self.current_directory()
            except DirectoryUnavailableError as exc:
                raise _NotNow(str(exc)) from None
            try:
                return open_envelope(
                    delivery.envelope,
                    directory,
                    recipient=self.partner_id,
                    encrypt_keys=self.identity.encrypt_keys,
                    accepted_at=accepted_at,
                    now=now,
                )
            except EnvelopeSignatureError as exc:
                # Perhaps the sender rotated keys and our directory is behind: refresh once.
                if attempt == 0 and exc.reason is EnvelopeReason.UNKNOWN_SENDER_KEY:
                    await self.refresh_directory()
                    continue
                raise _Rejected(
                    RejectionReason.CANNOT_OPEN, str(exc), self._header_digest(delivery.envelope)
                ) from None
            except MalformedEnvelopeError as exc:
                raise _Rejected(
                    RejectionReason.CANNOT_OPEN, str(exc), self._header_digest(delivery.envelope)
                ) from None
            except EnvelopeError as exc:
                # Sealed to an own encrypt key not yet held (rotated while running): re-read
                # the key files and the directory once.
                if attempt == 0 and exc.reason is EnvelopeReason.NO_RECIPIENT_KEY:
                    await self.refresh_directory()
                    self.reload_keys()
                    continue
                reason = _ENVELOPE_REJECTION.get(exc.reason, RejectionReason.CANNOT_OPEN)
                raise _Rejected(reason, str(exc), self._header_digest(delivery.envelope)) from None
        raise _NotNow("unreachable")  # pragma: no cover - the loop returns or raises

    async def _registered_token(
        self, token_id: str, expected_hash: str, now: int, signed: SignedObject | None
    ) -> tuple[SignedObject, TokenStatus, TokenRow]:
        """The token (from the notice, the store or the gateway) and its registry status."""
        row = self.store.token(token_id)
        fresh = row is not None and now - row.status_at < self.settings.token_status_max_age_s
        if row is not None and fresh:
            held = decode_signed(row.signed)
        else:
            try:
                doc = await self.client.approach(token_id)
            except RefusedError as exc:
                if exc.transient or exc.status >= 500:
                    raise _NotNow(f"approach status: {exc}") from None
                if row is None and signed is None:
                    raise TokenError(f"approach unknown: {exc}", Reason.TOKEN_NOT_REGISTERED)
                doc = None
            except GatewayUnreachableError as exc:
                raise _NotNow(f"approach status: {exc}") from None
            if doc is not None:
                held = decode_signed(_b64(doc["token"]))
                row = TokenRow(
                    token_id=token_id,
                    token_hash=token_hash(held),
                    signed=encode_signed(held),
                    opening=None,
                    registered_at=doc.get("registered_at"),
                    revoked_at=doc.get("revoked_at"),
                    superseded_by=doc.get("superseded_by"),
                    status_at=now,
                )
            elif row is not None:
                held = decode_signed(row.signed)
            else:
                assert signed is not None
                held = signed
                row = TokenRow(
                    token_id, token_hash(signed), encode_signed(signed), None, None, None, None, now
                )
        if signed is not None and token_hash(signed) != token_hash(held):
            raise TokenError("the notice's token is not the registered one", Reason.TOKEN_CONFLICT)
        if row.token_hash != expected_hash:
            raise TokenError("token hash does not match the header", Reason.TOKEN_HASH_MISMATCH)
        status = TokenStatus(
            registered_at=row.registered_at,
            revoked_at=row.revoked_at,
            superseded_by=row.superseded_by,
        )
        return held, status, row

    async def _check(self, delivery: InboxDelivery, accepted_at: int, now: int) -> _Checked:
        """Open (the sender key judged at the verified ``accepted_at``) and check a delivery;
        the token and the policy at our ``now``."""
        opened = await self._open(delivery, accepted_at, now)
        header = opened.header
        digest = opened.header_hash
        directory = self.current_directory()
        me = directory.partner(self.partner_id)
        if header.message_id != delivery.message_id:
            raise _Rejected(RejectionReason.CANNOT_OPEN, "delivery names another id", digest)
        if header.schema_version not in me.schema_versions:
            raise _Rejected(
                RejectionReason.UNSUPPORTED_SCHEMA_VERSION,
                f"schema version {header.schema_version}",
                digest,
            )
        try:
            body = decode_body(opened.body, expected_type=header.message_type)
        except SchemaError as exc:
            raise _Rejected(RejectionReason.SCHEMA_INVALID, str(exc), digest) from None
        if set(subjects_of(body)) != set(header.subjects):
            raise _Rejected(RejectionReason.SUBJECTS_MISMATCH, "body subjects differ", digest)
        notice = body if isinstance(body, ApproachNotice) else None
        try:
            policy = policy_from_directory(directory)
        except PolicyError as exc:
            raise _NotNow(f"our directory's policy: {exc}") from None
        try:
            _require(
                notice is None or notice.token_id == header.token_id,
                "the notice names another token",
            )
            signed, status, row = await self._registered_token(
                header.token_id, header.token_hash, now, notice.token if notice else None
            )
            token = self._token(signed, directory)
            _require(token.token_id == header.token_id, "token id differs from the header")
            check_token_status(token, directory, now=now, status=status)
            check_use(
                token,
                policy,
                directory,
                now=now,
                sender=header.sender,
                recipients=[r.partner for r in header.recipients],
                subjects=header.subjects,
                message_type=header.message_type,
                expires_at=header.expires_at,
            )
            if notice is not None:
                check_private_part(token, notice.token_private)
                row = TokenRow(
                    token_id=row.token_id,
                    token_hash=row.token_hash,
                    signed=row.signed,
                    opening=msgspec.msgpack.encode(notice.token_private),
                    registered_at=row.registered_at,
                    revoked_at=row.revoked_at,
                    superseded_by=row.superseded_by,
                    status_at=row.status_at,
                )
        except TokenError as exc:
            reason = (
                RejectionReason.POLICY_CHECK_FAILED
                if exc.reason in POLICY_REASONS
                else RejectionReason.TOKEN_INVALID
            )
            raise _Rejected(reason, f"{exc.reason.value}: {exc}", digest) from None
        return _Checked(opened=opened, body=body, token=token, token_row=row)

    # -- directory and witness -----------------------------------------------------------

    async def refresh_directory(self) -> bool:
        """Fetch and verify the gateway's bundle; keep the last good one if it is refused.
        After a successful refresh, read and verify the partners' own key revocations
        (``refresh_key_revocations``) — except while judging the gateway's certificate
        (``_check_gateway_peer``), whose refresh comes over the unpinned session.

        Then choose the own TLS certificate again (``reload_tls``) — also when the refresh
        failed: a successor listed by the directory held may have reached its ``active_from``.
        """
        refreshed = await self._refresh_directory()
        if refreshed and not self._judging_peer:
            await self.refresh_key_revocations()
        self.reload_tls()
        return refreshed

    async def _refresh_directory(self) -> bool:
        now = self.clock.now()
        try:
            data = await self.client.directory_bundle()
        except AdapterError as exc:
            logger.warning("directory_fetch_failed", extra={"detail": str(exc)})
            return False
        try:
            self.directory.update_from_bytes(data, now)
        except DirectoryUnavailableError as exc:
            self.alarm(AlarmKind.DIRECTORY_REFUSED, f"{exc.reason}: {exc}")
            return False
        self._token_cache.clear()
        self.metrics.directory(self.directory.version, stale=False)
        self.reload_keys()
        self.check_own_keys()
        return True

    def check_own_keys(self) -> list[str]:
        """Alarm for every ``sign`` or ``encrypt`` key the directory lists for this partner,
        not retired or revoked now, whose private key this adapter does not hold: officers (or
        whoever holds their keys) swapped in a key that lets someone else sign as this partner
        or read what is sealed to it. Only the partner itself can see this; returns the kids."""
        now = self.clock.now()
        try:
            me = self.directory.current(now).partner(self.partner_id)
        except (DirectoryUnavailableError, DirectoryError):
            return []
        held = {k.kid for k in self.identity.sign_keys} | {self.identity.sign_key.kid}
        held |= set(self.identity.encrypt_keys)
        unknown = [
            k.kid
            for k in me.keys
            if k.use in (KeyUse.SIGN, KeyUse.ENCRYPT)
            and k.state(now) not in (KeyState.RETIRED, KeyState.REVOKED)
            and k.kid not in held
        ]
        for kid in unknown:
            self.alarm(
                AlarmKind.OWN_KEY_UNKNOWN,
                f"the directory (version {self.directory.version}) lists a key {kid} for "
                f"{self.partner_id} whose private key this adapter does not hold",
            )
        return unknown

    def _hold_stored_revocations(self) -> None:
        """Hold the statements verified before (``adapter.db``) — before anything is checked."""
        statements = []
        for row in self.store.key_revocations():
            try:
                statements.append(decode_revocation(row.statement))
            except KeysError as exc:  # our own file, written by us: a person must look
                self.alarm(AlarmKind.DIRECTORY_REFUSED, f"stored key revocation: {exc}")
        self.directory.hold_revocations(statements)
        self.metrics.key_revocations(len(self.directory.revocations))

    async def refresh_key_revocations(self) -> int:
        """Read ``GET /v1/keys/revocations``, verify each statement not held yet against our
        own directory and hold (and keep) those that verify. Returns how many were adopted.
        A gateway that cannot be reached or refuses changes nothing; a statement that does
        not verify is logged and counted, never applied."""
        now = self.clock.now()
        try:
            served = await self.client.key_revocations()
        except (AdapterError, KeyError, TypeError) as exc:
            logger.warning("key_revocations_fetch_failed", extra={"detail": str(exc)})
            return 0
        statements: list[KeyRevocation] = []
        for item in served:
            try:
                raw = msgspec.json.encode(item["statement"])
                statements.append(decode_revocation(raw))
            except (KeysError, KeyError, TypeError, msgspec.EncodeError) as exc:
                self._invalid_revocation(
                    hashlib.sha256(repr(item).encode()).hexdigest(), "malformed", str(exc)
                )
        try:
            intake = self.directory.adopt_revocations(statements, now)
        except DirectoryUnavailableError as exc:
            logger.warning("key_revocations_unverified", extra={"detail": str(exc)})
            return 0
        for refused in intake.refused:
            self._invalid_revocation(refused.statement_hash, refused.reason, refused.detail)
        if intake.adopted:
            self.store.add_key_revocations(
                KeyRevocationRow(
                    statement_hash=statement_hash(st),
                    partner=st.partner,
                    kid=st.kid,
                    statement=encode_revocation(st),
                    verified_at=now,
                )
                for st in intake.adopted
            )
            # A token's signature check is cached; its issuer key may be one just revoked.
            self._token_cache.clear()
            for st in intake.adopted:
                # Only allowed log fields (``adapters.cli.ADAPTER_LOG_FIELDS``); the times and
                # the statement's name go in the one-line detail.
                logger.warning(
                    "key_revoked_by_partner",
                    extra={
                        "partner": st.partner,
                        "kid": st.kid,
                        "detail": f"revoked_at={st.revoked_at} "
                        f"compromised_since={st.compromised_since} "
                        f"statement={statement_hash(st)}",
                    },
                )
        self.metrics.key_revocations(len(self.directory.revocations))
        return len(intake.adopted)

    def _invalid_revocation(self, digest: str, reason: str, detail: str) -> None:
        if (digest, reason) in self._invalid_revocations:
            return
        self._invalid_revocations.add((digest, reason))
        self.metrics.key_revocation_invalid(reason)
        logger.warning(
            "key_revocation_invalid",
            extra={"reason": reason, "detail": f"statement={digest}: {detail}"},
        )

    def reload_keys(self) -> None:
        """Re-read the partner's key files (a rotated key written beside the old one); keep
        the keys held if that fails (an alarm-free warning: the old keys still work)."""
        if not self._reload_identity:
            return
        try:
            self.identity = Identity.load(self.config, self._environ)
        except AdapterError as exc:
            logger.warning("key_reload_failed", extra={"detail": str(exc)})

    def _choose_tls(self, now: int) -> TlsPair | None:
        """The newest own TLS pair that qualifies at ``now`` by the last good directory
        (``keys.tlspairs``); ``None`` when none does or no fresh directory is held. Pairs
        skipped for a reason an operator must fix are logged as warnings."""
        try:
            directory = self.directory.current(now)
        except DirectoryUnavailableError:
            return None
        try:
            choice = choose_tls_pair(
                self.identity.tls, directory, self.partner_id, now, self._environ
            )
        except (KeysError, OSError) as exc:  # the trust anchors cannot be read
            logger.warning("tls_key_check_failed", extra={"detail": str(exc)})
            return None
        for skipped in choice.skipped:
            # A successor before its active_from (or a retired predecessor) is no news.
            if skipped.kind is not SkipKind.NOT_USABLE:
                logger.warning(
                    "tls_key_skipped",
                    extra={
                        "generation": skipped.generation,
                        "certificate": str(skipped.certificate),
                        "reason": skipped.kind.value,
                        "detail": skipped.detail,
                    },
                )
        return choice.pair

    def _tls_context(self, pair: TlsPair) -> ssl.SSLContext | None:
        """A client context presenting ``pair``; ``None`` (and a warning) if OpenSSL will not
        load it although our checks passed (a file replaced in between, say)."""
        try:
            return client_context(pair.files, self._environ)
        except (KeysError, OSError) as exc:  # ssl.SSLError is an OSError
            logger.warning(
                "tls_key_switch_failed",
                extra={"certificate": str(pair.files.certificate), "detail": str(exc)},
            )
            return None

    def _note_tls(self, pair: TlsPair, *, switched: bool) -> None:
        """Record ``pair`` as the certificate presented: the kid, the metrics, a log line."""
        self._tls_kid = pair.kid
        self.metrics.tls_key(pair.generation, pair.not_after, switched=switched)
        logger.info(
            "tls_key_in_use",
            extra={
                "kid": pair.kid,
                "generation": pair.generation,
                "certificate": str(pair.files.certificate),
                "not_after": pair.not_after,
                "switched": switched,
            },
        )

    @property
    def tls_kid(self) -> str | None:
        """The ``tls`` kid of the client certificate presented to the gateway (``None``
        before ``open``)."""
        return self._tls_kid

    def reload_tls(self) -> bool:
        """Present the newest own TLS certificate that qualifies now (see the module rules);
        ``True`` if it switched. Keeps the one presented when none qualifies, when it already
        is the one, or when a context cannot be built from it (a warning). Never raises."""
        if self._client is None:
            return False
        pair = self._choose_tls(self.clock.now())
        if pair is None or pair.kid == self._tls_kid:
            return False
        context = self._tls_context(pair)
        if context is None:
            return False
        self._client.use_ssl_context(context)
        self._note_tls(pair, switched=True)
        return True

    def own_sign_key(self, directory: Directory | None, now: int) -> Ed25519KeyPair:
        """The newest own sign key the directory lists as active at ``now`` (the last good
        directory when ``None``); the configured one when none is (or no directory is).

        Never a key one of our own revocation statements names, from any time on (even one
        whose ``revoked_at`` is still ahead within the clock skew): raises
        ``OwnKeyRevokedError``, after an alarm, when no other key is left.
        """
        revoked = self.directory.revoked_kids(self.partner_id)
        keys = tuple(
            k for k in self.identity.sign_keys or (self.identity.sign_key,) if k.kid not in revoked
        )
        chosen: Ed25519KeyPair | None = None
        if directory is None:
            with contextlib.suppress(DirectoryUnavailableError):
                directory = self.directory.current(now)
        if directory is not None:
            chosen = newest_active(keys, directory, self.partner_id, KeyUse.SIGN, now)
        if chosen is not None:
            return chosen
        if self.identity.sign_key.kid not in revoked:
            return self.identity.sign_key
        detail = (
            f"our sign key {self.identity.sign_key.kid} is revoked by our own statement and "
            "no successor is held: install and list a new sign key"
        )
        self.alarm(AlarmKind.OWN_KEY_REVOKED, detail)
        raise OwnKeyRevokedError(detail)

    async def witness_once(self) -> None:
        """Fetch the gateway's head checkpoint and check it against every one kept."""
        now = self.clock.now()
        directory = self.current_directory()
        note = await self.client.checkpoint()
        try:
            checkpoint = self.witness.verify(note, directory, now)
        except CheckpointInvalidError as exc:
            self.alarm(AlarmKind.CHECKPOINT, f"checkpoint does not verify: {exc}")
            return
        try:
            await self.witness.observe(checkpoint, self._consistency, now, head=True)
        except WitnessAlarm as exc:
            self.alarm(AlarmKind.WITNESS, str(exc))
            # The head may be that of a store restored from a backup: recheck, durably, what
            # the gateway acknowledged (``recheck_after_restore``).
            self.store.set_setting(RESTORE_RECHECK_SETTING, str(now))
            return
        self.metrics.witnessed(checkpoint.size)

    async def recheck_after_restore(self) -> int:
        """After a witness alarm on the head (a restored gateway shows a smaller or another
        tree): every ``accepted`` row not yet answered by all its recipients is looked up with
        ``GET /v1/messages/{id}``; one the gateway no longer knows (``unknown_message``) goes
        back to the send queue with its **same bytes** (state ``sent``), so the next pass
        resubmits it and keeps the new receipt. Recipients apply a message once whatever the
        number of deliveries (inbound idempotency). The flag is cleared only after every row
        was checked, so a crash or an unreachable gateway means checking again. Returns how
        many rows were put back."""
        if not self.store.setting(RESTORE_RECHECK_SETTING):
            return 0
        requeued = 0
        for row in self.store.outbox():
            if row.state != "accepted" or row.envelope is None or row.expires_at is None:
                continue
            if set(self.store.outcomes(row.message_id)) >= set(row.recipients):
                continue
            try:
                await self.client.message_status(row.message_id)
            except RefusedError as exc:
                if exc.reason is not Reason.UNKNOWN_MESSAGE:
                    raise
                self.store.mark_sealed(row.message_id, row.envelope, row.expires_at)
                requeued += 1
                logger.warning("resubmit_after_restore", extra={"message_id": row.message_id})
        self.store.set_setting(RESTORE_RECHECK_SETTING, "")
        if requeued:
            self._wake.set()
        return requeued

    # -- retention and witness exchange (hooks: adapters.retention, adapters.witness) ------

    async def retention_once(self) -> RetainedCounts:
        """Delete what belongs to approaches past their token's retention deadline."""
        return apply_retention(self.store, self.metrics, self.clock.now())

    def witness_exchange(self) -> WitnessExchange:
        """The peer exchange configured in ``[witness]`` (docs/adr/0010)."""
        w = self.config.witness
        peers = [
            (peer.id, url_fetch(peer.url) if peer.url else file_fetch(self.config.path(peer.path)))
            for peer in w.peers
        ]
        return WitnessExchange(
            self.store, self.witness, self.partner_id, self.config.path(w.publish), peers
        )

    async def exchange_witness_once(self) -> list[PeerView]:
        """Publish our latest checkpoint, signed, and check every peer's against ours; a peer
        shown another log is a ``witness`` alarm."""
        now = self.clock.now()
        directory = self.current_directory()
        exchange = self.witness_exchange()
        exchange.publish(self.own_sign_key(directory, now), now)
        views = await exchange.check_peers(directory, self._consistency, now)
        for view in views:
            self.metrics.witness_exchange(view.status)
            if view.status == "inconsistent":
                self.alarm(AlarmKind.WITNESS, view.detail)
        return views

    # -- health --------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """What ``/healthz`` shows: ok unless an alarm is open."""
        alarms = self.store.alarms()
        return {
            "status": "alarm" if alarms else "ok",
            "partner": self.partner_id,
            "alarms": [
                {"kind": a.kind, "detail": a.detail, "raised_at": a.raised_at} for a in alarms
            ],
            "outbox_depth": self.store.outbox_depth(),
            "failed_records": self.store.failed_count(),
            "directory_version": self.directory.version,
            "directory_error": self.directory.last_error,
        }

    # -- the loops -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run every loop until ``stop`` is set. Each loop survives its own failures."""
        from adapters.health import serve_health  # noqa: PLC0415 - aiohttp web only when run

        health = await serve_health(self, self.settings.metrics_listen)
        loops = [
            asyncio.create_task(
                self._loop(self._outbound_step, self.settings.pull_interval_s, stop, wake=True)
            ),
            asyncio.create_task(self._loop(self._inbound_step, 0.0, stop)),
            asyncio.create_task(
                self._loop(
                    self._directory_step,
                    self.settings.directory_refresh_s or float(self.config.directory.refresh_s),
                    stop,
                )
            ),
            asyncio.create_task(
                self._loop(self.witness_once, self.settings.witness_interval_s, stop)
            ),
            asyncio.create_task(
                self._loop(self.exchange_witness_once, float(self.config.witness.exchange_s), stop)
            ),
            asyncio.create_task(
                self._loop(self.retention_once, self.settings.retention_interval_s, stop)
            ),
        ]
        try:
            await stop.wait()
        finally:
            for task in loops:
                task.cancel()
            for task in loops:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if health is not None:
                await health.cleanup()

    async def _outbound_step(self) -> None:
        await self.ingest_once()
        await self.recheck_after_restore()
        await self.send_once()

    async def _inbound_step(self) -> None:
        await self.receive_once(wait_s=self.settings.poll_wait_s)

    async def _directory_step(self) -> None:
        await self.refresh_directory()

    async def _loop(
        self,
        step: Callable[[], Any],
        interval_s: float,
        stop: asyncio.Event,
        *,
        wake: bool = False,
    ) -> None:
        failures = 0
        name = getattr(step, "__name__", "")
        # The last expected failure logged (an ``AdapterError``: a partner system or the gateway
        # not answering), so an outage is one warning line, not one traceback per retry.
        reported: str | None = None
        while not stop.is_set():
            try:
                await step()
                failures = 0
                if reported is not None:
                    logger.info("step_recovered", extra={"step": name})
                    reported = None
            except asyncio.CancelledError:
                raise
            except AdapterError as exc:  # expected: logged once per distinct problem, retried
                failures += 1
                detail = f"{type(exc).__name__}: {exc}"
                if detail != reported:
                    logger.warning("step_failed", extra={"step": name, "detail": detail})
                    reported = detail
            except Exception:  # a bug: logged with its traceback and retried; the adapter stays up
                failures += 1
                reported = None
                logger.exception("step_failed", extra={"step": name})
            delay = interval_s if failures == 0 else min(60.0, 0.5 * 2 ** min(failures, 7))
            if delay <= 0:
                continue
            if wake:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)


def _report_deferred(step: str, exc: DestinationUnavailableError) -> None:
    """A report the partner system could not take now: one line, asked again next pass."""
    logger.warning("report_deferred", extra={"step": step, "detail": str(exc)})


def adapter_db_path(config: AdapterConfig) -> Path:
    return config.path(config.store.path)
