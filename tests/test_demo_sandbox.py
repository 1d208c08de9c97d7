"""``ketenpost demo --without PARTNER``: a sandbox in which a developer runs their own adapter
among the built-in ones.

The demo runs as a real subprocess; a real ``ketenpost adapter run cjg`` subprocess (the
built-in CJG transport stands in for the developer's) is started with the command the demo
printed, and must reach the gateway; both then stop cleanly on SIGTERM.
"""

from __future__ import annotations

import os
import queue
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, TypeVar

import pytest

import ketenpost
from adapters.demo import FAULT_ENV
from adapters.partners.welfare import CLIENT_TABLE, INBOX_TABLE, OUTBOX_TABLE

READY_LINE = "Ctrl-C stops them"
READY_TIMEOUT_S = 45.0
CONNECT_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 20.0
# Every adapter fetches the directory once when it starts, then every [directory] refresh_s
# (300 s): within this test, one more fetch is the developer's adapter.
DIRECTORY_FETCHES = re.compile(
    r'^ketenpost_request_duration_seconds_count\{method="GET",route="/v1/directory",'
    r'status="200"\} (\d+)',
    re.MULTILINE,
)

T = TypeVar("T")


def _lines(stream: IO[str]) -> queue.Queue[str | None]:
    """The lines of ``stream`` as they come (``None`` at its end), read by a thread."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _until_ready(lines: queue.Queue[str | None], seen: list[str]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=deadline - time.monotonic())
        except queue.Empty:
            break
        if line is None:
            pytest.fail("the demo exited before it was ready:\n" + "\n".join(seen))
        seen.append(line)
        if READY_LINE in line:
            return
    pytest.fail("the demo was not ready in time:\n" + "\n".join(seen))


def _field(seen: list[str], name: str) -> str:
    (value,) = [ln.split(f"{name}:", 1)[1].strip() for ln in seen if ln.strip().startswith(name)]
    return value


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - http://127.0.0.1
            return response.status, response.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8")


def _poll(what: str, check: Callable[[], T | None], timeout_s: float) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = check()
        except (urllib.error.URLError, OSError):
            value = None
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"{what}: not within {timeout_s:g} s")
        time.sleep(0.1)


def _directory_fetches(metrics_url: str) -> int:
    _status, text = _get(metrics_url)
    found = DIRECTORY_FETCHES.search(text)
    return int(found.group(1)) if found else 0


def _stop(process: subprocess.Popen[str]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


def test_a_real_adapter_joins_the_sandbox_and_everything_stops_cleanly(tmp_path: Path) -> None:
    folder = tmp_path / "sandbox"
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    env.pop(FAULT_ENV, None)
    demo_err = tmp_path / "demo.stderr"
    adapter_err = tmp_path / "cjg.stderr"
    with demo_err.open("w", encoding="utf-8") as err:
        demo = subprocess.Popen(
            [sys.executable, "-m", "ketenpost", "demo", "--dir", str(folder), "--without", "cjg"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            encoding="utf-8",
            env=env,
        )
    adapter: subprocess.Popen[str] | None = None
    try:
        assert demo.stdout is not None
        seen: list[str] = []
        _until_ready(_lines(demo.stdout), seen)
        output = "\n".join(seen)
        # No scenario: nothing was sent, and what was left out is named.
        assert "[ 1]" not in output
        assert "sandbox: the scenario is not played" in output
        (running,) = [ln for ln in seen if "adapters running (none for cjg)" in ln]
        adapters = int(running.split("adapters running")[0].split()[-1])
        assert adapters == 8
        gateway_url = _field(seen, "gateway")
        metrics_url = _field(seen, "metrics")
        assert gateway_url.startswith("https://127.0.0.1:")
        assert metrics_url.startswith("http://127.0.0.1:")
        assert metrics_url.endswith("/metrics")
        cjg = (folder / "partners" / "cjg").resolve()
        assert _field(seen, "folder") == str(cjg)
        assert _field(seen, "adapter.toml") == str(cjg / "adapter.toml")
        command = shlex.split(_field(seen, "run"))
        assert command[:6] == [
            "ketenpost",
            "adapter",
            "run",
            "cjg",
            "--config",
            str(cjg / "adapter.toml"),
        ]
        assert command[6] == "--metrics-listen"
        listen = command[7]
        assert listen.startswith("127.0.0.1:")
        assert listen.rsplit(":", 1)[1] not in {
            gateway_url.rsplit(":", 1)[1],
            metrics_url.split(":")[2].split("/")[0],
        }
        assert gateway_url in (cjg / "adapter.toml").read_text(encoding="utf-8")

        # The built-in partners' systems exist as in the full demo: welfare's tables too.
        with sqlite3.connect(folder / "partners" / "welzijn-ijmond" / "welzijn.db") as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        conn.close()
        assert {CLIENT_TABLE, OUTBOX_TABLE, INBOX_TABLE} <= tables

        # Every built-in adapter has fetched the directory once; then the developer's starts.
        _poll(
            "the built-in adapters' directory fetches",
            lambda: True if _directory_fetches(metrics_url) == adapters else None,
            CONNECT_TIMEOUT_S,
        )
        with adapter_err.open("w", encoding="utf-8") as err:
            adapter = subprocess.Popen(
                [sys.executable, "-m", *command],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                encoding="utf-8",
                env=env,
            )
        _poll(
            "the cjg adapter's directory fetch at the gateway",
            lambda: True if _directory_fetches(metrics_url) == adapters + 1 else None,
            CONNECT_TIMEOUT_S,
        )

        def healthy() -> str | None:
            status, text = _get(f"http://{listen}/healthz")
            return text if status == 200 else None

        health = _poll("the cjg adapter's /healthz", healthy, CONNECT_TIMEOUT_S)
        assert '"partner": "cjg"' in health
        _status, metrics = _get(f"http://{listen}/metrics")
        assert "ketenpost_adapter_directory_stale 0.0" in metrics

        assert _stop(adapter) == 0, adapter_err.read_text(encoding="utf-8")
        assert adapter.stdout is not None
        assert f"adapter cjg running against {gateway_url}" in adapter.stdout.read()
        assert _stop(demo) == 0, demo_err.read_text(encoding="utf-8")
        assert demo_err.read_text(encoding="utf-8") == ""
        # The gateway subprocess went with the demo.
        with pytest.raises(urllib.error.URLError):
            _get(metrics_url)
    finally:
        for process in (adapter, demo):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
            if process is not None and process.stdout is not None:
                process.stdout.close()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(
            ["--without", "nope"], "--without: unknown partner 'nope' (known: cjg, ", id="unknown"
        ),
        pytest.param(["--without", "cjg,,om"], "give partner ids separated", id="empty name"),
        pytest.param(["--without", "cjg", "--once"], "--once exits after the scenario", id="once"),
    ],
)
def test_a_bad_without_is_a_usage_error(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ketenpost.main(["demo", "--dir", str(tmp_path / "d"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ketenpost: error: ")
    assert message in err
    assert len(err.strip().splitlines()) == 1
    # Refused before anything was made.
    assert not (tmp_path / "d").exists()


def test_a_fault_needs_the_scenario(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(FAULT_ENV, "stop:cjg@incident")
    assert ketenpost.main(["demo", "--without", "om"]) == 2
    assert FAULT_ENV in capsys.readouterr().err


def _gateways_of(folder: Path) -> list[int]:
    """Pids of ``ketenpost serve`` processes whose configuration lies in ``folder``."""
    config = str(folder / "gateway.toml").encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in argv and config in argv:
            pids.append(int(proc.name))
    return pids


def test_a_sigterm_while_the_demo_starts_stops_its_gateway_too(tmp_path: Path) -> None:
    """Before the demo serves (here: as soon as its gateway is up, while the adapters start and
    the scenario plays) a SIGTERM cancels it: its gateway subprocess is stopped with it, not
    left running, and the demo says why it ended."""
    folder = tmp_path / "demo"
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    env.pop(FAULT_ENV, None)
    demo = subprocess.Popen(
        [sys.executable, "-m", "ketenpost", "demo", "--dir", str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        lines = _lines(demo.stdout)  # type: ignore[arg-type]
        seen: list[str] = []
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not any("gateway serving on" in ln for ln in seen):
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None:
                pytest.fail("the demo exited before its gateway served:\n" + "\n".join(seen))
            seen.append(line)
        assert _gateways_of(folder), "the demo's gateway subprocess is not running"
        demo.send_signal(signal.SIGTERM)
        code = demo.wait(timeout=STOP_TIMEOUT_S)
        assert demo.stderr is not None
        assert code == 1
        assert "stopped by a signal before the demo was ready" in demo.stderr.read()
        assert not any(READY_LINE in ln for ln in seen)
        _poll("the gateway subprocess gone", lambda: True if not _gateways_of(folder) else None, 10)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        for pid in _gateways_of(folder):
            os.kill(pid, signal.SIGKILL)
        for stream in (demo.stdout, demo.stderr):
            if stream is not None:
                stream.close()
