"""Imports every model so that ``Base.metadata`` is complete (Alembic, tests)."""

from newsletter.campaigns.models import Campaign, Delivery, WorkerHeartbeat
from newsletter.db import Base
from newsletter.inbound.models import InboundEvent
from newsletter.installation import Installation
from newsletter.rsvp.models import Rsvp, RsvpEvent
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
    "InboundEvent",
    "Installation",
    "Rsvp",
    "RsvpEvent",
    "SalonSession",
    "SessionLink",
    "Subscriber",
    "SubscriberMail",
    "Tag",
    "WorkerHeartbeat",
    "subscriber_tags",
]
