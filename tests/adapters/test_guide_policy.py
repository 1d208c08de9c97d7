"""The adapter guide's policy table says what the development policy allows, no more, no less."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.protocol.policy import default_policy
from gateway.protocol.types import ApproachKind, MessageType
from keys import Role

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "adapters.md"
PERSON_ONLY = " (person approaches only)"


def table_rules() -> dict[ApproachKind, set[tuple[Role, Role, MessageType]]]:
    """(sender role, recipient role, type) per kind, as the guide's table states them."""
    text = GUIDE.read_text(encoding="utf-8")
    block = re.search(r"<!-- policy-table:.*?-->\n(.*?)<!-- /policy-table -->", text, re.S)
    assert block is not None, "the policy table's markers are missing from the guide"
    out: dict[ApproachKind, set[tuple[Role, Role, MessageType]]] = {k: set() for k in ApproachKind}
    for line in block.group(1).splitlines()[2:]:
        sender, recipient, types = (c.strip() for c in line.strip("|").split("|"))
        kinds = [ApproachKind.PERSON] if types.endswith(PERSON_ONLY) else list(ApproachKind)
        recipients = list(Role) if recipient == "every role" else [Role(recipient)]
        for name in types.removesuffix(PERSON_ONLY).split(", "):
            for kind in kinds:
                for r in recipients:
                    out[kind].add((Role(sender), r, MessageType(name)))
    return out


def test_the_guide_states_the_development_policy_exactly() -> None:
    policy = default_policy()
    expected = {
        kind: {
            (sender, recipient, t)
            for sender, by_recipient in policy.rules[kind].items()
            for recipient, types in by_recipient.items()
            for t in types
        }
        for kind in ApproachKind
    }
    assert table_rules() == expected
