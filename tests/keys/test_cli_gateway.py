"""``ketenpost keys …`` verbs that call a running gateway (issue 6 follow-ups).

Each test gets its own ``ketenpost init`` deployment and, where it needs one, a real gateway on
127.0.0.1 over mTLS (``tests.gateway.conftest.start_gateway``, with a ``ManualClock``). The
verbs run as the command line runs them (``ketenpost.main``), in a worker thread so the
gateway keeps serving on the test's event loop.

* ``directory publish --gateway``: the gateway first, the local folders only once it accepted;
  unreachable (exit 1) or refused (exit 3) leaves every folder as it was, and the proposal can
  be published again.
* ``directory push``: (re)sends the deployment's bundle; the same version again is accepted,
  an older one refused.
* ``timestamp --gateway``: written locally first, then sent; the gateway serves it at once.
* ``revoke --submit``: a statement made before, carried by another partner; recorded, the same
  answer again, a refusal exits 3.
* ``--partner-dir`` presents the newest usable TLS pair, also after the old key's ``retire_at``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import ketenpost
from keys import KeyUse
from keys.keyfile import load_ed25519_key
from keys.revocation import encode_revocation, sign_revocation
from keys.signed_directory import TrustedDirectory, encode_bundle, read_bundle
from tests import test_key_rotation_live as _live
from tests.gateway.conftest import Deployment, Gw

# The fixtures of the live key-rotation tests: an own `ketenpost init` deployment and a real
# gateway (mTLS, SQLite, manual clock) on it.
own_deployment = _live.own_deployment
live = _live.live

HOUR = 3_600


@dataclass
class Cli:
    """``ketenpost`` as the command line runs it, off the event loop."""

    capsys: pytest.CaptureFixture[str]
    deploy: Path
    work: Path

    def run(self, *argv: str | Path, code: int = 0) -> tuple[str, str]:
        self.capsys.readouterr()
        got = ketenpost.main([str(a) for a in argv])
        out, err = self.capsys.readouterr()
        assert got == code, f"{argv}: exit {got}\n{out}\n{err}"
        return out, err

    async def __call__(self, *argv: str | Path, code: int = 0) -> tuple[str, str]:
        return await asyncio.to_thread(self.run, *argv, code=code)

    async def json(self, *argv: str | Path) -> dict[str, Any]:
        out, _ = await self(*argv)
        result: dict[str, Any] = json.loads(out)
        return result

    def partner(self, partner_id: str) -> Path:
        return self.deploy / "partners" / partner_id

    async def signed_renewal(self, name: str, *, now: int | None = None) -> Path:
        """A renewal proposal signed by two officers (the threshold)."""
        proposal = self.work / f"{name}.json"
        when = () if now is None else ("--now", str(now))
        await self(
            "keys", "directory", "renew", "--deployment", self.deploy, "--out", proposal, *when
        )
        for officer in ("directory-1.key", "directory-2.key"):
            await self(
                "keys", "directory", "sign", proposal, "--key", self.deploy / "officers" / officer
            )
        return proposal

    def folders(self) -> dict[Path, bytes]:
        """Every file of every bundle folder of the deployment, to tell that none changed."""
        found = [self.deploy / "directory", *sorted(self.deploy.glob("partners/*/directory"))]
        return {p: p.read_bytes() for f in found for p in sorted(f.iterdir()) if p.is_file()}

    def version(self) -> int:
        folder = self.deploy / "directory"
        return TrustedDirectory.load(folder).update(read_bundle(folder), int(time.time())).version


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], own_deployment: Deployment, tmp_path: Path) -> Cli:
    work = tmp_path / "work"
    work.mkdir()
    return Cli(capsys, own_deployment.root, work)


def _closed_port_url() -> str:
    """An https:// URL on 127.0.0.1 where nothing listens."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return f"https://127.0.0.1:{port}"


@pytest.fixture
def silent_url() -> Iterator[str]:
    """An http:// URL on 127.0.0.1 that takes a request and hangs up without answering."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.05)
    port = server.getsockname()[1]
    stop = threading.Event()

    def hang_up() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                received = b""
                while b"\r\n\r\n" not in received and (chunk := conn.recv(65536)):
                    received += chunk
                time.sleep(0.2)  # the body arrives too, then nothing comes back

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


async def _served(gw: Gw) -> bytes:
    client = await gw.client("om")
    return await client.directory_bundle()


# -- directory publish and push -------------------------------------------------------------


async def test_publish_with_the_gateway_down_writes_nothing_and_push_sends_it_later(
    live: Gw, cli: Cli
) -> None:
    proposal = await cli.signed_renewal("renew")
    before, version = cli.folders(), cli.version()
    down = _closed_port_url()
    _, err = await cli(
        "keys", "directory", "publish", proposal, "--deployment", cli.deploy,
        "--gateway", down, "--partner-dir", cli.partner("om"), code=1,
    )  # fmt: skip
    assert f"ketenpost: error: cannot reach the gateway at {down}" in err
    assert "nothing was written to the deployment's folders" in err
    assert cli.folders() == before
    # The proposal is still publishable: here without --gateway (the gateway is still down,
    # say), then sent once it is up.
    published = await cli.json("keys", "directory", "publish", proposal, "--deployment", cli.deploy)
    assert published["gateway"] is None
    assert cli.version() == version + 1
    assert live.directory.version == version
    pushed = await cli.json(
        "keys", "directory", "push", "--deployment", cli.deploy,
        "--gateway", live.url, "--partner-dir", cli.partner("halt"),
    )  # fmt: skip
    assert pushed["pushed"]["targets_version"] == version + 1
    assert pushed["gateway"]["version"] == version + 1
    assert live.directory.version == version + 1
    assert await _served(live) == encode_bundle(read_bundle(cli.deploy / "directory"))
    # Pushed again: the gateway takes the version it has, unchanged.
    again = await cli.json(
        "keys", "directory", "push", "--deployment", cli.deploy, "--gateway", live.operator_url
    )
    assert again["gateway"] == pushed["gateway"]


async def test_publish_refused_by_the_gateway_writes_nothing_and_exits_3(
    live: Gw, cli: Cli
) -> None:
    # The gateway's clock is two days on: the timestamp signed now is stale there.
    proposal = await cli.signed_renewal("renew")
    before, version = cli.folders(), cli.version()
    live.clock.set(live.clock.now() + 2 * 24 * HOUR)
    _, err = await cli(
        "keys", "directory", "publish", proposal, "--deployment", cli.deploy,
        "--gateway", live.operator_url, code=3,
    )  # fmt: skip
    assert "ketenpost: error: refused: directory_timestamp_stale: " in err
    assert "nothing was written" in err
    assert cli.folders() == before
    assert live.directory.version == version
    # Once the cause is gone the same proposal is published, to the gateway and the folders.
    live.clock.set(int(time.time()))
    published = await cli.json(
        "keys", "directory", "publish", proposal, "--deployment", cli.deploy,
        "--gateway", live.url, "--partner-dir", cli.partner("om"),
    )  # fmt: skip
    assert published["gateway"] == {"version": version + 1, "partners": published["partners"]}
    assert len(published["written_to"]) == len(list(cli.deploy.glob("partners/*/directory"))) + 1
    assert cli.version() == live.directory.version == version + 1


async def test_publish_without_an_answer_writes_nothing_and_says_the_gateway_may_have_it(
    cli: Cli, silent_url: str
) -> None:
    proposal = await cli.signed_renewal("renew")
    before = cli.folders()
    _, err = await cli(
        "keys", "directory", "publish", proposal, "--deployment", cli.deploy,
        "--gateway", silent_url, code=1,
    )  # fmt: skip
    assert f"ketenpost: error: the gateway at {silent_url} did not answer" in err
    assert "If the gateway serves the new version (GET /v1/directory)" in err
    assert cli.folders() == before


async def test_push_of_an_older_bundle_is_refused_as_a_rollback(live: Gw, cli: Cli) -> None:
    old = cli.folders()
    version = cli.version()
    proposal = await cli.signed_renewal("renew")
    await cli(
        "keys", "directory", "publish", proposal, "--deployment", cli.deploy,
        "--gateway", live.url, "--partner-dir", cli.partner("om"),
    )  # fmt: skip
    # The key authority's machine restored from a backup of before that version.
    for path, data in old.items():
        path.write_bytes(data)
    _, err = await cli(
        "keys", "directory", "push", "--deployment", cli.deploy,
        "--gateway", live.url, "--partner-dir", cli.partner("om"), code=3,
    )  # fmt: skip
    assert "ketenpost: error: refused: directory_rollback: " in err
    assert live.directory.version == version + 1


async def test_push_needs_a_client_certificate_for_https(cli: Cli) -> None:
    _, err = await cli(
        "keys", "directory", "push", "--deployment", cli.deploy,
        "--gateway", "https://127.0.0.1:1", code=1,
    )  # fmt: skip
    assert "needs --partner-dir, or --tls-cert, --tls-key and --trust-anchor" in err


# -- keys timestamp --gateway ---------------------------------------------------------------


async def test_timestamp_reaches_the_gateway(live: Gw, cli: Cli) -> None:
    key = cli.deploy / "key-authority" / "timestamp.key"
    before = json.loads(read_bundle(cli.deploy / "directory").timestamp)["signed"]["version"]
    report = await cli.json(
        "keys", "timestamp", "--deployment", cli.deploy, "--key", key,
        "--gateway", live.url, "--partner-dir", cli.partner("om"),
    )  # fmt: skip
    assert report["gateway"]["version"] == cli.version()
    served = json.loads(await _served(live))
    local = read_bundle(cli.deploy / "directory")
    assert served == json.loads(encode_bundle(local))
    assert json.loads(local.timestamp)["signed"]["version"] == before + 1


async def test_timestamp_with_the_gateway_down_is_written_and_pushed_later(
    live: Gw, cli: Cli
) -> None:
    key = cli.deploy / "key-authority" / "timestamp.key"
    served = await _served(live)
    _, err = await cli(
        "keys", "timestamp", "--deployment", cli.deploy, "--key", key,
        "--gateway", _closed_port_url(), "--partner-dir", cli.partner("om"), code=1,
    )  # fmt: skip
    assert "ketenpost: error: cannot reach the gateway" in err
    assert "keys directory push --deployment" in err
    local = encode_bundle(read_bundle(cli.deploy / "directory"))
    assert local != served  # written locally: what the key authority signed is on record
    await cli(
        "keys", "directory", "push", "--deployment", cli.deploy,
        "--gateway", live.url, "--partner-dir", cli.partner("om"),
    )  # fmt: skip
    assert await _served(live) == local


# -- keys revoke --submit -------------------------------------------------------------------


async def test_revoke_submit_records_once_and_answers_the_same_again(live: Gw, cli: Cli) -> None:
    om = cli.partner("om")
    kid = live.deployment.encrypt_key("om").kid
    statement = cli.work / "om-revocation.json"
    # Made while the gateway cannot be reached: the statement is kept, with the way to send it.
    out, err = await cli(
        "keys", "revoke", "--self", "--partner-dir", om, "--kid", kid,
        "--signing-kid", live.deployment.sign_key("om").kid, "--compromise-unknown",
        "--out", statement, "--gateway", _closed_port_url(), code=1,
    )  # fmt: skip
    assert json.loads(out)["kid"] == kid
    assert "ketenpost: error: cannot reach the gateway" in err
    assert f"send it with 'ketenpost keys revoke --submit {statement}" in err
    assert statement.exists()
    # Halt carries om's statement: it authenticates itself.
    submit = (
        "keys", "revoke", "--submit", statement, "--gateway", live.url,
        "--partner-dir", cli.partner("halt"),
    )  # fmt: skip
    first = await cli.json(*submit)
    assert first["gateway"]["kid"] == kid
    assert first["gateway"]["carried_by"] == "halt"
    assert first["already_recorded"] is False
    out, err = await cli(*submit)
    again = json.loads(out)
    assert again["gateway"] == first["gateway"]
    assert again["already_recorded"] is True
    assert "had recorded the statement already" in err
    # Recorded once, carried by halt.
    rows = await live.store.key_revocations()
    assert [(r.kid, r.carried_by) for r in rows] == [(kid, "halt")]


async def test_revoke_submit_refused_exits_3(live: Gw, cli: Cli) -> None:
    # A statement about a key no directory lists: well-formed and signed, but refused.
    sign_key = load_ed25519_key(cli.partner("om") / "keys" / "sign.key", KeyUse.SIGN)
    statement = sign_revocation(
        partner="om",
        kid=secrets.token_hex(32),
        revoked_at=live.clock.now(),
        compromised_since=None,
        signing_key=sign_key,
    )
    path = cli.work / "unknown.json"
    path.write_bytes(encode_revocation(statement))
    out, err = await cli(
        "keys", "revoke", "--submit", path, "--gateway", live.url,
        "--partner-dir", cli.partner("om"), code=3,
    )  # fmt: skip
    assert "ketenpost: error: refused: key_revocation_unknown_key: " in err
    assert out == ""


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        pytest.param(
            ("--gateway", "https://127.0.0.1:1", "--kid", "0" * 64, "--compromise-unknown"),
            "--kid, --compromise-unknown belong to making one",
            id="making-flags",
        ),
        pytest.param((), "revoke --submit needs --gateway URL", id="no-gateway"),
    ],
)
async def test_revoke_submit_usage(cli: Cli, extra: tuple[str, ...], message: str) -> None:
    _, err = await cli("keys", "revoke", "--submit", cli.work / "s.json", *extra, code=1)
    assert message in err


async def test_revoke_without_kid_or_compromise_is_refused(cli: Cli) -> None:
    _, err = await cli(
        "keys", "revoke", "--deployment", cli.deploy, "--partner", "om",
        "--compromise-unknown", "--out", cli.work / "p.json", code=1,
    )  # fmt: skip
    assert "revoke needs --kid" in err
    _, err = await cli(
        "keys", "revoke", "--deployment", cli.deploy, "--partner", "om", "--kid", "0" * 64,
        "--out", cli.work / "p.json", code=1,
    )  # fmt: skip
    assert "--compromised-since TIME or --compromise-unknown" in err


# -- the partner's TLS pair after a tls rotation --------------------------------------------


async def test_partner_dir_presents_the_rotated_certificate_after_the_old_retires(
    live: Gw, cli: Cli
) -> None:
    halt = cli.partner("halt")
    earlier = str(int(time.time()) - HOUR)  # the successor is active as soon as published
    rotated = await cli.json(
        "keys", "rotate", "--partner-dir", halt, "--use", "tls", "--now", earlier
    )
    await cli(
        "keys", "certify", "--ca", cli.deploy / "ca", "--partner", "halt",
        "--csr", halt / "keys" / "tls-2.csr", "--out", halt / "keys" / "tls-2.crt",
    )  # fmt: skip
    # Not yet in the directory: the configured pair is presented, without a note.
    _, err = await cli(
        "keys", "directory", "push", "--deployment", cli.deploy, "--gateway", live.url,
        "--partner-dir", halt,
    )  # fmt: skip
    assert "presenting" not in err
    proposal = cli.work / "tls.json"
    await cli(
        "keys", "directory", "propose", "--deployment", cli.deploy,
        "--key-change", rotated["key_change"], "--out", proposal, "--now", earlier,
    )  # fmt: skip
    for officer in ("directory-1.key", "directory-2.key"):
        await cli("keys", "directory", "sign", proposal, "--key", cli.deploy / "officers" / officer)
    await cli(
        "keys", "directory", "publish", proposal, "--deployment", cli.deploy,
        "--gateway", live.url, "--partner-dir", cli.partner("om"),
    )  # fmt: skip
    (old,) = rotated["retires"]
    old_entry = next(k for k in live.directory.partner("halt").keys if k.kid == old["kid"])
    assert old_entry.retire_at is not None
    after = old_entry.retire_at + 1
    live.clock.set(after)
    # The configured pair, named explicitly, is refused from the old key's retire_at on …
    keys = halt / "keys"
    _, err = await cli(
        "keys", "directory", "push", "--deployment", cli.deploy, "--gateway", live.url,
        "--tls-cert", keys / "tls.crt", "--tls-key", keys / "tls.key",
        "--trust-anchor", halt / "trust" / "ca.crt", "--now", str(after), code=3,
    )  # fmt: skip
    assert "ketenpost: error: refused: unknown_sender: " in err
    # … while --partner-dir presents the successor, as the adapter would.
    _, err = await cli(
        "keys", "directory", "push", "--deployment", cli.deploy, "--gateway", live.url,
        "--partner-dir", halt, "--now", str(after),
    )  # fmt: skip
    assert f"presenting {keys / 'tls-2.crt'}" in err


# -- keys rotate's advice -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("partner", "use", "says"),
    [
        ("halt", "sign", "the adapter signs with keys/sign-2.key from "),
        ("halt", "encrypt", "senders seal to keys/encrypt-2.key from "),
        ("halt", "tls", "put the CA's certificate beside it as keys/tls-2.crt before then"),
        ("gemeente-velsen", "token", "approach issue/revoke and the ZGW coordinator adapter"),
    ],
)
async def test_rotate_says_how_the_new_key_is_taken_up(
    cli: Cli, partner: str, use: str, says: str
) -> None:
    _, err = await cli("keys", "rotate", "--partner-dir", cli.partner(partner), "--use", use)
    assert says in err
    assert "not implemented" not in err
