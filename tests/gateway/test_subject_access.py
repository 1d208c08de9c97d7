"""``audit subject`` and ``audit verify-report`` on a real run through the real gateway.

Two youths, each in an approach of their own; messages about both go through the gateway over
mTLS, halt confirms the signals it received. The report about youth A must list exactly the
entries about A (and the receipts and registrations that belong to them), nothing about B —
neither in the JSON (also not inside the entry bytes) nor in the Dutch HTML — and must verify
offline; every kind of tampering must make ``verify-report`` fail with its reason.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

import ketenpost
from adapters.client import GatewayClient, SubmitReceipt
from gateway.protocol.auditentry import AuditDecision
from gateway.protocol.checkpoint import NoteVerifierKey
from gateway.protocol.envelope import open_envelope
from gateway.protocol.policy import LegalBasis
from gateway.protocol.receipts import DeliveryReceipt, sign_delivery_receipt
from gateway.protocol.subject_report import (
    SubjectReport,
    SubjectReportError,
    SubjectReportReason,
    decode_report,
    encode_report,
    verify_report,
)
from gateway.protocol.token import TokenSubject
from gateway.protocol.types import MessageType, new_pseudonym
from gateway.signer import encode_signed_object
from gateway.subject_access import build_report, render_html
from keys import Ed25519KeyPair, KeyUse
from tests.gateway.conftest import DAY, Gw, Token


@dataclass
class Run:
    token_a: Token
    token_b: Token
    token_ac: Token
    about_a: list[SubmitReceipt]
    about_b: list[SubmitReceipt]
    about_both: SubmitReceipt

    @property
    def a(self) -> str:
        return self.token_a.subjects[0]

    @property
    def b(self) -> str:
        return self.token_b.subjects[0]


async def _confirm_all(gw: Gw, client: GatewayClient, partner: str) -> int:
    """Open every delivery waiting for ``partner`` and answer with a delivery receipt."""
    key = gw.deployment.encrypt_key(partner)
    receipts = []
    for d in (await client.inbox()).deliveries:
        opened = open_envelope(
            d.envelope,
            gw.directory,
            recipient=partner,
            encrypt_keys={key.kid: key},
            accepted_at=d.accepted_at,
            now=gw.clock.now(),
        )
        receipt = DeliveryReceipt(
            message_id=d.message_id,
            header_hash=opened.header_hash.hex(),
            recipient=partner,
            received_at=gw.clock.now(),
            plaintext_hash=hashlib.sha256(opened.body).hexdigest(),
        )
        signed = sign_delivery_receipt(receipt, gw.deployment.sign_key(partner))
        receipts.append(encode_signed_object(signed))
    if receipts:
        await client.send_receipts(receipts=receipts)
    return len(receipts)


async def _real_run(gw: Gw) -> Run:
    now = gw.clock.now()
    a, b, c = (TokenSubject(pseudonym=new_pseudonym(), informed_at=now - DAY) for _ in range(3))
    token_a = gw.issue_token(subjects=(a,))
    token_b = gw.issue_token(subjects=(b,))
    # A group approach with youth A and a third youth C: an entry naming both.
    token_ac = gw.issue_token(subjects=(a, c))
    velsen = await gw.client("gemeente-velsen")
    for token in (token_a, token_b, token_ac):
        await velsen.register_token(token.body)
    police = await gw.client("politie-ijmond")
    halt = await gw.client("halt")
    about_a = [
        await police.submit(gw.seal(token_a)),
        await halt.submit(
            gw.seal(
                token_a,
                sender="halt",
                to=("gemeente-velsen",),
                message_type=MessageType.PROGRESS,
            )
        ),
    ]
    about_b = [await police.submit(gw.seal(token_b))]
    about_both = await police.submit(gw.seal(token_ac))
    # Halt confirms the three signals: delivery receipts for A's, B's and the group's.
    assert await _confirm_all(gw, halt, "halt") == 3
    return Run(token_a, token_b, token_ac, about_a, about_b, about_both)


async def _report(gw: Gw, run: Run, *, full: bool = False) -> SubjectReport:
    return await build_report(
        gw.store,
        gw.directory,
        [run.a],
        origin=gw.built.config.gateway.origin,
        now=gw.clock.now(),
        full_evidence=full,
    )


def _gateway_key(gw: Gw) -> NoteVerifierKey:
    return NoteVerifierKey(gw.built.config.gateway.origin, gw.directory.gateway.keys[0].public)


async def test_report_lists_exactly_the_entries_about_the_subject(gateway: Gw) -> None:
    gw = gateway
    run = await _real_run(gw)
    report = await _report(gw, run)
    by_decision: dict[AuditDecision, set[int]] = {}
    for row in report.rows:
        by_decision.setdefault(row.decision, set()).add(row.leaf_index)
        assert row.subjects in ((), (run.a,))
    # The two messages about A, and the group message about A and C: nothing about B.
    assert by_decision[AuditDecision.ACCEPTED] == {
        r.leaf_index for r in (*run.about_a, run.about_both)
    }
    # Both of A's approaches registered; B's not.
    registered = [r for r in report.rows if r.decision is AuditDecision.REGISTERED]
    assert {r.token_id for r in registered} == {run.token_a.token_id, run.token_ac.token_id}
    # Halt's receipts for the signal about A and the group signal; not the one about B.
    delivered = [r for r in report.rows if r.decision is AuditDecision.DELIVERED]
    accepted_headers = {r.header_hash for r in report.rows if r.decision is AuditDecision.ACCEPTED}
    assert len(delivered) == 2
    assert all(r.header_hash in accepted_headers for r in delivered)
    assert {a.token_id for a in report.approaches} >= {run.token_a.token_id}
    assert run.token_b.token_id not in {a.token_id for a in report.approaches}
    # The legal bases shown are those of the policy the entries name (the current one).
    signal = next(r for r in report.rows if r.leaf_index == run.about_a[0].leaf_index)
    assert signal.policy_current
    assert [p.partner for p in signal.parties] == ["politie-ijmond", "halt"]
    assert all(p.legal_basis for p in signal.parties)


async def test_nothing_about_another_youth_in_json_or_html(gateway: Gw) -> None:
    gw = gateway
    run = await _real_run(gw)
    report = await _report(gw, run)
    data = encode_report(report)
    page = render_html(report)
    # Youth C shares A's group approach: its entries name C, whom the report must not reveal.
    (c,) = set(run.token_ac.subjects) - {run.a}
    others = [run.b, run.token_b.token_id, c]
    entries = [r.evidence.entry for r in report.rows if r.evidence.entry is not None]
    for other in others:
        assert other.encode() not in data
        assert other not in page
        assert all(other.encode() not in e for e in entries)
    # Entries naming C are listed, their inclusion proven, their bytes withheld.
    withheld = [r for r in report.rows if r.evidence.withheld]
    assert {r.leaf_index for r in withheld} >= {run.about_both.leaf_index}
    assert run.a in page
    # With full evidence (for a supervisor) the group entries are included, C with them.
    full = await _report(gw, run, full=True)
    assert not any(r.evidence.withheld for r in full.rows)
    assert c.encode() in b"".join(r.evidence.entry or b"" for r in full.rows)
    verify_report(encode_report(full), gateway_key=_gateway_key(gw))


async def test_html_is_dutch_self_contained_and_escaped(gateway: Gw) -> None:
    gw = gateway
    run = await _real_run(gw)
    report = await _report(gw, run)
    page = render_html(report)
    assert '<html lang="nl">' in page
    assert "Overzicht van gedeelde gegevens" in page
    assert "signaal" in page
    assert "voortgangsbericht" in page
    assert "politie" in page
    assert "Halt" in page
    assert "@media print" in page
    for external in ("<script", "src=", "href=", "@import", "url("):
        assert external not in page
    hostile = msgspec.structs.replace(report, policy_name='<script>alert("x")</script>')
    assert "<script>" not in render_html(hostile)
    assert "&lt;script&gt;" in render_html(hostile)


# -- verify-report -----------------------------------------------------------------------------


def _accepted(doc: dict[str, Any], run: Run) -> dict[str, Any]:
    row: dict[str, Any] = next(
        r for r in doc["rows"] if r["leaf_index"] == run.about_a[0].leaf_index
    )
    return row


def _flip(b64: str) -> str:
    raw = bytearray(base64.b64decode(b64))
    raw[len(raw) // 2] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def _sender(doc: dict[str, Any], run: Run) -> None:
    _accepted(doc, run)["sender"] = "om"


def _entry(doc: dict[str, Any], run: Run) -> None:
    ev = _accepted(doc, run)["evidence"]
    ev["entry"] = _flip(ev["entry"])


def _salt(doc: dict[str, Any], run: Run) -> None:
    ev = _accepted(doc, run)["evidence"]
    ev["salt"] = _flip(ev["salt"])


def _proof(doc: dict[str, Any], run: Run) -> None:
    hashes = _accepted(doc, run)["evidence"]["proof"]["hashes"]
    hashes[0] = _flip(hashes[0])


def _checkpoint(doc: dict[str, Any], run: Run) -> None:
    ev = _accepted(doc, run)["evidence"]
    origin, size, root, rest = ev["checkpoint"].split("\n", 3)
    ev["checkpoint"] = "\n".join([origin, size, _flip(root), rest])


def _subject_added(doc: dict[str, Any], run: Run) -> None:
    _accepted(doc, run)["subjects"] = [run.a, run.b]


def _message_type(doc: dict[str, Any], run: Run) -> None:
    _accepted(doc, run)["message_type"] = "closure"


def _basis(doc: dict[str, Any], run: Run) -> None:
    _accepted(doc, run)["parties"][0]["legal_basis"] = [
        msgspec.to_builtins(LegalBasis(text="Toestemming.", reference="AVG art. 6 lid 1 sub a"))
    ]


def _foreign_row(doc: dict[str, Any], run: Run) -> None:
    # A receipt row that belongs to no message about the subject.
    receipt = next(r for r in doc["rows"] if r["decision"] == "delivered")
    receipt["header_hash"] = "0" * 64


TAMPERING: list[tuple[str, Callable[[dict[str, Any], Run], None], SubjectReportReason]] = [
    ("row field changed", _sender, SubjectReportReason.ROW_MISMATCH),
    ("message type changed", _message_type, SubjectReportReason.ROW_MISMATCH),
    ("another subject added", _subject_added, SubjectReportReason.ROW_MISMATCH),
    ("entry bytes changed", _entry, SubjectReportReason.ENTRY_MISMATCH),
    ("salt changed", _salt, SubjectReportReason.ENTRY_MISMATCH),
    ("proof changed", _proof, SubjectReportReason.PROOF_MISMATCH),
    ("checkpoint changed", _checkpoint, SubjectReportReason.CHECKPOINT_INVALID),
    ("legal basis changed", _basis, SubjectReportReason.BASIS_MISMATCH),
    ("receipt of another message", _foreign_row, SubjectReportReason.ROW_MISMATCH),
]


async def test_verify_report_passes_on_the_real_report(gateway: Gw) -> None:
    gw = gateway
    run = await _real_run(gw)
    data = encode_report(await _report(gw, run))
    check = verify_report(data, gateway_key=_gateway_key(gw))
    assert check.rows == len(decode_report(data).rows)
    assert check.entries_verified + check.withheld == check.rows
    assert check.withheld >= 1
    assert verify_report(data, directory=gw.directory).rows == check.rows


@pytest.mark.parametrize(("name", "tamper", "reason"), TAMPERING, ids=[t[0] for t in TAMPERING])
async def test_verify_report_fails_on_tampering(
    gateway: Gw,
    name: str,
    tamper: Callable[[dict[str, Any], Run], None],
    reason: SubjectReportReason,
) -> None:
    gw = gateway
    run = await _real_run(gw)
    doc = json.loads(encode_report(await _report(gw, run)))
    tamper(doc, run)
    with pytest.raises(SubjectReportError) as caught:
        verify_report(json.dumps(doc).encode(), directory=gw.directory)
    assert caught.value.reason is reason, name


async def test_verify_report_fails_with_another_gateway_key(gateway: Gw) -> None:
    gw = gateway
    run = await _real_run(gw)
    data = encode_report(await _report(gw, run))
    other = Ed25519KeyPair.generate(KeyUse.SIGN)
    impostor = NoteVerifierKey(gw.built.config.gateway.origin, other.public)
    with pytest.raises(SubjectReportError) as caught:
        verify_report(data, gateway_key=impostor)
    assert caught.value.reason is SubjectReportReason.CHECKPOINT_INVALID


async def test_command_line_subject_and_verify_report(gateway: Gw, tmp_path: Path) -> None:
    gw = gateway
    run = await _real_run(gw)
    out = tmp_path / "inzage"
    root = gw.deployment.root
    argv = [
        "audit",
        "subject",
        run.a,
        "--config",
        str(root / "gateway.toml"),
        "--store",
        f"sqlite://{gw.db}",
        "--out",
        str(out),
    ]
    assert await asyncio.to_thread(ketenpost.main, argv) == 0
    report = out / "inzage.json"
    assert (out / "inzage.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert report.stat().st_mode & 0o777 == 0o600
    # Never overwritten.
    assert await asyncio.to_thread(ketenpost.main, argv) == 1
    verify = ["audit", "verify-report", str(report), "--directory", str(root / "directory")]
    assert ketenpost.main(verify) == 0
    doc = json.loads(report.read_bytes())
    _sender(doc, run)
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(doc), encoding="utf-8")
    assert ketenpost.main([*verify[:2], str(tampered), *verify[3:]]) == 1
