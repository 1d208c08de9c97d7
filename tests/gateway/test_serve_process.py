"""``ketenpost serve`` as a real process: migrate first, ready, SIGTERM, bad config, logs.

Each test runs the installed ``ketenpost`` program in a subprocess on random free ports with a
fresh SQLite file, over the session's development deployment (``conftest.deployment``). The
only waits are bounded waits for the process to come up or to go down, and for the kernel to
show that the gateway has read a request; nothing sleeps to make time pass.

``ServedGateway`` and ``serve_gateway`` are reused by ``test_cli_partner``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.logs import FIXED_FIELDS
from gateway.store.migrations import MIGRATIONS
from keys.tlsidentity import TlsFiles, client_context
from tests.gateway.conftest import Deployment

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
PENDING = [f"{m.version:04d} {m.name}" for m in MIGRATIONS]


def ketenpost_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m ketenpost``."""
    script = Path(sys.executable).with_name("ketenpost")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ketenpost"]


def clean_environ(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test process's environment without any KETENPOST_ override, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KETENPOST_")}
    env.update(extra or {})
    return env


def run_ketenpost(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ketenpost_command(), *args],
        capture_output=True,
        text=True,
        env=clean_environ(env),
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class ServedGateway:
    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    db: Path
    stdout: Path
    stderr: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def operator_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def stop(self) -> int:
        """SIGTERM, then wait (bounded) for the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=STOP_TIMEOUT_S)

    def log_lines(self) -> list[str]:
        return self.stdout.read_text(encoding="utf-8").splitlines()


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our own http URL
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait_ready(gw: ServedGateway) -> None:
    """Bounded wait for the process to come up: /readyz answers 200."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if gw.process.poll() is not None:
            raise AssertionError(
                f"serve exited with {gw.process.returncode}: {gw.stderr.read_text()}"
            )
        with contextlib.suppress(OSError):
            status, _ = _get(gw.operator_url + "/readyz")
            if status == 200:
                return
        time.sleep(0.05)
    raise AssertionError("the gateway did not become ready in time")


def migrate(deployment: Deployment, db: Path, *, dry_run: bool = False) -> list[str]:
    args = ["store", "migrate", "--config", str(deployment.root / "gateway.toml")]
    args += ["--store", f"sqlite://{db}"] + (["--dry-run"] if dry_run else [])
    done = run_ketenpost(*args)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["dry_run"] is dry_run
    migrations: list[str] = result["migrations"]
    return migrations


@contextlib.contextmanager
def serve_gateway(deployment: Deployment, tmp_path: Path) -> Iterator[ServedGateway]:
    """Migrate a fresh store, run ``ketenpost serve`` on free ports, wait until ready; on exit
    stop it with SIGTERM (if still running)."""
    db = tmp_path / "ketenpost.db"
    migrate(deployment, db)
    port, metrics_port = free_port(), free_port()
    stdout, stderr = tmp_path / "serve.out", tmp_path / "serve.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [
                *ketenpost_command(),
                "serve",
                "--config",
                str(deployment.root / "gateway.toml"),
                "--listen",
                f"127.0.0.1:{port}",
                "--metrics-listen",
                f"127.0.0.1:{metrics_port}",
                "--store",
                f"sqlite://{db}",
            ],
            stdout=out,
            stderr=err,
            env=clean_environ(),
        )
    gw = ServedGateway(process, port, metrics_port, db, stdout, stderr)
    try:
        _wait_ready(gw)
        yield gw
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# -- migrations ------------------------------------------------------------------------------


def test_migrate_dry_run_lists_pending_and_applies_nothing(
    deployment: Deployment, tmp_path: Path
) -> None:
    db = tmp_path / "ketenpost.db"
    assert migrate(deployment, db, dry_run=True) == PENDING
    # Nothing was applied: a second dry run lists the same, and serving is refused.
    assert migrate(deployment, db, dry_run=True) == PENDING
    refused = run_ketenpost(
        "serve",
        "--config",
        str(deployment.root / "gateway.toml"),
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--metrics-listen",
        f"127.0.0.1:{free_port()}",
        "--store",
        f"sqlite://{db}",
    )
    assert refused.returncode == 1
    assert refused.stderr.startswith("ketenpost: error: ")
    assert migrate(deployment, db) == PENDING
    assert migrate(deployment, db, dry_run=True) == []


# -- a running gateway -----------------------------------------------------------------------


def test_serve_is_ready_and_logs_json_lines_with_fixed_fields(
    deployment: Deployment, tmp_path: Path
) -> None:
    with serve_gateway(deployment, tmp_path) as gw:
        status, body = _get(gw.operator_url + "/readyz")
        assert (status, json.loads(body)) == (200, {"status": "ready"})
        status, body = _get(gw.operator_url + "/healthz")
        assert (status, json.loads(body)) == (200, {"status": "alive"})
        assert gw.stop() == 0
    lines = gw.log_lines()
    assert lines, "serve logged nothing on stdout"
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    for record in records:
        assert tuple(record)[: len(FIXED_FIELDS)] == FIXED_FIELDS, record
        assert record["ts"].endswith("Z")
    events = [r["event"] for r in records]
    assert "gateway_started" in events
    assert events[-1] == "gateway_stopping" or "gateway_stopping" in events
    started = next(r for r in records if r["event"] == "gateway_started")
    assert started["address"] == f"127.0.0.1:{gw.port}"
    assert gw.stderr.read_text() == ""


def _tcp_rx_queue(local_port: int, remote_port: int) -> int | None:
    """Bytes the owner of the 127.0.0.1 socket ``local_port``→``remote_port`` has not read
    yet, from ``/proc/net/tcp``; ``None`` if there is no such socket."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, queues = fields[1], fields[2], fields[4]
        if int(local.split(":")[1], 16) == local_port and int(remote.split(":")[1], 16) == (
            remote_port
        ):
            return int(queues.split(":")[1], 16)
    return None


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net/tcp")
def test_sigterm_finishes_an_in_flight_long_poll_and_closes_the_store(
    deployment: Deployment, tmp_path: Path
) -> None:
    with serve_gateway(deployment, tmp_path) as gw:
        ctx = client_context(
            TlsFiles(
                certificate=deployment.partner_dir("halt") / "keys" / "tls.crt",
                private_key=deployment.partner_dir("halt") / "keys" / "tls.key",
                trust_anchors=(deployment.partner_dir("halt") / "trust" / "ca.crt",),
            )
        )
        wait_s = 3
        connection = http.client.HTTPSConnection("127.0.0.1", gw.port, context=ctx, timeout=30)
        connection.request("GET", f"/v1/inbox?wait={wait_s}")
        assert connection.sock is not None
        client_port = connection.sock.getsockname()[1]
        # Bounded wait until the gateway has read the request off the socket: from then on
        # it is in flight.
        deadline = time.monotonic() + 5
        while _tcp_rx_queue(gw.port, client_port) != 0:
            assert time.monotonic() < deadline, "the gateway never read the request"
            time.sleep(0.01)
        signalled = time.monotonic()
        gw.process.send_signal(signal.SIGTERM)

        response = connection.getresponse()
        answered = time.monotonic()
        body = json.loads(response.read())
        connection.close()
        assert response.status == 200
        assert response.headers["API-Version"] == "1"
        assert body == {"deliveries": [], "events": []}
        # The poll ran its full wait after SIGTERM instead of being cut off.
        assert answered - signalled >= wait_s - 1
        assert gw.process.wait(timeout=STOP_TIMEOUT_S) == 0
        # Stopped accepting: a new connection is refused.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", gw.port), timeout=2).close()

    # The store was closed cleanly: SQLite folded its write-ahead log back in and removed it,
    # and the file opens and checks out.
    assert not Path(f"{gw.db}-wal").exists()
    with contextlib.closing(sqlite3.connect(gw.db)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert migrate(deployment, gw.db, dry_run=True) == []
    events = [json.loads(line)["event"] for line in gw.log_lines()]
    assert "gateway_stopping" in events


# -- configuration errors and secrets --------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "args", "key"),
    [
        pytest.param(
            {"KETENPOST_LIMITS__MAX_RECIPIENTS": "many"},
            (),
            "limits.max_recipients",
            id="env-not-an-integer",
        ),
        pytest.param(
            {"KETENPOST_LIMITS__CLOCK_SKEW_S": "-5"},
            (),
            "limits.clock_skew_s",
            id="env-negative",
        ),
        pytest.param({}, ("--listen", "127.0.0.1:notaport"), "--listen", id="flag-bad-address"),
        pytest.param({"KETENPOST_GATEWAY__COLOUR": "blue"}, (), "gateway.colour", id="unknown-key"),
    ],
)
def test_bad_config_prints_one_line_naming_the_key_and_exits_2(
    deployment: Deployment, env: dict[str, str], args: tuple[str, ...], key: str
) -> None:
    done = run_ketenpost(
        "serve", "--config", str(deployment.root / "gateway.toml"), *args, env=env, timeout=30
    )
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("ketenpost: error: ")
    assert key in lines[0]


def test_config_show_redacts_secrets(deployment: Deployment, tmp_path: Path) -> None:
    secret_file = tmp_path / "tls-passphrase"
    secret_file.write_text("file-held-secret-9f8e\n")
    secret_file.chmod(0o600)
    env = {
        "KETENPOST_KEYS__PASSPHRASE": "env-held-secret-1a2b",
        "KETENPOST_TLS__KEY_PASSPHRASE_FILE": str(secret_file),
    }
    for fmt in ("toml", "json"):
        done = run_ketenpost(
            "config",
            "show",
            "--config",
            str(deployment.root / "gateway.toml"),
            "--format",
            fmt,
            env=env,
        )
        assert done.returncode == 0, done.stderr
        assert "env-held-secret-1a2b" not in done.stdout
        assert "file-held-secret-9f8e" not in done.stdout
        assert done.stdout.count("<redacted>") == 2, done.stdout
    shown = json.loads(
        run_ketenpost(
            "config",
            "show",
            "--config",
            str(deployment.root / "gateway.toml"),
            "--format",
            "json",
            env=env,
        ).stdout
    )
    assert shown["keys"]["passphrase"] == "<redacted>"
    assert shown["tls"]["key_passphrase"] == "<redacted>"
