"""The runbooks' commands work as written on a fresh ``ketenpost init`` deployment (issue 6).

Every fenced block of ``docs/operations/key-rotation.md`` and ``onboarding.md`` is a ``sh
runbook`` block, and every one is run, in document order, against a real gateway:

* the first block (the rehearsal: ``ketenpost init "$DEPLOY"``, ``store migrate``) runs on its
  own;
* then ``ketenpost serve --config "$DEPLOY/gateway.toml"`` starts as a subprocess on free ports
  of 127.0.0.1 (ready when ``/readyz`` on the operator port answers 200);
* then the other blocks run in one bash process (so variables set in one block carry to the
  next), with ``GATEWAY`` the gateway's partner URL, ``DEPLOY`` the deployment folder and
  ``WORK`` a scratch folder; ``set -euo pipefail``, so any command that fails fails the test.

The gateway is stopped at the end; when anything fails, the runbook's output and the gateway's
log are in the assertion message. The assertions afterwards read the folders the runbook left
and the JSON lines it printed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from adapters.config import load_partner_dir
from gateway.protocol.token import decode_signed
from keys.ca import read_certificate_pem
from keys.signed_directory import TrustedDirectory, read_bundle
from keys.tlsidentity import identify_peer

ROOT = Path(__file__).resolve().parent.parent
RUNBOOKS = ROOT / "docs" / "operations"
NAMES = ("key-rotation.md", "onboarding.md")
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
RUNBOOK_INFO = "sh runbook"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
RUN_TIMEOUT_S = 300.0


def fences(name: str) -> list[tuple[str, str]]:
    """Every fenced block of the runbook: (info string, body), in document order."""
    text = (RUNBOOKS / name).read_text(encoding="utf-8")
    return [(info.strip(), body) for info, body in FENCE.findall(text)]


def blocks(name: str) -> list[str]:
    return [body for info, body in fences(name) if info == RUNBOOK_INFO]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def environ(**extra: str) -> dict[str, str]:
    """This environment without ``KETENPOST_`` overrides, with this checkout's console script
    (whichever virtualenv runs the tests) first on ``PATH``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KETENPOST_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


@dataclass
class Gateway:
    process: subprocess.Popen[bytes]
    url: str
    operator_url: str
    log: Path

    def tail(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-4000:]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2) as r:  # noqa: S310 - our http URL
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def serve(deploy: Path, log: Path, env: Mapping[str, str]) -> Iterator[Gateway]:
    """``ketenpost serve`` over the deployment on free ports, until the block ends."""
    port, operator_port = free_port(), free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                "ketenpost",
                "serve",
                "--config",
                str(deploy / "gateway.toml"),
                "--listen",
                f"127.0.0.1:{port}",
                "--metrics-listen",
                f"127.0.0.1:{operator_port}",
            ],
            cwd=deploy,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    gateway = Gateway(
        process, f"https://127.0.0.1:{port}", f"http://127.0.0.1:{operator_port}", log
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _ready(gateway.operator_url):
            if process.poll() is not None:
                pytest.fail(f"ketenpost serve exited with {process.returncode}:\n{gateway.tail()}")
            if time.monotonic() > deadline:
                pytest.fail(
                    f"ketenpost serve was not ready in {START_TIMEOUT_S} s:\n{gateway.tail()}"
                )
            time.sleep(0.1)
        yield gateway
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclass(frozen=True)
class Ran:
    deploy: Path
    work: Path
    stdout: str
    stderr: str
    gateway_log: str

    def gateway_events(self, event: str) -> list[dict[str, Any]]:
        """The gateway's JSON log lines of ``event``."""
        found = []
        for line in self.gateway_log.splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and entry.get("event") == event:
                    found.append(entry)
        return found

    def json_lines(self) -> list[dict[str, Any]]:
        """Every stdout line that is one JSON object (``inbox`` prints such lines)."""
        lines = []
        for line in self.stdout.splitlines():
            if line.startswith("{") and line.endswith("}"):
                with contextlib.suppress(ValueError):
                    lines.append(json.loads(line))
        return lines


def _bash(script: str, env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + script],
        check=False,
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


def run_runbook(name: str, tmp_path: Path) -> Ran:
    if shutil.which("jq") is None:
        message = "the runbooks read the JSON the commands print with jq, which is missing"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (.ci/run installs it)")
        pytest.skip(message)
    deploy, work = tmp_path / "covenant", tmp_path / "work"
    work.mkdir()
    env = environ(DEPLOY=str(deploy), WORK=str(work))
    first, *rest = blocks(name)
    assert "ketenpost init" in first, "the first block is the rehearsal deployment"
    setup = _bash(first, env, work)
    assert setup.returncode == 0, f"{name}, first block:\n{setup.stdout[-4000:]}\n{setup.stderr}"
    with serve(deploy, tmp_path / "gateway.log", env) as gateway:
        result = _bash("\n".join(rest), {**env, "GATEWAY": gateway.url}, work)
        assert result.returncode == 0, (
            f"{name} failed (exit {result.returncode}):\n--- stdout\n{result.stdout[-6000:]}\n"
            f"--- stderr\n{result.stderr[-6000:]}\n--- gateway\n{gateway.tail()}"
        )
    log = (tmp_path / "gateway.log").read_text(encoding="utf-8", errors="replace")
    return Ran(deploy, work, setup.stdout + result.stdout, setup.stderr + "\n" + result.stderr, log)


def publish_commands(name: str) -> list[str]:
    """The runbook's ``keys directory publish`` commands, continuation lines joined."""
    commands = re.sub(r"\\\n\s*", " ", "\n".join(blocks(name))).splitlines()
    return [c for c in commands if "keys directory publish" in c]


def bundle_sends(name: str) -> list[str]:
    """Every command that sends a bundle to the gateway: ``publish``, ``push`` and
    ``timestamp --gateway``."""
    commands = re.sub(r"\\\n\s*", " ", "\n".join(blocks(name))).splitlines()
    return [
        c
        for c in commands
        if "keys directory publish" in c
        or "keys directory push" in c
        or ("keys timestamp" in c and "--gateway" in c)
    ]


def _directory(folder: Path) -> Any:
    trusted = TrustedDirectory.load(folder)
    return trusted, trusted.update(read_bundle(folder), int(time.time()))


@pytest.mark.parametrize("name", NAMES)
def test_every_block_is_run_against_a_gateway(name: str) -> None:
    infos = [info for info, _ in fences(name)]
    assert infos, "a runbook without blocks"
    assert set(infos) == {RUNBOOK_INFO}, f"blocks that would not be run: {infos}"
    first, *rest = blocks(name)
    assert 'ketenpost init "$DEPLOY"' in first
    assert "$GATEWAY" not in first, "the gateway starts after the first block"
    assert any('--gateway "$GATEWAY"' in body for body in rest)
    assert "gateway.example" not in "\n".join(rest), "a placeholder URL, not $GATEWAY"
    # Each version is published once, to the running gateway: `publish` refuses a proposal
    # whose version the deployment folder already holds (a local publish would need a
    # `keys directory push` after it).
    publishes = publish_commands(name)
    assert publishes
    assert all('--gateway "$GATEWAY"' in c for c in publishes), publishes


@pytest.mark.parametrize("name", NAMES)
def test_no_gateway_step_is_left_as_not_yet_implemented(name: str) -> None:
    text = (RUNBOOKS / name).read_text(encoding="utf-8")
    assert "requires-gateway" not in text
    assert "not yet implemented" not in text


@pytest.mark.slow
def test_key_rotation_runbook(tmp_path: Path) -> None:
    ran = run_runbook("key-rotation.md", tmp_path)
    deploy = ran.deploy
    for folder in (deploy / "directory", deploy / "partners" / "halt" / "directory"):
        trusted, directory = _directory(folder)
        assert trusted.root_version == 3
    halt = directory.partner("halt")
    assert sorted(k.use.value for k in halt.keys) == sorted(
        ["sign", "sign", "encrypt", "encrypt", "tls", "tls"]
    )
    assert any(k.revoked_at is not None for k in directory.partner("om").keys)
    assert any(k.revoked_at is not None for k in directory.partner("cjg").keys)
    velsen_tokens = [k for k in directory.partner("gemeente-velsen").keys if k.use.value == "token"]
    assert len(velsen_tokens) == 2
    # Secrets never reach the terminal: no private key file's contents appear in the output.
    output = ran.stdout + ran.stderr
    for key_file in deploy.rglob("*.key"):
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        secret = key_file.read_text(encoding="utf-8")
        assert secret.strip() not in output
    assert load_partner_dir(deploy / "partners" / "halt").keys.encrypt == (
        "keys/encrypt.key",
        "keys/encrypt-2.key",
    )
    # Every version went to the running gateway, which took it at once (a refreshed timestamp
    # and a push of the same bundle again too).
    published = ran.gateway_events("directory_published")
    assert len(published) == len(bundle_sends("key-rotation.md")) == 8
    # Only ever forward (the first root rotation keeps the targets version: it changes no
    # directory contents).
    versions = [event["version"] for event in published]
    assert versions == sorted(versions)
    assert versions[-1] == directory.version
    lines = ran.json_lines()
    # Traffic flowed on the rotated keys: halt opened a message (sealed to its new encrypt
    # key, active when the gateway accepted it) under an approach signed with Velsen's new
    # token key, and Velsen read halt's answer; after both root rotations, once more.
    received = [line for line in lines if line.get("kind") == "message"]
    assert [(m["sender"], m["type"], m["acked"]) for m in received] == [
        ("gemeente-velsen", "progress", True),
        ("halt", "progress", True),
        ("gemeente-velsen", "progress", True),
    ]
    new_encrypt = max(
        (k for k in halt.keys if k.use.value == "encrypt"), key=lambda k: k.active_from
    )
    assert new_encrypt.active_from <= received[0]["accepted_at"]
    approaches = sorted((deploy / "partners" / "gemeente-velsen" / "approaches").glob("*.json"))
    new_token_kid = max(velsen_tokens, key=lambda k: k.active_from).kid
    assert approaches
    for approach in approaches:
        signed = base64.b64decode(json.loads(approach.read_bytes())["signed_token"])
        assert decode_signed(signed).kid == new_token_kid
    # om's own revocation of its encrypt key was recorded by the running gateway at once.
    assert "acts on it from now on" in ran.stderr
    # Carried again by halt with `revoke --submit`: the same record, already there.
    assert "had recorded the statement already" in ran.stderr
    assert '"recorded_at"' in ran.stdout
    # The officers' revocation of cjg's sign key: its next message refused at once, the one
    # it had queued purged, and cjg told.
    assert "refused: key_compromised: " in ran.stderr
    purges = [line for line in lines if line.get("event") == "purge"]
    assert [(p["recipient"], p["verified"]) for p in purges] == [("gemeente-velsen", True)]


@pytest.mark.slow
def test_onboarding_runbook(tmp_path: Path) -> None:
    ran = run_runbook("onboarding.md", tmp_path)
    deploy, partner = ran.deploy, ran.work / "welzijn-velsen"
    _, directory = _directory(deploy / "partners" / "halt" / "directory")
    left = directory.partner("welzijn-velsen")
    assert left.role.value == "welfare"
    assert left.left_at is not None
    assert all(k.retire_at is not None for k in left.keys)
    # Before it left, the directory listed it and its certificate identified it. (The
    # partner's own folder holds the newest version by now: its last `send` fetched it.)
    _, own = _directory(partner / "directory")
    assert own.version == directory.version
    cert = read_certificate_pem(partner / "keys" / "tls.crt").public_bytes(Encoding.DER)
    assert identify_peer(cert, own, left.left_at - 1).id == "welzijn-velsen"
    # adapter.toml is the one `adapter configure` wrote, and it loads.
    config = load_partner_dir(partner)
    assert config.partner.id == "welzijn-velsen"
    assert config.gateway.url.startswith("https://127.0.0.1:")
    lines = ran.json_lines()
    # The first message reached the new partner, was opened and acknowledged with a receipt;
    # its own answer reached Velsen; Velsen saw the receipt.
    messages = [(m["sender"], m["type"], m["acked"]) for m in lines if m.get("kind") == "message"]
    assert messages == [
        ("gemeente-velsen", "progress", True),
        ("welzijn-velsen", "progress", True),
    ]
    events = [
        (e["event"], e["recipient"], e["verified"]) for e in lines if e.get("kind") == "event"
    ]
    assert ("receipt", "welzijn-velsen", True) in events
    # After leaving: refused as a sender, and the message queued to it purged (Velsen told).
    assert "refused: unknown_sender: welzijn-velsen has left the covenant" in ran.stderr
    assert ("purge", "welzijn-velsen", True) in events
    assert not [line for line in lines if line.get("kind") in ("rejection", "postponed")]
