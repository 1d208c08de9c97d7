"""Fixtures for the adapter SDK: real gateway (from ``tests/gateway/conftest.py``), partner
folders copied per test, adapters with the fake case system, and a tampering gateway double.

* ``partners`` copies each partner folder of the session's deployment into the test's tmp
  directory on first use, so every test starts with an empty ``adapter.db`` and the
  ``ketenpost init`` trust state.
* ``Net.adapter(partner)`` opens an ``Adapter`` on the real gateway (or ``url``) with the
  gateway's manual clock, and closes it at the end of the test.
* ``FakeGateway`` is an aiohttp server on 127.0.0.1 presenting the real gateway's certificate
  (so mTLS and the host name check pass) whose answers the test scripts.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web

from adapters.config import load_partner_dir
from adapters.engine import Adapter, EngineSettings
from keys.signed_directory import encode_bundle, read_bundle
from keys.tlsidentity import TlsFiles, server_context
from tests.adapters.fake_system import FakeCaseSystem
from tests.gateway.conftest import (  # noqa: F401 - fixtures re-exported for these tests
    Deployment,
    Gw,
    Token,
    deployment,
    gateway,
)

BSN_A = "111222333"
BSN_B = "123456782"


@dataclass
class Net:
    deployment: Deployment
    gw: Gw
    tmp: Path
    systems: dict[str, FakeCaseSystem] = field(default_factory=dict)
    open_adapters: list[Adapter] = field(default_factory=list)

    def folder(self, partner: str) -> Path:
        target = self.tmp / "partners" / partner
        if not target.exists():
            shutil.copytree(self.deployment.partner_dir(partner), target)
        return target

    def system(self, partner: str) -> FakeCaseSystem:
        return self.systems.setdefault(partner, FakeCaseSystem(partner))

    async def adapter(
        self,
        partner: str,
        *,
        url: str | None = None,
        faults: Callable[[str], None] | None = None,
        settings: EngineSettings | None = None,
        require_receipt_entries: bool = True,
    ) -> Adapter:
        config = load_partner_dir(self.folder(partner))
        if not require_receipt_entries:
            config = msgspec.structs.replace(
                config,
                gateway=msgspec.structs.replace(config.gateway, require_receipt_entries=False),
            )
        adapter = Adapter(
            config,
            self.system(partner).transport(),
            clock=self.gw.clock,
            settings=settings or EngineSettings(backoff_base_s=1),
            gateway_url=url or self.gw.url,
            faults=faults,
        )
        await adapter.open()
        self.open_adapters.append(adapter)
        return adapter

    async def close(self, adapter: Adapter) -> None:
        await adapter.close()
        self.open_adapters.remove(adapter)


@pytest.fixture
async def net(deployment: Deployment, gateway: Gw, tmp_path: Path) -> AsyncIterator[Net]:  # noqa: F811
    n = Net(deployment, gateway, tmp_path)
    try:
        yield n
    finally:
        for adapter in list(n.open_adapters):
            await adapter.close()


@dataclass
class FakeGateway:
    """A gateway double with the real gateway's certificate; the test scripts its answers."""

    url: str = ""
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    approaches: dict[str, dict[str, Any]] = field(default_factory=dict)
    on_submit: Callable[[bytes], dict[str, Any]] | None = None
    proofs: dict[str, Any] = field(default_factory=dict)
    posted_receipts: list[dict[str, Any]] = field(default_factory=list)
    bundle: bytes = b""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
async def fake_gateway(deployment: Deployment) -> AsyncIterator[FakeGateway]:  # noqa: F811
    fake = FakeGateway(bundle=encode_bundle(read_bundle(deployment.root / "directory")))

    async def inbox(_r: web.Request) -> web.Response:
        deliveries, fake.deliveries = fake.deliveries, []
        return web.json_response({"deliveries": deliveries, "events": []})

    async def receipts(r: web.Request) -> web.Response:
        fake.posted_receipts.append(await r.json())
        return web.json_response({"finished": 1, "already_finished": 0, "acked": 0})

    async def approach(r: web.Request) -> web.Response:
        return web.json_response(fake.approaches[r.match_info["token_id"]])

    async def directory(_r: web.Request) -> web.Response:
        return web.Response(body=fake.bundle, content_type="application/json")

    async def checkpoint(_r: web.Request) -> web.Response:
        return web.Response(text=fake.checkpoints.pop(0), content_type="text/plain")

    async def proof(r: web.Request) -> web.Response:
        key = "index" if "index" in r.query else "from"
        return web.json_response(fake.proofs[key])

    async def submit(r: web.Request) -> web.Response:
        assert fake.on_submit is not None
        return web.json_response(fake.on_submit(await r.read()), status=202)

    app = web.Application()
    app.router.add_get("/v1/inbox", inbox)
    app.router.add_post("/v1/receipts", receipts)
    app.router.add_get("/v1/approaches/{token_id}", approach)
    app.router.add_get("/v1/directory", directory)
    app.router.add_get("/v1/audit/checkpoint", checkpoint)
    app.router.add_get("/v1/audit/proof", proof)
    app.router.add_post("/v1/messages", submit)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    tls = TlsFiles(
        certificate=deployment.root / "gateway" / "tls.crt",
        private_key=deployment.root / "gateway" / "tls.key",
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
