"""Transports: mail URLs, the file outbox, the memory mailbox, and SMTP against a real server.

The SMTP tests run a real aiosmtpd server on 127.0.0.1 (no mocks); the TLS ones make a
throwaway self-signed certificate with the ``openssl`` command.
"""

from __future__ import annotations

import errno
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword

from newsletter.config import Settings
from newsletter.errors import ConfigurationError, DeliveryError
from newsletter.mail import MessageFactory, OutgoingMessage, SmtpRefused
from newsletter.mail.smtp import HandoverUnconfirmed, RelayUnavailable, SmtpTransport
from newsletter.mail.transports import (
    FileTransport,
    MemoryTransport,
    memory_mailbox,
    redact_url,
    transport_from_url,
)
from tests.servers import free_port
from tests.smtp import SmtpServer

FACTORY = MessageFactory(
    from_name="Mo 人工智能俱乐部",
    from_address="salon@example.org",
    subject="第 61 期机器学习学术沙龙邀请函",
    mail_domain="example.org",
    installation="0123456789abcdef",
    bounce_address="bounces@example.org",
)


def message(delivery_id: int, address: str | None = None) -> OutgoingMessage:
    return FACTORY.build(
        delivery_id=delivery_id,
        recipient_name=f"订阅者 {delivery_id}",
        recipient_address=address or f"subscriber{delivery_id}@example.com",
        html=f"<p>第 {delivery_id} 封</p>\n" * 50,
        text=f"第 {delivery_id} 封\n" * 50,
        unsubscribe_url=f"https://salon.example.org/unsubscribe/t{delivery_id}",
    )


# --- mail URLs ----------------------------------------------------------------------------


def test_file_urls_relative_and_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = transport_from_url("file://var/outbox")
    assert isinstance(relative, FileTransport)
    assert relative.directory == tmp_path / "var" / "outbox"
    absolute = transport_from_url(f"file://{tmp_path}/abs%20dir")
    assert isinstance(absolute, FileTransport)
    assert absolute.directory == tmp_path / "abs dir"
    localhost = transport_from_url("file://localhost/srv/outbox")
    assert isinstance(localhost, FileTransport)
    assert localhost.directory == Path("/srv/outbox")


def test_smtp_urls() -> None:
    transport = transport_from_url(
        "smtp://user%40example.org:p%40ss%3Aword@mail.example.org:587"
        "?starttls=true&timeout=5&helo=salon.example.org"
    )
    assert isinstance(transport, SmtpTransport)
    assert (transport.host, transport.port, transport.tls) == ("mail.example.org", 587, "starttls")
    assert transport.username == "user@example.org"
    assert transport._password == "p@ss:word"
    assert (transport.timeout, transport.local_hostname) == (5.0, "salon.example.org")
    implicit = transport_from_url("smtps://u:p@mail.example.org")
    assert isinstance(implicit, SmtpTransport)
    assert (implicit.port, implicit.tls) == (465, "implicit")
    plain = transport_from_url("smtp://127.0.0.1")
    assert isinstance(plain, SmtpTransport)
    assert (plain.port, plain.tls, plain.username) == (25, "none", None)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://files.example.org/outbox",
        "smtp://user:s3cr3t@mail.example.org:notaport",
        "smtp://user:s3cr3t@mail.example.org:587?startls=true",  # typo: must not send in clear
        "smtps://user:s3cr3t@mail.example.org?starttls=true",
        "smtp://user:s3cr3t@mail.example.org:587?starttls=maybe",
        "smtp://user:s3cr3t@mail.example.org:587",  # a password in clear over the network
        "smtp://user:s3cr3t@mail.example.org?starttls=true&timeout=0",
        "smtp:///no-host",
    ],
)
def test_bad_mail_urls_are_configuration_errors_without_the_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        transport_from_url(url)
    assert "s3cr3t" not in str(caught.value)


def test_password_never_in_repr_or_redacted_url() -> None:
    url = "smtps://user:s3cr3t@mail.example.org:465"
    assert "s3cr3t" not in repr(transport_from_url(url))
    assert redact_url(url) == "smtps://user:***@mail.example.org:465"
    assert redact_url("file://var/outbox") == "file://var/outbox"


# --- file outbox --------------------------------------------------------------------------


def test_file_outbox_writes_one_eml_per_delivery_named_by_message_id(tmp_path: Path) -> None:
    transport = FileTransport(tmp_path / "outbox")
    second = message(2)
    with transport:
        transport.send(message(1))
        transport.send(second)
        transport.send(message(1))  # a resend overwrites, it does not duplicate
    files = sorted(p.name for p in (tmp_path / "outbox").iterdir())
    assert files == sorted(m.message_id.strip("<>") + ".eml" for m in (message(1), second))
    assert transport.path_for(second).read_bytes() == second.data


def test_full_disk_leaves_no_partial_file_and_keeps_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = FileTransport(tmp_path / "outbox")
    first = message(1)
    with transport:
        transport.send(first)
    path = transport.path_for(first)

    def full_disk(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    changed = FACTORY.build(
        delivery_id=1,
        recipient_name="changed",
        recipient_address="subscriber1@example.com",
        html="<p>changed</p>",
        text="changed",
        unsubscribe_url="https://salon.example.org/unsubscribe/t1",
    )
    with transport:
        monkeypatch.setattr(os, "write", full_disk)
        with pytest.raises(DeliveryError) as caught:
            transport.send(changed)
        monkeypatch.undo()
    assert caught.value.permanent is False
    assert str(path) in str(caught.value)
    assert "No space left on device" in str(caught.value)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left over
    assert path.read_bytes() == first.data  # the old, complete message is still there


def test_unusable_outbox_is_a_temporary_delivery_error(tmp_path: Path) -> None:
    blocker = tmp_path / "outbox"
    blocker.write_text("a file where the outbox directory should be")
    with pytest.raises(DeliveryError) as caught, FileTransport(blocker / "sub"):
        pass
    assert caught.value.permanent is False
    assert str(blocker / "sub") in str(caught.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_outbox(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    outbox.chmod(0o500)
    try:
        with pytest.raises(DeliveryError) as caught, FileTransport(outbox) as transport:
            transport.send(message(1))
        assert "Permission denied" in str(caught.value)
        assert list(outbox.iterdir()) == []
    finally:
        outbox.chmod(0o700)


def test_configured_outbox(settings: Settings) -> None:
    with transport_from_url(settings.mail_url) as transport:
        transport.send(message(3))
    assert (settings.var_dir / "outbox" / (message(3).message_id.strip("<>") + ".eml")).exists()


# --- memory mailbox -----------------------------------------------------------------------


def test_memory_transport_keeps_messages_by_name() -> None:
    mailbox = memory_mailbox("test-memory")
    mailbox.clear()
    with transport_from_url("memory://test-memory") as transport:
        transport.send(message(1))
    with MemoryTransport("test-memory") as again:
        again.send(message(3))
    assert [m.delivery_id for m in mailbox.messages] == [1, 3]
    assert mailbox.batches == 2
    assert memory_mailbox("other-name").messages == []


# --- SMTP against a real server -----------------------------------------------------------


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (cert, key)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


def client_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificate[0]))


@pytest.mark.smtp
def test_a_batch_uses_one_connection_and_delivers_the_exact_bytes(
    start_smtp: Callable[..., SmtpServer],
) -> None:
    server = start_smtp()
    messages = [message(i) for i in range(1, 8)]
    transport = transport_from_url(f"smtp://127.0.0.1:{server.port}?helo=test.example.org")
    with transport:
        for outgoing in messages:
            transport.send(outgoing)
    received = server.handler.received
    assert server.handler.connections == 1
    assert [r.data for r in received] == [m.data for m in messages]
    assert [r.mail_from for r in received] == [f"bounces+{i}@example.org" for i in range(1, 8)]
    assert [r.rcpt_tos for r in received] == [[m.recipient] for m in messages]


@pytest.mark.smtp
def test_each_batch_has_its_own_connection(start_smtp: Callable[..., SmtpServer]) -> None:
    server = start_smtp()
    transport = transport_from_url(f"smtp://127.0.0.1:{server.port}")
    for batch in ((1, 2), (3, 4)):
        with transport:
            for delivery_id in batch:
                transport.send(message(delivery_id))
    assert server.handler.connections == 2
    assert isinstance(transport, SmtpTransport)
    assert transport.connections == 2


@pytest.mark.smtp
def test_550_is_permanent_keeps_the_reply_and_the_connection(
    start_smtp: Callable[..., SmtpServer],
) -> None:
    server = start_smtp()
    server.handler.refuse_rcpt["gone@example.com"] = (
        "550 5.1.1 <gone@example.com>: Recipient address rejected: User unknown"
    )
    with transport_from_url(f"smtp://127.0.0.1:{server.port}") as transport:
        transport.send(message(1))
        with pytest.raises(SmtpRefused) as caught:
            transport.send(message(2, "gone@example.com"))
        transport.send(message(3))  # RSET: the connection serves the rest of the batch
    error = caught.value
    assert (error.permanent, error.code, error.enhanced_status) == (True, 550, "5.1.1")
    assert error.is_hard_bounce
    assert "Recipient address rejected: User unknown" in str(error)
    assert "gone@example.com" not in str(error)  # the server echoed it; our logs must not
    assert [r.rcpt_tos for r in server.handler.received] == [
        ["subscriber1@example.com"],
        ["subscriber3@example.com"],
    ]
    assert server.handler.connections == 1


@pytest.mark.smtp
def test_451_is_temporary(start_smtp: Callable[..., SmtpServer]) -> None:
    server = start_smtp()
    server.handler.data_reply = "451 4.3.0 Greylisted, try again later"
    with (
        transport_from_url(f"smtp://127.0.0.1:{server.port}") as transport,
        pytest.raises(DeliveryError) as caught,
    ):
        transport.send(message(1))
    assert (caught.value.permanent, caught.value.code) == (False, 451)
    assert isinstance(caught.value, SmtpRefused)
    assert not caught.value.is_hard_bounce
    assert "Greylisted" in str(caught.value)


@pytest.mark.smtp
def test_a_policy_refusal_is_permanent_but_not_a_hard_bounce(
    start_smtp: Callable[..., SmtpServer],
) -> None:
    server = start_smtp()
    server.handler.data_reply = "554 5.7.1 Message rejected as spam"
    with (
        transport_from_url(f"smtp://127.0.0.1:{server.port}") as transport,
        pytest.raises(SmtpRefused) as caught,
    ):
        transport.send(message(1))
    assert caught.value.permanent
    assert not caught.value.is_hard_bounce


@pytest.mark.smtp
def test_dead_server_is_a_clear_temporary_error() -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(DeliveryError) as caught, transport_from_url(f"smtp://127.0.0.1:{port}"):
        pass
    text = str(caught.value)
    assert caught.value.permanent is False
    assert text == f"cannot connect to SMTP server 127.0.0.1:{port}: Connection refused"


@pytest.mark.smtp
def test_reconnects_once_when_the_server_dropped_an_idle_connection(
    start_smtp: Callable[..., SmtpServer],
) -> None:
    server = start_smtp(timeout=0.3)  # the server closes connections idle for 0.3 s
    with transport_from_url(f"smtp://127.0.0.1:{server.port}") as transport:
        transport.send(message(1))
        time.sleep(1.0)
        transport.send(message(2))
    assert [r.rcpt_tos for r in server.handler.received] == [
        ["subscriber1@example.com"],
        ["subscriber2@example.com"],
    ]
    assert server.handler.connections == 2


@pytest.mark.smtp
def test_sending_outside_a_batch_is_a_programming_error() -> None:
    with pytest.raises(RuntimeError, match="with transport"):
        transport_from_url("smtp://127.0.0.1:25").send(message(1))


def _authenticator(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    good = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == b"salon@example.org"
        and auth_data.password == b"p@ss:w/rd"
    )
    # handled=False: aiosmtpd itself answers "535" to a failure.
    return AuthResult(success=good, handled=False)


@pytest.mark.smtp
def test_plain_auth_with_url_encoded_credentials(start_smtp: Callable[..., SmtpServer]) -> None:
    server = start_smtp(authenticator=_authenticator, auth_require_tls=False)
    url = f"smtp://salon%40example.org:p%40ss%3Aw%2Frd@127.0.0.1:{server.port}"
    with transport_from_url(url) as transport:
        transport.send(message(1))
    assert server.handler.received[0].authenticated

    wrong = f"smtp://salon%40example.org:wrong-s3cr3t@127.0.0.1:{server.port}"
    transport = transport_from_url(wrong)
    with pytest.raises(DeliveryError) as caught, transport:
        pass
    assert caught.value.code == 535
    assert caught.value.permanent is False  # our configuration, not the recipient, is wrong
    assert "wrong-s3cr3t" not in str(caught.value)
    assert "wrong-s3cr3t" not in repr(transport)


@pytest.mark.smtp
def test_starttls_then_auth(
    start_smtp: Callable[..., SmtpServer], certificate: tuple[Path, Path]
) -> None:
    server = start_smtp(
        tls_context=server_context(certificate),
        require_starttls=True,
        authenticator=_authenticator,
        auth_required=True,
    )
    url = f"smtp://salon%40example.org:p%40ss%3Aw%2Frd@127.0.0.1:{server.port}?starttls=true"
    sent = message(1)
    with transport_from_url(url, ssl_context=client_context(certificate)) as transport:
        transport.send(sent)
    received = server.handler.received[0]
    assert (received.tls, received.authenticated) == (True, True)
    assert received.data == sent.data


@pytest.mark.smtp
def test_implicit_tls(
    start_smtp: Callable[..., SmtpServer], certificate: tuple[Path, Path]
) -> None:
    server = start_smtp(ssl_context=server_context(certificate))
    url = f"smtps://127.0.0.1:{server.port}"
    sent = message(1)
    with transport_from_url(url, ssl_context=client_context(certificate)) as transport:
        transport.send(sent)
    assert server.handler.received[0].data == sent.data

    # Without trusting the self-signed certificate the connection must fail, clearly.
    with pytest.raises(DeliveryError) as caught, transport_from_url(url):
        pass
    assert caught.value.permanent is False
    assert "certificate verify failed" in str(caught.value)


@pytest.mark.smtp
def test_a_message_possibly_delivered_is_not_resent_on_our_own(
    start_smtp: Callable[..., SmtpServer],
) -> None:
    server = start_smtp()
    server.handler.hang_up_after_data = True
    with transport_from_url(f"smtp://127.0.0.1:{server.port}") as transport:
        with pytest.raises(DeliveryError) as caught:
            transport.send(message(1))
        assert caught.value.permanent is False
        assert "may have it" in str(caught.value)
        assert server.handler.data_calls == 1  # no immediate second copy
        transport.send(message(2))  # the batch goes on, on a new connection
    assert [r.rcpt_tos for r in server.handler.received] == [["subscriber2@example.com"]]


@pytest.mark.smtp
def test_a_server_that_keeps_closing_fails_temporarily_after_one_retry(
    start_smtp: Callable[..., SmtpServer],
) -> None:
    server = start_smtp()
    server.handler.mail_reply = "421 4.3.2 Service shutting down"
    transport = transport_from_url(f"smtp://127.0.0.1:{server.port}")
    with transport, pytest.raises(DeliveryError) as caught:
        transport.send(message(1))
    assert (caught.value.permanent, caught.value.code) == (False, 421)
    assert "twice" in str(caught.value)
    assert isinstance(transport, SmtpTransport)
    assert transport.connections == 2  # the batch's own, and exactly one reconnection


@pytest.mark.smtp
def test_no_connection_and_421_are_the_relay_unavailable_not_a_refusal(
    start_smtp: Callable[..., SmtpServer],
) -> None:
    with pytest.raises(RelayUnavailable), transport_from_url(f"smtp://127.0.0.1:{free_port()}"):
        pass
    server = start_smtp()
    server.handler.mail_reply = "421 4.3.2 Service shutting down"
    with (
        transport_from_url(f"smtp://127.0.0.1:{server.port}") as transport,
        pytest.raises(RelayUnavailable),
    ):
        transport.send(message(1))
    server.handler.mail_reply = None
    server.handler.data_reply = "421 4.4.2 Closing, too busy"  # 421 after the message: same
    with (
        transport_from_url(f"smtp://127.0.0.1:{server.port}") as transport,
        pytest.raises(RelayUnavailable) as caught,
    ):
        transport.send(message(2))
    assert "421 4.4.2 Closing, too busy" in str(caught.value)
    assert "subscriber2" not in str(caught.value)


@pytest.mark.smtp
def test_a_connection_lost_after_the_hand_over_is_unconfirmed(
    start_smtp: Callable[..., SmtpServer],
) -> None:
    server = start_smtp()
    server.handler.hang_up_after_data = True
    with (
        transport_from_url(f"smtp://127.0.0.1:{server.port}") as transport,
        pytest.raises(HandoverUnconfirmed),
    ):
        transport.send(message(1))


UTF8_ADDRESS = "欧阳.娜娜@example.net"


@pytest.mark.smtp
@pytest.mark.parametrize("pipelining", [True, False])
def test_a_non_ascii_address_goes_with_smtputf8_when_the_relay_offers_it(
    start_smtp: Callable[..., SmtpServer], pipelining: bool
) -> None:
    server = start_smtp()  # aiosmtpd's Controller offers SMTPUTF8 by default
    server.handler.pipelining = pipelining
    international = message(2, UTF8_ADDRESS)
    with transport_from_url(f"smtp://127.0.0.1:{server.port}") as transport:
        transport.send(message(1))
        transport.send(international)
        transport.send(message(3))  # the next transaction is plain ASCII again
    received = server.handler.received
    assert [r.rcpt_tos for r in received] == [
        ["subscriber1@example.com"],
        [UTF8_ADDRESS],
        ["subscriber3@example.com"],
    ]
    assert received[1].data == international.data
    assert "SMTPUTF8" in server.handler.mail_options[1]
    assert "SMTPUTF8" not in server.handler.mail_options[0] + server.handler.mail_options[2]


@pytest.mark.smtp
def test_a_non_ascii_address_fails_alone_when_the_relay_lacks_smtputf8(
    start_smtp: Callable[..., SmtpServer],
) -> None:
    server = start_smtp(enable_SMTPUTF8=False)
    with transport_from_url(f"smtp://127.0.0.1:{server.port}") as transport:
        with pytest.raises(DeliveryError) as caught:
            transport.send(message(1, UTF8_ADDRESS))
        transport.send(message(2))  # the connection serves the rest of the batch
    error = caught.value
    assert error.permanent and not isinstance(error, RelayUnavailable)
    assert "does not offer SMTPUTF8, needed for delivery 1" in str(error)
    assert "欧阳" not in str(error) and "example.net" not in str(error)
    assert [r.rcpt_tos for r in server.handler.received] == [["subscriber2@example.com"]]


@pytest.mark.smtp
def test_a_refused_sender_does_not_fail_the_recipient_for_good(
    start_smtp: Callable[..., SmtpServer],
) -> None:
    server = start_smtp()
    server.handler.mail_reply = "553 5.7.1 Sender address rejected: not owned by user"
    with (
        transport_from_url(f"smtp://127.0.0.1:{server.port}") as transport,
        pytest.raises(SmtpRefused) as caught,
    ):
        transport.send(message(1))
    assert (caught.value.permanent, caught.value.code, caught.value.stage) == (
        False,
        553,
        "MAIL FROM",
    )
    assert "not owned by user" in str(caught.value)


# --- pipelining (RFC 2920) and the classic dialogue ------------------------------------------


@pytest.mark.parametrize("pipelining", [True, False])
def test_both_dialogues_deliver_exact_bytes_and_map_refusals(
    start_smtp: Callable[..., SmtpServer], pipelining: bool
) -> None:
    server = start_smtp()
    server.handler.pipelining = pipelining
    server.handler.refuse_rcpt = {"gone@example.org": "550 5.1.1 <gone@example.org>: unknown"}
    transport = SmtpTransport("127.0.0.1", server.port)
    # Base64 bodies never start a line with a dot; a hand-made message can, and the server
    # must still receive it byte for byte (dot-stuffed on the wire, unstuffed by the server).
    dotted = OutgoingMessage(
        delivery_id=7,
        envelope_from="bounces+7@example.org",
        recipient="dot@example.org",
        message_id="<d7@example.org>",
        data=b"Subject: dots\r\n\r\n.starts with a dot\r\n.\r\n..two\r\nend\r\n",
    )
    with transport:
        transport.send(message(1))
        with pytest.raises(SmtpRefused) as refused:
            transport.send(message(2, "gone@example.org"))
        transport.send(dotted)
        transport.send(message(3))
    assert refused.value.permanent and refused.value.stage == "RCPT TO"
    assert refused.value.is_hard_bounce and "gone@example.org" not in str(refused.value)
    assert [r.rcpt_tos for r in server.handler.received] == [
        ["subscriber1@example.com"],
        ["dot@example.org"],
        ["subscriber3@example.com"],
    ]
    assert server.handler.received[1].data == dotted.data
    assert server.handler.connections == 1


def test_pipelined_sender_refusal_is_reported_at_mail_from(
    start_smtp: Callable[..., SmtpServer],
) -> None:
    server = start_smtp()
    server.handler.mail_reply = "451 4.3.0 sender check failed"
    transport = SmtpTransport("127.0.0.1", server.port)
    with transport, pytest.raises(SmtpRefused) as refused:
        transport.send(message(1))
    assert refused.value.stage == "MAIL FROM" and refused.value.code == 451
    assert not refused.value.permanent
    server.handler.mail_reply = None
    with transport:
        transport.send(message(2))  # the connection was reset and serves the next message
    assert len(server.handler.received) == 1
