"""The relay decision, approach registration and revocation, and delivery.

Rules kept here (DESIGN.md "The relay decision", "Delivery", "Audit log"):

* ``Relay.submit`` checks an envelope in exactly DESIGN.md's order; the first failing check
  refuses it with a ``Reason``: TLS identity is a partner (``unknown_sender``); size
  (``envelope_too_large``); rate (``rate_limited``, with Retry-After); envelope decodes, version,
  suite (``malformed_envelope``, ``unknown_version``, ``unknown_suite``) and the recipient
  limit (``too_many_recipients``); the directory is current (``directory_expired``, transient);
  TLS identity is the header's sender (``sender_mismatch``); the outer signature under a key
  usable at the receive time (``bad_signature``, ``key_*``); ``created_at`` not beyond the skew
  in the future (``created_in_future``); ``expires_at`` not passed (``expired``). Then, **inside
  the store transaction** (the ``TokenCheck`` callback sees the token row as that transaction
  does, so a revocation committing concurrently is never overtaken): id not already accepted
  (the store: same bytes give the first receipt, other bytes ``duplicate_id``); token named
  (``no_token``: the all-zero token id) and registered (``token_not_registered``, transient) with
  the header's hash; token signature; issuer, coordinator, key, validity, revocation,
  supersession, policy (``token.check_token_status``); ``expires_at`` within the message
  lifetime; ``token.check_use`` (valid_until, subjects, participants, policy ∩ token); no
  recipient has left the covenant (``left_at`` reached: ``unknown_recipient``, as for a partner
  the directory does not list; a sender that has left is already ``unknown_sender`` by its TLS
  identity); every recipient kid a usable ``encrypt`` key of that recipient
  (``recipient_key_invalid``).
* Only the token's **signature** check is cached, keyed by the registered token hash; status,
  validity, subjects, participants, types and keys run for every message.
* Every refusal is counted (``ketenpost_refused_total{reason,sender}``) and audited. A refusal
  before the outer signature verified records only the TLS identity, the header hash (when the
  header decoded) and the reason (``AuditEntry.unverified_refusal``): nothing else in such a
  header is authenticated. After it verified, a refusal records the header's metadata, but its
  **subject pseudonyms only once the header's token was found registered with the header's
  hash** (the checks from the token's signature on): retention deletes an entry only under a
  registered token (``Store.apply_retention``), so the subjects in a refusal under no such token
  (``no_token``, ``token_not_registered``, ``token_hash_mismatch``, and those before the token
  is looked up: ``created_in_future``, ``expired``, ``duplicate_id``, …) would never be deleted.
  Such an entry keeps time, decision, reason, sender, recipients, type, token id (as the header
  gives it), policy hash, header hash and trace id. If a refusal's audit entry cannot be written
  the answer becomes ``audit_unavailable``; if the store cannot commit, ``store_unavailable``
  (both transient).
* A sender key whose known ``compromised_since`` has passed is refused as ``key_compromised``
  at once, even while its ``revoked_at`` lies ahead (compromise windows are judged at the
  gateway's receive time).
* A directory change voids some undelivered messages; ``judge_queue`` (run before every inbox
  lease and sweep once the directory object differs from the one last judged, or once a
  revocation or departure it names comes due) purges them, each with a ``purged`` audit entry
  and a ``purge`` sender event, so the sender is told: those signed by a now-revoked sign key
  whose signature no longer stands (``check_signature_time`` at the gateway's ``accepted_at``:
  every one when the compromise time is unknown, those accepted from ``compromised_since`` on
  otherwise) and those addressed to a partner that has left (``left_at`` passed). Messages a
  leaving partner sent before ``left_at`` stay deliverable: their signatures stand.
* A revoked ``token`` key voids the registered tokens it signed from its compromise time on
  (every one when that is unknown; judged at the gateway's ``registered_at``, as
  ``token.check_token_status`` does): ``judge_queue`` purges the undelivered messages under
  those tokens at the same point as those of a revoked sign key (reason
  ``token_issuer_key_compromised``). Queued messages to a revoked ``encrypt`` key are not
  purged: they are handed only to the recipient over its own mTLS, which still holds the private
  key; new ones are refused (``recipient_key_invalid``).
* **A partner's own key revocation** (``record_key_revocation``, docs/adr/0011): a statement
  signed by another usable sign key of the same partner (``keys.revocation``), carried in by
  any partner, is verified against the last verified directory with the overlay, stored with a
  ``key_revoked`` audit entry, and laid over every directory the relay judges by from then on
  (``keys.revocation.with_revocations``: the earliest revocation and the widest compromise
  window win, so no later directory undoes it). The queue is judged at once. The same
  statement again returns the recorded row. Replicas read every recorded statement from the
  store at most ``REVOCATION_POLL_S`` apart (and at start-up), and judge their queue again
  when the set grew; an acceptance racing a statement recorded on this replica is refused
  inside the store transaction (``_token_check`` sees the statement before it is committed).
* Refusals of approach registration and revocation are counted and audited too: the sender is
  the TLS partner; the token id is recorded only once the token's signature verified, or, for a
  revocation, once the token is found registered.
* Times: one ``now`` per operation from the injected ``Clock``; nothing reads the clock below.
* An expired directory stops new acceptances (``directory_expired``) but never delivery:
  authentication, inboxes, receipts and revocations use the last verified directory.
* ``refresh_metrics`` sets every expiry gauge from real state: key expiry per (partner, use) is
  the earliest end (``retire_at`` or a coming ``revoked_at``) among its current (active or
  retiring) keys — a key with neither has no expiry and adds no series; certificate expiry is
  the earliest ``notAfter`` among the client certificates a partner presented within
  ``CERTIFICATE_SEEN_WINDOW_S`` (recorded when the relay identifies the caller), plus the
  gateway's own (``note_own_certificate``); token expiry per coordinator is the earliest
  ``valid_until`` among its active tokens (the store); directory expiry per TUF role comes from
  the directory source's signed metadata.
"""

# The decision is a ladder of checks inside one ``try``: each rung raises a ``Refusal`` that
# is caught once, counted and audited. Moving each ``raise`` into a helper (TRY301) would hide
# the order DESIGN.md fixes.
# ruff: noqa: TRY301

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, TypeVar, runtime_checkable

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.clock import Clock
from gateway.config import LimitsSettings
from gateway.errors import GatewayError, GatewayReason
from gateway.metrics import UNKNOWN_SENDER, GatewayMetrics, QueueStats
from gateway.protocol.auditentry import (
    AuditDecision,
    AuditEntry,
    AuditEntryError,
    entry_leaf,
    seal_entry,
)
from gateway.protocol.envelope import (
    DecodedEnvelope,
    EnvelopeError,
    EnvelopeReason,
    Header,
    decode_envelope,
    verify_signature,
)
from gateway.protocol.errors import PolicyError, ProtocolError, TokenError
from gateway.protocol.merkle import leaf_hash
from gateway.protocol.policy import Policy, policy_from_directory
from gateway.protocol.reasons import Reason
from gateway.protocol.receipts import (
    DeliveryReceipt,
    Rejection,
    verify_delivery_receipt,
    verify_rejection,
)
from gateway.protocol.signed import SignedObject
from gateway.protocol.token import (
    ApproachToken,
    TokenStatus,
    check_token_status,
    check_use,
    decode_signed,
    encode_signed,
    token_hash,
    verify_revocation,
    verify_token_signature,
)
from gateway.ratelimit import RateLimiter
from gateway.signer import decode_signed_object
from gateway.store.base import (
    AuditRecord,
    Delivery,
    DeliveryState,
    KeyRevocationRow,
    MessageStatus,
    PendingDelivery,
    Purged,
    SenderEventRow,
    Store,
    Submission,
    TokenRow,
)
from gateway.store.errors import DuplicateMessageError, StoreError
from keys import (
    CertificateError,
    Directory,
    DirectoryError,
    DirectoryKey,
    KeysReason,
    KeyState,
    KeyStateError,
    KeyUse,
    Partner,
    check_usable,
)
from keys.errors import BadSignatureError, KeysError
from keys.keypair import spki_kid
from keys.revocation import (
    KeyRevocation,
    RevocationError,
    RevocationRefusal,
    decode_revocation,
    encode_revocation,
    statement_hash,
    with_revocations,
)
from keys.revocation import verify_revocation as verify_key_revocation
from keys.signed_directory import DirectoryBundle, DirectoryExpiry
from keys.state import check_signature_time
from keys.tlsidentity import identify_peer

logger = logging.getLogger("gateway.relay")

_T = TypeVar("_T")

# A header names "no approach token" with the all-zero token id: the field is required by the
# header schema, and a real token id is 128 random bits.
NO_TOKEN_ID: Final = "0" * 32
# Audit entries name a caller whose certificate maps to no partner by its tls kid; without a
# certificate at all (never let through by the TLS context) by this marker.
NO_CERTIFICATE: Final = "no-certificate"
# How many verified token signatures to keep (one per live approach is plenty).
TOKEN_CACHE_SIZE: Final = 4096
# Most client certificates whose identity is remembered within one second (see
# ``_IdentityMemo``); more callers than this in one second are simply identified again.
IDENTITY_MEMO_SIZE: Final = 1024
# A partner's client certificate counts for the certificate expiry gauge while it was presented
# within this window (adapters long-poll, so a certificate in use is seen every few seconds);
# a certificate replaced by a renewed one drops out of the gauge an hour after its last use.
CERTIFICATE_SEEN_WINDOW_S: Final = 3600
# Seconds (monotonic) between reads of the recorded key revocation statements from the store:
# how late a replica learns a statement another replica recorded. A message it accepts
# meanwhile under the revoked key is void by the statement's own times and purged once learnt.
REVOCATION_POLL_S: Final = 1.0
# Why a self-revocation statement is refused, by ``keys.revocation`` refusal; every other
# refusal means the signer is not another usable sign key of the same partner.
_STATEMENT_REASONS: Final = {
    RevocationRefusal.UNKNOWN_KEY: Reason.KEY_REVOCATION_UNKNOWN_KEY,
    RevocationRefusal.BAD_TIMES: Reason.KEY_REVOCATION_MALFORMED,
}

_ENVELOPE_REASONS: Final = {
    EnvelopeReason.TOO_LARGE: Reason.ENVELOPE_TOO_LARGE,
    EnvelopeReason.MALFORMED: Reason.MALFORMED_ENVELOPE,
    EnvelopeReason.STANZA_LENGTH: Reason.MALFORMED_ENVELOPE,
    EnvelopeReason.UNKNOWN_VERSION: Reason.UNKNOWN_VERSION,
    EnvelopeReason.UNKNOWN_SUITE: Reason.UNKNOWN_SUITE,
    # An unknown sender key is as opaque as a bad signature to the outside.
    EnvelopeReason.UNKNOWN_SENDER_KEY: Reason.BAD_SIGNATURE,
    EnvelopeReason.BAD_SIGNATURE: Reason.BAD_SIGNATURE,
}
_KEY_REASONS: Final = {
    KeysReason.KEY_NOT_YET_ACTIVE: Reason.KEY_NOT_YET_ACTIVE,
    KeysReason.KEY_RETIRED: Reason.KEY_RETIRED,
    KeysReason.KEY_REVOKED: Reason.KEY_REVOKED,
    KeysReason.KEY_COMPROMISED: Reason.KEY_COMPROMISED,
}


class Refusal(GatewayError):
    """The relay refused a request. ``code`` is the wire reason (``reasons.Reason``), which the
    API renders as problem+json; ``retry_after`` (seconds) is set for ``rate_limited``."""

    def __init__(self, code: Reason, detail: str, *, retry_after: int | None = None) -> None:
        super().__init__(f"{code.value}: {detail}", GatewayReason.REFUSED)
        self.code = code
        self.detail = detail
        self.retry_after = retry_after


class _RefusedUnderToken(Refusal):
    """A refusal by a check after the header's token was found registered with the header's
    hash (``Relay._check_under_token``). Only such a refusal's audit entry records the
    header's subjects: it is filed under that registered token, whose retention deadline
    deletes it (``Store.apply_retention``). Any other refusal names no registered token, so
    nothing would ever delete pseudonyms recorded in it."""


class DirectorySource(Protocol):
    """Where the relay gets the key directory."""

    def current(self, now: int) -> Directory:
        """The verified directory if still valid at ``now``; ``DirectoryError`` if expired."""
        ...

    def last(self) -> Directory:
        """The last verified directory, expired or not (authentication and delivery)."""
        ...


@runtime_checkable
class PublishableDirectorySource(DirectorySource, Protocol):
    """A ``DirectorySource`` that takes a newly published bundle while the gateway runs
    (``POST /v1/directory``; ``gateway.server.TrustedDirectorySource``)."""

    def publish(self, bundle: DirectoryBundle, now: int) -> Directory:
        """Verify ``bundle`` against the trusted state, persist it, and serve it from now on.
        Raises ``DirectoryError`` (rollback, freeze, below threshold, …) and changes nothing
        then; ``OSError`` if it cannot be persisted (nothing switched either)."""
        ...


class StaticDirectorySource:
    """A fixed directory valid until ``expires_at`` (tests, and a gateway without refresh)."""

    def __init__(self, directory: Directory, expires_at: int | None = None) -> None:
        self.directory = directory
        self.expires_at = expires_at

    def current(self, now: int) -> Directory:
        if self.expires_at is not None and now >= self.expires_at:
            raise DirectoryError("the directory has expired", KeysReason.DIRECTORY_EXPIRED)
        return self.directory

    def last(self) -> Directory:
        return self.directory


class RelayStore(Store, Protocol):
    """The store interface plus the in-process long-poll wake-up."""

    async def wait(self, party: str, wait_s: float) -> None: ...


@dataclass(frozen=True)
class SubmitResult:
    message_id: str
    receipt: bytes
    leaf_index: int
    first_time: bool


@dataclass(frozen=True)
class Inbox:
    deliveries: list[Delivery]
    events: list[SenderEventRow]


@dataclass(frozen=True)
class ReceiptOutcome:
    finished: int
    already_finished: int
    acked: int


@dataclass(frozen=True)
class Registered:
    row: TokenRow
    first_time: bool


@dataclass(frozen=True)
class RecordedRevocation:
    """A key revocation statement as recorded (``first_time``: by this request), and how many
    undelivered messages judging the queue purged then."""

    row: KeyRevocationRow
    statement: KeyRevocation
    first_time: bool
    purged: int = 0


def _merged_revocations(
    statements: Sequence[KeyRevocation],
) -> dict[str, tuple[int, int | None]]:
    """kid -> (earliest ``revoked_at``, compromise time: ``None`` if any statement says unknown,
    else the earliest)."""
    out: dict[str, tuple[int, int | None]] = {}
    unknown: set[str] = set()
    for st in statements:
        if st.compromised_since is None:
            unknown.add(st.kid)
        old = out.get(st.kid)
        if old is None:
            out[st.kid] = (st.revoked_at, st.compromised_since)
            continue
        since = old[1] if st.compromised_since is None else st.compromised_since
        if old[1] is not None and since is not None:
            since = min(old[1], since)
        out[st.kid] = (min(old[0], st.revoked_at), since)
    return {kid: (at, None if kid in unknown else since) for kid, (at, since) in out.items()}


def audit_leaf_hash(record: AuditRecord) -> bytes:
    """The Merkle leaf hash of a stored audit record (``leaf_hash(entry_leaf(...))``)."""
    return leaf_hash(entry_leaf(record.entry, record.salt))


def _record(entry: AuditEntry, token_id: str | None) -> AuditRecord:
    try:
        sealed = seal_entry(entry)
    except AuditEntryError as exc:
        raise Refusal(Reason.AUDIT_UNAVAILABLE, f"audit entry: {exc}") from None
    return AuditRecord(entry=sealed.entry_bytes, salt=sealed.salt, token_id=token_id)


def _trace(header: Header) -> str:
    return header.trace_id.split("-")[1]


def _tls_identity(cert_der: bytes | None) -> str:
    """The audit name of an unidentified caller: the tls kid of its certificate's key."""
    if not cert_der:
        return NO_CERTIFICATE
    try:
        certificate = x509.load_der_x509_certificate(cert_der)
    except ValueError:
        return NO_CERTIFICATE
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return spki_kid(spki)


class _IdentityMemo:
    """Results of ``identify_peer`` for the current directory and the current second only.

    ``identify_peer(cert_der, directory, now)`` is a pure function of its three arguments (the
    certificate bytes, an immutable directory, the second ``now``): this memo answers only a
    call with exactly the same three, so it returns what the call would return and skips no
    check. A new directory (another object, whatever its version) or a new second empties it;
    refusals are never kept. See docs/adr/0008-peer-identity-memo.md.
    """

    def __init__(self) -> None:
        self._directory: Directory | None = None
        self._version = -1
        self._now = -1
        self._partners: dict[bytes, Partner] = {}

    def get(self, cert_der: bytes, directory: Directory, now: int) -> Partner | None:
        if (
            directory is not self._directory
            or directory.version != self._version
            or now != self._now
        ):
            self._partners.clear()
            self._directory = directory
            self._version = directory.version
            self._now = now
            return None
        return self._partners.get(cert_der)

    def put(self, cert_der: bytes, directory: Directory, now: int, partner: Partner) -> None:
        # Bounded: one entry per distinct client certificate seen within one second.
        if (
            directory is self._directory
            and directory.version == self._version
            and now == self._now
            and len(self._partners) < IDENTITY_MEMO_SIZE
        ):
            self._partners[cert_der] = partner


def _not_after(certificate: bytes) -> int | None:
    """``notAfter`` of a DER or PEM certificate as Unix seconds; ``None`` if it does not parse."""
    try:
        if certificate.lstrip().startswith(b"-----BEGIN"):
            cert = x509.load_pem_x509_certificate(certificate)
        else:
            cert = x509.load_der_x509_certificate(certificate)
    except ValueError:
        return None
    return int(cert.not_valid_after_utc.timestamp())


class _PeerCertificates:
    """``notAfter`` of the client certificates each partner presented, for the certificate
    expiry gauge. Recorded when the relay identifies a caller (at most once per certificate and
    second: the identity memo answers the rest); a certificate not presented for
    ``CERTIFICATE_SEEN_WINDOW_S`` is forgotten at the next ``earliest``. Bounded by the
    partners' certificates in use, each of which chains to the covenant CA."""

    def __init__(self) -> None:
        # partner -> certificate DER -> (notAfter, last seen).
        self._seen: dict[str, dict[bytes, tuple[int, int]]] = {}

    def record(self, partner: str, cert_der: bytes, now: int) -> None:
        certificates = self._seen.setdefault(partner, {})
        known = certificates.get(cert_der)
        if known is not None:
            certificates[cert_der] = (known[0], now)
            return
        not_after = _not_after(cert_der)
        if not_after is not None:
            certificates[cert_der] = (not_after, now)

    def earliest(self, now: int) -> dict[str, int]:
        """Partner -> the earliest ``notAfter`` among its certificates seen in the window."""
        result: dict[str, int] = {}
        for partner, certificates in list(self._seen.items()):
            for der, (_, seen) in list(certificates.items()):
                if now - seen > CERTIFICATE_SEEN_WINDOW_S:
                    del certificates[der]
            if certificates:
                result[partner] = min(not_after for not_after, _ in certificates.values())
            else:
                del self._seen[partner]
        return result


def _directory_expiry(source: object) -> dict[str, float]:
    """Role -> expiry (Unix seconds) of the signed directory behind ``source``: its own
    ``expiry`` (a ``DirectoryExpiry``, attribute or method), else that of the
    ``TrustedDirectory`` it holds (``gateway.server.TrustedDirectorySource._trusted``); empty
    for a source without signed metadata (``StaticDirectorySource``)."""
    for holder in (source, getattr(source, "_trusted", None)):
        if holder is None:
            continue
        try:
            expiry = getattr(holder, "expiry", None)
            if callable(expiry):
                expiry = expiry()
        except DirectoryError:  # no directory verified yet
            return {}
        if isinstance(expiry, DirectoryExpiry):
            return {
                "root": float(expiry.root),
                "targets": float(expiry.targets),
                "snapshot": float(expiry.snapshot),
                "timestamp": float(expiry.timestamp),
            }
    return {}


class Relay:
    """The relay service's decisions over one store, one directory source and one clock."""

    def __init__(
        self,
        *,
        store: RelayStore,
        directories: DirectorySource,
        limits: LimitsSettings,
        metrics: GatewayMetrics,
        clock: Clock,
    ) -> None:
        self.store = store
        self.directories = directories
        self.limits = limits
        self.metrics = metrics
        self.clock = clock
        self.rate = RateLimiter(limits.rate_per_s, limits.rate_burst)
        # Verified token signatures by token hash: the one cache the design allows. Used by the
        # event loop (registration, revocation) and by the store's writer thread (the token
        # check runs inside the accept transaction), hence the lock. A token past its
        # retention deadline is never served from it and is dropped by ``sweep_expired``: its
        # pseudonyms must not outlive the deadline in memory either (docs/privacy.md).
        self._token_cache: OrderedDict[str, ApproachToken] = OrderedDict()
        self._token_cache_lock = threading.Lock()
        self._policies: dict[str, Policy] = {}
        self._hashed_directory: Directory | None = None
        self._hashed_policy = ""
        self._identities = _IdentityMemo()
        self._peer_certificates = _PeerCertificates()
        self._own_not_after: int | None = None
        # The directory whose voided messages were last purged (``judge_queue``), and when a
        # revocation or departure it names comes due (judge again then).
        self._judged: Directory | None = None
        self._judge_again_at: int | None = None
        self._judging = asyncio.Lock()
        # Partners' own key revocation statements (docs/adr/0011): those recorded (by any
        # replica, as last read from the store), by statement hash; those this replica is
        # recording right now; and the directory view with the recorded ones laid over it.
        self._revocations: dict[str, tuple[KeyRevocationRow, KeyRevocation]] = {}
        self._recording: dict[str, KeyRevocation] = {}
        # kid -> (revoked_at, compromised_since) over recorded and recording statements: what
        # the accept transaction checks the sender key against (replaced, never mutated).
        self._revoked_kids: dict[str, tuple[int, int | None]] = {}
        self._revocations_version = 0
        self._revocations_read_at: float | None = None
        self._view_base: Directory | None = None
        self._view_version = -1
        self._view: Directory | None = None

    # -- the directory, with partners' own revocations laid over it ----------------------

    def _overlaid(self, directory: Directory) -> Directory:
        """``directory`` with every recorded key revocation statement laid over it (the same
        object while none is recorded, and one view per directory and statement set)."""
        if not self._revocations:
            return directory
        if directory is not self._view_base or self._view_version != self._revocations_version:
            self._view = with_revocations(directory, [st for _, st in self._revocations.values()])
            self._view_base = directory
            self._view_version = self._revocations_version
        assert self._view is not None
        return self._view

    def current_directory(self, now: int) -> Directory:
        """The directory the relay decides by: ``directories.current(now)`` with the overlay.
        Raises ``DirectoryError`` when it has expired."""
        return self._overlaid(self.directories.current(now))

    def last_directory(self) -> Directory:
        """The last verified directory with the overlay (authentication, delivery, purges)."""
        return self._overlaid(self.directories.last())

    def _adopt(self, rows: Sequence[KeyRevocationRow]) -> bool:
        """Take recorded statements into the overlay; whether any was new."""
        new = False
        for row in rows:
            if row.statement_hash in self._revocations:
                continue
            try:
                statement = decode_revocation(row.statement)
            except KeysError:  # verified when recorded; a damaged row must not stop the relay
                logger.warning("key_revocation_unreadable", extra={"partner": row.partner})
                continue
            self._revocations[row.statement_hash] = (row, statement)
            new = True
        if new:
            self._revocations_version += 1
            self._remerge()
        return new

    def _remerge(self) -> None:
        self._revoked_kids = _merged_revocations(
            [st for _, st in self._revocations.values()] + list(self._recording.values())
        )

    async def refresh_key_revocations(self) -> bool:
        """Read every recorded statement from the store (other replicas' too) into the overlay;
        whether any was new. Raises ``StoreError``."""
        self._revocations_read_at = self.clock.monotonic()
        return self._adopt(await self.store.key_revocations())

    async def _fresh_revocations(self) -> None:
        """``refresh_key_revocations`` when the last read is ``REVOCATION_POLL_S`` old (or
        there was none yet). A store failure leaves the overlay as it was, retried next poll."""
        read_at = self._revocations_read_at
        if read_at is not None and self.clock.monotonic() - read_at < REVOCATION_POLL_S:
            return
        try:
            await self.refresh_key_revocations()
        except StoreError as exc:
            self.metrics.store_error("key_revocations")
            logger.warning("key_revocations_unreadable", extra={"error": exc})

    def _check_sender_not_revoked(self, header: Header, now: int) -> None:
        """Inside the accept transaction: the sender key is not revoked by a statement recorded
        (or being recorded) since the signature was checked outside it."""
        revoked = self._revoked_kids.get(header.sender_kid)
        if revoked is None:
            return
        revoked_at, since = revoked
        if since is not None and now >= since:
            raise Refusal(Reason.KEY_COMPROMISED, "the sender key is compromised since before now")
        if now >= revoked_at:
            raise Refusal(Reason.KEY_REVOKED, "the sender key is revoked")

    # -- identity ------------------------------------------------------------------------

    def authenticate(self, cert_der: bytes | None, now: int) -> Partner:
        """The partner the TLS peer certificate names (``unknown_sender`` if none)."""
        if not cert_der:
            raise Refusal(Reason.UNKNOWN_SENDER, "no client certificate")
        try:
            directory = self.last_directory()
            known = self._identities.get(cert_der, directory, now)
            if known is not None:
                return known
            partner = identify_peer(cert_der, directory, now)
        except CertificateError as exc:
            raise Refusal(Reason.UNKNOWN_SENDER, str(exc)) from None
        except DirectoryError as exc:
            raise Refusal(Reason.DIRECTORY_EXPIRED, str(exc)) from None
        self._identities.put(cert_der, directory, now, partner)
        self._peer_certificates.record(partner.id, cert_der, now)
        return partner

    def note_own_certificate(self, certificate: bytes) -> None:
        """The gateway's own TLS server certificate (PEM or DER), for the certificate expiry
        gauge under the gateway's id. Call at start-up and whenever the certificate is
        reloaded; a certificate that does not parse clears it."""
        self._own_not_after = _not_after(certificate)

    # -- the relay decision --------------------------------------------------------------

    async def submit(self, body: bytes | None, cert_der: bytes | None) -> SubmitResult:
        """Decide on one envelope (``body`` None: it exceeded the size limit unread).

        Returns the acceptance receipt (the first one again for a retry of the same bytes).
        Raises ``Refusal``. The refusal is counted and audited before it is raised.
        """
        started = time.perf_counter()
        await self._fresh_revocations()
        now = self.clock.now()
        sender_label = UNKNOWN_SENDER
        # The audit name of a caller refused before authentication; worked out only then (it
        # parses the certificate, which an authenticated caller does not need again).
        tls_identity: str | None = None
        header_hash: str | None = None
        try:
            partner = self.authenticate(cert_der, now)
            sender_label = tls_identity = partner.id
            if body is None or len(body) > self.limits.max_envelope_bytes:
                raise Refusal(Reason.ENVELOPE_TOO_LARGE, "envelope exceeds the size limit")
            retry_after = self.rate.take(partner.id, self.clock.monotonic())
            if retry_after:
                raise Refusal(
                    Reason.RATE_LIMITED, "submission rate exceeded", retry_after=retry_after
                )
            decoded = self._decode(body)
            header = decoded.header
            header_hash = decoded.header_hash.hex()
            if len(header.recipients) > self.limits.max_recipients:
                raise Refusal(Reason.TOO_MANY_RECIPIENTS, "too many recipients")
            try:
                directory = self.current_directory(now)
            except DirectoryError as exc:
                raise Refusal(Reason.DIRECTORY_EXPIRED, str(exc)) from None
            if header.sender != partner.id:
                raise Refusal(
                    Reason.SENDER_MISMATCH, "the header's sender is not the TLS client's partner"
                )
            self._verify_signature(decoded, directory, now)
        except Refusal as refusal:
            entry = AuditEntry.unverified_refusal(
                now,
                tls_identity if tls_identity is not None else _tls_identity(cert_der),
                header_hash,
                refusal.code.value,
            )
            raise await self._refused(refusal, entry, None, sender_label) from None

        # From here on the header is the sender's: refusals record its metadata.
        self.metrics.observe_clock_offset(partner.id, float(now - header.created_at))
        try:
            if header.created_at > now + self.limits.clock_skew_s:
                raise Refusal(Reason.CREATED_IN_FUTURE, "created_at is beyond the clock skew")
            if header.expires_at <= now:
                raise Refusal(Reason.EXPIRED, "expires_at has passed")
            sub = Submission(
                message_id=header.message_id,
                sender=header.sender,
                recipients=tuple(r.partner for r in header.recipients),
                envelope=body,
                envelope_hash=_sha256_hex(body),
                header_hash=header_hash,
                token_id=header.token_id,
                message_type=header.message_type.value,
                subjects=tuple(header.subjects),
                policy_hash=self._policy_hash(directory),
                trace_id=header.trace_id,
                received_at=now,
                expires_at=header.expires_at,
            )
            # The audit record of an acceptance depends on nothing the transaction reads: it
            # is sealed here, on the event loop, and the check hands it over once every
            # transactional check passed (an error sealing it surfaces at that same point).
            sealed: AuditRecord | Refusal
            try:
                sealed = _record(
                    self._entry(header, header_hash, directory, now, None, with_subjects=True),
                    header.token_id,
                )
            except Refusal as failed:
                sealed = failed
            accepted = await self.store.accept(
                sub,
                lambda row: self._token_check(row, header, directory, now, sealed),
            )
        except DuplicateMessageError:
            duplicate = Refusal(Reason.DUPLICATE_ID, "message id already accepted with other bytes")
            entry = self._entry(
                header, header_hash, directory, now, duplicate.code, with_subjects=False
            )
            raise await self._refused(duplicate, entry, header) from None
        except StoreError as exc:
            self.metrics.store_error("accept")
            unavailable = Refusal(Reason.STORE_UNAVAILABLE, str(exc))
            entry = self._entry(
                header, header_hash, directory, now, unavailable.code, with_subjects=False
            )
            raise await self._refused(unavailable, entry, header) from None
        except Refusal as refusal:
            entry = self._entry(
                header,
                header_hash,
                directory,
                now,
                refusal.code,
                with_subjects=isinstance(refusal, _RefusedUnderToken),
            )
            raise await self._refused(refusal, entry, header) from None
        if accepted.first_time:
            self.metrics.accepted(partner.id, sub.recipients, sub.message_type)
            logger.info(
                "message_accepted",
                extra={
                    "sender": partner.id,
                    "message_id": sub.message_id,
                    "type": sub.message_type,
                    "count": len(sub.recipients),
                },
            )
        self.metrics.observe_accept(time.perf_counter() - started)
        return SubmitResult(
            sub.message_id, accepted.receipt, accepted.leaf_index, accepted.first_time
        )

    @staticmethod
    def _decode(body: bytes) -> DecodedEnvelope:
        try:
            return decode_envelope(body)
        except EnvelopeError as exc:
            raise Refusal(
                _ENVELOPE_REASONS.get(exc.reason, Reason.MALFORMED_ENVELOPE), str(exc)
            ) from None

    @staticmethod
    def _verify_signature(decoded: DecodedEnvelope, directory: Directory, now: int) -> None:
        # Compromise windows are judged at the gateway's receive time (DESIGN.md "Identities
        # and keys"): a key signs nothing more once its known compromise time has passed, even
        # while its ``revoked_at`` lies ahead; ``check_usable`` would call it usable then, and
        # once revoked only ``key_revoked``.
        try:
            key = directory.owned_key(decoded.header.sender, decoded.header.sender_kid, KeyUse.SIGN)
        except DirectoryError:
            key = None  # ``verify_signature`` refuses it with its own reason
        if key is not None and key.compromised_since is not None and now >= key.compromised_since:
            raise Refusal(Reason.KEY_COMPROMISED, "the sender key is compromised since before now")
        try:
            verify_signature(decoded, directory, at=now)
        except EnvelopeError as exc:
            code = _ENVELOPE_REASONS.get(exc.reason, Reason.BAD_SIGNATURE)
            if exc.reason is EnvelopeReason.SENDER_KEY_INVALID and exc.key_reason is not None:
                code = _KEY_REASONS.get(exc.key_reason, Reason.BAD_SIGNATURE)
            raise Refusal(code, str(exc)) from None

    def _token_check(
        self,
        row: TokenRow | None,
        header: Header,
        directory: Directory,
        now: int,
        sealed: AuditRecord | Refusal,
    ) -> AuditRecord:
        """The ``TokenCheck``: runs in the store's transaction, with the row as it sees it.
        Returns ``sealed``, the acceptance's audit record, once every check passed."""
        self._check_sender_not_revoked(header, now)
        if header.token_id == NO_TOKEN_ID:
            raise Refusal(Reason.NO_TOKEN, "the envelope names no approach token")
        if row is None:
            raise Refusal(Reason.TOKEN_NOT_REGISTERED, "the approach token is not registered")
        if header.token_hash != row.token_hash:
            raise Refusal(Reason.TOKEN_HASH_MISMATCH, "token hash differs from the registered one")
        try:
            self._check_under_token(row, header, directory, now)
        except Refusal as refusal:
            raise _RefusedUnderToken(refusal.code, refusal.detail) from None
        if isinstance(sealed, Refusal):
            raise sealed
        return sealed

    def _check_under_token(
        self, row: TokenRow, header: Header, directory: Directory, now: int
    ) -> None:
        """The checks once the header's token is found registered with the header's hash, in
        DESIGN.md's order (part of ``_token_check``). Raises ``Refusal``."""
        try:
            token = self._verified_token(row, directory)
            check_token_status(
                token,
                directory,
                now=now,
                status=TokenStatus(
                    registered_at=row.registered_at,
                    revoked_at=row.revoked_at,
                    superseded_by=row.superseded_by,
                ),
            )
            if header.expires_at > now + self.limits.message_lifetime_s:
                raise Refusal(Reason.EXPIRED, "expires_at lies beyond the message lifetime")
            check_use(
                token,
                self._policy(directory),
                directory,
                now=now,
                sender=header.sender,
                recipients=[r.partner for r in header.recipients],
                subjects=header.subjects,
                message_type=header.message_type,
                expires_at=header.expires_at,
            )
        except ProtocolError as exc:
            raise Refusal(exc.reason, str(exc)) from None
        # A partner that has left is neither sender nor recipient from ``left_at`` on
        # (protocol §5.3): to a sender it is no longer a partner, the same final
        # ``unknown_recipient`` as one the directory no longer lists. (A sender that has left
        # is refused as ``unknown_sender`` already, by its TLS identity.) Checked before the
        # recipients' keys, which ``keys.rotation.remove_partner`` retires at that same time:
        # the transient ``recipient_key_invalid`` would have the sender reseal for nothing.
        for entry in header.recipients:
            if _has_left(directory, entry.partner, now):
                raise Refusal(Reason.UNKNOWN_RECIPIENT, f"{entry.partner} has left the covenant")
        for entry in header.recipients:
            try:
                key = directory.owned_key(entry.partner, entry.kid, KeyUse.ENCRYPT)
                check_usable(key, now)
            except (DirectoryError, KeyStateError):
                raise Refusal(
                    Reason.RECIPIENT_KEY_INVALID,
                    f"the key for {entry.partner} is not a usable encrypt key",
                ) from None

    def _verified_token(self, row: TokenRow, directory: Directory) -> ApproachToken:
        with self._token_cache_lock:
            cached = self._token_cache.get(row.token_hash)
            if cached is not None:
                if cached.retention_until > self.clock.now():
                    self._token_cache.move_to_end(row.token_hash)
                    return cached
                del self._token_cache[row.token_hash]
        token = verify_token_signature(decode_signed(row.signed), directory)
        self._remember_token(row.token_hash, token)
        return token

    def _remember_token(self, token_hash: str, token: ApproachToken) -> None:
        """Keep a verified token (the least recently used goes first when full); a token past
        its retention deadline is not kept."""
        if token.retention_until <= self.clock.now():
            return
        with self._token_cache_lock:
            self._token_cache[token_hash] = token
            while len(self._token_cache) > TOKEN_CACHE_SIZE:
                self._token_cache.popitem(last=False)

    def forget_retained_tokens(self) -> int:
        """Drop every cached token whose retention deadline has passed; how many. Called by
        ``sweep_expired``, so pseudonyms leave memory within one sweep interval of the deadline
        even for a token nobody uses any more."""
        now = self.clock.now()
        with self._token_cache_lock:
            gone = [h for h, t in self._token_cache.items() if t.retention_until <= now]
            for digest in gone:
                del self._token_cache[digest]
        return len(gone)

    def _policy(self, directory: Directory) -> Policy:
        digest = self._policy_hash(directory)
        policy = self._policies.get(digest)
        if policy is None:
            try:
                policy = policy_from_directory(directory)
            except PolicyError as exc:
                raise Refusal(Reason.POLICY_INVALID, str(exc)) from None
            # One entry per policy version; a covenant changes its policy rarely.
            self._policies = {digest: policy}
        return policy

    def _policy_hash(self, directory: Directory) -> str:
        """``directory.policy_hash``, hashed once per directory object rather than on every
        use (a ``Directory`` and its contents are immutable; a new version is a new object)."""
        if self._hashed_directory is not directory:
            self._hashed_policy = directory.policy_hash
            self._hashed_directory = directory
        return self._hashed_policy

    def _entry(
        self,
        header: Header,
        header_hash: str,
        directory: Directory,
        now: int,
        reason: Reason | None,
        *,
        with_subjects: bool,
    ) -> AuditEntry:
        """The entry of a decision on a verified header. ``with_subjects`` only where the
        entry is filed under a token registered with the header's hash (an acceptance, a
        ``_RefusedUnderToken``): retention deletes an entry only under its registered token,
        so pseudonyms anywhere else would stay for good (DESIGN.md "Audit log")."""
        return AuditEntry(
            time=now,
            decision=AuditDecision.ACCEPTED if reason is None else AuditDecision.REFUSED,
            reason=None if reason is None else reason.value,
            sender=header.sender,
            recipients=tuple(r.partner for r in header.recipients),
            message_type=header.message_type,
            token_id=header.token_id,
            subjects=tuple(header.subjects) if with_subjects else (),
            policy_hash=self._policy_hash(directory),
            header_hash=header_hash,
            trace_id=_trace(header),
        )

    async def _refused(
        self,
        refusal: Refusal,
        entry: AuditEntry,
        header: Header | None,
        sender: str | None = None,
        token_id: str | None = None,
    ) -> Refusal:
        """Count and audit ``refusal``; return what to raise (``audit_unavailable`` when the
        entry cannot be written). ``token_id`` files the entry under a token when there is no
        header (registration and revocation)."""
        sender_label = sender if sender is not None else (header.sender if header else None)
        self.metrics.refused(refusal.code.value, sender_label or UNKNOWN_SENDER)
        token_id = header.token_id if header is not None else token_id
        try:
            await self.store.record_audit(_record(entry, token_id))
        except (StoreError, Refusal) as exc:
            self.metrics.audit_error()
            logger.warning("audit_failed", extra={"reason": refusal.code.value, "error": exc})
            if refusal.code is Reason.STORE_UNAVAILABLE:
                return refusal
            return Refusal(Reason.AUDIT_UNAVAILABLE, "the refusal could not be audited")
        logger.info(
            "message_refused",
            extra={"reason": refusal.code.value, "sender": sender_label or UNKNOWN_SENDER},
        )
        return refusal

    # -- approaches ----------------------------------------------------------------------

    async def register_token(self, body: bytes, partner: Partner) -> Registered:
        """Register a signed approach token; only its coordinating municipality may.

        Idempotent for the same token bytes; another token under a registered id, or a token
        superseding one already superseded, is ``token_conflict``.
        """
        await self._fresh_revocations()
        now = self.clock.now()
        token_id: str | None = None  # recorded in a refusal's entry once the signature verified
        try:
            directory = self.current_directory(now)
        except DirectoryError as exc:
            raise await self._approach_refused(
                Refusal(Reason.DIRECTORY_EXPIRED, str(exc)), partner, now, token_id
            ) from None
        try:
            signed = decode_signed(body)
            token = verify_token_signature(signed, directory)
            token_id = token.token_id
            if token.coordinator != partner.id:
                raise Refusal(
                    Reason.TOKEN_ISSUER_NOT_COORDINATING_MUNICIPALITY,
                    "only the coordinating municipality registers its token",
                )
            check_token_status(token, directory, now=now, status=TokenStatus(registered_at=now))
        except ProtocolError as exc:
            raise await self._approach_refused(
                Refusal(exc.reason, str(exc)), partner, now, token_id
            ) from None
        except Refusal as refusal:
            raise await self._approach_refused(refusal, partner, now, token_id) from None
        digest = token_hash(signed)
        try:
            existing = await self.store.get_token(token.token_id)
            if existing is not None:
                if existing.token_hash != digest:
                    raise Refusal(Reason.TOKEN_CONFLICT, "another token has this id")
                return Registered(existing, first_time=False)
            if token.supersedes is not None:
                old = await self.store.get_token(token.supersedes)
                if old is None:
                    raise Refusal(
                        Reason.TOKEN_NOT_REGISTERED, "the superseded token is not registered"
                    )
                if old.coordinator != token.coordinator or old.superseded_by is not None:
                    raise Refusal(Reason.TOKEN_CONFLICT, "the superseded token cannot be replaced")
            row = TokenRow(
                token_id=token.token_id,
                coordinator=token.coordinator,
                token_hash=digest,
                signed=encode_signed(signed),
                valid_until=token.valid_until,
                retention_until=token.retention_until,
                registered_at=now,
                supersedes=token.supersedes,
            )
            audit = _record(
                AuditEntry(
                    time=now,
                    decision=AuditDecision.REGISTERED,
                    sender=partner.id,
                    recipients=tuple(sorted(token.participants)),
                    token_id=token.token_id,
                    subjects=tuple(sorted(token.subject_pseudonyms)),
                    policy_hash=token.policy_hash,
                ),
                token.token_id,
            )
            stored = await self.store.register_token(row, audit)
        except StoreError as exc:
            self.metrics.store_error("register_token")
            raise await self._approach_refused(
                Refusal(Reason.STORE_UNAVAILABLE, str(exc)), partner, now, token_id
            ) from None
        except Refusal as refusal:
            raise await self._approach_refused(refusal, partner, now, token_id) from None
        if stored.token_hash != digest:
            raise await self._approach_refused(
                Refusal(Reason.TOKEN_CONFLICT, "another token has this id"), partner, now, token_id
            )
        self._remember_token(digest, token)
        logger.info("token_registered", extra={"partner": partner.id})
        return Registered(stored, first_time=stored.registered_at == now and stored == row)

    async def revoke_token(self, token_id: str, body: bytes, partner: Partner) -> list[Purged]:
        """Revoke a registered token with its coordinator's signed revocation; purge its
        pending and leased deliveries (each becomes a ``purge`` sender event).

        Uses the last verified directory: a revocation only ever narrows what is relayed, so
        an expired directory must not hold it up.
        """
        now = self.clock.now()
        directory = self.last_directory()
        # The path's token id is recorded in a refusal's entry only once it names a token.
        registered_id: str | None = None
        try:
            row = await self.store.get_token(token_id)
            if row is None:
                raise Refusal(Reason.TOKEN_NOT_REGISTERED, "no such approach token")
            registered_id = row.token_id
            if row.coordinator != partner.id:
                raise Refusal(Reason.REVOCATION_NOT_ISSUER, "only the issuer revokes a token")
            try:
                signed = decode_signed(body)
                token = self._verified_token(row, directory)
                verify_revocation(signed, token, directory, now=now)
            except TokenError as exc:
                raise Refusal(exc.reason, str(exc)) from None
            if row.revoked_at is not None:
                return []
            audit = _record(
                AuditEntry(
                    time=now,
                    decision=AuditDecision.REVOKED,
                    sender=partner.id,
                    token_id=token_id,
                ),
                token_id,
            )
            purged = await self.store.revoke_token(token_id, now, encode_signed(signed), audit)
        except StoreError as exc:
            self.metrics.store_error("revoke_token")
            raise await self._approach_refused(
                Refusal(Reason.STORE_UNAVAILABLE, str(exc)), partner, now, registered_id
            ) from None
        except Refusal as refusal:
            raise await self._approach_refused(refusal, partner, now, registered_id) from None
        if purged:
            self.metrics.purged(Reason.TOKEN_REVOKED.value, len(purged))
        logger.info("token_revoked", extra={"partner": partner.id, "count": len(purged)})
        return purged

    async def approach(self, token_id: str, partner: Partner) -> tuple[TokenRow, ApproachToken]:
        """A registered token, for its participants only."""
        row = await self.store_call("get_token", self.store.get_token(token_id))
        if row is None:
            raise Refusal(Reason.TOKEN_NOT_REGISTERED, "no such approach token")
        try:
            token = self._verified_token(row, self.last_directory())
        except TokenError as exc:
            raise Refusal(exc.reason, str(exc)) from None
        if partner.id not in token.participants:
            raise Refusal(Reason.SENDER_NOT_PARTICIPANT, "not a participant of this approach")
        return row, token

    async def _approach_refused(
        self, refusal: Refusal, partner: Partner, now: int, token_id: str | None
    ) -> Refusal:
        """Count and audit a refused registration or revocation; return what to raise.

        The caller is the partner its TLS certificate names, so the entry records it as the
        sender; ``token_id`` only when authenticated (see ``register_token``, ``revoke_token``).
        """
        entry = AuditEntry(
            time=now,
            decision=AuditDecision.REFUSED,
            reason=refusal.code.value,
            sender=partner.id,
            token_id=token_id,
        )
        return await self._refused(refusal, entry, None, partner.id, token_id)

    # -- partners' own key revocations ---------------------------------------------------

    async def record_key_revocation(self, body: bytes, partner: Partner) -> RecordedRevocation:
        """Record a partner's own key revocation statement (``keys revoke --self``), carried in
        by ``partner`` (any partner may carry one: the statement authenticates itself), lay it
        over the directory from now on, and purge the queue it voids (module rules).

        Verified against the last verified directory with the overlay, so a key revoked by an
        earlier statement signs no further one; an expired directory does not hold it up (a
        revocation only narrows what is relayed). Idempotent: a statement already recorded is
        answered with its row, without being judged again. Raises ``Refusal``
        (``key_revocation_malformed``, ``key_revocation_unknown_key``,
        ``key_revocation_signer_invalid``, ``bad_revocation_signature``, ``store_unavailable``),
        counted and audited like a refused approach registration.
        """
        await self._fresh_revocations()
        now = self.clock.now()
        try:
            try:
                statement = decode_revocation(body)
            except KeysError as exc:
                raise Refusal(Reason.KEY_REVOCATION_MALFORMED, str(exc)) from None
            digest = statement_hash(statement)
            known = self._revocations.get(digest)
            if known is not None:
                return RecordedRevocation(known[0], known[1], first_time=False)
            self._check_statement(statement, self.last_directory(), now)
            row = KeyRevocationRow(
                statement_hash=digest,
                partner=statement.partner,
                kid=statement.kid,
                signing_kid=statement.signing_kid,
                revoked_at=statement.revoked_at,
                compromised_since=statement.compromised_since,
                statement=encode_revocation(statement),
                recorded_at=now,
                carried_by=partner.id,
            )
            audit = _record(
                AuditEntry(
                    time=now,
                    decision=AuditDecision.KEY_REVOKED,
                    sender=partner.id,
                    recipients=(statement.partner,),
                    header_hash=digest,
                ),
                None,
            )
            # Seen by the accept transaction from now on, so an acceptance under the key that
            # commits after this statement is refused there (``_check_sender_not_revoked``).
            self._recording[digest] = statement
            self._remerge()
            try:
                stored, first_time = await self.store.record_key_revocation(row, audit)
            finally:
                del self._recording[digest]
                self._remerge()
            self._adopt([stored])
        except StoreError as exc:
            self.metrics.store_error("record_key_revocation")
            logger.warning("key_revocation_unrecorded", extra={"error": exc})
            raise await self._approach_refused(
                Refusal(Reason.STORE_UNAVAILABLE, str(exc)), partner, now, None
            ) from None
        except Refusal as refusal:
            raise await self._approach_refused(refusal, partner, now, None) from None
        logger.info("key_revoked", extra={"partner": statement.partner, "sender": partner.id})
        try:
            purged = await self.judge_queue()
        except StoreError as exc:  # judged again before the next lease or sweep
            logger.warning("queue_judgement_failed", extra={"error": exc})
            purged = []
        return RecordedRevocation(stored, statement, first_time, len(purged))

    def _check_statement(self, statement: KeyRevocation, directory: Directory, now: int) -> None:
        try:
            directory.partner(statement.partner)
        except DirectoryError:
            raise Refusal(
                Reason.KEY_REVOCATION_UNKNOWN_KEY, "the statement names no partner of the directory"
            ) from None
        try:
            verify_key_revocation(statement, directory, now, skew_s=self.limits.clock_skew_s)
        except RevocationError as exc:
            code = _STATEMENT_REASONS.get(exc.refusal, Reason.KEY_REVOCATION_SIGNER_INVALID)
            raise Refusal(code, str(exc)) from None
        except BadSignatureError:
            raise Refusal(
                Reason.BAD_REVOCATION_SIGNATURE, "the statement's signature does not verify"
            ) from None

    async def key_revocations(self) -> list[RecordedRevocation]:
        """Every recorded key revocation statement (all replicas'), in recording order."""
        try:
            rows = await self.store.key_revocations()
        except StoreError as exc:
            self.metrics.store_error("key_revocations")
            logger.warning("key_revocations_unreadable", extra={"error": exc})
            raise Refusal(Reason.STORE_UNAVAILABLE, str(exc)) from None
        self._adopt(rows)
        return [
            RecordedRevocation(row, self._revocations[row.statement_hash][1], first_time=False)
            for row in rows
            if row.statement_hash in self._revocations
        ]

    def _count(self, refusal: Refusal, partner: Partner) -> Refusal:
        self.metrics.refused(refusal.code.value, partner.id)
        return refusal

    # -- delivery ------------------------------------------------------------------------

    async def inbox(self, partner: Partner, wait_s: float, limit: int) -> Inbox:
        """Lease up to ``limit`` deliveries and sender events; wait up to ``wait_s`` (real
        seconds, capped by ``max_wait_s``) for something to arrive."""
        limit = max(1, min(limit, self.limits.max_batch))
        wait_s = max(0.0, min(wait_s, float(self.limits.max_wait_s)))
        await self._judge_queue_quietly()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            now = self.clock.now()
            deliveries = await self.store_call(
                "claim", self.store.claim(partner.id, limit, now, self.limits.lease_s)
            )
            events = await self.store_call(
                "events", self.store.events(partner.id, limit, now, self.limits.lease_s)
            )
            remaining = deadline - loop.time()
            if deliveries or events or remaining <= 0:
                break
            await self.store.wait(partner.id, remaining)
        if deliveries:
            self.metrics.delivered(partner.id, len(deliveries))
        return Inbox(deliveries, events)

    async def receipts(
        self,
        partner: Partner,
        receipts: Sequence[bytes],
        rejections: Sequence[bytes],
        acks: Sequence[int],
    ) -> ReceiptOutcome:
        """Verify every signed receipt and rejection first (nothing is applied if one fails),
        then end those deliveries and acknowledge sender events.

        A receipt must be signed by the caller, name the caller as recipient, and name a
        message the caller is a recipient of with its header hash. One for a delivery already
        ended is counted in ``already_finished`` (a retry after a lost answer).
        """
        await self._fresh_revocations()
        now = self.clock.now()
        directory = self.last_directory()
        verified: list[tuple[DeliveryState, bytes, DeliveryReceipt | Rejection]] = []
        for raw, state in [(r, DeliveryState.DELIVERED) for r in receipts] + [
            (r, DeliveryState.REJECTED) for r in rejections
        ]:
            try:
                signed = decode_signed_object(raw)
            except msgspec.DecodeError:
                raise self._count(
                    Refusal(Reason.BAD_RECEIPT_SIGNATURE, "not a signed object"), partner
                ) from None
            verified.append(
                (state, raw, self._verify_receipt(signed, state, directory, partner, now))
            )
        # The lookups (and below the finishes) are issued together, so that the store's group
        # commit takes them in one batch instead of one commit per receipt; each is still its
        # own operation, checked and applied exactly as one at a time.
        statuses = await asyncio.gather(
            *(
                self.store_call("message_status", self.store.message_status(obj.message_id))
                for _state, _raw, obj in verified
            )
        )
        work: list[tuple[DeliveryState, str, bytes, MessageStatus, str | None]] = []
        for (state, raw, obj), status in zip(verified, statuses, strict=True):
            if status is None:
                raise self._count(Refusal(Reason.UNKNOWN_MESSAGE, "no such message"), partner)
            if partner.id not in {r.recipient for r in status.recipients}:
                raise self._count(
                    Refusal(Reason.NOT_RECIPIENT, "not a recipient of this message"), partner
                )
            if obj.header_hash != status.header_hash:
                raise self._count(
                    Refusal(Reason.RECEIPT_MISMATCH, "receipt names another header hash"),
                    partner,
                )
            reason = obj.reason.value if isinstance(obj, Rejection) else None
            work.append((state, obj.message_id, raw, status, reason))
        finished = already = 0
        finishing = []
        for state, message_id, raw, status, reason in work:
            audit = _record(
                AuditEntry(
                    time=now,
                    decision=AuditDecision.DELIVERED
                    if state is DeliveryState.DELIVERED
                    else AuditDecision.REJECTED,
                    reason=reason,
                    sender=status.sender,
                    recipients=(partner.id,),
                    token_id=status.token_id or None,
                    header_hash=status.header_hash,
                ),
                status.token_id or None,
            )
            finishing.append(
                self.store_call(
                    "finish", self.store.finish(message_id, partner.id, state, raw, now, audit)
                )
            )
        outcomes = await asyncio.gather(*finishing, return_exceptions=True)
        for (_state, _id, _raw, status, reason), done in zip(work, outcomes, strict=True):
            if isinstance(done, BaseException):
                continue
            if not done:
                already += 1
                continue
            finished += 1
            if reason is None:
                self.metrics.acknowledged(partner.id)
                self.metrics.observe_accept_to_receipt(float(max(0, now - status.accepted_at)))
            else:
                self.metrics.rejected(partner.id, reason)
        failed = next((o for o in outcomes if isinstance(o, BaseException)), None)
        if failed is not None:
            raise failed
        acked = (
            await self.store_call("ack_events", self.store.ack_events(partner.id, acks))
            if acks
            else 0
        )
        return ReceiptOutcome(finished, already, acked)

    def _verify_receipt(
        self,
        signed: SignedObject,
        state: DeliveryState,
        directory: Directory,
        partner: Partner,
        now: int,
    ) -> DeliveryReceipt | Rejection:
        try:
            # The key is judged at the gateway's receive time, not a recipient-chosen one.
            if state is DeliveryState.DELIVERED:
                return verify_delivery_receipt(
                    signed, directory, now=now, recipient=partner.id, signed_at=now
                )
            return verify_rejection(signed, directory, now=now, recipient=partner.id, signed_at=now)
        except ProtocolError as exc:
            raise self._count(Refusal(exc.reason, str(exc)), partner) from None

    async def message_status(self, message_id: str, partner: Partner) -> MessageStatus:
        """State per recipient, for the message's sender only (others: ``unknown_message``,
        so the answer does not reveal whether an id exists)."""
        status = await self.store_call("message_status", self.store.message_status(message_id))
        if status is None or status.sender != partner.id:
            raise Refusal(Reason.UNKNOWN_MESSAGE, "no such message of yours")
        return status

    async def store_call(self, operation: str, awaitable: Awaitable[_T]) -> _T:
        """Await a store operation; a store failure becomes ``store_unavailable``."""
        try:
            return await awaitable
        except StoreError as exc:
            self.metrics.store_error(operation)
            raise Refusal(Reason.STORE_UNAVAILABLE, str(exc)) from None

    # -- sweepers ------------------------------------------------------------------------

    def _queue_judged(self, directory: Directory, now: int) -> bool:
        return directory is self._judged and (
            self._judge_again_at is None or now < self._judge_again_at
        )

    async def judge_queue(self) -> list[Purged]:
        """Purge the undelivered messages the current directory voids (module rules); each
        becomes a ``purge`` sender event and a ``purged`` audit entry. Does nothing while the
        directory is the one last judged and nothing it names has come due since. Raises
        ``StoreError`` (judged again next time)."""
        await self._fresh_revocations()
        if self._queue_judged(self.last_directory(), self.clock.now()):
            return []
        async with self._judging:
            now = self.clock.now()
            directory = self.last_directory()
            if self._queue_judged(directory, now):
                return []
            purged = await self._purge_voided(directory, now)
            self._judged = directory
            self._judge_again_at = _next_due(directory, now)
        return purged

    async def _judge_queue_quietly(self) -> None:
        # A failed judgement must not stop delivery: a recipient's adapter refuses a void
        # signature itself (``check_signature_time`` at ``accepted_at``), and it is retried.
        try:
            await self.judge_queue()
        except StoreError as exc:
            self.metrics.store_error("judge_queue")
            logger.warning("queue_judgement_failed", extra={"error": exc})

    async def _purge_voided(self, directory: Directory, now: int) -> list[Purged]:
        left = {p.id for p in directory.partners() if p.left_at is not None and now >= p.left_at}
        revoked = _revoked_keys(directory, KeyUse.SIGN, now)
        token_keys = _revoked_keys(directory, KeyUse.TOKEN, now)
        if not left and not revoked and not token_keys:
            return []
        pending = (
            await self.store.pending_involving(sorted(left | set(revoked)))
            if left or revoked
            else []
        )
        reasons: dict[tuple[str, str], Reason] = {}
        for d in pending:
            if d.recipient in left:
                reasons[d.message_id, d.recipient] = Reason.UNKNOWN_RECIPIENT
            elif d.sender in revoked and _signature_void(d, revoked[d.sender], now):
                reasons[d.message_id, d.recipient] = Reason.KEY_COMPROMISED
        void = await self._void_tokens(directory, token_keys, now)
        if void:
            seen = {(d.message_id, d.recipient) for d in pending}
            for d in await self.store.pending_under(sorted(void)):
                if (d.message_id, d.recipient) not in seen:
                    pending.append(d)
                reasons.setdefault((d.message_id, d.recipient), Reason.TOKEN_ISSUER_KEY_COMPROMISED)
        if not reasons:
            return []

        def audit_for(p: Purged) -> AuditRecord:
            return _record(
                AuditEntry(
                    time=now,
                    decision=AuditDecision.PURGED,
                    reason=reasons[p.message_id, p.recipient].value,
                    sender=p.sender,
                    recipients=(p.recipient,),
                    count=1,
                ),
                None,
            )

        wanted = [
            Purged(d.message_id, d.sender, d.recipient)
            for d in pending
            if (d.message_id, d.recipient) in reasons
        ]
        purged = await self.store.purge(wanted, now, audit_for)
        for ended in purged:
            self.metrics.purged(reasons[ended.message_id, ended.recipient].value)
        logger.info("queue_purged", extra={"count": len(purged)})
        return purged

    async def _void_tokens(
        self, directory: Directory, token_keys: dict[str, dict[str, DirectoryKey]], now: int
    ) -> set[str]:
        """Ids of the registered, unrevoked tokens that a revoked token key voids: signed by it
        and registered at or after its compromise time (all when that is unknown), the rule
        ``token.check_token_status`` applies to every message."""
        if not token_keys:
            return set()
        void: set[str] = set()
        for row in await self.store.tokens_of(sorted(token_keys)):
            if row.revoked_at is not None:
                continue  # its messages were purged when it was revoked
            try:
                token = self._verified_token(row, directory)
            except TokenError:
                continue
            key = token_keys.get(row.coordinator, {}).get(token.issuer_kid)
            if key is None:
                continue
            try:
                check_signature_time(key, row.registered_at, now)
            except KeyStateError:
                void.add(row.token_id)
        return void

    async def sweep_expired(self) -> int:
        """Delete undelivered messages past ``expires_at``; each becomes an ``expiry`` sender
        event and an audit entry. Returns how many deliveries ended. Judges the queue against
        the directory first (``judge_queue``), and drops cached tokens past their retention
        deadline (``forget_retained_tokens``)."""
        self.forget_retained_tokens()
        await self._judge_queue_quietly()
        total = 0
        while True:
            now = self.clock.now()

            def audit_for(p: Purged, now: int = now) -> AuditRecord:
                return _record(
                    AuditEntry(
                        time=now,
                        decision=AuditDecision.EXPIRED,
                        sender=p.sender,
                        recipients=(p.recipient,),
                        count=1,
                    ),
                    None,
                )

            try:
                ended = await self.store.expire(now, audit_for)
            except StoreError:
                self.metrics.store_error("expire")
                raise
            for p in ended:
                self.metrics.expired(p.recipient)
            total += len(ended)
            # The store ends at most 1000 per call.
            if len(ended) < 1000:
                return total

    async def refresh_metrics(self) -> None:
        """Set the gauges that mirror state: queues, audit tree size, and every expiry (see the
        module docstring)."""
        now = self.clock.now()
        stats = await self.store.queue_stats()
        self.metrics.set_queue_stats(
            {
                s.recipient: QueueStats(
                    s.depth,
                    float(max(0, now - s.oldest_accepted_at))
                    if s.oldest_accepted_at is not None
                    else 0.0,
                )
                for s in stats
            }
        )
        head = await self.store.audit_head()
        self.metrics.set_audit_tree_size(head.size)
        directory = self.last_directory()
        owners = [(p.id, p.keys) for p in directory.partners()]
        owners.append((directory.gateway.id, directory.gateway.keys))
        expiries: dict[tuple[str, str], float] = {}
        for owner, keys in owners:
            for key in keys:
                if key.state(now) not in (KeyState.ACTIVE, KeyState.RETIRING):
                    continue
                ends = [t for t in (key.retire_at, key.revoked_at) if t is not None]
                if not ends:  # an unretired key has no expiry
                    continue
                k = (owner, key.use.value)
                expiries[k] = min(expiries.get(k, float(min(ends))), float(min(ends)))
        self.metrics.set_key_expiries(expiries)
        known = {p.id for p in directory.partners()}
        certificates = {
            p: float(t) for p, t in self._peer_certificates.earliest(now).items() if p in known
        }
        if self._own_not_after is not None:
            certificates[directory.gateway.id] = float(self._own_not_after)
        self.metrics.set_certificate_expiries(certificates)
        tokens = await self.store.token_expiries(now)
        self.metrics.set_token_expiries({c: float(t) for c, t in tokens.items()})
        self.metrics.set_directory_expiries(_directory_expiry(self.directories))


def _revoked_keys(
    directory: Directory, use: KeyUse, now: int
) -> dict[str, dict[str, DirectoryKey]]:
    """Partner -> its ``use`` keys revoked by ``now``, by kid."""
    out: dict[str, dict[str, DirectoryKey]] = {}
    for p in directory.partners():
        keys = {
            k.kid: k
            for k in p.keys
            if k.use is use and k.revoked_at is not None and now >= k.revoked_at
        }
        if keys:
            out[p.id] = keys
    return out


def _signature_void(delivery: PendingDelivery, revoked: dict[str, DirectoryKey], now: int) -> bool:
    """Whether ``delivery``'s outer signature, by one of the sender's ``revoked`` sign keys,
    no longer stands at ``now`` (judged at the gateway's ``accepted_at``)."""
    try:
        kid = decode_envelope(delivery.envelope).header.sender_kid
    except EnvelopeError:  # it decoded at acceptance; a stored envelope is not re-judged
        return False
    key = revoked.get(kid)
    if key is None:
        return False
    try:
        check_signature_time(key, delivery.accepted_at, now)
    except KeyStateError:
        return True
    return False


def _has_left(directory: Directory, partner_id: str, now: int) -> bool:
    """Whether ``partner_id`` has left the covenant by ``now`` (``left_at`` reached)."""
    try:
        left_at = directory.partner(partner_id).left_at
    except DirectoryError:
        return False  # not a partner at all: ``check_use`` refuses it as unknown_recipient
    return left_at is not None and now >= left_at


def _next_due(directory: Directory, now: int) -> int | None:
    """The earliest revocation or departure the directory names that lies after ``now``."""
    times = [p.left_at for p in directory.partners() if p.left_at is not None]
    times += [k.revoked_at for p in directory.partners() for k in p.keys if k.revoked_at]
    future = [t for t in times if t is not None and t > now]
    return min(future) if future else None


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
