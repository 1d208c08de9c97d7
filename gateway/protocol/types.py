"""Shared scalar types of the wire formats, as ``Annotated`` constraint aliases (msgspec style).

Rules kept here:

* Identifiers are lowercase hex strings of fixed length, so they compare, sort and log the same
  everywhere: message id and kid 64 hex (SHA-256/HMAC-SHA-256 outputs), token id and pseudonym
  32 hex (128 random bits).
* Pseudonyms are random 128-bit values drawn by the coordinator per subject per approach —
  never derived from a BSN or a name (there are only about 10^8 BSNs to try).
* Times are integer Unix seconds (UTC); no floats anywhere on the wire.
* Every case-message body is a JSON object with a ``type`` tag and a ``subjects`` list of
  pseudonyms; the envelope checks the latter against its header without knowing the schema.
"""

from __future__ import annotations

import enum
import secrets
from typing import Annotated

import msgspec

# Python's ``$`` also matches before a final newline; the length bounds (and the ``(?!\n)``
# look-ahead, which ECMA-262 regexes in the exported JSON Schema understand too) close that.
Hex64 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$", min_length=64, max_length=64)]
Hex32 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{32}$", min_length=32, max_length=32)]
Kid = Hex64
MessageId = Hex64
Sha256Hex = Hex64
TokenId = Hex32
Pseudonym = Hex32
PartnerId = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9-]{1,62}(?!\n)$")]
UnixTime = Annotated[int, msgspec.Meta(ge=0)]
SchemaVersion = Annotated[int, msgspec.Meta(ge=1)]


class MessageType(enum.StrEnum):
    """Case-message types. New types are added, never renamed."""

    APPROACH_NOTICE = "approach-notice"
    SIGNAL = "signal"
    REFERRAL = "referral"
    CASE_CONFERENCE = "case-conference"
    ACTION_PLAN = "action-plan"
    PROGRESS = "progress"
    CLOSURE = "closure"


class ApproachKind(enum.StrEnum):
    GROUP = "group"
    PERSON = "person"


# The token id an envelope carries when it names no approach token: the relay refuses it with
# ``no_token``, so no real token may have it (``token.ApproachToken`` refuses it).
NO_TOKEN_ID = "0" * 32


def new_pseudonym() -> str:
    """A fresh random 128-bit pseudonym (32 hex characters)."""
    return secrets.token_hex(16)


def new_token_id() -> str:
    """A fresh random 128-bit approach token id (32 hex characters)."""
    return secrets.token_hex(16)
