"""The gateway's Prometheus metrics: one class, one registry, label values checked.

Rules kept here:

* Every metric lives in ``GatewayMetrics``, on that object's own ``CollectorRegistry``. The
  process-global default registry is never used, so two gateways in one test process (or two
  tests) never see each other's counts. The object is built once by ``serve`` and passed in.
* Names start with ``ketenpost_``; units are in the names (``_seconds``, ``_bytes``); timestamps
  are ``..._timestamp_seconds`` (Unix seconds), so an alert is ``x - time() < 14 * 86400``.
* Labels carry only partner ids, message types, reason codes, routes, HTTP methods and statuses,
  directory roles, key uses and store operations — never a message id, token id, subject
  pseudonym or trace id (DESIGN.md, "Operations"). Callers cannot get at the raw metric
  objects; every label value passes a check for its label name first and a bad one raises
  ``ValueError``. The checks are allow-lists (``Reason``, ``MessageType``, ``KeyUse``, the four
  TUF roles) or patterns, and every value is also refused when it holds a run of 16 or more hex
  digits, which is what each of those identifiers looks like (a 32-hex pseudonym that happens to
  start with a letter matches the partner-id pattern; this check does not let it through).
* Gauges that mirror a state elsewhere (queue depth, expiries) are set from a full snapshot by a
  ``set_*`` method that also removes the series of partners no longer in the snapshot, so a
  partner taken out of the directory does not linger on a dashboard. A snapshot is checked as a
  whole before anything changes.
* Counters count (message, recipient) pairs where a recipient label exists: a message to three
  partners adds three to ``accepted_total``.
* The per-message methods keep the child of each label set they have seen (``_Children``),
  keyed by the values exactly as the caller passed them: ``check_label`` is a pure function of
  (label name, value) and ``labels()`` returns the same child for the same values, so a child
  found there is what checking and looking up again would return. Only values that passed
  every check are kept, and never for a gauge whose series are removed (``_SnapshotGauge``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Hashable, Iterable, Mapping
from types import MappingProxyType
from typing import Final, Generic, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, choose_encoder
from prometheus_client.metrics import MetricWrapperBase

from gateway.protocol.reasons import Reason
from gateway.protocol.types import MessageType
from keys.keypair import KeyUse

PREFIX: Final = "ketenpost_"
# The sender label before TLS authentication has named a partner.
UNKNOWN_SENDER: Final = "unknown"
# The route label of a request that matched no route (a 404), so probes of random paths do not
# create a series per path.
UNMATCHED_ROUTE: Final = "unmatched"
CONTENT_TYPE: Final = CONTENT_TYPE_LATEST

# Latency buckets, in seconds. Requests: the accept target is p99 <= 25 ms, so the low end is
# fine-grained; the long-poll inbox waits up to max_wait_s (30 s by default).
REQUEST_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
ACCEPT_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
)  # fmt: skip
# Accept to receipt spans a partner's polling and processing: seconds to days.
RECEIPT_BUCKETS: Final = (
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
    604800.0,
)  # fmt: skip
# |receive time - created_at|: network latency plus clock difference. Refusal starts beyond
# clock_skew_s (300 s by default) in the future.
CLOCK_OFFSET_BUCKETS: Final = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

DIRECTORY_ROLES: Final = frozenset({"root", "targets", "snapshot", "timestamp"})
HTTP_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER"}
)

# What retention deletes, one count each (``retention_deleted``).
RETENTION_KINDS: Final = frozenset({"audit_entry", "message", "sender_event", "token"})

# The store operations the gateway names when one fails (``store_error``: the relay, its
# ``store_call`` wrapper, the audit routes and retention). Each starts at 0, so
# ``increase(ketenpost_store_errors_total[5m])`` has a series from the first scrape and the
# first failure is an increase, not a new series. The label stays a pattern, not this list: an
# operation added later is still counted (tests/gateway/test_metrics.py keeps the list in step
# with the call sites).
STORE_OPERATIONS: Final = frozenset(
    {
        "accept",
        "ack_events",
        "apply_retention",
        "audit_head",
        "audit_leaves",
        "claim",
        "consistency_proof",
        "events",
        "expire",
        "finish",
        "get_token",
        "inclusion_proof",
        "judge_queue",
        "key_revocations",
        "message_status",
        "record_key_revocation",
        "register_token",
        "revoke_token",
    }
)
# Why the relay ends undelivered messages (``purged``): a revoked token (its messages), and a
# new directory or a partner's own revocation statement that voids them (a revoked sign key
# whose signatures no longer stand, a revoked token key whose tokens no longer authorise, a
# recipient that left).
PURGE_REASONS: Final = frozenset(
    {
        Reason.TOKEN_REVOKED.value,
        Reason.KEY_COMPROMISED.value,
        Reason.TOKEN_ISSUER_KEY_COMPROMISED.value,
        Reason.UNKNOWN_RECIPIENT.value,
    }
)

_PARTNER_ID_RE: Final = re.compile(r"^[a-z][a-z0-9-]{1,62}$")
_ROUTE_RE: Final = re.compile(r"^(?:/[A-Za-z0-9_.{}-]*){1,16}$")
_OPERATION_RE: Final = re.compile(r"^[a-z][a-z0-9_]{1,47}$")
_VERSION_RE: Final = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$")
# Message ids, kids and hashes are 64 hex digits, token ids and pseudonyms 32, trace ids 32;
# none of the values we allow has 16 hex digits in a row, even with separators removed.
_ID_LIKE_RE: Final = re.compile(r"[0-9a-f]{16,}")
# Label sets one ``_Children`` keeps before it starts again. The values are partner ids, types,
# routes and statuses, so a live gateway stays far below it; the bound only keeps a stream of
# distinct (refused-later or odd-cased) values from growing the memo without end.
MAX_REMEMBERED_CHILDREN: Final = 4096

_M = TypeVar("_M", bound=MetricWrapperBase)


def _refuse(label: str, value: str, why: str) -> ValueError:
    # The value is cut short in the message: it may be exactly the identifier we keep out.
    shown = value if len(value) <= 12 else value[:8] + "..."
    return ValueError(f"metric label {label}={shown!r} refused: {why}")


def _not_id_like(label: str, value: str) -> str:
    squeezed = value.lower().replace("-", "").replace("_", "").replace(".", "")
    if _ID_LIKE_RE.search(squeezed):
        raise _refuse(label, value, "looks like an identifier (message, token, subject)")
    return value


def _pattern(regex: re.Pattern[str], what: str) -> Callable[[str, str], str]:
    def check(label: str, value: str) -> str:
        if not regex.fullmatch(value):
            raise _refuse(label, value, f"not {what}")
        return _not_id_like(label, value)

    return check


def _one_of(allowed: Iterable[str], what: str) -> Callable[[str, str], str]:
    values = frozenset(allowed)

    def check(label: str, value: str) -> str:
        if value not in values:
            raise _refuse(label, value, f"not {what}")
        return _not_id_like(label, value)

    return check


_partner = _pattern(_PARTNER_ID_RE, "a partner id")


def _sender(label: str, value: str) -> str:
    return value if value == UNKNOWN_SENDER else _partner(label, value)


def _route(label: str, value: str) -> str:
    # A route is the template (/v1/messages/{id}), never the concrete path.
    if value == UNMATCHED_ROUTE:
        return value
    return _pattern(_ROUTE_RE, "a route template")(label, value)


def _status(label: str, value: str) -> str:
    if not (value.isdigit() and len(value) == 3 and 100 <= int(value) <= 599):
        raise _refuse(label, value, "not an HTTP status")
    return value


# Label name -> check. A label name means the same thing on every metric.
_LABEL_CHECKS: Final[Mapping[str, Callable[[str, str], str]]] = MappingProxyType(
    {
        "sender": _sender,
        "recipient": _partner,
        "partner": _partner,
        "coordinator": _partner,
        "type": _one_of((t.value for t in MessageType), "a message type"),
        "reason": _one_of((r.value for r in Reason), "a reason code"),
        "route": _route,
        "method": _one_of(HTTP_METHODS, "an HTTP method"),
        "status": _status,
        "role": _one_of(DIRECTORY_ROLES, "a directory role"),
        "use": _one_of((u.value for u in KeyUse), "a key use"),
        "operation": _pattern(_OPERATION_RE, "a store operation name"),
        "version": _pattern(_VERSION_RE, "a version"),
        "kind": _one_of(RETENTION_KINDS, "a kind of retained data"),
    }
)


def check_label(name: str, value: object) -> str:
    """Return ``value`` as a plain string if it may be the value of label ``name``; raise
    ``ValueError`` if not (an unknown label name or a value that is not a string included)."""
    try:
        check = _LABEL_CHECKS[name]
    except KeyError:
        raise ValueError(f"metric label {name!r} is not one of ours") from None
    if not isinstance(value, str):
        raise _refuse(name, repr(value), "not a string")
    # str() turns a StrEnum member (Reason.RATE_LIMITED) into its value.
    return check(name, str(value))


def _finite(what: str, value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class QueueStats:
    """One recipient's undelivered messages, as the store counts them."""

    depth: int
    oldest_pending_age_s: float


class _Children(Generic[_M]):
    """The children of one labelled metric that have been used, by the caller's raw values.

    ``get`` returns ``None`` for a key not seen yet; the caller checks the values, asks the
    metric for the child and ``put``s it. Only the event loop calls these (one thread), and a
    lost race would only mean checking the same values twice.
    """

    __slots__ = ("_children",)

    def __init__(self) -> None:
        self._children: dict[Hashable, _M] = {}

    def get(self, key: Hashable) -> _M | None:
        return self._children.get(key)

    def put(self, key: Hashable, child: _M) -> _M:
        if len(self._children) >= MAX_REMEMBERED_CHILDREN:
            self._children.clear()
        self._children[key] = child
        return child


class _SnapshotGauge:
    """A labelled gauge set from a complete snapshot; series missing from it are removed."""

    def __init__(self, name: str, gauge: Gauge, labelnames: tuple[str, ...]) -> None:
        self._name = name
        self._gauge = gauge
        self._labelnames = labelnames
        self._current: frozenset[tuple[str, ...]] = frozenset()

    def replace(self, values: Mapping[tuple[str, ...], float]) -> None:
        # Check everything before changing anything: a bad label leaves the last snapshot.
        checked: dict[tuple[str, ...], float] = {}
        for key, value in values.items():
            if len(key) != len(self._labelnames):
                raise ValueError(f"expected labels {self._labelnames}, got {len(key)} values")
            labels = tuple(check_label(n, v) for n, v in zip(self._labelnames, key, strict=True))
            checked[labels] = _finite(self._name, value)
        for labels, value in checked.items():
            self._gauge.labels(*labels).set(value)
        for labels in self._current - checked.keys():
            self._gauge.remove(*labels)
        self._current = frozenset(checked)


class GatewayMetrics:
    """All of the gateway's metrics on one private registry.

    Build one per gateway process (``serve``) and pass it to the relay, the store wrapper and
    the operator listener. Every method checks its label values and raises ``ValueError`` for
    one that is not allowed (see the module docstring); nothing is counted then.
    """

    def __init__(
        self,
        *,
        version: str,
        registry: CollectorRegistry | None = None,
        process_metrics: bool = False,
    ) -> None:
        # auto_describe: a name registered twice fails at construction, not at first scrape.
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        if process_metrics:
            # CPU, memory and open files of this process, on our registry (not the global one).
            ProcessCollector(namespace="ketenpost", registry=r)

        # -- The relay decision and delivery. ---------------------------------------------------
        self._accepted = Counter(
            PREFIX + "accepted",
            "Envelopes accepted, per (message, recipient).",
            ("sender", "recipient", "type"),
            registry=r,
        )
        self._refused = Counter(
            PREFIX + "refused",
            "Submissions refused, by reason code; sender 'unknown' before authentication.",
            ("reason", "sender"),
            registry=r,
        )
        self._delivered = Counter(
            PREFIX + "delivered",
            "Deliveries handed to a recipient (redeliveries after a lapsed lease included).",
            ("recipient",),
            registry=r,
        )
        self._acknowledged = Counter(
            PREFIX + "acknowledged",
            "Signed delivery receipts accepted from recipients.",
            ("recipient",),
            registry=r,
        )
        self._rejected = Counter(
            PREFIX + "rejected",
            "Signed rejections accepted from recipients, by reason.",
            ("recipient", "reason"),
            registry=r,
        )
        self._expired = Counter(
            PREFIX + "expired",
            "Undelivered messages deleted at expires_at.",
            ("recipient",),
            registry=r,
        )
        self._purged = Counter(
            PREFIX + "purged",
            "Undelivered or leased messages purged (e.g. by a token revocation), by reason.",
            ("reason",),
            registry=r,
        )
        for reason in sorted(PURGE_REASONS):
            self._purged.labels(check_label("reason", reason))

        # -- Latency. -------------------------------------------------------------------------
        self._request_duration = Histogram(
            PREFIX + "request_duration_seconds",
            "Partner API request duration, by route template, method and status.",
            ("route", "method", "status"),
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self._accept_duration = Histogram(
            PREFIX + "accept_duration_seconds",
            "From receiving an envelope to its durable commit (the 202).",
            buckets=ACCEPT_BUCKETS,
            registry=r,
        )
        self._accept_to_receipt = Histogram(
            PREFIX + "accept_to_receipt_seconds",
            "From acceptance to the recipient's signed delivery receipt.",
            buckets=RECEIPT_BUCKETS,
            registry=r,
        )

        # -- Queues. --------------------------------------------------------------------------
        queue_depth = Gauge(
            PREFIX + "queue_depth",
            "Messages accepted and not yet receipted, rejected, expired or purged.",
            ("recipient",),
            registry=r,
        )
        oldest_age = Gauge(
            PREFIX + "oldest_pending_age_seconds",
            "Age of the oldest pending message per recipient.",
            ("recipient",),
            registry=r,
        )
        self._queue_depth = _SnapshotGauge("queue_depth", queue_depth, ("recipient",))
        self._oldest_age = _SnapshotGauge("oldest_pending_age", oldest_age, ("recipient",))

        # -- Clocks. --------------------------------------------------------------------------
        self._clock_offset = Gauge(
            PREFIX + "clock_offset_seconds",
            "Receive time minus created_at of the partner's last accepted envelope; "
            "negative when the partner's clock is ahead.",
            ("partner",),
            registry=r,
        )
        self._clock_offset_magnitude = Histogram(
            PREFIX + "clock_offset_magnitude_seconds",
            "|receive time - created_at| per envelope, per partner.",
            ("partner",),
            buckets=CLOCK_OFFSET_BUCKETS,
            registry=r,
        )

        # -- Earliest expiries, as Unix timestamps. -------------------------------------------
        self._key_expiry = _SnapshotGauge(
            "key_expiry",
            Gauge(
                PREFIX + "key_expiry_timestamp_seconds",
                "Earliest retire_at among the partner's current keys of this use.",
                ("partner", "use"),
                registry=r,
            ),
            ("partner", "use"),
        )
        self._certificate_expiry = _SnapshotGauge(
            "certificate_expiry",
            Gauge(
                PREFIX + "certificate_expiry_timestamp_seconds",
                "notAfter of the partner's TLS client certificate (the gateway's own too).",
                ("partner",),
                registry=r,
            ),
            ("partner",),
        )
        self._token_expiry = _SnapshotGauge(
            "token_expiry",
            Gauge(
                PREFIX + "token_expiry_timestamp_seconds",
                "Earliest valid_until among the coordinator's active approach tokens.",
                ("coordinator",),
                registry=r,
            ),
            ("coordinator",),
        )
        self._directory_expiry = _SnapshotGauge(
            "directory_expiry",
            Gauge(
                PREFIX + "directory_expiry_timestamp_seconds",
                "Expiry of the signed directory's metadata, per TUF role.",
                ("role",),
                registry=r,
            ),
            ("role",),
        )

        # -- Audit log, store, logs, build. ---------------------------------------------------
        self._audit_tree_size = Gauge(
            PREFIX + "audit_tree_size",
            "Entries in the audit log's Merkle tree (its latest checkpoint).",
            registry=r,
        )
        self._audit_errors = Counter(
            PREFIX + "audit_errors",
            "Audit entries that could not be written (the submission was refused).",
            registry=r,
        )
        self._store_errors = Counter(
            PREFIX + "store_errors",
            "Store operations that failed, by operation.",
            ("operation",),
            registry=r,
        )
        for operation in sorted(STORE_OPERATIONS):
            self._store_errors.labels(check_label("operation", operation))
        self._retention_deleted = Counter(
            PREFIX + "retention_deleted",
            "Items deleted at approach tokens' retention deadlines, by kind (audit_entry: "
            "entry and salt, the leaf stays; token: the signed token, a tombstone stays).",
            ("kind",),
            registry=r,
        )
        self._log_fields_dropped = Counter(
            PREFIX + "log_fields_dropped",
            "Log fields dropped because they are not on the allow-list (see gateway.logs).",
            registry=r,
        )
        # Children of the metrics touched per message or per request (see the module
        # docstring). None of these metrics ever has a series removed.
        self._accepted_children: _Children[Counter] = _Children()
        self._delivered_children: _Children[Counter] = _Children()
        self._acknowledged_children: _Children[Counter] = _Children()
        self._request_children: _Children[Histogram] = _Children()
        self._clock_offset_children: _Children[Gauge] = _Children()
        self._clock_magnitude_children: _Children[Histogram] = _Children()
        Gauge(
            PREFIX + "build_info",
            "Always 1; the version of the running gateway as a label.",
            ("version",),
            registry=r,
        ).labels(check_label("version", version)).set(1)

    # -- Events of the relay. ---------------------------------------------------------------

    def accepted(self, sender: str, recipients: Iterable[str], message_type: str) -> None:
        """One accepted envelope: adds one per recipient. If any label is refused, nothing is
        counted and no series is created."""
        children = self._accepted_children
        keys = [(sender, recipient, message_type) for recipient in recipients]
        found = [children.get(key) for key in keys]
        if None in found:
            # Check every label before creating any series.
            checked = [
                (check_label("sender", s), check_label("recipient", r), check_label("type", t))
                for s, r, t in keys
            ]
            found = [
                children.put(key, self._accepted.labels(*labels))
                for key, labels in zip(keys, checked, strict=True)
            ]
        for child in found:
            if child is not None:
                child.inc()

    def refused(self, reason: str, sender: str = UNKNOWN_SENDER) -> None:
        """One refused submission; ``sender`` is the authenticated partner, if any."""
        self._refused.labels(check_label("reason", reason), check_label("sender", sender)).inc()

    def delivered(self, recipient: str, count: int = 1) -> None:
        child = self._delivered_children.get(recipient)
        if child is None:
            child = self._delivered_children.put(
                recipient, self._delivered.labels(check_label("recipient", recipient))
            )
        child.inc(count)

    def acknowledged(self, recipient: str, count: int = 1) -> None:
        child = self._acknowledged_children.get(recipient)
        if child is None:
            child = self._acknowledged_children.put(
                recipient, self._acknowledged.labels(check_label("recipient", recipient))
            )
        child.inc(count)

    def rejected(self, recipient: str, reason: str) -> None:
        self._rejected.labels(
            check_label("recipient", recipient), check_label("reason", reason)
        ).inc()

    def expired(self, recipient: str, count: int = 1) -> None:
        self._expired.labels(check_label("recipient", recipient)).inc(count)

    def purged(self, reason: str, count: int = 1) -> None:
        self._purged.labels(check_label("reason", reason)).inc(count)

    # -- Durations, in seconds. -------------------------------------------------------------

    def observe_request(self, route: str, method: str, status: int, duration_s: float) -> None:
        """One partner API request; ``route`` is the template (``request.match_info.route``'s
        resource canonical form) or ``UNMATCHED_ROUTE``, never the path."""
        duration_s = _finite("duration_s", duration_s)
        key = (route, method, status)
        child = self._request_children.get(key)
        if child is None:
            method = method.upper() if method.upper() in HTTP_METHODS else "OTHER"
            child = self._request_children.put(
                key,
                self._request_duration.labels(
                    check_label("route", route), method, check_label("status", str(status))
                ),
            )
        child.observe(duration_s)

    def observe_accept(self, duration_s: float) -> None:
        self._accept_duration.observe(_finite("duration_s", duration_s))

    def observe_accept_to_receipt(self, duration_s: float) -> None:
        self._accept_to_receipt.observe(_finite("duration_s", duration_s))

    def observe_clock_offset(self, partner: str, offset_s: float) -> None:
        """``offset_s`` = gateway receive time - the envelope's created_at."""
        offset_s = _finite("offset_s", offset_s)
        gauge = self._clock_offset_children.get(partner)
        histogram = self._clock_magnitude_children.get(partner)
        if gauge is None or histogram is None:
            checked = check_label("partner", partner)
            gauge = self._clock_offset_children.put(partner, self._clock_offset.labels(checked))
            histogram = self._clock_magnitude_children.put(
                partner, self._clock_offset_magnitude.labels(checked)
            )
        gauge.set(offset_s)
        histogram.observe(abs(offset_s))

    # -- State snapshots (replace the previous one). ----------------------------------------

    def set_queue_stats(self, stats: Mapping[str, QueueStats]) -> None:
        """Queue depth and oldest pending age per recipient, from the store."""
        self._queue_depth.replace({(r,): s.depth for r, s in stats.items()})
        self._oldest_age.replace({(r,): s.oldest_pending_age_s for r, s in stats.items()})

    def set_key_expiries(self, expiries: Mapping[tuple[str, str], float]) -> None:
        """(partner, use) -> earliest retire_at (Unix seconds) of its current keys."""
        self._key_expiry.replace({(p, str(u)): t for (p, u), t in expiries.items()})

    def set_certificate_expiries(self, expiries: Mapping[str, float]) -> None:
        """partner -> notAfter of its TLS certificate (Unix seconds)."""
        self._certificate_expiry.replace({(p,): t for p, t in expiries.items()})

    def set_token_expiries(self, expiries: Mapping[str, float]) -> None:
        """coordinator -> earliest valid_until among its active tokens (Unix seconds)."""
        self._token_expiry.replace({(c,): t for c, t in expiries.items()})

    def set_directory_expiries(self, expiries: Mapping[str, float]) -> None:
        """TUF role (root, targets, snapshot, timestamp) -> its expiry (Unix seconds)."""
        self._directory_expiry.replace({(role,): t for role, t in expiries.items()})

    def set_audit_tree_size(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"tree size must be >= 0, got {size}")
        self._audit_tree_size.set(size)

    # -- Failures. ----------------------------------------------------------------------------

    def store_error(self, operation: str) -> None:
        self._store_errors.labels(check_label("operation", operation)).inc()

    def retention_deleted(self, kind: str, count: int = 1) -> None:
        self._retention_deleted.labels(check_label("kind", kind)).inc(count)

    def audit_error(self) -> None:
        self._audit_errors.inc()

    def log_field_dropped(self) -> None:
        """Hook for ``gateway.logs.configure_logging(on_drop=...)``."""
        self._log_fields_dropped.inc()

    # -- Exposition. --------------------------------------------------------------------------

    @property
    def content_type(self) -> str:
        return CONTENT_TYPE

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """Body and Content-Type for a scrape with this ``Accept`` header (text or
        OpenMetrics, as prometheus-client negotiates). For the ``/metrics`` handler."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
