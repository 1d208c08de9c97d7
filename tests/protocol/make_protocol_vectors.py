"""Generate the test vectors of ``docs/protocol.md`` from the project's own code.

Run ``.venv/bin/python -m tests.protocol.make_protocol_vectors`` to print every vector as the
fenced block the document carries (```` ```json vector:<name> ````). ``test_protocol_doc``
parses those blocks back and recomputes each value, so the document and the code cannot drift
apart unnoticed.

Rules kept here:

* Every vector but one is **deterministic**: fixed seeds, salts, nonces and times, and Ed25519
  is deterministic, so ``deterministic_vectors()`` returns the same bytes on every run, and the
  test demands that the document holds exactly those.
* The ``envelope`` vector is **randomised** (HPKE encapsulation and the content key are fresh
  on every seal): ``envelope_vector()`` makes a new, equally valid one each run. The document
  keeps one recorded envelope; the test opens that recording with the recorded keys.
* The deterministic vectors chain: the key commitment of ``key-commitment`` is in the header of
  ``header``, whose hash is the AEAD's associated data in ``payload`` and the input of both
  signatures in ``envelope-signatures``; the token of ``token`` is the one the headers name;
  the audit entry of ``audit-entry`` is leaf 2 of the tree in ``merkle``, whose root the
  ``checkpoint`` signs and the ``acceptance-receipt`` carries (with that entry and salt).
  Only the HPKE stanza of the ``header`` vector is filler (a stanza cannot be made
  deterministically with pyca's HPKE).
* All secrets here are test values, published in the document. Never use them for anything.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from typing import Any, Final

import msgspec
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.protocol import _envelope_crypto as crypto
from gateway.protocol import envelope, labels
from gateway.protocol.auditentry import AuditDecision, AuditEntry, seal_entry
from gateway.protocol.checkpoint import NoteVerifierKey, make_checkpoint
from gateway.protocol.merkle import InMemoryNodeStore, MerkleLog, leaf_hash
from gateway.protocol.messages import encode_body, example
from gateway.protocol.policy import decode_policy, encode_policy, policy_hash
from gateway.protocol.receipts import (
    AcceptanceReceipt,
    DeliveryReceipt,
    sign_acceptance_receipt,
    sign_delivery_receipt,
)
from gateway.protocol.signed import SignedObject
from gateway.protocol.token import (
    ApproachToken,
    PrivatePart,
    RolePurpose,
    TokenSubject,
    encode_signed,
    issue,
    revoke,
    token_hash,
)
from gateway.protocol.types import ApproachKind, MessageType
from keys import (
    Algorithm,
    DirectoryKey,
    Ed25519KeyPair,
    HybridKemKeyPair,
    KeyUse,
    Role,
    TlsKeyPair,
    check_signature_time,
    compute_kid,
    key_state,
)
from keys.errors import KeyStateError

Vector = dict[str, Any]

# 2026-05-28T20:26:40Z: the fixed "now" of every vector (the same as the token tests').
T0: Final = 1_780_000_000
DAY: Final = 86_400

# Test secrets. Published in docs/protocol.md: never use them for anything real.
SENDER_SIGN_SEED: Final = bytes(range(32, 64))  # politie-ijmond's sign key
RECIPIENT_SIGN_SEED: Final = bytes(range(64, 96))  # gemeente-velsen's sign key
TOKEN_SEED: Final = bytes(range(32))  # gemeente-velsen's token key (as in test_token)
GATEWAY_SIGN_SEED: Final = bytes(range(96, 128))  # the gateway's sign key (receipts, checkpoints)
RECIPIENT_ENCRYPT_SECRET: Final = bytes(range(128, 224))  # gemeente-velsen: ML-KEM seed ‖ X25519
TLS_PRIVATE_SCALAR: Final = int.from_bytes(hashlib.sha256(b"ketenpost tls vector").digest())
OUTBOX_KEY: Final = bytes([0x42]) * 32
SOURCE_RECORD_ID: Final = "politie-ijmond/bvh/2026-0412345/signaal/1"
CONTENT_KEY: Final = bytes(range(1, 33))
NONCE: Final = bytes(range(200, 224))
FILLER_STANZA: Final = bytes([0x5A]) * envelope.STANZA_LEN
AUDIT_SALT: Final = bytes([0xA5]) * 32
TRACEPARENT: Final = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
SUBJECTS: Final = ("a" * 32,)
# Not the all-zero id: the relay reads that as "no token" (``relay.NO_TOKEN_ID``).
TOKEN_ID: Final = "7e4e0000c0ffee00b0a710ad0000f00d"
SENDER: Final = "politie-ijmond"
RECIPIENT: Final = "gemeente-velsen"
GATEWAY_ID: Final = "ketenpost-gateway"
CHECKPOINT_ORIGIN: Final = "ketenpost.ijmond.example/audit"

# The small policy of the token vector (the same bytes as test_token's), deliberately not in
# canonical form: the vector shows the canonical re-encoding and its hash.
POLICY_INPUT: Final = (
    b'{"name":"Vector","version":1,"roles":{"municipality":{"legal_basis":[{"reference":'
    b'"Convenant art. 4","text":"Regie."}],"processing_activities":["vector/regie"]},'
    b'"police":{"legal_basis":[{"reference":"Wpg art. 20","text":"Verstrekking."}],'
    b'"processing_activities":["vector/politie"]}},"rules":{"person":{"municipality":'
    b'{"police":["approach-notice"]},"police":{"municipality":["signal"]}}}}'
)


def _hex(data: bytes) -> str:
    return data.hex()


def _builtins(value: msgspec.Struct) -> Any:
    return msgspec.to_builtins(value)


def _signed_view(signed: SignedObject) -> Vector:
    return {
        "payload_hex": _hex(signed.payload),
        "kid": signed.kid,
        "signature_hex": _hex(signed.sig),
        "signed_object_hex": _hex(encode_signed(signed)),
    }


# --- Keys ----------------------------------------------------------------------------------


def sender_sign() -> Ed25519KeyPair:
    return Ed25519KeyPair.from_seed(KeyUse.SIGN, SENDER_SIGN_SEED)


def recipient_sign() -> Ed25519KeyPair:
    return Ed25519KeyPair.from_seed(KeyUse.SIGN, RECIPIENT_SIGN_SEED)


def token_key() -> Ed25519KeyPair:
    return Ed25519KeyPair.from_seed(KeyUse.TOKEN, TOKEN_SEED)


def gateway_sign() -> Ed25519KeyPair:
    return Ed25519KeyPair.from_seed(KeyUse.SIGN, GATEWAY_SIGN_SEED)


def recipient_encrypt() -> HybridKemKeyPair:
    return HybridKemKeyPair.from_secret_bytes(RECIPIENT_ENCRYPT_SECRET)


def tls_key() -> TlsKeyPair:
    return TlsKeyPair(ec.derive_private_key(TLS_PRIVATE_SCALAR, ec.SECP256R1()))


def kid_vector() -> Vector:
    cases: list[Vector] = []
    for pair, seed in ((sender_sign(), SENDER_SIGN_SEED), (token_key(), TOKEN_SEED)):
        kid_input = (
            pair.use.value.encode() + b"\x00" + pair.algorithm.value.encode() + b"\x00"
        ) + pair.public
        cases.append(
            {
                "use": pair.use.value,
                "alg": pair.algorithm.value,
                "ed25519_seed_hex": _hex(seed),
                "public_hex": _hex(pair.public),
                "kid_input_hex": _hex(kid_input),
                "kid": pair.kid,
            }
        )
    kem = recipient_encrypt()
    cases.append(
        {
            "use": kem.use.value,
            "alg": kem.algorithm.value,
            "secret_hex": _hex(RECIPIENT_ENCRYPT_SECRET),
            "public_hex": _hex(kem.public),
            "kid": kem.kid,
        }
    )
    tls = tls_key()
    cases.append(
        {
            "use": tls.use.value,
            "alg": tls.algorithm.value,
            "p256_private_scalar_hex": f"{TLS_PRIVATE_SCALAR:064x}",
            "public_hex": _hex(tls.public),
            "kid": tls.kid,
        }
    )
    return {"cases": cases}


def _times(key: DirectoryKey) -> Vector:
    return {
        "active_from": key.active_from,
        "retire_at": key.retire_at,
        "revoked_at": key.revoked_at,
        "compromised_since": key.compromised_since,
    }


def key_state_vector() -> Vector:
    """Key states, and whether a signature stands, for a key's times at several moments."""
    key = DirectoryKey(
        kid="0" * 64,
        use=KeyUse.SIGN,
        alg=Algorithm.ED25519,
        public=bytes(32),
        active_from=T0,
        retire_at=T0 + 100 * DAY,
        revoked_at=T0 + 50 * DAY,
        compromised_since=T0 + 40 * DAY,
    )
    unrevoked = msgspec.structs.replace(key, revoked_at=None, compromised_since=None)
    unknown = msgspec.structs.replace(key, compromised_since=None)
    states: list[Vector] = [
        {**_times(k), "now": now, "state": key_state(k, now).value}
        for k, now in (
            (key, T0 - 1),
            (key, T0),
            (key, T0 + 50 * DAY - 1),
            (key, T0 + 50 * DAY),
            (unrevoked, T0 + 100 * DAY - 1),
            (unrevoked, T0 + 100 * DAY),
            (msgspec.structs.replace(unrevoked, retire_at=None), T0 + 1000 * DAY),
        )
    ]
    signatures: list[Vector] = []
    for k, accepted_at, now in (
        (key, T0 + 10 * DAY, T0 + 20 * DAY),
        (key, T0 + 10 * DAY, T0 + 60 * DAY),
        (key, T0 + 45 * DAY, T0 + 60 * DAY),
        (key, T0 - 1, T0 + 1),
        (unknown, T0 + 10 * DAY, T0 + 60 * DAY),
        (unrevoked, T0 + 100 * DAY, T0 + 100 * DAY),
    ):
        try:
            check_signature_time(k, accepted_at, now)
            outcome = "stands"
        except KeyStateError as exc:
            outcome = exc.reason.value
        signatures.append({**_times(k), "accepted_at": accepted_at, "now": now, "outcome": outcome})
    return {"states": states, "signatures": signatures}


# --- Framing, ids, derivations -------------------------------------------------------------


def framed_vector() -> Vector:
    cases: list[Vector] = []
    for label, fields in (
        (labels.HEADER_HASH, [b"abc"]),
        (labels.ENVELOPE_OUTER, [b"", b"\x00\xff", b"ketenpost"]),
        (labels.MESSAGE_ID, []),
    ):
        cases.append(
            {
                "label": label.decode("ascii"),
                "fields_hex": [_hex(f) for f in fields],
                "framed_hex": _hex(labels.framed(label, *fields)),
                "labelled_hash_hex": _hex(labels.labelled_hash(label, *fields)),
            }
        )
    return {"cases": cases}


def message_id() -> str:
    return envelope.derive_message_id(OUTBOX_KEY, SOURCE_RECORD_ID)


def message_id_vector() -> Vector:
    return {
        "outbox_key_hex": _hex(OUTBOX_KEY),
        "source_record_id": SOURCE_RECORD_ID,
        "hmac_input_hex": _hex(labels.framed(labels.MESSAGE_ID, SOURCE_RECORD_ID.encode())),
        "message_id": message_id(),
    }


def key_commitment_vector() -> Vector:
    mid = message_id()
    return {
        "content_key_hex": _hex(CONTENT_KEY),
        "message_id": mid,
        "hkdf_info_hex": _hex(labels.framed(labels.KEY_COMMITMENT, mid.encode())),
        "key_commitment_hex": _hex(crypto.key_commitment(CONTENT_KEY, mid)),
    }


def hpke_info_vector() -> Vector:
    mid = message_id()
    sender_kid, recipient_kid = sender_sign().kid, recipient_encrypt().kid
    return {
        "message_id": mid,
        "sender_kid": sender_kid,
        "recipient_kid": recipient_kid,
        "info_hex": _hex(crypto.hpke_info(mid, sender_kid, recipient_kid)),
    }


# --- Policy and token ----------------------------------------------------------------------


def policy_vector() -> Vector:
    policy = decode_policy(POLICY_INPUT)
    canonical = encode_policy(policy)
    return {
        "policy_input": POLICY_INPUT.decode(),
        "canonical": canonical.decode(),
        "policy_hash": policy_hash(policy),
    }


def make_token() -> tuple[SignedObject, bytes, bytes]:
    """The vector token (the inputs of ``test_token._vector`` but for the token id): the signed
    checked part, and the private part's salt and exact content bytes."""
    signed, opening = issue(
        key=token_key(),
        coordinator=RECIPIENT,
        kind=ApproachKind.PERSON,
        subjects=[TokenSubject(pseudonym=SUBJECTS[0], informed_at=T0 - DAY)],
        participants=[RECIPIENT, SENDER],
        allowed={
            Role.MUNICIPALITY: [MessageType.APPROACH_NOTICE],
            Role.POLICE: [MessageType.SIGNAL],
        },
        valid_from=T0,
        valid_until=T0 + 90 * DAY,
        retention_until=T0 + 5 * 365 * DAY,
        policy=decode_policy(POLICY_INPUT),
        purposes={Role.POLICE: RolePurpose(purpose="Signalering.", legal_basis="Wpg art. 20")},
        decided_by="Regisseur",
        decided_on=datetime.date(2026, 5, 25),
        decision_reference="VLS-1",
        informing={SUBJECTS[0]: "Per brief."},
        now=T0,
        token_id=TOKEN_ID,
        salt=bytes(32),
    )
    return signed, opening.salt, opening.content


def token_vector() -> Vector:
    signed, salt, content = make_token()
    checked = msgspec.msgpack.decode(signed.payload, type=ApproachToken)
    private = msgspec.msgpack.decode(content, type=PrivatePart)
    return {
        "issuer_seed_hex": _hex(TOKEN_SEED),
        "checked_part": _builtins(checked),
        **_signed_view(signed),
        "signature_input_hex": _hex(labels.framed(labels.TOKEN, signed.payload)),
        "token_hash": token_hash(signed),
        "private_part": _builtins(private),
        "private_salt_hex": _hex(salt),
        "private_content_hex": _hex(content),
        "private_commitment": labels.labelled_hash(
            labels.TOKEN_PRIVATE_COMMITMENT, salt, content
        ).hex(),
    }


def token_revocation_vector() -> Vector:
    signed, _, _ = make_token()
    token = msgspec.msgpack.decode(signed.payload, type=ApproachToken)
    revocation = revoke(token, key=token_key(), now=T0 + 30 * DAY, reason="Aanpak beëindigd.")
    return {
        "issuer_seed_hex": _hex(TOKEN_SEED),
        "revocation": _builtins(msgspec.msgpack.decode(revocation.payload)),
        **_signed_view(revocation),
    }


# --- The envelope, deterministic parts -----------------------------------------------------


def vector_header() -> envelope.Header:
    signed, _, _ = make_token()
    mid = message_id()
    return envelope.Header(
        version=envelope.VERSION,
        suite=envelope.SUITE,
        message_id=mid,
        sender=SENDER,
        sender_kid=sender_sign().kid,
        recipients=(
            envelope.RecipientEntry(
                partner=RECIPIENT, kid=recipient_encrypt().kid, stanza=FILLER_STANZA
            ),
        ),
        token_id=msgspec.msgpack.decode(signed.payload, type=ApproachToken).token_id,
        token_hash=token_hash(signed),
        subjects=SUBJECTS,
        message_type=MessageType.SIGNAL,
        schema_version=1,
        created_at=T0,
        expires_at=T0 + 7 * DAY,
        key_commitment=crypto.key_commitment(CONTENT_KEY, mid),
        trace_id=TRACEPARENT,
    )


def header_bytes() -> bytes:
    return msgspec.msgpack.encode(vector_header())


def vector_body() -> bytes:
    return encode_body(example(MessageType.SIGNAL, subjects=SUBJECTS))


def header_vector() -> Vector:
    data = header_bytes()
    # msgspec renders bytes as base64 in builtins; the document shows them as hex, in place.
    fields: dict[str, Any] = {
        (f"{k}_hex" if k == "key_commitment" else k): (
            _hex(base64.b64decode(v)) if k == "key_commitment" else v
        )
        for k, v in _builtins(vector_header()).items()
    }
    fields["recipients"] = [
        {
            "partner": e["partner"],
            "kid": e["kid"],
            "stanza_hex": _hex(base64.b64decode(e["stanza"])),
        }
        for e in fields["recipients"]
    ]
    return {
        "header": fields,
        "header_bytes_hex": _hex(data),
        "header_hash_hex": _hex(envelope.header_hash(data)),
    }


def _inner_signature() -> bytes:
    digest = envelope.header_hash(header_bytes())
    return sender_sign().sign(envelope.inner_signature_input(digest, vector_body()))


def _plaintext() -> bytes:
    return msgspec.msgpack.encode({"body": vector_body(), "signature": _inner_signature()})


def _ciphertext() -> bytes:
    digest = envelope.header_hash(header_bytes())
    return crypto.aead_encrypt_with_nonce(CONTENT_KEY, NONCE, _plaintext(), digest)


def payload_vector() -> Vector:
    return {
        "content_key_hex": _hex(CONTENT_KEY),
        "nonce_hex": _hex(NONCE),
        "associated_data_hex": _hex(envelope.header_hash(header_bytes())),
        "body_hex": _hex(vector_body()),
        "inner_signature_hex": _hex(_inner_signature()),
        "plaintext_hex": _hex(_plaintext()),
        "ciphertext_hex": _hex(_ciphertext()),
    }


def signatures_vector() -> Vector:
    digest = envelope.header_hash(header_bytes())
    ciphertext, body = _ciphertext(), vector_body()
    outer_input = envelope.outer_signature_input(digest, ciphertext)
    inner_input = envelope.inner_signature_input(digest, body)
    return {
        "sign_seed_hex": _hex(SENDER_SIGN_SEED),
        "sender_kid": sender_sign().kid,
        "header_hash_hex": _hex(digest),
        "ciphertext_sha256_hex": _hex(hashlib.sha256(ciphertext).digest()),
        "outer_input_hex": _hex(outer_input),
        "outer_signature_hex": _hex(sender_sign().sign(outer_input)),
        "body_sha256_hex": _hex(hashlib.sha256(body).digest()),
        "inner_input_hex": _hex(inner_input),
        "inner_signature_hex": _hex(sender_sign().sign(inner_input)),
    }


# --- Receipts, audit log -------------------------------------------------------------------


def delivery_receipt_vector() -> Vector:
    receipt = DeliveryReceipt(
        message_id=message_id(),
        header_hash=envelope.header_hash(header_bytes()).hex(),
        recipient=RECIPIENT,
        received_at=T0 + 120,
        plaintext_hash=hashlib.sha256(vector_body()).hexdigest(),
    )
    signed = sign_delivery_receipt(receipt, recipient_sign())
    return {
        "recipient_seed_hex": _hex(RECIPIENT_SIGN_SEED),
        "receipt": _builtins(receipt),
        **_signed_view(signed),
    }


def audit_entry() -> AuditEntry:
    signed, _, _ = make_token()
    token = msgspec.msgpack.decode(signed.payload, type=ApproachToken)
    return AuditEntry(
        time=T0 + 60,
        decision=AuditDecision.ACCEPTED,
        sender=SENDER,
        recipients=(RECIPIENT,),
        message_type=MessageType.SIGNAL,
        token_id=token.token_id,
        subjects=SUBJECTS,
        policy_hash=token.policy_hash,
        header_hash=envelope.header_hash(header_bytes()).hex(),
        trace_id=TRACEPARENT.split("-")[1],
    )


def audit_entry_vector() -> Vector:
    sealed = seal_entry(audit_entry(), AUDIT_SALT)
    return {
        "entry": _builtins(audit_entry()),
        "salt_hex": _hex(AUDIT_SALT),
        "entry_bytes_hex": _hex(sealed.entry_bytes),
        "leaf_data_hex": _hex(sealed.leaf),
        "leaf_hash_hex": _hex(sealed.leaf_hash),
    }


MERKLE_SIZE: Final = 5
MERKLE_INDEX: Final = 2
MERKLE_OLD_SIZE: Final = 3


def merkle_leaf_data() -> list[bytes]:
    """Five leaves; leaf 2 is the audit entry's, the others are labelled filler."""
    leaves = [
        labels.labelled_hash(labels.AUDIT_ENTRY, bytes([i]) * 32, b"filler")
        for i in range(MERKLE_SIZE)
    ]
    leaves[MERKLE_INDEX] = seal_entry(audit_entry(), AUDIT_SALT).leaf
    return leaves


def merkle_log() -> MerkleLog:
    log = MerkleLog(InMemoryNodeStore())
    log.append_many(leaf_hash(d) for d in merkle_leaf_data())
    return log


def merkle_vector() -> Vector:
    log = merkle_log()
    inclusion = log.inclusion_proof(MERKLE_INDEX)
    consistency = log.consistency_proof(MERKLE_OLD_SIZE)
    return {
        "leaf_data_hex": [_hex(d) for d in merkle_leaf_data()],
        "leaf_hashes_hex": [_hex(leaf_hash(d)) for d in merkle_leaf_data()],
        "tree_size": MERKLE_SIZE,
        "root_hex": _hex(log.root()),
        "inclusion": {
            "leaf_index": inclusion.leaf_index,
            "tree_size": inclusion.tree_size,
            "hashes_hex": [_hex(h) for h in inclusion.hashes],
        },
        "consistency": {
            "old_size": consistency.old_size,
            "old_root_hex": _hex(log.root(MERKLE_OLD_SIZE)),
            "new_size": consistency.new_size,
            "hashes_hex": [_hex(h) for h in consistency.hashes],
        },
    }


def checkpoint_note() -> str:
    return make_checkpoint(
        CHECKPOINT_ORIGIN, MERKLE_SIZE, merkle_log().root(), CHECKPOINT_ORIGIN, gateway_sign()
    )


def checkpoint_vector() -> Vector:
    verifier = NoteVerifierKey.for_keypair(CHECKPOINT_ORIGIN, gateway_sign())
    return {
        "origin": CHECKPOINT_ORIGIN,
        "key_name": CHECKPOINT_ORIGIN,
        "ed25519_seed_hex": _hex(GATEWAY_SIGN_SEED),
        "public_hex": _hex(gateway_sign().public),
        "key_id_input_hex": _hex(CHECKPOINT_ORIGIN.encode() + b"\n\x01" + gateway_sign().public),
        "key_id_hex": _hex(verifier.key_id),
        "vkey": verifier.vkey,
        "tree_size": MERKLE_SIZE,
        "root_hex": _hex(merkle_log().root()),
        "note": checkpoint_note(),
    }


def acceptance_receipt_vector() -> Vector:
    inclusion = merkle_log().inclusion_proof(MERKLE_INDEX)
    # The receipt carries the ``audit-entry`` vector's entry and salt: its leaf is leaf 2.
    sealed = seal_entry(audit_entry(), AUDIT_SALT)
    receipt = AcceptanceReceipt(
        message_id=message_id(),
        header_hash=envelope.header_hash(header_bytes()).hex(),
        accepted_at=T0 + 60,
        leaf_index=inclusion.leaf_index,
        tree_size=inclusion.tree_size,
        inclusion_proof=inclusion.hashes,
        checkpoint=checkpoint_note(),
        entry=sealed.entry_bytes,
        salt=sealed.salt,
    )
    signed = sign_acceptance_receipt(receipt, gateway_sign())
    view = _builtins(receipt)
    view["inclusion_proof_hex"] = [_hex(h) for h in receipt.inclusion_proof]
    view["entry_hex"] = _hex(receipt.entry)
    view["salt_hex"] = _hex(receipt.salt)
    for name in ("inclusion_proof", "entry", "salt"):
        del view[name]
    return {"gateway_seed_hex": _hex(GATEWAY_SIGN_SEED), "receipt": view, **_signed_view(signed)}


# --- The randomised envelope ---------------------------------------------------------------


def _directory_key(pair: Ed25519KeyPair | HybridKemKeyPair) -> DirectoryKey:
    return DirectoryKey(
        kid=compute_kid(pair.use, pair.algorithm, pair.public),
        use=pair.use,
        alg=pair.algorithm,
        public=pair.public,
        active_from=T0 - 365 * DAY,
    )


def envelope_vector() -> Vector:
    """A fresh envelope from ``politie-ijmond`` to ``gemeente-velsen``: random every run."""
    signed, _, _ = make_token()
    token = msgspec.msgpack.decode(signed.payload, type=ApproachToken)
    body = vector_body()
    sealed = envelope.seal(
        sender=SENDER,
        sign_key=sender_sign(),
        recipients=[(RECIPIENT, _directory_key(recipient_encrypt()))],
        body=body,
        message_id=message_id(),
        token_id=token.token_id,
        token_hash=token_hash(signed),
        subjects=SUBJECTS,
        message_type=MessageType.SIGNAL,
        schema_version=1,
        created_at=T0,
        expires_at=T0 + 7 * DAY,
        trace_id=TRACEPARENT,
    )
    data = envelope.encode_envelope(sealed)
    return {
        "sender": SENDER,
        "sender_sign_seed_hex": _hex(SENDER_SIGN_SEED),
        "sender_sign_public_hex": _hex(sender_sign().public),
        "recipient": RECIPIENT,
        "recipient_encrypt_secret_hex": _hex(RECIPIENT_ENCRYPT_SECRET),
        "recipient_encrypt_public_hex": _hex(recipient_encrypt().public),
        "keys_active_from": T0 - 365 * DAY,
        "accepted_at": T0 + 60,
        "now": T0 + 120,
        "envelope_hex": _hex(data),
        "header_hash_hex": _hex(envelope.header_hash(sealed.header)),
        "body_hex": _hex(body),
    }


# --- Output --------------------------------------------------------------------------------


def deterministic_vectors() -> dict[str, Vector]:
    """Every deterministic vector by name, in the document's order."""
    return {
        "kid": kid_vector(),
        "key-state": key_state_vector(),
        "framed": framed_vector(),
        "message-id": message_id_vector(),
        "key-commitment": key_commitment_vector(),
        "hpke-info": hpke_info_vector(),
        "header": header_vector(),
        "payload": payload_vector(),
        "envelope-signatures": signatures_vector(),
        "policy": policy_vector(),
        "token": token_vector(),
        "token-revocation": token_revocation_vector(),
        "delivery-receipt": delivery_receipt_vector(),
        "audit-entry": audit_entry_vector(),
        "merkle": merkle_vector(),
        "checkpoint": checkpoint_vector(),
        "acceptance-receipt": acceptance_receipt_vector(),
    }


RANDOMISED: Final = ("envelope",)


def render(name: str, vector: Vector) -> str:
    """The fenced block for one vector, as docs/protocol.md carries it."""
    return f"```json vector:{name}\n{json.dumps(vector, indent=2, ensure_ascii=False)}\n```\n"


def main() -> None:
    for name, vector in deterministic_vectors().items():
        print(render(name, vector))
    print(render("envelope", envelope_vector()))


if __name__ == "__main__":
    main()
