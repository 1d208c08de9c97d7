"""The per-second identity memo of ``Relay.authenticate`` (docs/adr/0008-peer-identity-memo.md).

The memo may only answer a call of ``identify_peer`` with exactly the same certificate,
directory and second; a new directory (a new object, also of the same version), the next
second, or a refusal always runs the real check again.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import gateway.relay
from gateway.protocol.reasons import Reason
from gateway.relay import Refusal, StaticDirectorySource
from keys import Directory, KeyUse, Partner
from keys.tlsidentity import identify_peer
from tests.gateway.conftest import Gw

POLICE = "politie-ijmond"
HALT = "halt"


def _der(gw: Gw, partner_id: str) -> bytes:
    pem = gw.deployment.tls_files(partner_id).certificate.read_bytes()
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the real ``identify_peer`` calls the relay makes."""
    real: Callable[[bytes, Directory, int], Partner] = identify_peer
    seen: list[int] = []

    def counting(cert_der: bytes, directory: Directory, now: int) -> Partner:
        seen.append(now)
        return real(cert_der, directory, now)

    monkeypatch.setattr(gateway.relay, "identify_peer", counting)
    return seen


def _authenticate(gw: Gw, der: bytes) -> Partner:
    relay = gw.built.runtime.relay
    return relay.authenticate(der, gw.clock.now())


async def test_same_certificate_directory_and_second_is_identified_once(
    gateway: Gw, calls: list[int]
) -> None:
    police = _der(gateway, POLICE)
    halt = _der(gateway, HALT)
    assert _authenticate(gateway, police).id == POLICE
    assert _authenticate(gateway, police).id == POLICE
    assert _authenticate(gateway, halt).id == HALT
    assert _authenticate(gateway, halt).id == HALT
    assert len(calls) == 2


async def test_the_next_second_identifies_again(gateway: Gw, calls: list[int]) -> None:
    police = _der(gateway, POLICE)
    _authenticate(gateway, police)
    gateway.clock.advance(1)
    _authenticate(gateway, police)
    _authenticate(gateway, police)
    assert len(calls) == 2
    assert calls[1] == calls[0] + 1


@pytest.mark.parametrize("same_version", [False, True], ids=["next-version", "same-version"])
async def test_a_new_directory_identifies_again(
    gateway: Gw, calls: list[int], same_version: bool
) -> None:
    police = _der(gateway, POLICE)
    _authenticate(gateway, police)
    if same_version:
        # Another object with the same version number: still a new directory to the memo.
        directory = Directory(gateway.directory.contents, version=gateway.directory.version)
        gateway.built.runtime.relay.directories = StaticDirectorySource(directory)
    else:
        gateway.use_directory(gateway.directory.contents)
    _authenticate(gateway, police)
    assert len(calls) == 2


async def test_a_directory_revoking_the_tls_key_refuses_in_the_same_second(
    gateway: Gw, calls: list[int]
) -> None:
    police = _der(gateway, POLICE)
    assert _authenticate(gateway, police).id == POLICE
    now = gateway.clock.now()
    contents = gateway.directory.contents
    partners = tuple(
        msgspec.structs.replace(
            p,
            keys=tuple(
                msgspec.structs.replace(k, revoked_at=now) if k.use is KeyUse.TLS else k
                for k in p.keys
            ),
        )
        if p.id == POLICE
        else p
        for p in contents.partners
    )
    gateway.use_directory(msgspec.structs.replace(contents, partners=partners))
    with pytest.raises(Refusal) as refused:
        _authenticate(gateway, police)
    assert refused.value.code is Reason.UNKNOWN_SENDER
    # A refusal is not remembered: the next attempt runs the check again.
    with pytest.raises(Refusal):
        _authenticate(gateway, police)
    assert len(calls) == 3
