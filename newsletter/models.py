"""Imports every model so that ``Base.metadata`` is complete (Alembic, tests)."""

from newsletter.campaigns.models import Campaign, Delivery, WorkerHeartbeat
from newsletter.db import Base
from newsletter.inbound.models import InboundEvent
from newsletter.installation import Installation
from newsletter.rsvp.models import Feedback, Rsvp, RsvpEvent, WalkIn
from newsletter.sessions.models import SalonSession, SessionLink
from subscribers.models import (
    ErasedAddress,
    Subscriber,
    SubscriberMail,
    Tag,
    subscriber_tags,
)

__all__ = [
    "Base",
    "Campaign",
    "Delivery",
    "ErasedAddress",
    "Feedback",
    "InboundEvent",
    "Installation",
    "Rsvp",
    "RsvpEvent",
    "SalonSession",
    "SessionLink",
    "Subscriber",
    "SubscriberMail",
    "Tag",
    "WalkIn",
    "WorkerHeartbeat",
    "subscriber_tags",
]
