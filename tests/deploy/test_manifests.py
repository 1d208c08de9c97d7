"""Kubernetes manifests, the compose file and the systemd units.

* Kubernetes: every manifest passes ``kubernetes-validate`` (the API's OpenAPI schemas, bundled
  offline) in strict mode, and the fields that matter are checked: replicas, probes, resources,
  the restricted security context, the migration Job, the passthrough Service, the PDB, the
  NetworkPolicy, and placeholders (never real secrets) in the Secrets.
* Compose: ``check-jsonschema`` with its bundled compose-spec schema, plus the same fields.
* systemd: ``systemd-analyze verify`` on the units (with ExecStart pointed at this
  environment's ``ketenpost``), no warnings; the hardening directives are present.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from tests.deploy._tools import DEPLOY, require_tool

K8S = DEPLOY / "kubernetes"
KUBERNETES_VERSION = "1.31.0"
SYSTEMD = DEPLOY / "systemd"


def _documents() -> list[tuple[str, dict[str, Any]]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    docs = []
    for resource in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / resource).read_text(encoding="utf-8")):
            if doc:
                docs.append((resource, doc))
    return docs


def _one(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for _, d in _documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    assert kustomization["namespace"] == "ketenpost"


@pytest.mark.parametrize(
    ("resource", "doc"),
    _documents(),
    ids=[f"{r}:{d['kind']}/{d['metadata']['name']}" for r, d in _documents()],
)
def test_manifest_passes_the_kubernetes_schema(resource: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def _check_container_security(container: dict[str, Any]) -> None:
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    resources = container["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert {"cpu", "memory"} <= resources["limits"].keys()


def _check_pod_security(spec: dict[str, Any]) -> None:
    sc = spec["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] != 0
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    for container in spec.get("initContainers", []) + spec["containers"]:
        _check_container_security(container)


def test_deployment() -> None:
    deployment = _one("Deployment", "ketenpost-gateway")
    assert deployment["spec"]["replicas"] == 2
    spec = deployment["spec"]["template"]["spec"]
    _check_pod_security(spec)
    (gateway,) = spec["containers"]
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert ports == {"partner-api": 8443, "operator": 9464}
    # The probes hit the operator listener, never the mTLS partner port.
    assert gateway["readinessProbe"]["httpGet"]["port"] == "operator"
    assert gateway["livenessProbe"]["httpGet"]["port"] == "operator"
    # Everything the read-only root needs writable is a volume.
    mounts = {m["mountPath"]: m for m in gateway["volumeMounts"]}
    assert "/tmp" in mounts
    assert all(m.get("readOnly") for path, m in mounts.items() if path != "/tmp")
    assert spec["terminationGracePeriodSeconds"] >= 40  # long-poll 30 s + shutdown 10 s


def test_migrate_job() -> None:
    job = _one("Job", "ketenpost-store-migrate")
    spec = job["spec"]["template"]["spec"]
    _check_pod_security(spec)
    assert spec["restartPolicy"] == "Never"
    (container,) = spec["containers"]
    assert container["args"][:2] == ["store", "migrate"]


def test_service_is_tcp_passthrough() -> None:
    service = _one("Service", "ketenpost-gateway")
    (port,) = service["spec"]["ports"]
    assert (port["port"], port["protocol"], port["targetPort"]) == (8443, "TCP", "partner-api")
    assert not any("tls" in key.lower() for key in service["metadata"].get("annotations", {}))
    kinds = {d["kind"] for _, d in _documents()}
    assert "Ingress" not in kinds  # an Ingress would terminate TLS


def test_pod_disruption_budget() -> None:
    pdb = _one("PodDisruptionBudget", "ketenpost-gateway")
    labels = _one("Deployment", "ketenpost-gateway")["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["selector"]["matchLabels"] == labels
    assert pdb["spec"]["minAvailable"] == 1


def test_network_policy() -> None:
    policy = _one("NetworkPolicy", "ketenpost-gateway")
    ingress = {r["ports"][0]["port"]: r["from"] for r in policy["spec"]["ingress"]}
    assert set(ingress) == {8443, 9464}
    assert all("ipBlock" in peer for peer in ingress[8443])
    assert ingress[9464] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert egress_ports == {5432, 53}
    deny = _one("NetworkPolicy", "default-deny")
    assert deny["spec"]["podSelector"] == {}


def test_secrets_are_marked_placeholders() -> None:
    secrets = [d for _, d in _documents() if d["kind"] == "Secret"]
    assert secrets
    for secret in secrets:
        assert secret["metadata"]["annotations"]["ketenpost.nl/placeholder"] == "true"
        assert "data" not in secret  # nothing base64-encoded that could hide a real value
        for value in secret["stringData"].values():
            assert value.startswith("REPLACE-ME"), value
            assert "PRIVATE KEY" not in value


def test_configmap_holds_a_gateway_toml_the_gateway_accepts(tmp_path: Path) -> None:
    import tomllib

    config = _one("ConfigMap", "ketenpost-gateway-config")["data"]["gateway.toml"]
    doc = tomllib.loads(config)
    assert doc["gateway"]["listen"] == "0.0.0.0:8443"
    assert doc["gateway"]["metrics_listen"] == "0.0.0.0:9464"
    assert doc["store"]["url"].startswith("postgresql://")
    assert "password" not in doc["store"]
    deployment = _one("Deployment", "ketenpost-gateway")["spec"]["template"]["spec"]
    mounts = {m["mountPath"] for c in deployment["containers"] for m in c["volumeMounts"]}
    for path in (doc["tls"]["cert"], doc["tls"]["key"], doc["keys"]["sign_key"]):
        assert any(path.startswith(m + "/") for m in mounts), path


# -- compose ----------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    return doc


def test_compose_passes_the_compose_spec_schema() -> None:
    tool = Path(sys.executable).with_name("check-jsonschema")
    assert tool.exists(), "check-jsonschema is a test dependency"
    done = subprocess.run(
        [str(tool), "--builtin-schema", "vendor.compose-spec", str(DEPLOY / "compose.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_services() -> None:
    services = _compose()["services"]
    assert {"postgres", "migrate", "gateway-1", "gateway-2", "lb", "prometheus", "grafana"} <= (
        services.keys()
    )
    adapters = [s for s in services.values() if s.get("command", [None])[0] == "adapter"]
    assert len(adapters) == 2
    for name in ("gateway-1", "gateway-2"):
        gateway = services[name]
        assert gateway["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert gateway["environment"]["KETENPOST_STORE__URL"].startswith("postgresql://")
        assert "KETENPOST_STORE__PASSWORD" not in gateway["environment"]
        assert gateway["environment"]["KETENPOST_STORE__PASSWORD_FILE"].startswith("/run/secrets/")
        assert "ports" not in gateway  # only through the L4 proxy
    for service in [services["migrate"], services["gateway-1"], *adapters]:
        assert service["read_only"] is True
        assert service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]
        assert not str(service["user"]).startswith("0")
        # Keys and configuration are mounted, never baked in.
        assert service["volumes"]
    gateway_mounts = " ".join(services["gateway-1"]["volumes"])
    for secret_dir in ("officers", "key-authority", "ca/ca.key"):
        assert secret_dir not in gateway_mounts  # the gateway gets only its own keys


def test_compose_proxy_is_tcp_passthrough() -> None:
    cfg = (DEPLOY / "haproxy" / "haproxy.cfg").read_text(encoding="utf-8")
    assert "mode tcp" in cfg
    assert "mode http" not in cfg
    assert " ssl " not in cfg
    assert "crt " not in cfg
    assert "option httpchk GET /readyz" in cfg
    services = _compose()["services"]
    assert services["lb"]["ports"] == ["8443:8443"]


def test_compose_prometheus_targets_match_the_services() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    gateways = [t for sc in jobs["ketenpost-gateway"]["static_configs"] for t in sc["targets"]]
    assert sorted(gateways) == ["gateway-1:9464", "gateway-2:9464"]
    adapter_ports = {
        sc["labels"]["partner"]: sc["targets"][0].split(":")[1]
        for sc in jobs["ketenpost-adapter"]["static_configs"]
    }
    services = _compose()["services"]
    for partner, port in adapter_ports.items():
        command = services[f"adapter-{partner}"]["command"]
        assert command[:3] == ["adapter", "run", partner]
        assert command[command.index("--metrics-listen") + 1] == f"0.0.0.0:{port}"


def test_dockerfile() -> None:
    text = (DEPLOY / "container" / "Dockerfile").read_text(encoding="utf-8")
    assert "ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm" in text  # pinned by version
    assert text.count("FROM ") == 2  # multi-stage
    assert "USER ketenpost" in text
    assert "HEALTHCHECK" in text
    assert "/healthz" in text
    assert "urllib" in text
    assert "ketenpost-install" in text  # the install steps are install.sh, which a test runs
    for forbidden in ("COPY covenant", ".key", "PASSWORD=", "ADD "):
        assert forbidden not in text


# -- systemd ----------------------------------------------------------------------------------

HARDENING = {
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "DynamicUser": "yes",
    "SystemCallFilter": "@system-service",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
}


def _directives(path: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.mark.parametrize("unit", ["ketenpost-gateway.service", "ketenpost-adapter@.service"])
def test_systemd_unit_is_hardened(unit: str) -> None:
    directives = _directives(SYSTEMD / unit)
    for key, value in HARDENING.items():
        assert value in directives.get(key, []), key
    assert directives.get("StateDirectory")


def test_gateway_unit_secrets_come_as_credentials() -> None:
    directives = _directives(SYSTEMD / "ketenpost-gateway.service")
    credentials = {c.split(":", 1)[0] for c in directives["LoadCredential"]}
    assert credentials == {"tls.key", "sign.key", "store-password"}
    env = dict(e.split("=", 1) for e in directives["Environment"])
    assert env["KETENPOST_STORE__PASSWORD_FILE"] == "%d/store-password"
    assert env["KETENPOST_TLS__KEY"] == "%d/tls.key"
    assert env["KETENPOST_KEYS__SIGN_KEY"] == "%d/sign.key"
    assert any("store migrate" in c for c in directives["ExecStartPre"])


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze", required_in_ci=False)
    ketenpost = Path(sys.executable).with_name("ketenpost")
    assert ketenpost.exists()
    units = []
    for source, target in [
        ("ketenpost-gateway.service", "ketenpost-gateway.service"),
        ("ketenpost-adapter@.service", "ketenpost-adapter@halt.service"),
    ]:
        text = (SYSTEMD / source).read_text(encoding="utf-8")
        # verify checks that ExecStart's program exists; point it at this environment's.
        (tmp_path / target).write_text(
            text.replace("/opt/ketenpost/bin/ketenpost", str(ketenpost)), encoding="utf-8"
        )
        units.append(str(tmp_path / target))
    done = subprocess.run(
        [analyze, "verify", *units], capture_output=True, text=True, timeout=60, check=False
    )
    if "Failed to" in done.stderr and "bus" in done.stderr.lower():
        pytest.skip(f"systemd-analyze cannot run here: {done.stderr.strip()}")
    # It reports unknown or invalid directives on stderr and still exits 0: both must be clean.
    assert (done.returncode, done.stderr.strip()) == (0, "")


def test_systemd_analyze_catches_a_misspelt_directive(tmp_path: Path) -> None:
    # The check above is only worth something if verify complains about what we care for.
    analyze = require_tool("systemd-analyze", required_in_ci=False)
    text = (SYSTEMD / "ketenpost-gateway.service").read_text(encoding="utf-8")
    text = text.replace("/opt/ketenpost/bin/ketenpost", shutil.which("true") or "/bin/true")
    (tmp_path / "bad.service").write_text(text.replace("ProtectSystem=", "ProtectSystm="))
    done = subprocess.run(
        [analyze, "verify", str(tmp_path / "bad.service")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "ProtectSystm" in done.stderr
