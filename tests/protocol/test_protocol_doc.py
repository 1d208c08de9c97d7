"""``docs/protocol.md`` against the code: its vectors, labels, field tables and reason table.

* Every ```` ```json vector:<name> ```` block is parsed and each value in it is **recomputed**
  from the block's own inputs with the project's code (and, where the rule is one line, with
  the primitive directly: SHA-256, HMAC, HKDF, libsodium), so an implementer following the
  document reaches the same bytes.
* Every deterministic block must also equal what ``make_protocol_vectors`` makes today: a change
  to the code that moves any byte fails here until the document is regenerated.
* The one randomised vector (``envelope``) is opened with its recorded keys through
  ``envelope.verify`` and ``envelope.open_envelope`` over a ``Directory`` built from the
  recorded public keys.
* Every domain-separation label is in the document, and no label the code does not have; every
  struct table lists the struct's fields in wire order; the reason table is
  ``reasons_markdown()`` verbatim.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl import bindings as sodium

from gateway.protocol import _envelope_crypto as crypto
from gateway.protocol import envelope, labels
from gateway.protocol.auditentry import (
    AuditEntry,
    decode_entry,
    encode_entry,
    entry_leaf,
    verify_entry,
)
from gateway.protocol.checkpoint import (
    NoteVerifierKey,
    checkpoint_text,
    make_checkpoint,
    note_key_id,
    verify_checkpoint,
)
from gateway.protocol.merkle import (
    ConsistencyProof,
    InclusionProof,
    leaf_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)
from gateway.protocol.messages import decode_body
from gateway.protocol.policy import decode_policy, encode_policy, policy_hash
from gateway.protocol.reasons import Reason, reasons_markdown
from gateway.protocol.receipts import (
    AcceptanceReceipt,
    DeliveryReceipt,
    Rejection,
    SenderEvent,
    acceptance_leaf,
    verify_acceptance_receipt,
    verify_delivery_receipt,
)
from gateway.protocol.signed import SignedObject
from gateway.protocol.token import (
    ApproachToken,
    PrivatePart,
    PrivatePartOpening,
    TokenRevocation,
    TokenSubject,
    decode_signed,
    verify_revocation,
    verify_token_signature,
)
from gateway.protocol.types import MessageType
from keys import (
    Algorithm,
    Directory,
    DirectoryContents,
    DirectoryKey,
    Ed25519KeyPair,
    GatewayEntry,
    HybridKemKeyPair,
    KeyStateError,
    KeyUse,
    Partner,
    Role,
    TlsKeyPair,
    check_signature_time,
    compute_kid,
    key_state,
    verify_ed25519,
)
from keys.keyfile import KEY_FILE_AD_LABEL
from keys.signed_directory import DIRECTORY_LABEL
from tests.protocol import make_protocol_vectors as gen

Vector = dict[str, Any]
Vectors = dict[str, Vector]

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
_BLOCK_RE = re.compile(r"^```json vector:([a-z0-9-]+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_FENCE_RE = re.compile(r"^```.*vector:", re.MULTILINE)
_LABEL_RE = re.compile(r"ketenpost/v1/[a-z0-9/-]*[a-z0-9]")
_STRUCT_RE = re.compile(r"<!-- struct:([A-Za-z]+) -->\n+((?:\|.*\n)+)")
_REASONS_RE = re.compile(r"<!-- reasons:begin -->\n(.*?)<!-- reasons:end -->", re.DOTALL)


def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


def _parse_vectors(text: str) -> Vectors:
    found: Vectors = {}
    for match in _BLOCK_RE.finditer(text):
        name = match.group(1)
        assert name not in found, f"vector {name} appears twice in {DOC.name}"
        found[name] = json.loads(match.group(2))
    # A block the pattern missed (a typo in the info string) would silently test nothing.
    assert len(_FENCE_RE.findall(text)) == len(found)
    return found


DOC_VECTORS: Vectors = _parse_vectors(_doc()) if DOC.exists() else {}


@pytest.fixture(scope="module")
def generated() -> Vectors:
    return gen.deterministic_vectors()


def _view(value: object) -> Any:
    """``value`` as the JSON a vector holds (tuples become lists)."""
    return msgspec.json.decode(msgspec.json.encode(value))


def _b(value: str) -> bytes:
    return bytes.fromhex(value)


def _ed25519(use: KeyUse, seed_hex: str) -> Ed25519KeyPair:
    return Ed25519KeyPair.from_seed(use, _b(seed_hex))


def _key(
    use: KeyUse, alg: Algorithm, public: bytes, active_from: int = 0, **times: int | None
) -> DirectoryKey:
    return DirectoryKey(
        kid=compute_kid(use, alg, public),
        use=use,
        alg=alg,
        public=public,
        active_from=active_from,
        **times,
    )


def _directory(
    partners: Sequence[tuple[str, Role, Sequence[DirectoryKey], bool]],
    gateway_keys: Sequence[DirectoryKey] = (),
) -> Directory:
    """A directory built from ``keys.directory`` structs over the given public keys."""
    listed = tuple(
        Partner(
            id=pid,
            name=pid,
            oin=f"{index + 1:020d}",
            role=role,
            keys=tuple(keys),
            coordinator=coordinator,
        )
        for index, (pid, role, keys, coordinator) in enumerate(partners)
    )
    return Directory(
        DirectoryContents(
            covenant="vector",
            partners=listed,
            gateway=GatewayEntry(id=gen.GATEWAY_ID, keys=tuple(gateway_keys)),
            policy=gen.POLICY_INPUT,
        )
    )


def _signed(vector: Vector) -> SignedObject:
    """The vector's signed object, checking its three fields against the encoded form."""
    signed = decode_signed(_b(vector["signed_object_hex"]))
    assert signed.payload == _b(vector["payload_hex"])
    assert signed.kid == vector["kid"]
    assert signed.sig == _b(vector["signature_hex"])
    # The encoding is a 3-entry msgpack map: payload (bin), kid (str), sig (bin), in that order.
    assert _b(vector["signed_object_hex"]) == msgspec.msgpack.encode(
        {"payload": signed.payload, "kid": signed.kid, "sig": signed.sig}
    )
    return signed


# --- Recomputation of each deterministic vector from its own inputs -----------------------


def check_kid(v: Vector, _: Vectors) -> None:
    for case in v["cases"]:
        use, alg = KeyUse(case["use"]), Algorithm(case["alg"])
        pair: Ed25519KeyPair | HybridKemKeyPair | TlsKeyPair
        if "ed25519_seed_hex" in case:
            pair = _ed25519(use, case["ed25519_seed_hex"])
        elif "secret_hex" in case:
            pair = HybridKemKeyPair.from_secret_bytes(_b(case["secret_hex"]))
        else:
            scalar = int(case["p256_private_scalar_hex"], 16)
            pair = TlsKeyPair(ec.derive_private_key(scalar, ec.SECP256R1()))
        public = _b(case["public_hex"])
        assert pair.public == public
        assert pair.use is use
        assert pair.algorithm is alg
        kid_input = use.value.encode() + b"\x00" + alg.value.encode() + b"\x00" + public
        if "kid_input_hex" in case:
            assert _b(case["kid_input_hex"]) == kid_input
        assert hashlib.sha256(kid_input).hexdigest() == case["kid"]
        assert compute_kid(use, alg, public) == case["kid"] == pair.kid


def _times_key(case: Vector) -> DirectoryKey:
    return DirectoryKey(
        kid="0" * 64,
        use=KeyUse.SIGN,
        alg=Algorithm.ED25519,
        public=bytes(32),
        active_from=case["active_from"],
        retire_at=case["retire_at"],
        revoked_at=case["revoked_at"],
        compromised_since=case["compromised_since"],
    )


def check_key_state(v: Vector, _: Vectors) -> None:
    for case in v["states"]:
        assert key_state(_times_key(case), case["now"]).value == case["state"], case
    for case in v["signatures"]:
        try:
            check_signature_time(_times_key(case), case["accepted_at"], case["now"])
            outcome = "stands"
        except KeyStateError as exc:
            outcome = exc.reason.value
        assert outcome == case["outcome"], case


def check_framed(v: Vector, _: Vectors) -> None:
    for case in v["cases"]:
        label = case["label"].encode("ascii")
        fields = [_b(f) for f in case["fields_hex"]]
        expected = label + b"\x00" + b"".join(len(f).to_bytes(4, "big") + f for f in fields)
        assert _b(case["framed_hex"]) == expected == labels.framed(label, *fields)
        digest = _b(case["labelled_hash_hex"])
        assert digest == hashlib.sha256(expected).digest() == labels.labelled_hash(label, *fields)


def check_message_id(v: Vector, _: Vectors) -> None:
    key, record = _b(v["outbox_key_hex"]), v["source_record_id"]
    message = labels.framed(labels.MESSAGE_ID, record.encode("utf-8"))
    assert _b(v["hmac_input_hex"]) == message
    expected = hmac.new(key, message, hashlib.sha256).hexdigest()
    assert v["message_id"] == expected == envelope.derive_message_id(key, record)


def check_key_commitment(v: Vector, _: Vectors) -> None:
    info = labels.framed(labels.KEY_COMMITMENT, v["message_id"].encode("ascii"))
    assert _b(v["hkdf_info_hex"]) == info
    content_key = _b(v["content_key_hex"])
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info)
    assert _b(v["key_commitment_hex"]) == hkdf.derive(content_key)
    crypto.check_key_commitment(content_key, v["message_id"], _b(v["key_commitment_hex"]))


def check_hpke_info(v: Vector, _: Vectors) -> None:
    parts = (v["message_id"], v["sender_kid"], v["recipient_kid"])
    info = labels.framed(labels.HPKE_WRAP, *(p.encode("ascii") for p in parts))
    assert _b(v["info_hex"]) == info == crypto.hpke_info(*parts)


def _header_from_fields(fields: Vector) -> envelope.Header:
    plain = dict(fields)
    plain["key_commitment"] = _b(plain.pop("key_commitment_hex"))
    plain["recipients"] = [
        {"partner": e["partner"], "kid": e["kid"], "stanza": _b(e["stanza_hex"])}
        for e in plain["recipients"]
    ]
    return msgspec.convert(plain, envelope.Header)


def check_header(v: Vector, all_vectors: Vectors) -> None:
    data = _b(v["header_bytes_hex"])
    header = _header_from_fields(v["header"])
    assert msgspec.msgpack.encode(header) == data
    assert envelope.decode_header(data) == header
    assert list(msgspec.msgpack.decode(data)) == list(envelope.Header.__struct_fields__)
    digest = hashlib.sha256(labels.framed(labels.HEADER_HASH, data)).digest()
    assert _b(v["header_hash_hex"]) == digest == envelope.header_hash(data)
    assert header.key_commitment == _b(all_vectors["key-commitment"]["key_commitment_hex"])
    assert header.message_id == all_vectors["message-id"]["message_id"]
    assert header.token_hash == all_vectors["token"]["token_hash"]
    assert all(len(e.stanza) == envelope.STANZA_LEN == 1168 for e in header.recipients)


def check_payload(v: Vector, all_vectors: Vectors) -> None:
    body, inner_sig = _b(v["body_hex"]), _b(v["inner_signature_hex"])
    plaintext = msgspec.msgpack.encode({"body": body, "signature": inner_sig})
    assert _b(v["plaintext_hex"]) == plaintext
    key, nonce, ad = _b(v["content_key_hex"]), _b(v["nonce_hex"]), _b(v["associated_data_hex"])
    assert ad == _b(all_vectors["header"]["header_hash_hex"])
    sealed = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce, key)
    ciphertext = _b(v["ciphertext_hex"])
    assert ciphertext == nonce + sealed
    assert len(ciphertext) == 24 + len(plaintext) + 16
    assert crypto.aead_decrypt(key, ciphertext, ad) == plaintext
    decode_body(body, expected_type=MessageType.SIGNAL)


def check_envelope_signatures(v: Vector, all_vectors: Vectors) -> None:
    key = _ed25519(KeyUse.SIGN, v["sign_seed_hex"])
    assert key.kid == v["sender_kid"] == all_vectors["header"]["header"]["sender_kid"]
    digest = _b(v["header_hash_hex"])
    assert digest == _b(all_vectors["header"]["header_hash_hex"])
    ciphertext = _b(all_vectors["payload"]["ciphertext_hex"])
    body = _b(all_vectors["payload"]["body_hex"])
    ct_hash, body_hash = hashlib.sha256(ciphertext).digest(), hashlib.sha256(body).digest()
    assert _b(v["ciphertext_sha256_hex"]) == ct_hash
    assert _b(v["body_sha256_hex"]) == body_hash
    outer = labels.framed(labels.ENVELOPE_OUTER, digest, ct_hash)
    inner = labels.framed(labels.ENVELOPE_INNER, digest, body_hash)
    assert _b(v["outer_input_hex"]) == outer == envelope.outer_signature_input(digest, ciphertext)
    assert _b(v["inner_input_hex"]) == inner == envelope.inner_signature_input(digest, body)
    assert _b(v["outer_signature_hex"]) == key.sign(outer)
    assert _b(v["inner_signature_hex"]) == key.sign(inner)
    assert v["inner_signature_hex"] == all_vectors["payload"]["inner_signature_hex"]
    verify_ed25519(key.public, outer, _b(v["outer_signature_hex"]))
    verify_ed25519(key.public, inner, _b(v["inner_signature_hex"]))


def check_policy(v: Vector, _: Vectors) -> None:
    policy = decode_policy(v["policy_input"].encode())
    canonical = encode_policy(policy)
    assert canonical.decode() == v["canonical"]
    decode_policy(canonical, require_canonical=True)
    assert v["policy_hash"] == hashlib.sha256(canonical).hexdigest() == policy_hash(policy)


def _token_directory(token_key: Ed25519KeyPair) -> Directory:
    return _directory(
        [
            (
                "gemeente-velsen",
                Role.MUNICIPALITY,
                [_key(KeyUse.TOKEN, Algorithm.ED25519, token_key.public)],
                True,
            ),
            ("politie-ijmond", Role.POLICE, [], False),
        ]
    )


def check_token(v: Vector, all_vectors: Vectors) -> None:
    key = _ed25519(KeyUse.TOKEN, v["issuer_seed_hex"])
    signed = _signed(v)
    assert signed.kid == key.kid
    message = labels.framed(labels.TOKEN, signed.payload)
    assert _b(v["signature_input_hex"]) == message
    assert signed.sig == key.sign(message)
    assert v["token_hash"] == hashlib.sha256(_b(v["signed_object_hex"])).hexdigest()
    checked = msgspec.msgpack.decode(signed.payload, type=ApproachToken)
    assert _view(checked) == v["checked_part"]
    assert verify_token_signature(signed, _token_directory(key)) == checked
    salt, content = _b(v["private_salt_hex"]), _b(v["private_content_hex"])
    commitment = labels.labelled_hash(labels.TOKEN_PRIVATE_COMMITMENT, salt, content).hex()
    assert v["private_commitment"] == commitment == checked.private_commitment
    assert PrivatePartOpening(salt=salt, content=content).commitment() == commitment
    private = msgspec.msgpack.decode(content, type=PrivatePart)
    assert _view(private) == v["private_part"]
    assert checked.policy_hash == all_vectors["policy"]["policy_hash"]


def check_token_revocation(v: Vector, all_vectors: Vectors) -> None:
    key = _ed25519(KeyUse.TOKEN, v["issuer_seed_hex"])
    signed = _signed(v)
    token_signed = decode_signed(_b(all_vectors["token"]["signed_object_hex"]))
    token = msgspec.msgpack.decode(token_signed.payload, type=ApproachToken)
    verify_ed25519(key.public, labels.framed(labels.TOKEN_REVOCATION, signed.payload), signed.sig)
    revocation = verify_revocation(
        signed, token, _token_directory(key), now=v["revocation"]["revoked_at"]
    )
    assert _view(revocation) == v["revocation"]


def check_delivery_receipt(v: Vector, all_vectors: Vectors) -> None:
    key = _ed25519(KeyUse.SIGN, v["recipient_seed_hex"])
    signed = _signed(v)
    verify_ed25519(key.public, labels.framed(labels.DELIVERY_RECEIPT, signed.payload), signed.sig)
    receipt_view = v["receipt"]
    directory = _directory(
        [
            (
                receipt_view["recipient"],
                Role.MUNICIPALITY,
                [_key(KeyUse.SIGN, Algorithm.ED25519, key.public)],
                True,
            )
        ]
    )
    receipt = verify_delivery_receipt(
        signed,
        directory,
        now=receipt_view["received_at"],
        recipient=receipt_view["recipient"],
        message_id=all_vectors["message-id"]["message_id"],
        header_hash=all_vectors["header"]["header_hash_hex"],
    )
    assert _view(receipt) == receipt_view
    body = _b(all_vectors["payload"]["body_hex"])
    assert receipt.plaintext_hash == hashlib.sha256(body).hexdigest()


def check_audit_entry(v: Vector, all_vectors: Vectors) -> None:
    data, salt = _b(v["entry_bytes_hex"]), _b(v["salt_hex"])
    assert _view(decode_entry(data)) == v["entry"]
    assert encode_entry(msgspec.convert(v["entry"], AuditEntry)) == data
    leaf = labels.labelled_hash(labels.AUDIT_ENTRY, salt, data)
    assert _b(v["leaf_data_hex"]) == leaf == entry_leaf(data, salt)
    assert _b(v["leaf_hash_hex"]) == hashlib.sha256(b"\x00" + leaf).digest() == leaf_hash(leaf)
    verify_entry(data, salt, leaf)
    assert v["entry"]["header_hash"] == all_vectors["header"]["header_hash_hex"]


def check_merkle(v: Vector, all_vectors: Vectors) -> None:
    data = [_b(d) for d in v["leaf_data_hex"]]
    leaves = [hashlib.sha256(b"\x00" + d).digest() for d in data]
    assert [_b(h) for h in v["leaf_hashes_hex"]] == leaves
    root = _b(v["root_hex"])
    assert len(leaves) == v["tree_size"]
    assert root_of(leaves) == root
    inc = v["inclusion"]
    proof = InclusionProof(
        leaf_index=inc["leaf_index"],
        tree_size=inc["tree_size"],
        hashes=tuple(_b(h) for h in inc["hashes_hex"]),
    )
    verify_inclusion(leaves[proof.leaf_index], proof, root)
    assert data[proof.leaf_index] == _b(all_vectors["audit-entry"]["leaf_data_hex"])
    con = v["consistency"]
    old_root = _b(con["old_root_hex"])
    assert root_of(leaves[: con["old_size"]]) == old_root
    verify_consistency(
        ConsistencyProof(
            old_size=con["old_size"],
            new_size=con["new_size"],
            hashes=tuple(_b(h) for h in con["hashes_hex"]),
        ),
        old_root,
        root,
    )


def check_checkpoint(v: Vector, all_vectors: Vectors) -> None:
    key = _ed25519(KeyUse.SIGN, v["ed25519_seed_hex"])
    assert key.public == _b(v["public_hex"])
    name = v["key_name"]
    key_id_input = name.encode() + b"\n\x01" + key.public
    assert _b(v["key_id_input_hex"]) == key_id_input
    assert _b(v["key_id_hex"]) == hashlib.sha256(key_id_input).digest()[:4]
    assert note_key_id(name, key.public) == _b(v["key_id_hex"])
    assert NoteVerifierKey(name, key.public).vkey == v["vkey"]
    root = _b(v["root_hex"])
    assert root == _b(all_vectors["merkle"]["root_hex"])
    text = checkpoint_text(v["origin"], v["tree_size"], root)
    assert v["note"].startswith(text + "\n\u2014 " + name + " ")
    assert make_checkpoint(v["origin"], v["tree_size"], root, name, key) == v["note"]
    checkpoint = verify_checkpoint(v["note"], v["origin"], name, key.public)
    assert (checkpoint.size, checkpoint.root_hash) == (v["tree_size"], root)


def check_acceptance_receipt(v: Vector, all_vectors: Vectors) -> None:
    key = _ed25519(KeyUse.SIGN, v["gateway_seed_hex"])
    signed = _signed(v)
    verify_ed25519(key.public, labels.framed(labels.ACCEPTANCE_RECEIPT, signed.payload), signed.sig)
    gateway_key = _key(KeyUse.SIGN, Algorithm.ED25519, key.public)
    view = v["receipt"]
    receipt = verify_acceptance_receipt(
        signed,
        _directory([], gateway_keys=[gateway_key]),
        now=view["accepted_at"],
        message_id=all_vectors["message-id"]["message_id"],
        header_hash=all_vectors["header"]["header_hash_hex"],
    )
    assert receipt.inclusion_proof == tuple(_b(h) for h in view["inclusion_proof_hex"])
    assert receipt.checkpoint == view["checkpoint"] == all_vectors["checkpoint"]["note"]
    # The receipt carries the accepted message's own audit entry and salt.
    entry = all_vectors["audit-entry"]
    assert receipt.entry == _b(view["entry_hex"]) == _b(entry["entry_bytes_hex"])
    assert receipt.salt == _b(view["salt_hex"]) == _b(entry["salt_hex"])
    # What an adapter does with the receipt: checkpoint, then its own leaf, recomputed from
    # the entry once the entry is shown to be the acceptance of the header it sent.
    checkpoint = verify_checkpoint(
        receipt.checkpoint,
        all_vectors["checkpoint"]["origin"],
        all_vectors["checkpoint"]["key_name"],
        key.public,
    )
    assert checkpoint.size == receipt.tree_size
    header_hex = all_vectors["header"]["header_hash_hex"]
    header = msgspec.msgpack.decode(
        _b(all_vectors["header"]["header_bytes_hex"]), type=envelope.Header
    )
    leaf = acceptance_leaf(receipt, header, header_hex)
    assert leaf == leaf_hash(entry_leaf(receipt.entry, receipt.salt))
    assert leaf == _b(entry["leaf_hash_hex"])
    verify_inclusion(
        leaf,
        InclusionProof(
            leaf_index=receipt.leaf_index,
            tree_size=receipt.tree_size,
            hashes=receipt.inclusion_proof,
        ),
        checkpoint.root_hash,
    )


CHECKS: dict[str, Callable[[Vector, Vectors], None]] = {
    "kid": check_kid,
    "key-state": check_key_state,
    "framed": check_framed,
    "message-id": check_message_id,
    "key-commitment": check_key_commitment,
    "hpke-info": check_hpke_info,
    "header": check_header,
    "payload": check_payload,
    "envelope-signatures": check_envelope_signatures,
    "policy": check_policy,
    "token": check_token,
    "token-revocation": check_token_revocation,
    "delivery-receipt": check_delivery_receipt,
    "audit-entry": check_audit_entry,
    "merkle": check_merkle,
    "checkpoint": check_checkpoint,
    "acceptance-receipt": check_acceptance_receipt,
}


# --- Tests ---------------------------------------------------------------------------------


def test_the_document_holds_every_vector_once(generated: Vectors) -> None:
    assert set(CHECKS) == set(generated)
    assert set(DOC_VECTORS) == set(generated) | set(gen.RANDOMISED)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_vector_recomputes_from_its_inputs(name: str) -> None:
    CHECKS[name](DOC_VECTORS[name], DOC_VECTORS)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_vector_is_what_the_code_makes_today(name: str, generated: Vectors) -> None:
    # Compared as JSON: the document holds JSON, and tuples become lists on the way.
    assert DOC_VECTORS[name] == json.loads(json.dumps(generated[name])), (
        f"vector {name} drifted: run `.venv/bin/python -m tests.protocol.make_protocol_vectors` "
        "and update docs/protocol.md"
    )


def _envelope_directory(v: Vector) -> Directory:
    since = v["keys_active_from"]
    sign = _key(KeyUse.SIGN, Algorithm.ED25519, _b(v["sender_sign_public_hex"]), since)
    encrypt = _key(
        KeyUse.ENCRYPT, Algorithm.MLKEM768_X25519, _b(v["recipient_encrypt_public_hex"]), since
    )
    return _directory(
        [
            (v["recipient"], Role.MUNICIPALITY, [encrypt], True),
            (v["sender"], Role.POLICE, [sign], False),
        ]
    )


def test_envelope_vector_opens_with_its_recorded_keys() -> None:
    v = DOC_VECTORS["envelope"]
    sign = _ed25519(KeyUse.SIGN, v["sender_sign_seed_hex"])
    encrypt = HybridKemKeyPair.from_secret_bytes(_b(v["recipient_encrypt_secret_hex"]))
    assert sign.public == _b(v["sender_sign_public_hex"])
    assert encrypt.public == _b(v["recipient_encrypt_public_hex"])
    directory = _envelope_directory(v)
    data = _b(v["envelope_hex"])

    verified = envelope.verify(data, directory, at=v["accepted_at"])
    assert verified.header_hash == _b(v["header_hash_hex"])
    opened = envelope.open_envelope(
        data,
        directory,
        recipient=v["recipient"],
        encrypt_keys={encrypt.kid: encrypt},
        accepted_at=v["accepted_at"],
        now=v["now"],
    )
    assert opened.body == _b(v["body_hex"])
    assert opened.header_hash == _b(v["header_hash_hex"])
    assert opened.recipient_kid == encrypt.kid
    assert envelope.verify_proof(
        opened.proof, directory, accepted_at=v["accepted_at"], now=v["now"]
    ) == (opened.header)
    # The recorded envelope is one of the vector message's: same id, token, subjects, body.
    header = opened.header
    assert header.message_id == DOC_VECTORS["message-id"]["message_id"]
    assert header.token_hash == DOC_VECTORS["token"]["token_hash"]
    assert v["body_hex"] == DOC_VECTORS["payload"]["body_hex"]
    assert [len(e.stanza) for e in header.recipients] == [1168]


def test_envelope_vector_keys_are_the_generators() -> None:
    recorded = dict(DOC_VECTORS["envelope"])
    fresh = gen.envelope_vector()
    for randomised in ("envelope_hex", "header_hash_hex"):
        del recorded[randomised], fresh[randomised]
    assert recorded == fresh


def test_envelope_vector_fails_when_a_byte_changes() -> None:
    v = DOC_VECTORS["envelope"]
    data = bytearray(_b(v["envelope_hex"]))
    data[-1] ^= 1  # the last byte of the outer signature
    with pytest.raises(envelope.EnvelopeError):
        envelope.verify(bytes(data), _envelope_directory(v), at=v["accepted_at"])


def test_every_label_is_documented_and_no_other() -> None:
    text = _doc()
    expected = {label.decode("ascii") for label in labels.ALL_LABELS} | {DIRECTORY_LABEL}
    assert set(_LABEL_RE.findall(text)) == expected
    for label in expected:
        assert f"`{label}`" in text
    # The key-file AD label is not of the ketenpost/v1/ form; it is documented as it is.
    key_file_label = KEY_FILE_AD_LABEL.rstrip(b"\x00").decode("ascii")
    assert f"`{key_file_label}`" in text


STRUCTS: dict[str, type[msgspec.Struct]] = {
    "Envelope": envelope.Envelope,
    "Header": envelope.Header,
    "RecipientEntry": envelope.RecipientEntry,
    "Proof": envelope.Proof,
    "SignedObject": SignedObject,
    "ApproachToken": ApproachToken,
    "TokenSubject": TokenSubject,
    "PrivatePart": PrivatePart,
    "PrivatePartOpening": PrivatePartOpening,
    "TokenRevocation": TokenRevocation,
    "AcceptanceReceipt": AcceptanceReceipt,
    "DeliveryReceipt": DeliveryReceipt,
    "Rejection": Rejection,
    "SenderEvent": SenderEvent,
    "AuditEntry": AuditEntry,
    "DirectoryKey": DirectoryKey,
    "Partner": Partner,
    "GatewayEntry": GatewayEntry,
    "DirectoryContents": DirectoryContents,
}


def test_every_struct_table_lists_the_fields_in_wire_order() -> None:
    tables = {name: body for name, body in _STRUCT_RE.findall(_doc())}
    assert set(tables) == set(STRUCTS)
    for name, body in tables.items():
        rows = [row for row in body.splitlines()[2:] if row.strip()]
        fields = [re.match(r"\|\s*`([a-z_]+)`", row) for row in rows]
        assert all(fields), f"table {name}: every row starts with a `field`"
        documented = tuple(m.group(1) for m in fields if m)
        assert documented == STRUCTS[name].__struct_fields__, name


def test_the_reason_table_is_reasons_markdown() -> None:
    match = _REASONS_RE.search(_doc())
    assert match is not None
    assert match.group(1).strip() == reasons_markdown().strip()
    assert all(f"`{reason.value}`" in match.group(1) for reason in Reason)


def test_fixed_constants_are_documented() -> None:
    text = _doc()
    for constant in (
        envelope.SUITE,
        envelope.CONTENT_TYPE,
        f"{envelope.STANZA_LEN:,}",
        f"{envelope.MAX_RECIPIENTS}",
        f"{envelope.MAX_SUBJECTS}",
    ):
        assert constant in text, constant
