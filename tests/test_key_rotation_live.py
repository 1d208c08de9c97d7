"""Key rotation while the gateway runs (issue 6 item 2), against a real gateway on 127.0.0.1.

Each test gets its own ``ketenpost init`` deployment (publishing changes the gateway's bundle
folder, so the session deployment of ``tests/gateway`` is never touched). The directory is
changed with the officers' own verbs (``keys rotate`` → ``keys directory propose`` → ``sign``
→ ``publish --gateway``) and the relay must judge by it at once, without a restart.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.serialization import Encoding

import ketenpost
from adapters.config import key_family, load_partner_dir
from adapters.directory import newest_active
from adapters.engine import Identity
from gateway.app import Runtime, create_partner_app
from gateway.server import TlsReloader
from keys import KeyUse
from keys.ca import (
    PartnerSubject,
    issue_gateway_certificate,
    load_ca,
    read_certificate_pem,
    write_certificates_pem,
)
from keys.deployment import GATEWAY_ID, GATEWAY_OIN
from keys.keyfile import write_tls_key
from keys.keypair import TlsKeyPair
from keys.signed_directory import encode_bundle, read_bundle
from keys.tlsidentity import TlsFiles, client_context, server_context
from tests.gateway.conftest import Deployment, Gw, start_gateway


@pytest.fixture
def own_deployment(tmp_path: Path) -> Deployment:
    now = int(time.time())
    return Deployment(ketenpost.init_deployment(tmp_path / "covenant", now=now), now)


@pytest.fixture
async def live(own_deployment: Deployment, tmp_path: Path) -> AsyncIterator[Gw]:
    gw_dir = tmp_path / "gw"
    gw_dir.mkdir()
    async for gw in start_gateway(own_deployment, gw_dir):
        yield gw


@dataclass
class Officers:
    """The officers' and key authority's verbs, run as the command line runs them."""

    capsys: pytest.CaptureFixture[str]
    deploy: Path
    work: Path

    def __call__(self, *argv: str | Path, code: int = 0) -> tuple[str, str]:
        got = ketenpost.main([str(a) for a in argv])
        out, err = self.capsys.readouterr()
        assert got == code, f"{argv}: exit {got}\n{out}\n{err}"
        return out, err

    def propose_key_change(self, change: Path, name: str, *officers: str) -> Path:
        proposal = self.work / f"{name}.json"
        self(
            "keys", "directory", "propose", "--deployment", self.deploy,
            "--key-change", change, "--out", proposal,
        )  # fmt: skip
        for officer in officers:
            key = self.deploy / "officers" / officer
            self("keys", "directory", "sign", proposal, "--key", key)
        return proposal


@pytest.fixture
def officers(
    capsys: pytest.CaptureFixture[str], own_deployment: Deployment, tmp_path: Path
) -> Officers:
    work = tmp_path / "work"
    work.mkdir()
    return Officers(capsys, own_deployment.root, work)


async def _post(gw: Gw, partner: str, body: bytes) -> tuple[int, dict[str, object]]:
    ctx = client_context(gw.deployment.tls_files(partner))
    async with (
        aiohttp.ClientSession() as session,
        session.post(gw.url + "/v1/directory", data=body, ssl=ctx) as response,
    ):
        document: dict[str, object] = await response.json(content_type=None)
        return response.status, document


async def test_publish_switches_the_relay_without_restart_and_refuses_a_rollback(
    live: Gw, officers: Officers
) -> None:
    deploy = officers.deploy
    halt_dir = deploy / "partners" / "halt"
    before = encode_bundle(read_bundle(deploy / "directory"))
    version = live.directory.version
    officers("keys", "rotate", "--partner-dir", halt_dir, "--use", "sign")
    change = halt_dir / "outgoing" / "key-change-sign-2.json"

    # Below threshold (one of two officers): refused before anything is written or sent.
    short = officers.propose_key_change(change, "short", "directory-1.key")
    _, err = await asyncio.to_thread(
        officers, "keys", "directory", "publish", short, "--deployment", deploy,
        "--gateway", live.url, "--partner-dir", halt_dir, code=1,
    )  # fmt: skip
    assert "below threshold" in err
    assert live.directory.version == version

    proposal = officers.propose_key_change(change, "rotation", "directory-1.key", "directory-2.key")
    _out, err = await asyncio.to_thread(
        officers, "keys", "directory", "publish", proposal, "--deployment", deploy,
        "--gateway", live.url, "--partner-dir", halt_dir,
    )  # fmt: skip
    assert "serves it now" in err
    # The relay judges by the new version at once: no restart, no refresh tick.
    assert live.directory.version == version + 1
    sign_keys = [k for k in live.directory.partner("halt").keys if k.use is KeyUse.SIGN]
    assert len(sign_keys) == 2
    client = await live.client("om")
    served = await client.directory_bundle()
    assert served == encode_bundle(read_bundle(deploy / "directory"))

    # The previous bundle again: a rollback, refused with its reason; nothing changes.
    status, problem = await _post(live, "om", before)
    assert (status, problem["reason"], problem["transient"]) == (409, "directory_rollback", False)
    assert live.directory.version == version + 1
    # The current bundle again is accepted (idempotent), and garbage is malformed.
    assert (await _post(live, "om", served))[0] == 200
    status, problem = await _post(live, "om", b'{"roots": []}')
    assert (status, problem["reason"]) == (400, "directory_malformed")


async def test_adapter_signs_with_the_newest_active_key_after_rotation(
    live: Gw, officers: Officers
) -> None:
    """A rotated sign key beside the old one is held at once and used from its active_from."""
    deploy = officers.deploy
    police_dir = deploy / "partners" / "politie-ijmond"
    officers("keys", "rotate", "--partner-dir", police_dir, "--use", "sign")
    config = load_partner_dir(police_dir)
    assert [p.name for p in key_family(config.path(config.keys.sign))] == [
        "sign.key",
        "sign-2.key",
    ]
    identity = Identity.load(config)
    old, new = identity.sign_keys
    proposal = officers.propose_key_change(
        police_dir / "outgoing" / "key-change-sign-2.json",
        "rotation",
        "directory-1.key",
        "directory-2.key",
    )
    await asyncio.to_thread(
        officers, "keys", "directory", "publish", proposal, "--deployment", deploy,
        "--gateway", live.url, "--partner-dir", police_dir,
    )  # fmt: skip
    directory = live.directory
    entry = next(k for k in directory.partner("politie-ijmond").keys if k.kid == new.kid)
    now = live.clock.now()
    # Until active_from: the old key (every verifier's directory lists the new one by then).
    assert newest_active(identity.sign_keys, directory, "politie-ijmond", KeyUse.SIGN, now) is old
    assert (
        newest_active(
            identity.sign_keys, directory, "politie-ijmond", KeyUse.SIGN, entry.active_from
        )
        is new
    )
    # The gateway accepts a message signed with either, on each side of active_from.
    token = live.issue_token()
    velsen = await live.client("gemeente-velsen")
    await velsen.register_token(token.body)
    police = await live.client("politie-ijmond")
    await police.submit(live.seal(token, sign_key=old))
    live.clock.set(entry.active_from)
    await police.submit(live.seal(token, sign_key=new))
    # Senders still on the previous directory sign with the old key one refresh interval
    # longer: it is still valid until retire_at.
    await police.submit(live.seal(token, sign_key=old))


# -- gateway TLS certificate rotation with connections open ---------------------------------


def _rotate_gateway_certificate(deployment: Deployment, folder: Path, now: int) -> bytes:
    """A new key and certificate for the gateway, swapped in by rename (as an operator or
    cert-manager does); returns the new certificate (DER)."""
    ca = load_ca(deployment.root / "ca" / "ca.crt", deployment.root / "ca" / "ca.key")
    pair = TlsKeyPair.generate()
    cert = issue_gateway_certificate(ca, pair, PartnerSubject(GATEWAY_ID, GATEWAY_OIN, "gw"), now)
    write_tls_key(folder / "next.key", pair)
    write_certificates_pem(folder / "next.crt", cert)
    os.replace(folder / "next.key", folder / "tls.key")
    os.replace(folder / "next.crt", folder / "tls.crt")
    return cert.public_bytes(Encoding.DER)


async def _server_certificate(port: int, ctx: ssl.SSLContext) -> bytes:
    _reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1"
    )
    der: bytes = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    await writer.wait_closed()
    return der


async def test_gateway_tls_certificate_rotation_with_connections_open(
    live: Gw, own_deployment: Deployment, tmp_path: Path
) -> None:
    folder = tmp_path / "gateway-tls"
    folder.mkdir()
    for name in ("tls.crt", "tls.key"):
        data = (own_deployment.root / "gateway" / name).read_bytes()
        (folder / name).write_bytes(data)
        (folder / name).chmod(0o600)
    files = TlsFiles(
        certificate=folder / "tls.crt",
        private_key=folder / "tls.key",
        trust_anchors=(own_deployment.root / "ca" / "ca.crt",),
    )
    context = server_context(files)
    reloader = TlsReloader(context, files)
    # A second partner listener on the same relay, with a context the reloader owns.
    runtime = live.built.runtime
    app = create_partner_app(
        Runtime(
            relay=runtime.relay,
            signer=runtime.signer,
            metrics=runtime.metrics,
            bundle_dir=runtime.bundle_dir,
            sweep_interval_s=0,
            open_store=False,
        )
    )
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"https://127.0.0.1:{port}/v1/directory"
    client_ctx = client_context(own_deployment.tls_files("halt"))
    old_der = await _server_certificate(port, client_ctx)
    assert reloader.check() is False  # nothing changed yet
    statuses: list[int] = []
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_ctx, limit=4)
        ) as session:

            async def traffic(n: int) -> None:
                for _ in range(n):
                    async with session.get(url) as response:
                        await response.read()
                        statuses.append(response.status)

            # Connections open and busy on both sides of the rotation.
            load = asyncio.gather(*(traffic(25) for _ in range(4)))
            await asyncio.sleep(0.05)
            new_der = _rotate_gateway_certificate(own_deployment, folder, live.clock.now())
            assert reloader.check() is True
            await load
            assert await _server_certificate(port, client_ctx) == new_der
            assert new_der != old_der
            # The pooled connections made before the rotation still carry requests.
            await traffic(5)
        assert statuses == [200] * len(statuses)
        assert len(statuses) == 105
        # A half-copied rotation (a key that is not the certificate's) keeps the current pair.
        write_tls_key(folder / "stray.key", TlsKeyPair.generate())
        os.replace(folder / "stray.key", folder / "tls.key")
        assert reloader.check() is False
        assert await _server_certificate(port, client_ctx) == new_der
        assert read_certificate_pem(folder / "tls.crt").public_bytes(Encoding.DER) == new_der
    finally:
        await runner.cleanup()
