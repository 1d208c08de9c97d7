"""``ketenpost demo --once``: the whole covenant scenario through a real gateway subprocess,
every adapter and every fake partner system; exit 0 only when every step behaved."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import ketenpost
from adapters.demo import FAULT_ENV

# The scenario takes a few seconds; the bound is for a slow CI machine.
RUN_TIMEOUT_S = 240
STEPS = (
    "[ 1] gemeente-velsen → politie-ijmond, om, halt, cjg, welzijn-ijmond: approach-notice",
    "[ 2] politie-ijmond → gemeente-velsen, halt: signal",
    "[ 3] om → halt: referral",
    "[ 4] halt → gemeente-velsen: progress",
    "[ 5] gemeente-velsen → politie-ijmond, om, halt, cjg, welzijn-ijmond: case-conference",
    "[ 6] cjg → gemeente-velsen: case-conference contribution",
    "[ 7] welzijn-ijmond → gemeente-velsen: case-conference contribution",
    "[ 8] politie-ijmond → gemeente-velsen, halt: signal about a youth without an approach",
    "[ 9] cjg → gemeente-velsen: progress about another youth",
    "[10] welzijn-ijmond → politie-ijmond: signal",
    "[11] gemeente-velsen → gateway: revoke the approach",
    "[12] halt → gemeente-velsen: progress after the revocation",
)
REFUSALS = (
    "REFUSED by the police adapter before sending: no_token",
    "REFUSED by the gateway: subject_not_in_token",
    "REFUSED by the gateway: type_not_allowed",
    "REFUSED by the gateway: token_revoked",
)


def demo(
    folder: Path, *, step_timeout_s: float, fault: str = ""
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    command = [sys.executable, "-m", "ketenpost", "demo", "--once", "--dir", str(folder)]
    return subprocess.run(
        [*command, "--step-timeout", str(step_timeout_s)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=RUN_TIMEOUT_S,
        env=env,
        check=False,
    )


def test_demo_once_plays_every_step_and_shows_every_refusal(tmp_path: Path) -> None:
    done = demo(tmp_path / "demo", step_timeout_s=30)
    assert done.returncode == 0, done.stdout + done.stderr
    for step in STEPS:
        assert step in done.stdout, step
    for refusal in REFUSALS:
        assert refusal in done.stdout, refusal
    assert "all 12 steps behaved as expected" in done.stdout
    assert "/metrics" in done.stdout
    # What the steps saw is in the deployment the demo made.
    assert list((tmp_path / "demo" / "partners" / "halt" / "uitwisseling" / "in").glob("*.csv"))
    # The youth's subject-access report is produced and verified from the command line, with
    # the commands the demo printed.
    for prefix in ("subject access: ketenpost ", "verify it: ketenpost "):
        (line,) = [ln for ln in done.stdout.splitlines() if prefix in ln]
        argv = line.split(prefix, 1)[1].split()
        ran = subprocess.run(
            [sys.executable, "-m", "ketenpost", *argv],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert ran.returncode == 0, ran.stdout + ran.stderr
    report = (tmp_path / "demo" / "inzage" / "inzage.json").read_text(encoding="utf-8")
    assert '"accepted"' in report
    assert "signal" in report


def test_a_partner_system_that_is_down_fails_its_step_and_the_exit_status(tmp_path: Path) -> None:
    # A real outage: the CJG's system stops before the case conference, so the CJG adapter
    # cannot hand it over and the coordinator never gets the CJG's delivery receipt.
    done = demo(tmp_path / "demo", step_timeout_s=5, fault="stop:cjg@case-conference")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "step 'case-conference' failed" in done.stderr
    assert "delivery receipts" in done.stderr
    for step in STEPS[:4]:
        assert step in done.stdout, step
    assert STEPS[5] not in done.stdout
    assert "all 12 steps" not in done.stdout


@pytest.mark.parametrize("fault", ["stop:cjg@nowhere", "stop:om@incident", "pause:cjg@incident"])
def test_a_bad_fault_is_a_usage_error(
    fault: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(FAULT_ENV, fault)
    assert ketenpost.main(["demo", "--once"]) == 2
    assert FAULT_ENV in capsys.readouterr().err
