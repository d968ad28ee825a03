"""What an SMTP transaction can end in, for the sender to decide (see :mod:`.smtp`).

:class:`SmtpRefused` — the server answered with an error about this message (an attempt);
:class:`RelayUnavailable` — no answer about the message at all (no connection, a 421);
:class:`HandoverUnconfirmed` — the message went over, the reply never came.
"""

from __future__ import annotations

import re

from newsletter.errors import DeliveryError

_ENHANCED_STATUS = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})\b")


class SmtpRefused(DeliveryError):
    """The SMTP server answered a transaction with an error reply.

    ``code`` is the basic reply code (``451``, ``550``), ``reply`` the server's decoded text
    (the recipient's address masked), ``enhanced_status`` the RFC 3463 code if given and
    ``stage`` the command refused (``MAIL FROM``, ``RCPT TO``, ``DATA``).
    """

    def __init__(self, message: str, *, code: int, reply: str, stage: str) -> None:
        # A refused *sender* says nothing about the recipient: it is our configuration (or
        # the server's policy towards us) and must not fail deliveries for good.
        permanent = 500 <= code < 600 and stage != "MAIL FROM"
        super().__init__(message, permanent=permanent, code=code)
        self.reply = reply
        self.stage = stage
        found = _ENHANCED_STATUS.match(reply)
        self.enhanced_status = ".".join(found.groups()) if found else None

    @property
    def is_hard_bounce(self) -> bool:
        """Whether the mailbox or domain does not exist (5.1.x): suppress the address."""
        return self.permanent and (self.enhanced_status or "").startswith("5.1.")


class RelayUnavailable(DeliveryError):
    """The relay could not be reached, or answered 421: nothing was said about the message.

    The sender puts the message back untouched and waits for the relay (it is not an
    attempt of the delivery).
    """

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message, permanent=False, code=code)


class HandoverUnconfirmed(DeliveryError):
    """The message was handed over but the connection broke before the server's reply: the
    server may have it. Not an attempt (no answer), but a re-send may be a second copy."""

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=False)
