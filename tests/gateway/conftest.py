"""Fixtures for the relay service: a full development deployment and a real gateway on 127.0.0.1.

* ``deployment`` (session): ``ketenpost.init_deployment`` at the real time (OpenSSL checks
  certificate validity against the wall clock).
* ``gateway`` (per test): the gateway built by ``gateway.server.build_runtime`` from the
  deployment's ``gateway.toml`` with a fresh SQLite file and a ``ManualClock``, serving the
  partner API over real mTLS and the operator app over plain HTTP, both on port 0.
* ``Gw.client(partner)`` is ``adapters.client.GatewayClient`` with that partner's certificate.
  ``Gw.seal`` / ``Gw.issue_token`` build envelopes and tokens with the partners' own keys.
* ``Gw.use_directory(contents)`` makes the relay judge by another directory version from then
  on (key times, coordinators, policy), as a directory refresh would; partners keep sealing
  with the deployment's directory.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import ketenpost
from adapters.client import GatewayClient
from gateway.app import create_operator_app, create_partner_app
from gateway.clock import ManualClock
from gateway.config import GatewayConfig, apply_cli_overrides, load_config
from gateway.metrics import GatewayMetrics
from gateway.protocol.envelope import encode_envelope, seal
from gateway.protocol.policy import default_policy, sendable_types
from gateway.protocol.signed import SignedObject
from gateway.protocol.token import (
    PrivatePartOpening,
    RolePurpose,
    TokenSubject,
    encode_signed,
    issue,
    token_hash,
)
from gateway.protocol.types import ApproachKind, MessageType, new_pseudonym
from gateway.relay import StaticDirectorySource
from gateway.server import Built, build_runtime
from gateway.store.sqlite import SqliteStore
from keys import Directory, Ed25519KeyPair, HybridKemKeyPair, KeyUse, Role
from keys.deployment import DeploymentLayout
from keys.directory import DirectoryContents
from keys.keyfile import load_ed25519_key, load_encrypt_key
from keys.tlsidentity import TlsFiles, client_context

DAY = 86_400
TRACE = "00-" + "4bf92f3577b34da6a3ce929d0e0e4736" + "-00f067aa0ba902b7-01"
PARTICIPANTS = ("gemeente-velsen", "politie-ijmond", "halt", "cjg", "om")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "transient: the refusal reason is transient")


@dataclass(frozen=True)
class Deployment:
    layout: DeploymentLayout
    now: int

    @property
    def root(self) -> Path:
        return self.layout.root

    def partner_dir(self, partner_id: str) -> Path:
        return self.layout.partner(partner_id).folder

    def tls_files(self, partner_id: str) -> TlsFiles:
        keys = self.partner_dir(partner_id) / "keys"
        return TlsFiles(
            certificate=keys / "tls.crt",
            private_key=keys / "tls.key",
            trust_anchors=(self.partner_dir(partner_id) / "trust" / "ca.crt",),
        )

    def sign_key(self, partner_id: str) -> Ed25519KeyPair:
        return load_ed25519_key(self.partner_dir(partner_id) / "keys" / "sign.key", KeyUse.SIGN)

    def token_key(self, partner_id: str) -> Ed25519KeyPair:
        return load_ed25519_key(self.partner_dir(partner_id) / "keys" / "token.key", KeyUse.TOKEN)

    def encrypt_key(self, partner_id: str) -> HybridKemKeyPair:
        return load_encrypt_key(self.partner_dir(partner_id) / "keys" / "encrypt.key")


@pytest.fixture(scope="session")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    now = int(time.time())
    target = tmp_path_factory.mktemp("deployment") / "covenant"
    return Deployment(ketenpost.init_deployment(target, now=now), now)


@dataclass
class Token:
    signed: SignedObject
    opening: PrivatePartOpening
    token_id: str
    token_hash: str
    subjects: tuple[str, ...]

    @property
    def body(self) -> bytes:
        return encode_signed(self.signed)


@dataclass
class Gw:
    """A running gateway and helpers to talk to it."""

    deployment: Deployment
    built: Built
    clock: ManualClock
    url: str
    operator_url: str
    db: Path
    clients: list[GatewayClient] = field(default_factory=list)

    @property
    def directory(self) -> Directory:
        return self.built.directories.last()

    @property
    def metrics(self) -> GatewayMetrics:
        return self.built.runtime.metrics

    @property
    def store(self) -> SqliteStore:
        store = self.built.runtime.relay.store
        assert isinstance(store, SqliteStore)
        return store

    def use_directory(self, contents: DirectoryContents) -> Directory:
        """Have the relay use ``contents`` from now on as the next directory version, one that
        never expires (so tests may move the clock by days). ``self.directory`` stays the
        deployment's: it is what the partners seal with."""
        directory = Directory(contents, version=self.directory.version + 1)
        self.built.runtime.relay.directories = StaticDirectorySource(directory)
        return directory

    async def client(self, partner_id: str, *, attempts: int = 1) -> GatewayClient:
        ctx = client_context(self.deployment.tls_files(partner_id))
        client = GatewayClient(self.url, ctx, attempts=attempts, backoff_s=0.01)
        await client.__aenter__()
        self.clients.append(client)
        return client

    def issue_token(
        self,
        *,
        coordinator: str = "gemeente-velsen",
        participants: Iterable[str] = PARTICIPANTS,
        subjects: Iterable[TokenSubject] | None = None,
        valid_days: int = 90,
        supersedes: str | None = None,
        key: Ed25519KeyPair | None = None,
    ) -> Token:
        now = self.clock.now()
        policy = default_policy()
        if subjects is None:
            subjects = (TokenSubject(pseudonym=new_pseudonym(), informed_at=now - DAY),)
        subjects = tuple(subjects)
        kind = ApproachKind.GROUP
        signed, opening = issue(
            key=key or self.deployment.token_key(coordinator),
            coordinator=coordinator,
            kind=kind,
            subjects=subjects,
            participants=tuple(participants),
            allowed={role: sorted(sendable_types(policy, kind, role)) for role in Role},
            valid_from=now - DAY,
            valid_until=now + valid_days * DAY,
            retention_until=now + 365 * DAY,
            policy=policy,
            purposes={
                Role.MUNICIPALITY: RolePurpose(purpose="Regie.", legal_basis="Convenant art. 4")
            },
            decided_by="Regisseur",
            decided_on=datetime.date(2026, 5, 25),
            decision_reference="VLS-1",
            informing={s.pseudonym: "Per brief." for s in subjects},
            now=now,
            supersedes=supersedes,
        )
        return Token(
            signed,
            opening,
            msgspec_token_id(signed),
            token_hash(signed),
            tuple(s.pseudonym for s in subjects),
        )

    def seal(
        self,
        token: Token | None,
        *,
        sender: str = "politie-ijmond",
        to: Iterable[str] = ("halt",),
        message_type: MessageType = MessageType.SIGNAL,
        subjects: tuple[str, ...] | None = None,
        message_id: str | None = None,
        created_at: int | None = None,
        expires_in: int = 7 * DAY,
        token_id: str | None = None,
        token_hash_: str | None = None,
        body: bytes | None = None,
        sign_key: Ed25519KeyPair | None = None,
        recipient_keys: dict[str, Any] | None = None,
    ) -> bytes:
        from gateway.protocol.messages import encode_body, example

        now = self.clock.now()
        subj = subjects if subjects is not None else (token.subjects if token else ("a" * 32,))
        if body is None:
            body = encode_body(example(message_type, subjects=tuple(sorted(subj))))
        recipients = []
        for partner in to:
            key = (recipient_keys or {}).get(partner) or self.directory.current_key(
                partner, KeyUse.ENCRYPT, now
            )
            recipients.append((partner, key))
        created = now if created_at is None else created_at
        envelope = seal(
            sender=sender,
            sign_key=sign_key or self.deployment.sign_key(sender),
            recipients=recipients,
            body=body,
            message_id=message_id or secrets.token_hex(32),
            token_id=token_id or (token.token_id if token else "0" * 32),
            token_hash=token_hash_ or (token.token_hash if token else "0" * 64),
            subjects=subj,
            message_type=message_type,
            schema_version=1,
            created_at=created,
            expires_at=created + expires_in,
            trace_id=TRACE,
        )
        return encode_envelope(envelope)


def msgspec_token_id(signed: SignedObject) -> str:
    import msgspec

    token_id: str = msgspec.msgpack.decode(signed.payload)["token_id"]
    return token_id


def gateway_config(deployment: Deployment, db: Path, **limits: Any) -> GatewayConfig:
    config = load_config(deployment.root / "gateway.toml", environ={})
    config = apply_cli_overrides(
        config,
        listen="127.0.0.1:0",
        metrics_listen="127.0.0.1:0",
        store=f"sqlite://{db}",
        cwd=Path(os.getcwd()),
    )
    if limits:
        config = dataclasses.replace(config, limits=dataclasses.replace(config.limits, **limits))
    return config


async def start_gateway(deployment: Deployment, tmp_path: Path, **limits: Any) -> AsyncIterator[Gw]:
    from gateway.server import tls_files
    from keys.tlsidentity import server_context

    db = tmp_path / "ketenpost.db"
    SqliteStore.migrate(db)
    config = gateway_config(deployment, db, **limits)
    clock = ManualClock(int(time.time()))
    built = build_runtime(config, clock=clock)
    built.runtime.sweep_interval_s = 0  # tests sweep with the manual clock themselves
    partner = web.AppRunner(create_partner_app(built.runtime), shutdown_timeout=1)
    operator = web.AppRunner(create_operator_app(built.runtime))
    await partner.setup()
    await operator.setup()
    site = web.TCPSite(partner, "127.0.0.1", 0, ssl_context=server_context(tls_files(config)))
    await site.start()
    op_site = web.TCPSite(operator, "127.0.0.1", 0)
    await op_site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    op_port = op_site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    gw = Gw(
        deployment, built, clock, f"https://127.0.0.1:{port}", f"http://127.0.0.1:{op_port}", db
    )
    try:
        yield gw
    finally:
        for client in gw.clients:
            await client.close()
        await partner.cleanup()
        await operator.cleanup()


@pytest.fixture
async def gateway(deployment: Deployment, tmp_path: Path) -> AsyncIterator[Gw]:
    async for gw in start_gateway(deployment, tmp_path):
        yield gw
