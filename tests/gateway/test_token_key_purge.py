"""Queued messages under tokens a revoked ``token`` key voids are purged at once (issue 6).

The officers revoke a coordinator's token key in a new directory version; before the next
inbox lease the gateway purges every undelivered message under the tokens the key voids (those
registered from ``compromised_since`` on, all of them when that is unknown), each with a
``purged`` audit entry (``token_issuer_key_compromised``) and a ``purge`` sender event. On both
backends: the SQLite gateway of ``conftest`` and one on the real PostgreSQL.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

import pytest

from gateway.protocol.auditentry import AuditDecision, decode_entry
from gateway.protocol.reasons import Reason
from keys import KeyUse
from tests.gateway._pg import pg_schema
from tests.gateway._pg_gateway import migrate, relay_store, start_pg_gateway
from tests.gateway.conftest import Deployment, Gw, start_gateway
from tests.gateway.test_relay_reasons import (
    assert_refused,
    registered,
    send,
    submission,
    with_key,
)
from tests.gateway.test_self_revocation import HALT, POLICE, VELSEN, halt_receives, queued


@contextlib.asynccontextmanager
async def gateway_on(backend: str, deployment: Deployment, tmp_path: Path) -> AsyncIterator[Gw]:
    async with contextlib.AsyncExitStack() as stack:
        if backend == "sqlite":
            generator = start_gateway(deployment, tmp_path)
        else:
            target = await stack.enter_async_context(pg_schema())
            await migrate(target)
            generator = start_pg_gateway(deployment, tmp_path, target)
        assert isinstance(generator, AsyncGenerator)
        stack.push_async_callback(generator.aclose)
        yield await anext(generator)


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
@pytest.mark.parametrize("known", [True, False], ids=["compromise-known", "compromise-unknown"])
async def test_a_revoked_token_key_purges_the_queue_of_the_tokens_it_voids(
    backend: str, known: bool, deployment: Deployment, tmp_path: Path
) -> None:
    async with gateway_on(backend, deployment, tmp_path) as gw:
        early = await registered(gw)
        early_ids = await queued(gw, early, 2)
        gw.clock.advance(100)
        since = gw.clock.now()
        late = await registered(gw)  # registered at the compromise time: void
        late_ids = await queued(gw, late, 2)
        gw.clock.advance(10)
        gw.use_directory(
            with_key(
                gw,
                VELSEN,
                KeyUse.TOKEN,
                revoked_at=gw.clock.now(),
                compromised_since=since if known else None,
            )
        )
        kept = early_ids if known else []
        assert sorted(await halt_receives(gw)) == sorted(kept)
        purged = set(late_ids) | (set() if known else set(early_ids))
        events = (await (await gw.client(POLICE)).inbox()).events
        assert {e.kind for e in events} == {"purge"}
        assert {e.message_id for e in events} == purged
        leaves = await relay_store(gw).audit_leaves()
        entries = [decode_entry(entry) for _i, _leaf, entry, _salt in leaves if entry]
        ended = [e for e in entries if e.decision is AuditDecision.PURGED]
        assert len(ended) == len(purged)
        assert {(e.reason, e.sender, e.recipients) for e in ended} == {
            (Reason.TOKEN_ISSUER_KEY_COMPROMISED.value, POLICE, (HALT,))
        }
        # New messages under a void token are refused; under one it leaves standing, accepted.
        assert_refused(
            await send(gw, submission(gw.seal(late))), Reason.TOKEN_ISSUER_KEY_COMPROMISED
        )
        answer = await send(gw, submission(gw.seal(early)))
        if known:
            assert answer.status == 202, answer.document
        else:
            assert_refused(answer, Reason.TOKEN_ISSUER_KEY_COMPROMISED)
