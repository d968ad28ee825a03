"""``newsletter inbound poll``: returned mail read from an IMAP mailbox (stdlib imaplib).

For when bounces land in a mailbox rather than at a pipe or at ``newsletter inbound serve``
(a hosted domain, a provider's feedback-loop address). ``NEWSLETTER_INBOUND_IMAP_URL`` names
the mailbox: ``imaps://user:pass@host[:port]/INBOX`` (TLS from the start, port 993), or
``imap://…?starttls=true`` (port 143, upgraded with STARTTLS), as the mail URL spells it;
a plain ``imap://`` (no TLS) logs in only to the local host, never sending the password in
clear over a network. User and password are percent-encoded in the URL (``@`` → ``%40``).

Protocol, per poll: log in, select the mailbox, ``UID SEARCH UNSEEN``; for each message, in
UID order: ``UID FETCH … BODY.PEEK[]`` (PEEK: reading does not mark it), then
:func:`newsletter.inbound.service.process_message` in its own transaction, then, only after
that transaction committed, ``UID STORE … +FLAGS (\\Seen)``. So a crash (or a lost
connection, or the database going away) between the commit and the flag leaves the message
unseen: the next poll reads it again, and the fingerprint makes it a duplicate that changes
nothing, then marks it. No message is ever lost, none counts twice.

Processed messages are marked ``\\Seen``, never moved or deleted: the mailbox stays the
archive of what came back (the database keeps only the first 64 KB of each); the server's own
rules or an operator expunge old ones. Messages over
:data:`newsletter.inbound.service.MAX_MESSAGE_BYTES` are not downloaded and stay unseen.

The password never appears in output or errors: the URL is shown redacted, and imaplib's
errors carry only the server's reply.
"""

from __future__ import annotations

import contextlib
import imaplib
import ipaddress
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from newsletter.config import Settings
from newsletter.db import session_scope
from newsletter.errors import ConfigurationError, NewsletterError
from newsletter.inbound.service import MAX_MESSAGE_BYTES, InboundOutcome, process_message
from newsletter.redaction import redact_url, userinfo_is_malformed

__all__ = ["ImapError", "ImapMailbox", "PollResult", "parse_imap_url", "poll"]


class ImapError(NewsletterError):
    """The mailbox cannot be read: unreachable, login refused, no such mailbox, a protocol
    failure. The message names the server and the user, never the password."""


@dataclass(frozen=True)
class ImapMailbox:
    """Where ``NEWSLETTER_INBOUND_IMAP_URL`` points (see the module docstring)."""

    host: str
    port: int
    tls: bool  # True: imaps (TLS from the start)
    starttls: bool  # imap:// with ?starttls=true
    user: str
    password: str = field(repr=False)
    mailbox: str = "INBOX"
    timeout: float = 30.0

    @property
    def where(self) -> str:
        """``user@host:port/mailbox`` for messages (no password)."""
        return f"{self.user}@{self.host}:{self.port}/{self.mailbox}"


def parse_imap_url(url: str) -> ImapMailbox:
    """The mailbox of an ``imaps://`` or ``imap://`` URL; ConfigurationError if unusable."""
    shown = redact_url(url.strip())
    name = "NEWSLETTER_INBOUND_IMAP_URL"
    if userinfo_is_malformed(url.strip()):
        raise ConfigurationError(
            f"{name} {shown!r} is malformed: the user name or password holds a character"
            " that must be percent-encoded (/ → %2F, # → %23, ? → %3F, @ → %40, % → %25)"
        )
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"{name} {shown!r} is malformed: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("imap", "imaps"):
        raise ConfigurationError(
            f"{name} {shown!r}: unknown scheme {parts.scheme!r}; use imaps:// (or imap://)"
        )
    if not parts.hostname:
        raise ConfigurationError(f"{name} {shown!r} names no host")
    if not parts.username or parts.password is None:
        raise ConfigurationError(
            f"{name} {shown!r} needs a user and a password: imaps://user:password@host/INBOX"
        )
    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    if set(query) - {"starttls"}:
        raise ConfigurationError(
            f"{name} {shown!r}: unknown parameter(s) {', '.join(sorted(set(query) - {'starttls'}))}"
        )
    starttls = query.get("starttls", "false").lower()
    if starttls not in ("true", "false"):
        raise ConfigurationError(f"{name} {shown!r}: starttls must be true or false")
    if scheme == "imaps" and starttls == "true":
        raise ConfigurationError(f"{name} {shown!r}: imaps:// is TLS from the start")
    if scheme == "imap" and starttls == "false" and not _is_loopback(parts.hostname):
        raise ConfigurationError(
            f"{name} {shown!r}: refusing to send the IMAP password unencrypted to"
            f" {parts.hostname}: use imaps:// or add ?starttls=true"
        )
    mailbox = unquote(parts.path.lstrip("/")) or "INBOX"
    if re.search(r'[\x00-\x1f"\\]', mailbox) or not mailbox.isascii():
        raise ConfigurationError(
            f"{name} {shown!r}: give the mailbox name in ASCII, without quotes, backslashes or"
            " control characters (IMAP's modified UTF-7 for other names)"
        )
    return ImapMailbox(
        host=parts.hostname,
        port=port or (993 if scheme == "imaps" else 143),
        tls=scheme == "imaps",
        starttls=starttls == "true",
        user=unquote(parts.username),
        password=unquote(parts.password),
        mailbox=mailbox,
    )


@dataclass
class PollResult:
    """What one poll did: messages processed (new events), duplicates (seen before: only
    marked now), and those left unseen (too large, or failed)."""

    processed: int = 0
    duplicates: int = 0
    left_unseen: int = 0
    outcomes: list[tuple[int, InboundOutcome]] = field(default_factory=list)


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _reply(data: list[bytes | None] | list[bytes] | list[None]) -> str:
    text = b" ".join(part for part in data if isinstance(part, bytes)).decode("utf-8", "replace")
    return " ".join(text.split())[:200]


def _connect(box: ImapMailbox, ssl_context: ssl.SSLContext | None) -> imaplib.IMAP4:
    """A logged-in connection with the mailbox selected; ImapError otherwise."""
    context = ssl_context or ssl.create_default_context()
    where = f"{box.host}:{box.port}"
    client: imaplib.IMAP4 | None = None
    try:
        if box.tls:
            client = imaplib.IMAP4_SSL(box.host, box.port, ssl_context=context, timeout=box.timeout)
        else:
            client = imaplib.IMAP4(box.host, box.port, timeout=box.timeout)
            if box.starttls:
                if "STARTTLS" not in client.capabilities:
                    raise ImapError(f"IMAP server {where} offers no STARTTLS; use imaps://")
                client.starttls(ssl_context=context)
    except (OSError, imaplib.IMAP4.error) as exc:
        _abandon(client)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ImapError(f"cannot connect to IMAP server {where}: {reason}") from None
    except ImapError:
        _abandon(client)
        raise
    try:
        if "AUTH=PLAIN" in client.capabilities:
            # One attempt, and UTF-8 credentials work (LOGIN takes ASCII only).
            secret = f"\0{box.user}\0{box.password}".encode()
            client.authenticate("PLAIN", lambda _challenge: secret)
        elif not (box.user + box.password).isascii():
            raise ImapError(
                f"IMAP server {where} offers no AUTH=PLAIN, and LOGIN cannot send a user name"
                " or password that is not ASCII"
            )
        else:
            client.login(box.user, box.password)
    except ImapError:
        _abandon(client)
        raise
    except imaplib.IMAP4.error as exc:
        _abandon(client)
        raise ImapError(
            f"IMAP server {where} refused the login of {box.user!r}: {_text(exc)}"
        ) from None
    except OSError as exc:
        _abandon(client)
        raise ImapError(f"lost the IMAP server {where} while logging in: {exc}") from None
    status, data = client.select(_quoted(box.mailbox))
    if status != "OK":
        _abandon(client)
        raise ImapError(f"IMAP server {where} has no mailbox {box.mailbox!r}: {_reply(data)}")
    return client


def _text(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def _quoted(mailbox: str) -> str:
    return '"' + mailbox + '"'  # control characters, quotes and backslashes were refused


def _abandon(client: imaplib.IMAP4 | None) -> None:
    if client is not None:
        with contextlib.suppress(OSError):
            client.shutdown()


_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")


def poll(
    settings: Settings,
    *,
    ssl_context: ssl.SSLContext | None = None,
    on_message: Callable[[int, InboundOutcome], None] | None = None,
) -> PollResult:
    """Read every unseen message of the configured mailbox once (see the module docstring).

    ``on_message(uid, outcome)`` is called after each message is committed and marked (the
    command prints a line). ``ssl_context`` replaces the default (system CAs), e.g. to trust a
    private CA. Raises ConfigurationError (no or bad URL), ImapError (server problems) or the
    database's error; messages not yet committed then stay unseen for the next poll.
    """
    if not settings.inbound_imap_url:
        raise ConfigurationError(
            "NEWSLETTER_INBOUND_IMAP_URL is not set: give the mailbox returned mail lands in,"
            " e.g. imaps://bounces%40example.org:PASSWORD@imap.example.org/INBOX"
        )
    box = parse_imap_url(settings.inbound_imap_url)
    result = PollResult()
    client = _connect(box, ssl_context)
    where = f"{box.host}:{box.port}"
    try:
        status, data = client.uid("SEARCH", "UNSEEN")
        if status != "OK":
            raise ImapError(f"IMAP server {where} refused to search {box.mailbox!r}")
        uids = sorted(int(uid) for uid in b" ".join(d for d in data if d).split())
        for uid in uids:
            status, data = client.uid("FETCH", str(uid), "(RFC822.SIZE)")
            size = _SIZE.search(b" ".join(p if isinstance(p, bytes) else p[0] for p in data if p))
            if size is not None and int(size.group(1)) > MAX_MESSAGE_BYTES:
                result.left_unseen += 1
                continue
            status, data = client.uid("FETCH", str(uid), "(BODY.PEEK[])")
            raw = next((part[1] for part in data if isinstance(part, tuple)), None)
            if status != "OK" or raw is None:
                result.left_unseen += 1  # expunged meanwhile, or the server would not say
                continue
            with session_scope(settings.database_url) as db:
                outcome = process_message(db, settings, raw, source="imap")
            # Committed: only now may the message be marked (see the module docstring).
            status, _ = client.uid("STORE", str(uid), "+FLAGS.SILENT", "(\\Seen)")
            if status != "OK":
                raise ImapError(f"IMAP server {where} refused to mark message {uid} seen")
            if outcome.new:
                result.processed += 1
            else:
                result.duplicates += 1
            result.outcomes.append((uid, outcome))
            if on_message is not None:
                on_message(uid, outcome)
    except (TimeoutError, OSError, imaplib.IMAP4.abort) as exc:
        _abandon(client)
        raise ImapError(f"lost the IMAP server {where}: {_text(exc)}") from None
    except imaplib.IMAP4.error as exc:
        _abandon(client)
        raise ImapError(f"IMAP server {where}: {_text(exc)}") from None
    except BaseException:
        _abandon(client)
        raise
    try:
        client.close()
        client.logout()
    except (OSError, imaplib.IMAP4.error):
        _abandon(client)
    return result
