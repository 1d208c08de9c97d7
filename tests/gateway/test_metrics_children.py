"""The per-message metric methods remember label children (``gateway.metrics._Children``):
a remembered child counts exactly as a fresh look-up would, a refused value is refused every
time and creates no series, and the memo's bound does not lose counts."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

import gateway.metrics
from gateway.metrics import GatewayMetrics
from gateway.protocol.types import MessageType

PSEUDONYM = "a3f09c2e7b1d4c5a9e8f7a6b5c4d3e2f"
Sample = tuple[str, tuple[tuple[str, str], ...]]


def samples(metrics: GatewayMetrics) -> dict[Sample, float]:
    found: dict[Sample, float] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def count(metrics: GatewayMetrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, tuple(sorted(labels.items()))))


# (name, a call that succeeds, the series it counts in, a call on the same metric that must be
# refused after the first has been remembered)
CASES: list[tuple[str, Callable[[GatewayMetrics], object], Sample, Callable[..., object]]] = [
    (
        "accepted",
        lambda m: m.accepted("politie-ijmond", ["halt"], "signal"),
        (
            "ketenpost_accepted_total",
            (("recipient", "halt"), ("sender", "politie-ijmond"), ("type", "signal")),
        ),
        lambda m: m.accepted("politie-ijmond", ["halt", PSEUDONYM], "signal"),
    ),
    (
        "delivered",
        lambda m: m.delivered("halt", 1),
        ("ketenpost_delivered_total", (("recipient", "halt"),)),
        lambda m: m.delivered(PSEUDONYM, 1),
    ),
    (
        "acknowledged",
        lambda m: m.acknowledged("halt"),
        ("ketenpost_acknowledged_total", (("recipient", "halt"),)),
        lambda m: m.acknowledged(PSEUDONYM),
    ),
    (
        "request",
        lambda m: m.observe_request("/v1/messages", "POST", 202, 0.01),
        (
            "ketenpost_request_duration_seconds_count",
            (("method", "POST"), ("route", "/v1/messages"), ("status", "202")),
        ),
        lambda m: m.observe_request(f"/v1/messages/{PSEUDONYM}", "POST", 202, 0.01),
    ),
    (
        "clock",
        lambda m: m.observe_clock_offset("politie-ijmond", 0.5),
        ("ketenpost_clock_offset_magnitude_seconds_count", (("partner", "politie-ijmond"),)),
        lambda m: m.observe_clock_offset(PSEUDONYM, 0.5),
    ),
]


@pytest.mark.parametrize(
    ("call", "series", "refused"),
    [pytest.param(c, s, r, id=name) for name, c, s, r in CASES],
)
def test_a_remembered_child_counts_every_call_and_refusals_stay_refused(
    call: Callable[[GatewayMetrics], object], series: Sample, refused: Callable[..., object]
) -> None:
    metrics = GatewayMetrics(version="0.1.0")
    for expected in (1.0, 2.0, 3.0):
        call(metrics)
        assert samples(metrics)[series] == expected
    before = samples(metrics)
    for _ in range(2):  # refused the first time and again, nothing counted, no series made
        with pytest.raises(ValueError, match="refused"):
            refused(metrics)
        assert samples(metrics) == before


def test_enum_and_string_values_share_one_series() -> None:
    metrics = GatewayMetrics(version="0.1.0")
    metrics.accepted("politie-ijmond", ["halt"], MessageType.SIGNAL)
    metrics.accepted("politie-ijmond", ["halt"], "signal")
    assert (
        count(
            metrics,
            "ketenpost_accepted_total",
            sender="politie-ijmond",
            recipient="halt",
            type="signal",
        )
        == 2.0
    )


@pytest.mark.parametrize(
    ("method", "shown"), [("post", "POST"), ("POST", "POST"), ("BREW", "OTHER")]
)
def test_request_methods_are_normalised_before_they_are_remembered(method: str, shown: str) -> None:
    metrics = GatewayMetrics(version="0.1.0")
    for _ in range(2):
        metrics.observe_request("/v1/inbox", method, 200, 0.01)
    assert (
        count(
            metrics,
            "ketenpost_request_duration_seconds_count",
            route="/v1/inbox",
            method=shown,
            status="200",
        )
        == 2.0
    )


def test_the_memo_bound_loses_no_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway.metrics, "MAX_REMEMBERED_CHILDREN", 2)
    metrics = GatewayMetrics(version="0.1.0")
    partners = ["halt", "om", "cjg", "gemeente-velsen", "politie-ijmond"]
    for _ in range(3):
        for partner in partners:
            metrics.delivered(partner, 2)
    for partner in partners:
        assert count(metrics, "ketenpost_delivered_total", recipient=partner) == 6.0
