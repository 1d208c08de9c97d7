"""``ketenpost adapter configure``: ``adapter.toml`` for a partner folder made with ``keys
generate`` (issue 6, the onboarding runbook's step 5).

Every case runs the command as the command line does (``ketenpost.main``) on real folders:
one made by ``keys generate``, ``keys certify`` and the onboarding runbook's step 4, and the
partner folders of a ``ketenpost init`` deployment. What is written must load, open the keys it
names, and be the text ``init`` writes for the same files.
"""

from __future__ import annotations

import json
import shutil
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import ketenpost
from adapters.cli_partner import PartnerFolder
from adapters.config import load_partner_dir
from keys.deployment import DeploymentLayout
from keys.tlsidentity import client_context

URL = "https://ketenpost.ijmond.example:8443"
PARTNER = "welzijn-velsen"


@dataclass
class Cli:
    capsys: pytest.CaptureFixture[str]

    def __call__(self, *argv: str | Path) -> tuple[int, str, str]:
        code = ketenpost.main([str(a) for a in argv])
        out, err = self.capsys.readouterr()
        return code, out, err

    def ok(self, *argv: str | Path) -> str:
        code, out, err = self(*argv)
        assert code == 0, f"{argv}: exit {code}\n{out}\n{err}"
        return out


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(capsys)


@pytest.fixture(scope="module")
def covenant(tmp_path_factory: pytest.TempPathFactory) -> DeploymentLayout:
    root = tmp_path_factory.mktemp("configure") / "covenant"
    return ketenpost.init_deployment(root, now=int(time.time()))


def generate(cli: Cli, covenant: DeploymentLayout, folder: Path, *extra: str) -> Path:
    """The onboarding runbook's steps 1, 2 and 4 (at the partner, the CA, the partner's
    trust): keys, certificate, trust anchor, trusted root and a first copy of the bundle."""
    partner = folder.name
    cli.ok(
        "keys", "generate", "--partner", partner, "--oin", "00000099000000042000",
        "--role", "welfare", "--name", "Welzijn Velsen", "--out", folder, *extra,
    )  # fmt: skip
    cli.ok(
        "keys", "certify", "--ca", covenant.root / "ca", "--partner", partner,
        "--csr", folder / "keys" / "tls.csr", "--out", folder / "keys" / "tls.crt",
    )  # fmt: skip
    (folder / "trust").mkdir()
    shutil.copy(covenant.root / "ca" / "ca.crt", folder / "trust" / "ca.crt")
    shutil.copytree(covenant.root / "directory", folder / "directory")
    return folder


@pytest.fixture
def generated(cli: Cli, covenant: DeploymentLayout, tmp_path: Path) -> Path:
    return generate(cli, covenant, tmp_path / PARTNER)


def without_system(text: str) -> str:
    """``init``'s adapter.toml without the ``[system]`` table of its development fake."""
    head, sep, _ = text.partition("\n[system]\n")
    assert sep, "init writes a [system] table"
    return head


def test_configures_a_generated_partner_folder(cli: Cli, generated: Path) -> None:
    out = cli.ok("adapter", "configure", "--partner-dir", generated, "--gateway", URL)
    written = json.loads(out)
    assert written == {
        "adapter_toml": str(generated / "adapter.toml"),
        "replaced": False,
        "partner": PARTNER,
        "coordinator": False,
        "gateway": URL,
        "tls": {"cert": "keys/tls.crt", "key": "keys/tls.key", "trust_anchors": ["trust/ca.crt"]},
        "keys": {
            "sign": "keys/sign.key",
            "encrypt": ["keys/encrypt.key"],
            "token": None,
            "outbox": "keys/outbox.key",
            "passphrase": None,
        },
        "directory": {"bundle": "directory", "trusted_root": "directory/root.json"},
        "store": "adapter.db",
    }
    # Secrets never reach stdout: nothing of a private key file is printed.
    for key_file in (generated / "keys").glob("*.key"):
        assert key_file.read_text(encoding="utf-8").strip() not in out
    # What it wrote loads, and the keys, certificate and trust anchor it names open.
    config = load_partner_dir(generated)
    assert config.partner.id == PARTNER
    assert config.gateway.url == URL
    folder = PartnerFolder.open(generated, {})
    assert folder.sign_key().kid
    assert len(folder.encrypt_keys()) == 1
    assert len(folder.outbox_key()) == 32
    client_context(folder.tls_files())


def test_a_coordinator_gets_its_token_key(
    cli: Cli, covenant: DeploymentLayout, tmp_path: Path
) -> None:
    folder = generate(cli, covenant, tmp_path / "gemeente-ijmuiden", "--coordinator")
    written = json.loads(cli.ok("adapter", "configure", "--partner-dir", folder, "--gateway", URL))
    assert written["coordinator"] is True
    assert written["keys"]["token"] == "keys/token.key"
    assert len(PartnerFolder.open(folder, {}).token_keys()) == 1


def test_sealed_key_files_need_the_passphrase_source(
    cli: Cli, covenant: DeploymentLayout, tmp_path: Path
) -> None:
    folder = tmp_path / PARTNER
    (folder / "secrets").mkdir(parents=True)
    secret = folder / "secrets" / "passphrase"
    secret.write_text("correct horse battery staple\n", encoding="utf-8")
    secret.chmod(0o600)
    generate(cli, covenant, folder, "--passphrase", f"file:{secret}")
    code, out, err = cli("adapter", "configure", "--partner-dir", folder, "--gateway", URL)
    assert (code, out) == (2, "")
    assert "keys/sign.key is sealed with a passphrase: give --passphrase" in err
    assert not (folder / "adapter.toml").exists()
    code, _, err = cli(
        "adapter", "configure", "--partner-dir", folder, "--gateway", URL,
        "--passphrase", "file:secrets/missing",
    )  # fmt: skip
    assert code == 2
    assert "no such file" in err
    out = cli.ok(
        "adapter", "configure", "--partner-dir", folder, "--gateway", URL,
        "--passphrase", "file:secrets/passphrase",
    )  # fmt: skip
    assert json.loads(out)["keys"]["passphrase"] == "file:secrets/passphrase"
    assert "correct horse" not in out
    opened = PartnerFolder.open(folder, {})
    assert opened.sign_key().kid
    assert len(opened.encrypt_keys()) == 1
    client_context(opened.tls_files())


@pytest.mark.parametrize("partner", ["gemeente-velsen", "halt", "welzijn-ijmond"])
def test_writes_what_init_writes_for_the_same_files(
    cli: Cli, covenant: DeploymentLayout, tmp_path: Path, partner: str
) -> None:
    folder = tmp_path / partner
    shutil.copytree(covenant.root / "partners" / partner, folder)
    by_init = (folder / "adapter.toml").read_text(encoding="utf-8")
    (folder / "adapter.toml").unlink()
    url = load_partner_dir(covenant.root / "partners" / partner).gateway.url
    cli.ok("adapter", "configure", "--partner-dir", folder, "--gateway", url)
    configured = (folder / "adapter.toml").read_text(encoding="utf-8")
    assert configured == without_system(by_init)
    init_toml = tomllib.loads(by_init)
    del init_toml["system"]
    assert tomllib.loads(configured) == init_toml


def test_lists_every_encrypt_key_in_order_as_rotate_does(
    cli: Cli, covenant: DeploymentLayout, tmp_path: Path
) -> None:
    folder = tmp_path / "halt"
    shutil.copytree(covenant.root / "partners" / "halt", folder)
    cli.ok("keys", "rotate", "--partner-dir", folder, "--use", "encrypt")
    cli.ok("keys", "rotate", "--partner-dir", folder, "--use", "encrypt")
    rotated = (folder / "adapter.toml").read_text(encoding="utf-8")
    written = json.loads(
        cli.ok("adapter", "configure", "--partner-dir", folder, "--gateway", URL, "--force")
    )
    assert written["replaced"] is True
    assert written["keys"]["encrypt"] == [
        "keys/encrypt.key",
        "keys/encrypt-2.key",
        "keys/encrypt-3.key",
    ]
    configured = tomllib.loads((folder / "adapter.toml").read_text(encoding="utf-8"))
    expected = tomllib.loads(rotated)
    del expected["system"]
    expected["gateway"]["url"] = URL
    assert configured == expected


def test_trust_anchor_inside_the_folder_is_relative_outside_absolute(
    cli: Cli, generated: Path, tmp_path: Path
) -> None:
    inside = generated / "trust" / "pkio-private-root.crt"
    shutil.copy(generated / "trust" / "ca.crt", inside)
    outside = tmp_path / "elsewhere.crt"
    shutil.copy(generated / "trust" / "ca.crt", outside)
    out = cli.ok(
        "adapter", "configure", "--partner-dir", generated, "--gateway", URL,
        "--trust-anchor", inside, "--trust-anchor", outside,
    )  # fmt: skip
    anchors = json.loads(out)["tls"]["trust_anchors"]
    assert anchors == ["trust/pkio-private-root.crt", str(outside.resolve())]
    assert load_partner_dir(generated).tls.trust_anchors == tuple(anchors)


def _remove(relative: str) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        path = folder / relative
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()

    return change


def _nothing(folder: Path) -> None:
    pass


# (name, change to the generated folder, extra arguments, what the error must name)
REFUSALS: list[tuple[str, Callable[[Path], None], list[str], str]] = [
    ("no certificate yet", _remove("keys/tls.crt"), [], "keys/tls.crt (the certificate"),
    ("no sign key", _remove("keys/sign.key"), [], "keys/sign.key"),
    ("no encrypt key", _remove("keys/encrypt.key"), [], "keys/encrypt.key"),
    ("no outbox key", _remove("keys/outbox.key"), [], "keys/outbox.key"),
    ("no tls key", _remove("keys/tls.key"), [], "keys/tls.key"),
    ("no trust anchor", _remove("trust/ca.crt"), [], "trust/ca.crt (the trust anchor"),
    ("no trusted root", _remove("directory/root.json"), [], "directory/root.json"),
    ("no directory", _remove("directory"), [], "directory (a first copy"),
    (
        "a named trust anchor that is not there",
        _nothing,
        ["--trust-anchor", "trust/pkio.crt"],
        "pkio.crt (the trust anchor",
    ),
    ("a plain-http gateway", _nothing, ["--gateway", "http://127.0.0.1:8443"], "not an https://"),
    ("a URL without a host", _nothing, ["--gateway", "https:///v1"], "not an https://"),
    ("not a URL", _nothing, ["--gateway", "gateway.example:8443"], "not an https://"),
]


@pytest.mark.parametrize(
    ("change", "extra", "named"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_refuses_and_writes_nothing(
    cli: Cli,
    generated: Path,
    change: Callable[[Path], None],
    extra: list[str],
    named: str,
) -> None:
    change(generated)
    args: list[Any] = ["adapter", "configure", "--partner-dir", generated]
    args += extra if "--gateway" in extra else ["--gateway", URL, *extra]
    code, out, err = cli(*args)
    assert code == 2
    assert out == ""
    assert err.startswith("ketenpost: error: ")
    assert named in err
    assert len(err.strip().splitlines()) == 1
    assert not (generated / "adapter.toml").exists()
    assert not list(generated.glob(".adapter.toml.*"))


def test_a_coordinator_without_its_token_key_is_refused(
    cli: Cli, covenant: DeploymentLayout, tmp_path: Path
) -> None:
    folder = generate(cli, covenant, tmp_path / "gemeente-ijmuiden", "--coordinator")
    (folder / "keys" / "token.key").unlink()
    code, out, err = cli("adapter", "configure", "--partner-dir", folder, "--gateway", URL)
    assert (code, out) == (2, "")
    assert "keys/token.key (the coordinator's token key" in err


def test_never_overwrites_without_force(cli: Cli, generated: Path) -> None:
    target = generated / "adapter.toml"
    target.write_text("# the partner's own edits\n", encoding="utf-8")
    code, out, err = cli("adapter", "configure", "--partner-dir", generated, "--gateway", URL)
    assert (code, out) == (2, "")
    assert f"{target} already exists; refusing to overwrite it (--force replaces it)" in err
    assert target.read_text(encoding="utf-8") == "# the partner's own edits\n"
    written = json.loads(
        cli.ok("adapter", "configure", "--partner-dir", generated, "--gateway", URL, "--force")
    )
    assert written["replaced"] is True
    assert load_partner_dir(generated).gateway.url == URL


def test_partner_id_from_the_public_bundle_not_the_folder_name(
    cli: Cli, covenant: DeploymentLayout, tmp_path: Path
) -> None:
    folder = generate(cli, covenant, tmp_path / PARTNER)
    renamed = folder.rename(tmp_path / "deployed-adapter")
    written = json.loads(cli.ok("adapter", "configure", "--partner-dir", renamed, "--gateway", URL))
    assert written["partner"] == PARTNER


def test_without_a_public_bundle_the_folder_name_is_the_partner_id(
    cli: Cli, covenant: DeploymentLayout, tmp_path: Path
) -> None:
    folder = tmp_path / "halt"
    shutil.copytree(covenant.root / "partners" / "halt", folder)
    (folder / "adapter.toml").unlink()
    assert not list(folder.glob("*.public.json"))
    written = json.loads(cli.ok("adapter", "configure", "--partner-dir", folder, "--gateway", URL))
    assert written["partner"] == "halt"
    (folder / "adapter.toml").unlink()
    not_an_id = folder.rename(tmp_path / "Halt Adapter")
    code, _, err = cli("adapter", "configure", "--partner-dir", not_an_id, "--gateway", URL)
    assert code == 2
    assert "is not a partner id" in err


def test_a_missing_folder_is_refused(cli: Cli, tmp_path: Path) -> None:
    code, out, err = cli(
        "adapter", "configure", "--partner-dir", tmp_path / "nowhere", "--gateway", URL
    )
    assert (code, out) == (2, "")
    assert "no such partner folder" in err
