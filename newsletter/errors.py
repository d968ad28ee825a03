"""The exceptions callers can catch precisely; each carries a message fit for a person to read."""

from __future__ import annotations


class NewsletterError(Exception):
    """Base of every error this package raises on purpose; its text is shown to the user as is."""


class ConfigurationError(NewsletterError):
    """A setting is missing or malformed."""


class RecordError(NewsletterError):
    """A session record was refused; the message names the file, the field and the problem."""


class NotFoundError(NewsletterError):
    """A session, subscriber or campaign that the caller named does not exist."""


class InvalidStateError(NewsletterError):
    """The action does not fit the current state (e.g. sending a cancelled campaign)."""


class DeliveryError(NewsletterError):
    """A message could not be handed to the transport.

    ``permanent`` tells the sender whether retrying can help (SMTP 5xx) or not (4xx, network).
    """

    def __init__(self, message: str, *, permanent: bool, code: int | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.code = code
