"""``ketenpost keys …`` end to end on a development deployment, in-process.

Named scenarios in python-tuf's key-rotation style: each drives the verbs as a security team
would, then checks what every partner's trusted root makes of the result. Time is passed with
``--now``; nothing sleeps.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

import ketenpost
from keys.ca import read_certificate_pem
from keys.directory import Directory
from keys.errors import DirectoryError, KeysReason
from keys.signed_directory import TrustedDirectory, read_bundle
from keys.tlsidentity import identify_peer

NOW = int(time.time())
HOUR = 3_600
DAY = 86_400


@pytest.fixture
def deploy(tmp_path: Path) -> Path:
    target = tmp_path / "covenant"
    ketenpost.init_deployment(target, now=NOW)
    return target


class Cli:
    """Runs ``ketenpost`` verbs and keeps every byte printed, to check no secret ever is."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.printed = ""

    def __call__(self, *argv: str | Path, code: int = 0) -> tuple[str, str]:
        self.capsys.readouterr()
        got = ketenpost.main([str(a) for a in argv])
        out, err = self.capsys.readouterr()
        self.printed += out + err
        assert got == code, f"{argv}: exit {got}\n{out}\n{err}"
        return out, err

    def json(self, *argv: str | Path) -> dict[str, Any]:
        out, _ = self(*argv)
        result: dict[str, Any] = json.loads(out)
        return result


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(capsys)


def _verify_everywhere(deploy: Path, now: int) -> Directory:
    """Every partner folder's trusted root accepts the published bundle; return one view."""
    folders = [deploy / "directory", *sorted((deploy / "partners").glob("*/directory"))]
    views = [TrustedDirectory.load(f).update(read_bundle(f), now) for f in folders]
    assert len({v.version for v in views}) == 1
    return views[0]


def _sign_and_publish(cli: Cli, deploy: Path, proposal: Path, *keys: str, now: int = NOW) -> None:
    for key in keys:
        cli("keys", "directory", "sign", proposal, "--key", deploy / "officers" / key)
    cli("keys", "directory", "publish", proposal, "--deployment", deploy, "--now", str(now))


def _kid(cli: Cli, deploy: Path, partner: str, use: str) -> str:
    out, _ = cli(
        "keys",
        "list",
        "--deployment",
        deploy,
        "--partner",
        partner,
        "--use",
        use,
        "--format",
        "kid",
    )
    return out.strip()


def test_key_change_needs_the_threshold_then_verifies_from_every_partner(
    cli: Cli, deploy: Path, tmp_path: Path
) -> None:
    rotated = cli.json(
        "keys", "rotate", "--partner-dir", deploy / "partners" / "om", "--use", "sign"
    )
    proposal = tmp_path / "p.json"
    cli(
        "keys", "directory", "propose", "--deployment", deploy,
        "--key-change", rotated["key_change"], "--out", proposal,
    )  # fmt: skip
    status = cli.json(
        "keys", "directory", "sign", proposal, "--key", deploy / "officers" / "directory-1.key"
    )
    assert status["signing"][0]["thresholds"][0]["missing"] == 1
    _, err = cli("keys", "directory", "publish", proposal, "--deployment", deploy, code=1)
    assert "below threshold" in err
    assert "1 missing" in err
    _sign_and_publish(cli, deploy, proposal, "directory-2.key")
    directory = _verify_everywhere(deploy, NOW)
    assert directory.version == 2
    om = directory.partner("om")
    new = next(k for k in om.keys if k.kid == rotated["kid"])
    old = next(k for k in om.keys if k.kid != rotated["kid"] and k.use.value == "sign")
    assert new.active_from >= NOW + directory.contents.refresh_interval_s
    assert old.retire_at is not None
    assert old.retire_at >= (
        new.active_from + directory.contents.refresh_interval_s + directory.contents.clock_skew_s
    )


def test_publishing_to_a_gateway_needs_mtls_files_before_anything_is_written(
    cli: Cli, deploy: Path, tmp_path: Path
) -> None:
    proposal = tmp_path / "renew.json"
    cli("keys", "directory", "renew", "--deployment", deploy, "--out", proposal)
    before = (deploy / "directory" / "timestamp.json").read_bytes()
    _, err = cli(
        "keys", "directory", "publish", proposal, "--deployment", deploy,
        "--gateway", "https://127.0.0.1:8443", code=1,
    )  # fmt: skip
    assert err.startswith("ketenpost: error: --gateway https://… needs --partner-dir")
    assert (deploy / "directory" / "timestamp.json").read_bytes() == before


def test_client_side_refusals_rollback_expired_stale(
    cli: Cli, deploy: Path, tmp_path: Path
) -> None:
    old_bundle = read_bundle(deploy / "directory")
    proposal = tmp_path / "renew.json"
    cli("keys", "directory", "renew", "--deployment", deploy, "--out", proposal)
    _sign_and_publish(cli, deploy, proposal, "directory-1.key", "directory-3.key")
    trusted = TrustedDirectory.load(deploy / "partners" / "halt" / "directory")
    trusted.update(read_bundle(deploy / "partners" / "halt" / "directory"), NOW)
    cases = {
        "rollback": (old_bundle, NOW, KeysReason.DIRECTORY_ROLLBACK),
        "stale-timestamp": (
            read_bundle(deploy / "directory"), NOW + 2 * DAY, KeysReason.DIRECTORY_TIMESTAMP_STALE
        ),
    }  # fmt: skip
    for name, (bundle, now, reason) in cases.items():
        with pytest.raises(DirectoryError) as exc:
            trusted.update(bundle, now)
        assert exc.value.reason is reason, name
    # The key authority's refresh ends the staleness; a hundred days on, the targets expire.
    cli(
        "keys", "timestamp", "--deployment", deploy,
        "--key", deploy / "key-authority" / "timestamp.key", "--now", str(NOW + 2 * DAY),
    )  # fmt: skip
    assert _verify_everywhere(deploy, NOW + 2 * DAY).version == 2
    # A timestamp over expired targets is refused before anything is written: renew first.
    _, err = cli(
        "keys", "timestamp", "--deployment", deploy, "--snapshot",
        "--key", deploy / "key-authority" / "timestamp.key", "--now", str(NOW + 100 * DAY),
        code=1,
    )  # fmt: skip
    assert "targets v2 expired" in err
    assert _verify_everywhere(deploy, NOW + 2 * DAY).version == 2


def test_a_stale_proposal_is_refused(cli: Cli, deploy: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    cli("keys", "directory", "renew", "--deployment", deploy, "--out", first)
    cli("keys", "directory", "renew", "--deployment", deploy, "--out", second)
    _sign_and_publish(cli, deploy, first, "directory-1.key", "directory-2.key")
    for key in ("directory-1.key", "directory-2.key"):
        cli("keys", "directory", "sign", second, "--key", deploy / "officers" / key)
    _, err = cli("keys", "directory", "publish", second, "--deployment", deploy, code=1)
    assert "propose again" in err


def test_root_rotation_needs_the_old_threshold(cli: Cli, deploy: Path, tmp_path: Path) -> None:
    new = [tmp_path / "new" / f"root-{c}.key" for c in "abc"]
    for path in new:
        cli("keys", "officer-key", "--out", path)
    proposal = tmp_path / "root.json"
    cli(
        "keys", "directory", "rotate-root", "--deployment", deploy,
        *[a for p in new for a in ("--root-key", f"{p}.pub")], "--out", proposal,
    )  # fmt: skip
    for path in (*new, deploy / "officers" / "root-1.key"):
        cli("keys", "directory", "sign", proposal, "--key", path)
    _, err = cli("keys", "directory", "publish", proposal, "--deployment", deploy, code=1)
    assert "root v1 requires (1 missing)" in err
    # A directory key is no root key: it cannot sign a root.
    cli(
        "keys",
        "directory",
        "sign",
        proposal,
        "--key",
        deploy / "officers" / "directory-1.key",
        code=1,
    )
    cli("keys", "directory", "sign", proposal, "--key", deploy / "officers" / "root-3.key")
    cli("keys", "directory", "publish", proposal, "--deployment", deploy)
    folder = deploy / "partners" / "cjg" / "directory"
    trusted = TrustedDirectory.load(folder)
    trusted.update(read_bundle(folder), NOW)
    assert trusted.root_version == 2


def test_onboarding_a_welfare_partner(cli: Cli, deploy: Path, tmp_path: Path) -> None:
    partner = tmp_path / "welzijn-velsen"
    made = cli.json(
        "keys", "generate", "--partner", "welzijn-velsen", "--oin", "00000099000000042000",
        "--role", "welfare", "--name", "Welzijn Velsen", "--out", partner,
    )  # fmt: skip
    assert set(made["keys"]) == {"sign", "encrypt", "tls"}
    bundle = json.loads(Path(made["public_bundle"]).read_text())
    assert "secret" not in json.dumps(bundle)
    assert "PRIVATE" not in json.dumps(bundle)
    cli(
        "keys", "certify", "--ca", deploy / "ca", "--partner", "welzijn-velsen",
        "--csr", partner / "keys" / "tls.csr", "--out", partner / "keys" / "tls.crt",
    )  # fmt: skip
    proposal = tmp_path / "join.json"
    cli(
        "keys", "directory", "propose", "--deployment", deploy,
        "--add-partner", made["public_bundle"], "--out", proposal,
    )  # fmt: skip
    _sign_and_publish(cli, deploy, proposal, "directory-1.key", "directory-2.key")
    directory = _verify_everywhere(deploy, NOW)
    joined = directory.partner("welzijn-velsen")
    assert joined.role.value == "welfare"
    assert {k.kid for k in joined.keys} == set(made["keys"].values())
    cert = read_certificate_pem(partner / "keys" / "tls.crt").public_bytes(Encoding.DER)
    # Its keys are active from the proposal on (a new partner has no predecessor to wait for).
    assert identify_peer(cert, directory, int(time.time())).id == "welzijn-velsen"
    listed = cli.json(
        "keys", "list", "--deployment", deploy, "--partner", "welzijn-velsen", "--format", "json"
    )
    assert {r["state"] for r in listed["keys"]} == {"active"}
    # A certificate request for someone else is refused by the CA.
    cli(
        "keys", "certify", "--ca", deploy / "ca", "--partner", "om",
        "--csr", partner / "keys" / "tls.csr", "--out", tmp_path / "x.crt", code=1,
    )  # fmt: skip
    assert not (tmp_path / "x.crt").exists()


def test_list_shows_states_and_days_to_expiry(cli: Cli, deploy: Path, tmp_path: Path) -> None:
    rotated = cli.json(
        "keys", "rotate", "--partner-dir", deploy / "partners" / "halt", "--use", "encrypt"
    )
    proposal = tmp_path / "p.json"
    cli(
        "keys",
        "directory",
        "propose",
        "--deployment",
        deploy,
        "--key-change",
        rotated["key_change"],
        "--out",
        proposal,
    )
    _sign_and_publish(cli, deploy, proposal, "directory-1.key", "directory-2.key")
    listed = cli.json(
        "keys",
        "list",
        "--deployment",
        deploy,
        "--partner",
        "halt",
        "--use",
        "encrypt",
        "--format",
        "json",
    )
    states = {r["kid"]: r for r in listed["keys"]}
    assert states[rotated["kid"]]["state"] == "pending"
    old = next(r for k, r in states.items() if k != rotated["kid"])
    assert old["state"] == "retiring"
    assert 0 < old["days_to_expiry"] < 1
    assert listed["metadata"]["timestamp"]["days_to_expiry"] == pytest.approx(1.0, abs=0.01)
    later = cli.json(
        "keys", "list", "--directory", deploy / "directory", "--partner", "halt",
        "--use", "encrypt", "--format", "json", "--now", str(NOW + 3 * HOUR),
    )  # fmt: skip
    assert {r["state"] for r in later["keys"]} == {"active", "retired"}
    table, _ = cli("keys", "list", "--deployment", deploy)
    assert "retiring" in table
    assert "pending" in table


def test_revocations_self_and_by_officers(cli: Cli, deploy: Path, tmp_path: Path) -> None:
    om = deploy / "partners" / "om"
    enc, sign = _kid(cli, deploy, "om", "encrypt"), _kid(cli, deploy, "om", "sign")
    statement = tmp_path / "om-revocation.json"
    # A key cannot sign its own revocation.
    cli(
        "keys", "revoke", "--self", "--partner-dir", om, "--kid", sign, "--signing-kid", sign,
        "--compromise-unknown", "--out", statement, code=1,
    )  # fmt: skip
    cli(
        "keys", "revoke", "--self", "--partner-dir", om, "--kid", enc, "--signing-kid", sign,
        "--compromised-since", str(NOW - DAY), "--out", statement,
    )  # fmt: skip
    proposal = tmp_path / "p.json"
    cli(
        "keys",
        "directory",
        "propose",
        "--deployment",
        deploy,
        "--revocation",
        statement,
        "--out",
        proposal,
    )
    halt_sign = _kid(cli, deploy, "halt", "sign")
    cli(
        "keys", "revoke", "--proposal", proposal, "--partner", "halt", "--kid", halt_sign,
        "--compromise-unknown",
    )  # fmt: skip
    _sign_and_publish(cli, deploy, proposal, "directory-1.key", "directory-2.key")
    directory = _verify_everywhere(deploy, NOW)
    revoked = directory.owned_key("om", enc, directory.key(enc)[1].use)
    assert revoked.revoked_at is not None
    assert revoked.compromised_since == NOW - DAY
    halt = directory.key(halt_sign)[1]
    assert halt.revoked_at is not None
    assert halt.compromised_since is None
    # Another partner's statement, replayed against halt's key, is refused.
    forged = tmp_path / "forged.json"
    doc = json.loads(statement.read_text())
    doc["partner"] = "halt"
    forged.write_text(json.dumps(doc))
    cli(
        "keys",
        "directory",
        "propose",
        "--deployment",
        deploy,
        "--revocation",
        forged,
        "--out",
        tmp_path / "f.json",
        code=1,
    )


def test_files_are_never_overwritten(cli: Cli, deploy: Path, tmp_path: Path) -> None:
    args = (
        "keys", "generate", "--partner", "welzijn-velsen", "--oin", "00000099000000042000",
        "--role", "welfare", "--name", "Welzijn Velsen", "--out", tmp_path / "p",
    )  # fmt: skip
    cli(*args)
    before = {p: p.read_bytes() for p in (tmp_path / "p").rglob("*") if p.is_file()}
    _, err = cli(*args, code=1)
    assert "refusing to overwrite" in err
    assert {p: p.read_bytes() for p in (tmp_path / "p").rglob("*") if p.is_file()} == before
    halt = deploy / "partners" / "halt"
    first = cli.json("keys", "rotate", "--partner-dir", halt, "--use", "tls")
    second = cli.json("keys", "rotate", "--partner-dir", halt, "--use", "tls")
    assert first["key_file"].endswith("tls-2.key")
    assert second["key_file"].endswith("tls-3.key")
    assert (halt / "keys" / "tls-3.csr").exists()
    out = tmp_path / "o.json"
    out.write_text("{}")
    cli("keys", "directory", "renew", "--deployment", deploy, "--out", out, code=1)
    assert out.read_text() == "{}"


def test_prune_deletes_only_what_nothing_can_need(cli: Cli, deploy: Path, tmp_path: Path) -> None:
    halt = deploy / "partners" / "halt"
    rotated = cli.json("keys", "rotate", "--partner-dir", halt, "--use", "sign")
    proposal = tmp_path / "p.json"
    cli(
        "keys",
        "directory",
        "propose",
        "--deployment",
        deploy,
        "--key-change",
        rotated["key_change"],
        "--out",
        proposal,
    )
    _sign_and_publish(cli, deploy, proposal, "directory-1.key", "directory-2.key")
    later = str(NOW + 31 * DAY + 3 * HOUR)
    cli(
        "keys",
        "timestamp",
        "--deployment",
        deploy,
        "--key",
        deploy / "key-authority" / "timestamp.key",
        "--now",
        later,
    )
    # Still named in adapter.toml: kept.
    report = cli.json("keys", "prune", "--partner-dir", halt, "--now", later)
    old = next(f for f in report["files"] if f["file"].endswith("/sign.key"))
    assert old["decision"] == "keep"
    assert "adapter.toml" in old["why"]
    # The adapter switched to the successor (issue 6 item 2 will do this itself).
    toml = halt / "adapter.toml"
    toml.write_text(toml.read_text().replace('sign = "keys/sign.key"', 'sign = "keys/sign-2.key"'))
    cli("keys", "prune", "--partner-dir", halt, "--now", str(NOW + 2 * DAY), code=0)
    assert (halt / "keys" / "sign.key").exists()
    _, err = cli("keys", "prune", "--partner-dir", halt, "--now", later, code=1)
    assert "--yes" in err
    assert (halt / "keys" / "sign.key").exists()
    cli("keys", "prune", "--partner-dir", halt, "--now", later, "--yes")
    assert not (halt / "keys" / "sign.key").exists()
    assert (halt / "keys" / "sign-2.key").exists()
    assert (halt / "keys" / "encrypt.key").exists()


def test_secrets_never_reach_the_terminal(cli: Cli, deploy: Path, tmp_path: Path) -> None:
    partner = tmp_path / "p"
    cli(
        "keys", "generate", "--partner", "welzijn-velsen", "--oin", "00000099000000042000",
        "--role", "welfare", "--name", "Welzijn Velsen", "--out", partner, "--coordinator",
    )  # fmt: skip
    for use in ("sign", "encrypt", "tls", "token"):
        cli(
            "keys", "rotate", "--partner-dir", deploy / "partners" / "gemeente-velsen", "--use", use
        )
    cli("keys", "officer-key", "--out", tmp_path / "o" / "root-4.key")
    cli("keys", "list", "--deployment", deploy, "--format", "json")
    secrets = [
        p.read_text()
        for p in (*partner.rglob("*.key"), *deploy.rglob("*.key"), *tmp_path.rglob("o/*.key"))
    ]
    assert secrets
    assert "PRIVATE KEY" not in cli.printed
    assert '"secret"' not in cli.printed
    for secret in secrets:
        assert secret.strip() not in cli.printed
