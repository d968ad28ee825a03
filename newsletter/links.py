"""The absolute, signed, per-recipient links that every invitation carries.

The web app serves exactly these paths::

    {base}/rsvp/{rsvp_token}?answer=yes|maybe|no   page showing the session; a person confirms
    {base}/sessions/{number}.ics                    public calendar file of the session
    {base}/unsubscribe/{unsubscribe_token}          page + RFC 8058 one-click POST target
    {base}/preferences/{preferences_token}          the person's preference page

One RSVP token serves the three answers: the answer is a plain query parameter because it is
not trusted anyway, a person confirms it on the page (mail scanners open every link). So a
recipient costs three signatures (RSVP, unsubscribe, preferences), whatever the number of
links. No link holds an address: the tokens carry ids only (see :mod:`newsletter.tokens`).

The preference link is the same for every mail a person gets (campaigns, RSVP notices, the
subscription mails): :func:`preferences_link` is its one home, and :func:`recipient_links`
includes it, so every mail builder gets it the same way. Like the unsubscribe link it has
no age limit (the web app verifies it without ``max_age_seconds``): an invitation sits in a
mailbox for months, and the page is also a way to unsubscribe, which must keep working as
long as the mail does (RFC 8058, GDPR Art. 7(3): withdrawing consent as easy as giving it).
What a stolen or forwarded link can do is bounded: the page shows no address, and the data
export goes by mail to the address on file, never to the page. Rotating the secret key is
the way to void every old link at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

from newsletter.tokens import Purpose, sign

RSVP_ANSWERS = ("yes", "maybe", "no")


@dataclass(frozen=True, slots=True)
class RecipientLinks:
    """Every link personalised for one recipient of one session's invitation."""

    rsvp_yes: str
    rsvp_maybe: str
    rsvp_no: str
    calendar: str
    unsubscribe: str
    unsubscribe_mailto: str | None
    preferences: str

    @property
    def rsvp_page(self) -> str:
        """The person's RSVP page itself (the yes link without its answer): it offers all
        three answers, which is where a notice's "change your answer" leads."""
        return self.rsvp_yes.split("?")[0]


def rsvp_payload(*, session_id: int, subscriber_id: int) -> dict[str, int]:
    """The ids an RSVP token carries (the web app reads the same keys)."""
    return {"s": session_id, "u": subscriber_id}


def unsubscribe_payload(*, subscriber_id: int, campaign_id: int) -> dict[str, int]:
    """The ids an unsubscribe token carries; the campaign tells which mail led to it."""
    return {"u": subscriber_id, "c": campaign_id}


def preferences_payload(*, subscriber_id: int) -> dict[str, int]:
    """The ids a preference token carries: the person only (the page is the same whichever
    mail led to it)."""
    return {"u": subscriber_id}


def preferences_link(base_url: str, keys: Sequence[str], *, subscriber_id: int) -> str:
    """The absolute link to this person's preference page (signed, ids only, no age limit)."""
    token = sign(Purpose.PREFERENCES, preferences_payload(subscriber_id=subscriber_id), keys)
    return f"{base_url.rstrip('/')}/preferences/{token}"


def unsubscribe_mailto(mailbox: str, token: str) -> str:
    """A ``mailto:`` URL whose subject carries the unsubscribe token.

    The mailbox is the list's own address (never the subscriber's); it is percent-encoded
    as RFC 6068 asks, keeping the characters an address commonly holds readable.
    """
    if any(c in mailbox for c in "\r\n <>") or "@" not in mailbox:
        raise ValueError(f"{mailbox!r} is not a usable unsubscribe mailbox")
    return f"mailto:{quote(mailbox, safe='@+.-_~')}?subject=unsubscribe%20{token}"


def recipient_links(
    base_url: str,
    keys: Sequence[str],
    *,
    session_id: int,
    session_number: int,
    subscriber_id: int,
    campaign_id: int,
    unsubscribe_mailbox: str | None = None,
) -> RecipientLinks:
    """All links of one recipient's invitation, absolute to ``base_url``.

    ``keys`` are the signing keys, newest first (``Settings.secret_keys``). Tokens are URL-safe
    (letters, digits, ``-_.``), so they go into paths and queries without quoting.
    ``unsubscribe_mailbox`` (e.g. ``unsubscribe@example.org``) adds a mailto link for the
    ``List-Unsubscribe`` header; without it ``unsubscribe_mailto`` is None.
    """
    base = base_url.rstrip("/")
    rsvp_token = sign(
        Purpose.RSVP, rsvp_payload(session_id=session_id, subscriber_id=subscriber_id), keys
    )
    unsubscribe_token = sign(
        Purpose.UNSUBSCRIBE,
        unsubscribe_payload(subscriber_id=subscriber_id, campaign_id=campaign_id),
        keys,
    )
    rsvp = f"{base}/rsvp/{rsvp_token}?answer="
    return RecipientLinks(
        rsvp_yes=rsvp + "yes",
        rsvp_maybe=rsvp + "maybe",
        rsvp_no=rsvp + "no",
        calendar=f"{base}/sessions/{int(session_number)}.ics",
        unsubscribe=f"{base}/unsubscribe/{unsubscribe_token}",
        unsubscribe_mailto=(
            unsubscribe_mailto(unsubscribe_mailbox, unsubscribe_token)
            if unsubscribe_mailbox
            else None
        ),
        preferences=preferences_link(base, keys, subscriber_id=subscriber_id),
    )
