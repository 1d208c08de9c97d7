"""JSON over HTTP to a partner system's REST API (private to ``adapters.partners``; used by the
police and CJG adapters).

The rules kept here, whatever the partner's own document shapes:

* **One session per transport**, opened on first use and shared by source and destination;
  ``Source.close`` closes it (the SDK has no close hook on ``Destination``).
* **Every POST is idempotent**: it carries ``Idempotency-Key`` (the message id for an inbound
  message, ``refusal_key`` for a refusal report) and the partner system deduplicates on it, so
  a POST repeated after a lost answer changes nothing.
* **Errors map to what the SDK must do** (``check_answer``): connection failures, timeouts,
  ``5xx``, ``408``/``425``/``429`` are transient (``DestinationUnavailableError``: delivered
  again), and so are ``401``/``403``/``404``/``405``, which mean our configuration or theirs is
  wrong and a person must look — rejecting the message for good would lose it. Any other ``4xx``
  is a final refusal (``DestinationRejectedError``) with the partner's reason. A refusal report
  the partner cannot take is always asked again later; there is nothing to reject.
* **Links come from the partner.** The partner system matches the persons of an
  approach-notice in its own register and answers ``koppelingen``; only links for the
  message's subjects are taken (``couplings``).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Mapping
from typing import Any, Final

import aiohttp

from adapters.base import (
    DestinationRejectedError,
    DestinationUnavailableError,
    InboundMessage,
    Refusal,
)
from gateway.protocol.messages import ApproachNotice
from gateway.protocol.reasons import RejectionReason

# Status codes that say "not now" rather than "not this message".
TRANSIENT_4XX: Final = frozenset({401, 403, 404, 405, 408, 425, 429})
# Of those, the ones that mean a URL, a token or a permission is wrong on one side.
MISCONFIGURED: Final = frozenset({401, 403, 404, 405})


class JsonHttp:
    """One aiohttp session for a transport's source and destination, opened on first use.

    ``system`` names the partner system in error messages (``"police system"``)."""

    def __init__(self, system: str, *, timeout_s: float, connect_timeout_s: float) -> None:
        self.system = system
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=connect_timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(
        self,
        url: str,
        document: Mapping[str, Any],
        idempotency_key: str,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        """POST JSON; (status, decoded JSON answer or ``None``). Connection failures and
        timeouts raise ``DestinationUnavailableError``."""
        sent = {"Accept": "application/json", **(headers or {}), "Idempotency-Key": idempotency_key}
        try:
            async with self.session().post(url, json=document, headers=sent) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise DestinationUnavailableError(
                f"{self.system} unreachable: {type(exc).__name__}: {exc}"
            ) from None
        try:
            answer = json.loads(raw) if raw else None
        except ValueError:
            answer = None
        return status, answer


def reason_text(answer: object) -> str:
    """The partner's ``reden`` and ``toelichting``, for a report (at most 500 characters)."""
    if isinstance(answer, dict):
        return ": ".join(str(answer[k]) for k in ("reden", "toelichting") if answer.get(k))[:500]
    return ""


def check_answer(
    status: int,
    answer: object,
    *,
    system: str,
    what: str,
    on_misconfigured: Callable[[str], None] | None = None,
) -> None:
    """Raise for a non-2xx answer to ``what``: transient or final (see the module docstring).
    ``on_misconfigured`` is told the detail first when the status means a configuration is
    wrong, for an adapter that wants a person to see it in the log."""
    if 200 <= status < 300:
        return
    detail = f"{system} answered {status} to {what}"
    if reason := reason_text(answer):
        detail = f"{detail}: {reason}"
    if status >= 500 or status in TRANSIENT_4XX or status < 400:
        if status in MISCONFIGURED and on_misconfigured is not None:
            on_misconfigured(detail)
        raise DestinationUnavailableError(detail)
    named = answer.get("reden") if isinstance(answer, dict) else None
    try:
        rejection = RejectionReason(named if isinstance(named, str) else "")
    except ValueError:
        # The partner's own reason is in the detail; the covenant's closest code is "schema
        # invalid" for a message it cannot take in.
        rejection = RejectionReason.SCHEMA_INVALID
    raise DestinationRejectedError(rejection, detail)


def refusal_key(refusal: Refusal) -> str:
    """The ``Idempotency-Key`` of a refusal report: one report per refusal, however often
    the SDK asks."""
    return f"{refusal.message_id}:{refusal.by}:{refusal.recipient or ''}"


def check_refusal_answer(status: int, answer: object, *, system: str) -> None:
    """``DestinationUnavailableError`` unless the refusal report was taken (2xx)."""
    if not 200 <= status < 300:
        raise DestinationUnavailableError(
            f"{system} answered {status} to a refusal report: {reason_text(answer)}"
        )


def _iso(unix: int) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).isoformat()


def envelope(message: InboundMessage, subjects_key: str, local_key: str) -> dict[str, Any]:
    """A Dutch envelope around the covenant message as sent: each subject under
    ``subjects_key`` with the partner's own id (``local_key``) when known, and for an
    approach-notice the identifying details (``personen``) the partner matches on."""
    doc: dict[str, Any] = {
        "berichtId": message.message_id,
        "soort": message.message_type.value,
        "afzender": message.sender,
        "aanpak": message.token_id,
        "geaccepteerdOp": _iso(message.accepted_at),
        "ontvangenOp": _iso(message.received_at),
        "traceparent": message.trace_id,
        subjects_key: [
            {"pseudoniem": p, local_key: message.local_ids.get(p)} for p in message.subjects
        ],
        "bericht": json.loads(message.body_bytes),
    }
    if isinstance(message.body, ApproachNotice):
        doc["personen"] = [
            {
                "pseudoniem": p.pseudonym,
                "voornaam": p.given_name,
                "achternaam": p.family_name,
                "geboortedatum": p.date_of_birth.isoformat() if p.date_of_birth else None,
                "bsn": p.bsn,
            }
            for p in message.body.persons
        ]
    return doc


def couplings(answer: object, subjects: set[str], local_key: str, *, system: str) -> dict[str, str]:
    """``koppelingen`` of the answer to a notice: pseudonym → the partner's id (``local_key``),
    for ``subjects`` only. ``DestinationUnavailableError`` when the answer has none (the
    partner must answer a notice with its links, if only an empty list)."""
    items = answer.get("koppelingen") if isinstance(answer, dict) else None
    if not isinstance(items, list):
        raise DestinationUnavailableError(f"{system}'s answer to a notice has no koppelingen")
    found: dict[str, str] = {}
    for item in items:
        if not isinstance(item, dict):
            continue
        pseudonym, number = item.get("pseudoniem"), item.get(local_key)
        if pseudonym in subjects and isinstance(number, str) and number:
            found[pseudonym] = number
    return found
