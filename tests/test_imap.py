"""``newsletter inbound poll`` against a real IMAP server (a throwaway Dovecot): unseen
returned mail is applied once and marked seen only after it is stored; TLS (IMAPS and
STARTTLS); bad URLs, refused logins and unreachable servers are one-line errors without the
password."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import typer
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from typer.testing import CliRunner, Result

from newsletter.cli import inbound_cmd
from newsletter.db import session_scope
from newsletter.inbound.imap import ImapError, poll
from newsletter.inbound.models import InboundEvent
from newsletter.migrate import upgrade
from subscribers import repo, service
from tests.conftest import IN_CI, Configure
from tests.dovecot import PASSWORD, USER, UTF8_PASSWORD, UTF8_USER, Dovecot, dovecot_server
from tests.servers import free_port

cli = typer.Typer()
cli.add_typer(inbound_cmd.app, name="inbound")


def dsn(recipient: str, number: int, status: str = "5.1.1") -> bytes:
    """An RFC 3464 delivery status notification for ``recipient``, as Postfix writes one."""
    return (
        "From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\r\n"
        "To: bounces@example.org\r\n"
        f"Subject: Undelivered Mail Returned to Sender {number}\r\n"
        f"Message-ID: <dsn{number}@mx.example.net>\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n'
        "\r\n--B\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you...\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.net\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; 550 {status} <{recipient}>: Recipient address rejected\r\n"
        "\r\n--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: salon@example.org\r\nTo: {recipient}\r\nSubject: hello\r\n"
        "\r\n--B--\r\n"
    ).encode("ascii")


AUTO_REPLY = (
    b"From: li.lei@example.com\r\nTo: bounces@example.org\r\nSubject: Out of office\r\n"
    b"Message-ID: <ooo1@example.com>\r\nAuto-Submitted: auto-replied\r\n\r\n"
    b"I am away until Monday.\r\n"
)


@pytest.fixture(scope="module")
def dovecot() -> Iterator[Dovecot]:
    with dovecot_server() as server:
        if server is None:
            if IN_CI:
                pytest.fail("Dovecot is required in CI but could not be started")
            pytest.skip("Dovecot is not installed (apt-get install dovecot-imapd)")
        yield server


def url_for(dovecot: Dovecot, mailbox: str, *, scheme: str = "imap", query: str = "") -> str:
    user, password = quote(USER, safe=""), quote(PASSWORD, safe="")
    port = dovecot.tls_port if scheme == "imaps" else dovecot.port
    return f"{scheme}://{user}:{password}@127.0.0.1:{port}/{mailbox}{query}"


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(cli, ["inbound", *args])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert PASSWORD not in result.output and quote(PASSWORD, safe="") not in result.output
    return result


def database(configure: Configure, tmp_path: Path, **values: str) -> str:
    settings = configure(database_url=f"sqlite:///{tmp_path / 'inbound.db'}", **values)
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as db:
        service.add_subscriber(db, "ada@example.org", name="Ada")
        service.add_subscriber(db, "li.lei@example.com", name="李雷")
    return settings.database_url


def status_of(url: str, address: str) -> str:
    with session_scope(url) as db:
        person = repo.get_by_email(db, address)
        assert person is not None
        return person.status


def events(url: str) -> int:
    with session_scope(url) as db:
        return int(db.scalar(select(func.count()).select_from(InboundEvent)) or 0)


def test_poll_applies_each_unseen_message_once_and_marks_it_seen(
    dovecot: Dovecot, configure: Configure, tmp_path: Path
) -> None:
    dovecot.append(dsn("ada@example.org", 1), "Once")
    dovecot.append(AUTO_REPLY, "Once")
    url = database(configure, tmp_path, inbound_imap_url=url_for(dovecot, "Once"))
    result = invoke("poll")
    assert result.exit_code == 0, result.output
    assert "imap message 1: hard_bounce" in result.stdout
    assert "imap message 2: auto_reply" in result.stdout
    assert "imap: 2 processed, 0 already processed" in result.stdout
    assert status_of(url, "ada@example.org") == "bounced"
    assert status_of(url, "li.lei@example.com") == "active"  # an auto-reply changes nothing
    assert all("\\Seen" in flags for flags in dovecot.flags("Once"))
    again = invoke("poll")
    assert "imap: 0 processed, 0 already processed" in again.stdout
    assert events(url) == 2
    assert "--every" in invoke("poll", "--help").stdout


def test_nothing_is_marked_before_it_is_stored_and_nothing_counts_twice(
    dovecot: Dovecot, configure: Configure, tmp_path: Path
) -> None:
    dovecot.append(dsn("ada@example.org", 2), "Crash")
    # The database cannot be opened: the poll fails and the message stays unseen.
    broken = configure(
        database_url=f"sqlite:///{tmp_path / 'missing' / 'folder' / 'x.db'}",
        inbound_imap_url=url_for(dovecot, "Crash"),
    )
    with pytest.raises(OperationalError):
        poll(broken)
    assert all("\\Seen" not in flags for flags in dovecot.flags("Crash"))
    url = database(configure, tmp_path, inbound_imap_url=url_for(dovecot, "Crash"))
    first = invoke("poll")
    assert "imap: 1 processed" in first.stdout
    assert status_of(url, "ada@example.org") == "bounced"
    # Stored, then a crash before the flag was set: the next poll reads it again, counts it
    # once (a duplicate, nothing changes) and marks it.
    dovecot.set_unseen("Crash")
    second = invoke("poll")
    assert "imap: 0 processed, 1 already processed" in second.stdout
    assert "already processed" in second.stdout.splitlines()[0]
    assert events(url) == 1
    assert all("\\Seen" in flags for flags in dovecot.flags("Crash"))


def test_imaps_and_starttls(dovecot: Dovecot, configure: Configure, tmp_path: Path) -> None:
    dovecot.append(dsn("ada@example.org", 3), "Tls")
    database(configure, tmp_path)
    imaps = configure(inbound_imap_url=url_for(dovecot, "Tls", scheme="imaps"))
    # The server's certificate is self-signed: without trusting it, TLS is refused.
    with pytest.raises(ImapError, match="certificate verify failed"):
        poll(imaps)
    assert poll(imaps, ssl_context=dovecot.ssl_context()).processed == 1
    dovecot.append(dsn("li.lei@example.com", 4), "Tls")
    # imap://…?starttls=true upgrades with STARTTLS: the same certificate check applies.
    starttls = configure(inbound_imap_url=url_for(dovecot, "Tls", query="?starttls=true"))
    with pytest.raises(ImapError, match="certificate verify failed"):
        poll(starttls)
    assert poll(starttls, ssl_context=dovecot.ssl_context()).processed == 1


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("pop3://u:p@127.0.0.1/INBOX", "unknown scheme 'pop3'"),
        ("imaps://127.0.0.1/INBOX", "needs a user and a password"),
        ("imaps://user:pa/ss@127.0.0.1/INBOX", "must be percent-encoded"),
        ("imaps://user:pw@127.0.0.1:notaport/INBOX", "is malformed"),
        ("", "NEWSLETTER_INBOUND_IMAP_URL is not set"),
        ("imap://u:pw@imap.example.org/INBOX", "refusing to send the IMAP password unencrypted"),
        ("imap://u:pw@127.0.0.1/INBOX?startls=true", "unknown parameter(s) startls"),
        ("imap://u:pw@127.0.0.1/%E6%94%B6%E4%BB%B6%E7%AE%B1", "mailbox name in ASCII"),
    ],
)
def test_bad_urls_are_one_line_errors(
    configure: Configure, tmp_path: Path, url: str, expected: str
) -> None:
    database(configure, tmp_path, inbound_imap_url=url)
    result = invoke("poll")
    assert result.exit_code == 1
    assert expected in result.stderr.replace("\n", " ")
    assert "pa/ss" not in result.output


def test_refused_login_and_unreachable_server(
    dovecot: Dovecot, configure: Configure, tmp_path: Path
) -> None:
    wrong = url_for(dovecot, "INBOX").replace(quote(PASSWORD, safe=""), "wrong%20secret")
    database(configure, tmp_path, inbound_imap_url=wrong)
    result = invoke("poll")
    assert result.exit_code == 1
    assert f"refused the login of '{USER}'" in result.stderr.replace("\n", " ")
    assert "wrong secret" not in result.output and "wrong%20secret" not in result.output
    closed = free_port()
    configure(inbound_imap_url=f"imap://u:hidden-pw@127.0.0.1:{closed}/INBOX")
    result = invoke("poll")
    assert result.exit_code == 1
    assert f"cannot connect to IMAP server 127.0.0.1:{closed}" in result.stderr.replace("\n", " ")
    assert "hidden-pw" not in result.output
    configure(inbound_imap_url=url_for(dovecot, "NoSuchBox"))
    result = invoke("poll")
    assert result.exit_code == 1 and "no mailbox 'NoSuchBox'" in result.stderr


def test_polling_for_ever_waits_out_a_server_problem(
    dovecot: Dovecot, configure: Configure, tmp_path: Path
) -> None:
    """With --every, an error is one line on stderr and the next poll goes on."""
    import os
    import subprocess
    import sys

    url = database(configure, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env |= {
        "NEWSLETTER_DATABASE_URL": url,
        "NEWSLETTER_SECRET_KEY": "test-secret-key",
        "NEWSLETTER_FROM_ADDRESS": "salon@example.org",
        "NEWSLETTER_INBOUND_IMAP_URL": url_for(dovecot, "Later"),  # no such mailbox yet
    }
    newsletter = str(Path(sys.executable).parent / "newsletter")
    process = subprocess.Popen(
        [newsletter, "inbound", "poll", "--every", "0.2"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None and process.stdout is not None
        first_error = process.stderr.readline()
        assert "no mailbox 'Later'" in first_error and "trying again" in first_error
        dovecot.append(dsn("ada@example.org", 5), "Later")
        for line in process.stdout:  # ends if the process dies: the assertion below says so
            if "imap message 1:" in line:
                assert "hard_bounce" in line
                break
        else:
            raise AssertionError("the poll never read the message")
        assert process.poll() is None  # still polling
    finally:
        process.terminate()
        process.wait(30)
    assert status_of(url, "ada@example.org") == "bounced"


def test_a_password_that_is_not_ascii(
    dovecot: Dovecot, configure: Configure, tmp_path: Path
) -> None:
    """AUTHENTICATE PLAIN carries UTF-8 credentials (IMAP LOGIN takes ASCII only)."""
    import imaplib

    # Each user has a mailbox of their own: deliver into the second user's.

    other = imaplib.IMAP4("127.0.0.1", dovecot.port, timeout=10)
    other.authenticate("PLAIN", lambda _: f"\0{UTF8_USER}\0{UTF8_PASSWORD}".encode())
    other.append("INBOX", "", None, dsn("ada@example.org", 6))
    other.logout()
    user, password = quote(UTF8_USER, safe=""), quote(UTF8_PASSWORD, safe="")
    url = database(
        configure,
        tmp_path,
        inbound_imap_url=f"imap://{user}:{password}@127.0.0.1:{dovecot.port}/INBOX",
    )
    result = invoke("poll")
    assert result.exit_code == 0, result.output
    assert "imap: 1 processed" in result.stdout
    assert status_of(url, "ada@example.org") == "bounced"
    assert UTF8_PASSWORD not in result.output and password not in result.output
