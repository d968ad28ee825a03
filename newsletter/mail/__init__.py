"""Outgoing mail: finished messages (:mod:`.message`) and the transports that carry them."""

from newsletter.mail.message import (
    MessageFactory,
    OutgoingMessage,
    delivery_id_from_message_id,
    format_message_id,
)
from newsletter.mail.smtp import SmtpRefused
from newsletter.mail.transports import (
    Transport,
    memory_mailbox,
    redact_url,
    transport_from_url,
)

__all__ = [
    "MessageFactory",
    "OutgoingMessage",
    "SmtpRefused",
    "Transport",
    "delivery_id_from_message_id",
    "format_message_id",
    "memory_mailbox",
    "redact_url",
    "transport_from_url",
]
