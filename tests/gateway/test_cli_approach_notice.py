"""``ketenpost approach notice``: the coordinator tells the participants an approach started.

The command line runs as a real process against one ``ketenpost serve`` process for the module,
over real mTLS (the fixtures and helpers of ``test_cli_partner``). Each recipient opens and
checks what it got with ``ketenpost inbox``, as a partner adapter would.
"""

from __future__ import annotations

import json
import secrets
import shutil
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest

from gateway.protocol.messages import ApproachNotice, decode_body
from gateway.protocol.token import check_private_part, token_hash, verify_token_signature
from tests.gateway import test_cli_partner
from tests.gateway.conftest import Deployment
from tests.gateway.test_cli_partner import (
    HALT,
    POLICE,
    VELSEN,
    Cli,
    _refusal,
    _yesterday,
    deployment_directory,
)

# The fixtures of test_cli_partner: this module's own ``ketenpost serve`` process, and the
# ``ketenpost`` runner for partners of the session's deployment against it.
served = test_cli_partner.served
cli = test_cli_partner.cli

CJG, OM = "cjg", "om"

DAAN: dict[str, Any] = {
    "given_name": "Daan",
    "family_name": "de Vries",
    "date_of_birth": "2010-05-17",
    "bsn": "111222333",
    "address": {
        "street": "Lange Nieuwstraat",
        "house_number": "12",
        "postcode": "1972GH",
        "city": "IJmuiden",
    },
}
NAME_AND_BIRTH = ["given_name", "family_name", "date_of_birth"]
EVERYTHING = [*NAME_AND_BIRTH, "bsn", "address"]


def _issue(cli: Cli, participants: str) -> tuple[str, str]:
    """Issue a person approach of one fresh subject as Velsen: (token id, pseudonym)."""
    done = cli.ok(
        ["approach", "issue"],
        VELSEN,
        "--kind",
        "person",
        "--new-subjects",
        "1",
        "--participants",
        participants,
        "--informed-at",
        _yesterday(),
        "--valid-days",
        "30",
    )
    issued = json.loads(done.stdout)
    (subject,) = issued["subjects"]
    return str(issued["token_id"]), str(subject)


def _persons_file(tmp_path: Path, pseudonym: str) -> Path:
    path = tmp_path / f"persons-{secrets.token_hex(4)}.json"
    path.write_text(json.dumps([{"pseudonym": pseudonym, **DAAN}]))
    return path


def _notice(cli: Cli, partner: str, token_id: str, *args: str) -> CompletedProcess[str]:
    return cli.run(["approach", "notice"], partner, token_id, *args)


def _sent(done: CompletedProcess[str]) -> list[dict[str, Any]]:
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return [json.loads(line) for line in done.stdout.splitlines()]


def _input_error(done: CompletedProcess[str]) -> str:
    """The message of a local refusal: exit 2, nothing on stdout, one ``ketenpost: error:``
    line that is not argparse's usage complaint."""
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    prefix = "ketenpost: error: "
    assert lines[0].startswith(prefix), lines[0]
    return lines[0][len(prefix) :]


def _nothing_sent(cli: Cli, partner: str, token_id: str) -> None:
    """``partner`` was sent nothing under ``token_id`` (left unacknowledged if it was)."""
    assert [line for line in cli.inbox(partner) if line.get("token_id") == token_id] == []


def _notices(cli: Cli, partner: str) -> list[dict[str, Any]]:
    """What ``partner``'s inbox opened and verified, acknowledged."""
    lines = cli.inbox(partner, "--wait", "5", "--ack")
    assert [line["kind"] for line in lines] == ["message"] * len(lines), lines
    assert all(line["acked"] for line in lines)
    return lines


# -- the flow --------------------------------------------------------------------------------


def test_each_recipient_gets_one_notice_with_the_details_its_role_may_hold(
    cli: Cli, deployment: Deployment, tmp_path: Path
) -> None:
    token_id, subject = _issue(cli, f"{POLICE},{HALT},{CJG}")
    persons = _persons_file(tmp_path, subject)
    contact = "M. Jansen, regisseur jeugd en veiligheid, 0255 567 200"

    sent = _sent(
        _notice(
            cli,
            VELSEN,
            token_id,
            "--to",
            f"{POLICE},{HALT}",
            "--persons",
            str(persons),
            "--contact",
            contact,
        )
    )
    # One message per recipient (the content differs per role), each receipt verified.
    assert [line["recipient"] for line in sent] == [POLICE, HALT]
    assert len({line["message_id"] for line in sent}) == 2
    for line in sent:
        assert line["first_time"] is True
        assert line["receipt"]["verified"] is True
        assert line["receipt"]["message_id"] == line["message_id"]
        assert line["persons"] == {subject: NAME_AND_BIRTH}

    # Halt opens and verifies it: Daan by name and date of birth only (ADR 9), enough to link
    # the pseudonym in Halt's own register.
    (opened,) = _notices(cli, HALT)
    assert (opened["type"], opened["sender"], opened["token_id"], opened["message_id"]) == (
        "approach-notice",
        VELSEN,
        token_id,
        sent[1]["message_id"],
    )
    assert opened["subjects"] == [subject]
    body = opened["body"]
    assert (body["change"], body["approach_kind"], body["contact"]) == (
        "started",
        "person",
        contact,
    )
    assert body["persons"] == [
        {
            "pseudonym": subject,
            "given_name": "Daan",
            "family_name": "de Vries",
            "date_of_birth": "2010-05-17",
            "bsn": None,
            "address": None,
        }
    ]
    # It carries the registered token and the opening of its private part from the
    # coordinator's approach file: the recipient can check the private part itself.
    notice = decode_body(json.dumps(body).encode())
    assert isinstance(notice, ApproachNotice)
    token = verify_token_signature(notice.token, deployment_directory(deployment))
    assert token.token_id == token_id
    saved = json.loads(
        (deployment.partner_dir(VELSEN) / "approaches" / f"{token_id}.json").read_text()
    )
    assert token_hash(notice.token) == saved["token_hash"]
    assert check_private_part(token, notice.token_private).decided_by == VELSEN

    (police,) = _notices(cli, POLICE)
    assert police["message_id"] == sent[0]["message_id"]
    assert police["body"]["persons"] == body["persons"]

    # The CJG's role may hold more (BSN and address); Halt and the police got fewer.
    to_cjg = _sent(_notice(cli, VELSEN, token_id, "--to", CJG, "--persons", str(persons)))
    assert [(line["recipient"], line["persons"]) for line in to_cjg] == [
        (CJG, {subject: EVERYTHING})
    ]
    (cjg,) = _notices(cli, CJG)
    assert cjg["body"]["persons"] == [{"pseudonym": subject, **DAAN}]
    assert cjg["body"]["contact"] is None

    # The same notice again derives the same message id: refused, never a second message.
    again = _notice(cli, VELSEN, token_id, "--to", CJG, "--persons", str(persons))
    assert _refusal(again) == "duplicate_id"


def test_without_to_every_other_participant_gets_it_and_without_persons_none_are_sent(
    cli: Cli,
) -> None:
    token_id, subject = _issue(cli, f"{POLICE},{HALT}")
    sent = _sent(_notice(cli, VELSEN, token_id, "--change", "changed"))
    assert [(line["recipient"], line["persons"]) for line in sent] == [(POLICE, {}), (HALT, {})]
    for partner in (POLICE, HALT):
        (opened,) = _notices(cli, partner)
        # The schema allows a notice without persons: the token and its private part only.
        assert opened["type"] == "approach-notice"
        assert opened["subjects"] == [subject]
        assert opened["body"]["persons"] == []
        assert opened["body"]["change"] == "changed"


# -- refused locally, nothing sent -----------------------------------------------------------


def test_a_recipient_that_is_not_a_participant_is_refused_before_anything_is_sent(
    cli: Cli,
) -> None:
    token_id, _subject = _issue(cli, f"{POLICE},{HALT}")
    message = _input_error(_notice(cli, VELSEN, token_id, "--to", f"{HALT},{OM}"))
    assert message.startswith(f"--to: {OM} is not a participant of the token"), message
    # The coordinator itself is no recipient either.
    message = _input_error(_notice(cli, VELSEN, token_id, "--to", VELSEN))
    assert message.startswith(f"--to: {VELSEN} is not a participant"), message
    # Halt, a participant named beside the stranger, got nothing.
    _nothing_sent(cli, HALT, token_id)


def test_a_token_without_an_approach_file_is_an_error_exit_2(
    cli: Cli, deployment: Deployment
) -> None:
    unknown = secrets.token_hex(16)
    message = _input_error(_notice(cli, VELSEN, unknown))
    path = deployment.partner_dir(VELSEN) / "approaches" / f"{unknown}.json"
    assert message.startswith(f"no approach file {path}: only the coordinator"), message


def test_a_partner_that_is_not_the_coordinator_cannot_send_the_notice(
    cli: Cli, deployment: Deployment
) -> None:
    token_id, _subject = _issue(cli, f"{POLICE},{HALT}")
    # The police hold no private part of Velsen's approach ...
    message = _input_error(_notice(cli, POLICE, token_id, "--to", HALT))
    assert message.startswith("no approach file "), message
    # ... and even with a copy of the coordinator's file they may not announce its approach.
    theirs = deployment.partner_dir(POLICE) / "approaches" / f"{token_id}.json"
    theirs.parent.mkdir(mode=0o700, exist_ok=True)
    shutil.copyfile(deployment.partner_dir(VELSEN) / "approaches" / f"{token_id}.json", theirs)
    try:
        message = _input_error(_notice(cli, POLICE, token_id, "--to", HALT))
    finally:
        theirs.unlink()
    assert message == (
        f"only the issuing coordinator ({VELSEN}) sends this token's approach-notice"
    ), message
    _nothing_sent(cli, HALT, token_id)


def test_a_bad_persons_file_is_an_error_exit_2(cli: Cli, tmp_path: Path) -> None:
    token_id, subject = _issue(cli, f"{POLICE},{HALT}")
    stranger = _persons_file(tmp_path, secrets.token_hex(16))
    message = _input_error(_notice(cli, VELSEN, token_id, "--persons", str(stranger)))
    assert "is not a subject of the token" in message, message
    bad_bsn = tmp_path / "bad-bsn.json"
    bad_bsn.write_text(json.dumps([{"pseudonym": subject, "bsn": "123456789"}]))
    message = _input_error(_notice(cli, VELSEN, token_id, "--persons", str(bad_bsn)))
    assert "eleven-test" in message, message
    missing = tmp_path / "missing.json"
    message = _input_error(_notice(cli, VELSEN, token_id, "--persons", str(missing)))
    assert message.startswith("--persons: "), message
    _nothing_sent(cli, HALT, token_id)


# -- refused by the gateway ------------------------------------------------------------------


def test_a_gateway_refusal_exits_3_with_the_reason(cli: Cli) -> None:
    token_id, _subject = _issue(cli, f"{POLICE},{HALT}")
    cli.ok(["approach", "revoke"], VELSEN, token_id, "--reason", "Aanpak beëindigd")
    done = _notice(cli, VELSEN, token_id)
    assert _refusal(done) == "token_revoked"
    assert f"notice to {POLICE} (nothing sent)" in done.stderr


# -- the command line itself -----------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["nope"], id="bad-token-id"),
        pytest.param(["0123456789abcdef0123456789abcdef", "--change", "ended"], id="bad-change"),
        pytest.param(["0123456789abcdef0123456789abcdef", "--to", "Halt!"], id="bad-to"),
        pytest.param(
            ["0123456789abcdef0123456789abcdef", "--contact", "x" * 201], id="long-contact"
        ),
    ],
)
def test_bad_flags_are_an_argparse_error_exit_2(cli: Cli, args: list[str]) -> None:
    done = cli.run(["approach", "notice"], VELSEN, *args)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert "usage: ketenpost approach notice" in done.stderr


def test_help_documents_the_persons_file(cli: Cli) -> None:
    done = cli.run(["approach", "notice"], VELSEN, "--help")
    assert done.returncode == 0, done.stderr
    assert '"pseudonym"' in done.stdout
    assert "--persons" in done.stdout
