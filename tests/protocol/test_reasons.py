"""Refusal reason codes: one enum, each with a meaning, a status and a unique problem type."""

from __future__ import annotations

import re

import pytest

from gateway.protocol.errors import ProtocolError, TokenError
from gateway.protocol.reasons import (
    PROBLEM_TYPE_BASE,
    REASON_INFO,
    Reason,
    RejectionReason,
    problem,
    reasons_markdown,
)

# DESIGN.md "The relay decision" names these transient; the others it names are final.
DESIGN_TRANSIENT = {
    Reason.RATE_LIMITED: 429,
    Reason.TOKEN_NOT_REGISTERED: 409,
    Reason.DIRECTORY_CHANGING: 503,
    Reason.STORE_UNAVAILABLE: 503,
    Reason.AUDIT_UNAVAILABLE: 503,
    Reason.DIRECTORY_EXPIRED: 503,
}

# The codes the brief and DESIGN.md require to exist (a rename breaks partners' logs).
REQUIRED = [
    "envelope_too_large",
    "too_many_recipients",
    "rate_limited",
    "malformed_envelope",
    "unknown_version",
    "unknown_suite",
    "sender_mismatch",
    "unknown_sender",
    "bad_signature",
    "key_not_yet_active",
    "key_retired",
    "key_revoked",
    "key_compromised",
    "created_in_future",
    "expired",
    "duplicate_id",
    "no_token",
    "token_not_registered",
    "token_bad_signature",
    "token_issuer_not_coordinator",
    "token_issuer_not_coordinating_municipality",
    "token_not_yet_valid",
    "token_expired",
    "token_revoked",
    "token_superseded",
    "expires_after_token",
    "subject_not_in_token",
    "subject_not_informed",
    "sender_not_participant",
    "recipient_not_participant",
    "type_not_allowed",
    "recipient_key_invalid",
    "unknown_recipient",
    "policy_mismatch",
    "directory_expired",
    "directory_changing",
    "store_unavailable",
    "audit_unavailable",
    "bad_receipt_signature",
    "not_recipient",
    "cannot_open",
    "schema_invalid",
    "policy_check_failed",
]


def test_every_reason_has_info() -> None:
    assert set(REASON_INFO) == set(Reason)


@pytest.mark.parametrize("reason", list(Reason), ids=[r.value for r in Reason])
def test_reason_is_well_formed(reason: Reason) -> None:
    assert re.fullmatch(r"[a-z][a-z0-9_]*", reason.value)
    assert reason.meaning.strip() == reason.meaning
    assert reason.meaning.endswith(".")
    assert "\n" not in reason.meaning
    assert 10 < len(reason.meaning) <= 100
    assert reason.status in {400, 401, 403, 404, 409, 413, 422, 429, 500, 503}
    assert reason.type_uri == f"{PROBLEM_TYPE_BASE}{reason.value}"


def test_type_uris_and_meanings_unique() -> None:
    assert len({r.type_uri for r in Reason}) == len(Reason)
    assert len({r.meaning for r in Reason}) == len(Reason)
    assert PROBLEM_TYPE_BASE == "https://ketenpost.nl/problems/"


def test_required_codes_exist() -> None:
    assert set(REQUIRED) <= {r.value for r in Reason}


@pytest.mark.parametrize(
    ("reason", "status"), DESIGN_TRANSIENT.items(), ids=[r.value for r in DESIGN_TRANSIENT]
)
def test_transient_reasons(reason: Reason, status: int) -> None:
    assert reason.transient
    assert reason.status == status


@pytest.mark.parametrize(
    "reason",
    [
        Reason.BAD_SIGNATURE,
        Reason.TOKEN_REVOKED,
        Reason.TYPE_NOT_ALLOWED,
        Reason.DUPLICATE_ID,
        Reason.KEY_COMPROMISED,
        Reason.POLICY_MISMATCH,
    ],
    ids=lambda r: r.value,
)
def test_final_reasons(reason: Reason) -> None:
    assert not reason.transient


def test_status_of_size_and_duplicates() -> None:
    assert Reason.ENVELOPE_TOO_LARGE.status == 413
    assert Reason.DUPLICATE_ID.status == 409


def test_rejection_reasons_are_reasons() -> None:
    for rejection in RejectionReason:
        assert rejection.reason.value == rejection.value
    assert {"cannot_open", "schema_invalid", "policy_check_failed"} <= {
        r.value for r in RejectionReason
    }


def test_problem_document() -> None:
    doc = problem(Reason.RATE_LIMITED, "30 per second", instance="/v1/messages")
    assert doc == {
        "type": "https://ketenpost.nl/problems/rate_limited",
        "title": Reason.RATE_LIMITED.meaning,
        "status": 429,
        "detail": "30 per second",
        "instance": "/v1/messages",
        "reason": "rate_limited",
        "transient": True,
    }
    assert "detail" not in problem(Reason.BAD_SIGNATURE)


def test_markdown_lists_every_reason() -> None:
    text = reasons_markdown()
    for reason in Reason:
        assert f"| `{reason.value}` | {reason.status} |" in text
    assert PROBLEM_TYPE_BASE in text


def test_errors_carry_reasons() -> None:
    error = TokenError("x", Reason.TOKEN_NOT_REGISTERED)
    assert isinstance(error, ProtocolError)
    assert error.reason is Reason.TOKEN_NOT_REGISTERED
    assert error.transient
    assert TokenError("x").reason is Reason.TOKEN_BAD_SIGNATURE
