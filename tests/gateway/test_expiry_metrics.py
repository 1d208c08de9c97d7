"""The expiry gauges as ``Relay.refresh_metrics`` sets them on a real gateway (real mTLS, the
development deployment's signed directory, a real SQLite store).

* Directory: one series per TUF role, the role's ``expires`` from the signed metadata.
* Certificates: a partner's series appears once it has connected (identified by the relay) and
  shows its client certificate's notAfter; the gateway's own certificate under the gateway id.
* Tokens: the earliest valid_until among the coordinator's active tokens; a revoked or
  superseded token drops out, and with no active token left the series goes.
* Keys: the earliest end (retire_at, or a coming revoked_at) among the current keys of each
  (partner, use); a key without either, a pending key and a retired key add nothing.
"""

from __future__ import annotations

import msgspec
from cryptography import x509

from gateway.protocol.token import ApproachToken, revoke
from gateway.signer import encode_signed_object
from keys import KeyUse
from keys.signed_directory import TrustedDirectory, read_bundle
from tests.gateway.conftest import DAY, Gw, Token

CERT: str = "ketenpost_certificate_expiry_timestamp_seconds"
TOKEN: str = "ketenpost_token_expiry_timestamp_seconds"
DIRECTORY: str = "ketenpost_directory_expiry_timestamp_seconds"
KEY: str = "ketenpost_key_expiry_timestamp_seconds"
VELSEN: str = "gemeente-velsen"


def value(gw: Gw, name: str, **labels: str) -> float | None:
    return gw.metrics.registry.get_sample_value(name, labels)


def series(gw: Gw, name: str) -> list[dict[str, str]]:
    return [
        dict(sample.labels)
        for family in gw.metrics.registry.collect()
        for sample in family.samples
        if sample.name == name
    ]


def not_after(path_bytes: bytes) -> float:
    return x509.load_pem_x509_certificate(path_bytes).not_valid_after_utc.timestamp()


async def _register(gw: Gw, token: Token) -> None:
    velsen = await gw.client(VELSEN)
    await velsen.register_token(token.body)


async def _revoke(gw: Gw, token: Token) -> None:
    velsen = await gw.client(VELSEN)
    revocation = revoke(
        msgspec.msgpack.decode(token.signed.payload, type=ApproachToken),
        key=gw.deployment.token_key(VELSEN),
        now=gw.clock.now(),
        reason="Aanpak beëindigd.",
    )
    await velsen.revoke_token(token.token_id, encode_signed_object(revocation))


async def test_directory_expiry_per_role_from_the_signed_metadata(gateway: Gw) -> None:
    config = gateway.built.config
    trusted = TrustedDirectory(config.directory.trusted_root.read_bytes())
    trusted.update(read_bundle(config.directory.bundle), gateway.clock.now())
    expected = trusted.expiry
    await gateway.built.runtime.relay.refresh_metrics()
    for role in ("root", "targets", "snapshot", "timestamp"):
        assert value(gateway, DIRECTORY, role=role) == float(getattr(expected, role)), role
    assert expected.timestamp < expected.targets  # the timestamp role is the short-lived one


async def test_certificate_expiry_of_connected_partners_and_the_gateway(gateway: Gw) -> None:
    relay = gateway.built.runtime.relay
    gateway_id = gateway.directory.gateway.id
    await relay.refresh_metrics()
    # Nobody has connected yet: only the gateway's own certificate, noted by build_runtime.
    assert {s["partner"] for s in series(gateway, CERT)} == {gateway_id}

    halt = await gateway.client("halt")
    await halt.inbox(wait_s=0)
    own = gateway.built.config.tls.cert.read_bytes()
    relay.note_own_certificate(own)  # what `ketenpost serve` does at start-up
    await relay.refresh_metrics()

    halt_cert = gateway.deployment.tls_files("halt").certificate.read_bytes()
    assert value(gateway, CERT, partner="halt") == not_after(halt_cert)
    assert value(gateway, CERT, partner=gateway_id) == not_after(own)
    assert {s["partner"] for s in series(gateway, CERT)} == {"halt", gateway_id}

    # Not presented for longer than the window: forgotten.
    gateway.clock.advance(3601)
    await relay.refresh_metrics()
    assert value(gateway, CERT, partner="halt") is None
    assert value(gateway, CERT, partner=gateway_id) == not_after(own)


async def test_token_expiry_is_the_earliest_active_token_and_a_revoked_one_drops_out(
    gateway: Gw,
) -> None:
    relay = gateway.built.runtime.relay
    await relay.refresh_metrics()
    assert series(gateway, TOKEN) == []

    long = gateway.issue_token(valid_days=90)
    short = gateway.issue_token(valid_days=20)
    await _register(gateway, long)
    await _register(gateway, short)
    now = gateway.clock.now()
    await relay.refresh_metrics()
    assert value(gateway, TOKEN, coordinator=VELSEN) == float(now + 20 * DAY)

    await _revoke(gateway, short)
    await relay.refresh_metrics()
    assert value(gateway, TOKEN, coordinator=VELSEN) == float(now + 90 * DAY)

    # A superseded token drops out too; its successor counts.
    successor = gateway.issue_token(valid_days=120, supersedes=long.token_id)
    await _register(gateway, successor)
    await relay.refresh_metrics()
    assert value(gateway, TOKEN, coordinator=VELSEN) == float(now + 120 * DAY)

    await _revoke(gateway, successor)
    await relay.refresh_metrics()
    assert series(gateway, TOKEN) == []


async def test_key_expiry_is_the_earliest_end_among_current_keys(gateway: Gw) -> None:
    relay = gateway.built.runtime.relay
    now = gateway.clock.now()
    await relay.refresh_metrics()
    # The development deployment's keys have no retire_at: no key expiry at all.
    assert series(gateway, KEY) == []

    contents = gateway.directory.contents
    partners = []
    for p in contents.partners:
        keys = list(p.keys)
        if p.id == "politie-ijmond":
            # sign retiring in 10 days; encrypt retired yesterday (not current: no series);
            # tls revoked in 5 days (still active until then).
            keys = [
                msgspec.structs.replace(k, retire_at=now + 10 * DAY)
                if k.use is KeyUse.SIGN
                else msgspec.structs.replace(k, retire_at=now - DAY)
                if k.use is KeyUse.ENCRYPT
                else msgspec.structs.replace(k, revoked_at=now + 5 * DAY)
                if k.use is KeyUse.TLS
                else k
                for k in keys
            ]
        partners.append(msgspec.structs.replace(p, keys=tuple(keys)))
    gateway.use_directory(msgspec.structs.replace(contents, partners=tuple(partners)))
    await relay.refresh_metrics()

    assert value(gateway, KEY, partner="politie-ijmond", use="sign") == float(now + 10 * DAY)
    assert value(gateway, KEY, partner="politie-ijmond", use="tls") == float(now + 5 * DAY)
    assert value(gateway, KEY, partner="politie-ijmond", use="encrypt") is None
    assert {(s["partner"], s["use"]) for s in series(gateway, KEY)} == {
        ("politie-ijmond", "sign"),
        ("politie-ijmond", "tls"),
    }
    # A static directory source has no signed metadata: the directory series go.
    assert series(gateway, DIRECTORY) == []

    gateway.clock.advance(11 * DAY)
    await relay.refresh_metrics()
    # The sign key has retired (no longer current); the tls key is revoked by now.
    assert series(gateway, KEY) == []
