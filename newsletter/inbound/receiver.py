"""``newsletter inbound serve``: an SMTP (or LMTP) receiver for the bounce domain.

It accepts mail only for the bounce address and its VERP forms (``bounces+<delivery>@…``),
refusing every other recipient with 550, so it never becomes an open relay or a mailbox for
strangers. Each message is processed (:func:`newsletter.inbound.service.process_message`)
and committed *before* the 250 goes out: a receiver that crashed after answering would lose
the bounce, while one that crashed before answering makes the sending MTA try again (the
fingerprint makes that second copy harmless). A database that cannot be reached gets 451,
so the MTA keeps the message and retries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope
from aiosmtpd.smtp import Session as SMTPSession

from newsletter.config import Settings
from newsletter.db import session_scope
from newsletter.inbound.service import InboundOutcome, process_message
from newsletter.mail.verp import is_bounce_mailbox

log = logging.getLogger(__name__)


class InboundHandler:
    """aiosmtpd handler: recipients checked at RCPT, each message stored at DATA."""

    def __init__(self, settings: Settings, *, lmtp: bool = False) -> None:
        """``settings.bounce_address`` must be set: it names the only mailboxes accepted."""
        if not settings.bounce_address:
            raise ValueError("NEWSLETTER_BOUNCE_ADDRESS is not set: no mailbox to receive for")
        self.settings = settings
        self.bounce_address = settings.bounce_address
        self.source = "lmtp" if lmtp else "smtp"
        self.lmtp = lmtp

    async def handle_RCPT(
        self,
        server: SMTP,
        session: SMTPSession,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        """Accept the bounce address and its VERP forms only."""
        if not is_bounce_mailbox(address, self.bounce_address):
            return "550 5.1.1 No such mailbox here: this server receives returned mail only"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: SMTPSession, envelope: Envelope) -> str:
        """Store the message, then answer (one reply per recipient under LMTP, RFC 2033)."""
        raw = envelope.original_content or b""
        if isinstance(envelope.content, bytes) and not raw:
            raw = envelope.content
        recipients = list(envelope.rcpt_tos)
        loop = asyncio.get_running_loop()
        try:
            outcome = await loop.run_in_executor(None, self.store, raw, recipients)
        except Exception:
            log.exception("inbound: a returned message could not be stored")
            reply = "451 4.3.0 The message could not be stored; try again later"
        else:
            reply = f"250 2.0.0 Stored as event {outcome.event_id} ({outcome.kind})"
        if self.lmtp:
            return "\r\n".join([reply] * max(1, len(recipients)))
        return reply

    def store(self, raw: bytes, recipients: Sequence[str]) -> InboundOutcome:
        """Process and commit one message (runs in a thread: the database is blocking)."""
        with session_scope(self.settings.database_url) as db:
            return process_message(
                db, self.settings, raw, source=self.source, envelope_recipients=recipients
            )


class _LMTPController(Controller):
    def factory(self) -> Any:
        return LMTP(self.handler, **self.SMTP_kwargs)


def receiver(settings: Settings, *, host: str, port: int, lmtp: bool, max_size: int) -> Controller:
    """A started-on-demand receiver (call ``.start()`` / ``.stop()``) on ``host:port``."""
    handler = InboundHandler(settings, lmtp=lmtp)
    domain = handler.bounce_address.rpartition("@")[2]
    kind = _LMTPController if lmtp else Controller
    return kind(
        handler,
        hostname=host,
        port=port,
        data_size_limit=max_size,
        server_hostname=domain,
        ident="newsletter inbound",
    )
