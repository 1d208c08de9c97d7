"""Domain-separation labels: one per signed or derived object (house rule 6).

Every signature and every derivation in the protocol starts from exactly one of these labels,
so a signature made for one purpose can never be replayed as another (a delivery receipt is
never a valid acceptance receipt, an inner signature never a valid outer one). The labels are
ASCII, versioned, and end up in ``docs/protocol.md``; changing one is a protocol version change.
"""

from __future__ import annotations

import hashlib
from typing import Final

# The sender's signature over the exact header bytes and the ciphertext hash. The gateway
# checks this one alone, so its cost does not depend on the message size.
ENVELOPE_OUTER: Final = b"ketenpost/v1/envelope/outer-signature"
# The sender's second signature, inside the ciphertext, over header hash and plaintext hash:
# lets a recipient prove to a third party what it received.
ENVELOPE_INNER: Final = b"ketenpost/v1/envelope/inner-signature"
# Hash of the header bytes; also the AEAD's associated data.
HEADER_HASH: Final = b"ketenpost/v1/envelope/header-hash"
# Key commitment: HKDF info for ``commit = HKDF(content key, label, message id)``. The AEAD
# alone does not commit to its key (invisible-salamander attacks); this closes that.
KEY_COMMITMENT: Final = b"ketenpost/v1/envelope/key-commitment"
# HPKE ``info`` prefix when wrapping the content key to one recipient; message id, sender kid
# and recipient kid follow, so a stanza cannot be moved to another message or recipient.
HPKE_WRAP: Final = b"ketenpost/v1/envelope/hpke-wrap"
# ``message id = HMAC(outbox key, label ‖ source record id)``: reading the same partner record
# twice can never make two messages.
MESSAGE_ID: Final = b"ketenpost/v1/message-id"

# Approach tokens: the checked part (signed by the coordinator's ``token`` key) and the salted
# commitment to the private part.
TOKEN: Final = b"ketenpost/v1/approach-token"
TOKEN_PRIVATE_COMMITMENT: Final = b"ketenpost/v1/approach-token/private-part"
TOKEN_REVOCATION: Final = b"ketenpost/v1/approach-token/revocation"

# Objects the gateway signs with its ``sign`` key.
ACCEPTANCE_RECEIPT: Final = b"ketenpost/v1/receipt/acceptance"
SENDER_EVENT: Final = b"ketenpost/v1/sender-event"
# Objects a recipient signs with its ``sign`` key.
DELIVERY_RECEIPT: Final = b"ketenpost/v1/receipt/delivery"
REJECTION: Final = b"ketenpost/v1/receipt/rejection"

# Audit log: a leaf is the hash of a salted entry. (Checkpoints use the C2SP signed-note
# format, which has its own key-name binding; see ``gateway.audit``.)
AUDIT_ENTRY: Final = b"ketenpost/v1/audit/entry"
# A partner's signed statement of the largest checkpoint it verified (``adapters.witness``):
# signed with its ``sign`` key, so it must never pass for a receipt, rejection or envelope.
WITNESS_STATEMENT: Final = b"ketenpost/v1/witness/statement"

ALL_LABELS: Final[tuple[bytes, ...]] = (
    ENVELOPE_OUTER,
    ENVELOPE_INNER,
    HEADER_HASH,
    KEY_COMMITMENT,
    HPKE_WRAP,
    MESSAGE_ID,
    TOKEN,
    TOKEN_PRIVATE_COMMITMENT,
    TOKEN_REVOCATION,
    ACCEPTANCE_RECEIPT,
    SENDER_EVENT,
    DELIVERY_RECEIPT,
    REJECTION,
    AUDIT_ENTRY,
    WITNESS_STATEMENT,
)


def framed(label: bytes, *fields: bytes) -> bytes:
    """Return ``label ‖ 0x00 ‖ (len(field) as 4-byte big-endian ‖ field)…``.

    The one way any signature or hash input is built from parts: the label separates domains,
    the length prefixes make the concatenation unambiguous.
    """
    out = bytearray(label)
    out.append(0)
    for field in fields:
        out += len(field).to_bytes(4, "big")
        out += field
    return bytes(out)


def labelled_hash(label: bytes, *fields: bytes) -> bytes:
    """SHA-256 of ``framed(label, *fields)``: 32 bytes."""
    return hashlib.sha256(framed(label, *fields)).digest()
