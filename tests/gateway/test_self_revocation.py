"""A partner's own key revocation, acted on by the gateway at once (issue 6; docs/adr/0011).

Real gateways on 127.0.0.1 over mTLS (``conftest.start_gateway``: SQLite; ``_pg_gateway``: the
real PostgreSQL, two replicas on one schema), statements made with ``keys.revocation`` as
``ketenpost keys revoke --self`` makes them, and the CLI itself against a live gateway. Time
passes only by moving the gateways' manual clocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any, Final

import msgspec
import pytest

import ketenpost
from gateway.protocol.auditentry import AuditDecision, AuditEntry, decode_entry
from gateway.protocol.reasons import Reason
from gateway.relay import REVOCATION_POLL_S
from gateway.store.base import Accepted, Submission, TokenCheck
from keys import DirectoryKey, Ed25519KeyPair, KeyUse
from keys.directory import DirectoryContents
from keys.revocation import (
    STATEMENT_FORMAT,
    KeyRevocation,
    encode_revocation,
    sign_revocation,
    statement_hash,
    verify_revocation,
)
from tests.gateway._pg import pg_schema
from tests.gateway._pg_gateway import migrate, relay_store, start_pg_gateway
from tests.gateway.conftest import DAY, Deployment, Gw, Token
from tests.gateway.test_relay_reasons import (
    Answer,
    Call,
    assert_refused,
    audit_entries,
    registered,
    running,
    send,
    submission,
    with_partner,
)

POLICE: Final = "politie-ijmond"
VELSEN: Final = "gemeente-velsen"
HALT: Final = "halt"
PATH: Final = "/v1/keys/revocations"


# -- building blocks ------------------------------------------------------------------------


def statement(
    gw: Gw,
    partner: str,
    kid: str,
    signing_key: Ed25519KeyPair,
    *,
    since: int | None = None,
    revoked_at: int | None = None,
) -> KeyRevocation:
    return sign_revocation(
        partner=partner,
        kid=kid,
        revoked_at=gw.clock.now() if revoked_at is None else revoked_at,
        compromised_since=since,
        signing_key=signing_key,
    )


def carried(body: KeyRevocation | bytes, by: str = "om") -> Call:
    data = body if isinstance(body, bytes) else encode_revocation(body)
    return Call(by, "POST", PATH, data, "application/json")


def successor_contents(gw: Gw, pair: Ed25519KeyPair, partner: str = POLICE) -> DirectoryContents:
    """The deployment's directory with a pending successor sign key ``pair`` for ``partner``."""
    contents = gw.directory.contents
    keys = next(p.keys for p in contents.partners if p.id == partner)
    entry = DirectoryKey(
        kid=pair.kid,
        use=KeyUse.SIGN,
        alg=pair.algorithm,
        public=pair.public,
        active_from=gw.clock.now() + DAY,
    )
    return with_partner(contents, partner, keys=(*keys, entry))


def with_successor(gw: Gw, partner: str = POLICE) -> Ed25519KeyPair:
    """Give ``partner`` a listed (pending) successor sign key: the one that may sign the
    revocation of its current sign key."""
    pair = Ed25519KeyPair.generate(KeyUse.SIGN)
    gw.use_directory(successor_contents(gw, pair, partner))
    return pair


async def queued(gw: Gw, token: Token, n: int = 1) -> list[str]:
    police = await gw.client(POLICE)
    return [(await police.submit(gw.seal(token))).message_id for _ in range(n)]


async def purge_events(gw: Gw, sender: str = POLICE) -> list[str]:
    box = await (await gw.client(sender)).inbox()
    assert {e.kind for e in box.events} <= {"purge"}
    return sorted(e.message_id for e in box.events)


async def halt_receives(gw: Gw) -> list[str]:
    return [d.message_id for d in (await (await gw.client(HALT)).inbox(limit=100)).deliveries]


async def entries_of(gw: Gw, decision: AuditDecision) -> list[AuditEntry]:
    return [e for e in await audit_entries(gw) if e.decision is decision]


def as_statement(document: dict[str, Any]) -> KeyRevocation:
    return msgspec.json.decode(json.dumps(document["statement"]).encode(), type=KeyRevocation)


# -- the gateway acts on it at once ---------------------------------------------------------


async def test_a_self_revoked_sign_key_is_refused_and_its_queue_purged(gateway: Gw) -> None:
    gw = gateway
    successor = with_successor(gw)
    token = await registered(gw)
    ids = await queued(gw, token, 2)
    old = gw.deployment.sign_key(POLICE)
    made = statement(gw, POLICE, old.kid, successor)
    # Carried in by another partner: the statement authenticates itself.
    answer = await send(gw, carried(made, by="om"))
    assert answer.status == 201, answer.document
    document = answer.document
    assert {k: document[k] for k in ("partner", "kid", "signing_kid", "carried_by")} == {
        "partner": POLICE,
        "kid": old.kid,
        "signing_kid": successor.kid,
        "carried_by": "om",
    }
    assert document["statement_hash"] == statement_hash(made)
    assert document["compromised_since"] is None
    assert document["recorded_at"] == gw.clock.now()
    assert as_statement(document) == made
    # The same statement again: the same answer.
    again = await send(gw, carried(made, by=POLICE))
    assert (again.status, again.document) == (200, document)

    assert_refused(await send(gw, submission(gw.seal(token))), Reason.KEY_REVOKED)
    assert await halt_receives(gw) == []
    assert await purge_events(gw) == sorted(ids)
    (revoked,) = await entries_of(gw, AuditDecision.KEY_REVOKED)
    assert (revoked.sender, revoked.recipients, revoked.header_hash) == (
        "om",
        (POLICE,),
        statement_hash(made),
    )
    leaves = await gw.store.audit_leaves()
    assert decode_entry(leaves[document["leaf_index"]][2] or b"") == revoked
    purged = await entries_of(gw, AuditDecision.PURGED)
    assert [(e.sender, e.recipients, e.reason) for e in purged] == [
        (POLICE, (HALT,), Reason.KEY_COMPROMISED.value)
    ] * 2


async def test_a_known_compromise_time_purges_only_what_was_accepted_from_then_on(
    gateway: Gw,
) -> None:
    gw = gateway
    successor = with_successor(gw)
    token = await registered(gw)
    (before,) = await queued(gw, token)
    gw.clock.advance(100)
    since = gw.clock.now()
    (after,) = await queued(gw, token)
    gw.clock.advance(10)
    made = statement(gw, POLICE, gw.deployment.sign_key(POLICE).kid, successor, since=since)
    assert (await send(gw, carried(made, by=POLICE))).status == 201
    assert await halt_receives(gw) == [before]
    assert await purge_events(gw) == [after]
    assert_refused(await send(gw, submission(gw.seal(token))), Reason.KEY_COMPROMISED)


async def test_a_self_revoked_token_key_voids_its_tokens_and_purges_their_queue(
    gateway: Gw,
) -> None:
    gw = gateway
    token = await registered(gw)
    ids = await queued(gw, token, 2)
    made = statement(
        gw, VELSEN, gw.deployment.token_key(VELSEN).kid, gw.deployment.sign_key(VELSEN)
    )
    assert (await send(gw, carried(made, by=VELSEN))).status == 201
    assert await halt_receives(gw) == []
    assert await purge_events(gw) == sorted(ids)
    purged = await entries_of(gw, AuditDecision.PURGED)
    assert {e.reason for e in purged} == {Reason.TOKEN_ISSUER_KEY_COMPROMISED.value}
    assert_refused(await send(gw, submission(gw.seal(token))), Reason.TOKEN_ISSUER_KEY_COMPROMISED)


async def test_a_self_revoked_encrypt_key_is_no_recipient_key_but_its_queue_is_delivered(
    gateway: Gw,
) -> None:
    # The gateway cannot look inside the stanzas; what is queued for the key goes only to its
    # own recipient over mTLS, which still holds the private key (docs/adr/0011).
    gw = gateway
    token = await registered(gw)
    ids = await queued(gw, token)
    made = statement(
        gw,
        HALT,
        gw.deployment.encrypt_key(HALT).kid,
        gw.deployment.sign_key(HALT),
        since=gw.clock.now() - DAY,
    )
    assert (await send(gw, carried(made, by=HALT))).status == 201
    assert_refused(await send(gw, submission(gw.seal(token))), Reason.RECIPIENT_KEY_INVALID)
    assert await halt_receives(gw) == ids
    assert await entries_of(gw, AuditDecision.PURGED) == []


async def test_no_later_directory_undoes_a_self_revocation(gateway: Gw) -> None:
    gw = gateway
    successor = with_successor(gw)
    token = await registered(gw)
    old = gw.deployment.sign_key(POLICE)
    made = statement(gw, POLICE, old.kid, successor)
    assert (await send(gw, carried(made))).status == 201
    # A later version that does not record it, and one that records it less strictly (a known
    # compromise time, later): the key stays revoked with every signature void.
    gw.clock.advance(60)
    relay = gw.built.runtime.relay
    lenient = successor_contents(gw, successor)
    keys = next(p.keys for p in lenient.partners if p.id == POLICE)
    for contents in (
        lenient,
        with_partner(
            lenient,
            POLICE,
            keys=tuple(
                msgspec.structs.replace(
                    k, revoked_at=gw.clock.now(), compromised_since=gw.clock.now()
                )
                if k.kid == old.kid
                else k
                for k in keys
            ),
        ),
    ):
        gw.use_directory(contents)
        _owner, key = relay.last_directory().key(old.kid)
        assert (key.revoked_at, key.compromised_since) == (made.revoked_at, None)
        assert_refused(await send(gw, submission(gw.seal(token))), Reason.KEY_REVOKED)


async def test_the_overlay_survives_a_restart(deployment: Deployment, tmp_path: Path) -> None:
    async with running(deployment, tmp_path) as gw:
        token = await registered(gw)
        made = statement(
            gw, VELSEN, gw.deployment.token_key(VELSEN).kid, gw.deployment.sign_key(VELSEN)
        )
        assert (await send(gw, carried(made))).status == 201
    async with running(deployment, tmp_path) as gw:
        assert_refused(
            await send(gw, submission(gw.seal(token))), Reason.TOKEN_ISSUER_KEY_COMPROMISED
        )
        (listed,) = await (await gw.client(HALT)).key_revocations()
        assert listed["statement_hash"] == statement_hash(made)


async def test_every_recorded_statement_is_listed_for_partners_to_verify(gateway: Gw) -> None:
    gw = gateway
    client = await gw.client(HALT)
    assert await client.key_revocations() == []
    made = [
        statement(gw, VELSEN, gw.deployment.token_key(VELSEN).kid, gw.deployment.sign_key(VELSEN)),
        statement(gw, HALT, gw.deployment.encrypt_key(HALT).kid, gw.deployment.sign_key(HALT)),
    ]
    answers = [await client.submit_key_revocation(encode_revocation(m)) for m in made]
    listed = await client.key_revocations()
    assert listed == answers
    for document, expected in zip(listed, made, strict=True):
        got = as_statement(document)
        assert got == expected
        assert got.format == STATEMENT_FORMAT
        # What an adapter does: verify it against its own directory, trusting nothing else.
        verify_revocation(got, gw.directory, gw.clock.now())


# -- refusals, one named test per reason code ---------------------------------------------


async def refused_and_audited(gw: Gw, call: Call, reason: Reason) -> Answer:
    before = await audit_entries(gw)
    answer = await send(gw, call)
    assert_refused(answer, reason)
    after = await audit_entries(gw)
    assert len(after) == len(before) + 1
    assert (after[-1].decision, after[-1].reason, after[-1].sender) == (
        AuditDecision.REFUSED,
        reason.value,
        call.partner,
    )
    assert await (await gw.client(call.partner)).key_revocations() == []
    return answer


async def test_key_revocation_malformed(gateway: Gw) -> None:
    gw = gateway
    for body in (b"{not json", b"{}", b'{"format": "ketenpost/v1/key-revocation"}'):
        await refused_and_audited(gw, carried(body), Reason.KEY_REVOCATION_MALFORMED)
    # Impossible times: revoked beyond the clock skew in the future.
    sign = gw.deployment.sign_key(HALT)
    kid = gw.deployment.encrypt_key(HALT).kid
    later = statement(gw, HALT, kid, sign, revoked_at=gw.clock.now() + DAY)
    await refused_and_audited(gw, carried(later), Reason.KEY_REVOCATION_MALFORMED)


async def test_key_revocation_unknown_key(gateway: Gw) -> None:
    gw = gateway
    sign = gw.deployment.sign_key(HALT)
    unknown = statement(gw, HALT, "ab" * 32, sign)
    await refused_and_audited(gw, carried(unknown), Reason.KEY_REVOCATION_UNKNOWN_KEY)
    unlisted = statement(
        gw, HALT, gw.deployment.encrypt_key(HALT).kid, Ed25519KeyPair.generate(KeyUse.SIGN)
    )
    await refused_and_audited(gw, carried(unlisted), Reason.KEY_REVOCATION_UNKNOWN_KEY)


def _forged(gw: Gw, name: str) -> KeyRevocation:
    """Statements whose signer is not another usable sign key of the revoked key's partner."""
    now = gw.clock.now()
    halt_sign = gw.deployment.sign_key(HALT)
    if name == "another-partners-key":
        return statement(gw, POLICE, gw.deployment.encrypt_key(POLICE).kid, halt_sign)
    if name == "names-another-partner":
        return statement(gw, POLICE, gw.deployment.encrypt_key(HALT).kid, halt_sign)

    def raw(partner: str, kid: str, key: Ed25519KeyPair) -> KeyRevocation:
        # Made by hand: ``sign_revocation`` itself refuses to make these.
        unsigned = KeyRevocation(STATEMENT_FORMAT, partner, kid, now, None, key.kid, b"")
        return msgspec.structs.replace(unsigned, signature=key.sign(unsigned.signed_bytes()))

    if name == "signs-its-own-revocation":
        return raw(HALT, halt_sign.kid, halt_sign)
    assert name == "a-token-key-signs"
    return raw(VELSEN, gw.deployment.sign_key(VELSEN).kid, gw.deployment.token_key(VELSEN))


@pytest.mark.parametrize(
    "name",
    [
        "another-partners-key",
        "names-another-partner",
        "signs-its-own-revocation",
        "a-token-key-signs",
    ],
)
async def test_key_revocation_signer_invalid(gateway: Gw, name: str) -> None:
    await refused_and_audited(
        gateway, carried(_forged(gateway, name)), Reason.KEY_REVOCATION_SIGNER_INVALID
    )


async def test_key_revocation_signer_invalid_once_the_signer_is_revoked(gateway: Gw) -> None:
    # A thief holding one sign key cannot fight back with it once the partner revoked it.
    gw = gateway
    successor = with_successor(gw)
    old = gw.deployment.sign_key(POLICE)
    assert (await send(gw, carried(statement(gw, POLICE, old.kid, successor)))).status == 201
    back = statement(gw, POLICE, successor.kid, old)
    answer = await send(gw, carried(back))
    assert_refused(answer, Reason.KEY_REVOCATION_SIGNER_INVALID)
    assert len(await (await gw.client(HALT)).key_revocations()) == 1


async def test_a_statement_with_a_bad_signature_is_bad_revocation_signature(gateway: Gw) -> None:
    gw = gateway
    made = statement(gw, HALT, gw.deployment.encrypt_key(HALT).kid, gw.deployment.sign_key(HALT))
    flipped = msgspec.structs.replace(
        made, signature=bytes([made.signature[0] ^ 1]) + made.signature[1:]
    )
    await refused_and_audited(gw, carried(flipped), Reason.BAD_REVOCATION_SIGNATURE)


# -- replicas on one PostgreSQL -------------------------------------------------------------


@contextlib.asynccontextmanager
async def replicas(deployment: Deployment, tmp_path: Path) -> AsyncIterator[tuple[Gw, Gw]]:
    async with pg_schema() as target:
        await migrate(target)
        started: list[AsyncGenerator[Gw]] = []
        try:
            gws = []
            for name in ("a", "b"):
                generator = start_pg_gateway(deployment, tmp_path / name, target)
                assert isinstance(generator, AsyncGenerator)
                started.append(generator)
                gws.append(await anext(generator))
            yield gws[0], gws[1]
        finally:
            for generator in reversed(started):
                await generator.aclose()


@pytest.mark.postgres
async def test_a_replica_learns_a_statement_from_the_store_and_purges_what_it_let_in(
    deployment: Deployment, tmp_path: Path
) -> None:
    async with replicas(deployment, tmp_path) as (a, b):
        token = await registered(a)
        (first,) = await queued(b, token)  # b read the (empty) set of statements here
        made = statement(
            a, VELSEN, a.deployment.token_key(VELSEN).kid, a.deployment.sign_key(VELSEN)
        )
        assert (await send(a, carried(made))).status == 201
        assert await purge_events(a) == [first]
        # Within REVOCATION_POLL_S, b has not read the statement yet: what it accepts now is
        # void by the statement's own times ...
        (late,) = await queued(b, token)
        # ... and purged as soon as b reads it (here: at the next lease, once the poll is due).
        b.clock.advance(int(REVOCATION_POLL_S))
        assert await halt_receives(b) == []
        assert await purge_events(b) == [late]
        assert_refused(
            await send(b, submission(b.seal(token))), Reason.TOKEN_ISSUER_KEY_COMPROMISED
        )
        # The same statement carried to the other replica: recorded once, the same answer.
        again = await send(b, carried(made, by=POLICE))
        assert again.status == 200
        assert again.document["carried_by"] == "om"
        rows = await relay_store(b).key_revocations()
        assert [r.statement_hash for r in rows] == [statement_hash(made)]


# -- the command line ---------------------------------------------------------------------


def cli(*argv: str | Path) -> int:
    return ketenpost.main([str(a) for a in argv])


async def test_keys_revoke_self_submits_to_the_gateway(
    gateway: Gw, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = gateway
    token = await registered(gw)
    (waiting,) = await queued(gw, token)
    folder = gw.deployment.partner_dir(VELSEN)
    kid = gw.deployment.token_key(VELSEN).kid
    signer = gw.deployment.sign_key(VELSEN).kid
    argv: list[str | Path] = [
        "keys", "revoke", "--self", "--partner-dir", folder, "--kid", kid,
        "--signing-kid", signer, "--compromise-unknown", "--now", str(gw.clock.now()),
        "--gateway", gw.url,
    ]  # fmt: skip
    code = await asyncio.to_thread(cli, *argv, "--out", tmp_path / "r1.json")
    out = capsys.readouterr()
    assert code == 0, out.err
    report = json.loads(out.out)
    assert report["gateway"]["kid"] == kid
    assert report["gateway"]["carried_by"] == VELSEN
    assert "acts on it from now on" in out.err
    assert await purge_events(gw) == [waiting]
    # The same statement (same --now) again: recorded before, the same document.
    code = await asyncio.to_thread(cli, *argv, "--out", tmp_path / "r2.json")
    again = capsys.readouterr()
    assert code == 0, again.err
    assert json.loads(again.out)["gateway"] == report["gateway"]


async def test_keys_revoke_self_refused_by_the_gateway_exits_3(
    gateway: Gw, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = gateway
    # The gateway's directory lacks halt's encrypt key (the partner's own lists it).
    contents = gw.directory.contents
    keys = next(p.keys for p in contents.partners if p.id == HALT)
    kid = gw.deployment.encrypt_key(HALT).kid
    gw.use_directory(with_partner(contents, HALT, keys=tuple(k for k in keys if k.kid != kid)))
    out_file = tmp_path / "halt.json"
    code = await asyncio.to_thread(
        cli,
        "keys", "revoke", "--self", "--partner-dir", gw.deployment.partner_dir(HALT),
        "--kid", kid, "--signing-kid", gw.deployment.sign_key(HALT).kid,
        "--compromise-unknown", "--out", out_file, "--gateway", gw.url,
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 3
    assert "ketenpost: error: refused: key_revocation_unknown_key:" in err
    assert out_file.exists()  # the statement is kept, to hand to the officers


async def test_keys_revoke_self_needs_the_partner_listener(
    gateway: Gw, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = gateway
    out_file = tmp_path / "halt.json"
    code = await asyncio.to_thread(
        cli,
        "keys", "revoke", "--self", "--partner-dir", gw.deployment.partner_dir(HALT),
        "--kid", gw.deployment.encrypt_key(HALT).kid,
        "--signing-kid", gw.deployment.sign_key(HALT).kid,
        "--compromise-unknown", "--out", out_file, "--gateway", gw.operator_url,
    )  # fmt: skip
    assert code == 1
    assert "partner listener" in capsys.readouterr().err
    assert not out_file.exists()


async def test_a_statement_recorded_while_an_envelope_is_judged_is_never_overtaken(
    gateway: Gw,
) -> None:
    # The envelope's signature is checked before the statement is recorded; its store
    # transaction runs after. The transaction's own check refuses it.
    gw = gateway
    successor = with_successor(gw)
    token = await registered(gw)
    relay = gw.built.runtime.relay
    store = gw.store
    accept = store.accept
    made = statement(gw, POLICE, gw.deployment.sign_key(POLICE).kid, successor)
    om = gw.directory.partner("om")

    async def statement_first(sub: Submission, check: TokenCheck) -> Accepted:
        await relay.record_key_revocation(encode_revocation(made), om)
        return await accept(sub, check)

    store.accept = statement_first  # type: ignore[method-assign]
    try:
        assert_refused(await send(gw, submission(gw.seal(token))), Reason.KEY_REVOKED)
    finally:
        store.accept = accept  # type: ignore[method-assign]
    assert await halt_receives(gw) == []
