"""Gateway metrics: the exposition parses and counts what happened; label values that look like
message ids, token ids or pseudonyms are refused; instances share nothing."""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import (
    CONTENT_TYPE,
    PURGE_REASONS,
    STORE_OPERATIONS,
    UNKNOWN_SENDER,
    UNMATCHED_ROUTE,
    GatewayMetrics,
    QueueStats,
    check_label,
)
from gateway.protocol.reasons import Reason
from gateway.protocol.types import MessageType
from keys.keypair import KeyUse

MESSAGE_ID = "c0ffee" + "0123456789abcdef" * 3 + "0123456789"
TOKEN_ID = "deadbeef0123456789abcdef01234567"  # starts with a letter: passes the slug pattern
PSEUDONYM = "a3f09c2e7b1d4c5a9e8f7a6b5c4d3e2f"
TRACE_UUID = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"
Labels = dict[str, str]


def samples(metrics: GatewayMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, parsed by prometheus-client's own parser."""
    text = metrics.render().decode()
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def value(metrics: GatewayMetrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def metrics() -> GatewayMetrics:
    return GatewayMetrics(version="0.1.0.dev0")


def test_counters_count_what_happened(metrics: GatewayMetrics) -> None:
    metrics.accepted("politie-ijmond", ["halt", "om", "gemeente-velsen"], MessageType.SIGNAL)
    metrics.accepted("politie-ijmond", ["halt"], "signal")
    metrics.refused(Reason.RATE_LIMITED, "politie-ijmond")
    metrics.refused("sender_mismatch")
    metrics.delivered("halt", 2)
    metrics.acknowledged("halt")
    metrics.rejected("om", Reason.SCHEMA_INVALID)
    metrics.expired("gemeente-velsen", 3)
    metrics.purged(Reason.TOKEN_REVOKED, 4)
    metrics.store_error("insert_message")
    metrics.audit_error()
    metrics.log_field_dropped()

    def total(name: str, **labels: str) -> float | None:
        return value(metrics, f"ketenpost_{name}_total", **labels)

    sender, signal = "politie-ijmond", "signal"
    assert total("accepted", sender=sender, recipient="halt", type=signal) == 2
    assert total("accepted", sender=sender, recipient="om", type=signal) == 1
    assert total("accepted", sender=sender, recipient="gemeente-velsen", type=signal) == 1
    assert total("refused", reason="rate_limited", sender=sender) == 1
    assert total("refused", reason="sender_mismatch", sender=UNKNOWN_SENDER) == 1
    assert total("delivered", recipient="halt") == 2
    assert total("acknowledged", recipient="halt") == 1
    assert total("rejected", recipient="om", reason="schema_invalid") == 1
    assert total("expired", recipient="gemeente-velsen") == 3
    assert total("purged", reason="token_revoked") == 4
    assert total("store_errors", operation="insert_message") == 1
    assert total("audit_errors") == 1
    assert total("log_fields_dropped") == 1
    assert value(metrics, "ketenpost_build_info", version="0.1.0.dev0") == 1


def test_fixed_label_sets_start_at_zero(metrics: GatewayMetrics) -> None:
    # Counters whose label values are a known, fixed set have every series from the start,
    # so increase()/rate() alerts work from the first scrape; open-ended ones start empty.
    for operation in STORE_OPERATIONS:
        assert value(metrics, "ketenpost_store_errors_total", operation=operation) == 0
    for reason in PURGE_REASONS:
        assert value(metrics, "ketenpost_purged_total", reason=reason) == 0
    text = metrics.render().decode()
    for partner_counter in ("accepted", "refused", "delivered", "expired", "rejected"):
        assert not re.search(rf"^ketenpost_{partner_counter}_total{{", text, re.MULTILINE)


def _literal_first_arguments(method: str) -> set[str]:
    """The string literals passed as first argument to ``.method(...)`` in gateway/."""
    found: set[str] = set()
    for path in (Path(__file__).resolve().parents[2] / "gateway").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == method
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                found.add(node.args[0].value)
    return found


def test_the_initial_store_operations_are_the_ones_the_code_names() -> None:
    named = _literal_first_arguments("store_error") | _literal_first_arguments("store_call")
    assert named == STORE_OPERATIONS


def test_histograms(metrics: GatewayMetrics) -> None:
    metrics.observe_request("/v1/messages", "post", 202, 0.004)
    metrics.observe_request("/v1/messages", "POST", 202, 0.020)
    metrics.observe_request(UNMATCHED_ROUTE, "BREW", 404, 0.001)
    metrics.observe_accept(0.003)
    metrics.observe_accept_to_receipt(42.0)

    route = {"route": "/v1/messages", "method": "POST", "status": "202"}
    name = "ketenpost_request_duration_seconds"
    assert value(metrics, f"{name}_count", **route) == 2
    assert value(metrics, f"{name}_bucket", **route, le="0.005") == 1
    assert value(metrics, f"{name}_bucket", **route, le="0.025") == 2
    assert value(metrics, f"{name}_sum", **route) == pytest.approx(0.024)
    unmatched = {"route": UNMATCHED_ROUTE, "method": "OTHER", "status": "404"}
    assert value(metrics, f"{name}_count", **unmatched) == 1
    assert value(metrics, "ketenpost_accept_duration_seconds_count") == 1
    assert value(metrics, "ketenpost_accept_to_receipt_seconds_bucket", le="60.0") == 1
    assert value(metrics, "ketenpost_accept_to_receipt_seconds_bucket", le="30.0") == 0


def test_clock_offset(metrics: GatewayMetrics) -> None:
    metrics.observe_clock_offset("halt", 0.4)
    metrics.observe_clock_offset("halt", -2.5)
    assert value(metrics, "ketenpost_clock_offset_seconds", partner="halt") == -2.5
    name = "ketenpost_clock_offset_magnitude_seconds"
    assert value(metrics, f"{name}_count", partner="halt") == 2
    assert value(metrics, f"{name}_bucket", partner="halt", le="0.5") == 1


def test_snapshots_replace_and_remove(metrics: GatewayMetrics) -> None:
    metrics.set_queue_stats({"halt": QueueStats(3, 12.5), "om": QueueStats(1, 2.0)})
    metrics.set_queue_stats({"halt": QueueStats(0, 0.0)})
    assert value(metrics, "ketenpost_queue_depth", recipient="halt") == 0
    assert value(metrics, "ketenpost_oldest_pending_age_seconds", recipient="halt") == 0
    assert value(metrics, "ketenpost_queue_depth", recipient="om") is None

    metrics.set_key_expiries({("halt", KeyUse.SIGN): 1.9e9, ("halt", "encrypt"): 2.0e9})
    metrics.set_certificate_expiries({"halt": 1.8e9, "gateway": 1.7e9})
    metrics.set_token_expiries({"gemeente-velsen": 1.75e9})
    metrics.set_directory_expiries({"root": 2.1e9, "timestamp": 1.7e9})
    metrics.set_audit_tree_size(12345)
    metrics.set_token_expiries({})

    assert value(metrics, "ketenpost_key_expiry_timestamp_seconds", partner="halt", use="sign")
    assert value(metrics, "ketenpost_certificate_expiry_timestamp_seconds", partner="gateway")
    assert value(metrics, "ketenpost_directory_expiry_timestamp_seconds", role="timestamp")
    name = "ketenpost_token_expiry_timestamp_seconds"
    assert value(metrics, name, coordinator="gemeente-velsen") is None
    assert value(metrics, "ketenpost_audit_tree_size") == 12345


def test_a_bad_snapshot_changes_nothing(metrics: GatewayMetrics) -> None:
    metrics.set_token_expiries({"gemeente-velsen": 1.75e9})
    with pytest.raises(ValueError, match="coordinator"):
        metrics.set_token_expiries({"gemeente-beverwijk": 1.8e9, TOKEN_ID: 1.8e9})
    name = "ketenpost_token_expiry_timestamp_seconds"
    assert value(metrics, name, coordinator="gemeente-velsen") == 1.75e9
    assert value(metrics, name, coordinator="gemeente-beverwijk") is None


REFUSED_LABELS = [
    pytest.param("recipient", MESSAGE_ID, id="message-id-as-recipient"),
    pytest.param("partner", TOKEN_ID, id="token-id-as-partner"),
    pytest.param("sender", PSEUDONYM, id="pseudonym-as-sender"),
    pytest.param("coordinator", TRACE_UUID, id="uuid-as-coordinator"),
    pytest.param("partner", "halt-" + PSEUDONYM[:20], id="id-inside-a-slug"),
    pytest.param("partner", "Halt", id="not-a-slug"),
    pytest.param("route", f"/v1/messages/{MESSAGE_ID}", id="concrete-path"),
    pytest.param("route", f"/v1/approaches/{TOKEN_ID}/revocation", id="token-in-path"),
    pytest.param("route", "/v1/inbox?wait=30", id="query-string"),
    pytest.param("operation", f"claim_{PSEUDONYM}", id="id-in-operation"),
    pytest.param("reason", MESSAGE_ID, id="message-id-as-reason"),
    pytest.param("reason", "made_up_reason", id="unknown-reason"),
    pytest.param("type", "gossip", id="unknown-type"),
    pytest.param("role", "mirrors", id="unknown-role"),
    pytest.param("use", "wrap", id="unknown-use"),
    pytest.param("method", "BREW", id="unknown-method"),
    pytest.param("status", "2000", id="bad-status"),
    pytest.param("version", "0.1.0+" + "0123456789abcdef0123", id="hash-in-version"),
    pytest.param("subject", "halt", id="unknown-label-name"),
]


@pytest.mark.parametrize(("label", "bad"), REFUSED_LABELS)
def test_label_values_are_checked(label: str, bad: str) -> None:
    with pytest.raises(ValueError, match="metric label"):
        check_label(label, bad)


def test_label_value_must_be_a_string() -> None:
    with pytest.raises(ValueError, match="not a string"):
        check_label("status", 202)


@pytest.mark.parametrize(
    ("label", "good"),
    [
        ("partner", "gemeente-heemskerk"),
        ("partner", "om"),
        ("sender", UNKNOWN_SENDER),
        ("route", "/v1/messages/{id}"),
        ("route", "/v1/approaches/{id}/revocation"),
        ("route", "/v1/openapi.json"),
        ("status", "503"),
        ("version", "0.1.0.dev0+g1a2b3c4"),
        ("type", "approach-notice"),
        ("reason", "token_issuer_not_coordinating_municipality"),
        ("role", "snapshot"),
        ("use", "tls"),
        ("operation", "claim_deliveries"),
    ],
)
def test_label_values_that_pass(label: str, good: str) -> None:
    assert check_label(label, good) == good


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(
            lambda m: m.accepted("politie-ijmond", ["halt", MESSAGE_ID], "signal"), id="accepted"
        ),
        pytest.param(lambda m: m.refused("rate_limited", TOKEN_ID), id="refused"),
        pytest.param(lambda m: m.delivered(PSEUDONYM), id="delivered"),
        pytest.param(lambda m: m.rejected("halt", MESSAGE_ID), id="rejected"),
        pytest.param(lambda m: m.observe_clock_offset(PSEUDONYM, 1.0), id="clock"),
        pytest.param(
            lambda m: m.observe_request(f"/v1/messages/{MESSAGE_ID}", "GET", 200, 0.1), id="route"
        ),
        pytest.param(lambda m: m.set_key_expiries({(TOKEN_ID, "sign"): 1.0}), id="key-expiry"),
        pytest.param(lambda m: m.set_queue_stats({PSEUDONYM: QueueStats(1, 1.0)}), id="queue"),
        pytest.param(lambda m: m.store_error(MESSAGE_ID), id="store-error"),
        pytest.param(lambda m: m.observe_accept(float("nan")), id="nan-duration"),
    ],
)
def test_a_refused_call_counts_nothing(
    metrics: GatewayMetrics, call: Callable[[GatewayMetrics], object]
) -> None:
    before = samples(metrics)
    with pytest.raises(ValueError):
        call(metrics)
    assert samples(metrics) == before


def test_no_label_value_looks_like_an_identifier(metrics: GatewayMetrics) -> None:
    metrics.accepted("politie-ijmond", ["halt"], "referral")
    metrics.refused("bad_signature")
    metrics.observe_request("/v1/messages/{id}", "GET", 200, 0.01)
    metrics.set_key_expiries({("om", "token"): 1.0})
    for _name, labels in samples(metrics):
        for _label, label_value in labels:
            assert not re.search(r"[0-9a-f]{16,}", label_value.replace("-", ""))


def test_instances_share_nothing() -> None:
    first = GatewayMetrics(version="1.0.0")
    second = GatewayMetrics(version="2.0.0")
    first.accepted("politie-ijmond", ["halt"], "signal")
    first.set_audit_tree_size(7)

    labels = {"sender": "politie-ijmond", "recipient": "halt", "type": "signal"}
    assert value(first, "ketenpost_accepted_total", **labels) == 1
    assert value(second, "ketenpost_accepted_total", **labels) is None
    assert value(second, "ketenpost_audit_tree_size") == 0
    assert value(second, "ketenpost_build_info", version="1.0.0") is None
    assert first.registry is not second.registry


def test_uses_the_registry_it_is_given() -> None:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(version="1.0.0", registry=registry)
    metrics.delivered("halt")
    assert registry.get_sample_value("ketenpost_delivered_total", {"recipient": "halt"}) == 1


def test_exposition_formats(metrics: GatewayMetrics) -> None:
    metrics.delivered("halt")
    assert metrics.content_type == CONTENT_TYPE
    assert CONTENT_TYPE.startswith("text/plain")

    body, content_type = metrics.exposition(None)
    assert content_type.startswith("text/plain")
    assert b"ketenpost_delivered_total" in body

    body, content_type = metrics.exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_process_metrics_on_our_registry() -> None:
    metrics = GatewayMetrics(version="1.0.0", process_metrics=True)
    assert b"ketenpost_process_cpu_seconds_total" in metrics.render()
    assert b"ketenpost_process_cpu" not in GatewayMetrics(version="1.0.0").render()
