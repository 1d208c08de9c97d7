"""`ketenpost adapter run` as a real subprocess: what an operator sees when its start fails.

* The metrics port is taken (9464 is also the gateway's default): one line naming the address
  and the flag that changes it, exit 1.
* An installed package declaring a built-in transport name: the warning reaches the log with
  the package and the name (logging is configured before the registry collects entry points).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import ketenpost
from tests.adapters.test_store_registry_cli import TRIAL_MODULE, _install


@pytest.fixture(scope="module")
def halt_toml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dep") / "covenant"
    ketenpost.init_deployment(root, now=int(time.time()))
    return root / "partners" / "halt" / "adapter.toml"


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


def run_adapter(halt_toml: Path, port: int, env: dict[str, str] | None = None) -> tuple[int, str]:
    command = [sys.executable, "-m", "ketenpost", "adapter", "run", "halt"]
    done = subprocess.run(
        [*command, "--config", str(halt_toml), "--metrics-listen", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )
    return done.returncode, done.stderr


def test_a_taken_metrics_port_names_the_flag(halt_toml: Path, taken_port: int) -> None:
    code, err = run_adapter(halt_toml, taken_port)
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last == (
        f"ketenpost: error: cannot listen on 127.0.0.1:{taken_port} for /metrics and /healthz: "
        "the address is in use (choose another with --metrics-listen HOST:PORT, or '' for none)"
    )


def test_an_ignored_entry_point_is_logged_with_its_detail(
    halt_toml: Path, taken_port: int, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    _install(site, "shadow_trial", "halt-csv = shadow_trial:create_transport", TRIAL_MODULE)
    root = Path(__file__).resolve().parents[2]
    path = os.pathsep.join([str(site), str(root), os.environ.get("PYTHONPATH", "")])
    # The taken port ends the run right after start-up, once the registry has been built.
    code, err = run_adapter(halt_toml, taken_port, {"PYTHONPATH": path})
    assert code == 1
    lines = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    ignored = [x for x in lines if x.get("event") == "transport_entry_point_ignored"]
    assert [x["detail"] for x in ignored] == [
        "shadow_trial declares the built-in transport 'halt-csv'"
    ]
    assert ignored[0]["level"] == "warning"
    # Which transport runs, and where it comes from, is the start-up's first word on it.
    loaded = [x["detail"] for x in lines if x.get("event") == "transport_loaded"]
    assert loaded == ["halt-csv = adapters.partners.halt:create_transport"]
