"""Mail transports: where finished messages go, chosen by ``NEWSLETTER_MAIL_URL``.

Every transport is used the same way, one ``with`` block per batch::

    with transport_for(settings) as transport:   # DKIM-signing when configured
        for message in batch:
            transport.send(message)      # raises DeliveryError when not accepted

``send`` returns only once the message is safely handed over (written and fsynced, or
accepted by the SMTP server), so the caller may mark the delivery sent right after it.

* ``file://var/outbox`` (relative to the working directory) or ``file:///abs/path``: one
  ``.eml`` per message, the embedded default (:class:`FileTransport`);
* ``smtp://user:pass@host:587?starttls=true``, ``smtps://…`` (:mod:`newsletter.mail.smtp`);
  ``?max_messages=N`` for a relay that takes at most N messages per connection;
* ``memory://name``: kept in a process-wide list, for tests (:class:`MemoryTransport`).

With DKIM configured, every transport production opens signs what it hands over
(:class:`SigningTransport`, made by :func:`transport_for` or ``signer=``): the transports are
the one place the bytes of every outgoing mail pass, campaign, notice or subscription mail.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import ssl
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

from newsletter.config import Settings
from newsletter.errors import ConfigurationError, DeliveryError
from newsletter.mail.dkim import DkimSigner, signer_for
from newsletter.mail.message import OutgoingMessage
from newsletter.mail.smtp import SmtpTransport, TlsMode
from newsletter.redaction import redact_text, redact_url, userinfo_is_malformed

__all__ = [
    "FileTransport",
    "MemoryMailbox",
    "MemoryTransport",
    "SigningTransport",
    "Transport",
    "memory_mailbox",
    "redact_url",
    "transport_for",
    "transport_from_url",
]


class Transport(Protocol):
    """A way to deliver messages; a context manager per batch (see the module docstring)."""

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    def send(self, message: OutgoingMessage) -> None:
        """Deliver ``message`` or raise :class:`DeliveryError`."""
        ...


def transport_for(settings: Settings, *, ssl_context: ssl.SSLContext | None = None) -> Transport:
    """The transport of ``settings.mail_url``, signing with the configured DKIM key if any.

    How production code opens a transport: ConfigurationError for an unusable mail URL or
    DKIM configuration, before any connection is made.
    """
    return transport_from_url(
        settings.mail_url, ssl_context=ssl_context, signer=signer_for(settings)
    )


def transport_from_url(
    url: str,
    *,
    ssl_context: ssl.SSLContext | None = None,
    signer: DkimSigner | None = None,
) -> Transport:
    """The transport a mail URL names (``NEWSLETTER_MAIL_URL``); ConfigurationError if unusable.

    ``ssl_context`` replaces the default (system CAs, host name checked) for smtps/STARTTLS,
    e.g. to trust a private CA. Error messages never hold the password: the URL is shown
    redacted (:func:`newsletter.redaction.redact_url`), and a user-info that parsers would
    misread (an unencoded ``/ # ? @`` in the password) is reported as such, since urllib's
    own complaint would quote a piece of the password ("port 'pa' is not a number").
    With ``signer`` every message is DKIM-signed on its way in (:class:`SigningTransport`).
    """
    transport = _unsigned_transport(url, ssl_context)
    return SigningTransport(transport, signer) if signer is not None else transport


def _unsigned_transport(url: str, ssl_context: ssl.SSLContext | None) -> Transport:
    if userinfo_is_malformed(url.strip()):
        raise ConfigurationError(
            f"mail URL {redact_url(url.strip())!r} is malformed: the user name or password"
            " holds a character that must be percent-encoded"
            " (/ → %2F, # → %23, ? → %3F, @ → %40, % → %25)"
        )
    try:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        if scheme == "file":
            return FileTransport(_file_path(parts))
        if scheme == "memory":
            return MemoryTransport(unquote(parts.netloc + parts.path) or "default")
        if scheme in ("smtp", "smtps"):
            return _smtp_transport(parts, ssl_context)
    except ValueError as exc:  # urllib's complaints (a port that is no number, …)
        raise ConfigurationError(
            f"mail URL {redact_url(url)!r} is malformed: {redact_text(str(exc))}"
        ) from None
    raise ConfigurationError(
        f"mail URL {redact_url(url)!r}: unknown scheme {parts.scheme!r};"
        " use file://, smtp://, smtps:// or memory://"
    )


def _file_path(parts: SplitResult) -> Path:
    # "file://var/outbox" is how the embedded default spells a *relative* path: the part
    # urllib calls the host is its first segment. "file:///x" and "file://localhost/x" are
    # absolute, as in RFC 8089.
    if parts.netloc in ("", "localhost"):
        path = Path(unquote(parts.path))
    else:
        path = Path(unquote(parts.netloc + parts.path))
    if not str(path) or str(path) == ".":
        raise ValueError("no directory in the file URL")
    return path.absolute()  # fixed now: a later chdir must not move the outbox


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _smtp_transport(parts: SplitResult, ssl_context: ssl.SSLContext | None) -> SmtpTransport:
    if not parts.hostname:
        raise ValueError("no host")
    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    unknown = set(query) - {"starttls", "timeout", "helo", "max_messages"}
    if unknown:
        # A typo such as "startls=true" must not silently send in clear.
        raise ValueError(f"unknown parameter(s) {', '.join(sorted(unknown))}")
    starttls = query.get("starttls", "false").lower()
    if starttls not in _TRUE | _FALSE:
        raise ValueError(f"starttls must be true or false, not {starttls!r}")
    implicit = parts.scheme.lower() == "smtps"
    if implicit and starttls in _TRUE:
        raise ValueError("smtps:// is TLS from the start; starttls does not apply")
    tls: TlsMode = "implicit" if implicit else "starttls" if starttls in _TRUE else "none"
    timeout = float(query.get("timeout", "30"))
    if not timeout > 0:
        raise ValueError("timeout must be a positive number of seconds")
    limit = query.get("max_messages")
    if limit is not None and not (limit.isdigit() and int(limit) > 0):
        raise ValueError(f"max_messages must be a positive whole number, not {limit!r}")
    return SmtpTransport(
        parts.hostname,
        parts.port or (465 if implicit else 25),
        tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        timeout=timeout,
        local_hostname=query.get("helo"),
        ssl_context=ssl_context,
        max_messages=int(limit) if limit is not None else None,
    )


class SigningTransport:
    """Another transport whose every message gets a DKIM signature first (one per send:
    a message retried later is signed anew, with a fresh ``t=``)."""

    def __init__(self, inner: Transport, signer: DkimSigner) -> None:
        """Sign with ``signer``, then hand over through ``inner``."""
        self.inner = inner
        self.signer = signer

    def __repr__(self) -> str:
        return f"SigningTransport({self.inner!r}, {self.signer!r})"

    def __enter__(self) -> Self:
        self.inner.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.inner.__exit__(exc_type, exc, traceback)

    def send(self, message: OutgoingMessage) -> None:
        """Sign ``message`` and send it through the inner transport."""
        # The signature's lines are folded with CRLF + space: still dot-safe.
        signed = dataclasses.replace(message, data=self.signer.sign(message.data))
        self.inner.send(signed)


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9.@+_-]")


class FileTransport:
    """Writes each message to ``{directory}/{message-id}.eml``, atomically and durably.

    The file is named after the delivery's Message-ID, so re-sending a delivery (after a
    crash, say) overwrites the same file instead of adding a duplicate: the outbox holds
    exactly one file per delivery. A temporary file in the same directory is written, fsynced
    and renamed over the final name, so a reader never sees half a message and a failed
    write (full disk) leaves nothing behind.
    """

    def __init__(self, directory: Path) -> None:
        """A transport writing into ``directory`` (created when the first batch opens)."""
        self.directory = directory
        self._ready = False

    def __repr__(self) -> str:
        return f"FileTransport({str(self.directory)!r})"

    def __enter__(self) -> Self:
        self._ready = False  # check the directory again each batch: it may have been removed
        self._prepare()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # fsync the directory once per batch so that the renames themselves are durable,
        # rather than once per message (which would double the cost of every write).
        with contextlib.suppress(OSError):  # some filesystems cannot fsync a directory
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _prepare(self) -> None:
        if self._ready:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DeliveryError(
                f"cannot create the outbox {self.directory}: {exc.strerror or exc}",
                permanent=False,
            ) from None
        self._ready = True

    def path_for(self, message: OutgoingMessage) -> Path:
        """Where ``message`` is (or would be) written."""
        return self.directory / (_UNSAFE_NAME.sub("_", message.message_id.strip("<>")) + ".eml")

    def send(self, message: OutgoingMessage) -> None:
        """Write ``message``; DeliveryError (not permanent) naming the file and the reason."""
        self._prepare()
        path = self.path_for(message)
        temporary: str | None = None
        try:
            fd, temporary = tempfile.mkstemp(
                prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
            )
            try:
                view = memoryview(message.data)
                while view:  # os.write may write less than asked
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, path)
        except OSError as exc:
            if temporary is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
            raise DeliveryError(
                f"cannot write {path}: {exc.strerror or exc}", permanent=False
            ) from None


@dataclass
class MemoryMailbox:
    """What a ``memory://NAME`` transport delivered, shared by every transport of that name.

    It accepts everything; refusals are rehearsed against a real SMTP server instead.
    ``batches`` counts opened ``with`` blocks.
    """

    messages: list[OutgoingMessage] = field(default_factory=list)
    batches: int = 0

    def clear(self) -> None:
        """Forget every message and the batch count."""
        self.messages.clear()
        self.batches = 0


_MAILBOXES: dict[str, MemoryMailbox] = {}
_MAILBOXES_LOCK = threading.Lock()


def memory_mailbox(name: str = "default") -> MemoryMailbox:
    """The mailbox of ``memory://{name}`` (created empty on first use)."""
    with _MAILBOXES_LOCK:
        return _MAILBOXES.setdefault(name, MemoryMailbox())


class MemoryTransport:
    """Keeps messages in :func:`memory_mailbox` ``(name)``; for tests."""

    def __init__(self, name: str = "default") -> None:
        """A transport delivering into the mailbox called ``name``."""
        self.name = name
        self.mailbox = memory_mailbox(name)

    def __repr__(self) -> str:
        return f"MemoryTransport({self.name!r})"

    def __enter__(self) -> Self:
        self.mailbox.batches += 1
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None

    def send(self, message: OutgoingMessage) -> None:
        """Keep ``message``."""
        self.mailbox.messages.append(message)
