"""Per-recipient links: absolute, the web app's URL scheme, signed ids, never an address."""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from newsletter import links as links_module
from newsletter.config import Settings
from newsletter.links import RecipientLinks, recipient_links
from newsletter.tokens import Purpose, TokenInvalid, verify
from newsletter.tokens import sign as real_sign

BASE = "https://salon.example.org"
KEYS = ["k-new", "k-old"]


def make(base: str = BASE, mailbox: str | None = "unsubscribe@example.org") -> RecipientLinks:
    return recipient_links(
        base,
        KEYS,
        session_id=7,
        session_number=61,
        subscriber_id=1234,
        campaign_id=3,
        unsubscribe_mailbox=mailbox,
    )


def test_urls_follow_the_web_apps_scheme() -> None:
    links = make()
    for answer in ("yes", "maybe", "no"):
        url = urlsplit(getattr(links, f"rsvp_{answer}"))
        assert (url.scheme, url.netloc) == ("https", "salon.example.org")
        assert url.path.startswith("/rsvp/")
        assert parse_qs(url.query) == {"answer": [answer]}
    assert links.calendar == f"{BASE}/sessions/61.ics"
    assert links.unsubscribe.startswith(f"{BASE}/unsubscribe/")


def test_one_rsvp_token_for_the_three_answers_carrying_session_and_subscriber() -> None:
    links = make()
    tokens = {urlsplit(u).path.rpartition("/")[2] for u in (links.rsvp_yes, links.rsvp_no)}
    assert len(tokens) == 1
    assert verify(Purpose.RSVP, tokens.pop(), KEYS) == {"s": 7, "u": 1234}


def test_unsubscribe_token_carries_subscriber_and_campaign() -> None:
    token = make().unsubscribe.rpartition("/")[2]
    assert verify(Purpose.UNSUBSCRIBE, token, KEYS) == {"u": 1234, "c": 3}
    with pytest.raises(TokenInvalid):  # an unsubscribe link cannot answer an RSVP
        verify(Purpose.RSVP, token, KEYS)


def test_mailto_unsubscribe_only_with_a_mailbox() -> None:
    links = make()
    assert links.unsubscribe_mailto is not None
    url = urlsplit(links.unsubscribe_mailto)
    assert (url.scheme, url.path) == ("mailto", "unsubscribe@example.org")
    subject = parse_qs(url.query)["subject"][0]
    word, token = subject.split(" ")
    assert word == "unsubscribe"
    assert verify(Purpose.UNSUBSCRIBE, token, KEYS) == {"u": 1234, "c": 3}
    assert make(mailbox=None).unsubscribe_mailto is None
    with pytest.raises(ValueError):
        make(mailbox="x@example.org?bcc=victim@example.org\r\n")


def test_no_address_in_any_link() -> None:
    links = make(mailbox=None)
    for url in (
        links.rsvp_yes,
        links.rsvp_maybe,
        links.rsvp_no,
        links.calendar,
        links.unsubscribe,
        links.preferences,
    ):
        assert "@" not in unquote(url)


def test_preference_link_carries_the_person_only_and_never_expires() -> None:
    links = make(mailbox=None)
    assert links.preferences.startswith(f"{BASE}/preferences/")
    token = links.preferences.rsplit("/", 1)[1]
    assert verify(Purpose.PREFERENCES, token, KEYS) == {"u": 1234}
    with pytest.raises(TokenInvalid):  # not usable as another purpose's token
        verify(Purpose.UNSUBSCRIBE, token, KEYS)


def test_three_signatures_per_recipient(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Purpose] = []

    def counting_sign(purpose: Purpose, payload: dict[str, int], keys: list[str]) -> str:
        calls.append(purpose)
        return real_sign(purpose, payload, keys)

    monkeypatch.setattr(links_module, "sign", counting_sign)
    make()
    # RSVP (one token for the three answers), unsubscribe, and the preference page.
    assert sorted(calls) == [Purpose.PREFERENCES, Purpose.RSVP, Purpose.UNSUBSCRIBE]


def test_trailing_slash_in_base_url_is_harmless() -> None:
    assert make(BASE + "/").calendar == f"{BASE}/sessions/61.ics"


def test_with_configured_settings(settings: Settings) -> None:
    links = recipient_links(
        settings.base_url,
        settings.secret_keys,
        session_id=1,
        session_number=28,
        subscriber_id=2,
        campaign_id=3,
    )
    assert links.calendar == "https://salon.example.org/sessions/28.ics"
    token = links.rsvp_maybe.split("/rsvp/")[1].split("?")[0]
    assert verify(Purpose.RSVP, token, settings.secret_keys) == {"s": 1, "u": 2}
