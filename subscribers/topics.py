"""The topics a person may choose on the sign-up and preference pages: some of the club's tags.

One rule for both pages: ``NEWSLETTER_TOPICS`` lists the tags offered (in that order); unset,
every tag the club has is offered, alphabetically. A listed name that is not a valid tag is a
configuration mistake and is skipped rather than shown.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter.config import Settings
from subscribers.models import Tag
from subscribers.validation import SubscriberDataError, normalise_tag


def configured_topics(settings: Settings) -> list[str] | None:
    """The tag names ``NEWSLETTER_TOPICS`` lists, normalised, or None when it is unset."""
    if settings.topics is None:
        return None
    names: list[str] = []
    for raw in settings.topics.split(","):
        if not raw.strip():
            continue
        try:
            name = normalise_tag(raw)
        except SubscriberDataError:
            continue
        if name not in names:
            names.append(name)
    return names


def offered_topics(db: Session, settings: Settings) -> list[str]:
    """The topics to show, in display order."""
    configured = configured_topics(settings)
    if configured is not None:
        return configured
    return list(db.scalars(select(Tag.name).order_by(Tag.name)))


def chosen_topics(db: Session, settings: Settings, submitted: list[str]) -> list[str]:
    """The submitted topics that are offered (anything else a form sends is ignored)."""
    offered = offered_topics(db, settings)
    wanted = set(submitted)
    return [name for name in offered if name in wanted]
