"""``ketenpost approach issue|revoke``, ``send`` and ``inbox`` as partners run them.

The command line runs as a real process. Most tests talk to one ``ketenpost serve`` process
for the module (``test_serve_process.serve_gateway``); the rejection test uses the in-process
gateway of ``conftest`` to submit a body that only a recipient can find fault with.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest

from gateway.protocol.messages import encode_body, example
from gateway.protocol.token import (
    PrivatePartOpening,
    check_private_part,
    decode_signed,
    verify_token_signature,
)
from gateway.protocol.types import MessageType
from keys import Directory
from keys.signed_directory import TrustedDirectory, read_bundle
from tests.gateway.conftest import Deployment, Gw
from tests.gateway.test_serve_process import (
    ServedGateway,
    clean_environ,
    ketenpost_command,
    run_ketenpost,
    serve_gateway,
)

VELSEN, POLICE, HALT = "gemeente-velsen", "politie-ijmond", "halt"


@pytest.fixture(scope="module")
def served(
    deployment: Deployment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedGateway]:
    with serve_gateway(deployment, tmp_path_factory.mktemp("served")) as gw:
        yield gw


def _yesterday() -> str:
    return (datetime.datetime.now(datetime.UTC).date() - datetime.timedelta(days=1)).isoformat()


class Cli:
    """Runs ``ketenpost`` verbs for partners of ``deployment`` against ``url``."""

    def __init__(self, deployment: Deployment, url: str) -> None:
        self.deployment = deployment
        self.url = url

    def run(self, verb: list[str], partner: str, *args: str) -> CompletedProcess[str]:
        return run_ketenpost(
            *verb,
            "--partner-dir",
            str(self.deployment.partner_dir(partner)),
            "--gateway",
            self.url,
            *args,
        )

    def ok(self, verb: list[str], partner: str, *args: str) -> CompletedProcess[str]:
        done = self.run(verb, partner, *args)
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        return done

    def issue(self, *args: str) -> dict[str, Any]:
        done = self.ok(
            ["approach", "issue"],
            VELSEN,
            "--kind",
            "person",
            "--new-subjects",
            "1",
            "--participants",
            f"{POLICE},{HALT}",
            "--informed-at",
            _yesterday(),
            "--valid-days",
            "30",
            *args,
        )
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def inbox(self, partner: str, *args: str) -> list[dict[str, Any]]:
        done = self.ok(["inbox"], partner, *args)
        return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.fixture
def cli(deployment: Deployment, served: ServedGateway) -> Cli:
    return Cli(deployment, served.url)


def _body(tmp_path: Path, message_type: MessageType, subjects: list[str]) -> Path:
    path = tmp_path / f"{message_type.value}-{secrets.token_hex(4)}.json"
    path.write_bytes(encode_body(example(message_type, subjects=tuple(subjects))))
    return path


def _refusal(done: CompletedProcess[str]) -> str:
    """The reason of a ``refused`` error line; asserts exit 3 and the one-line form."""
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    prefix = "ketenpost: error: refused: "
    assert lines[0].startswith(prefix), lines[0]
    return str(lines[0][len(prefix) :].split(":", 1)[0])


# -- the full flow ---------------------------------------------------------------------------


def test_issue_send_inbox_ack_and_the_senders_receipt_event(
    cli: Cli, deployment: Deployment, tmp_path: Path
) -> None:
    issued = cli.issue()
    token_id = issued["token_id"]
    (subject,) = issued["subjects"]
    assert len(subject) == 32
    int(subject, 16)

    # The private part is kept beside the partner's folder, 0600, and opens the token.
    approach_file = deployment.partner_dir(VELSEN) / "approaches" / f"{token_id}.json"
    assert issued["approach_file"] == str(approach_file)
    assert stat.S_IMODE(approach_file.stat().st_mode) == 0o600
    saved = json.loads(approach_file.read_text())
    signed = decode_signed(base64.b64decode(saved["signed_token"]))
    token = verify_token_signature(signed, deployment_directory(deployment))
    opening = PrivatePartOpening(
        salt=base64.b64decode(saved["private_part_opening"]["salt"]),
        content=base64.b64decode(saved["private_part_opening"]["content"]),
    )
    private = check_private_part(token, opening)
    assert private.decided_by == VELSEN
    assert {str(r) for r in private.purposes} == {"municipality", "police", "halt"}
    assert token.subject_pseudonyms == (subject,)
    assert token.participants == (VELSEN, POLICE, HALT)

    body = _body(tmp_path, MessageType.SIGNAL, [subject])
    sent = json.loads(
        cli.ok(
            ["send"],
            POLICE,
            "--to",
            HALT,
            "--approach",
            token_id,
            "--type",
            "signal",
            "--body",
            str(body),
        ).stdout
    )
    message_id = sent["message_id"]
    assert sent["receipt"]["message_id"] == message_id
    assert sent["receipt"]["verified"] is True
    assert sent["first_time"] is True

    lines = cli.inbox(HALT, "--wait", "5", "--ack")
    assert [(line["kind"], line["message_id"]) for line in lines] == [("message", message_id)]
    (opened,) = lines
    assert opened["body"] == json.loads(body.read_bytes())
    assert opened["sender"] == POLICE
    assert opened["subjects"] == [subject]
    assert opened["acked"] is True
    # Acknowledged: the delivery ended, nothing comes again.
    assert cli.inbox(HALT) == []

    events = cli.inbox(POLICE, "--wait", "5", "--ack")
    assert [(e["kind"], e["event"], e["message_id"]) for e in events] == [
        ("event", "receipt", message_id)
    ]
    assert events[0]["verified"] is True
    assert events[0]["recipient"] == HALT
    assert events[0]["acked"] is True
    assert cli.inbox(POLICE) == []

    # Sending the same file again derives the same message id: refused, not sent twice.
    again = cli.run(
        ["send"],
        POLICE,
        "--to",
        HALT,
        "--approach",
        token_id,
        "--type",
        "signal",
        "--body",
        str(body),
    )
    assert _refusal(again) == "duplicate_id"


def deployment_directory(deployment: Deployment) -> Directory:
    trusted = TrustedDirectory((deployment.root / "directory" / "root.json").read_bytes())
    return trusted.update(read_bundle(deployment.root / "directory"), int(time.time()))


# -- refusals --------------------------------------------------------------------------------


def test_send_of_a_type_the_policy_forbids_exits_3_with_the_reason(
    cli: Cli, tmp_path: Path
) -> None:
    issued = cli.issue()
    # Police may signal or refer to Halt, never close the approach.
    body = _body(tmp_path, MessageType.CLOSURE, issued["subjects"])
    done = cli.run(
        ["send"],
        POLICE,
        "--to",
        HALT,
        "--approach",
        issued["token_id"],
        "--type",
        "closure",
        "--body",
        str(body),
    )
    assert _refusal(done) == "type_not_allowed"


def test_send_under_an_unknown_approach_exits_3(cli: Cli, tmp_path: Path) -> None:
    body = _body(tmp_path, MessageType.SIGNAL, [secrets.token_hex(16)])
    done = cli.run(
        ["send"],
        POLICE,
        "--to",
        HALT,
        "--approach",
        secrets.token_hex(16),
        "--type",
        "signal",
        "--body",
        str(body),
    )
    assert _refusal(done) in {"token_not_registered", "no_token"}


def test_revoked_approach_refuses_later_sends(cli: Cli, tmp_path: Path) -> None:
    issued = cli.issue()
    token_id = issued["token_id"]
    body = _body(tmp_path, MessageType.SIGNAL, issued["subjects"])
    revoked = json.loads(
        cli.ok(["approach", "revoke"], VELSEN, token_id, "--reason", "Aanpak beëindigd").stdout
    )
    assert revoked["token_id"] == token_id
    done = cli.run(
        ["send"],
        POLICE,
        "--to",
        HALT,
        "--approach",
        token_id,
        "--type",
        "signal",
        "--body",
        str(body),
    )
    assert _refusal(done) == "token_revoked"


def test_only_a_coordinator_issues(cli: Cli) -> None:
    done = cli.run(
        ["approach", "issue"],
        POLICE,
        "--kind",
        "person",
        "--new-subjects",
        "1",
        "--participants",
        HALT,
        "--informed-at",
        _yesterday(),
    )
    assert done.returncode == 1
    assert done.stderr.startswith("ketenpost: error: ")
    assert "token key" in done.stderr


# -- the command line itself -----------------------------------------------------------------

T = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(
            [
                "approach",
                "issue",
                "--new-subjects",
                "1",
                "--participants",
                HALT,
                "--informed-at",
                "2026-01-01",
            ],
            id="issue-without-kind",
        ),
        pytest.param(
            [
                "approach",
                "issue",
                "--kind",
                "person",
                "--subject",
                T,
                "--new-subjects",
                "1",
                "--participants",
                HALT,
                "--informed-at",
                "2026-01-01",
            ],
            id="issue-subject-and-new-subjects",
        ),
        pytest.param(
            [
                "approach",
                "issue",
                "--kind",
                "person",
                "--subject",
                "ABC",
                "--participants",
                HALT,
                "--informed-at",
                "2026-01-01",
            ],
            id="issue-bad-pseudonym",
        ),
        pytest.param(
            [
                "approach",
                "issue",
                "--kind",
                "person",
                "--new-subjects",
                "1",
                "--participants",
                HALT,
                "--informed-at",
                "2026-01-01",
                "--informing-deferred-until",
                "2027-01-01",
            ],
            id="issue-informed-and-deferred",
        ),
        pytest.param(
            [
                "approach",
                "issue",
                "--kind",
                "person",
                "--new-subjects",
                "1",
                "--participants",
                HALT,
                "--informed-at",
                "yesterday",
            ],
            id="issue-bad-date",
        ),
        pytest.param(
            [
                "approach",
                "issue",
                "--kind",
                "tribe",
                "--new-subjects",
                "1",
                "--participants",
                HALT,
                "--informed-at",
                "2026-01-01",
            ],
            id="issue-bad-kind",
        ),
        pytest.param(["approach", "revoke", T], id="revoke-without-reason"),
        pytest.param(["approach", "revoke", "nope", "--reason", "x"], id="revoke-bad-token-id"),
        pytest.param(
            ["send", "--approach", T, "--type", "signal", "--body", "b.json"], id="send-no-to"
        ),
        pytest.param(
            ["send", "--to", HALT, "--approach", T, "--type", "gossip", "--body", "b.json"],
            id="send-unknown-type",
        ),
        pytest.param(
            ["send", "--to", "Halt!", "--approach", T, "--type", "signal", "--body", "b.json"],
            id="send-bad-partner-id",
        ),
        pytest.param(["inbox", "--wait", "soon"], id="inbox-bad-wait"),
        pytest.param(["inbox", "--passphrase", "hunter2"], id="no-passphrase-argument"),
    ],
)
def test_bad_flags_are_an_argparse_error_exit_2(deployment: Deployment, argv: list[str]) -> None:
    verb = argv[:2] if argv[0] == "approach" else argv[:1]
    rest = argv[len(verb) :]
    done = run_ketenpost(
        *verb, "--partner-dir", str(deployment.partner_dir(VELSEN)), *rest, timeout=30
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert "usage: ketenpost" in done.stderr
    assert "error:" in done.stderr.splitlines()[-1]


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["inbox"], id="inbox"),
        pytest.param(["approach", "revoke", T, "--reason", "x"], id="revoke"),
        pytest.param(
            ["send", "--to", HALT, "--approach", T, "--type", "signal", "--body", "b.json"],
            id="send",
        ),
        pytest.param(
            [
                "approach",
                "issue",
                "--kind",
                "group",
                "--new-subjects",
                "2",
                "--participants",
                HALT,
                "--informed-at",
                "2026-01-01",
            ],
            id="issue",
        ),
    ],
)
def test_missing_partner_dir_is_one_error_line(tmp_path: Path, argv: list[str]) -> None:
    missing = tmp_path / "partners" / "nobody"
    verb = argv[:2] if argv[0] == "approach" else argv[:1]
    done = run_ketenpost(*verb, "--partner-dir", str(missing), *argv[len(verb) :], timeout=30)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == f"ketenpost: error: {missing}: no such partner folder\n"


# -- a recipient's own checks ----------------------------------------------------------------


async def _cli(deployment: Deployment, url: str, partner: str, *args: str) -> tuple[int, str, str]:
    """``ketenpost`` as a subprocess while this event loop keeps serving the gateway."""
    process = await asyncio.create_subprocess_exec(
        *ketenpost_command(),
        *args,
        "--partner-dir",
        str(deployment.partner_dir(partner)),
        "--gateway",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_environ(),
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_inbox_rejects_a_body_that_fails_the_schema_and_the_sender_learns_why(
    gateway: Gw,
) -> None:
    gw = gateway
    token = gw.issue_token()
    velsen = await gw.client(VELSEN)
    await velsen.register_token(token.body)
    police = await gw.client(POLICE)
    # Type and subjects bind to the header, so the gateway accepts it; the unknown field only
    # shows once the recipient opens it.
    bogus = json.dumps(
        {"type": "signal", "subjects": list(token.subjects), "gossip": "not in the schema"}
    ).encode()
    accepted = await police.submit(gw.seal(token, body=bogus))

    code, out, err = await _cli(gw.deployment, gw.url, HALT, "inbox", "--ack")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(x["kind"], x["message_id"], x["reason"]) for x in lines] == [
        ("rejection", accepted.message_id, "schema_invalid")
    ]
    assert lines[0]["detail"]
    assert lines[0]["acked"] is True

    code, out, err = await _cli(gw.deployment, gw.url, POLICE, "inbox", "--ack")
    assert code == 0, err
    (event,) = [json.loads(line) for line in out.splitlines()]
    assert (event["event"], event["message_id"], event["verified"]) == (
        "rejection",
        accepted.message_id,
        True,
    )
    assert event["rejection"]["reason"] == "schema_invalid"
    status = await police.message_status(accepted.message_id)
    assert [r["state"] for r in status["recipients"]] == ["rejected"]


async def test_inbox_without_ack_leaves_the_message_leased(gateway: Gw) -> None:
    gw = gateway
    token = gw.issue_token()
    velsen = await gw.client(VELSEN)
    await velsen.register_token(token.body)
    police = await gw.client(POLICE)
    accepted = await police.submit(gw.seal(token))
    code, out, err = await _cli(gw.deployment, gw.url, HALT, "inbox")
    assert code == 0, err
    (line,) = [json.loads(x) for x in out.splitlines()]
    assert (line["kind"], line["message_id"], line["acked"]) == (
        "message",
        accepted.message_id,
        False,
    )
    status = await police.message_status(accepted.message_id)
    assert [r["state"] for r in status["recipients"]] == ["pending"]
