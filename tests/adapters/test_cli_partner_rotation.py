"""The partner command line after a key rotation (issue 6 follow-up), against a real gateway.

``ketenpost send`` and ``inbox`` pick their own keys as the adapter engine does: the newest
sign key beside the configured one that the directory lists as usable, the newest TLS pair
that qualifies (``keys.tlspairs.choose_tls_pair``), every encrypt key held. Each test gets its
own ``ketenpost init`` deployment and a gateway with a manual clock
(``tests/test_key_rotation_live.py``); the officers rotate with their own verbs (``keys
rotate`` → ``keys certify`` → ``keys directory propose`` → ``sign`` → ``publish --gateway``);
``adapter.toml`` is never edited. The verbs run in-process at the gateway's clock, so time
passes only by moving it. The relay is watched: which client certificate it identified each
request by, and which sign kid signed each envelope and receipt it was given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from adapters import cli_partner
from adapters.cli_partner import PartnerFolder
from gateway.protocol.envelope import decode_envelope
from gateway.protocol.messages import encode_body, example
from gateway.protocol.signed import SignedObject
from gateway.protocol.token import TokenSubject, decode_signed
from gateway.protocol.types import MessageType, new_pseudonym
from keys import DirectoryKey, KeyUse, Partner
from keys.keypair import spki_kid
from keys.signed_directory import TrustedDirectory, read_bundle
from tests.gateway.conftest import DAY, Gw, Token
from tests.test_key_rotation_live import (  # noqa: F401 - fixtures used by these tests
    Officers,
    live,
    officers,
    own_deployment,
)

POLICE, HALT, VELSEN = "politie-ijmond", "halt", "gemeente-velsen"
OFFICERS = ("directory-1.key", "directory-2.key")


@dataclass
class Seen:
    """What the relay was given: ``(partner, tls kid)`` for every request it identified, and
    ``(partner, sign kid)`` for every envelope submitted and every receipt handed in."""

    tls: list[tuple[str, str]] = field(default_factory=list)
    signed: list[tuple[str, str]] = field(default_factory=list)

    def tls_kids(self, partner: str) -> list[str]:
        return [kid for p, kid in self.tls if p == partner]

    def sign_kids(self, partner: str) -> list[str]:
        return [kid for p, kid in self.signed if p == partner]

    def clear(self) -> None:
        self.tls.clear()
        self.signed.clear()


def _certificate_kid(der: bytes) -> str:
    spki = (
        x509.load_der_x509_certificate(der)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return spki_kid(spki)


@pytest.fixture
def seen(live: Gw, monkeypatch: pytest.MonkeyPatch) -> Seen:  # noqa: F811
    """Watch the relay's identity decisions, submissions and receipts (it still decides)."""
    relay = live.built.runtime.relay
    record = Seen()
    authenticate = relay.authenticate
    submit = relay.submit
    receipts = relay.receipts

    def watched_authenticate(cert_der: bytes | None, now: int) -> Partner:
        partner = authenticate(cert_der, now)
        assert cert_der is not None
        record.tls.append((partner.id, _certificate_kid(cert_der)))
        return partner

    async def watched_submit(body: bytes | None, cert_der: bytes | None) -> Any:
        if body is not None:
            header = decode_envelope(body).header
            record.signed.append((header.sender, header.sender_kid))
        return await submit(body, cert_der)

    async def watched_receipts(
        partner: Partner,
        receipts_: Sequence[bytes],
        rejections: Sequence[bytes],
        acks: Sequence[int],
    ) -> Any:
        for raw in (*receipts_, *rejections):
            signed: SignedObject = decode_signed(raw)
            record.signed.append((partner.id, signed.kid))
        return await receipts(partner, receipts_, rejections, acks)

    monkeypatch.setattr(relay, "authenticate", watched_authenticate)
    monkeypatch.setattr(relay, "submit", watched_submit)
    monkeypatch.setattr(relay, "receipts", watched_receipts)
    return record


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ketenpost")
    cli_partner.register(parser.add_subparsers(dest="command", required=True))
    return parser


@dataclass
class PartnerCli:
    """``send`` and ``inbox`` as ``ketenpost`` runs them (same parser, same verbs), in-process
    at the gateway's clock."""

    gw: Gw
    deploy: Path
    work: Path
    parser: argparse.ArgumentParser = field(default_factory=_parser)

    def folder(self, partner: str) -> Path:
        return self.deploy / "partners" / partner

    async def _run(
        self,
        verb: Callable[[argparse.Namespace, PartnerFolder, int], Awaitable[Any]],
        partner: str,
        *argv: str,
    ) -> Any:
        args = self.parser.parse_args(
            [*argv, "--partner-dir", str(self.folder(partner)), "--gateway", self.gw.url]
        )
        folder = PartnerFolder.open(self.folder(partner), {})
        return await verb(args, folder, self.gw.clock.now())

    async def send(self, token: Token, tag: str) -> dict[str, Any]:
        body = self.work / f"{tag}.json"
        body.write_bytes(encode_body(example(MessageType.SIGNAL, subjects=token.subjects)))
        result: dict[str, Any] = await self._run(
            cli_partner.send, POLICE, "send", "--to", HALT, "--approach", token.token_id,
            "--type", "signal", "--body", str(body), "--record-id", tag,
        )  # fmt: skip
        assert result["receipt"]["verified"] is True
        return result

    async def inbox(self, partner: str) -> list[dict[str, Any]]:
        lines: list[dict[str, Any]] = await self._run(cli_partner.inbox, partner, "inbox", "--ack")
        # Every line the command prints is JSON.
        assert all(json.loads(json.dumps(line)) == line for line in lines)
        return lines


@pytest.fixture
def cli(live: Gw, officers: Officers, tmp_path: Path) -> PartnerCli:  # noqa: F811
    work = tmp_path / "bodies"
    work.mkdir()
    return PartnerCli(live, officers.deploy, work)


async def _approach(gw: Gw) -> Token:
    subjects = (TokenSubject(pseudonym=new_pseudonym(), informed_at=gw.clock.now() - DAY),)
    token = gw.issue_token(subjects=subjects, participants=(VELSEN, POLICE, HALT))
    await (await gw.client(VELSEN)).register_token(token.body)
    return token


# The rotations of one publication: the sender's sign and tls keys, the recipient's sign, tls
# and encrypt keys.
ROTATED: tuple[tuple[str, KeyUse], ...] = (
    (POLICE, KeyUse.SIGN),
    (POLICE, KeyUse.TLS),
    (HALT, KeyUse.SIGN),
    (HALT, KeyUse.TLS),
    (HALT, KeyUse.ENCRYPT),
)


async def _rotate(officers: Officers, gw: Gw) -> dict[tuple[str, KeyUse], DirectoryKey]:  # noqa: F811
    """Rotate ``ROTATED`` (new certificates from the CA) and publish; returns the old keys."""
    deploy = officers.deploy
    changes: list[str | Path] = []
    for partner, use in ROTATED:
        folder = deploy / "partners" / partner
        officers("keys", "rotate", "--partner-dir", folder, "--use", use.value)
        if use is KeyUse.TLS:
            own = folder / "keys"
            officers(
                "keys", "certify", "--ca", deploy / "ca", "--partner", partner,
                "--csr", own / "tls-2.csr", "--out", own / "tls-2.crt",
            )  # fmt: skip
        changes += ["--key-change", folder / "outgoing" / f"key-change-{use.value}-2.json"]
    proposal = officers.work / "rotation.json"
    officers(
        "keys", "directory", "propose", "--deployment", deploy, *changes, "--out", proposal
    )  # fmt: skip
    for key in OFFICERS:
        officers("keys", "directory", "sign", proposal, "--key", deploy / "officers" / key)
    await asyncio.to_thread(
        officers, "keys", "directory", "publish", proposal, "--deployment", deploy,
        "--gateway", gw.url, "--partner-dir", deploy / "partners" / "om",
    )  # fmt: skip
    old: dict[tuple[str, KeyUse], DirectoryKey] = {}
    for partner, use in ROTATED:
        keys = [k for k in gw.directory.partner(partner).keys if k.use is use]
        (old[partner, use],) = [k for k in keys if k.retire_at is not None]
    return old


def _new_kid(gw: Gw, partner: str, use: KeyUse) -> str:
    (new,) = [k for k in gw.directory.partner(partner).keys if k.use is use and k.retire_at is None]
    return new.kid


async def test_send_and_inbox_after_the_old_keys_retired(
    live: Gw,  # noqa: F811
    officers: Officers,  # noqa: F811
    cli: PartnerCli,
    seen: Seen,
) -> None:
    token = await _approach(live)
    # Sealed to halt's current encrypt key, still queued while the keys rotate.
    queued = await cli.send(token, "queued")
    old = await _rotate(officers, live)
    new = {(p, u): _new_kid(live, p, u) for p, u in ROTATED}
    # Every old key has retired: the gateway accepts none of them any more.
    live.clock.set(max(k.retire_at or 0 for k in old.values()))
    seen.clear()

    sent = await cli.send(token, "after")

    assert seen.sign_kids(POLICE) == [new[POLICE, KeyUse.SIGN]]
    assert set(seen.tls_kids(POLICE)) == {new[POLICE, KeyUse.TLS]}
    lines = await cli.inbox(HALT)
    messages = {line["message_id"]: line for line in lines if line["kind"] == "message"}
    # Both opened: the queued one with the retired encrypt key, the new one with its successor.
    assert set(messages) == {queued["message_id"], sent["message_id"]}, lines
    assert all(line["acked"] for line in messages.values())
    assert seen.sign_kids(HALT) == [new[HALT, KeyUse.SIGN]] * 2  # the two delivery receipts
    assert set(seen.tls_kids(HALT)) == {new[HALT, KeyUse.TLS]}
    # The receipts come back to the police, verified with halt's new sign key.
    events = [line for line in await cli.inbox(POLICE) if line["kind"] == "event"]
    assert {(e["message_id"], e["event"], e["verified"]) for e in events} == {
        (queued["message_id"], "receipt", True),
        (sent["message_id"], "receipt", True),
    }, events
    old_kids = {k.kid for k in old.values()}
    assert not old_kids & {kid for _, kid in seen.tls + seen.signed}


async def test_send_switches_to_the_new_keys_once_the_gateway_directory_lists_them(
    live: Gw,  # noqa: F811
    officers: Officers,  # noqa: F811
    cli: PartnerCli,
    seen: Seen,
) -> None:
    """The folder's bundle predates the rotation: the verb starts with the old certificate
    (all it knows of), and signs and submits with the new keys once it has verified the
    gateway's newer directory, during the overlap in which both are accepted."""
    token = await _approach(live)
    bundle = cli.folder(POLICE) / "directory"
    stale = officers.work / "stale-directory"
    shutil.copytree(bundle, stale)
    old = await _rotate(officers, live)
    shutil.rmtree(bundle)
    shutil.copytree(stale, bundle)
    new_sign, new_tls = _new_kid(live, POLICE, KeyUse.SIGN), _new_kid(live, POLICE, KeyUse.TLS)
    (new_tls_entry,) = [k for k in live.directory.partner(POLICE).keys if k.kid == new_tls]
    live.clock.set(new_tls_entry.active_from)
    old_tls = old[POLICE, KeyUse.TLS]
    assert old_tls.retire_at is not None
    assert live.clock.now() < old_tls.retire_at
    seen.clear()

    await cli.send(token, "overlap")

    tls_kids = seen.tls_kids(POLICE)
    # The directory was fetched with the old certificate (GET /v1/directory identifies no
    # caller); everything the relay identified came with the new one.
    assert tls_kids
    assert set(tls_kids) == {new_tls}, tls_kids
    assert seen.sign_kids(POLICE) == [new_sign]
    # The gateway's newer bundle was written back to the folder.
    trusted = TrustedDirectory((bundle / "root.json").read_bytes())
    assert trusted.update(read_bundle(bundle), live.clock.now()).version == live.directory.version


async def test_send_recovers_after_missing_the_whole_overlap(
    live: Gw,  # noqa: F811
    officers: Officers,  # noqa: F811
    cli: PartnerCli,
    seen: Seen,
) -> None:
    """The folder's bundle predates the rotation and the old certificate has retired (the
    partner was offline for the whole overlap): the verb fetches the gateway's directory with
    the retired certificate, which ``GET /v1/directory`` answers, and then signs and submits
    with the new keys. No file is copied by hand."""
    token = await _approach(live)
    bundle = cli.folder(POLICE) / "directory"
    stale = officers.work / "stale-directory"
    shutil.copytree(bundle, stale)
    old = await _rotate(officers, live)
    shutil.rmtree(bundle)
    shutil.copytree(stale, bundle)
    new_sign, new_tls = _new_kid(live, POLICE, KeyUse.SIGN), _new_kid(live, POLICE, KeyUse.TLS)
    old_tls = old[POLICE, KeyUse.TLS]
    assert old_tls.retire_at is not None
    live.clock.set(old_tls.retire_at + 1)
    seen.clear()

    await cli.send(token, "after-overlap")

    assert set(seen.tls_kids(POLICE)) == {new_tls}
    assert seen.sign_kids(POLICE) == [new_sign]
