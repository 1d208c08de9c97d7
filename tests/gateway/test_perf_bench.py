"""The benchmark's CPU accounting (``gateway.bench``): the machine-wide counters it uses to
report how the cores were shared between gateway, load generator and everything else."""

from __future__ import annotations

import sys

import pytest

from gateway.bench import machine_cpu_seconds


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat")
def test_machine_cpu_seconds_are_cumulative_and_busy_within_total() -> None:
    busy_before, total_before = machine_cpu_seconds()
    sum(i * i for i in range(200_000))  # some work, so the counters move
    busy_after, total_after = machine_cpu_seconds()
    assert 0 < busy_before <= total_before
    assert busy_after >= busy_before
    assert total_after >= total_before
    assert busy_after - busy_before <= total_after - total_before + 0.05
