"""A real Prometheus scrapes a real gateway and a real adapter; every series the alerts and the
dashboard use is there.

The module starts, on 127.0.0.1 and random free ports: ``ketenpost serve`` on a development
deployment (``ketenpost.init_deployment``) with a fresh SQLite store; the Halt adapter
(``ketenpost adapter run halt``, with deploy/adapters/halt.system.toml appended when
``ketenpost init`` wrote no ``[system]`` table, as the walkthrough in docs/operations.md does);
and Prometheus with deploy/prometheus/prometheus.yml and the alert rules, its targets pointed at
those two processes and its scrape interval cut to one second, on its own temporary storage.
Partners' traffic is driven through the partner API with the covenant's keys: accepted, refused,
delivered and receipted (by the adapter), rejected, expired and pending messages. The test then
asks Prometheus' HTTP API (bounded polling, never a fixed sleep) for every metric the alerts and
the dashboard name.

Two more things happen for real before Prometheus starts: an officer's key rotation (``keys
rotate`` of a partner's sign key, ``keys directory propose``, ``sign`` by two officers and
``publish --gateway`` to the running gateway, as docs/operations/key-rotation.md does), which
gives the predecessor key a ``retire_at`` and so a ``ketenpost_key_expiry_timestamp_seconds``
series; and a Halt export in the adapter's ``uit/`` folder about a dossier no approach covers,
which the adapter finally refuses (``no_token``). Counters with a fixed label set
(``store_errors_total`` by operation, ``purged_total`` by reason, the adapter's ``sent_total``
by message type) start at 0 when the metrics are built, so they are scraped from the start.

``NOT_EXERCISED`` (metrics the run cannot make appear) is empty and must stay so; the
certificate, token and directory expiry gauges must be set by the gateway
(``test_expiry_gauges_are_set_by_the_gateway``). ``GAPS`` (metrics registered and never set)
is empty and must stay so.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
import yaml

import ketenpost
from adapters.testing.halt_fake import VOORTGANG_COLUMNS, FakeHaltSystem, halt_csv
from gateway.bench import (
    COORDINATOR,
    SENDER,
    TOKEN_CONTENT_TYPE,
    TRACE,
    Covenant,
    GatewayProcess,
    free_port,
)
from gateway.metrics import PURGE_REASONS, STORE_OPERATIONS
from gateway.protocol.envelope import CONTENT_TYPE as ENVELOPE_CONTENT_TYPE
from gateway.protocol.envelope import decode_envelope, encode_envelope, seal
from gateway.protocol.messages import encode_body, example
from gateway.protocol.reasons import RejectionReason
from gateway.protocol.receipts import Rejection, sign_rejection
from gateway.protocol.types import MessageType
from gateway.signer import encode_signed_object
from keys import KeyUse
from tests.deploy._tools import (
    DEPLOY,
    PROMETHEUS_CONFIG,
    RULES,
    require_tool,
    used_metric_names,
)

DAY: Final = 86_400
DEADLINE_S: Final = 90.0
# The Halt adapter runs; om and the coordinating municipality are played by this test.
PARTICIPANTS: Final = (COORDINATOR, SENDER, "halt", "om")
GATEWAY_ENV: Final = {
    # Sweeps and gauge refreshes every second (min(refresh_s, 10)), and short long-polls so the
    # adapter's inbound success shows within a scrape or two.
    "KETENPOST_DIRECTORY__REFRESH_S": "1",
    "KETENPOST_LIMITS__MAX_WAIT_S": "1",
    "KETENPOST_LOG__LEVEL": "warning",
}

# Metrics the alerts or the dashboard use that this run cannot make appear, and why: none.
NOT_EXERCISED: Final[dict[str, str]] = {}
# Registered by GatewayMetrics, never set by `ketenpost serve`: none left.
GAPS: Final[frozenset[str]] = frozenset()
# Set by the gateway's periodic refresh (Relay.refresh_metrics) from the connected partners'
# certificates, the registered tokens and the signed directory.
EXPIRY_GAUGES: Final = {
    "ketenpost_certificate_expiry_timestamp_seconds",
    "ketenpost_token_expiry_timestamp_seconds",
    "ketenpost_directory_expiry_timestamp_seconds",
}
# Label names the alerts and panels group by, per metric; each must be on its series.
REQUIRED_LABELS: Final = {
    "ketenpost_accepted_total": {"sender", "recipient", "type"},
    "ketenpost_refused_total": {"reason", "sender"},
    "ketenpost_delivered_total": {"recipient"},
    "ketenpost_acknowledged_total": {"recipient"},
    "ketenpost_rejected_total": {"recipient", "reason"},
    "ketenpost_expired_total": {"recipient"},
    "ketenpost_request_duration_seconds_bucket": {"le", "route", "method"},
    "ketenpost_request_duration_seconds_count": {"route", "method"},
    "ketenpost_queue_depth": {"recipient"},
    "ketenpost_oldest_pending_age_seconds": {"recipient"},
    "ketenpost_clock_offset_seconds": {"partner"},
    "ketenpost_build_info": {"version", "instance"},
    "ketenpost_audit_errors_total": {"instance"},
    "ketenpost_adapter_outbox_depth": {"partner"},
    "ketenpost_adapter_last_success_timestamp_seconds": {"partner", "direction"},
    "ketenpost_adapter_witness_inconsistency_total": {"partner"},
    "ketenpost_adapter_directory_stale": {"partner"},
    "ketenpost_adapter_witnessed_tree_size": {"partner"},
    "ketenpost_adapter_received_total": {"partner"},
    "ketenpost_store_errors_total": {"operation", "instance"},
    "ketenpost_purged_total": {"reason"},
    "ketenpost_key_expiry_timestamp_seconds": {"partner", "use"},
    "ketenpost_adapter_sent_total": {"partner", "type"},
    "ketenpost_adapter_refused_total": {"partner", "reason"},
    "up": {"job", "instance"},
}
# The partner whose sign key the fixture rotates: one the traffic does not use.
ROTATED: Final = "gemeente-heemskerk"
# A Halt dossier that no approach covers: the adapter refuses its progress report (no_token).
UNCOVERED_DOSSIER: Final = "HLT-2026-9999"


@dataclass
class Stack:
    prometheus_url: str
    gateway: GatewayProcess
    adapter: subprocess.Popen[bytes]
    prometheus: subprocess.Popen[bytes]
    logs: Path


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our 127.0.0.1 URL
        return json.loads(response.read())


def _wait_http(url: str, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{what} exited with {process.returncode}"
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url, timeout=2),  # noqa: S310 - our 127.0.0.1 URL
        ):
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} did not answer {url} in time")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- partner traffic ---------------------------------------------------------------------------


def _seal(
    covenant: Covenant,
    token_id: str,
    token_hash: str,
    subjects: tuple[str, ...],
    recipient: str,
    *,
    now: int,
    expires_in: int = 7 * DAY,
) -> tuple[str, bytes]:
    body = encode_body(example(MessageType.SIGNAL, subjects=tuple(sorted(subjects))))
    message_id = secrets.token_hex(32)
    envelope = seal(
        sender=SENDER,
        sign_key=covenant.sign_key(SENDER),
        recipients=[(recipient, covenant.directory.current_key(recipient, KeyUse.ENCRYPT, now))],
        body=body,
        message_id=message_id,
        token_id=token_id,
        token_hash=token_hash,
        subjects=subjects,
        message_type=MessageType.SIGNAL,
        schema_version=1,
        created_at=now,
        expires_at=now + expires_in,
        trace_id=TRACE,
    )
    return message_id, encode_envelope(envelope)


def _session(covenant: Covenant, partner: str) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(ssl=covenant.client_ssl(partner))
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30))


async def _drive(covenant: Covenant, url: str) -> None:
    """Accepted (to halt, the municipality, om), refused, expired and pending (the
    municipality, which never polls here), rejected (om)."""
    now = int(time.time())
    token = covenant.issue_token(now=now, participants=PARTICIPANTS)
    async with _session(covenant, COORDINATOR) as coordinator:
        response = await coordinator.post(
            url + "/v1/approaches",
            data=token.body,
            headers={"Content-Type": TOKEN_CONTENT_TYPE},
        )
        assert response.status in (200, 201), await response.text()
    headers = {"Content-Type": ENVELOPE_CONTENT_TYPE}
    sends = [("halt", 7 * DAY), (COORDINATOR, 7 * DAY), (COORDINATOR, 2), ("om", 7 * DAY)]
    sealed = {}
    async with _session(covenant, SENDER) as police:
        for recipient, expires_in in sends:
            message_id, data = _seal(
                covenant,
                token.token_id,
                token.token_hash,
                token.subjects,
                recipient,
                now=now,
                expires_in=expires_in,
            )
            sealed[message_id] = data
            response = await police.post(url + "/v1/messages", data=data, headers=headers)
            assert response.status == 202, await response.text()
        # A malformed envelope: refused with the authenticated sender as its label.
        response = await police.post(url + "/v1/messages", data=b"\x00" * 64, headers=headers)
        assert response.status >= 400
    # om takes its delivery and rejects it with a signed rejection.
    async with _session(covenant, "om") as om:
        deadline = time.monotonic() + DEADLINE_S
        deliveries: list[dict[str, Any]] = []
        while not deliveries:
            assert time.monotonic() < deadline, "om never got its delivery"
            response = await om.get(url + "/v1/inbox", params={"wait": "1"})
            assert response.status == 200, await response.text()
            deliveries = (await response.json())["deliveries"]
        rejections = []
        for delivery in deliveries:
            message_id = delivery["message_id"]
            header_hash = decode_envelope(sealed[message_id]).header_hash.hex()
            rejection = Rejection(
                message_id=message_id,
                header_hash=header_hash,
                recipient="om",
                rejected_at=int(time.time()),
                reason=RejectionReason.CANNOT_OPEN,
            )
            signed = encode_signed_object(sign_rejection(rejection, covenant.sign_key("om")))
            rejections.append(base64.b64encode(signed).decode("ascii"))
        response = await om.post(
            url + "/v1/receipts", json={"receipts": [], "rejections": rejections, "acks": []}
        )
        assert response.status == 200, await response.text()


def _rotate_sign_key(root: Path, work: Path, gateway_url: str) -> None:
    """The officers' rotation of ROTATED's sign key, published to the running gateway; the
    predecessor gets a retire_at (docs/operations/key-rotation.md, section 2)."""
    partner_dir = root / "partners" / ROTATED
    proposal = work / "rotation.json"
    steps: list[list[str | Path]] = [
        ["keys", "rotate", "--partner-dir", partner_dir, "--use", "sign"],
        [
            "keys", "directory", "propose", "--deployment", root,
            "--key-change", partner_dir / "outgoing" / "key-change-sign-2.json",
            "--out", proposal,
        ],
        ["keys", "directory", "sign", proposal, "--key", root / "officers" / "directory-1.key"],
        ["keys", "directory", "sign", proposal, "--key", root / "officers" / "directory-2.key"],
        [
            "keys", "directory", "publish", proposal, "--deployment", root,
            "--gateway", gateway_url, "--partner-dir", partner_dir,
        ],
    ]  # fmt: skip
    for argv in steps:
        assert ketenpost.main([str(a) for a in argv]) == 0, argv


def _export_uncovered_progress(halt_dir: Path) -> None:
    """Halt's system exports a progress report about a dossier no approach covers, written
    carefully (a dot-name, then a rename) and dated back past the adapter's settle time."""
    uit = halt_dir / "uitwisseling" / "uit"
    uit.mkdir(parents=True, exist_ok=True)
    row = FakeHaltSystem.voortgang(UNCOVERED_DOSSIER)
    part = uit / ".voortgang-live.csv.part"
    part.write_bytes(halt_csv(VOORTGANG_COLUMNS, [row]))
    settled = time.time() - 60
    os.utime(part, (settled, settled))
    part.rename(uit / "voortgang-live.csv")


# -- the stack ------------------------------------------------------------------------------


def _prometheus_config(gateway_port: int, adapter_port: int) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with its targets pointed at this test's processes."""
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(RULES)]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    gateway, adapter = jobs["ketenpost-gateway"], jobs["ketenpost-adapter"]
    gateway["static_configs"] = [{"targets": [f"127.0.0.1:{gateway_port}"]}]
    adapter["static_configs"] = [
        {"targets": [f"127.0.0.1:{adapter_port}"], "labels": {"partner": "halt"}}
    ]
    config["scrape_configs"] = [gateway, adapter]
    return config


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus_bin = require_tool("prometheus")
    require_tool("promtool")
    tmp = tmp_path_factory.mktemp("live")
    now = int(time.time())
    root = tmp / "covenant"
    ketenpost.init_deployment(root, now=now)
    halt_toml = root / "partners" / "halt" / "adapter.toml"
    # As the walkthrough does: add the [system] table unless `ketenpost init` wrote one.
    if not re.search(r"(?m)^\[system\]", halt_toml.read_text(encoding="utf-8")):
        system = (DEPLOY / "adapters" / "halt.system.toml").read_text(encoding="utf-8")
        halt_toml.write_text(halt_toml.read_text(encoding="utf-8") + system, encoding="utf-8")

    gateway = GatewayProcess(
        root / "gateway.toml", tmp / "gateway.db", env=GATEWAY_ENV, log=tmp / "gateway.log"
    )
    gateway.migrate()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        gateway.start()
        asyncio.run(gateway.wait_ready())
        # The adapter's gateway URL is the init default, https://127.0.0.1:8443; point it at
        # this gateway's port.
        halt_toml.write_text(
            halt_toml.read_text(encoding="utf-8").replace("https://127.0.0.1:8443", gateway.url),
            encoding="utf-8",
        )
        adapter_port = free_port()
        with (tmp / "adapter.log").open("wb") as log:
            adapter = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "ketenpost",
                    "adapter",
                    "run",
                    "halt",
                    "--config",
                    str(halt_toml),
                    "--metrics-listen",
                    f"127.0.0.1:{adapter_port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        processes.append(adapter)
        _wait_http(f"http://127.0.0.1:{adapter_port}/metrics", adapter, "the adapter")

        asyncio.run(_drive(Covenant(root, now=now), gateway.url))
        _rotate_sign_key(root, tmp, gateway.url)
        _export_uncovered_progress(root / "partners" / "halt")

        config = tmp / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(_prometheus_config(gateway.metrics_port, adapter_port)),
            encoding="utf-8",
        )
        prometheus_port = free_port()
        with (tmp / "prometheus.log").open("wb") as log:
            prometheus = subprocess.Popen(
                [
                    prometheus_bin,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        processes.append(prometheus)
        url = f"http://127.0.0.1:{prometheus_port}"
        _wait_http(url + "/-/ready", prometheus, "prometheus")
        yield Stack(url, gateway, adapter, prometheus, tmp)
    finally:
        for process in reversed(processes):
            _stop(process)
        gateway.stop()


def _series(stack: Stack, name: str) -> list[dict[str, str]]:
    query = urllib.parse.urlencode({"match[]": name})
    doc = _get_json(f"{stack.prometheus_url}/api/v1/series?{query}")
    assert doc["status"] == "success", doc
    result: list[dict[str, str]] = doc["data"]
    return result


def _wait_for_series(
    stack: Stack, names: set[str], timeout_s: float = DEADLINE_S
) -> dict[str, list[dict[str, str]]]:
    """Poll (bounded) until each name has a series; what was found by the deadline."""
    found: dict[str, list[dict[str, str]]] = {}
    deadline = time.monotonic() + timeout_s
    while True:
        for name in sorted(names - found.keys()):
            series = _series(stack, name)
            if series:
                found[name] = series
        if found.keys() >= names or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def _expected() -> set[str]:
    return set(used_metric_names()) - NOT_EXERCISED.keys() - GAPS


def test_every_series_the_alerts_and_dashboard_use_is_scraped(stack: Stack) -> None:
    found = _wait_for_series(stack, _expected())
    missing = {
        name: sorted(where)
        for name, where in used_metric_names().items()
        if name in _expected() and name not in found
    }
    logs = "".join(
        f"\n--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
        for p in sorted(stack.logs.glob("*.log"))
    )
    assert missing == {}, f"no series in Prometheus for these metrics{logs}"
    for name, labels in REQUIRED_LABELS.items():
        assert any(labels <= series.keys() for series in found[name]), (name, found[name])


def test_every_metric_used_is_declared_by_a_scraped_target(stack: Stack) -> None:
    # Also the ones without a series yet: each target's scrape declares every metric family
    # it registers (HELP and TYPE), and Prometheus keeps that metadata.
    _wait_for_series(stack, {"up"})
    metadata = _get_json(f"{stack.prometheus_url}/api/v1/metadata")["data"]
    declared = set(metadata)
    undeclared = set()
    for name in used_metric_names():
        if name == "up":
            continue
        base = name
        for suffix in ("_bucket", "_count", "_sum", "_total"):
            base = base.removesuffix(suffix)
        if name not in declared and base not in declared:
            undeclared.add(name)
    assert undeclared == set()


def test_targets_are_up_and_the_rules_load(stack: Stack) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        targets = _get_json(f"{stack.prometheus_url}/api/v1/targets")["data"]["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in targets}
        if set(health.values()) == {"up"} or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert health == {"ketenpost-gateway": "up", "ketenpost-adapter": "up"}
    groups = _get_json(f"{stack.prometheus_url}/api/v1/rules")["data"]["groups"]
    loaded = {rule["name"] for group in groups for rule in group["rules"]}
    assert loaded >= {"KetenpostNoAcceptance", "KetenpostWitnessInconsistency"}
    assert all(rule["health"] != "err" for g in groups for rule in g["rules"])


def test_no_alert_fires_on_a_healthy_stack(stack: Stack) -> None:
    # Everything here is healthy except what the traffic provoked on purpose (one refusal,
    # one rejection, one expiry), none of which crosses a threshold.
    _wait_for_series(stack, {"ketenpost_accepted_total"})
    alerts = _get_json(f"{stack.prometheus_url}/api/v1/alerts")["data"]["alerts"]
    assert [a["labels"]["alertname"] for a in alerts if a["state"] == "firing"] == []


def test_expiry_gauges_are_set_by_the_gateway(stack: Stack) -> None:
    # The gauges are refreshed every second, so a few scrapes settle it.
    found = _wait_for_series(stack, EXPIRY_GAUGES)
    assert found.keys() == EXPIRY_GAUGES
    now = time.time()
    roles = {s["role"] for s in found["ketenpost_directory_expiry_timestamp_seconds"]}
    assert roles == {"root", "targets", "snapshot", "timestamp"}
    # The traffic registered a token of the coordinator; the adapter (halt) and the test's
    # partners connected with their certificates.
    coordinators = {s["coordinator"] for s in found["ketenpost_token_expiry_timestamp_seconds"]}
    assert COORDINATOR in coordinators
    partners = {s["partner"] for s in found["ketenpost_certificate_expiry_timestamp_seconds"]}
    assert "halt" in partners
    for name in EXPIRY_GAUGES:
        values = _get_json(
            f"{stack.prometheus_url}/api/v1/query?"
            + urllib.parse.urlencode({"query": f"min({name})"})
        )["data"]["result"]
        assert float(values[0]["value"][1]) > now, name  # all in the future


def test_rotation_refusal_and_fixed_counters_are_real(stack: Stack) -> None:
    names = {
        "ketenpost_key_expiry_timestamp_seconds",
        "ketenpost_adapter_refused_total",
        "ketenpost_store_errors_total",
        "ketenpost_purged_total",
        "ketenpost_adapter_sent_total",
    }
    found = _wait_for_series(stack, names)
    assert found.keys() == names
    # The rotated partner's predecessor sign key retires in the future (about two refresh
    # intervals and the skew from now), and it is the only key with an end date.
    keys = found["ketenpost_key_expiry_timestamp_seconds"]
    assert {(s["partner"], s["use"]) for s in keys} == {(ROTATED, "sign")}
    retire_at = _get_json(
        f"{stack.prometheus_url}/api/v1/query?"
        + urllib.parse.urlencode({"query": "ketenpost_key_expiry_timestamp_seconds"})
    )["data"]["result"][0]["value"][1]
    assert float(retire_at) > time.time()
    refused = found["ketenpost_adapter_refused_total"]
    assert {(s["partner"], s["reason"]) for s in refused} == {("halt", "no_token")}
    # The fixed label sets start at 0: every operation and purge reason, every message type.
    assert {s["operation"] for s in found["ketenpost_store_errors_total"]} == STORE_OPERATIONS
    assert {s["reason"] for s in found["ketenpost_purged_total"]} == PURGE_REASONS
    assert {s["type"] for s in found["ketenpost_adapter_sent_total"]} == {
        t.value for t in MessageType
    }


def test_the_lists_of_exceptions_stay_small_and_real() -> None:
    used = set(used_metric_names())
    assert used >= GAPS | EXPIRY_GAUGES
    assert NOT_EXERCISED == {}
