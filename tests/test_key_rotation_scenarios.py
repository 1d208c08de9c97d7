"""Key lifecycle scenarios (issue 6 Tests), as tables of named cases in python-tuf's
key-rotation style, against real adapters and a real gateway on 127.0.0.1.

Every case gets a fresh ``ketenpost init`` deployment and a gateway with a manual clock
(``tests/test_key_rotation_live.py``'s fixtures); the officers change the directory with their
own verbs (``keys rotate`` / ``keys revoke`` / ``keys directory propose`` → ``sign`` →
``publish --gateway``). Adapters refresh their directory only when a case says so, so a sender
"still on the previous directory" is simply one that has not refreshed yet. Time passes only by
moving the clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapters.cli_partner import PartnerFolder
from adapters.client import RefusedError
from adapters.config import load_adapter_config, load_partner_dir
from adapters.engine import Adapter, EngineSettings
from adapters.partners.zgw import ZgwSource
from gateway.protocol.envelope import decode_envelope
from gateway.protocol.reasons import Reason
from gateway.protocol.token import TokenSubject
from gateway.protocol.types import MessageType, new_pseudonym
from gateway.server import TrustedDirectorySource
from keys import DirectoryKey, KeyUse
from keys.ca import read_certificate_pem
from keys.keyfile import load_ed25519_key
from tests.adapters.conftest import BSN_A, BSN_B
from tests.adapters.fake_system import FakeCaseSystem, persons
from tests.gateway.conftest import DAY, Deployment, Gw, Token
from tests.test_key_rotation_live import (  # noqa: F401 - fixtures used by these tests
    Officers,
    live,
    officers,
    own_deployment,
)

POLICE, HALT, VELSEN = "politie-ijmond", "halt", "gemeente-velsen"
OFFICERS = ("directory-1.key", "directory-2.key")


@dataclass
class Covenant:
    """Adapters of the deployment's partners on the live gateway, with fake case systems."""

    gw: Gw
    deploy: Path
    systems: dict[str, FakeCaseSystem] = field(default_factory=dict)
    adapters: dict[str, Adapter] = field(default_factory=dict)

    async def adapter(self, partner: str, folder: Path | None = None) -> Adapter:
        if partner not in self.adapters:
            config = (
                load_partner_dir(self.deploy / "partners" / partner)
                if folder is None
                else load_adapter_config(folder / "adapter.toml")
            )
            system = self.systems.setdefault(partner, FakeCaseSystem(partner))
            adapter = Adapter(
                config,
                system.transport(),
                clock=self.gw.clock,
                settings=EngineSettings(backoff_base_s=1),
                gateway_url=self.gw.url,
            )
            await adapter.open()
            self.adapters[partner] = adapter
        return self.adapters[partner]

    async def start_approach(self, to: tuple[str, ...] = (POLICE, HALT)) -> Token:
        """Velsen issues and registers a token and sends the approach-notice through its
        adapter; every recipient's adapter applies it (learns pseudonym ↔ BSN)."""
        gw = self.gw
        subjects = tuple(
            TokenSubject(pseudonym=new_pseudonym(), informed_at=gw.clock.now() - DAY)
            for _ in range(2)
        )
        token = gw.issue_token(subjects=subjects, participants=(VELSEN, *to))
        registered = await (await gw.client(VELSEN)).register_token(token.body)
        velsen = await self.adapter(VELSEN)
        people = persons([s.pseudonym for s in subjects], [BSN_A, BSN_B])
        velsen.remember_token(
            token.signed,
            token.opening,
            {p.pseudonym: str(p.bsn) for p in people},
            registered_at=registered["registered_at"],
        )
        system = self.systems[VELSEN]
        system.approaches[token.token_id] = (token.signed, token.opening, people)
        system.add_event(
            f"notice-{token.token_id}",
            {"type": "approach-notice", "token_id": token.token_id, "to": list(to)},
        )
        assert await velsen.ingest_once() == 1
        sent = await velsen.send_once()
        assert len(sent.accepted) == 1, (sent, velsen.store.outbox())
        for partner in to:
            got = await (await self.adapter(partner)).receive_once()
            assert len(got.applied) == 1, (partner, got)
        return token

    async def signals(
        self, tag: str, n: int = 2, sender: str = POLICE, to: str = HALT
    ) -> list[str]:
        """``n`` signals from ``sender``'s system through its adapter; all accepted."""
        adapter = await self.adapter(sender)
        for i in range(n):
            self.systems[sender].add_event(
                f"{tag}-{i}",
                {
                    "type": "signal",
                    "about": [BSN_A],
                    "to": [to],
                    "date": "2026-03-01",
                    "summary": f"Overlast {tag} {i}.",
                },
            )
        assert await adapter.ingest_once() == n
        sent = await adapter.send_once()
        assert len(sent.accepted) == n, adapter.store.outbox()
        return list(sent.accepted)

    async def drain(self, *partners: str) -> list[str]:
        """Every named adapter takes in all it is given; returns the applied message ids."""
        applied: list[str] = []
        for partner in partners:
            adapter = self.adapters[partner]
            while True:
                got = await adapter.receive_once()
                applied += got.applied
                if not got.applied and not got.events:
                    break
        return applied


@pytest.fixture
async def covenant(live: Gw, own_deployment: Deployment) -> AsyncIterator[Covenant]:  # noqa: F811
    cov = Covenant(live, own_deployment.root)
    try:
        yield cov
    finally:
        for adapter in cov.adapters.values():
            await adapter.close()


async def publish(officers: Officers, proposal: Path, gw: Gw) -> None:  # noqa: F811
    for key in OFFICERS:
        officers("keys", "directory", "sign", proposal, "--key", officers.deploy / "officers" / key)
    await asyncio.to_thread(
        officers, "keys", "directory", "publish", proposal, "--deployment", officers.deploy,
        "--gateway", gw.url, "--partner-dir", officers.deploy / "partners" / "om",
    )  # fmt: skip


def refused_total(gw: Gw) -> float:
    text = gw.metrics.render().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "ketenpost_refused_total"
    )


def outcome_kinds(adapter: Adapter, ids: list[str], recipient: str = HALT) -> set[str]:
    return {adapter.store.outcomes(m).get(recipient, ("none", None))[0] for m in ids}


def envelope_of(adapter: Adapter, message_id: str) -> bytes:
    row = next(r for r in adapter.store.outbox() if r.message_id == message_id)
    assert row.envelope is not None
    return row.envelope


# -- rotation of each use while traffic flows ------------------------------------------------


@dataclass(frozen=True)
class Rotation:
    partner: str
    use: KeyUse


ROTATIONS = {
    "sender-sign-key": Rotation(POLICE, KeyUse.SIGN),
    "recipient-encrypt-key": Rotation(HALT, KeyUse.ENCRYPT),
    "coordinator-token-key": Rotation(VELSEN, KeyUse.TOKEN),
    "partner-tls-key": Rotation(POLICE, KeyUse.TLS),
}
# The validity the CA gives the successor's certificate: shorter than ``keys certify``'s
# default, so the gateway's certificate expiry gauge tells the two certificates apart.
NEW_CERTIFICATE_DAYS = 200


def certificate_expiry(gw: Gw, partner: str) -> float | None:
    """The gateway's ``certificate_expiry`` gauge for ``partner``: the earliest ``notAfter``
    of the client certificates it presented lately (recorded when the relay identified it)."""
    text = gw.metrics.render().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "ketenpost_certificate_expiry_timestamp_seconds" and (
                s.labels.get("partner") == partner
            ):
                return s.value
    return None


def old_and_new(gw: Gw, partner: str, use: KeyUse) -> tuple[DirectoryKey, DirectoryKey]:
    keys = [k for k in gw.directory.partner(partner).keys if k.use is use]
    (old,) = [k for k in keys if k.retire_at is not None]
    (new,) = [k for k in keys if k.retire_at is None]
    return old, new


@pytest.mark.parametrize("name", ROTATIONS)
async def test_rotation_while_traffic_flows(
    name: str,
    covenant: Covenant,
    officers: Officers,  # noqa: F811
) -> None:
    case = ROTATIONS[name]
    gw = covenant.gw
    token = await covenant.start_approach()
    before = await covenant.signals("before")
    assert set(before) <= set(await covenant.drain(HALT, POLICE))
    # Sealed to halt's current encrypt key and signed with the police's current sign key,
    # still queued at the gateway while the key rotates.
    queued = await covenant.signals("queued")

    folder = officers.deploy / "partners" / case.partner
    officers("keys", "rotate", "--partner-dir", folder, "--use", case.use.value)
    if case.use is KeyUse.TLS:
        keys = folder / "keys"
        officers(
            "keys", "certify", "--ca", officers.deploy / "ca", "--partner", case.partner,
            "--csr", keys / "tls-2.csr", "--out", keys / "tls-2.crt",
            "--days", str(NEW_CERTIFICATE_DAYS),
        )  # fmt: skip
    proposal = officers.propose_key_change(
        folder / "outgoing" / f"key-change-{case.use.value}-2.json", name
    )
    await publish(officers, proposal, gw)
    old, new = old_and_new(gw, case.partner, case.use)
    interval = gw.directory.contents.refresh_interval_s
    assert old.retire_at is not None
    assert old.retire_at >= new.active_from + interval

    # Senders still on the previous directory (nobody has refreshed) for one refresh interval:
    # at once, and just before they would have refreshed after the successor became active.
    stale = await covenant.signals("stale-now")
    gw.clock.set(new.active_from + interval - 1)
    stale += await covenant.signals("stale-late")
    police = covenant.adapters[POLICE]
    for m in stale:
        header = decode_envelope(envelope_of(police, m)).header
        assert new.kid not in {header.sender_kid, *(r.kid for r in header.recipients)}
    if case.use is KeyUse.TLS:
        # Still on the previous directory: the old certificate, which the gateway (on the
        # new directory already) accepts until the old key's retire_at.
        assert police.tls_kid == old.kid
        assert police.metrics.value("tls_key_generation") == 1

    # Everyone refreshes: the newest usable key is used from now on.
    for adapter in covenant.adapters.values():
        assert await adapter.refresh_directory()
    fresh = await covenant.signals("fresh")
    direct: list[str] = []  # submitted by hand (not through the police adapter)
    header = decode_envelope(envelope_of(police, fresh[0])).header
    if case.use is KeyUse.SIGN:
        assert header.sender_kid == new.kid
    if case.use is KeyUse.ENCRYPT:
        assert [r.kid for r in header.recipients] == [new.kid]
    if case.use is KeyUse.TOKEN:
        velsen = PartnerFolder.open(folder, {})
        directory = gw.directory
        assert velsen.token_key(directory, old.active_from).kid == old.kid
        assert velsen.token_key(directory, gw.clock.now()).kid == new.kid
        # A token signed with the new key is registered; the old key's tokens still authorise.
        fresh_token = gw.issue_token(key=velsen.token_key(directory, gw.clock.now()))
        await (await gw.client(VELSEN)).register_token(fresh_token.body)
        sign_key = police.own_sign_key(None, gw.clock.now())
        receipt = await (await gw.client(POLICE)).submit(gw.seal(fresh_token, sign_key=sign_key))
        direct.append(receipt.message_id)
    if case.use is KeyUse.TLS:
        # The police adapter switched to the new certificate at its refresh, no restart.
        assert police.tls_kid == new.kid
        assert police.metrics.value("tls_key_generation") == 2
        assert police.metrics.value("tls_key_switches_total") == 1
        new_not_after = int(
            read_certificate_pem(folder / "keys" / "tls-2.crt").not_valid_after_utc.timestamp()
        )
        assert police.metrics.value("tls_certificate_expiry_timestamp_seconds") == new_not_after
        # The gateway identified the police by the new certificate (its notAfter is the
        # earliest the police presented) ...
        await gw.built.runtime.relay.refresh_metrics()
        assert certificate_expiry(gw, POLICE) == new_not_after
        # ... and, during the overlap, still by the old one too (both keys are listed).
        old_certificate = await gw.client(POLICE)  # the configured keys/tls.crt
        await old_certificate.message_status(fresh[0])
        # From the old key's retire_at the gateway refuses the old certificate; traffic that
        # still flows both ways (signals out, receipts back) went over the new one, and no
        # connection made with the old certificate was used again.
        assert old.retire_at is not None
        gw.clock.set(old.retire_at)
        fresh += await covenant.signals("old-retired")

    # Every message is opened by halt (the queued ones sealed to the old key too) and its
    # receipt comes back: no refusal, nothing lost.
    everything = queued + stale + fresh
    applied = await covenant.drain(HALT, POLICE)
    assert sorted(applied) == sorted(everything + direct)
    assert set(everything) <= set(covenant.systems[HALT].cases)
    assert outcome_kinds(police, before + everything) == {"receipt"}
    assert refused_total(gw) == 0
    assert token.token_id in {c.token_id for c in covenant.systems[HALT].cases.values()}
    if case.use is KeyUse.TLS:
        with pytest.raises(RefusedError) as refused:
            await old_certificate.message_status(fresh[0])
        assert refused.value.reason is Reason.UNKNOWN_SENDER


# -- revoking a compromised sign key ----------------------------------------------------------

# name -> whether the compromise time is known (then: from between the two queued messages)
SIGN_REVOCATIONS = {
    "compromise-time-known": True,
    "compromise-time-unknown": False,
}


@pytest.mark.parametrize("name", SIGN_REVOCATIONS)
async def test_revoked_sign_key(
    name: str,
    covenant: Covenant,
    officers: Officers,  # noqa: F811
) -> None:
    gw = covenant.gw
    token = await covenant.start_approach()
    early = await covenant.signals("early", 1)
    gw.clock.advance(600)
    compromised_since = gw.clock.now()
    late = await covenant.signals("late", 1)
    police = covenant.adapters[POLICE]
    kid = police.own_sign_key(None, gw.clock.now()).kid
    gw.clock.advance(60)
    proposal = officers.work / f"{name}.json"
    window = (
        ("--compromised-since", str(compromised_since))
        if SIGN_REVOCATIONS[name]
        else ("--compromise-unknown",)
    )
    officers(
        "keys", "revoke", "--deployment", officers.deploy, "--partner", POLICE, "--kid", kid,
        *window, "--now", str(gw.clock.now()), "--out", proposal,
    )  # fmt: skip
    await publish(officers, proposal, gw)

    # The next message signed with it is refused.
    client = await gw.client(POLICE)
    with pytest.raises(RefusedError) as refused:
        await client.submit(gw.seal(token, sign_key=gw.deployment.sign_key(POLICE)))
    assert refused.value.reason in (Reason.KEY_REVOKED, Reason.KEY_COMPROMISED)

    # Queued messages whose signature no longer stands are purged before halt can fetch them,
    # and their sender is told; one accepted before a known compromise is still delivered.
    purged = late if SIGN_REVOCATIONS[name] else early + late
    kept = early if SIGN_REVOCATIONS[name] else []
    assert sorted(await covenant.drain(HALT)) == sorted(kept)
    await covenant.drain(POLICE)
    assert outcome_kinds(police, purged) == {"purge"}
    assert outcome_kinds(police, kept) <= {"receipt"}
    status = await client.message_status(purged[0])
    assert status["recipients"][0]["state"] == "purged"


# -- revoking a coordinator's token key -------------------------------------------------------

# name -> compromise window relative to the token's registration, or None (unknown)
TOKEN_REVOCATIONS: dict[str, tuple[int | None, bool]] = {
    "compromise-unknown-voids-every-token": (None, False),
    "compromise-after-registration-keeps-the-token": (60, True),
}


@pytest.mark.parametrize("name", TOKEN_REVOCATIONS)
async def test_revoked_token_key(
    name: str,
    live: Gw,  # noqa: F811
    officers: Officers,  # noqa: F811
) -> None:
    offset, still_authorises = TOKEN_REVOCATIONS[name]
    token = live.issue_token()
    registered_at = live.clock.now()
    await (await live.client(VELSEN)).register_token(token.body)
    police = await live.client(POLICE)
    await police.submit(live.seal(token))
    live.clock.advance(120)
    kid = live.deployment.token_key(VELSEN).kid
    window = (
        ("--compromise-unknown",)
        if offset is None
        else ("--compromised-since", str(registered_at + offset))
    )
    proposal = officers.work / f"{name}.json"
    officers(
        "keys", "revoke", "--deployment", officers.deploy, "--partner", VELSEN, "--kid", kid,
        *window, "--now", str(live.clock.now()), "--out", proposal,
    )  # fmt: skip
    await publish(officers, proposal, live)
    if still_authorises:
        await police.submit(live.seal(token))
        return
    with pytest.raises(RefusedError) as refused:
        await police.submit(live.seal(token))
    assert refused.value.reason is Reason.TOKEN_ISSUER_KEY_COMPROMISED


# -- joining and leaving ------------------------------------------------------------------------

NEWCOMER = "welzijn-velsen"


def _adapter_toml(partner: str, url: str) -> str:
    return f"""[partner]
id = "{partner}"

[gateway]
url = "{url}"

[tls]
cert = "keys/tls.crt"
key = "keys/tls.key"
trust_anchors = ["trust/ca.crt"]

[keys]
sign = "keys/sign.key"
encrypt = ["keys/encrypt.key"]
outbox = "keys/outbox.key"

[directory]
bundle = "directory"
trusted_root = "directory/root.json"

[store]
path = "adapter.db"
"""


async def test_a_partner_joins_while_everything_runs(
    covenant: Covenant,
    officers: Officers,  # noqa: F811
) -> None:
    gw, deploy, work = covenant.gw, officers.deploy, officers.work
    # Everything runs before the newcomer exists.
    await covenant.adapter(VELSEN)
    folder = work / NEWCOMER
    officers(
        "keys", "generate", "--partner", NEWCOMER, "--oin", "00000099000000042000",
        "--role", "welfare", "--name", "Welzijn Velsen", "--out", folder,
    )  # fmt: skip
    officers(
        "keys", "certify", "--ca", deploy / "ca", "--partner", NEWCOMER,
        "--csr", folder / "keys" / "tls.csr", "--out", folder / "keys" / "tls.crt",
    )  # fmt: skip
    proposal = work / "join.json"
    officers(
        "keys", "directory", "propose", "--deployment", deploy,
        "--add-partner", folder / f"{NEWCOMER}.public.json", "--out", proposal,
    )  # fmt: skip
    await publish(officers, proposal, gw)
    assert gw.directory.partner(NEWCOMER).role.value == "welfare"
    # `keys generate` dates the new keys by the wall clock, which may have passed the next
    # second since the gateway's manual clock was read: the covenant's time moves on to it (a
    # key is never used before its active_from).
    newest = max(k.active_from for k in gw.directory.partner(NEWCOMER).keys)
    gw.clock.set(max(gw.clock.now(), newest))
    # The partner's trust: the CA, the trusted root and the published bundle.
    (folder / "trust").mkdir(exist_ok=True)
    (folder / "trust" / "ca.crt").write_bytes((deploy / "ca" / "ca.crt").read_bytes())
    (folder / "directory").mkdir(exist_ok=True)
    for source in (deploy / "directory").glob("*.json"):
        (folder / "directory" / source.name).write_bytes(source.read_bytes())
    (folder / "adapter.toml").write_text(_adapter_toml(NEWCOMER, gw.url), encoding="utf-8")

    # The coordinator (running since before) picks up the new directory and starts an
    # approach with the newcomer; the newcomer's adapter receives it and sends a signal back.
    assert await covenant.adapters[VELSEN].refresh_directory()
    newcomer = await covenant.adapter(NEWCOMER, folder)
    assert newcomer.current_directory().version == gw.directory.version
    await covenant.start_approach(to=(NEWCOMER,))
    sent = await covenant.signals("welcome", 1, sender=NEWCOMER, to=VELSEN)
    assert await covenant.drain(VELSEN) == sent
    await covenant.drain(NEWCOMER)
    assert outcome_kinds(newcomer, sent, VELSEN) == {"receipt"}


async def test_a_partner_leaves(
    covenant: Covenant,
    officers: Officers,  # noqa: F811
) -> None:
    gw = covenant.gw
    token = await covenant.start_approach()
    queued = await covenant.signals("queued")
    proposal = officers.work / "leave.json"
    officers(
        "keys", "directory", "propose", "--deployment", officers.deploy,
        "--remove-partner", HALT, "--out", proposal,
    )  # fmt: skip
    await publish(officers, proposal, gw)
    gw.clock.advance(1)

    # Its pending messages are purged and their sender told.
    await covenant.drain(POLICE)
    police = covenant.adapters[POLICE]
    assert outcome_kinds(police, queued) == {"purge"}
    # Its participation ends: refused as recipient and as sender.
    client = await gw.client(POLICE)
    # Sealed to halt's last encrypt key, as a sender on an old directory would.
    (last,) = [k for k in gw.directory.partner(HALT).keys if k.use is KeyUse.ENCRYPT]
    envelope = gw.seal(token, to=(HALT,), recipient_keys={HALT: last})
    with pytest.raises(RefusedError) as as_recipient:
        await client.submit(envelope)
    assert as_recipient.value.reason in (
        Reason.RECIPIENT_KEY_INVALID,
        Reason.RECIPIENT_NOT_PARTICIPANT,
        Reason.UNKNOWN_RECIPIENT,
    )
    halt = await gw.client(HALT)
    with pytest.raises(RefusedError) as as_sender:
        await halt.submit(
            gw.seal(token, sender=HALT, to=(VELSEN,), message_type=MessageType.PROGRESS)
        )
    assert as_sender.value.reason is Reason.UNKNOWN_SENDER


async def test_token_key_family_is_read_for_the_coordinator(
    own_deployment: Deployment,  # noqa: F811
    officers: Officers,  # noqa: F811
) -> None:
    """``PartnerFolder.token_key`` (``approach issue`` / ``revoke``) holds the rotated key
    beside the configured one and signs with the newest the directory lists as usable."""
    folder = own_deployment.partner_dir(VELSEN)
    officers("keys", "rotate", "--partner-dir", folder, "--use", "token")
    velsen = PartnerFolder.open(folder, {})
    keys = velsen.token_keys()
    new = load_ed25519_key(folder / "keys" / "token-2.key", KeyUse.TOKEN)
    assert [k.kid for k in keys] == [own_deployment.token_key(VELSEN).kid, new.kid]
    # The ZGW coordinator's source picks by the directory the same way: the old key until the
    # successor's active_from, the new one from then on.
    proposal = officers.propose_key_change(
        folder / "outgoing" / "key-change-token-2.json", "token", *OFFICERS
    )
    officers("keys", "directory", "publish", proposal, "--deployment", officers.deploy)
    bundle = own_deployment.root / "directory"
    now = int(time.time())
    published = TrustedDirectorySource(bundle / "root.json", bundle, now).last()
    (entry,) = [
        k for k in published.partner(VELSEN).keys if k.use is KeyUse.TOKEN and k.kid == new.kid
    ]
    source = ZgwSource(cast("Any", SimpleNamespace(settings=None)), load_partner_dir(folder))
    assert source.token_key(published, entry.active_from - 1).kid == keys[0].kid
    assert source.token_key(published, entry.active_from).kid == new.kid
    assert velsen.token_key(published, entry.active_from - 1).kid == keys[0].kid
    assert velsen.token_key(published, entry.active_from).kid == new.kid
