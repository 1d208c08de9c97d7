"""The adapter's own TLS certificate after a ``tls`` key rotation (issue 6).

* Which pair is presented (``keys.tlspairs.choose_tls_pair``), as a table of named cases:
  real key files and real certificates from the development CA (``keys.ca``), a real verified
  directory changed with ``keys.rotation``.
* The switch itself (``GatewayClient.use_ssl_context``): a request in flight on a real mTLS
  server on 127.0.0.1 finishes with the old certificate while new requests use the new one,
  each over a connection whose server key was pinned.
* The adapter on a real gateway: a successor whose certificate is still at the CA is skipped
  with a warning (the old certificate stays), and is presented from the refresh after the
  certificate arrives; the gateway refuses the old one from its ``retire_at`` and the adapter
  carries on.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from adapters.client import GatewayClient, GatewayIdentityError
from adapters.config import load_partner_dir
from adapters.engine import Adapter, EngineSettings
from keys import CertificateError, Directory, DirectoryContents, DirectoryKey, KeyUse, TlsKeyPair
from keys.ca import (
    CovenantCa,
    PartnerSubject,
    create_ca,
    issue_partner_certificate,
    load_ca,
    read_certificate_pem,
    write_certificates_pem,
)
from keys.cli import verified_directory
from keys.keyfile import write_tls_key
from keys.keypair import Algorithm, spki_kid
from keys.rotation import apply_key_change, apply_revocation
from keys.tlsidentity import TlsFiles, check_gateway_certificate, client_context, server_context
from keys.tlspairs import SkipKind, choose_tls_pair, tls_family
from tests.adapters.fake_system import FakeCaseSystem
from tests.gateway.conftest import Deployment, Gw
from tests.test_key_rotation_live import (  # noqa: F401 - fixtures used by these tests
    Officers,
    live,
    officers,
    own_deployment,
)

POLICE, HALT = "politie-ijmond", "halt"
DAY = 86_400
HOUR = 3_600


# -- choosing the pair ------------------------------------------------------------------------


@dataclass
class Rig:
    """A copy of the police's partner folder, the development CA, and the directory the
    case changes (``contents``); ``now`` is the real time (certificates are real)."""

    files: TlsFiles
    ca: CovenantCa
    subject: PartnerSubject
    other_subject: PartnerSubject
    contents: DirectoryContents
    now: int
    old_kid: str
    keys: dict[int, TlsKeyPair] = field(default_factory=dict)

    @property
    def keys_dir(self) -> Path:
        return self.files.private_key.parent

    def pair(
        self,
        n: int,
        *,
        certify: bool = True,
        ca: CovenantCa | None = None,
        days: int = 397,
        for_key: TlsKeyPair | None = None,
        subject: PartnerSubject | None = None,
    ) -> TlsKeyPair:
        """Write ``tls-n.key`` and (unless ``certify`` is false) ``tls-n.crt``."""
        key = TlsKeyPair.generate()
        self.keys[n] = key
        write_tls_key(self.keys_dir / f"tls-{n}.key", key)
        if certify:
            certificate = issue_partner_certificate(
                ca or self.ca,
                for_key or key,
                subject or self.subject,
                self.now,
                days,
            )
            write_certificates_pem(self.keys_dir / f"tls-{n}.crt", [certificate])
        return key

    def list_key(
        self, key: TlsKeyPair, *, active_from: int, retire_old_at: int | None = None
    ) -> None:
        """List ``key`` as a ``tls`` key of the police (retiring the configured one)."""
        entry = DirectoryKey(
            kid=key.kid,
            use=KeyUse.TLS,
            alg=Algorithm.TLS_SPKI,
            public=key.public,
            active_from=active_from,
        )
        retire = () if retire_old_at is None else ((self.old_kid, retire_old_at),)
        self.contents = apply_key_change(self.contents, POLICE, entry, retire=retire)

    def revoke(self, key: TlsKeyPair) -> None:
        self.contents = apply_revocation(
            self.contents, POLICE, key.kid, now=self.now - 1, compromised_since=None
        )


@pytest.fixture
def rig(deployment: Deployment, tmp_path: Path) -> Rig:
    folder = tmp_path / POLICE
    shutil.copytree(deployment.partner_dir(POLICE), folder)
    now = int(time.time())
    directory, _ = verified_directory(deployment.root / "directory", now)
    police, halt = directory.partner(POLICE), directory.partner(HALT)
    (old,) = [k for k in police.keys if k.use is KeyUse.TLS]
    return Rig(
        files=TlsFiles(
            certificate=folder / "keys" / "tls.crt",
            private_key=folder / "keys" / "tls.key",
            trust_anchors=(folder / "trust" / "ca.crt",),
        ),
        ca=load_ca(deployment.root / "ca" / "ca.crt", deployment.root / "ca" / "ca.key"),
        subject=PartnerSubject(partner_id=police.id, oin=police.oin, name=police.name),
        other_subject=PartnerSubject(partner_id=halt.id, oin=halt.oin, name=halt.name),
        contents=directory.contents,
        now=now,
        old_kid=old.kid,
    )


def _two_active(r: Rig) -> None:
    r.list_key(r.pair(2), active_from=r.now - 2 * HOUR)
    r.list_key(r.pair(3), active_from=r.now - HOUR)


def _newest_pending(r: Rig) -> None:
    r.list_key(r.pair(2), active_from=r.now - HOUR)
    r.list_key(r.pair(3), active_from=r.now + HOUR)


def _pending(r: Rig) -> None:
    r.list_key(r.pair(2), active_from=r.now + HOUR, retire_old_at=r.now + 3 * HOUR)


def _unlisted(r: Rig) -> None:
    r.pair(2)


def _at_the_ca(r: Rig) -> None:
    r.list_key(r.pair(2, certify=False), active_from=r.now - HOUR)


def _not_its_key(r: Rig) -> None:
    r.list_key(r.pair(2, for_key=TlsKeyPair.generate()), active_from=r.now - HOUR)


def _expired(r: Rig) -> None:
    # Valid for one day; the case is judged two days on (``at`` in the table).
    r.list_key(r.pair(2, days=1), active_from=r.now - HOUR)


def _another_ca(r: Rig) -> None:
    other = create_ca("Another covenant", r.now - HOUR)
    r.list_key(r.pair(2, ca=other), active_from=r.now - HOUR)


def _another_oin(r: Rig) -> None:
    r.list_key(r.pair(2, subject=r.other_subject), active_from=r.now - HOUR)


def _revoked(r: Rig) -> None:
    key = r.pair(2)
    r.list_key(key, active_from=r.now - HOUR)
    r.revoke(key)


def _predecessor_retired(r: Rig) -> None:
    r.list_key(r.pair(2), active_from=r.now - 2 * HOUR, retire_old_at=r.now - 60)


def _nothing_qualifies(r: Rig) -> None:
    r.list_key(r.pair(2, certify=False), active_from=r.now - 2 * HOUR, retire_old_at=r.now - 60)


def _key_readable_by_others(r: Rig) -> None:
    r.list_key(r.pair(2), active_from=r.now - HOUR)
    (r.keys_dir / "tls-2.key").chmod(0o644)


@dataclass(frozen=True)
class Choice:
    setup: Callable[[Rig], None]
    chosen: int | None  # the generation presented; None: none qualifies (keep the current)
    skipped: tuple[tuple[int, SkipKind], ...] = ()
    at: int = 0  # seconds after ``Rig.now`` the choice is made
    detail: str = ""  # in the detail of the last pair skipped


NOT_USABLE, UNREADABLE = SkipKind.NOT_USABLE, SkipKind.KEY_UNREADABLE
NO_CERTIFICATE, INVALID = SkipKind.NO_CERTIFICATE, SkipKind.CERTIFICATE_INVALID
CHOICES = {
    "configured-pair-alone": Choice(lambda r: None, 1),
    "newest-active-pair": Choice(_two_active, 3),
    "newest-not-yet-active": Choice(_newest_pending, 2, ((3, NOT_USABLE),)),
    "successor-not-yet-active": Choice(_pending, 1, ((2, NOT_USABLE),)),
    "successor-not-in-the-directory": Choice(_unlisted, 1, ((2, NOT_USABLE),)),
    "successor-revoked": Choice(_revoked, 1, ((2, NOT_USABLE),)),
    "certificate-still-at-the-ca": Choice(_at_the_ca, 1, ((2, NO_CERTIFICATE),)),
    "certificate-not-for-its-key": Choice(
        _not_its_key, 1, ((2, INVALID),), detail="is not the certificate of"
    ),
    "expired-certificate": Choice(
        _expired, 1, ((2, INVALID),), at=2 * DAY, detail="not valid at validation time"
    ),
    "certificate-from-another-ca": Choice(
        _another_ca, 1, ((2, INVALID),), detail="does not verify to a trust anchor"
    ),
    "certificate-names-another-oin": Choice(
        _another_oin, 1, ((2, INVALID),), detail="does not name the OIN"
    ),
    "key-readable-by-others": Choice(_key_readable_by_others, 1, ((2, UNREADABLE),)),
    "predecessor-retired": Choice(_predecessor_retired, 2),
    "nothing-qualifies": Choice(_nothing_qualifies, None, ((2, NO_CERTIFICATE), (1, NOT_USABLE))),
}


@pytest.mark.parametrize("name", CHOICES)
def test_choose_tls_pair(name: str, rig: Rig) -> None:
    case = CHOICES[name]
    case.setup(rig)
    directory = Directory(rig.contents)
    choice = choose_tls_pair(rig.files, directory, POLICE, rig.now + case.at)
    got = [(s.generation, s.kind) for s in choice.skipped]
    assert got == list(case.skipped), [s.detail for s in choice.skipped]
    if case.detail:
        assert case.detail in choice.skipped[-1].detail
    if case.chosen is None:
        assert choice.pair is None
        return
    assert choice.pair is not None
    assert choice.pair.generation == case.chosen
    expected = rig.old_kid if case.chosen == 1 else rig.keys[case.chosen].kid
    assert choice.pair.kid == expected
    leaf = read_certificate_pem(choice.pair.files.certificate)
    assert choice.pair.not_after == int(leaf.not_valid_after_utc.timestamp())
    # And a client context builds from what is chosen.
    client_context(choice.pair.files)


def test_family_is_found_beside_the_configured_pair(rig: Rig) -> None:
    rig.pair(3, certify=False)
    rig.pair(2)
    (rig.keys_dir / "tls-x.key").write_bytes(b"not a generation")
    family = tls_family(rig.files)
    assert [(n, f.private_key.name, f.certificate.name) for n, f in family] == [
        (1, "tls.key", "tls.crt"),
        (2, "tls-2.key", "tls-2.crt"),
        (3, "tls-3.key", "tls-3.crt"),
    ]
    assert all(f.trust_anchors == rig.files.trust_anchors for _, f in family)
    # adapter.toml edited to name generation 2: still one family, the configured pair as is.
    renamed = rig.keys_dir / "client-2.pem"
    renamed.write_bytes((rig.keys_dir / "tls-2.crt").read_bytes())
    edited = replace(rig.files, certificate=renamed, private_key=rig.keys_dir / "tls-2.key")
    assert [(n, f.private_key.name, f.certificate.name) for n, f in tls_family(edited)] == [
        (1, "tls.key", "client.pem"),
        (2, "tls-2.key", "client-2.pem"),
        (3, "tls-3.key", "client-3.pem"),
    ]


def test_unreadable_trust_anchors_raise(rig: Rig, tmp_path: Path) -> None:
    files = replace(rig.files, trust_anchors=(tmp_path / "missing.crt",))
    with pytest.raises(CertificateError):
        choose_tls_pair(files, Directory(rig.contents), POLICE, rig.now)


# -- switching with a request in flight -------------------------------------------------------


@dataclass
class Server:
    """An mTLS server on 127.0.0.1 with the gateway's certificate. It answers each request
    with the tls kid of the client certificate it came over; ``/v1/messages/slow`` answers
    only once ``release`` is set."""

    url: str = ""
    started: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    connections: set[int] = field(default_factory=set)


def _client_kid(request: web.Request) -> str:
    transport = request.transport
    assert transport is not None
    der = transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
    spki = (
        x509.load_der_x509_certificate(der)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return spki_kid(spki)


@pytest.fixture
async def server(deployment: Deployment) -> AsyncIterator[Server]:
    fake = Server()

    async def status(request: web.Request) -> web.Response:
        assert request.transport is not None
        fake.connections.add(id(request.transport))
        kid = _client_kid(request)
        if request.match_info["message_id"] == "slow":
            fake.started.set()
            await fake.release.wait()
        return web.json_response({"kid": kid})

    app = web.Application()
    app.router.add_get("/v1/messages/{message_id}", status)
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
        fake.release.set()
        await runner.cleanup()


async def test_requests_in_flight_survive_a_switch(
    rig: Rig, server: Server, deployment: Deployment
) -> None:
    rig.pair(2)
    new_files = tls_family(rig.files)[1][1]
    directory, _ = verified_directory(deployment.root / "directory", rig.now)
    pinned: list[bytes] = []

    async def pin(der: bytes) -> None:
        # The gateway pin, as the engine checks it, on every connection handed out.
        try:
            check_gateway_certificate(der, directory, rig.now)
        except CertificateError as exc:
            raise GatewayIdentityError(str(exc)) from None
        pinned.append(der)

    old_context = client_context(rig.files)
    async with GatewayClient(server.url, old_context, attempts=1, peer_check=pin) as client:
        assert (await client.message_status("before"))["kid"] == rig.old_kid
        slow = asyncio.create_task(client.message_status("slow"))
        await asyncio.wait_for(server.started.wait(), 10)

        client.use_ssl_context(client_context(new_files))
        assert client.ssl_context is not old_context
        assert (await client.message_status("after"))["kid"] == rig.keys[2].kid
        # The request in flight finishes, over the connection (and certificate) it had.
        server.release.set()
        assert (await slow)["kid"] == rig.old_kid
        # A connection made with the old certificate, idle in the pool now, is not reused.
        for _ in range(3):
            assert (await client.message_status("later"))["kid"] == rig.keys[2].kid
    # Every request went over a pinned connection; the new certificate's connection too.
    assert len(pinned) == 6
    assert len(server.connections) >= 2


# -- the adapter on a real gateway ------------------------------------------------------------


async def _publish(officers: Officers, change: Path, gw: Gw) -> None:  # noqa: F811
    proposal = officers.propose_key_change(
        change, "tls-rotation", "directory-1.key", "directory-2.key"
    )
    await asyncio.to_thread(
        officers, "keys", "directory", "publish", proposal, "--deployment", officers.deploy,
        "--gateway", gw.url, "--partner-dir", officers.deploy / "partners" / "om",
    )  # fmt: skip


async def test_adapter_waits_for_the_certificate_then_switches(
    live: Gw,  # noqa: F811
    officers: Officers,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    folder = officers.deploy / "partners" / POLICE
    adapter = Adapter(
        load_partner_dir(folder),
        FakeCaseSystem(POLICE).transport(),
        clock=live.clock,
        settings=EngineSettings(backoff_base_s=1),
        gateway_url=live.url,
    )
    await adapter.open()
    try:
        old_kid = adapter.tls_kid
        assert adapter.metrics.value("tls_key_generation") == 1
        officers("keys", "rotate", "--partner-dir", folder, "--use", "tls")
        await _publish(officers, folder / "outgoing" / "key-change-tls-2.json", live)
        (new,) = [
            k
            for k in live.directory.partner(POLICE).keys
            if k.use is KeyUse.TLS and k.kid != old_kid
        ]
        (old,) = [k for k in live.directory.partner(POLICE).keys if k.kid == old_kid]
        assert old.retire_at is not None

        # Active, but its certificate is still at the CA: a warning, and the old one stays.
        live.clock.set(new.active_from)
        with caplog.at_level(logging.WARNING, logger="adapters.engine"):
            assert await adapter.refresh_directory()
        skipped = [r for r in caplog.records if r.getMessage() == "tls_key_skipped"]
        assert [getattr(r, "reason", None) for r in skipped] == ["no_certificate"]
        assert adapter.tls_kid == old_kid
        await adapter.client.checkpoint()

        keys = folder / "keys"
        officers(
            "keys", "certify", "--ca", officers.deploy / "ca", "--partner", POLICE,
            "--csr", keys / "tls-2.csr", "--out", keys / "tls-2.crt",
        )  # fmt: skip
        assert await adapter.refresh_directory()
        assert adapter.tls_kid == new.kid
        assert adapter.metrics.value("tls_key_generation") == 2
        assert adapter.metrics.value("tls_key_switches_total") == 1
        # A second refresh keeps it (no switch to the same certificate again).
        assert await adapter.refresh_directory()
        assert adapter.metrics.value("tls_key_switches_total") == 1

        # From the old key's retire_at the gateway refuses the old certificate; the adapter
        # is identified by the new one, on the pinned and on the directory session.
        live.clock.set(old.retire_at)
        await adapter.client.checkpoint()
        assert await adapter.refresh_directory()
        assert adapter.tls_kid == new.kid
    finally:
        await adapter.close()
