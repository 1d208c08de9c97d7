"""Adapters check partners' own key revocations themselves (issue 6 follow-up, ADR 0011).

"The gateway's operator may be dishonest: whatever a partner can check, the adapter checks."
Each test gets its own ``ketenpost init`` deployment and a real gateway on 127.0.0.1
(``tests/test_key_rotation_live.py``'s fixtures): giving a partner a second sign key — the one
that signs the revocation of its first — means publishing a new signed directory version,
which must never touch the session deployment other tests share. Statements are made with
``keys.revocation`` as ``ketenpost keys revoke --self`` makes them and carried in over mTLS. A
gateway double with the real gateway's certificate (``Tamper``) plays the dishonest gateway:
it delivers what the real one refuses, withholds statements, or serves forged ones.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec
import pytest
from aiohttp import web

from adapters.engine import OwnKeyRevokedError
from adapters.outbox import AdapterStore
from gateway.protocol.envelope import decode_envelope
from gateway.protocol.reasons import RejectionReason
from gateway.protocol.receipts import verify_rejection
from gateway.protocol.signed import SignedObject
from keys import Directory, DirectoryKey, Ed25519KeyPair, KeyUse
from keys.directory import DirectoryContents
from keys.keyfile import load_ed25519_key
from keys.revocation import KeyRevocation, encode_revocation, sign_revocation
from keys.signed_directory import DirectoryRepository, encode_bundle, read_bundle
from keys.state import KeyState
from keys.tlsidentity import TlsFiles, server_context
from tests.adapters.conftest import BSN_A, Net
from tests.adapters.test_engine_e2e import signal_event
from tests.adapters.test_tampering_gateway import FakeLog, delivery
from tests.gateway.conftest import DAY, Deployment, Gw, Token
from tests.test_key_rotation_live import (  # noqa: F401 - fixtures used by these tests
    live,
    own_deployment,
)

POLICE: Final = "politie-ijmond"
HALT: Final = "halt"
VELSEN: Final = "gemeente-velsen"


# -- building blocks ------------------------------------------------------------------------


@pytest.fixture
async def cov(own_deployment: Deployment, live: Gw, tmp_path: Path) -> AsyncIterator[Net]:  # noqa: F811
    """``Net`` over this test's own deployment and gateway."""
    n = Net(own_deployment, live, tmp_path)
    try:
        yield n
    finally:
        for adapter in list(n.open_adapters):
            await adapter.close()


def with_partner(contents: DirectoryContents, partner_id: str, **changes: Any) -> DirectoryContents:
    partners = tuple(
        msgspec.structs.replace(p, **changes) if p.id == partner_id else p
        for p in contents.partners
    )
    return msgspec.structs.replace(contents, partners=partners)


def publish_successor(gw: Gw, partner: str = POLICE) -> Ed25519KeyPair:
    """The officers list a pending successor sign key for ``partner`` (a new signed directory
    version, published to the gateway, which serves it at ``GET /v1/directory``)."""
    root = gw.deployment.root
    pair = Ed25519KeyPair.generate(KeyUse.SIGN)
    now = gw.clock.now()
    contents = gw.directory.contents
    keys = next(p.keys for p in contents.partners if p.id == partner)
    entry = DirectoryKey(
        kid=pair.kid, use=KeyUse.SIGN, alg=pair.algorithm, public=pair.public, active_from=now + DAY
    )
    repo = DirectoryRepository.from_bundle(read_bundle(root / "directory"))
    repo.publish(
        with_partner(contents, partner, keys=(*keys, entry)),
        [load_ed25519_key(root / "officers" / f"directory-{i}.key", KeyUse.SIGN) for i in (1, 2)],
        load_ed25519_key(root / "key-authority" / "timestamp.key", KeyUse.SIGN),
        now,
    )
    gw.built.runtime.relay.directories.publish(repo.bundle(), now)  # type: ignore[attr-defined]
    assert gw.directory.version == repo.version
    return pair


def revoke(
    gw: Gw, partner: str, kid: str, signing_key: Ed25519KeyPair, since: int | None = None
) -> KeyRevocation:
    return sign_revocation(
        partner=partner,
        kid=kid,
        revoked_at=gw.clock.now(),
        compromised_since=since,
        signing_key=signing_key,
    )


async def carry(gw: Gw, statement: KeyRevocation, by: str = "om") -> None:
    """Carry a statement in at the real gateway (any partner may)."""
    recorded = await (await gw.client(by)).submit_key_revocation(encode_revocation(statement))
    assert recorded["kid"] == statement.kid


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def served(statement: KeyRevocation) -> dict[str, Any]:
    """One item of ``GET /v1/keys/revocations`` as the gateway shapes it."""
    return {"statement": msgspec.to_builtins(statement), "partner": statement.partner}


@dataclass
class Tamper:
    """A dishonest gateway: the real gateway's certificate, answers scripted by the test."""

    url: str = ""
    bundle: bytes = b""
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    approaches: dict[str, dict[str, Any]] = field(default_factory=dict)
    # ``None``: refuse ``GET /v1/keys/revocations`` (503); otherwise serve these items.
    revocations: list[dict[str, Any]] | None = field(default_factory=list)
    posted: list[dict[str, Any]] = field(default_factory=list)
    submitted: list[bytes] = field(default_factory=list)
    # The double's audit log (the gateway's real key): each delivery carries its acceptance
    # receipt, which the recipient verifies before it opens anything.
    log: FakeLog | None = None

    def deliver(self, envelope: bytes, accepted_at: int) -> str:
        assert self.log is not None
        receipt = self.log.accept(envelope, accepted_at)
        self.deliveries.append(delivery(envelope, receipt, accepted_at))
        return decode_envelope(envelope).header.message_id

    def approach(self, token: Token, registered_at: int) -> None:
        self.approaches[token.token_id] = {
            "token_id": token.token_id,
            "token": b64(token.body),
            "token_hash": token.token_hash,
            "registered_at": registered_at,
            "revoked_at": None,
            "supersedes": None,
            "superseded_by": None,
        }


@pytest.fixture
async def tamper(own_deployment: Deployment) -> AsyncIterator[Tamper]:  # noqa: F811
    root = own_deployment.root
    fake = Tamper(log=FakeLog(load_ed25519_key(root / "gateway" / "sign.key", KeyUse.SIGN)))

    async def inbox(_r: web.Request) -> web.Response:
        deliveries, fake.deliveries = fake.deliveries, []
        return web.json_response({"deliveries": deliveries, "events": []})

    async def receipts(r: web.Request) -> web.Response:
        fake.posted.append(await r.json())
        return web.json_response({"finished": 1, "already_finished": 0, "acked": 0})

    async def approach(r: web.Request) -> web.Response:
        return web.json_response(fake.approaches[r.match_info["token_id"]])

    async def directory(_r: web.Request) -> web.Response:
        # The bundle the officers published last, unless the test scripts another.
        body = fake.bundle or encode_bundle(read_bundle(root / "directory"))
        return web.Response(body=body, content_type="application/json")

    async def revocations(_r: web.Request) -> web.Response:
        if fake.revocations is None:
            raise web.HTTPServiceUnavailable(reason="store unavailable")
        return web.json_response({"revocations": fake.revocations})

    async def submit(r: web.Request) -> web.Response:
        fake.submitted.append(await r.read())
        raise web.HTTPServiceUnavailable(reason="not scripted")

    app = web.Application()
    app.router.add_get("/v1/inbox", inbox)
    app.router.add_post("/v1/receipts", receipts)
    app.router.add_get("/v1/approaches/{token_id}", approach)
    app.router.add_get("/v1/directory", directory)
    app.router.add_get("/v1/keys/revocations", revocations)
    app.router.add_post("/v1/messages", submit)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    tls = TlsFiles(
        certificate=root / "gateway" / "tls.crt",
        private_key=root / "gateway" / "tls.key",
        trust_anchors=(root / "ca" / "ca.crt",),
    )
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context(tls))
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.url = f"https://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()


def key_state(directory: Directory, partner: str, kid: str, now: int) -> KeyState:
    return next(k for k in directory.partner(partner).keys if k.kid == kid).state(now)


# -- (1) a self-revoked sender key, delivered anyway by a dishonest gateway ------------------


async def test_message_signed_by_a_self_revoked_key_is_rejected_though_delivered(
    cov: Net, tamper: Tamper
) -> None:
    gw = cov.gw
    successor = publish_successor(gw)
    old = gw.deployment.sign_key(POLICE)
    token = gw.issue_token()
    # Police's sign key is stolen; when is not known, so every signature of it is void.
    await carry(gw, revoke(gw, POLICE, old.kid, successor, since=None))

    halt = await cov.adapter(HALT)
    assert await halt.refresh_directory()
    now = gw.clock.now()
    assert key_state(halt.directory.current(now), POLICE, old.kid, now) is KeyState.REVOKED
    assert halt.metrics.value("key_revocations") == 1
    await cov.close(halt)

    # The thief signs a signal; the real gateway would refuse it (key_compromised), the
    # dishonest one delivers it — and withholds the statement from then on.
    envelope = gw.seal(token, sender=POLICE, to=(HALT,), sign_key=old)
    tamper.approach(token, registered_at=now)
    message_id = tamper.deliver(envelope, accepted_at=now)
    tamper.revocations = []
    halt = await cov.adapter(HALT, url=tamper.url)
    result = await halt.receive_once()
    assert (result.applied, result.rejected) == ([], [message_id])
    assert cov.system(HALT).cases == {}
    [posted] = tamper.posted
    signed = msgspec.msgpack.decode(base64.b64decode(posted["rejections"][0]), type=SignedObject)
    rejection = verify_rejection(signed, gw.directory, now=now, recipient=HALT)
    # The reason a recipient gives for any sender key revoked in its directory.
    assert rejection.reason is RejectionReason.CANNOT_OPEN
    assert "revoked" in rejection.detail
    assert halt.metrics.value("rejected_total", reason="cannot_open") == 1


async def test_tokens_of_a_self_revoked_token_key_are_refused_though_delivered(
    cov: Net, tamper: Tamper
) -> None:
    gw = cov.gw
    token = gw.issue_token()
    now = gw.clock.now()
    # Velsen's token key is stolen; Velsen revokes it with its sign key (compromise unknown:
    # every token the key issued is void).
    issuer = gw.deployment.token_key(VELSEN)
    await carry(gw, revoke(gw, VELSEN, issuer.kid, gw.deployment.sign_key(VELSEN)), by=VELSEN)
    halt = await cov.adapter(HALT)
    await halt.refresh_directory()
    await cov.close(halt)

    # Police's message is genuine; the token under it is what no longer holds.
    tamper.approach(token, registered_at=now)
    message_id = tamper.deliver(gw.seal(token, sender=POLICE, to=(HALT,)), accepted_at=now)
    halt = await cov.adapter(HALT, url=tamper.url)
    result = await halt.receive_once()
    assert (result.applied, result.rejected) == ([], [message_id])
    [posted] = tamper.posted
    signed = msgspec.msgpack.decode(base64.b64decode(posted["rejections"][0]), type=SignedObject)
    rejection = verify_rejection(signed, gw.directory, now=now, recipient=HALT)
    assert rejection.reason is RejectionReason.TOKEN_INVALID
    assert rejection.detail.startswith("token_issuer_key_compromised")


# -- (2) a forged statement is ignored and counted ---------------------------------------------


def _bad_signature(statement: KeyRevocation) -> KeyRevocation:
    flipped = bytes([statement.signature[0] ^ 1]) + statement.signature[1:]
    return msgspec.structs.replace(statement, signature=flipped)


def _another_partners_key(statement: KeyRevocation) -> KeyRevocation:
    # Signed properly, but by a key of another partner: no one else speaks for police.
    return sign_revocation(
        partner=statement.partner,
        kid=statement.kid,
        revoked_at=statement.revoked_at,
        compromised_since=None,
        signing_key=Ed25519KeyPair.generate(KeyUse.SIGN),
    )


FORGERIES = {
    "bad signature": (_bad_signature, "bad_signature"),
    "signing key not in the directory": (_another_partners_key, "unknown_key"),
}


@pytest.mark.parametrize("case", list(FORGERIES))
async def test_a_statement_that_does_not_verify_is_ignored_and_counted(
    cov: Net, tamper: Tamper, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    forge, reason = FORGERIES[case]
    gw = cov.gw
    successor = publish_successor(gw)
    old = gw.deployment.sign_key(POLICE)
    forged = forge(revoke(gw, POLICE, old.kid, successor))
    tamper.revocations = [served(forged)]
    halt = await cov.adapter(HALT, url=tamper.url)
    with caplog.at_level(logging.WARNING, logger="adapters.engine"):
        assert await halt.refresh_directory()
        assert await halt.refresh_directory()  # served again: told once, not once per refresh
    now = gw.clock.now()
    assert key_state(halt.directory.current(now), POLICE, old.kid, now) is KeyState.ACTIVE
    assert halt.directory.revocations == ()
    assert halt.store.key_revocations() == []
    assert halt.metrics.value("key_revocations") == 0
    assert halt.metrics.value("key_revocations_invalid_total", reason=reason) == 1
    assert [r.message for r in caplog.records].count("key_revocation_invalid") == 1
    # Police signs with its key as before: nothing forged ever makes it stop.
    police = await cov.adapter(POLICE, url=tamper.url)
    await police.refresh_directory()
    assert police.own_sign_key(None, now).kid == old.kid


# -- (3) statements survive a restart, whatever the gateway says after -----------------------


@pytest.mark.parametrize("gateway_says", ["refusal", "nothing"])
async def test_statements_survive_a_restart(cov: Net, tamper: Tamper, gateway_says: str) -> None:
    gw = cov.gw
    successor = publish_successor(gw)
    old = gw.deployment.sign_key(POLICE)
    statement = revoke(gw, POLICE, old.kid, successor, since=gw.clock.now() - DAY)
    await carry(gw, statement)
    halt = await cov.adapter(HALT)
    await halt.refresh_directory()
    [row] = halt.store.key_revocations()
    assert row.statement == encode_revocation(statement)
    await cov.close(halt)

    tamper.revocations = None if gateway_says == "refusal" else []
    halt = await cov.adapter(HALT, url=tamper.url)
    now = gw.clock.now()
    # Held from adapter.db before anything is checked, and kept after a refresh.
    assert halt.metrics.value("key_revocations") == 1
    assert key_state(halt.directory.current(now), POLICE, old.kid, now) is KeyState.REVOKED
    assert await halt.refresh_directory()
    assert halt.directory.revocations == (statement,)
    assert key_state(halt.directory.current(now), POLICE, old.kid, now) is KeyState.REVOKED
    assert len(AdapterStore(halt.store.path).key_revocations()) == 1


# -- (4) never seal to a self-revoked encrypt key; never sign with an own revoked key ---------


async def test_no_message_is_sealed_to_a_self_revoked_encrypt_key(cov: Net, tamper: Tamper) -> None:
    gw = cov.gw
    # Halt revokes its encrypt key with its sign key: no new directory version is needed.
    encrypt = gw.directory.current_key(HALT, KeyUse.ENCRYPT, gw.clock.now())
    statement = revoke(gw, HALT, encrypt.kid, gw.deployment.sign_key(HALT))
    await carry(gw, statement, by=HALT)
    police = await cov.adapter(POLICE)
    await police.refresh_directory()
    await cov.close(police)

    # A dishonest gateway would take the envelope; the adapter never makes it.
    token = gw.issue_token()
    police = await cov.adapter(POLICE, url=tamper.url)
    police.remember_token(token.signed, token.opening, {token.subjects[0]: BSN_A})
    cov.system(POLICE).add_event("INC-1", signal_event([BSN_A], [HALT]))
    assert await police.ingest_once() == 1
    result = await police.send_once()
    [row] = police.store.outbox()
    assert result.retried == [row.message_id]
    assert (row.state, row.envelope) == ("queued", None)
    assert row.last_reason == "cannot seal yet: halt has no usable encrypt key"
    assert tamper.submitted == []


async def test_an_own_key_revoked_by_our_statement_never_signs(cov: Net) -> None:
    gw = cov.gw
    successor = publish_successor(gw)
    old = gw.deployment.sign_key(POLICE)
    await carry(gw, revoke(gw, POLICE, old.kid, successor), by=POLICE)
    police = await cov.adapter(POLICE)
    await police.refresh_directory()
    now = gw.clock.now()
    # The successor's key file is not installed yet: nothing may be signed, and the directory
    # lists a key of ours we do not hold (``check_own_keys``).
    with pytest.raises(OwnKeyRevokedError):
        police.own_sign_key(None, now)
    assert [a.kind for a in police.store.alarms()] == ["own_key_unknown", "own_key_revoked"]
    token = gw.issue_token()
    police.remember_token(token.signed, token.opening, {token.subjects[0]: BSN_A})
    cov.system(POLICE).add_event("INC-1", signal_event([BSN_A], [HALT]))
    await police.ingest_once()
    await police.send_once()
    [row] = police.store.outbox()
    assert row.state == "queued"
    assert row.last_reason is not None
    assert "revoked by our own statement" in row.last_reason
