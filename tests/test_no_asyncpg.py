"""``pip install ketenpost`` without the ``postgres`` extra: every verb works without asyncpg,
and only a PostgreSQL database or store asks for the extra, in one line.

Each case runs ``ketenpost.main`` in a fresh interpreter in which ``import asyncpg`` fails
(``sys.modules['asyncpg'] = None``), as it does where the extra is not installed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

RUN_TIMEOUT_S = 120
WITHOUT_ASYNCPG = (
    "import sys; sys.modules['asyncpg'] = None; import ketenpost; "
    "raise SystemExit(ketenpost.main(sys.argv[1:]))"
)
PG_URL = "postgresql://ketenpost@127.0.0.1:5432/ketenpost"
EXTRA = "needs the postgres extra"
PIP = "pip install 'ketenpost[postgres]'"


def ketenpost(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_ASYNCPG, *argv],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=RUN_TIMEOUT_S,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        check=False,
    )


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A development deployment made by ``ketenpost init`` without asyncpg."""
    target = tmp_path_factory.mktemp("no-asyncpg") / "covenant"
    done = ketenpost("init", str(target))
    assert done.returncode == 0, done.stderr
    assert '"deployment"' in done.stdout
    return target


def test_the_interpreter_really_has_no_asyncpg() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['asyncpg'] = None; import asyncpg"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 1
    assert "ModuleNotFoundError" in done.stderr


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(("--help",), id="help"),
        pytest.param(("demo", "--help"), id="demo help"),
        pytest.param(("adapter", "run", "--help"), id="adapter run help"),
        pytest.param(("schema", "--help"), id="schema help"),
    ],
)
def test_help_works(argv: tuple[str, ...]) -> None:
    done = ketenpost(*argv)
    assert done.returncode == 0, done.stderr
    assert "usage: ketenpost" in done.stdout
    assert done.stderr == ""


def test_init_and_config_check_work(deployment: Path) -> None:
    assert (deployment / "partners" / "welzijn-ijmond" / "adapter.toml").is_file()
    done = ketenpost("config", "check", "--config", str(deployment / "gateway.toml"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok: ")


def test_store_migrate_on_sqlite_works(deployment: Path, tmp_path: Path) -> None:
    store = f"sqlite://{tmp_path / 'store.db'}"
    done = ketenpost(
        "store", "migrate", "--config", str(deployment / "gateway.toml"), "--store", store
    )
    assert done.returncode == 0, done.stderr
    assert '"migrations"' in done.stdout


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("ketenpost: error: "), done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def test_a_postgresql_welfare_database_asks_for_the_extra(deployment: Path) -> None:
    folder = deployment / "partners" / "welzijn-ijmond"
    toml = folder / "adapter.toml"
    original = toml.read_text(encoding="utf-8")
    toml.write_text(
        re.sub(r'(?m)^database = "welzijn.db"$', f'database = "{PG_URL}"', original),
        encoding="utf-8",
    )
    try:
        done = ketenpost(
            "adapter", "run", "welzijn-ijmond", "--config", str(toml), "--metrics-listen", ""
        )
    finally:
        toml.write_text(original, encoding="utf-8")
    assert done.returncode == 2, done.stderr
    line = _one_error_line(done)
    assert "[system] database:" in line
    assert line.endswith(f"{EXTRA}: {PIP}")


@pytest.mark.parametrize(
    "verb",
    [
        pytest.param(("store", "migrate"), id="store migrate"),
        pytest.param(
            ("serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"), id="serve"
        ),
    ],
)
def test_a_postgresql_store_asks_for_the_extra(deployment: Path, verb: tuple[str, ...]) -> None:
    # The store factory imports gateway.store.postgres (and so asyncpg) only for this URL.
    done = ketenpost(*verb, "--config", str(deployment / "gateway.toml"), "--store", PG_URL)
    assert done.returncode == 2, done.stderr
    line = _one_error_line(done)
    assert "store.url:" in line
    assert line.endswith(f"{EXTRA}: {PIP}")
