"""The per-person placeholders of the RSVP notices, and their one way of being filled.

A notice is compiled once per (session, revision, kind) with these plain words in place of
the person's values (premailer passes plain words untouched, see ``rendering.personalise``);
each mail then replaces them: text values escaped as text in the HTML part, URLs escaped for
an attribute, both as they are in the text part.
"""

from __future__ import annotations

from collections.abc import Mapping

from markupsafe import escape

from newsletter.config import Settings
from newsletter.links import recipient_links
from newsletter.rendering.invitation import greeting_for
from newsletter.rendering.personalise import escape_text
from newsletter.sessions.models import SalonSession
from subscribers.models import Subscriber

GREETING = "NoticeGreetingSlotQz7"
CHANGE_URL = "https://notice.invalid/NoticeChangeUrlSlotQz7"
PREFERENCES_URL = "https://notice.invalid/NoticePreferencesUrlSlotQz7"
#: Each appears exactly once in both parts of every compiled notice.
PERSON_SLOTS = (GREETING, CHANGE_URL, PREFERENCES_URL)


def person_values(
    settings: Settings, salon: SalonSession, person: Subscriber
) -> tuple[dict[str, str], dict[str, str]]:
    """The person's values for :data:`PERSON_SLOTS`: (texts, urls) for :func:`fill`. The
    links are not from a campaign (campaign 0) and carry no mailto unsubscribe."""
    links = recipient_links(
        settings.base_url,
        settings.secret_keys,
        session_id=salon.id,
        session_number=salon.number,
        subscriber_id=person.id,
        campaign_id=0,
        unsubscribe_mailbox=None,
    )
    texts = {GREETING: greeting_for(person.name or "")}
    urls = {CHANGE_URL: links.rsvp_page, PREFERENCES_URL: links.preferences}
    return texts, urls


def fill(
    html: str, text: str, texts: Mapping[str, str], urls: Mapping[str, str]
) -> tuple[str, str]:
    """``html`` and ``text`` with every slot replaced by its value."""
    for slot, value in texts.items():
        html, text = html.replace(slot, escape_text(value)), text.replace(slot, value)
    for slot, url in urls.items():
        html, text = html.replace(slot, str(escape(url))), text.replace(slot, url)
    return html, text
