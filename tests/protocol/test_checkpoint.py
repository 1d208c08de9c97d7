"""Signed checkpoints: interoperability vectors from Go's note package and the Go checksum
database, round trips, exact bytes, and every way a checkpoint must be refused."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.protocol.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointReason,
    NoteVerifierKey,
    add_signature,
    checkpoint_text,
    make_checkpoint,
    note_key_id,
    parse_checkpoint,
    parse_note,
    sign_note,
    verify_checkpoint,
    verify_note,
)
from gateway.protocol.merkle import MAX_TREE_SIZE
from keys import Ed25519KeyPair, KeyUse

# golang.org/x/mod/sumdb/note, note_test.go and the package documentation: a signer key, its
# verifier key and the note it makes. Ed25519 is deterministic, so we must produce these bytes.
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT + "\n— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgK"
    "vqfqdngotpRZb6KE6RyyBwJnAM=\n"
)

# Real checkpoints of the Go checksum database (a C2SP tlog-checkpoint log), with the verifier
# key the go command pins. The second carries a witness cosignature from a key we do not know
# (transparency-dev/witness documentation): it must verify with that line ignored.
SUMDB_VKEY = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
SUMDB_ORIGIN = "go.sum database tree"
SUMDB_CHECKPOINT = (
    "go.sum database tree\n6476701\nmb8QLQIs0Z0yP5Cstq6guj87oXWeC9gEM8oVikmm9Wk=\n\n"
    "— sum.golang.org Az3grsLX85Gz+s1SiTbgkuqxgItqFq7gsMUEyVnrsa9LM7Us9S+1xbFIGu95949rj4nPRYf"
    "vimWEPWL+o3GeoWwOoAw=\n"
)
SUMDB_COSIGNED = (
    "go.sum database tree\n15067302\ngJyioq6dwR9n+NjEWORfYmH+ubeYm3kH42BBQ0bTpYI=\n\n"
    "— sum.golang.org Az3grp1rvWOs5NKlr/xR4GLN/CDyzzakmt1o61uSxYKpK1SerqOP2ClbX/peKUZjYnyomH5X"
    "z7GZG3TpB7OeKn4E2ww=\n"
    "— test.example.com qTGhC/xIPQ0AXKHK6Y+9ypRfuvMZWPjRXM8NiOg5M1WREn07VQXyuIXM3NRNav3ieVFLUqDR"
    "K77PWDmL6w8w84UqeAw=\n"
)

ORIGIN = "ketenpost.test/ijmond/audit"
ROOT = hashlib.sha256(b"a root").digest()
GATEWAY = Ed25519KeyPair.from_seed(KeyUse.SIGN, bytes(range(32)))
WITNESS = Ed25519KeyPair.from_seed(KeyUse.SIGN, bytes(range(1, 33)))
OTHER = Ed25519KeyPair.from_seed(KeyUse.SIGN, bytes(range(2, 34)))


def go_signer() -> Ed25519KeyPair:
    raw = base64.b64decode(GO_SKEY.split("+", 4)[4])
    assert raw[0] == 1
    return Ed25519KeyPair.from_seed(KeyUse.SIGN, raw[1:])


def gateway_checkpoint(size: int = 42, root: bytes = ROOT) -> str:
    return make_checkpoint(ORIGIN, size, root, ORIGIN, GATEWAY)


def verify(note: str) -> Checkpoint:
    return verify_checkpoint(note, ORIGIN, ORIGIN, GATEWAY.public)


# -- interoperability ----------------------------------------------------------------------------


def test_go_note_vector_is_reproduced_byte_for_byte() -> None:
    key = go_signer()
    assert NoteVerifierKey.for_keypair("PeterNeumann", key).vkey == GO_VKEY
    assert sign_note(GO_TEXT, "PeterNeumann", key) == GO_NOTE
    assert verify_note(GO_NOTE, NoteVerifierKey.from_vkey(GO_VKEY)).text == GO_TEXT


def test_go_note_vector_tampered_is_refused() -> None:
    with pytest.raises(CheckpointError) as e:
        verify_note(
            GO_NOTE.replace("cryptography", "cryptographY"), NoteVerifierKey.from_vkey(GO_VKEY)
        )
    assert e.value.reason is CheckpointReason.BAD_SIGNATURE


def test_sumdb_checkpoint_verifies() -> None:
    vkey = NoteVerifierKey.from_vkey(SUMDB_VKEY)
    cp = verify_checkpoint(SUMDB_CHECKPOINT, SUMDB_ORIGIN, vkey.name, vkey.public_key)
    assert cp.size == 6476701
    assert base64.b64encode(cp.root_hash).decode() == "mb8QLQIs0Z0yP5Cstq6guj87oXWeC9gEM8oVikmm9Wk="
    assert cp.extensions == ()


def test_sumdb_checkpoint_with_unknown_cosigner_verifies() -> None:
    vkey = NoteVerifierKey.from_vkey(SUMDB_VKEY)
    cp = verify_checkpoint(SUMDB_COSIGNED, SUMDB_ORIGIN, vkey.name, vkey.public_key)
    assert cp.size == 15067302
    assert [s.key_name for s in cp.signatures] == ["sum.golang.org", "test.example.com"]


# -- round trips and exact bytes --------------------------------------------------------------


def test_exact_bytes() -> None:
    note = gateway_checkpoint(42)
    text = f"{ORIGIN}\n42\n{base64.b64encode(ROOT).decode()}\n"
    key_id = hashlib.sha256(ORIGIN.encode() + b"\n\x01" + GATEWAY.public).digest()[:4]
    sig = base64.b64encode(key_id + GATEWAY.sign(text.encode())).decode()
    assert note == f"{text}\n— {ORIGIN} {sig}\n"
    assert note_key_id(ORIGIN, GATEWAY.public) == key_id


def test_round_trip() -> None:
    cp = verify(gateway_checkpoint(42))
    assert (cp.origin, cp.size, cp.root_hash, cp.extensions) == (ORIGIN, 42, ROOT, ())
    assert cp.text == checkpoint_text(ORIGIN, 42, ROOT)


def test_empty_tree_checkpoint() -> None:
    assert verify(gateway_checkpoint(0, hashlib.sha256(b"").digest())).size == 0


def test_extension_lines_are_signed_and_kept() -> None:
    note = make_checkpoint(ORIGIN, 7, ROOT, ORIGIN, GATEWAY, extensions=("x-one", "x two"))
    assert verify(note).extensions == ("x-one", "x two")
    with pytest.raises(CheckpointError) as e:
        verify(note.replace("x two", "x 2"))
    assert e.value.reason is CheckpointReason.BAD_SIGNATURE


def test_bytes_input_is_accepted() -> None:
    assert (
        verify_checkpoint(gateway_checkpoint().encode(), ORIGIN, ORIGIN, GATEWAY.public).size == 42
    )


@given(
    origin=st.text(
        alphabet=st.characters(codec="utf-8", min_codepoint=0x20, exclude_characters="\x7f"),
        min_size=1,
    ),
    size=st.integers(min_value=0, max_value=MAX_TREE_SIZE),
    root=st.binary(min_size=32, max_size=32),
    extensions=st.lists(
        st.text(alphabet=st.characters(codec="utf-8", min_codepoint=0x20), min_size=1), max_size=3
    ),
)
def test_round_trip_property(origin: str, size: int, root: bytes, extensions: list[str]) -> None:
    note = make_checkpoint(origin, size, root, "ketenpost.test/k", GATEWAY, extensions)
    cp = verify_checkpoint(note, origin, "ketenpost.test/k", GATEWAY.public)
    assert (cp.origin, cp.size, cp.root_hash, cp.extensions) == (
        origin,
        size,
        root,
        tuple(extensions),
    )
    assert parse_checkpoint(note) == cp


# -- cosignatures ----------------------------------------------------------------------------------


def test_cosigned_note_with_unknown_signers_still_verifies() -> None:
    note = add_signature(gateway_checkpoint(), "partner.test/politie-ijmond", WITNESS)
    note = add_signature(note, "partner.test/halt", OTHER)
    cp = verify(note)
    assert [s.key_name for s in cp.signatures] == [
        ORIGIN,
        "partner.test/politie-ijmond",
        "partner.test/halt",
    ]
    # And the witness's own line verifies under the witness key.
    verify_note(note, NoteVerifierKey("partner.test/politie-ijmond", WITNESS.public))


def test_gateway_signature_need_not_come_first() -> None:
    text = checkpoint_text(ORIGIN, 3, ROOT)
    witness_first = add_signature(sign_note(text, "partner.test/om", WITNESS), ORIGIN, GATEWAY)
    assert verify(witness_first).size == 3


def test_only_cosignatures_is_refused() -> None:
    note = sign_note(checkpoint_text(ORIGIN, 3, ROOT), "partner.test/om", WITNESS)
    with pytest.raises(CheckpointError) as e:
        verify(note)
    assert e.value.reason is CheckpointReason.UNKNOWN_KEY


def test_same_name_other_key_is_ignored_not_trusted() -> None:
    """A line with the gateway's name but another key ID is someone else's: ignored."""
    impostor = sign_note(checkpoint_text(ORIGIN, 99, ROOT), ORIGIN, OTHER)
    with pytest.raises(CheckpointError) as e:
        verify(impostor)
    assert e.value.reason is CheckpointReason.UNKNOWN_KEY


def test_a_bad_line_from_the_gateway_key_refuses_the_note() -> None:
    good = gateway_checkpoint()
    # A second line claiming the gateway key but signing other text.
    extra = sign_note(checkpoint_text(ORIGIN, 43, ROOT), ORIGIN, GATEWAY).split("\n\n")[1]
    with pytest.raises(CheckpointError) as e:
        verify(good + extra)
    assert e.value.reason is CheckpointReason.BAD_SIGNATURE


def test_add_signature_refuses_a_second_line_by_the_same_name() -> None:
    with pytest.raises(CheckpointError):
        add_signature(gateway_checkpoint(), ORIGIN, GATEWAY)


# -- refusals --------------------------------------------------------------------------------------


def _tamper_signature(note: str) -> str:
    text, line = note.split("\n\n")
    prefix, encoded = line.rstrip("\n").rsplit(" ", 1)
    raw = bytearray(base64.b64decode(encoded))
    raw[-1] ^= 1
    return f"{text}\n\n{prefix} {base64.b64encode(bytes(raw)).decode()}\n"


GOOD = gateway_checkpoint(42)
ROOT_B64 = base64.b64encode(ROOT).decode()
URLSAFE_B64 = base64.urlsafe_b64encode(bytes([0xFB]) * 32).decode()
OTHER_ROOT_B64 = base64.b64encode(hashlib.sha256(b"other").digest()).decode()

REFUSED: dict[str, tuple[str, CheckpointReason]] = {
    "tampered size": (GOOD.replace("\n42\n", "\n43\n"), CheckpointReason.BAD_SIGNATURE),
    "tampered root": (GOOD.replace(ROOT_B64, OTHER_ROOT_B64), CheckpointReason.BAD_SIGNATURE),
    "tampered signature": (_tamper_signature(GOOD), CheckpointReason.BAD_SIGNATURE),
    "tampered origin": (
        GOOD.replace(ORIGIN + "\n", "ketenpost.test/other\n", 1),
        CheckpointReason.BAD_SIGNATURE,
    ),
    "signed by another key": (
        make_checkpoint(ORIGIN, 42, ROOT, ORIGIN, OTHER),
        CheckpointReason.UNKNOWN_KEY,
    ),
    "no trailing newline": (GOOD[:-1], CheckpointReason.MALFORMED),
    "extra trailing newline": (GOOD + "\n", CheckpointReason.MALFORMED),
    "no blank line": (GOOD.replace("\n\n", "\n"), CheckpointReason.MALFORMED),
    "CRLF line ends": (GOOD.replace("\n", "\r\n"), CheckpointReason.MALFORMED),
    "tab in text": (GOOD.replace(ORIGIN, ORIGIN + "\t"), CheckpointReason.MALFORMED),
    "NUL in text": (GOOD.replace(ORIGIN, ORIGIN + "\x00"), CheckpointReason.MALFORMED),
    "hyphen instead of em dash": (GOOD.replace("— ", "- "), CheckpointReason.MALFORMED),
    "no signatures": (GOOD.split("\n\n")[0] + "\n\n", CheckpointReason.MALFORMED),
    "signature not base64": (
        GOOD.rsplit(" ", 1)[0] + " not*base64\n",
        CheckpointReason.MALFORMED,
    ),
    "signature too short": (
        GOOD.rsplit(" ", 1)[0] + " AAAAAA==\n",
        CheckpointReason.MALFORMED,
    ),
    "empty": ("", CheckpointReason.MALFORMED),
    "not UTF-8": ("\udc80" + GOOD, CheckpointReason.MALFORMED),
}


@pytest.mark.parametrize("name", REFUSED)
def test_refused(name: str) -> None:
    note, reason = REFUSED[name]
    with pytest.raises(CheckpointError) as e:
        verify(note)
    assert e.value.reason is reason


def test_wrong_origin_is_refused() -> None:
    with pytest.raises(CheckpointError) as e:
        verify_checkpoint(GOOD, "ketenpost.test/other", ORIGIN, GATEWAY.public)
    assert e.value.reason is CheckpointReason.WRONG_ORIGIN


def test_wrong_key_name_is_refused() -> None:
    with pytest.raises(CheckpointError) as e:
        verify_checkpoint(GOOD, ORIGIN, "ketenpost.test/other", GATEWAY.public)
    assert e.value.reason is CheckpointReason.UNKNOWN_KEY


def test_invalid_utf8_bytes_are_refused() -> None:
    with pytest.raises(CheckpointError) as e:
        verify_checkpoint(b"\xff" + GOOD.encode(), ORIGIN, ORIGIN, GATEWAY.public)
    assert e.value.reason is CheckpointReason.MALFORMED


def _body_note(body: str) -> str:
    """A note over an arbitrary body, properly signed: only the body's format is wrong."""
    return sign_note(body, ORIGIN, GATEWAY)


BAD_BODIES = {
    "size with leading zero": f"{ORIGIN}\n042\n{ROOT_B64}\n",
    "size with plus sign": f"{ORIGIN}\n+42\n{ROOT_B64}\n",
    "size with underscore": f"{ORIGIN}\n4_2\n{ROOT_B64}\n",
    "size negative": f"{ORIGIN}\n-1\n{ROOT_B64}\n",
    "size not ASCII digits": f"{ORIGIN}\n\u0664\u0662\n{ROOT_B64}\n",
    "size with space": f"{ORIGIN}\n 42\n{ROOT_B64}\n",
    "size too large": f"{ORIGIN}\n{2**63}\n{ROOT_B64}\n",
    "root not base64": f"{ORIGIN}\n42\nnot base64!\n",
    "root without padding": f"{ORIGIN}\n42\n{ROOT_B64.rstrip('=')}\n",
    "root URL-safe base64": f"{ORIGIN}\n42\n{URLSAFE_B64}\n",
    "root wrong length": f"{ORIGIN}\n42\n{base64.b64encode(b'x' * 31).decode()}\n",
    "root non-canonical": f"{ORIGIN}\n42\n{ROOT_B64[:-2]}B=\n",
    "two lines only": f"{ORIGIN}\n42\n",
    "empty origin": f"\n42\n{ROOT_B64}\n",
    "empty extension line": f"{ORIGIN}\n42\n{ROOT_B64}\n\nx\n",
}


@pytest.mark.parametrize("name", BAD_BODIES)
def test_malformed_body_is_refused(name: str) -> None:
    with pytest.raises(CheckpointError) as e:
        verify(_body_note(BAD_BODIES[name]))
    assert e.value.reason is CheckpointReason.MALFORMED


def test_too_many_signatures_is_refused() -> None:
    note = GOOD + GOOD.split("\n\n")[1] * 100
    with pytest.raises(CheckpointError) as e:
        parse_note(note)
    assert e.value.reason is CheckpointReason.MALFORMED


# -- making checkpoints and keys -------------------------------------------------------------------

BAD_MAKES = {
    "origin with newline": (f"{ORIGIN}\nx", 1, ROOT, ORIGIN),
    "empty origin": ("", 1, ROOT, ORIGIN),
    "negative size": (ORIGIN, -1, ROOT, ORIGIN),
    "short root": (ORIGIN, 1, ROOT[:31], ORIGIN),
    "key name with space": (ORIGIN, 1, ROOT, "a b"),
    "key name with plus": (ORIGIN, 1, ROOT, "a+b"),
    "empty key name": (ORIGIN, 1, ROOT, ""),
}


@pytest.mark.parametrize("name", BAD_MAKES)
def test_make_checkpoint_refuses_bad_input(name: str) -> None:
    origin, size, root, key_name = BAD_MAKES[name]
    with pytest.raises(CheckpointError):
        make_checkpoint(origin, size, root, key_name, GATEWAY)


def test_vkey_round_trip() -> None:
    key = NoteVerifierKey(ORIGIN, GATEWAY.public)
    assert NoteVerifierKey.from_vkey(key.vkey) == key
    name, key_id, encoded = key.vkey.split("+", 2)
    assert (name, key_id) == (ORIGIN, note_key_id(ORIGIN, GATEWAY.public).hex())
    assert base64.b64decode(encoded) == b"\x01" + GATEWAY.public


BAD_VKEYS = {
    "wrong key id": GO_VKEY.replace("c74f20a3", "c74f20a4"),
    "upper-case key id": GO_VKEY.replace("c74f20a3", "C74F20A3"),
    "wrong algorithm": "PeterNeumann+c74f20a3+" + base64.b64encode(b"\x02" + b"k" * 32).decode(),
    "short key": "PeterNeumann+c74f20a3+" + base64.b64encode(b"\x01" + b"k" * 31).decode(),
    "missing part": "PeterNeumann+c74f20a3",
    "name with space": GO_VKEY.replace("PeterNeumann", "Peter Neumann"),
}


@pytest.mark.parametrize("name", BAD_VKEYS)
def test_bad_vkeys_are_refused(name: str) -> None:
    with pytest.raises(CheckpointError):
        NoteVerifierKey.from_vkey(BAD_VKEYS[name])
