"""``ketenpost bench`` runs end to end and writes every figure; no timing is asserted (the
machine is shared and noisy), only that the document is complete and its values are sane."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

FIGURES = (
    "relay_msgs_per_s",
    "ceiling_req_per_s",
    "relay_to_ceiling_ratio",
    "accept_p50_ms",
    "accept_p99_ms",
    "accept_to_receipt_p50_ms",
    "accept_to_receipt_p99_ms",
    "seals_per_s",
    "opens_per_s",
    "verify_per_s",
)
MESSAGES = 60
SENDERS = 4


@pytest.mark.slow
def test_quick_bench_writes_every_field(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ketenpost",
            "bench",
            "--quick",
            "--messages",
            str(MESSAGES),
            "--senders",
            str(SENDERS),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text(encoding="utf-8"))
    assert json.loads(done.stdout) == result

    for name in FIGURES:
        value = result[name]
        assert isinstance(value, float), name
        assert value > 0, name
    assert result["accept_p50_ms"] <= result["accept_p99_ms"]
    assert result["accept_to_receipt_p50_ms"] <= result["accept_to_receipt_p99_ms"]
    ratio = result["relay_msgs_per_s"] / result["ceiling_req_per_s"]
    assert result["relay_to_ceiling_ratio"] == pytest.approx(ratio, abs=0.001)

    assert result["senders"] == SENDERS
    assert result["messages"] + result["warmup_messages"] == MESSAGES
    assert result["messages"] > 0
    # Every message was relayed: delivered at least once, receipted, its event acknowledged.
    assert result["deliveries"] >= MESSAGES
    assert result["refused"] == {}
    assert result["audit_verified"] is True
    # An acceptance and a delivery entry per message, plus the token registration.
    assert result["audit_leaves"] == 2 * MESSAGES + 1
    assert result["quick"] is True
    assert set(result["targets_met"]) == {"relay_msgs_per_s", "accept_p99_ms"}
    machine = result["machine"]
    assert machine["cpus"] >= 1
    assert machine["python"]
    assert machine["sqlite"]


def test_bench_refuses_a_nonsense_message_count(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ketenpost",
            "bench",
            "--messages",
            "0",
            "--out",
            str(tmp_path / "x.json"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("ketenpost: error: --messages")
    assert not (tmp_path / "x.json").exists()
