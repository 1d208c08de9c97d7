"""The gateway configuration: loading, environment overrides, secrets, errors, rendering, the
default file, and the ``config check`` / ``config show`` verbs."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import cli_config
from gateway.config import (
    REDACTED,
    GatewayConfig,
    HostPort,
    LimitsSettings,
    LogLevel,
    Secret,
    _toml_string,
    apply_cli_overrides,
    config_to_dict,
    env_name,
    load_config,
    parse_config,
    render_config,
    write_default_config,
)
from gateway.errors import ConfigError, GatewayError, GatewayReason

SECRET_VALUE = "correct horse battery staple"

REQUIRED: dict[str, dict[str, Any]] = {
    "tls": {
        "cert": "tls/gateway.crt.pem",
        "key": "tls/gateway.key.pem",
        "trust_anchors": ["tls/ca.pem"],
    },
    "keys": {"sign_key": "keys/gateway-sign.key"},
    "directory": {"bundle": "directory", "trusted_root": "directory/root.json"},
}

MINIMAL_TOML = """\
[tls]
cert = "tls/gateway.crt.pem"
key = "tls/gateway.key.pem"
trust_anchors = ["tls/ca.pem"]

[keys]
sign_key = "keys/gateway-sign.key"

[directory]
bundle = "directory"
trusted_root = "directory/root.json"
"""


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    """A deployment folder with the files the configuration names (contents do not matter)."""
    for name in (
        "tls/gateway.crt.pem",
        "tls/gateway.key.pem",
        "tls/ca.pem",
        "tls/ca2.pem",
        "keys/gateway-sign.key",
        "directory/root.json",
    ):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("placeholder\n")
    (tmp_path / "data").mkdir()
    return tmp_path


def document(**sections: dict[str, Any]) -> dict[str, Any]:
    """The minimal document with ``sections`` merged in (a key set to None is removed)."""
    doc = copy.deepcopy(REQUIRED)
    for name, table in sections.items():
        merged = doc.setdefault(name, {})
        for key, value in table.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
    return doc


def parse(base: Path, doc: dict[str, Any], environ: dict[str, str] | None = None) -> GatewayConfig:
    return parse_config(doc, base_dir=base, environ=environ or {})


# --- good configurations ---------------------------------------------------------------------


def test_minimal_file_gives_the_documented_defaults(deployment: Path) -> None:
    path = deployment / "gateway.toml"
    path.write_text(MINIMAL_TOML)

    config = load_config(path, environ={})

    assert config.source == path
    assert config.gateway.id == "gateway"
    assert config.gateway.listen == HostPort("127.0.0.1", 8443)
    assert config.gateway.metrics_listen == HostPort("127.0.0.1", 9464)
    assert config.gateway.origin == "ketenpost.example/ijmond/audit"
    assert config.tls.cert == deployment / "tls/gateway.crt.pem"
    assert config.tls.trust_anchors == (deployment / "tls/ca.pem",)
    assert config.tls.key_passphrase is None
    assert config.keys.passphrase is None
    assert config.directory.bundle == deployment / "directory"
    assert config.directory.refresh_s == 60
    assert config.store.url == f"sqlite://{deployment}/ketenpost.db"
    assert config.store.sqlite_path == deployment / "ketenpost.db"
    assert config.limits == LimitsSettings()
    assert config.limits.max_envelope_bytes == 8 * 1024 * 1024
    assert config.limits.max_recipients == 16
    assert config.limits.rate_per_s == 100.0
    assert config.limits.rate_burst == 200
    assert config.limits.clock_skew_s == 300
    assert config.limits.message_lifetime_s == 30 * 24 * 3600
    assert config.limits.lease_s == 60
    assert config.limits.max_wait_s == 30
    assert config.limits.max_batch == 100
    assert config.log.level is LogLevel.INFO


def test_relative_paths_resolve_against_the_config_folder_not_the_cwd(
    deployment: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = deployment / "gateway.toml"
    path.write_text(MINIMAL_TOML + '\n[store]\nurl = "sqlite:data/k.db"\n')
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))

    config = load_config(path, environ={"KETENPOST_TLS__CERT": "./tls/../tls/ca2.pem"})

    assert config.keys.sign_key == deployment / "keys/gateway-sign.key"
    assert config.tls.cert == deployment / "tls/ca2.pem"
    assert config.store.sqlite_path == deployment / "data/k.db"


def test_config_is_frozen(deployment: Path) -> None:
    config = parse(deployment, document())
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.limits.max_recipients = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("url", "expected_url", "sqlite_file"),
    [
        pytest.param("sqlite:k.db", "sqlite://{base}/k.db", "k.db", id="sqlite-relative"),
        pytest.param(
            "sqlite:./data/k.db", "sqlite://{base}/data/k.db", "data/k.db", id="sqlite-dot"
        ),
        pytest.param(
            "sqlite://{base}/data/k.db", "sqlite://{base}/data/k.db", "data/k.db", id="sqlite-abs"
        ),
        pytest.param(
            "postgresql://ketenpost@127.0.0.1:5432/ketenpost",
            "postgresql://ketenpost@127.0.0.1:5432/ketenpost",
            None,
            id="postgresql",
        ),
    ],
)
def test_store_urls(deployment: Path, url: str, expected_url: str, sqlite_file: str | None) -> None:
    config = parse(deployment, document(store={"url": url.format(base=deployment)}))
    assert config.store.url == expected_url.format(base=deployment)
    expected_path = deployment / sqlite_file if sqlite_file else None
    assert config.store.sqlite_path == expected_path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("0.0.0.0:8443", HostPort("0.0.0.0", 8443), id="ipv4-any"),  # noqa: S104
        pytest.param("[::1]:9464", HostPort("::1", 9464), id="ipv6"),
        pytest.param(
            "gateway.ijmond.example:443", HostPort("gateway.ijmond.example", 443), id="dns"
        ),
        pytest.param("localhost:0", HostPort("localhost", 0), id="port-0-picks-a-free-port"),
    ],
)
def test_listen_forms(deployment: Path, text: str, expected: HostPort) -> None:
    config = parse(deployment, document(gateway={"listen": text}))
    assert config.gateway.listen == expected
    assert str(config.gateway.listen) == text


# --- bad configurations: one line naming the key and the problem -------------------------------

BAD_CASES = [
    pytest.param(
        {"limits": {"max_recipients": "many"}},
        'limits.max_recipients: expected an integer >= 1, got "many"',
        id="int-as-word",
    ),
    pytest.param(
        {"limits": {"max_recipients": 0}},
        "limits.max_recipients: expected an integer >= 1, got 0",
        id="int-zero",
    ),
    pytest.param(
        {"limits": {"max_batch": True}},
        "limits.max_batch: expected an integer >= 1, got true",
        id="bool-is-not-an-int",
    ),
    pytest.param(
        {"limits": {"max_envelope_bytes": 1.5}},
        "limits.max_envelope_bytes: expected an integer >= 1, got 1.5",
        id="float-for-int",
    ),
    pytest.param(
        {"limits": {"lease_s": "60"}},
        'limits.lease_s: expected an integer >= 1, got "60"',
        id="toml-string-for-int",
    ),
    pytest.param(
        {"limits": {"clock_skew_s": -1}},
        "limits.clock_skew_s: expected an integer >= 0, got -1",
        id="negative-skew",
    ),
    pytest.param(
        {"limits": {"rate_per_s": 0}},
        "limits.rate_per_s: expected a number > 0, got 0",
        id="rate-zero",
    ),
    pytest.param(
        {"limits": {"rate_per_s": float("inf")}},
        "limits.rate_per_s: expected a number > 0, got inf",
        id="rate-infinite",
    ),
    pytest.param(
        {"limits": {"max_recipents": 3}},
        "limits.max_recipents: unknown key (did you mean max_recipients?)",
        id="unknown-key-typo",
    ),
    pytest.param(
        {"limit": {"max_recipients": 3}},
        "limit: unknown section [limit] (did you mean limits?)",
        id="unknown-section",
    ),
    pytest.param(
        {"gateway": {"listen": "8443"}},
        'gateway.listen: expected HOST:PORT (e.g. 127.0.0.1:8443 or [::1]:8443), got "8443"',
        id="listen-port-only",
    ),
    pytest.param(
        {"gateway": {"listen": "127.0.0.1:70000"}},
        'gateway.listen: port must be 0..65535, got "127.0.0.1:70000"',
        id="listen-port-range",
    ),
    pytest.param(
        {"gateway": {"listen": "[gateway]:8443"}},
        'gateway.listen: not an IPv6 address in brackets: "[gateway]:8443"',
        id="listen-bad-ipv6",
    ),
    pytest.param(
        {"gateway": {"metrics_listen": "999.0.0.1:9464"}},
        'gateway.metrics_listen: not an IPv4 address: "999.0.0.1:9464"',
        id="listen-bad-ipv4",
    ),
    pytest.param(
        {"gateway": {"listen": "bad_host:8443"}},
        'gateway.listen: not a host name: "bad_host:8443"',
        id="listen-bad-hostname",
    ),
    pytest.param(
        {"gateway": {"metrics_listen": "127.0.0.1:8443"}},
        "gateway.metrics_listen: must differ from gateway.listen (both are 127.0.0.1:8443)",
        id="listeners-clash",
    ),
    pytest.param(
        {"gateway": {"id": "Gateway"}},
        "gateway.id: expected a partner id (lowercase letters, digits and '-', 2-63 long), "
        'got "Gateway"',
        id="gateway-id",
    ),
    pytest.param(
        {"gateway": {"origin": "ketenpost.example/audit log"}},
        "gateway.origin: expected a checkpoint origin (printable ASCII, no spaces, no '+'), "
        'got "ketenpost.example/audit log"',
        id="origin-with-space",
    ),
    pytest.param(
        {"tls": {"cert": "tls/missing.pem"}},
        "tls.cert: file not found: {base}/tls/missing.pem",
        id="cert-missing",
    ),
    pytest.param(
        {"tls": {"key": "tls"}},
        "tls.key: not a regular file: {base}/tls",
        id="key-is-a-folder",
    ),
    pytest.param(
        {"tls": {"cert": None}},
        "tls.cert: required; set it in [tls] or as KETENPOST_TLS__CERT",
        id="cert-required",
    ),
    pytest.param(
        {"tls": {"trust_anchors": []}},
        "tls.trust_anchors: expected at least one file path, got none",
        id="no-trust-anchors",
    ),
    pytest.param(
        {"tls": {"trust_anchors": "tls/ca.pem"}},
        'tls.trust_anchors: expected a list of file paths, got "tls/ca.pem"',
        id="trust-anchors-not-a-list",
    ),
    pytest.param(
        {"tls": {"trust_anchors": ["tls/ca.pem", "tls/gone.pem"]}},
        "tls.trust_anchors: file not found: {base}/tls/gone.pem",
        id="trust-anchor-missing",
    ),
    pytest.param(
        {"keys": {"sign_key": "keys/none.key"}},
        "keys.sign_key: file not found: {base}/keys/none.key",
        id="sign-key-missing",
    ),
    pytest.param(
        {"directory": {"bundle": "directory/root.json"}},
        "directory.bundle: not a folder: {base}/directory/root.json",
        id="bundle-is-a-file",
    ),
    pytest.param(
        {"directory": {"trusted_root": "directory/none.json"}},
        "directory.trusted_root: file not found: {base}/directory/none.json",
        id="trusted-root-missing",
    ),
    pytest.param(
        {"directory": {"refresh_s": 0}},
        "directory.refresh_s: expected an integer >= 1, got 0",
        id="refresh-zero",
    ),
    pytest.param(
        {"store": {"url": "mysql://db/ketenpost"}},
        "store.url: expected a URL sqlite:///PATH, sqlite:RELATIVE/PATH or postgresql://HOST/DB, "
        'got "mysql://db/ketenpost"',
        id="store-scheme",
    ),
    pytest.param(
        {"store": {"url": "sqlite://relative/k.db"}},
        "store.url: expected sqlite:///ABSOLUTE/PATH or sqlite:RELATIVE/PATH, "
        'got "sqlite://relative/k.db"',
        id="sqlite-two-slashes",
    ),
    pytest.param(
        {"store": {"url": "sqlite:nowhere/k.db"}},
        "store.url: folder not found: {base}/nowhere",
        id="sqlite-folder-missing",
    ),
    pytest.param(
        {"store": {"url": "postgresql://ketenpost:hunter2@db/ketenpost"}},
        "store.url: the URL must not contain a password; set store.password or "
        "KETENPOST_STORE__PASSWORD_FILE instead",
        id="password-in-url",
    ),
    pytest.param(
        {"store": {"password": SECRET_VALUE}},
        "store.password: only used with a postgresql:// store URL",
        id="password-for-sqlite",
    ),
    pytest.param(
        {"log": {"level": "loud"}},
        'log.level: expected one of debug, info, warning, error, got "loud"',
        id="log-level",
    ),
    pytest.param(
        {"keys": {"passphrase": SECRET_VALUE, "passphrase_file": "p.txt"}},
        "keys.passphrase: set either passphrase or passphrase_file, not both",
        id="secret-twice",
    ),
    pytest.param(
        {"keys": {"passphrase": 1234}},
        "keys.passphrase: expected a string, got a value of type int",
        id="secret-wrong-type",
    ),
    pytest.param(
        {"keys": {"passphrase_file": "secrets/none"}},
        "keys.passphrase_file: file not found: {base}/secrets/none",
        id="secret-file-missing",
    ),
    pytest.param(
        {"tls": {"key_passphrase_fil": "x"}},
        "tls.key_passphrase_fil: unknown key (did you mean key_passphrase_file?)",
        id="secret-file-key-typo",
    ),
    pytest.param(
        {"gateway": "not a table"},
        'gateway: expected a table [gateway], got "not a table"',
        id="section-not-a-table",
    ),
]


@pytest.mark.parametrize(("sections", "message"), BAD_CASES)
def test_bad_configuration(deployment: Path, sections: dict[str, Any], message: str) -> None:
    if isinstance(sections.get("gateway"), str):
        doc: dict[str, Any] = {**document(), **sections}
    else:
        doc = document(**sections)
    with pytest.raises(ConfigError) as caught:
        parse(deployment, doc)
    error = caught.value
    assert str(error) == message.format(base=deployment)
    assert "\n" not in str(error)
    assert error.reason is GatewayReason.CONFIG_INVALID
    assert isinstance(error, GatewayError)
    assert SECRET_VALUE not in str(error)
    assert "hunter2" not in str(error)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "none.toml", environ={})
    assert str(caught.value) == f"{tmp_path}/none.toml: config file not found"
    assert caught.value.reason is GatewayReason.CONFIG_UNREADABLE


def test_invalid_toml_is_one_line_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text("[limits]\nmax_recipients = \n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    message = str(caught.value)
    assert message.startswith(f"{path}: invalid TOML: ")
    assert "line 2" in message
    assert "\n" not in message
    assert caught.value.reason is GatewayReason.CONFIG_UNREADABLE


# --- environment overrides -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "section", "key", "expected"),
    [
        pytest.param(
            "KETENPOST_LIMITS__MAX_RECIPIENTS", "4", "limits", "max_recipients", 4, id="int"
        ),
        pytest.param(
            "KETENPOST_LIMITS__MAX_ENVELOPE_BYTES",
            " 1_048_576 ",
            "limits",
            "max_envelope_bytes",
            1048576,
            id="int-underscores",
        ),
        pytest.param(
            "KETENPOST_LIMITS__RATE_PER_S", "2.5", "limits", "rate_per_s", 2.5, id="float"
        ),
        pytest.param(
            "KETENPOST_GATEWAY__LISTEN",
            "[::]:443",
            "gateway",
            "listen",
            HostPort("::", 443),
            id="host-port",
        ),
        pytest.param("KETENPOST_LOG__LEVEL", "DEBUG", "log", "level", LogLevel.DEBUG, id="level"),
        pytest.param("KETENPOST_GATEWAY__ID", "gw-ijmond", "gateway", "id", "gw-ijmond", id="str"),
    ],
)
def test_environment_overrides(
    deployment: Path, variable: str, value: str, section: str, key: str, expected: object
) -> None:
    assert env_name(section, key) == variable
    config = parse(deployment, document(limits={"max_recipients": 9}), {variable: value})
    assert getattr(getattr(config, section), key) == expected


def test_environment_list_is_comma_separated(deployment: Path) -> None:
    environ = {"KETENPOST_TLS__TRUST_ANCHORS": "tls/ca.pem, tls/ca2.pem,"}
    config = parse(deployment, document(), environ)
    assert config.tls.trust_anchors == (deployment / "tls/ca.pem", deployment / "tls/ca2.pem")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        pytest.param(
            {"KETENPOST_LIMITS__MAX_RECIPIENTS": "many"},
            "limits.max_recipients (from KETENPOST_LIMITS__MAX_RECIPIENTS): "
            'expected an integer >= 1, got "many"',
            id="bad-int",
        ),
        pytest.param(
            {"KETENPOST_LIMITS__RATE_PER_S": "fast"},
            "limits.rate_per_s (from KETENPOST_LIMITS__RATE_PER_S): "
            'expected a number > 0, got "fast"',
            id="bad-float",
        ),
        pytest.param(
            {"KETENPOST_LIMITS__RATE_PER_S": "nan"},
            "limits.rate_per_s (from KETENPOST_LIMITS__RATE_PER_S): "
            'expected a number > 0, got "nan"',
            id="nan",
        ),
        pytest.param(
            {"KETENPOST_LIMITS__MAX_RECIPENTS": "3"},
            "KETENPOST_LIMITS__MAX_RECIPENTS: unknown setting limits.max_recipents "
            "(did you mean max_recipients?)",
            id="unknown-key",
        ),
        pytest.param(
            {"KETENPOST_TLS__CERT": "tls/none.pem"},
            "tls.cert (from KETENPOST_TLS__CERT): file not found: {base}/tls/none.pem",
            id="missing-file",
        ),
        pytest.param(
            {"KETENPOST_TLS__TRUST_ANCHORS": " , "},
            "tls.trust_anchors (from KETENPOST_TLS__TRUST_ANCHORS): "
            "expected at least one file path, got none",
            id="empty-list",
        ),
    ],
)
def test_bad_environment(deployment: Path, environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(deployment, document(), environ)
    assert str(caught.value) == message.format(base=deployment)


def test_environment_beats_file(deployment: Path) -> None:
    doc = document(limits={"max_recipients": 9}, gateway={"listen": "127.0.0.1:1000"})
    environ = {"KETENPOST_LIMITS__MAX_RECIPIENTS": "3"}
    config = parse(deployment, doc, environ)
    assert config.limits.max_recipients == 3
    assert config.gateway.listen == HostPort("127.0.0.1", 1000)


@pytest.mark.parametrize(
    "environ",
    [
        pytest.param({"KETENPOST_LIMITS__MAX_RECIPIENTS": ""}, id="empty-counts-as-unset"),
        pytest.param({"KETENPOST_PARTNER__DIR": "/elsewhere"}, id="other-section-not-ours"),
        pytest.param({"KETENPOST_DEMO": "1"}, id="no-double-underscore"),
        pytest.param({"OTHER_LIMITS__MAX_RECIPIENTS": "1"}, id="other-prefix"),
    ],
)
def test_environment_left_alone(deployment: Path, environ: dict[str, str]) -> None:
    config = parse(deployment, document(limits={"max_recipients": 9}), environ)
    assert config.limits.max_recipients == 9


# --- secrets -------------------------------------------------------------------------------


def write_secret(base: Path, name: str, content: str) -> Path:
    path = base / "secrets" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(content)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param("pass\n", "pass", id="one-newline"),
        pytest.param("pass\r\n", "pass", id="crlf"),
        pytest.param("pass\n\n", "pass\n", id="only-one-newline-stripped"),
        pytest.param("pass  ", "pass  ", id="spaces-kept"),
    ],
)
def test_secret_file_strips_one_trailing_newline(
    deployment: Path, content: str, expected: str
) -> None:
    write_secret(deployment, "sign.pass", content)
    config = parse(deployment, document(keys={"passphrase_file": "secrets/sign.pass"}))
    assert config.keys.passphrase is not None
    assert config.keys.passphrase.reveal() == expected


@pytest.mark.parametrize(
    ("doc_keys", "environ", "expected"),
    [
        pytest.param({"passphrase": "from-toml"}, {}, "from-toml", id="toml-inline"),
        pytest.param({"passphrase_file": "secrets/a"}, {}, "from-file-a", id="toml-file"),
        pytest.param(
            {"passphrase": "from-toml"},
            {"KETENPOST_KEYS__PASSPHRASE": "from-env"},
            "from-env",
            id="env-beats-toml",
        ),
        pytest.param(
            {"passphrase_file": "secrets/a"},
            {"KETENPOST_KEYS__PASSPHRASE_FILE": "secrets/b"},
            "from-file-b",
            id="env-file-beats-toml-file",
        ),
        pytest.param(
            {"passphrase": "from-toml"},
            {"KETENPOST_KEYS__PASSPHRASE_FILE": "secrets/b"},
            "from-file-b",
            id="env-file-beats-toml-inline",
        ),
    ],
)
def test_secret_sources(
    deployment: Path, doc_keys: dict[str, str], environ: dict[str, str], expected: str
) -> None:
    write_secret(deployment, "a", "from-file-a\n")
    write_secret(deployment, "b", "from-file-b\n")
    config = parse(deployment, document(keys=doc_keys), environ)
    assert config.keys.passphrase == Secret(expected)


@pytest.mark.parametrize(
    ("environ", "doc_keys", "message"),
    [
        pytest.param(
            {
                "KETENPOST_STORE__PASSWORD": "x",
                "KETENPOST_STORE__PASSWORD_FILE": "secrets/a",
            },
            {},
            "store.password: set either KETENPOST_STORE__PASSWORD or "
            "KETENPOST_STORE__PASSWORD_FILE, not both",
            id="env-both",
        ),
        pytest.param(
            {"KETENPOST_STORE__PASSWORD_FILE": "secrets/empty"},
            {},
            "store.password (from KETENPOST_STORE__PASSWORD_FILE): "
            "secret file is empty: {base}/secrets/empty",
            id="empty-file",
        ),
        pytest.param(
            {"KETENPOST_STORE__PASSWORD_FILE": "secrets/none"},
            {},
            "store.password (from KETENPOST_STORE__PASSWORD_FILE): "
            "file not found: {base}/secrets/none",
            id="missing-file",
        ),
        pytest.param(
            {},
            {"password": ""},
            "store.password: expected a non-empty secret",
            id="empty-inline",
        ),
    ],
)
def test_bad_secrets(
    deployment: Path, environ: dict[str, str], doc_keys: dict[str, str], message: str
) -> None:
    write_secret(deployment, "a", "x\n")
    write_secret(deployment, "empty", "\n")
    doc = document(store={"url": "postgresql://ketenpost@db/ketenpost", **doc_keys})
    with pytest.raises(ConfigError) as caught:
        parse(deployment, doc, environ)
    assert str(caught.value) == message.format(base=deployment)


def test_postgresql_password_from_environment_file(deployment: Path) -> None:
    write_secret(deployment, "db", SECRET_VALUE + "\n")
    doc = document(store={"url": "postgresql://ketenpost@db:5432/ketenpost"})
    config = parse(deployment, doc, {"KETENPOST_STORE__PASSWORD_FILE": "secrets/db"})
    assert config.store.password is not None
    assert config.store.password.reveal() == SECRET_VALUE


def test_secrets_never_show(deployment: Path) -> None:
    doc = document(
        tls={"key_passphrase": SECRET_VALUE},
        keys={"passphrase": SECRET_VALUE},
        store={"url": "postgresql://ketenpost@db/ketenpost", "password": SECRET_VALUE},
    )
    config = parse(deployment, doc)
    for text in (
        repr(config),
        str(config),
        render_config(config),
        render_config(config, fmt="json"),
        f"{config.keys.passphrase}",
    ):
        assert SECRET_VALUE not in text
    assert render_config(config).count(f'"{REDACTED}"') == 3
    assert config_to_dict(config)["store"]["password"] == REDACTED


# --- command-line overrides --------------------------------------------------------------------


def test_cli_overrides(deployment: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    config = parse(deployment, document())
    cwd = tmp_path_factory.mktemp("cwd")

    changed = apply_cli_overrides(
        config, listen="0.0.0.0:8443", metrics_listen="[::1]:9000", store="sqlite:k.db", cwd=cwd
    )

    assert changed.gateway.listen == HostPort("0.0.0.0", 8443)  # noqa: S104
    assert changed.gateway.metrics_listen == HostPort("::1", 9000)
    # Command-line paths are the shell's: relative to the working directory.
    assert changed.store.sqlite_path == cwd / "k.db"
    assert config.gateway.listen == HostPort("127.0.0.1", 8443)
    assert apply_cli_overrides(config, cwd=cwd) == config


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        pytest.param(
            {"listen": "localhost"},
            '--listen: expected HOST:PORT (e.g. 127.0.0.1:8443 or [::1]:8443), got "localhost"',
            id="listen",
        ),
        pytest.param(
            {"metrics_listen": "127.0.0.1:8443"},
            "gateway.metrics_listen: must differ from gateway.listen (both are 127.0.0.1:8443)",
            id="clash",
        ),
        pytest.param(
            {"store": "postgres://db/k"},
            "--store: expected a URL sqlite:///PATH, sqlite:RELATIVE/PATH or postgresql://HOST/DB, "
            'got "postgres://db/k"',
            id="store",
        ),
    ],
)
def test_bad_cli_overrides(deployment: Path, flags: dict[str, str], message: str) -> None:
    config = parse(deployment, document())
    with pytest.raises(ConfigError) as caught:
        apply_cli_overrides(config, cwd=deployment, **flags)
    assert str(caught.value) == message


# --- rendering and the default file -----------------------------------------------------------


def test_render_round_trips_through_toml(deployment: Path) -> None:
    write_secret(deployment, "db", "s3cret\n")
    doc = document(
        gateway={"listen": "[::1]:8443", "origin": 'ketenpost.example/"quoted"\\path'},
        tls={"trust_anchors": ["tls/ca.pem", "tls/ca2.pem"], "key_passphrase": 'a"b\\c\nd'},
        store={"url": "postgresql://ketenpost@db/ketenpost", "password_file": "secrets/db"},
        limits={"rate_per_s": 12.5, "max_wait_s": 0},
        log={"level": "warning"},
    )
    config = parse(deployment, doc)

    text = render_config(config, redact=False)
    again = parse_config(tomllib.loads(text), base_dir=Path("/"), environ={})

    assert again == config


def test_render_json(deployment: Path) -> None:
    config = parse(deployment, document())
    data = json.loads(render_config(config, fmt="json"))
    assert data["limits"]["max_envelope_bytes"] == 8388608
    assert data["gateway"]["listen"] == "127.0.0.1:8443"
    assert data["tls"]["trust_anchors"] == [str(deployment / "tls/ca.pem")]
    assert "key_passphrase" not in data["tls"]
    assert set(data) == {f.name for f in dataclasses.fields(GatewayConfig)} - {"source"}


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"])))
def test_toml_string_escaping_round_trips(text: str) -> None:
    assert tomllib.loads(f"x = {_toml_string(text)}")["x"] == text


def default_paths() -> dict[str, Any]:
    return {
        "tls_cert": "tls/gateway.crt.pem",
        "tls_key": "tls/gateway.key.pem",
        "trust_anchors": ["tls/ca.pem"],
        "sign_key": "keys/gateway-sign.key",
        "directory_bundle": "directory",
        "trusted_root": "directory/root.json",
    }


def test_default_file_loads_and_documents_every_key(deployment: Path) -> None:
    path = write_default_config(deployment / "gateway.toml", **default_paths())

    config = load_config(path, environ={})

    assert config.limits == LimitsSettings()
    assert config.store.sqlite_path == deployment / "ketenpost.db"
    text = path.read_text()
    for section, table in config_to_dict(config, redact=False).items():
        assert f"[{section}]" in text
        for key in table:
            assert f"{key} =" in text
    for secret_key in ("key_passphrase_file", "passphrase_file", "password_file"):
        assert f"# {secret_key} = " in text


def test_default_file_with_passphrase_files(deployment: Path) -> None:
    write_secret(deployment, "tls.pass", "tls-pass\n")
    write_secret(deployment, "sign.pass", "sign-pass\n")
    path = write_default_config(
        deployment / "gateway.toml",
        **default_paths(),
        gateway_id="gw-ijmond",
        tls_key_passphrase_file="secrets/tls.pass",
        sign_key_passphrase_file="secrets/sign.pass",
        store_url="sqlite:data/ketenpost.db",
    )
    config = load_config(path, environ={})
    assert config.gateway.id == "gw-ijmond"
    assert config.tls.key_passphrase == Secret("tls-pass")
    assert config.keys.passphrase == Secret("sign-pass")
    assert config.store.sqlite_path == deployment / "data/ketenpost.db"
    assert "tls-pass" not in path.read_text()


def test_default_file_refuses_to_overwrite(deployment: Path) -> None:
    path = deployment / "gateway.toml"
    path.write_text("# the operator's own\n")
    with pytest.raises(ConfigError) as caught:
        write_default_config(path, **default_paths())
    assert caught.value.reason is GatewayReason.CONFIG_EXISTS
    assert str(caught.value) == f"{path}: refusing to overwrite an existing file"
    assert path.read_text() == "# the operator's own\n"


# --- the command line --------------------------------------------------------------------------


def run(argv: Sequence[str]) -> int:
    """What ``ketenpost.main`` does, on a fresh parser with only our verbs registered."""
    parser = argparse.ArgumentParser(prog="ketenpost")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cli_config.register(subparsers)
    args = parser.parse_args(argv)
    result: int = args.handler(args)
    return result


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("KETENPOST_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_check_ok(
    deployment: Path, capsys: pytest.CaptureFixture[str], clean_environment: pytest.MonkeyPatch
) -> None:
    path = deployment / "gateway.toml"
    path.write_text(MINIMAL_TOML)
    assert run(["config", "check", "--config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == f"ok: {path}\n"
    assert err == ""


@pytest.mark.parametrize(
    ("extra_toml", "environ", "line"),
    [
        pytest.param(
            '\n[limits]\nmax_recipients = "many"\n',
            {},
            'limits.max_recipients: expected an integer >= 1, got "many"',
            id="bad-value",
        ),
        pytest.param(
            "",
            {"KETENPOST_GATEWAY__LISTEN": "nowhere"},
            "gateway.listen (from KETENPOST_GATEWAY__LISTEN): expected HOST:PORT "
            '(e.g. 127.0.0.1:8443 or [::1]:8443), got "nowhere"',
            id="bad-environment",
        ),
    ],
)
def test_check_bad_config_exits_2(
    deployment: Path,
    capsys: pytest.CaptureFixture[str],
    clean_environment: pytest.MonkeyPatch,
    extra_toml: str,
    environ: dict[str, str],
    line: str,
) -> None:
    path = deployment / "gateway.toml"
    path.write_text(MINIMAL_TOML + extra_toml)
    for name, value in environ.items():
        clean_environment.setenv(name, value)
    assert run(["config", "check", "--config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"ketenpost: error: {line}\n"


def test_check_missing_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], clean_environment: pytest.MonkeyPatch
) -> None:
    assert run(["config", "check", "--config", str(tmp_path / "none.toml")]) == 2
    assert capsys.readouterr().err == (
        f"ketenpost: error: {tmp_path}/none.toml: config file not found\n"
    )


def test_show_redacts(
    deployment: Path, capsys: pytest.CaptureFixture[str], clean_environment: pytest.MonkeyPatch
) -> None:
    path = deployment / "gateway.toml"
    path.write_text(MINIMAL_TOML)
    write_secret(deployment, "sign.pass", SECRET_VALUE)
    clean_environment.setenv("KETENPOST_KEYS__PASSPHRASE_FILE", "secrets/sign.pass")
    clean_environment.setenv("KETENPOST_LIMITS__MAX_RECIPIENTS", "8")

    assert run(["config", "show", "--config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert SECRET_VALUE not in out
    shown = tomllib.loads(out)
    assert shown["keys"]["passphrase"] == REDACTED
    assert shown["limits"]["max_recipients"] == 8

    assert run(["config", "show", "--config", str(path), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["keys"]["passphrase"] == REDACTED


def test_show_bad_config_exits_2(
    deployment: Path, capsys: pytest.CaptureFixture[str], clean_environment: pytest.MonkeyPatch
) -> None:
    path = deployment / "gateway.toml"
    path.write_text(MINIMAL_TOML + "\n[log]\nlevel = 3\n")
    assert run(["config", "show", "--config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert (
        err == "ketenpost: error: log.level: expected one of debug, info, warning, error, got 3\n"
    )


def test_config_needs_a_verb_and_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["config"], ["config", "check"]):
        with pytest.raises(SystemExit) as caught:
            run(argv)
        assert caught.value.code == 2
    assert "--config" in capsys.readouterr().err


def test_store_flag_settles_the_password_rule(tmp_path: Path) -> None:
    # The file names a SQLite store, the environment a password: only ``--store`` makes it valid.
    path = tmp_path / "gateway.toml"
    write_default_config(
        path,
        tls_cert=str(_touch(tmp_path / "c.pem")),
        tls_key=str(_touch(tmp_path / "k.pem")),
        trust_anchors=[str(_touch(tmp_path / "ca.pem"))],
        sign_key=str(_touch(tmp_path / "s.key")),
        directory_bundle=str(_mkdir(tmp_path / "dir")),
        trusted_root=str(_touch(tmp_path / "dir" / "root.json")),
    )
    environ = {"KETENPOST_STORE__PASSWORD": "s3cret"}
    with pytest.raises(ConfigError, match=r"^store\.password: "):
        load_config(path, environ=environ)
    lenient = load_config(path, environ=environ, check_across=False)
    config = apply_cli_overrides(
        lenient, store="postgresql://ketenpost@127.0.0.1/test", cwd=tmp_path
    )
    assert config.store.sqlite_path is None
    with pytest.raises(ConfigError, match=r"^store\.password: "):
        apply_cli_overrides(lenient, cwd=tmp_path)


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
