"""The container image's install steps, run outside a container (no Docker engine here).

deploy/container/install.sh is what the Dockerfile's RUN steps call. This test runs both of its
stages into a temporary folder with this interpreter: wheels of ``ketenpost[postgres]`` from
the working tree, then a fresh virtual environment from those wheels alone, and then runs the
installed ``ketenpost`` from it. It downloads the dependencies' wheels from the package index,
so it is marked slow.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy._tools import DEPLOY, ROOT

INSTALL = DEPLOY / "container" / "install.sh"


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", str(INSTALL), *args],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env=env,
    )


def test_dockerfile_runs_install_sh_for_both_stages() -> None:
    text = (DEPLOY / "container" / "Dockerfile").read_text(encoding="utf-8")
    assert 'ketenpost-install", "build", "/src", "/wheels"]' in text
    assert "ketenpost-install runtime /wheels /opt/ketenpost" in text


def test_install_sh_refuses_bad_usage() -> None:
    done = _run("nonsense", "a", "b", env=dict(os.environ))
    assert done.returncode == 2
    assert done.stderr.startswith("usage: ")


@pytest.mark.slow
def test_install_steps_in_a_fresh_virtualenv(tmp_path: Path) -> None:
    # The build stage copies exactly these into /src; copy the same, so a file the build needs
    # and the Dockerfile forgets fails here too.
    source = tmp_path / "src"
    source.mkdir()
    dockerfile = (DEPLOY / "container" / "Dockerfile").read_text(encoding="utf-8")
    for name in ("pyproject.toml", "README.md", "LICENSE", "ketenpost.py"):
        assert name in dockerfile
        (source / name).write_bytes((ROOT / name).read_bytes())
    for package in ("keys", "gateway", "adapters"):
        assert f"COPY {package} ./{package}" in dockerfile
        subprocess.run(
            ["cp", "-r", str(ROOT / package), str(source / package)], check=True, timeout=60
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV"))}
    # The image's interpreter is the base image's python3; here it is the one running tests.
    base = getattr(sys, "_base_executable", sys.executable)
    env["PYTHON"] = base
    wheels, prefix = tmp_path / "wheels", tmp_path / "opt-ketenpost"
    built = _run("build", str(source), str(wheels), env=env)
    assert built.returncode == 0, built.stdout + built.stderr
    assert any(p.name.startswith("ketenpost-") for p in wheels.glob("*.whl"))
    assert any(p.name.startswith("asyncpg-") for p in wheels.glob("*.whl"))
    installed = _run("runtime", str(wheels), str(prefix), env=env)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    done = subprocess.run(
        [str(prefix / "bin" / "ketenpost"), "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "--metrics-listen" in done.stdout
