"""The runbooks' commands work as written on a fresh ``ketenpost init`` deployment (issue 6).

Every fenced block marked ``sh runbook`` in ``docs/operations/*.md`` is run, in document order,
in one bash process per runbook (so variables set in one block carry to the next), with
``DEPLOY`` a new deployment folder and ``WORK`` a scratch folder. Blocks marked
``sh requires-gateway`` need issue 6 item 2 and are only checked to say so.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from adapters.config import load_partner_dir
from keys.ca import read_certificate_pem
from keys.signed_directory import TrustedDirectory, read_bundle
from keys.tlsidentity import identify_peer

ROOT = Path(__file__).resolve().parent.parent
RUNBOOKS = ROOT / "docs" / "operations"
BLOCK = re.compile(r"^```sh (runbook|requires-gateway)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def blocks(name: str, kind: str) -> list[str]:
    text = (RUNBOOKS / name).read_text(encoding="utf-8")
    return [body for k, body in BLOCK.findall(text) if k == kind]


def run_runbook(name: str, tmp_path: Path) -> tuple[Path, Path, str]:
    deploy, work = tmp_path / "covenant", tmp_path / "work"
    work.mkdir()
    script = "set -euo pipefail\n" + "\n".join(blocks(name, "runbook"))
    env = {
        **os.environ,
        "DEPLOY": str(deploy),
        "WORK": str(work),
        # The console script of this checkout, whichever virtualenv runs the tests.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    result = subprocess.run(
        ["bash", "-c", script],
        check=False,
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (
        f"{name} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    return deploy, work, result.stdout + result.stderr


@pytest.mark.parametrize("name", ["key-rotation.md", "onboarding.md"])
def test_gateway_steps_are_marked_as_not_yet_implemented(name: str) -> None:
    text = (RUNBOOKS / name).read_text(encoding="utf-8")
    assert blocks(name, "runbook"), "a runbook without executable blocks"
    assert blocks(name, "requires-gateway")
    assert "not yet implemented" in text
    for body in blocks(name, "runbook"):
        assert "--gateway" not in body, "publishing to a gateway is not runnable yet"


@pytest.mark.slow
def test_key_rotation_runbook(tmp_path: Path) -> None:
    deploy, _work, output = run_runbook("key-rotation.md", tmp_path)
    now = int(time.time())
    for folder in (deploy / "directory", deploy / "partners" / "halt" / "directory"):
        trusted = TrustedDirectory.load(folder)
        directory = trusted.update(read_bundle(folder), now)
        assert trusted.root_version == 3
    halt = directory.partner("halt")
    assert sorted(k.use.value for k in halt.keys) == sorted(
        ["sign", "sign", "encrypt", "encrypt", "tls", "tls"]
    )
    assert any(k.revoked_at is not None for k in directory.partner("om").keys)
    assert any(k.revoked_at is not None for k in directory.partner("cjg").keys)
    assert (
        len([k for k in directory.partner("gemeente-velsen").keys if k.use.value == "token"]) == 2
    )
    # Secrets never reach the terminal: no private key file's contents appear in the output.
    for key_file in deploy.rglob("*.key"):
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        secret = key_file.read_text(encoding="utf-8")
        assert secret.strip() not in output
    assert load_partner_dir(deploy / "partners" / "halt").keys.encrypt == (
        "keys/encrypt.key",
        "keys/encrypt-2.key",
    )


@pytest.mark.slow
def test_onboarding_runbook(tmp_path: Path) -> None:
    deploy, work, _ = run_runbook("onboarding.md", tmp_path)
    partner = work / "welzijn-velsen"
    now = int(time.time())
    trusted = TrustedDirectory.load(deploy / "partners" / "halt" / "directory")
    directory = trusted.update(read_bundle(deploy / "partners" / "halt" / "directory"), now)
    left = directory.partner("welzijn-velsen")
    assert left.role.value == "welfare"
    assert left.left_at is not None
    assert all(k.retire_at is not None for k in left.keys)
    # Before it left, the directory listed it and its certificate identified it.
    own = TrustedDirectory.load(partner / "directory")
    joined = own.update(read_bundle(partner / "directory"), now)
    cert = read_certificate_pem(partner / "keys" / "tls.crt").public_bytes(Encoding.DER)
    assert identify_peer(cert, joined, now).id == "welzijn-velsen"
    config = load_partner_dir(partner)
    assert config.partner.id == "welzijn-velsen"
