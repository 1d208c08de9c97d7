"""Event-loop savings of issue 3 that must not change what the gateway accepts or refuses.

* ``POST /v1/receipts`` decodes its body with msgspec (``gateway.app._receipts_body``). Every
  body in the table below gets exactly what the code before it gave (``_reference``, kept here
  verbatim): the same lists, or the same refusal with the same reason.
* Audit salts are drawn from ``os.urandom`` many at a time (``auditentry.new_salt``): every
  salt is 32 bytes from the CSPRNG and handed out once, across threads and across a fork.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from typing import Any

import pytest
from aiohttp import web

from gateway.app import _receipts_body
from gateway.protocol import auditentry
from gateway.protocol.auditentry import SALT_LEN, new_salt

# -- the receipts body ----------------------------------------------------------------------


def _reference(body: bytes, charset: str | None) -> tuple[list[bytes], list[bytes], list[int]]:
    """The handler's decoding before the change: ``request.json()`` (the charset, else UTF-8,
    then ``json.loads``) and ``_b64_list`` one string at a time."""
    try:
        document = json.loads(body.decode(charset or "utf-8"))
    except ValueError:
        raise web.HTTPBadRequest(reason="body is not JSON") from None
    if not isinstance(document, dict):
        raise web.HTTPBadRequest(reason="body is not a JSON object")
    acks = document.get("acks", [])
    if not isinstance(acks, list) or not all(
        isinstance(a, int) and not isinstance(a, bool) for a in acks
    ):
        raise web.HTTPBadRequest(reason="acks must be a list of event ids")

    def b64_list(name: str) -> list[bytes]:
        items = document.get(name, [])
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise web.HTTPBadRequest(reason=f"{name} must be a list of base64 strings")
        try:
            return [base64.b64decode(i, validate=True) for i in items]
        except ValueError:
            raise web.HTTPBadRequest(reason=f"{name} holds invalid base64") from None

    return b64_list("receipts"), b64_list("rejections"), acks


def _receipt(text: str) -> bytes:
    return b'{"receipts": ["' + text.encode("latin-1") + b'"]}'


# (name, body, charset)
BODIES: list[tuple[str, bytes, str | None]] = [
    # base64 strings
    ("padded", _receipt("AAEC"), None),
    ("padded, one '='", _receipt("AAE="), None),
    ("padded, two '='", _receipt("AA=="), None),
    ("empty string", _receipt(""), None),
    ("missing padding, two short", _receipt("AA"), None),
    ("missing padding, one short", _receipt("AAA"), None),
    ("half padding", _receipt("AA="), None),
    ("one data character", _receipt("A"), None),
    ("only padding", _receipt("=="), None),
    ("three '='", _receipt("A==="), None),
    ("excess padding after a full group", _receipt("AAAA===="), None),
    ("excess padding after a short group", _receipt("AA==="), None),
    ("padding in the middle", _receipt("AA==AA=="), None),
    ("data after padding", _receipt("AA=A"), None),
    ("non-zero trailing bits", _receipt("AB=="), None),
    ("standard alphabet + and /", _receipt("+/8="), None),
    ("urlsafe alphabet - and _", _receipt("-_8="), None),
    ("leading space", _receipt(" AA=="), None),
    ("trailing space", _receipt("AA== "), None),
    ("escaped newline inside", _receipt("AA\\n=="), None),
    ("escaped tab inside", _receipt("AA\\t=="), None),
    ("raw tab inside", _receipt("AA\t=="), None),
    ("JSON escape of a base64 character", _receipt("\\u0041A=="), None),
    ("non-ASCII character", _receipt("\xe9A=="), "latin-1"),
    ("non-ASCII in UTF-8", '{"receipts": ["\u00e9A=="]}'.encode(), None),
    (
        "two receipts and a rejection",
        b'{"receipts": ["AA==", "AAE="], "rejections": ["AAEC"]}',
        None,
    ),
    ("bad base64 in rejections only", b'{"receipts": ["AA=="], "rejections": ["AA"]}', None),
    # types
    ("receipts not a list", b'{"receipts": "AA=="}', None),
    ("receipts null", b'{"receipts": null}', None),
    ("receipt a number", b'{"receipts": [1]}', None),
    ("receipt null", b'{"receipts": [null]}', None),
    ("receipt a list", b'{"receipts": [["AA=="]]}', None),
    ("rejections an object", b'{"rejections": {}}', None),
    ("acks ints", b'{"acks": [1, 2, 0, -1]}', None),
    ("acks a huge int", b'{"acks": [123456789012345678901234567890]}', None),
    ("acks a bool", b'{"acks": [true]}', None),
    ("acks a float", b'{"acks": [1.0]}', None),
    ("acks an exponent", b'{"acks": [1e2]}', None),
    ("acks a string", b'{"acks": ["1"]}', None),
    ("acks not a list", b'{"acks": 1}', None),
    ("acks refused before bad receipts", b'{"receipts": [1], "acks": [true]}', None),
    ("everything absent", b"{}", None),
    ("empty lists", b'{"receipts": [], "rejections": [], "acks": []}', None),
    # the document
    ("unknown field", b'{"receipts": ["AA=="], "note": {"x": [1, 2.5, null]}}', None),
    ("unknown field NaN", b'{"receipts": ["AA=="], "x": NaN}', None),
    ("unknown field Infinity", b'{"x": -Infinity}', None),
    ("unknown field with invalid UTF-8", b'{"x": "\xff"}', None),
    ("unknown field with a raw control character", b'{"x": "a\x01b"}', None),
    ("unknown field with a lone surrogate escape", b'{"x": "\\ud800"}', None),
    ("unknown field with DEL", b'{"x": "a\x7fb"}', None),
    ("duplicate key, last wins", b'{"receipts": ["AA=="], "receipts": ["AAE="]}', None),
    ("duplicate key, first invalid", b'{"acks": "x", "acks": [1]}', None),
    ("duplicate key, last invalid", b'{"acks": [1], "acks": "x"}', None),
    ("not an object", b'["AA=="]', None),
    ("null", b"null", None),
    ("empty body", b"", None),
    ("whitespace around", b' \r\n\t{"receipts": ["AA=="]} \n', None),
    ("form feed between tokens", b'{\x0c"receipts": []}', None),
    ("trailing comma", b'{"receipts": ["AA=="],}', None),
    ("trailing NUL", b'{"receipts": ["AA=="]}\x00', None),
    ("single quotes", b"{'receipts': []}", None),
    ("UTF-8 byte order mark", b'\xef\xbb\xbf{"receipts": []}', None),
    ("deep nesting in an unknown field", b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b"}", None),
    ("moderate nesting in an unknown field", b'{"x": ' + b"[" * 500 + b"]" * 500 + b"}", None),
    # charsets
    ("charset UTF-8 spelled upper case", _receipt("AA=="), "UTF-8"),
    ("charset utf8", _receipt("AA=="), "utf8"),
    ("charset latin-1, ASCII body", _receipt("AA=="), "latin-1"),
    ("charset utf-16", '{"receipts": ["AA=="]}'.encode("utf-16"), "utf-16"),
    ("utf-16 body without a charset", '{"receipts": ["AA=="]}'.encode("utf-16"), None),
    ("unknown charset", _receipt("AA=="), "no-such-charset"),
]


def _outcome(decode: Any, body: bytes, charset: str | None) -> tuple[str, Any]:
    try:
        return "ok", decode(body, charset)
    except web.HTTPBadRequest as exc:
        return "400", exc.reason
    except (LookupError, RecursionError) as exc:  # a 500 before and after
        return "error", type(exc).__name__


@pytest.mark.parametrize(("name", "body", "charset"), BODIES, ids=[b[0] for b in BODIES])
def test_receipts_body_same_as_before(name: str, body: bytes, charset: str | None) -> None:
    assert _outcome(_receipts_body, body, charset) == _outcome(_reference, body, charset)


def test_receipts_body_table_covers_both_answers() -> None:
    """The table holds bodies that are accepted and bodies refused for each reason."""
    seen = {_outcome(_reference, body, charset)[0] for _, body, charset in BODIES}
    reasons = {
        _outcome(_reference, body, charset)[1]
        for _, body, charset in BODIES
        if _outcome(_reference, body, charset)[0] == "400"
    }
    assert seen == {"ok", "400", "error"}
    assert reasons == {
        "body is not JSON",
        "body is not a JSON object",
        "acks must be a list of event ids",
        "receipts must be a list of base64 strings",
        "rejections must be a list of base64 strings",
        "receipts holds invalid base64",
        "rejections holds invalid base64",
    }


def test_receipts_body_fast_path_answers_a_normal_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """A well-formed batch never reaches the checked path."""
    import gateway.app

    def refuse(body: bytes, charset: str | None) -> Any:
        raise AssertionError("the checked path ran")

    monkeypatch.setattr(gateway.app, "_receipts_body_checked", refuse)
    items = [base64.b64encode(bytes([i]) * 200).decode() for i in range(100)]
    body = json.dumps({"receipts": items, "rejections": items[:3], "acks": [1, 2]}).encode()
    receipts, rejections, acks = _receipts_body(body, None)
    assert receipts == [bytes([i]) * 200 for i in range(100)]
    assert rejections == receipts[:3]
    assert acks == [1, 2]


# -- audit salts ----------------------------------------------------------------------------


def test_salts_are_32_bytes_and_never_repeat_across_refills() -> None:
    salts = [new_salt() for _ in range(5 * auditentry._SALTS_PER_DRAW + 7)]
    assert all(isinstance(s, bytes) and len(s) == SALT_LEN for s in salts)
    assert len(set(salts)) == len(salts)


def test_salts_come_from_os_urandom_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each salt is the next unused 32-byte slice of an ``os.urandom`` draw."""
    draws: list[bytes] = []

    def urandom(n: int) -> bytes:
        draws.append(bytes(range(len(draws), len(draws) + 1)) * n)
        return draws[-1]

    monkeypatch.setattr(os, "urandom", urandom)
    auditentry._salts.clear()
    salts = [new_salt() for _ in range(auditentry._SALTS_PER_DRAW + 1)]
    assert len(draws) == 2
    assert b"".join(salts[:-1]) == draws[0]
    assert salts[-1] == draws[1][:SALT_LEN]
    auditentry._salts.clear()  # leave no predictable salts behind


def test_salts_unique_across_threads() -> None:
    per_thread = 3 * auditentry._SALTS_PER_DRAW
    results: list[list[bytes]] = [[] for _ in range(8)]
    start = threading.Barrier(len(results))

    def draw(out: list[bytes]) -> None:
        start.wait()
        out.extend(new_salt() for _ in range(per_thread))

    threads = [threading.Thread(target=draw, args=(out,)) for out in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [s for out in results for s in out]
    assert len(every) == len(results) * per_thread
    assert len(set(every)) == len(every)


def test_forked_child_does_not_reuse_the_parents_salts() -> None:
    new_salt()  # the deque now holds the rest of a draw
    left = list(auditentry._salts)
    assert left
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its deque's length and its first salts, then leave
        try:
            os.close(read)
            kept = len(auditentry._salts)
            os.write(write, kept.to_bytes(4, "big") + b"".join(new_salt() for _ in range(4)))
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    assert int.from_bytes(data[:4], "big") == 0
    child = [data[4 + i * SALT_LEN : 4 + (i + 1) * SALT_LEN] for i in range(4)]
    assert not set(child) & set(left)
    assert [new_salt() for _ in range(len(left))] == left  # the parent's own, untouched
