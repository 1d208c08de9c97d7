"""A gateway that lies: a double on 127.0.0.1 with the real gateway's certificate.

The adapter must not believe it: a message the covenant forbids is rejected, inconsistent
checkpoints raise the witness alarm, and a forged acceptance receipt is never taken as one.

``FakeLog`` is the double's own audit log — a real Merkle tree, the relay's acceptance entries,
checkpoints and receipts signed with the gateway's real key — so a delivery can carry the
acceptance receipt a recipient checks before it opens anything
(tests/adapters/test_delivery_acceptance.py tampers with those).
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

import msgspec
import pytest

from adapters.engine import AlarmKind
from gateway.config import DEFAULT_ORIGIN
from gateway.protocol.auditentry import AuditDecision, AuditEntry, seal_entry
from gateway.protocol.checkpoint import make_checkpoint
from gateway.protocol.envelope import decode_envelope
from gateway.protocol.merkle import InMemoryNodeStore, MerkleLog, leaf_hash, node_hash
from gateway.protocol.reasons import RejectionReason
from gateway.protocol.receipts import AcceptanceReceipt, sign_acceptance_receipt, verify_rejection
from gateway.protocol.signed import SignedObject
from gateway.protocol.types import MessageType
from keys import Ed25519KeyPair, KeyUse
from keys.keyfile import load_ed25519_key
from tests.adapters.conftest import BSN_A, FakeGateway, Net, b64
from tests.adapters.test_engine_e2e import signal_event


def gateway_key(net: Net) -> Ed25519KeyPair:
    return load_ed25519_key(net.deployment.root / "gateway" / "sign.key", KeyUse.SIGN)


def note(net: Net, size: int, root: bytes) -> str:
    return make_checkpoint(DEFAULT_ORIGIN, size, root, DEFAULT_ORIGIN, gateway_key(net))


def acceptance_entry(envelope: bytes, accepted_at: int) -> AuditEntry:
    """What the relay records for this envelope's acceptance."""
    decoded = decode_envelope(envelope)
    header = decoded.header
    return AuditEntry(
        time=accepted_at,
        decision=AuditDecision.ACCEPTED,
        sender=header.sender,
        recipients=tuple(r.partner for r in header.recipients),
        message_type=header.message_type,
        token_id=header.token_id,
        subjects=tuple(header.subjects),
        policy_hash="ab" * 32,
        header_hash=decoded.header_hash.hex(),
        trace_id=header.trace_id.split("-")[1],
    )


class FakeLog:
    """The double's audit log, signed with ``key`` (the gateway's real one): ``filler``
    leaves of other messages first, then each ``accept`` appends the envelope's acceptance
    entry and returns its signed receipt (the wire bytes), with the inclusion proof against
    a checkpoint of the tree just after."""

    def __init__(self, key: Ed25519KeyPair, filler: int = 1) -> None:
        self.key = key
        self.tree = MerkleLog(InMemoryNodeStore())
        for i in range(filler):
            self.tree.append(leaf_hash(b"entry-%d" % i))

    def head(self) -> str:
        """The checkpoint of the tree as it is now (what ``GET /v1/audit/checkpoint`` says)."""
        root = self.tree.root()
        return make_checkpoint(DEFAULT_ORIGIN, self.tree.size, root, DEFAULT_ORIGIN, self.key)

    def accept(self, envelope: bytes, accepted_at: int) -> bytes:
        decoded = decode_envelope(envelope)
        sealed = seal_entry(acceptance_entry(envelope, accepted_at))
        index = self.tree.size
        self.tree.append(sealed.leaf_hash)
        receipt = AcceptanceReceipt(
            message_id=decoded.header.message_id,
            header_hash=decoded.header_hash.hex(),
            accepted_at=accepted_at,
            leaf_index=index,
            tree_size=self.tree.size,
            inclusion_proof=self.tree.inclusion_proof(index).hashes,
            checkpoint=self.head(),
            entry=sealed.entry_bytes,
            salt=sealed.salt,
        )
        return msgspec.msgpack.encode(sign_acceptance_receipt(receipt, self.key))

    def consistency(self, old_size: int, new_size: int) -> dict[str, Any]:
        """A ``GET /v1/audit/proof?from=&to=`` answer."""
        proof = self.tree.consistency_proof(old_size, new_size)
        return {"hashes": [b64(h) for h in proof.hashes]}


def delivery(envelope: bytes, receipt: bytes | None, accepted_at: int) -> dict[str, Any]:
    """One item of ``GET /v1/inbox``'s ``deliveries`` (``receipt`` ``None``: left out)."""
    header = decode_envelope(envelope).header
    item: dict[str, Any] = {
        "message_id": header.message_id,
        "sender": header.sender,
        "envelope": b64(envelope),
        "lease_until": accepted_at + 300,
        "attempts": 1,
        "accepted_at": accepted_at,
    }
    if receipt is not None:
        item["receipt"] = b64(receipt)
    return item


async def test_forbidden_message_is_rejected_not_applied(
    net: Net, fake_gateway: FakeGateway
) -> None:
    gw = net.gw
    token = gw.issue_token()
    # Youth care may not send a signal to Halt under the covenant; a dishonest gateway relays
    # it anyway, with a real token and a correctly sealed envelope.
    envelope = gw.seal(token, sender="cjg", to=("halt",), message_type=MessageType.SIGNAL)
    header = decode_envelope(envelope).header
    now = gw.clock.now()
    # Its acceptance is genuine (a receipt in the double's log): only the covenant says no.
    fake_gateway.deliveries = [
        delivery(envelope, FakeLog(gateway_key(net)).accept(envelope, now), now)
    ]
    fake_gateway.approaches[token.token_id] = {
        "token_id": token.token_id,
        "token": b64(token.body),
        "token_hash": token.token_hash,
        "registered_at": now,
        "revoked_at": None,
        "supersedes": None,
        "superseded_by": None,
    }
    halt = await net.adapter("halt", url=fake_gateway.url)
    result = await halt.receive_once()
    assert result.applied == []
    assert result.rejected == [header.message_id]
    assert net.system("halt").cases == {}
    [posted] = fake_gateway.posted_receipts
    assert posted["receipts"] == []
    signed = msgspec.msgpack.decode(base64.b64decode(posted["rejections"][0]), type=SignedObject)
    rejection = verify_rejection(signed, gw.directory, now=now, recipient="halt")
    assert rejection.reason is RejectionReason.POLICY_CHECK_FAILED
    assert halt.metrics.value("rejected_total", reason="policy_check_failed") == 1


CASES = {
    "fork at the same size": (
        (5, b"\x01" * 32),
        (5, b"\x02" * 32),
        "two different roots",
    ),
    "head shrinks": ((5, b"\x01" * 32), (3, b"\x02" * 32), "shrank"),
    "bad consistency proof": ((2, b"\x01" * 32), (4, b"\x02" * 32), "not consistent"),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_inconsistent_checkpoints_raise_the_witness_alarm(
    net: Net, fake_gateway: FakeGateway, case: str
) -> None:
    first, second, expected = CASES[case]
    fake_gateway.checkpoints = [note(net, *first), note(net, *second)]
    fake_gateway.proofs["from"] = {"hashes": [b64(secrets.token_bytes(32))]}
    halt = await net.adapter("halt", url=fake_gateway.url)
    await halt.witness_once()
    assert halt.store.alarms() == []
    await halt.witness_once()
    [alarm] = halt.store.alarms()
    assert alarm.kind == AlarmKind.WITNESS.value
    assert expected in alarm.detail
    assert halt.metrics.value("witness_inconsistency_total") == 1
    assert halt.health()["status"] == "alarm"
    # Both checkpoints are kept as the evidence.
    assert len(halt.store.checkpoints()) == 2


def _receipt(net: Net, envelope: bytes, key: Ed25519KeyPair, *, good_proof: bool) -> dict[str, Any]:
    decoded = decode_envelope(envelope)
    leaves = [leaf_hash(b"entry-0"), leaf_hash(b"entry-1")]
    root = node_hash(leaves[0], leaves[1])
    receipt = AcceptanceReceipt(
        message_id=decoded.header.message_id,
        header_hash=decoded.header_hash.hex(),
        accepted_at=net.gw.clock.now(),
        leaf_index=1,
        tree_size=2,
        inclusion_proof=(leaves[0] if good_proof else secrets.token_bytes(32),),
        checkpoint=note(net, 2, root),
    )
    return {
        "message_id": decoded.header.message_id,
        "receipt": b64(msgspec.msgpack.encode(sign_acceptance_receipt(receipt, key))),
        "leaf_index": 1,
        "first_time": True,
    }


RECEIPT_CASES = {
    "genuine": ("gateway", True, "accepted"),
    "signed by a stranger": ("stranger", True, "disputed"),
    "inclusion proof does not lead to the root": ("gateway", False, "disputed"),
}


@pytest.mark.parametrize("case", list(RECEIPT_CASES))
async def test_receipt_verification_catches_a_forged_receipt(
    net: Net, fake_gateway: FakeGateway, case: str
) -> None:
    signer, good_proof, state = RECEIPT_CASES[case]
    key = gateway_key(net) if signer == "gateway" else Ed25519KeyPair.generate(KeyUse.SIGN)
    fake_gateway.on_submit = lambda envelope: _receipt(net, envelope, key, good_proof=good_proof)
    fake_gateway.proofs["index"] = {
        "leaf_index": 1,
        "tree_size": 2,
        "leaf_hash": b64(leaf_hash(b"entry-1")),
        "hashes": [],
    }
    token = net.gw.issue_token()
    # These receipts carry no audit entry (the old-style check against the served leaf, which
    # an adapter does only when told to); tests/adapters/test_receipt_inclusion.py covers
    # receipts with their entry and the refusal of one without it.
    police = await net.adapter(
        "politie-ijmond", url=fake_gateway.url, require_receipt_entries=False
    )
    pseudonym = token.subjects[0]
    police.remember_token(token.signed, token.opening, {pseudonym: BSN_A})
    net.system("politie-ijmond").add_event("INC-1", signal_event([BSN_A], ["halt"]))
    await police.ingest_once()
    await police.send_once()
    [row] = police.store.outbox()
    assert row.state == state
    alarms = [a.kind for a in police.store.alarms()]
    assert alarms == ([] if state == "accepted" else [AlarmKind.RECEIPT.value])
