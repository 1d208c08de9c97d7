"""``ketenpost bench`` runs end to end and writes every figure; no timing is asserted (the
machine is shared and noisy), only that the document is complete and its values are sane.

The quick run includes the tiny PostgreSQL part (1 and 2 replicas) when the server of
``KETENPOST_BENCH_PG_URL`` (default 127.0.0.1:5432) is reachable; otherwise the document says
why it was skipped, which is checked too.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.bench import (
    AUDIT_LEAVES_PER_MSG,
    RATIO_FIGURES,
    _with_search_path,
    measure_ed25519,
    measure_sqlite_floor,
    process_cpu_ns,
    shown_url,
)

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
    _check_floor(result)


def _check_floor(result: dict[str, Any]) -> None:
    """The cost floor: every part there, positive where it must be, and the sums and the
    derived throughput consistent with the parts (rounding allowed for)."""
    floor = result["floor"]
    gateway_parts = floor["gateway_parts_ms_per_msg"]
    loadgen_parts = floor["loadgen_parts_ms_per_msg"]
    assert set(gateway_parts) == {"http", "ed25519", "sqlite"}
    assert set(loadgen_parts) == {"http", "ed25519"}
    # A tiny run's ceiling phase may take less CPU than /proc resolves: HTTP may be 0.
    for part in (*gateway_parts.values(), *loadgen_parts.values()):
        assert isinstance(part, float)
        assert part >= 0
    assert gateway_parts["ed25519"] > 0
    assert gateway_parts["sqlite"] > 0
    assert floor["floor_cpu_ms_per_msg"] == pytest.approx(sum(gateway_parts.values()), abs=1e-3)
    assert floor["floor_loadgen_cpu_ms_per_msg"] == pytest.approx(
        sum(loadgen_parts.values()), abs=1e-3
    )
    total_ms = floor["floor_cpu_ms_per_msg"] + floor["floor_loadgen_cpu_ms_per_msg"]
    assert floor["cores"] == result["machine"]["cpus"]
    assert floor["floor_max_msgs_per_s_on_this_machine"] == pytest.approx(
        floor["cores"] * 1000 / total_ms, rel=0.01
    )
    assert floor["floor_cores_at_target"] == pytest.approx(
        result["targets"]["relay_msgs_per_s"] * total_ms / 1000, rel=0.01
    )
    assert floor["gateway_cpu_over_floor"] > 0
    ed = floor["ed25519"]
    assert ed["sign_ms"] > 0
    assert ed["verify_ms"] > 0
    assert ed["gateway_verifies_per_msg"] == 2
    # Acceptance receipt and sender event per message, plus the checkpoints of the run.
    assert ed["gateway_signs_per_msg"] == pytest.approx(2 + ed["checkpoints_per_msg"], abs=1e-3)
    assert 0 < ed["checkpoints_per_msg"] <= 1 + 1 / MESSAGES
    assert ed["loadgen_signs_per_msg"] == 1
    http = floor["http"]
    assert http["ceiling_requests"] > 0
    assert http["ceiling_server_cpu_ms_per_req"] >= 0
    assert http["ceiling_client_cpu_ms_per_req"] > 0
    # At least the submission per message, plus polls, receipt posts and event traffic.
    assert http["requests_per_msg"] >= 1
    store = floor["sqlite"]
    assert store["synchronous"] == "FULL"
    assert store["msgs_per_commit"] >= 1
    assert store["commits"] >= 1
    assert 0 < store["messages"] <= MESSAGES
    assert store["cpu_ms_per_msg"] == pytest.approx(gateway_parts["sqlite"], abs=1e-3)


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


@pytest.mark.parametrize(("messages", "per_commit"), [(1, 1), (7, 3), (20, 5), (9, 20)])
def test_the_floor_store_does_the_whole_durable_work(
    tmp_path: Path, messages: int, per_commit: int
) -> None:
    envelopes = [bytes([i]) * 2000 for i in range(messages)]
    floor = measure_sqlite_floor(tmp_path, envelopes, per_commit)
    assert floor.msgs_per_commit == per_commit
    assert floor.commits == -(-messages // per_commit)
    assert floor.cpu_s_per_msg >= 0
    with contextlib.closing(sqlite3.connect(tmp_path / "floor.db")) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)

        def one(sql: str) -> object:
            return conn.execute(sql).fetchone()[0]

        # Every message accepted with its receipt, then finished: delivery gone, ciphertext
        # dropped, its sender event stored; two audit leaves each.
        assert one("SELECT count(*) FROM messages WHERE receipt IS NOT NULL") == messages
        assert one("SELECT count(*) FROM messages WHERE envelope IS NOT NULL") == 0
        assert one("SELECT count(*) FROM deliveries") == 0
        assert one("SELECT count(*) FROM sender_events") == messages
        assert one("SELECT count(*) FROM audit_leaves") == AUDIT_LEAVES_PER_MSG * messages


def test_the_floor_times_ed25519_and_reads_process_cpu() -> None:
    costs = measure_ed25519(20, rounds=1)
    assert costs.sign_s > 0
    assert costs.verify_s > 0
    if sys.platform.startswith("linux"):
        cpu = process_cpu_ns(os.getpid())
        assert cpu is not None
        assert cpu > 0


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
