"""`ketenpost init`: a complete, verifiable development deployment with one folder per partner."""

from __future__ import annotations

import asyncio
import shutil
import stat
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

import ketenpost
from adapters.base import SystemClock, Transport
from adapters.config import load_partner_dir
from adapters.registry import ROLE_TRANSPORTS, default_registry
from gateway.config import load_config
from gateway.protocol.policy import default_policy, policy_hash
from keys import KeyUse, Role
from keys.ca import read_certificate_pem
from keys.deployment import IJMOND_PARTNERS, PartnerSpec, read_outbox_key
from keys.keyfile import load_ed25519_key, load_encrypt_key, read_tls_key
from keys.signed_directory import TrustedDirectory, read_bundle
from keys.tlsidentity import identify_peer, verify_chain

NOW = int(time.time())


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("covenant") / "dev"
    ketenpost.init_deployment(target, now=NOW)
    return target


def test_every_secret_file_is_0600_in_a_0700_folder(deployment: Path) -> None:
    secrets = [p for p in deployment.rglob("*") if p.is_file() and p.suffix == ".key"]
    assert len(secrets) >= 9 * 4
    for path in secrets:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700, path.parent


def test_refuses_a_non_empty_folder_and_changes_nothing(deployment: Path) -> None:
    before = sorted((p, p.stat().st_mtime_ns) for p in deployment.rglob("*"))
    code = ketenpost.main(["init", str(deployment)])
    assert code != 0
    assert sorted((p, p.stat().st_mtime_ns) for p in deployment.rglob("*")) == before


def test_cli_prints_what_it_made(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ketenpost.main(["init", str(tmp_path / "d")]) == 0
    out, err = capsys.readouterr()
    assert '"coordinators"' in out
    assert "secret files" in err


def test_the_directory_verifies_and_lists_the_covenant(deployment: Path) -> None:
    trusted = TrustedDirectory.load(deployment / "directory")
    directory = trusted.update(read_bundle(deployment / "directory"), NOW)
    assert {p.id for p in directory.partners()} == {s.id for s in IJMOND_PARTNERS}
    assert {p.id for p in directory.coordinators()} == {
        "gemeente-heemskerk",
        "gemeente-beverwijk",
        "gemeente-uitgeest",
        "gemeente-velsen",
    }
    assert directory.partner("halt").role is Role.HALT
    assert directory.policy_hash == policy_hash(default_policy())


def test_gateway_config_checks(deployment: Path) -> None:
    config = load_config(deployment / "gateway.toml", environ={})
    assert config.gateway.id == "gateway"


@pytest.mark.parametrize("spec", IJMOND_PARTNERS, ids=lambda s: s.id)
def test_every_partner_folder_is_self_contained(
    deployment: Path, tmp_path: Path, spec: PartnerSpec
) -> None:
    partner_id = spec.id
    # Copy the folder alone somewhere else: everything a partner needs must come with it.
    folder = tmp_path / partner_id
    shutil.copytree(deployment / "partners" / partner_id, folder)
    config = load_partner_dir(folder)
    assert config.partner.id == partner_id
    directory = TrustedDirectory.load(config.path(config.directory.bundle)).update(
        read_bundle(config.path(config.directory.bundle)), NOW
    )
    partner = directory.partner(partner_id)
    sign = load_ed25519_key(config.path(config.keys.sign), KeyUse.SIGN)
    assert directory.owned_key(partner_id, sign.kid, KeyUse.SIGN).public == sign.public
    encrypt = load_encrypt_key(config.path(config.keys.encrypt[0]))
    assert directory.owned_key(partner_id, encrypt.kid, KeyUse.ENCRYPT).public == encrypt.public
    if partner.coordinator:
        assert config.keys.token is not None
        token = load_ed25519_key(config.path(config.keys.token), KeyUse.TOKEN)
        directory.owned_key(partner_id, token.kid, KeyUse.TOKEN)
    else:
        assert config.keys.token is None
    assert len(read_outbox_key(config.path(config.keys.outbox))) == 32
    read_tls_key(config.path(config.tls.key))
    cert = read_certificate_pem(config.path(config.tls.cert))
    anchors = [read_certificate_pem(config.path(a)) for a in config.tls.trust_anchors]
    verify_chain(cert, anchors, NOW)
    assert identify_peer(cert.public_bytes(Encoding.DER), directory, NOW).id == partner_id


@pytest.mark.parametrize("spec", IJMOND_PARTNERS, ids=lambda s: s.id)
def test_every_adapter_toml_builds_its_transport_through_the_registry(
    deployment: Path, tmp_path: Path, spec: PartnerSpec
) -> None:
    # The folder alone, somewhere else: the [system] table and its prepared files come with it.
    folder = tmp_path / spec.id
    shutil.copytree(deployment / "partners" / spec.id, folder)
    config = load_partner_dir(folder)
    assert config.system["transport"] == ROLE_TRANSPORTS[spec.role]
    transport = default_registry().create(config, SystemClock())
    assert isinstance(transport, Transport)
    asyncio.run(transport.source.close())


def test_system_secrets_are_0600_and_the_municipalities_share_the_zgw_credentials(
    deployment: Path,
) -> None:
    municipalities = [s.id for s in IJMOND_PARTNERS if s.role is Role.MUNICIPALITY]
    secrets = [deployment / "partners" / m / "zgw.secret" for m in municipalities]
    token = deployment / "partners" / "cjg" / "secrets" / "cjg-api-token"
    for path in (*secrets, token):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert len(path.read_bytes().strip()) >= 32, path
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    assert len({p.read_bytes() for p in secrets}) == 1
    readme = (deployment / "README.txt").read_text(encoding="utf-8")
    assert "share the fake ZGW's development client credentials" in readme
    assert "partners/cjg/secrets/cjg-api-token" in readme
    assert "partners/gemeente-velsen/zgw.secret" in readme
