"""``newsletter inbound [FILE...]`` (files and stdin) and ``newsletter inbound serve`` with a
real SMTP and LMTP client (smtplib), in a subprocess as an MTA would run it."""

from __future__ import annotations

import os
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select, text
from typer.testing import CliRunner

from newsletter.cli import app as cli
from newsletter.config import Settings
from newsletter.db import session_scope
from newsletter.inbound.models import InboundEvent
from tests.conftest import Configure
from tests.servers import free_port
from tests.test_inbound_service import (
    BOUNCES,
    PEOPLE,
    Sent,
    dsn,
    events,
    inbound_settings,
    sent_campaign,
    status_of,
)

ROOT = Path(__file__).resolve().parent.parent


def inbound(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["inbound", *args], input=stdin)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def sent(configure: Configure, db_url: str, tmp_path: Path) -> Sent:
    return sent_campaign(inbound_settings(configure, db_url), tmp_path, PEOPLE)


def test_files_and_stdin_print_one_line_each(sent: Sent, tmp_path: Path) -> None:
    ann, bo, _ = PEOPLE
    first, second = tmp_path / "a.eml", tmp_path / "b.eml"
    first.write_bytes(dsn(to=sent.verp(ann), recipient=ann))
    second.write_bytes(dsn(to=sent.verp(bo), recipient=bo, status="4.2.2"))
    code, out, _ = inbound(str(first), str(second))
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{first}: hard_bounce, matched by verp (delivery ")
    assert f"subscriber #{sent.subscribers[ann]} bounced" in lines[0]
    assert lines[1].startswith(f"{second}: soft_bounce, matched by verp") and "1 of 3" in lines[1]
    assert ann not in out  # no subscriber address in what is printed
    # The same message from stdin (a pipe retried): recognised, nothing counted again.
    code, out, _ = inbound(stdin=first.read_bytes())
    assert code == 0 and out.startswith("stdin: hard_bounce") and "already processed" in out
    assert events(sent.settings) == 2


def test_a_message_nobody_can_read_is_stored_as_unknown(sent: Sent) -> None:
    code, out, _ = inbound(stdin=b"\x00\xff not mail at all")
    assert code == 0 and "unknown, matched nothing: nothing changed" in out
    assert events(sent.settings) == 1


def test_an_unreadable_file_and_a_huge_one_are_clear_errors(sent: Sent, tmp_path: Path) -> None:
    good = tmp_path / "good.eml"
    good.write_bytes(dsn(to=sent.verp(PEOPLE[0]), recipient=PEOPLE[0]))
    huge = tmp_path / "huge.eml"
    with huge.open("wb") as handle:
        handle.truncate(11 * 1024 * 1024)
    code, out, err = inbound(str(tmp_path / "missing.eml"), str(huge), str(good))
    assert code == 1
    assert "missing.eml: cannot read it: No such file or directory" in err
    assert "huge.eml: the message is larger than 10,485,760 bytes; not processed" in err
    assert out.startswith(f"{good}: hard_bounce")  # the good one went through all the same
    assert events(sent.settings) == 1


def test_inbound_help_names_both_command_lines() -> None:
    code, out, _ = inbound("--help")
    assert code == 0 and "[FILE]..." in out and "serve" in out
    code, out, _ = inbound("serve", "--help")
    assert code == 0 and "--lmtp" in out and "--max-size" in out


def test_serve_without_a_bounce_address_refuses_to_start(configure: Configure) -> None:
    configure()
    code, _, err = inbound("serve", "--port", str(free_port()))
    assert code == 1 and "NEWSLETTER_BOUNCE_ADDRESS is not set" in err


@contextmanager
def receiver(settings: Settings, cwd: Path, *args: str) -> Iterator[int]:
    """``newsletter inbound serve`` in a subprocess on a free port; yields the port."""
    port = free_port()
    log = cwd / "inbound.log"
    command = [str(Path(sys.executable).parent / "newsletter"), "inbound", "serve"]
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [*command, "--port", str(port), *args],
            cwd=cwd,
            env=os.environ | {"PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "newsletter inbound serve did not start"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        process.wait(30)


def _stored(settings: Settings) -> list[tuple[str, str, int | None]]:
    with session_scope(settings.database_url) as db:
        return [
            (row.source, row.kind, row.delivery_id)
            for row in db.scalars(select(InboundEvent).order_by(InboundEvent.id))
        ]


def test_the_smtp_receiver_stores_before_it_answers(sent: Sent, tmp_path: Path) -> None:
    ann = PEOPLE[0]
    raw = dsn(to=sent.verp(ann), recipient=ann)
    with (
        receiver(sent.settings, tmp_path, "--max-size", "100000") as port,
        smtplib.SMTP("127.0.0.1", port, timeout=30) as client,
    ):
        refused = client.sendmail("", [sent.verp(ann), "someone@example.org"], raw)
        # The other recipient is refused (550), the bounce address's VERP form accepted.
        assert refused == {"someone@example.org": (550, refused["someone@example.org"][1])}
        assert _stored(sent.settings) == [("smtp", "hard_bounce", sent.deliveries[ann])]
        assert status_of(sent.settings, ann) == "bounced"
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail("", ["stranger@example.net"], raw)
        with pytest.raises((smtplib.SMTPDataError, smtplib.SMTPSenderRefused)) as big:
            client.sendmail("", [BOUNCES], raw + b"x" * 200_000 + b"\r\n")
        assert big.value.smtp_code == 552  # message too large, nothing stored
    assert len(_stored(sent.settings)) == 1


def test_the_lmtp_receiver_stores_the_message(sent: Sent, tmp_path: Path) -> None:
    bo = PEOPLE[1]
    raw = dsn(to=BOUNCES, recipient=bo, status="4.2.2")
    with (
        receiver(sent.settings, tmp_path, "--lmtp") as port,
        smtplib.LMTP("127.0.0.1", port, timeout=30) as client,
    ):
        assert client.sendmail("", [sent.verp(bo)], raw) == {}
    assert _stored(sent.settings) == [("lmtp", "soft_bounce", sent.deliveries[bo])]
    assert status_of(sent.settings, bo) == "active"


def test_a_message_that_cannot_be_stored_is_not_accepted(sent: Sent, tmp_path: Path) -> None:
    # The table is away (as if the database failed): the receiver answers 451, so the
    # sending MTA keeps the message and tries again; the retry is stored and counted once.
    ann = PEOPLE[0]
    raw = dsn(to=sent.verp(ann), recipient=ann)
    with receiver(sent.settings, tmp_path) as port:
        with session_scope(sent.settings.database_url) as db:
            db.execute(text("ALTER TABLE inbound_events RENAME TO inbound_events_away"))
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail("", [sent.verp(ann)], raw)
            assert refused.value.smtp_code == 451
        with session_scope(sent.settings.database_url) as db:
            db.execute(text("ALTER TABLE inbound_events_away RENAME TO inbound_events"))
        assert status_of(sent.settings, ann) == "active"
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            assert client.sendmail("", [sent.verp(ann)], raw) == {}
    assert _stored(sent.settings) == [("smtp", "hard_bounce", sent.deliveries[ann])]
    assert status_of(sent.settings, ann) == "bounced"


def test_a_database_away_from_the_start_asks_the_pipe_to_try_again(
    configure: Configure, tmp_path: Path
) -> None:
    # Postfix's pipe transport defers the message on EX_TEMPFAIL (75) and bounces it on any
    # other failure, and a bounce of a bounce goes nowhere: the returned mail would be lost.
    configure(database_url=f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/nothing")
    message = tmp_path / "bounce.eml"
    message.write_bytes(dsn(to="bounces+1@mail.example.org", recipient=PEOPLE[0]))
    code, out, err = inbound(str(message))
    assert code == 75
    assert out == "" and "cannot use the database" in err
