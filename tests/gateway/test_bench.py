"""``ketenpost bench`` runs end to end and writes every figure; no timing is asserted (the
machine is shared and noisy), only that the document is complete and its values are sane.

The quick run includes the tiny PostgreSQL part (1 and 2 replicas) when the server of
``KETENPOST_BENCH_PG_URL`` (default 127.0.0.1:5432) is reachable; otherwise the document says
why it was skipped, which is checked too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.bench import RATIO_FIGURES, _with_search_path, shown_url

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
    for replicas in (1, 2):
        _check_postgres(result, replicas)


def _check_postgres(result: dict[str, Any], replicas: int) -> None:
    part = result[f"postgres_{replicas}"]
    if "skipped" in part:
        assert "not reachable" in part["skipped"] or "not installed" in part["skipped"]
        return
    for name in FIGURES[:7]:
        assert isinstance(part[name], float), name
        assert part[name] > 0, name
    assert part["replicas"] == replicas
    assert part["gateway"]["store"] == "postgresql"
    assert part["messages"] == result["messages"]
    assert part["deliveries"] >= MESSAGES
    assert part["refused"] == {}
    assert part["audit_verified"] is True
    assert part["audit_leaves"] == 2 * MESSAGES + 1
    assert set(part["ratio_to_sqlite"]) == set(RATIO_FIGURES)
    assert part["ratio_to_sqlite"]["relay_msgs_per_s"] == pytest.approx(
        part["relay_msgs_per_s"] / result["relay_msgs_per_s"], abs=0.002
    )


def test_the_schema_goes_into_the_store_url_and_no_password_into_the_document() -> None:
    assert _with_search_path("postgresql://postgres@127.0.0.1:5432/test", "kp_b") == (
        "postgresql://postgres@127.0.0.1:5432/test?search_path=kp_b"
    )
    assert _with_search_path("postgresql://u@h/d?sslmode=disable&search_path=x", "kp_b") == (
        "postgresql://u@h/d?sslmode=disable&search_path=kp_b"
    )
    assert shown_url("postgresql://u:secret@db:5433/bench?password=p") == (
        "postgresql://u@db:5433/bench"
    )


@pytest.mark.slow
def test_an_unreachable_postgres_is_skipped_with_the_reason(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ketenpost",
            "bench",
            "--quick",
            "--messages",
            "20",
            "--senders",
            "2",
            "--postgres",
            "postgresql://postgres@127.0.0.1:1/test",
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
    assert result["relay_msgs_per_s"] > 0
    for replicas in (1, 2):
        assert "not reachable" in result[f"postgres_{replicas}"]["skipped"]


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
