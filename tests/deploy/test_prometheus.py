"""The Prometheus configuration, alert rules and their unit tests, checked with promtool.

* ``promtool check config`` / ``check rules`` accept the files; ``promtool test rules`` passes
  every case in deploy/prometheus/tests/.
* Every alert has a firing case (an expected alert) and a quiet case (``exp_alerts: []``).
* Every alert has summary, description, a severity, and a runbook_url whose anchor exists in
  docs/operations.md.
* Every metric an alert or a dashboard panel names is one the code registers (or ``up``).
"""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
import yaml

from tests.deploy._tools import (
    OPERATIONS_DOC,
    PROMETHEUS_CONFIG,
    PROMETHEUS_DIR,
    RULE_TESTS,
    RULES,
    alert_names,
    exported_metric_names,
    require_tool,
    rules,
    used_metric_names,
)

RUNBOOK_PREFIX = "https://github.com/ketenpost/ketenpost/blob/main/docs/operations.md#"
SEVERITIES = {"info", "warning", "critical"}


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = require_tool("promtool")
    return subprocess.run(
        [promtool, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=PROMETHEUS_DIR,
    )


def test_promtool_check_config() -> None:
    done = _promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_check_rules() -> None:
    done = _promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_test_rules() -> None:
    assert RULE_TESTS, "no rule tests in deploy/prometheus/tests"
    done = _promtool("test", "rules", *(str(p) for p in RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr


def _cases() -> list[dict[str, Any]]:
    cases = []
    for path in RULE_TESTS:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for test in doc["tests"]:
            cases.extend(test.get("alert_rule_test", []))
    return cases


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    firing = {c["alertname"] for c in _cases() if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in _cases() if not c.get("exp_alerts")}
    names = set(alert_names())
    assert len(names) == len(alert_names()), "an alert name is used twice"
    assert names - firing == set(), "alerts without a firing case"
    assert names - quiet == set(), "alerts without a quiet case"
    # And no test names an alert that does not exist (a renamed alert would pass vacuously).
    assert (firing | quiet) - names == set()


@pytest.mark.parametrize("name", alert_names())
def test_alert_has_annotations_severity_and_a_runbook_anchor(name: str) -> None:
    rule = next(r for r in rules() if r.get("alert") == name)
    annotations = rule["annotations"]
    assert annotations["summary"].strip()
    assert annotations["description"].strip()
    assert rule["labels"]["severity"] in SEVERITIES
    url = annotations["runbook_url"]
    assert url.startswith(RUNBOOK_PREFIX), url
    anchor = url.removeprefix(RUNBOOK_PREFIX)
    doc = OPERATIONS_DOC.read_text(encoding="utf-8")
    assert re.search(rf'<a id="{re.escape(anchor)}"></a>', doc), f"no anchor #{anchor}"


def test_alerts_and_dashboard_name_only_exported_metrics() -> None:
    used = used_metric_names()
    unknown = {name: sorted(where) for name, where in used.items()}
    for name in exported_metric_names():
        unknown.pop(name, None)
    assert unknown == {}, "metrics the code does not register"


def test_rule_tests_use_only_exported_metrics() -> None:
    # A quiet case over a misspelt series would pass without testing anything.
    exported = exported_metric_names()
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            for series in test["input_series"]:
                name = series["series"].split("{", 1)[0]
                assert name in exported, f"{path.name}: {name}"
