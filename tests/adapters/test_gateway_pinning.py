"""The adapter pins the gateway's TLS key: a certificate from a trusted CA is not enough.

The impostor is an aiohttp server on 127.0.0.1 presenting a certificate that the **same**
covenant CA issued for ``localhost``/``127.0.0.1`` — the chain and the host name check pass —
but for a key that is not the directory's gateway ``tls`` key. The adapter must send it
nothing (only the self-verifying directory bundle may be fetched from it), raise
``GatewayIdentityError`` and alarm; the real gateway passes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization

from adapters.client import GatewayClient, GatewayIdentityError
from adapters.engine import AlarmKind
from keys import Directory, KeyUse, TlsKeyPair
from keys.ca import PartnerSubject, issue_gateway_certificate, load_ca, write_certificates_pem
from keys.keyfile import write_tls_key
from keys.keypair import spki_kid
from keys.signed_directory import encode_bundle, read_bundle
from keys.tlsidentity import TlsFiles, client_context, server_context
from tests.adapters.conftest import BSN_A, Net
from tests.adapters.test_engine_e2e import signal_event
from tests.gateway.conftest import Deployment


@dataclass
class Impostor:
    url: str
    spki: bytes
    requests: list[str] = field(default_factory=list)


@pytest.fixture
async def impostor(deployment: Deployment, tmp_path: Path) -> AsyncIterator[Impostor]:
    ca = load_ca(deployment.root / "ca" / "ca.crt", deployment.root / "ca" / "ca.key")
    key = TlsKeyPair.generate()
    subject = PartnerSubject(
        partner_id="ketenpost-gateway", oin="00000099999999999999", name="Not the gateway"
    )
    certificate = issue_gateway_certificate(ca, key, subject, deployment.now)
    write_certificates_pem(tmp_path / "impostor.crt", [certificate])
    write_tls_key(tmp_path / "impostor.key", key)
    bundle = encode_bundle(read_bundle(deployment.root / "directory"))
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fake = Impostor(url="", spki=spki)

    async def anything(request: web.Request) -> web.Response:
        fake.requests.append(f"{request.method} {request.path}")
        if request.path == "/v1/directory":
            return web.Response(body=bundle, content_type="application/json")
        return web.json_response({"deliveries": [], "events": []})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    tls = TlsFiles(
        certificate=tmp_path / "impostor.crt",
        private_key=tmp_path / "impostor.key",
        trust_anchors=(deployment.root / "ca" / "ca.crt",),
    )
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context(tls))
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.url = f"https://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()


async def test_impostor_with_a_covenant_certificate_gets_no_request(
    net: Net, impostor: Impostor
) -> None:
    halt = await net.adapter("halt", url=impostor.url)
    with pytest.raises(GatewayIdentityError, match="certificate_spki_mismatch"):
        await halt.receive_once()
    # Only the bundle, which verifies itself, to learn a rotated gateway key: once.
    assert impostor.requests == ["GET /v1/directory"]
    [alarm] = halt.store.alarms()
    assert alarm.kind == AlarmKind.GATEWAY_IDENTITY.value
    assert impostor.url in alarm.detail
    assert halt.metrics.value("alarms_total", kind="gateway_identity") == 1
    assert halt.health()["status"] == "alarm"


async def test_impostor_never_receives_an_envelope(net: Net, impostor: Impostor) -> None:
    token = net.gw.issue_token()
    police = await net.adapter("politie-ijmond", url=impostor.url)
    police.remember_token(token.signed, token.opening, {token.subjects[0]: BSN_A})
    net.system("politie-ijmond").add_event("INC-1", signal_event([BSN_A], ["halt"]))
    await police.ingest_once()
    result = await police.send_once()
    assert result.accepted == []
    assert len(result.retried) == 1
    assert "POST /v1/messages" not in impostor.requests
    [row] = police.store.outbox()
    assert row.state == "sent"  # the same bytes go again, to the real gateway
    assert (row.last_reason or "").startswith("gateway_identity:")
    assert police.metrics.value("send_retries_total", reason="gateway_identity") == 1
    assert [a.kind for a in police.store.alarms()] == [AlarmKind.GATEWAY_IDENTITY.value]


async def test_the_real_gateway_passes(net: Net) -> None:
    halt = await net.adapter("halt")
    for _ in range(3):  # a new connection, then pooled ones: each is checked, each passes
        await halt.receive_once()
        await halt.witness_once()
    assert halt.store.alarms() == []


async def test_a_rotated_gateway_key_is_learned_by_one_directory_refresh(
    net: Net, impostor: Impostor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The directory the refresh brings names the new key (the impostor's, standing in for a
    # gateway whose tls key rotated): after one refresh the server is the gateway.
    halt = await net.adapter("halt", url=impostor.url)
    current = halt.current_directory()
    [old] = [k for k in current.gateway.keys if k.use is KeyUse.TLS]
    rotated_key = msgspec.structs.replace(old, kid=spki_kid(impostor.spki), public=impostor.spki)
    rotated = Directory(
        msgspec.structs.replace(
            current.contents,
            gateway=msgspec.structs.replace(
                current.gateway,
                keys=tuple(rotated_key if k is old else k for k in current.gateway.keys),
            ),
        ),
        version=current.version + 1,
    )
    refreshes: list[int] = []

    async def refresh() -> bool:
        refreshes.append(1)
        monkeypatch.setattr(halt, "current_directory", lambda: rotated)
        return True

    monkeypatch.setattr(halt, "refresh_directory", refresh)
    await halt.receive_once()
    await halt.receive_once()
    assert refreshes == [1]
    assert impostor.requests == ["GET /v1/inbox", "GET /v1/inbox"]
    assert halt.store.alarms() == []


async def test_every_connection_is_checked_before_use_pooled_or_new(
    net: Net, deployment: Deployment
) -> None:
    seen: list[bytes] = []
    refuse = False

    async def check(cert_der: bytes) -> None:
        seen.append(cert_der)
        if refuse:
            raise GatewayIdentityError("refused by the test")

    client = GatewayClient(
        net.gw.url, client_context(deployment.tls_files("halt")), attempts=1, peer_check=check
    )
    async with client:
        await client.checkpoint()
        await client.checkpoint()  # keep-alive: the pooled connection, checked again
        assert len(seen) == 2
        assert seen[0] == seen[1]
        refuse = True
        with pytest.raises(GatewayIdentityError):
            await client.checkpoint()
        assert len(seen) == 3
        # The directory bundle verifies itself and goes over the unpinned session.
        assert await client.directory_bundle()
        assert len(seen) == 3
        refuse = False
        await client.checkpoint()  # the refused connection was closed; a new one is checked
        assert len(seen) == 4
