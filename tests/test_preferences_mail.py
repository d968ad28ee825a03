"""Every mail's footer links to the person's own preference page: the invitation and the
reminder (a compiled slot, personalised like the unsubscribe link), the RSVP notices and
the export mail. The footers themselves are pinned by a golden file (regenerate only after
checking a change by eye: ``NEWSLETTER_UPDATE_GOLDEN=1 pytest tests/test_preferences_mail.py``).
"""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from newsletter.campaigns.compiled import build_message, compile_invitation
from newsletter.campaigns.models import CampaignKind
from newsletter.config import Settings
from newsletter.db import session_scope, utcnow
from newsletter.migrate import upgrade
from newsletter.rendering import REMINDER, InvitationTemplate, RenderingError
from newsletter.rsvp.models import NoticeKind
from newsletter.rsvp.notices import build_rsvp_notice
from newsletter.sessions import repo as sessions_repo
from newsletter.sessions.service import import_records
from newsletter.tokens import Purpose, verify
from subscribers.models import Subscriber
from tests.conftest import EXAMPLES
from tests.test_message import check_golden
from tests.test_notices import parse
from tests.test_rendering import ORGANIZER, TIMEZONE, recipient, record

_LINK = re.compile(r"https://salon\.example\.org/preferences/([A-Za-z0-9_.-]+)")


def _people(settings: Settings) -> tuple[int, list[int]]:
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as db:
        import_records(db, [EXAMPLES / "sessions" / "061.yaml"], timezone="Asia/Shanghai")
        people = [Subscriber(email=f"{n}@example.org", name=n, created_at=utcnow()) for n in "ab"]
        db.add_all(people)
        db.flush()
        salon = sessions_repo.get_by_number(db, 61)
        assert salon is not None
        return salon.id, [p.id for p in people]


def _own_link(settings: Settings, text: str) -> dict[str, int]:
    tokens = set(_LINK.findall(text))
    assert len(tokens) == 1, tokens
    return verify(Purpose.PREFERENCES, tokens.pop(), settings.secret_keys)


@pytest.mark.parametrize("kind", [CampaignKind.invitation, CampaignKind.reminder])
def test_each_recipient_of_a_campaign_gets_their_own_preference_link(
    settings: Settings, kind: CampaignKind
) -> None:
    session_id, people = _people(settings)
    with session_scope(settings.database_url) as db:
        salon = sessions_repo.get_by_id(db, session_id)
        assert salon is not None
        compiled = compile_invitation(
            db, salon, subject=None, campaign_id=7, settings=settings, kind=kind
        )
    keys = settings.secret_keys
    for delivery, person in enumerate(people, start=1):
        message = parse(
            build_message(compiled, delivery, person, "x", "x@example.org", settings, keys).data
        )
        html, text = message.get_body(("html",)), message.get_body(("plain",))
        assert html is not None and text is not None
        assert _own_link(settings, html.get_content()) == {"u": person}
        assert _own_link(settings, text.get_content()) == {"u": person}
        assert "订阅设置" in html.get_content() and "订阅设置" in text.get_content()


def test_rsvp_notices_link_to_the_preference_page(settings: Settings) -> None:
    session_id, people = _people(settings)
    with session_scope(settings.database_url) as db:
        mails = [
            build_rsvp_notice(db, settings, session_id, person, NoticeKind.confirmed)
            for person in people
        ]
    for person, mail in zip(people, mails, strict=True):
        assert mail is not None
        message = parse(mail.data)
        for part in (message.get_body(("html",)), message.get_body(("plain",))):
            assert part is not None
            assert _own_link(settings, part.get_content()) == {"u": person}
            assert "NoticePreferencesUrlSlot" not in part.get_content()


def test_a_campaign_template_without_the_preference_link_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import newsletter.rendering.invitation as invitation

    original = invitation.Slots.of

    def without_preferences(values: list[str]) -> invitation.Slots:
        return replace(original(values), preferences_url="https://salon.example.org/static")

    monkeypatch.setattr(invitation.Slots, "of", without_preferences)
    with pytest.raises(RenderingError, match="preferences_url"):
        InvitationTemplate.build(record(61), [], organizer=ORGANIZER, timezone=TIMEZONE)


def _footer(html: str) -> str:
    """The footer cell (premailer inlined its class away): the cell saying why one got it."""
    start = html.rindex("<td", 0, html.index("你收到这封"))
    return html[start : html.index("</td>", start) + 5]


def test_the_footers_match_the_golden_file() -> None:
    person = recipient("张三", token="t61")
    parts = []
    for template in ("email/invitation", REMINDER):
        built = InvitationTemplate.build(
            record(61), [], organizer=ORGANIZER, timezone=TIMEZONE, template=template
        ).personalise(person)
        parts.append(f"== {template}.html\n{_footer(built.html)}\n")
        parts.append(f"== {template}.txt\n{built.text[built.text.rindex('————') :]}")
    check_golden("footers.txt", "".join(parts).encode("utf-8"))
