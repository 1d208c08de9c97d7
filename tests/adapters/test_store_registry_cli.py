"""The adapter store's migrations and idempotency, the transport registry and the CLI."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from adapters.base import Clock, Transport
from adapters.cli import EXIT_BAD_CONFIG, register, run_adapter
from adapters.config import AdapterConfig
from adapters.errors import AdapterConfigError
from adapters.outbox import MIGRATIONS, AdapterStore, NewOutbound
from adapters.registry import TransportRegistry, default_registry
from tests.adapters.fake_system import FakeCaseSystem


def test_store_migrates_once_and_keeps_rows(tmp_path: Path) -> None:
    path = tmp_path / "adapter.db"
    store = AdapterStore(path)
    assert store.schema_version == len(MIGRATIONS)
    row = NewOutbound("R-1", "ab" * 32, "cd" * 16, ("halt",), "signal", b"{}", 60, "t")
    assert store.enqueue([row], [], [], "7", now=100) == [row.message_id]
    assert store.enqueue([row], [], [], "8", now=101) == []  # the same record again
    store.close()
    reopened = AdapterStore(path)
    assert [r.record_id for r in reopened.outbox()] == ["R-1"]
    assert reopened.cursor() == "8"
    reopened.close()


def test_inbound_processed_once(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "adapter.db")
    args = {
        "message_id": "ef" * 32,
        "sender": "halt",
        "message_type": "signal",
        "token_id": None,
        "outcome": "applied",
        "reason": None,
        "answer": b"receipt",
        "now": 5,
    }
    assert store.record_inbound(**args)  # type: ignore[arg-type]
    assert not store.record_inbound(**{**args, "answer": b"other"})  # type: ignore[arg-type]
    got = store.inbound("ef" * 32)
    assert got is not None
    assert got.answer == b"receipt"
    store.close()


def _factory(config: AdapterConfig, clock: Clock) -> Transport:
    return FakeCaseSystem(config.partner.id).transport()


def test_registry_names_and_errors() -> None:
    registry = TransportRegistry()
    registry.register("memory", _factory)
    with pytest.raises(ValueError, match="registered already"):
        registry.register("memory", _factory)
    with pytest.raises(AdapterConfigError, match="unknown transport 'zgw'"):
        registry.factory("zgw")
    assert registry.names() == ["memory"]


def _install(site: Path, dist: str, entry_points: str, module: str = "") -> None:
    """A real installed distribution in ``site`` (a ``.dist-info`` folder with its
    ``entry_points.txt``, as pip writes it), plus a module of the same name when given."""
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[ketenpost.transports]\n{entry_points}\n")
    if module:
        (site / f"{dist}.py").write_text(module)


TRIAL_MODULE = """
from tests.adapters.test_store_registry_cli import _factory as create_transport
"""


def test_installed_packages_add_transports_by_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    site = tmp_path / "site"
    _install(site, "jeugdzorg_trial", "jz-rest = jeugdzorg_trial:create_transport", TRIAL_MODULE)
    _install(site, "shadow_trial", "zgw = shadow_trial:create_transport", TRIAL_MODULE)
    _install(site, "twin_a", "twin = twin_a:create_transport")
    _install(site, "twin_b", "twin = twin_b:create_transport")
    _install(site, "broken_trial", "broken = broken_trial_missing:create_transport")
    monkeypatch.syspath_prepend(str(site))
    with caplog.at_level("WARNING", logger="adapters.registry"):
        registry = default_registry()
    names = registry.names()
    assert {"jz-rest", "broken", "zgw", "police-rest"} <= set(names)
    # The package's factory is what the name gives.
    assert registry.factory("jz-rest") is _factory
    # A built-in name stays the built-in transport, and the clash is logged.
    assert registry.factory("zgw").__module__ == "adapters.partners.zgw"
    details = [getattr(r, "detail", "") for r in caplog.records]
    assert "shadow_trial declares the built-in transport 'zgw'" in details
    # Two packages claiming one name: refused with one line, not resolved by install order.
    with pytest.raises(AdapterConfigError, match="transport 'twin': installed packages declare"):
        registry.factory("twin")
    # A target that does not import: one line naming the transport and the target.
    with pytest.raises(AdapterConfigError, match="transport 'broken': cannot load broken_trial"):
        registry.factory("broken")


def test_cli_refuses_a_config_of_another_partner(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "adapter.toml").write_text('[partner]\nid = "om"\n', encoding="utf-8")
    parser = argparse.ArgumentParser(prog="ketenpost")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["adapter", "run", "halt", "--config", str(tmp_path / "adapter.toml")])
    assert run_adapter(args) == EXIT_BAD_CONFIG
    assert capsys.readouterr().err.startswith("ketenpost: error: ")


def test_cli_needs_a_transport(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "adapter.toml").write_text('[partner]\nid = "halt"\n', encoding="utf-8")
    parser = argparse.ArgumentParser(prog="ketenpost")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["adapter", "run", "halt", "--config", str(tmp_path / "adapter.toml")])
    assert run_adapter(args, TransportRegistry()) == EXIT_BAD_CONFIG
    assert "[system] transport" in capsys.readouterr().err
