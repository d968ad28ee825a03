"""The SMTP transport: one connection per batch, SMTP replies mapped to :class:`DeliveryError`.

Protocol: ``with transport:`` connects (TLS, EHLO, AUTH) once; each ``send`` runs one
``MAIL FROM`` / ``RCPT TO`` / ``DATA`` transaction on that connection; leaving the block
QUITs. A transport object is one connection and serves one thread; a worker sends over
several at once with :mod:`newsletter.mail.lanes`. ``max_messages`` (the mail URL's
``?max_messages=N``) is a relay's limit of messages per connection: after N, the transport
QUITs and opens a fresh connection before the next message, so the relay never has to refuse.
The transports of one batch share a :class:`RelayHealth`: a connection lost (or a 421) on a
connection that has not delivered yet counts against the relay, and two such in a row on any
of them, with no delivery in between, mean the relay is unavailable; the same on a connection
that did deliver is that connection's end (an idle timeout, a relay's limit), not the relay's.

Replies map to what the sender needs to decide on a retry:

* 4xx → ``DeliveryError(permanent=False, code=4xx)``: try again later;
* 5xx → ``DeliveryError(permanent=True, code=5xx)`` with the server's text (its enhanced
  status code such as ``5.1.1`` tells a hard bounce from a policy refusal) — except a
  refused MAIL FROM, which is about us, not the recipient, and stays ``permanent=False``;
* 421 (service not available, closing), no connection at all, or the connection lost before
  the message was handed over (typically: the server closed an idle connection, or ended a
  connection at its limit of messages) → reconnect once and retry; failing again →
  :class:`RelayUnavailable`: the relay, not this message, is the problem, and the relay did
  not answer for the message;
* connection lost *while* the message was being transferred, before the reply →
  :class:`HandoverUnconfirmed`. We do not retry on our own: the server may already have the
  message, and resending is the campaign's decision;
* a recipient whose address needs SMTPUTF8 (RFC 6531) is sent with it when the server
  offers it (EHLO); otherwise that one message fails for good with a reason
  (``DeliveryError(permanent=True)``), without a word to the server.

Neither the password nor the recipient's address ever appears in an error message or repr.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import smtplib
import ssl
import threading
from types import TracebackType
from typing import Literal, NoReturn, Self

from newsletter.errors import ConfigurationError, DeliveryError
from newsletter.mail.message import OutgoingMessage
from newsletter.mail.smtp_errors import HandoverUnconfirmed, RelayUnavailable, SmtpRefused

__all__ = [
    "HandoverUnconfirmed",
    "RelayHealth",
    "RelayUnavailable",
    "SmtpRefused",
    "SmtpTransport",
    "TlsMode",
]

TlsMode = Literal["none", "starttls", "implicit"]


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _reason(exc: BaseException) -> str:
    """A short human reason for a network error, without a traceback's noise."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"{exc.smtp_code} {_text(exc.smtp_error)}"
    return str(exc) or type(exc).__name__


def _text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return " ".join(text.split())  # multi-line replies on one line


class _ConnectionLost(Exception):
    """The connection broke; ``handed_over`` tells whether the message data had been sent."""

    def __init__(self, reason: str, *, handed_over: bool, code: int | None = None) -> None:
        super().__init__(reason)
        self.handed_over = handed_over
        self.code = code


class RelayHealth:
    """Connections lost on fresh connections since the relay last accepted a message, shared
    by the transports of one batch (see the module docstring). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fresh_losses = 0

    def delivered(self) -> None:
        """The relay answered a transaction: it is there."""
        if self._fresh_losses:  # read without the lock: the common case writes nothing
            with self._lock:
                self._fresh_losses = 0

    def lost_fresh(self) -> int:
        """Count a fresh connection lost before any delivery; returns the count in a row."""
        with self._lock:
            self._fresh_losses += 1
            return self._fresh_losses


class SmtpTransport:
    """Sends through one SMTP server; see the module docstring for the protocol."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: TlsMode = "none",
        username: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
        local_hostname: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_messages: int | None = None,
        health: RelayHealth | None = None,
    ) -> None:
        """Configure (without connecting) a transport to ``host:port``.

        ``tls`` is ``"implicit"`` (smtps, port 465), ``"starttls"`` or ``"none"``. Credentials
        are refused on an unencrypted connection to anything but the local host, where they
        would cross the network in clear. ``local_hostname`` is the EHLO name (smtplib's
        default, the host's FQDN, when None). ``max_messages``: the relay's limit of messages
        per connection; ``health``: shared with the other connections of a batch (see the
        module docstring; a transport of its own gets one of its own).
        """
        if username and tls == "none" and not _is_loopback(host):
            raise ConfigurationError(
                f"refusing to send the SMTP password unencrypted to {host}:"
                " use smtps:// or add ?starttls=true to NEWSLETTER_MAIL_URL"
            )
        self.host = host
        self.port = port
        self.tls: TlsMode = tls
        self.username = username
        self._password = password or ""
        self.timeout = timeout
        self.local_hostname = local_hostname
        self._ssl_context = ssl_context
        self._smtp: smtplib.SMTP | None = None  # None inside a batch: reconnect on next send
        self._in_batch = False
        self.connections = 0  # how many connections this transport has opened (for metrics)
        if max_messages is not None and max_messages < 1:
            raise ConfigurationError("max_messages must be a positive number of messages")
        self.max_messages = max_messages
        self.health = health or RelayHealth()
        self._on_connection = 0  # messages the relay answered on the current connection

    def __repr__(self) -> str:
        user = f"{self.username}@" if self.username else ""
        scheme = "smtps" if self.tls == "implicit" else "smtp"
        return f"SmtpTransport({scheme}://{user}{self.host}:{self.port}, tls={self.tls})"

    @property
    def _where(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> Self:
        if self._in_batch:
            raise RuntimeError(f"{self!r} is already open: batches do not nest")
        self._smtp = self._connect()
        self._in_batch = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._in_batch = False
        self._close(polite=True)

    def _context(self) -> ssl.SSLContext:
        return self._ssl_context or ssl.create_default_context()

    def _connect(self) -> smtplib.SMTP:
        """A connected, greeted, secured and authenticated session, or DeliveryError."""
        smtp: smtplib.SMTP | None = None
        try:
            if self.tls == "implicit":
                smtp = smtplib.SMTP_SSL(
                    self.host,
                    self.port,
                    local_hostname=self.local_hostname,
                    timeout=self.timeout,
                    context=self._context(),
                )
            else:
                smtp = smtplib.SMTP(
                    self.host, self.port, local_hostname=self.local_hostname, timeout=self.timeout
                )
            smtp.ehlo()
            if self.tls == "starttls":
                smtp.starttls(context=self._context())
                smtp.ehlo()
            if self.username:
                self._login(smtp, self.username)
        except smtplib.SMTPAuthenticationError as exc:
            _abandon(smtp)
            # Not permanent for the delivery: the address is fine, our configuration is not.
            raise RelayUnavailable(
                f"SMTP server {self._where} refused the login of {self.username!r}:"
                f" {exc.smtp_code} {_text(exc.smtp_error)}",
                code=exc.smtp_code,
            ) from None
        except smtplib.SMTPNotSupportedError as exc:
            _abandon(smtp)
            raise RelayUnavailable(
                f"SMTP server {self._where} does not support what the mail URL asks: {exc}"
            ) from None
        except smtplib.SMTPResponseException as exc:  # a 421 greeting, say
            _abandon(smtp)
            raise RelayUnavailable(
                f"cannot connect to SMTP server {self._where}: {_reason(exc)}",
                code=exc.smtp_code,
            ) from None
        except (smtplib.SMTPException, OSError) as exc:
            _abandon(smtp)
            raise RelayUnavailable(
                f"cannot connect to SMTP server {self._where}: {_reason(exc)}"
            ) from None
        self.connections += 1
        self._on_connection = 0
        return smtp

    def _login(self, smtp: smtplib.SMTP, username: str) -> None:
        """AUTH PLAIN when offered (the norm over TLS), else smtplib's choice of mechanism.

        ``smtplib.login`` tries every mechanism in turn after a refusal: one wrong password
        would count as several failed logins, enough to get the sender's address blocked.
        """
        if "plain" in smtp.esmtp_features.get("auth", "").lower().split():
            smtp.user, smtp.password = username, self._password
            smtp.auth("PLAIN", smtp.auth_plain)
        else:
            smtp.login(username, self._password)

    def _close(self, *, polite: bool) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        if polite:
            try:
                smtp.quit()
                return
            except (smtplib.SMTPException, OSError):
                pass  # the server is gone already: nothing to say goodbye to
        _abandon(smtp)

    def send(self, message: OutgoingMessage) -> None:
        """Hand ``message`` to the server on the batch's connection; raise DeliveryError if not."""
        if not self._in_batch:
            raise RuntimeError("open the transport with `with transport:` before sending")
        if self.max_messages is not None and self._on_connection >= self.max_messages:
            self._close(polite=True)  # the relay's limit: a fresh connection, not a refusal
        for attempt in (1, 2):
            if self._smtp is None:  # an earlier failure closed the connection
                self._smtp = self._connect()
            try:
                self._transact(self._smtp, message)
            except _ConnectionLost as lost:
                fresh = self._on_connection == 0
                self._close(polite=False)
                if lost.handed_over:
                    raise HandoverUnconfirmed(
                        f"lost the connection to SMTP server {self._where} while handing over"
                        f" delivery {message.delivery_id} ({lost}); the server may have it"
                    ) from None
                if attempt == 2 or (fresh and self.health.lost_fresh() >= 2):
                    raise RelayUnavailable(
                        f"lost the connection to SMTP server {self._where} twice before"
                        f" delivery {message.delivery_id} could be sent: {lost}",
                        code=lost.code,
                    ) from None
                continue
            except SmtpRefused:
                self._answered()
                raise
            self._answered()
            return

    def _answered(self) -> None:
        """The relay answered a transaction on this connection (an accept or a refusal)."""
        self._on_connection += 1
        self.health.delivered()

    def _transact(self, smtp: smtplib.SMTP, message: OutgoingMessage) -> None:
        """One MAIL/RCPT/DATA transaction; raises SmtpRefused, RelayUnavailable (a 421
        after the message was handed over), DeliveryError (SMTPUTF8 needed, not offered)
        or _ConnectionLost."""
        if message.smtputf8 and not smtp.has_extn("smtputf8"):
            raise DeliveryError(
                f"the relay {self._where} does not offer SMTPUTF8, needed for delivery"
                f" {message.delivery_id}: its address has a non-ASCII local part",
                permanent=True,
            )
        if smtp.does_esmtp and smtp.has_extn("pipelining") and not message.smtputf8:
            self._transact_pipelined(smtp, message)
            return
        handed_over = False
        code: int
        reply: bytes | str
        stage = "MAIL FROM"
        try:
            smtp.ehlo_or_helo_if_needed()
            options = [f"SIZE={len(message.data)}"] if smtp.has_extn("size") else []
            if message.smtputf8:
                # smtplib then writes the commands in UTF-8 (RFC 6531 3.4), until the RSET.
                options.append("SMTPUTF8")
                if smtp.has_extn("8bitmime"):
                    options.append("BODY=8BITMIME")
            code, reply = smtp.mail(message.envelope_from, options)
            if code == 250:
                stage = "RCPT TO"
                code, reply = smtp.rcpt(message.recipient)
                if code in (250, 251):
                    stage, handed_over = "DATA", True
                    try:
                        code, reply = smtp.data(message.data)
                    except smtplib.SMTPDataError as exc:  # DATA itself refused: nothing sent
                        handed_over = False
                        code, reply = exc.smtp_code, exc.smtp_error
                    if code == 250:
                        return
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            raise _ConnectionLost(_reason(exc), handed_over=handed_over) from None
        self._after_refusal(smtp, message, code, reply, stage, handed_over=handed_over)

    def _after_refusal(
        self,
        smtp: smtplib.SMTP,
        message: OutgoingMessage,
        code: int,
        reply: bytes | str,
        stage: str,
        *,
        handed_over: bool,
    ) -> NoReturn:
        """Raise what a non-250 reply means, leaving the connection fit for the next one."""
        if code == 421 and not handed_over:
            # "Service not available, closing channel": typically an idle timeout between
            # two messages; a fresh connection is the cure, not a failed delivery.
            raise _ConnectionLost(f"421 {_text(reply)}", handed_over=False, code=421)
        if code == 421:
            # The server closes the channel: about the service, not this message.
            self._close(polite=False)
            raise RelayUnavailable(
                f"SMTP server {self._where} is closing the service ({stage} of delivery"
                f" {message.delivery_id}): 421 {self._masked(message, reply)}",
                code=421,
            )
        self._reset(smtp)
        raise self._refused(message, code, reply, stage)

    def _transact_pipelined(self, smtp: smtplib.SMTP, message: OutgoingMessage) -> None:
        """The same transaction in two round trips instead of four (RFC 2920 PIPELINING).

        MAIL, RCPT and DATA go out in one write and their three replies are read together;
        then the message and its final dot go out in one write. smtplib has no pipelining,
        and it runs two regular expressions over every message body to fix line ends and
        stuff dots: our messages are built with CRLF line ends, and dot-stuffing is applied
        only when a line does start with a dot.
        """
        size = f" SIZE={len(message.data)}" if smtp.has_extn("size") else ""
        # The addresses were validated when the message was built (addr_spec), so they go in
        # angle brackets as they are; smtplib.quoteaddr would parse each one again (~9 µs).
        commands = (
            f"MAIL FROM:<{message.envelope_from}>{size}\r\n"
            f"RCPT TO:<{message.recipient}>\r\n"
            "DATA\r\n"
        ).encode("ascii")
        handed_over = False
        try:
            smtp.send(commands)
            replies = [smtp.getreply() for _ in range(3)]
            (mail_code, mail_reply), (rcpt_code, rcpt_reply), (data_code, data_reply) = replies
            if mail_code == 250 and rcpt_code in (250, 251) and data_code == 354:
                body = message.data
                if not message.dot_safe and (body.startswith(b".") or b"\n." in body):
                    body = _stuff_dots(body)
                ending = b".\r\n" if body.endswith(b"\r\n") else b"\r\n.\r\n"
                handed_over = True
                smtp.send(body + ending)
                code, reply = smtp.getreply()
                stage = "DATA"
            elif mail_code != 250:
                code, reply, stage = mail_code, mail_reply, "MAIL FROM"
            elif rcpt_code not in (250, 251):
                code, reply, stage = rcpt_code, rcpt_reply, "RCPT TO"
            else:
                code, reply, stage = data_code, data_reply, "DATA"
            if data_code == 354 and not handed_over:
                # The server accepted DATA although an earlier command failed (RFC 2920
                # 3.1): end the empty message so that it is discarded with the RSET below.
                smtp.send(b".\r\n")
                smtp.getreply()
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            raise _ConnectionLost(_reason(exc), handed_over=handed_over) from None
        if code == 250:
            return
        self._after_refusal(smtp, message, code, reply, stage, handed_over=handed_over)

    def _reset(self, smtp: smtplib.SMTP) -> None:
        """RSET after a refusal so the connection serves the next message."""
        try:
            smtp.rset()
        except (smtplib.SMTPException, OSError):
            self._close(polite=False)  # the next send reconnects

    @staticmethod
    def _masked(message: OutgoingMessage, reply: bytes | str) -> str:
        # Servers echo the address ("<a@b>: Recipient address rejected"); logs must not have it.
        text = _text(reply)
        return re.sub(re.escape(message.recipient), "<recipient>", text, flags=re.IGNORECASE)

    def _refused(
        self, message: OutgoingMessage, code: int, reply: bytes | str, stage: str
    ) -> SmtpRefused:
        text = self._masked(message, reply)
        kind = "refused" if 500 <= code < 600 else "deferred"
        return SmtpRefused(
            f"SMTP server {self._where} {kind} delivery {message.delivery_id} at {stage}:"
            f" {code} {text}",
            code=code,
            reply=text,
            stage=stage,
        )


_LEADING_DOT = re.compile(rb"(?m)^\.")


def _stuff_dots(body: bytes) -> bytes:
    """Double a dot that starts a line, so the server does not read it as the end (RFC 5321)."""
    return _LEADING_DOT.sub(b"..", body)


def _abandon(smtp: smtplib.SMTP | None) -> None:
    """Close a connection without a QUIT (it is broken or half-open)."""
    if smtp is not None:
        with contextlib.suppress(OSError):
            smtp.close()
