"""Helpers of the deploy tests: where the files are, the external tools, PromQL metric names.

Rules kept here:

* An external tool that is missing skips the test with the reason. Under ``CI=true`` a missing
  ``promtool`` or ``prometheus`` fails instead: CI installs Debian's ``prometheus`` package, and
  a silently skipped deploy check is no check. ``systemd-analyze`` is checked where it runs.
* The metric names the code registers are read from the registries of a real ``GatewayMetrics``
  and ``AdapterMetrics``, never from a list kept by hand here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest
import yaml
from prometheus_client import CollectorRegistry

from adapters.metrics import AdapterMetrics
from gateway.metrics import GatewayMetrics

ROOT: Final = Path(__file__).resolve().parents[2]
DEPLOY: Final = ROOT / "deploy"
PROMETHEUS_DIR: Final = DEPLOY / "prometheus"
RULES: Final = PROMETHEUS_DIR / "rules" / "ketenpost.rules.yml"
PROMETHEUS_CONFIG: Final = PROMETHEUS_DIR / "prometheus.yml"
RULE_TESTS: Final = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
DASHBOARD: Final = DEPLOY / "grafana" / "dashboards" / "ketenpost.json"
OPERATIONS_DOC: Final = ROOT / "docs" / "operations.md"
# Series Prometheus makes itself for every target.
PROMETHEUS_BUILTIN: Final = frozenset({"up"})


def require_tool(name: str, *, required_in_ci: bool = True) -> str:
    """The path of ``name`` on PATH; skip without it, fail under CI=true if
    ``required_in_ci`` (systemd-analyze is not: it only runs where systemd is installed)."""
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} is not installed (Debian: apt-get install prometheus / systemd)"
    if required_in_ci and os.environ.get("CI") == "true":
        pytest.fail(f"{message}; CI must install it", pytrace=False)
    pytest.skip(message)


# -- the metrics the code registers -----------------------------------------------------------


def _sample_names(registry: CollectorRegistry) -> set[str]:
    names: set[str] = set()
    for family in registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_count", "_sum"))
        else:
            names.add(family.name)
    return names


def gateway_metric_names() -> set[str]:
    return _sample_names(GatewayMetrics(version="0.0.0").registry)


def adapter_metric_names() -> set[str]:
    return _sample_names(AdapterMetrics("halt").registry)


def exported_metric_names() -> set[str]:
    return gateway_metric_names() | adapter_metric_names() | PROMETHEUS_BUILTIN


# -- PromQL --------------------------------------------------------------------------------

_KEYWORDS: Final = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
     "bool", "offset", "inf", "nan"}
)  # fmt: skip
# Label lists after these words are label names, not metric names.
_LABEL_LIST_RE: Final = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
)
_STRING_RE: Final = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS_RE: Final = re.compile(r"\{[^}]*\}")
_RANGE_RE: Final = re.compile(r"\[[^\]]*\]")
_VARIABLE_RE: Final = re.compile(r"\$\{?\w+\}?")
_IDENT_RE: Final = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?")


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (functions, keywords and labels left out)."""
    text = _STRING_RE.sub('""', expr)
    text = _MATCHERS_RE.sub("", text)
    text = _RANGE_RE.sub("", text)
    text = _VARIABLE_RE.sub("", text)
    text = _LABEL_LIST_RE.sub("", text)
    names = set()
    for match in _IDENT_RE.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def rules() -> list[dict[str, Any]]:
    """Every rule of the rules file, with its group name under ``_group``."""
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [{**rule, "_group": group["name"]} for group in doc["groups"] for rule in group["rules"]]


def alert_names() -> list[str]:
    return [rule["alert"] for rule in rules() if "alert" in rule]


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return doc


def _panels(panels: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_panels() -> list[dict[str, Any]]:
    return list(_panels(dashboard()["panels"]))


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expr) of every query of the dashboard."""
    return [
        (panel["title"], target["expr"])
        for panel in dashboard_panels()
        for target in panel.get("targets", [])
    ]


def used_metric_names() -> dict[str, set[str]]:
    """Metric name -> where it is used ("alert X", "panel Y")."""
    used: dict[str, set[str]] = {}
    for rule in rules():
        for name in promql_metric_names(rule["expr"]):
            used.setdefault(name, set()).add(f"alert {rule.get('alert', rule.get('record'))}")
    for title, expr in dashboard_queries():
        for name in promql_metric_names(expr):
            used.setdefault(name, set()).add(f"panel {title!r}")
    return used
