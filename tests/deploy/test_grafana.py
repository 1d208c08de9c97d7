"""Grafana provisioning: the datasource and dashboard provider files have what Grafana reads,
they agree with each other and with compose.yaml, and the dashboard is well formed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy._tools import (
    DASHBOARD,
    DEPLOY,
    dashboard,
    dashboard_panels,
    dashboard_queries,
    promql_metric_names,
)

GRAFANA = DEPLOY / "grafana"
PROVISIONING = GRAFANA / "provisioning"
# What the dashboard must show (issue 7): a metric per topic, each in some query.
TOPICS = {
    "traffic per partner pair": "ketenpost_accepted_total",
    "refusals by reason": "ketenpost_refused_total",
    "latency percentiles": "ketenpost_accept_duration_seconds_bucket",
    "queue depth": "ketenpost_queue_depth",
    "queue age": "ketenpost_oldest_pending_age_seconds",
    "key expiry": "ketenpost_key_expiry_timestamp_seconds",
    "certificate expiry": "ketenpost_certificate_expiry_timestamp_seconds",
    "token expiry": "ketenpost_token_expiry_timestamp_seconds",
    "directory expiry": "ketenpost_directory_expiry_timestamp_seconds",
    "audit tree size": "ketenpost_audit_tree_size",
}


def _yaml(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return doc


def _compose_mounts(service: str) -> dict[str, str]:
    compose = _yaml(DEPLOY / "compose.yaml")
    mounts = {}
    for volume in compose["services"][service]["volumes"]:
        source, target = volume.split(":")[:2]
        mounts[target] = source
    return mounts


def test_datasource_provisioning() -> None:
    doc = _yaml(PROVISIONING / "datasources" / "prometheus.yaml")
    assert doc["apiVersion"] == 1
    (source,) = doc["datasources"]
    assert source["type"] == "prometheus"
    assert source["access"] == "proxy"
    assert source["url"] == "http://prometheus:9090"  # the compose service
    assert source["uid"]
    assert source["isDefault"] is True


def test_dashboard_provider_points_at_the_mounted_dashboards() -> None:
    doc = _yaml(PROVISIONING / "dashboards" / "ketenpost.yaml")
    assert doc["apiVersion"] == 1
    (provider,) = doc["providers"]
    assert provider["type"] == "file"
    assert {"name", "orgId", "folder", "options"} <= provider.keys()
    path = provider["options"]["path"]
    mounts = _compose_mounts("grafana")
    assert mounts[path] == "./grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    assert DASHBOARD.parent == DEPLOY / "grafana" / "dashboards"


def test_dashboard_shape() -> None:
    doc = dashboard()
    assert doc["uid"]
    assert doc["title"]
    assert isinstance(doc["schemaVersion"], int)
    assert "id" not in doc or doc["id"] is None  # provisioned dashboards carry no database id
    datasource_uid = _yaml(PROVISIONING / "datasources" / "prometheus.yaml")["datasources"][0][
        "uid"
    ]
    ids = [p["id"] for p in dashboard_panels()]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in dashboard_panels():
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= grid.keys()
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == datasource_uid, panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource_uid
            assert target["expr"].strip()


@pytest.mark.parametrize(("topic", "metric"), sorted(TOPICS.items()))
def test_dashboard_covers(topic: str, metric: str) -> None:
    names = set().union(*(promql_metric_names(e) for _, e in dashboard_queries()))
    assert metric in names, topic


def test_dashboard_latency_panels_show_percentiles() -> None:
    quantiles = [e for _, e in dashboard_queries() if "histogram_quantile(0.99" in e]
    assert any("ketenpost_accept_duration_seconds_bucket" in e for e in quantiles)
    assert any("ketenpost_request_duration_seconds_bucket" in e for e in quantiles)
