"""Length-prefixed framing of signed inputs, for the objects ``keys`` itself signs.

Rules kept here (house rule 6):

* Every signature starts from exactly one domain-separation label, so a signature made for one
  purpose can never be replayed as another.
* ``framed(label, *fields)`` is ``label ‖ 0x00 ‖ (len(field) as 4-byte big-endian ‖ field)…``:
  the label separates domains, the length prefixes make the concatenation unambiguous.
* This is byte for byte the framing of ``gateway.protocol.labels.framed``. ``keys`` imports
  nothing of ours, so it keeps its own copy of these few lines; a test checks the two agree.
"""

from __future__ import annotations

MAX_FIELD_BYTES = 2**32 - 1


def framed(label: bytes, *fields: bytes) -> bytes:
    """Return ``label ‖ 0x00 ‖ (len(field) as 4-byte big-endian ‖ field)…``.

    Raises ``ValueError`` if the label holds a NUL byte (it would make the label ambiguous) or a
    field is longer than a 4-byte length can say.
    """
    if b"\x00" in label:
        raise ValueError("a label must not contain a NUL byte")
    out = bytearray(label)
    out.append(0)
    for field in fields:
        if len(field) > MAX_FIELD_BYTES:
            raise ValueError("a framed field is at most 2**32 - 1 bytes")
        out += len(field).to_bytes(4, "big")
        out += field
    return bytes(out)


def unix_field(value: int | None) -> bytes:
    """An optional Unix time as a field: 8 bytes big-endian, or empty for ``None``.

    The length prefix tells the two apart, so "unknown" can never be read as a time.
    """
    if value is None:
        return b""
    if value < 0:
        raise ValueError("a Unix time is not negative")
    return value.to_bytes(8, "big")
