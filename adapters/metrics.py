"""The adapter's Prometheus metrics: one object, its own registry, prefix ``ketenpost_adapter_``.

Rules kept here:

* Every metric lives on ``AdapterMetrics``'s own ``CollectorRegistry``, never the process-global
  one, so two adapters in one test process never see each other's counts.
* Labels carry only message types, reason codes, partner ids and alarm kinds — never a message
  id, token id, pseudonym, record id or trace id (DESIGN.md "Operations").
* Counters whose label is a fixed enum (``sent`` by ``MessageType``) start every child at 0,
  so ``rate()`` has a series from the first scrape; labels that are open-ended (reasons, which
  include ``http_<status>``; senders) appear with their first event.
* Timestamps are ``..._timestamp_seconds`` (Unix seconds) so an alert is ``time() - x > N``.
* The TLS client certificate in use is told by its generation (1: the configured ``[tls]``
  pair, N: ``tls-N``) and its ``notAfter``, never by a kid in a label (no metric here carries
  a key id); the kid is in the ``tls_key_in_use`` log line.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway.protocol.types import MessageType

PREFIX: Final = "ketenpost_adapter_"
CONTENT_TYPE: Final = CONTENT_TYPE_LATEST


class AdapterMetrics:
    """The counters and gauges of one adapter."""

    def __init__(self, partner_id: str) -> None:
        self.partner_id = partner_id
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._sent = Counter(
            PREFIX + "sent", "Messages accepted by the gateway.", ["type"], registry=r
        )
        for message_type in MessageType:
            self._sent.labels(message_type.value)
        self._refused = Counter(
            PREFIX + "refused",
            "Outbound messages finally refused, by reason.",
            ["reason"],
            registry=r,
        )
        self._send_retries = Counter(
            PREFIX + "send_retries", "Transient send failures, by reason.", ["reason"], registry=r
        )
        self._received = Counter(
            PREFIX + "received", "Deliveries taken from the inbox.", ["sender"], registry=r
        )
        self._applied = Counter(
            PREFIX + "applied", "Messages applied to the partner system.", ["type"], registry=r
        )
        self._rejected = Counter(
            PREFIX + "rejected",
            "Deliveries rejected with a signed rejection, by reason.",
            ["reason"],
            registry=r,
        )
        self._outcomes = Counter(
            PREFIX + "outcomes", "Verified sender events, by kind.", ["kind"], registry=r
        )
        self._delivery_reports = Counter(
            PREFIX + "delivery_reports",
            "Deliveries (a recipient's receipt) reported to the partner system.",
            registry=r,
        )
        self._failed = Counter(
            PREFIX + "failed_records",
            "Malformed source records put in the failed place.",
            registry=r,
        )
        self._alarms = Counter(PREFIX + "alarms", "Alarms raised, by kind.", ["kind"], registry=r)
        self._witness = Counter(
            PREFIX + "witness_inconsistency",
            "Checkpoints inconsistent with one seen before (fork, smaller tree, bad proof).",
            registry=r,
        )
        self._retention_deleted = Counter(
            PREFIX + "retention_deleted",
            "Rows deleted at approach tokens' retention deadlines, by table.",
            ["kind"],
            registry=r,
        )
        self._witness_exchange = Counter(
            PREFIX + "witness_exchanges",
            "Peers' witness statements read, by outcome (consistent, pending, inconsistent, "
            "invalid, unavailable).",
            ["outcome"],
            registry=r,
        )
        self._depth = Gauge(
            PREFIX + "outbox_depth", "Outbox rows not yet accepted or refused.", registry=r
        )
        self._last_success = Gauge(
            PREFIX + "last_success_timestamp_seconds",
            "Last successful exchange with the gateway, by direction.",
            ["direction"],
            registry=r,
        )
        self._directory_version = Gauge(
            PREFIX + "directory_version", "Version of the directory in use.", registry=r
        )
        self._directory_stale = Gauge(
            PREFIX + "directory_stale", "1 while no fresh directory could be verified.", registry=r
        )
        self._tree_size = Gauge(
            PREFIX + "witnessed_tree_size", "Largest audit tree size witnessed.", registry=r
        )
        self._tls_generation = Gauge(
            PREFIX + "tls_key_generation",
            "Generation of the TLS client certificate presented to the gateway "
            "(1: the configured [tls] pair, N: the rotated tls-N pair).",
            registry=r,
        )
        self._tls_expiry = Gauge(
            PREFIX + "tls_certificate_expiry_timestamp_seconds",
            "notAfter of the TLS client certificate presented to the gateway.",
            registry=r,
        )
        self._key_revocations = Gauge(
            PREFIX + "key_revocations",
            "Partners' own key revocation statements verified by this adapter and applied to "
            "its directory (ADR 0011).",
            registry=r,
        )
        self._key_revocations_invalid = Counter(
            PREFIX + "key_revocations_invalid",
            "Key revocation statements served by the gateway that did not verify and were "
            "ignored, by reason.",
            ["reason"],
            registry=r,
        )
        self._tls_switches = Counter(
            PREFIX + "tls_key_switches",
            "Switches to another TLS client certificate without a restart (a rotated tls key).",
            registry=r,
        )

    def sent(self, message_type: str) -> None:
        self._sent.labels(message_type).inc()

    def refused(self, reason: str) -> None:
        self._refused.labels(reason).inc()

    def send_retry(self, reason: str) -> None:
        self._send_retries.labels(reason).inc()

    def received(self, sender: str) -> None:
        self._received.labels(sender).inc()

    def applied(self, message_type: str) -> None:
        self._applied.labels(message_type).inc()

    def rejected(self, reason: str) -> None:
        self._rejected.labels(reason).inc()

    def outcome(self, kind: str) -> None:
        self._outcomes.labels(kind).inc()

    def delivery_reported(self) -> None:
        self._delivery_reports.inc()

    def failed_record(self) -> None:
        self._failed.inc()

    def alarm(self, kind: str) -> None:
        self._alarms.labels(kind).inc()
        if kind == "witness":
            self._witness.inc()

    def retention_deleted(self, kind: str, count: int) -> None:
        self._retention_deleted.labels(kind).inc(count)

    def witness_exchange(self, outcome: str) -> None:
        self._witness_exchange.labels(outcome).inc()

    def set_outbox_depth(self, depth: int) -> None:
        self._depth.set(depth)

    def success(self, direction: str, now: int) -> None:
        self._last_success.labels(direction).set(now)

    def directory(self, version: int, *, stale: bool) -> None:
        self._directory_version.set(version)
        self._directory_stale.set(1 if stale else 0)

    def witnessed(self, size: int) -> None:
        self._tree_size.set(size)

    def tls_key(self, generation: int, not_after: int | None, *, switched: bool) -> None:
        """The TLS client certificate now presented (``not_after`` ``None``: unknown)."""
        self._tls_generation.set(generation)
        if not_after is not None:
            self._tls_expiry.set(not_after)
        if switched:
            self._tls_switches.inc()

    def key_revocations(self, held: int) -> None:
        self._key_revocations.set(held)

    def key_revocation_invalid(self, reason: str) -> None:
        self._key_revocations_invalid.labels(reason).inc()

    def value(self, name: str, **labels: str) -> float:
        """A sample's value (0 if absent), for tests and ``/healthz``."""
        got = self.registry.get_sample_value(PREFIX + name, labels)
        return 0.0 if got is None else got

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
