"""``GET /v1/directory`` answers any covenant certificate, not only an identified partner.

The bundle authenticates itself (threshold-signed TUF metadata; every reader verifies it with
its own trusted root) and holds only public keys, OINs and the policy, which every partner
holds anyway. A partner whose own ``tls`` key retired while it was offline, or whose directory
entry is changing, must still be able to fetch the version that lists its successor: otherwise
it can only recover by copying files by hand (ADR 12). The TLS handshake still demands a
certificate of the covenant CA; every other route still identifies the caller.
"""

from __future__ import annotations

import json
from pathlib import Path

from gateway.protocol.reasons import Reason
from keys.ca import PartnerSubject
from keys.signed_directory import decode_bundle, read_bundle
from tests.gateway.conftest import Gw
from tests.gateway.test_relay_reasons import Call, assert_refused, foreign_certificate, send

POLICE = "politie-ijmond"


async def test_a_certificate_the_directory_does_not_list_fetches_the_directory(
    gateway: Gw, tmp_path: Path
) -> None:
    police = next(p for p in gateway.directory.partners() if p.id == POLICE)
    # The police's successor certificate, for a key the gateway's directory does not list (as
    # after a rotation the adapter missed while offline).
    ssl = foreign_certificate(
        gateway, tmp_path / "police-new-key", PartnerSubject(POLICE, police.oin, police.name)
    )
    answer = await send(gateway, Call(POLICE, "GET", "/v1/directory", ssl=ssl))
    assert answer.status == 200, answer.document
    assert answer.headers["API-Version"] == "1"
    served = decode_bundle(json.dumps(answer.document).encode())
    assert served == read_bundle(gateway.built.runtime.bundle_dir or Path("-"))
    # Everything else still needs an identified caller.
    assert_refused(
        await send(gateway, Call(POLICE, "GET", "/v1/inbox", ssl=ssl)), Reason.UNKNOWN_SENDER
    )
    assert_refused(
        await send(gateway, Call(POLICE, "GET", "/v1/keys/revocations", ssl=ssl)),
        Reason.UNKNOWN_SENDER,
    )


async def test_a_stranger_with_a_covenant_certificate_fetches_only_the_directory(
    gateway: Gw, tmp_path: Path
) -> None:
    stranger = PartnerSubject("gemeente-zandvoort", "00000099000000050000", "Gemeente Zandvoort")
    ssl = foreign_certificate(gateway, tmp_path / "zandvoort", stranger)
    answer = await send(gateway, Call(POLICE, "GET", "/v1/directory", ssl=ssl))
    assert answer.status == 200
    assert_refused(
        await send(gateway, Call(POLICE, "GET", "/v1/audit/checkpoint", ssl=ssl)),
        Reason.UNKNOWN_SENDER,
    )
