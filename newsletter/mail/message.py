"""Finished RFC 5322 messages, built fast: one :class:`MessageFactory` per campaign, one
:meth:`MessageFactory.build` per recipient.

``email.message.EmailMessage`` and its generator cost milliseconds per message, and a campaign
builds thousands per second; CPython's header folder has also mishandled long CJK subjects.
So the bytes are written directly:

* the headers that are the same for every recipient (From, Subject, List-Id, …) are encoded
  once, when the factory is made (see :mod:`newsletter.mail.headers` for the encoding rules);
* per recipient only To, Date, Message-ID and List-Unsubscribe are formatted, and the two
  bodies are base64-encoded with a few C-level calls (no per-line Python loop);
* the message is ``multipart/alternative``, text part first (a client shows the last part it
  can render, so HTML wins where it can), both parts UTF-8 in base64 (quoted-printable
  would triple Chinese text), CRLF line ends everywhere, base64 lines of 76 characters.

Nothing here depends on the host: the Message-ID derives from the delivery id, this
installation's random id (kept in the database, :mod:`newsletter.installation`) and the
configured mail domain, and the MIME boundary from the delivery id; so a delivery re-sent
after a crash is the very same message, byte for byte (apart from Date), and receivers can
drop the copy, while a second installation (or a database made afresh) never repeats an id.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import struct
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, parseaddr
from functools import lru_cache
from itertools import chain

import pybase64

from newsletter.config import Settings
from newsletter.errors import ConfigurationError, DeliveryError
from newsletter.mail.headers import (
    MAX_LINE,
    addr_spec,
    address_header,
    fold,
    needs_smtputf8,
    phrase,
    unstructured,
)
from newsletter.mail.inline_image import InlineImage, image_part, related_content_type
from newsletter.mail.verp import verp_address

CRLF = b"\r\n"
BASE64_LINE = 76  # RFC 2045 6.8: encoded lines are at most 76 characters

# A List-Unsubscribe URL goes between angle brackets: printable ASCII without "<", ">" or space.
_HEADER_URL = re.compile(r"[!-;=?-~]+")
_LIST_ID = re.compile(r"[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+")
_MESSAGE_ID = re.compile(r"<d(\d+)\.([0-9a-z]{8,32})@([^>]+)>")
# An installation id: what migration 0004 makes (16 hex digits); anything header-safe passes.
_INSTALLATION = re.compile(r"[0-9a-z]{8,32}")


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A finished message and its SMTP envelope, ready for any transport."""

    delivery_id: int
    envelope_from: str
    recipient: str
    message_id: str
    data: bytes
    # True when no line of ``data`` can start with a dot (base64 parts and generated headers),
    # so SMTP need not scan 60 KB for dots to stuff.
    dot_safe: bool = False
    # The recipient's address has a non-ASCII local part: it travels only with SMTPUTF8.
    smtputf8: bool = False

    def __repr__(self) -> str:
        # No address and no body: a message object that ends up in a log line leaks nothing.
        return (
            f"OutgoingMessage(delivery_id={self.delivery_id}, message_id={self.message_id!r},"
            f" size={len(self.data)})"
        )


def _normal_domain(mail_domain: str) -> str:
    """``mail_domain`` lower-cased and checked, IDNA-encoded when not ASCII."""
    try:
        return addr_spec(f"x@{mail_domain.strip().lower()}").partition("@")[2]
    except ValueError as exc:
        raise ValueError(f"{mail_domain!r} is not a usable mail domain: {exc}") from None


def _domain_tag(domain: str) -> str:
    # What Message-IDs carried before the installation id: a digest of the domain. Still
    # recognised, so that bounces of mail sent before the upgrade find their delivery.
    return hashlib.sha256(domain.encode("ascii")).hexdigest()[:8]


def _installation_tag(installation: str) -> str:
    tag = installation.strip().lower()
    if not _INSTALLATION.fullmatch(tag):
        raise ValueError(f"{installation!r} is not an installation id (8 to 32 letters/digits)")
    return tag


def format_message_id(delivery_id: int, mail_domain: str, installation: str) -> str:
    """The Message-ID of a delivery: ``<d{delivery_id}.{installation}@{mail_domain}>``.

    Stable (same delivery, same id, so a resend is recognisably the same message); unique
    across installations thanks to ``installation``, the random id of this database
    (:func:`newsletter.installation.installation_token`), since delivery ids restart at 1 in
    every database; made from the configured domain, never from the host name
    (``socket.getfqdn`` can be slow, wrong in containers, and leaks the machine's name).
    """
    if type(delivery_id) is not int or delivery_id < 0:
        raise ValueError(f"delivery ids are non-negative integers, got {delivery_id!r}")
    domain = _normal_domain(mail_domain)
    return f"<d{delivery_id}.{_installation_tag(installation)}@{domain}>"


def delivery_id_from_message_id(
    message_id: str, mail_domain: str, installation: str | None = None
) -> int | None:
    """The delivery id inside a Message-ID we made for ``mail_domain``, else None.

    For matching bounces and replies (their ``In-Reply-To``/``References``) to deliveries.
    With ``installation``, only this installation's ids match (another installation's
    delivery 12 is not ours); ids made before installation ids existed still match.
    """
    found = _MESSAGE_ID.fullmatch(message_id.strip())
    if found is None:
        return None
    domain = _normal_domain(mail_domain)
    if found.group(3).lower() != domain:
        return None
    tag = found.group(2)
    legacy = tag == _domain_tag(domain)
    if installation is not None and not legacy and tag != _installation_tag(installation):
        return None
    if installation is None and not legacy and len(tag) != 16:
        return None
    return int(found.group(1))


@lru_cache(maxsize=64)
def _rows(count: int) -> struct.Struct:
    # Unpacking "76s76s…" cuts the encoded body into lines in one C call: several times
    # faster than slicing in a Python loop or base64.encodebytes, which loops per 57 bytes.
    return struct.Struct(f"{BASE64_LINE}s" * count)


_BLOCK_ROWS = 256
_BLOCK_SIZE = _BLOCK_ROWS * BASE64_LINE


def base64_lines(data: bytes) -> list[bytes]:
    """``data`` base64-encoded and cut into lines of 76 characters (without line ends)."""
    # pybase64 encodes with SIMD: ~2 µs for 60 KB where binascii takes ~60 µs (measured).
    encoded = pybase64.b64encode(data)
    rows, rest = divmod(len(encoded), BASE64_LINE)
    blocks, tail_rows = divmod(rows, _BLOCK_ROWS)
    view = memoryview(encoded)
    # Whole blocks through one fixed Struct, the remaining rows through a second one: two
    # cached Structs serve every body size.
    lines = list(chain.from_iterable(_rows(_BLOCK_ROWS).iter_unpack(view[: blocks * _BLOCK_SIZE])))
    if tail_rows:
        lines.extend(_rows(tail_rows).unpack_from(encoded, blocks * _BLOCK_SIZE))
    if rest:
        lines.append(encoded[rows * BASE64_LINE :])
    return lines


def canonical_body(body: str | bytes) -> bytes:
    """``body`` as UTF-8 with CRLF line ends: the canonical form RFC 2045 6.8 asks to encode."""
    data = body.encode("utf-8", "replace") if isinstance(body, str) else body
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return data.replace(b"\n", b"\r\n")


_date_cache: tuple[int, str] = (0, "")


def date_header(date: datetime | None) -> str:
    """The Date header value: ``date``, or now (formatted once per second, it is costly)."""
    global _date_cache
    if date is not None:
        if date.tzinfo is None:
            raise ValueError("the Date of a message needs a timezone-aware datetime")
        return format_datetime(date)
    # Formatting a date costs more than the rest of the headers: reuse it within the second.
    now = int(time.time())
    second, text = _date_cache
    if second != now:
        text = format_datetime(datetime.fromtimestamp(now, UTC))
        _date_cache = (now, text)
    return text


class MessageFactory:
    """Builds the personalised messages of one campaign.

    Everything that is the same for every recipient is checked and encoded here, once:
    bad configuration fails when the campaign starts, not at its thousandth message.
    """

    def __init__(
        self,
        *,
        from_address: str,
        subject: str,
        mail_domain: str,
        installation: str,
        from_name: str | None = None,
        list_id: str | None = None,
        list_name: str | None = None,
        bounce_address: str | None = None,
    ) -> None:
        """Prepare a campaign's constant headers.

        ``from_address`` is a bare address with ``from_name`` as its display name, or, when
        ``from_name`` is None, the whole ``Display Name <address>`` (``FROM_ADDRESS``).
        ``mail_domain`` and ``installation`` (this database's id) make the Message-IDs;
        the domain also makes the default List-Id ``salon.{mail_domain}``;
        ``list_name`` (default: ``from_name``) is List-Id's display name. With
        ``bounce_address`` the envelope sender is its per-delivery VERP form, else the
        From address. Raises :class:`ConfigurationError` for unusable values.
        """
        if from_name is None:
            from_name, from_address = parseaddr(from_address)
        what = "the From address"
        try:
            self.from_address = addr_spec(from_address)
            what = "the mail domain"
            self.mail_domain = _normal_domain(mail_domain)
            what = "the bounce address"
            self.bounce_address = addr_spec(bounce_address) if bounce_address else None
            what = "the installation id"
            self.installation = _installation_tag(installation)
        except ValueError as exc:
            raise ConfigurationError(f"{what} cannot be used to send mail: {exc}") from None
        list_id = list_id or f"salon.{self.mail_domain}"
        if not _LIST_ID.fullmatch(list_id):
            raise ConfigurationError(f"List-Id {list_id!r} is not of the form label.domain")
        self.subject = subject
        self._message_id_suffix = f".{self.installation}@{self.mail_domain}>"
        list_tokens = phrase(from_name if list_name is None else list_name, MAX_LINE - 9)
        self._from_header = address_header("From", from_name, self.from_address)
        self._subject_header = unstructured("Subject", subject)
        self._list_id_header = fold("List-Id", [*list_tokens, f"<{list_id}>"])

    @classmethod
    def for_settings(
        cls, settings: Settings, *, subject: str, installation: str, list_name: str | None = None
    ) -> MessageFactory:
        """A factory for ``subject`` with From, mail domain and bounce address from settings
        (``installation``: :func:`newsletter.installation.installation_token`)."""
        return cls(
            from_address=settings.from_address,
            subject=subject,
            mail_domain=settings.sender_domain,
            installation=installation,
            list_name=list_name,
            bounce_address=settings.bounce_address,
        )

    def message_id(self, delivery_id: int) -> str:
        """The Message-ID of ``delivery_id`` (same as :func:`format_message_id`)."""
        return f"<d{delivery_id}{self._message_id_suffix}"

    def preview_message_id(self) -> str:
        """A fresh Message-ID for a preview: ``p`` and random digits, never a delivery's ``d``.

        A preview is no delivery; should one be sent by hand, it must not share an id with a
        real mail (receivers would drop one of the two) nor with another preview.
        """
        return f"<p{secrets.token_hex(8)}{self._message_id_suffix}"

    def build(
        self,
        *,
        delivery_id: int,
        recipient_name: str,
        recipient_address: str,
        html: str | bytes,
        text: str | bytes,
        unsubscribe_url: str,
        unsubscribe_mailto: str | None = None,
        date: datetime | None = None,
        message_id: str | None = None,
        canonical: bool = False,
        inline: InlineImage | None = None,
        calendar: tuple[str, bytes] | None = None,
    ) -> OutgoingMessage:
        """The finished message for one delivery.

        ``html`` and ``text`` are the rendered bodies (``bytes`` must be UTF-8; passing bytes
        saves the encoding when the renderer has them; ``canonical=True`` says they are bytes
        with CRLF line ends already, :func:`canonical_body`'s form, which saves a pass).
        ``unsubscribe_url`` (https) and the optional ``unsubscribe_mailto`` go into
        ``List-Unsubscribe``; ``date`` defaults to now; ``message_id`` defaults to the
        delivery's (:meth:`message_id`), a preview passes :meth:`preview_message_id`.
        ``inline`` (a reminder's check-in QR code) makes the message ``multipart/related``
        with the image after the two bodies; without it nothing changes. A recipient address
        that cannot go into a header raises :class:`DeliveryError` (``permanent=True``).
        ``calendar`` (a change notice's event: its METHOD and .ics bytes) is a third
        alternative, ``text/calendar``, after the HTML (RFC 6047).
        """
        if type(delivery_id) is not int:  # it goes into headers: nothing but digits
            raise TypeError(f"delivery_id must be an int, not {type(delivery_id).__name__}")
        try:
            recipient = addr_spec(recipient_address, utf8=True)
        except ValueError as exc:
            raise DeliveryError(
                f"delivery {delivery_id}: the recipient address is unusable: {exc}",
                permanent=True,
            ) from None
        unsubscribe = (
            [unsubscribe_url, unsubscribe_mailto] if unsubscribe_mailto else [unsubscribe_url]
        )
        for url in unsubscribe:
            if not _HEADER_URL.fullmatch(url):
                raise ValueError("an unsubscribe URL holds spaces, angle brackets or non-ASCII")
        if message_id is None:
            message_id = f"<d{delivery_id}{self._message_id_suffix}"
        elif not (
            message_id[:1] == "<"
            and message_id[-1:] == ">"
            and _HEADER_URL.fullmatch(message_id[1:-1])
        ):
            raise ValueError(f"{message_id!r} is not a Message-ID: <printable ASCII>")
        # Base64 never holds "=" followed by "_", so this boundary cannot occur in a body.
        boundary = f"=_d{delivery_id}.alt"
        content_type = f'Content-Type: multipart/alternative; boundary="{boundary}"'
        if inline is not None:
            related = f"=_d{delivery_id}.rel"
            content_type = f"{related_content_type(related)}\r\n\r\n--{related}\r\n{content_type}"
        head = "\r\n".join(
            (
                self._from_header,
                address_header("To", recipient_name, recipient),
                self._subject_header,
                "Date: " + date_header(date),
                "Message-ID: " + message_id,
                "MIME-Version: 1.0",
                self._list_id_header,
                fold(
                    "List-Unsubscribe",
                    [f"<{url}>," for url in unsubscribe[:-1]] + [f"<{unsubscribe[-1]}>"],
                ),
                # RFC 8058: a POST to the https URL unsubscribes with no further step.
                "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
                "Precedence: bulk",
                content_type,
                "",
                f"--{boundary}",
                "Content-Type: text/plain; charset=utf-8",
                "Content-Transfer-Encoding: base64",
                "",
            )
        )
        between = (
            f"--{boundary}\r\n"
            "Content-Type: text/html; charset=utf-8\r\n"
            "Content-Transfer-Encoding: base64\r\n"
        )
        # One list of lines and a single join: the ~100 KB message is copied exactly once.
        smtputf8 = needs_smtputf8(recipient)
        # RFC 6532: with SMTPUTF8 the To header carries the address in UTF-8.
        pieces = [head.encode("utf-8" if smtputf8 else "ascii")]
        if not canonical:
            text, html = canonical_body(text), canonical_body(html)
        assert isinstance(text, bytes) and isinstance(html, bytes), "canonical bodies are bytes"
        pieces += base64_lines(text)
        pieces.append(between.encode("ascii"))
        pieces += base64_lines(html)
        if calendar is not None:
            method, ics = calendar
            pieces.append(
                f"--{boundary}\r\nContent-Type: text/calendar; charset=utf-8; method={method}\r\n"
                "Content-Transfer-Encoding: base64\r\n".encode("ascii")
            )
            pieces += base64_lines(ics)
        pieces.append(f"--{boundary}--".encode("ascii"))
        if inline is not None:
            pieces += image_part(related, inline)
        pieces.append(b"")
        envelope_from = (
            verp_address(self.bounce_address, delivery_id)
            if self.bounce_address
            else self.from_address
        )
        return OutgoingMessage(
            delivery_id=delivery_id,
            envelope_from=envelope_from,
            recipient=recipient,
            message_id=message_id,
            data=CRLF.join(pieces),
            dot_safe=True,  # base64 lines and our folded headers never start with a dot
            smtputf8=smtputf8,
        )
