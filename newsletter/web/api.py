"""The organizer JSON API under /api (bearer token; described at /openapi.json)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from newsletter.campaigns import service as campaigns
from newsletter.campaigns.service import CampaignProgress
from newsletter.config import get_settings
from newsletter.db import session_scope
from newsletter.errors import InvalidStateError, NotFoundError
from newsletter.inbound.rates import rates_of
from newsletter.outages import is_unavailable
from newsletter.rsvp import repo as rsvp_repo
from newsletter.rsvp.export import session_attendees_csv
from newsletter.sessions import repo as sessions_repo
from newsletter.web.auth import require_organizer
from newsletter.web.faults import RETRY_AFTER_S
from subscribers import gdpr
from subscribers.validation import SubscriberDataError
from tasks.campaigns import start_campaign
from tasks.dispatch import enqueue

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api", tags=["organizers"], dependencies=[Depends(require_organizer)])

Number = Annotated[int, Path(ge=1, le=1_000_000)]
CampaignId = Annotated[int, Path(ge=1, le=2**31 - 1)]


class SessionOut(BaseModel):
    """A session with its answer counts."""

    model_config = ConfigDict(from_attributes=True)

    number: int
    series: str
    title: str
    starts_at: str = Field(validation_alias="starts_at_local")  # in the session's zone
    venue_mode: str | None
    capacity: int | None
    yes: int
    maybe: int
    no: int
    waitlisted: int


class AttendeeOut(BaseModel):
    """One answer."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    email: str
    answer: str
    guests: int
    waitlisted: bool
    answered_at: datetime


class RsvpsOut(BaseModel):
    """Answers of a session and their counts."""

    number: int
    capacity: int | None
    yes: int
    maybe: int
    no: int
    waitlisted: int
    seats: int
    attendees: list[AttendeeOut]


class CampaignIn(BaseModel):
    """A new invitation campaign."""

    number: int = Field(ge=1, le=1_000_000)
    subject: str | None = Field(default=None, min_length=1, max_length=300)
    tag: str | None = Field(default=None, min_length=1, max_length=100)


class ReminderIn(BaseModel):
    """A reminder to those with a confirmed seat; every field is optional."""

    subject: str | None = Field(default=None, min_length=1, max_length=300)


@contextmanager
def _refusals_as_http() -> Iterator[None]:
    """404 for what does not exist, 409 for what its state forbids, with the service's words."""
    try:
        yield
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from None
    except InvalidStateError as exc:
        raise HTTPException(409, str(exc)) from None


def _campaign_out(campaign_id: int) -> CampaignProgress:
    with session_scope(get_settings().database_url) as db:
        return campaigns.progress(db, campaign_id)


@router.get("/sessions")
def list_sessions() -> list[SessionOut]:
    """Every session, newest first, with answer counts."""
    with session_scope(get_settings().database_url) as db:
        rows = sessions_repo.list_with_counts(db)
    return [SessionOut.model_validate(row) for row in rows]


def _salon_id(db: Session, number: int) -> tuple[int, int | None]:
    salon = sessions_repo.get_by_number(db, number)
    if salon is None:
        raise HTTPException(404, f"session {number} does not exist")
    return salon.id, salon.capacity


@router.get("/sessions/{number}/rsvps")
def session_rsvps(number: Number) -> RsvpsOut:
    """Who answered what, confirmed first, then the waitlist in order."""
    with session_scope(get_settings().database_url) as db:
        salon_id, capacity = _salon_id(db, number)
        counts = rsvp_repo.counts(db, salon_id)
        rows = rsvp_repo.attendees(db, salon_id)
    return RsvpsOut(
        number=number,
        capacity=capacity,
        attendees=[AttendeeOut.model_validate(row) for row in rows],
        **asdict(counts),
    )


@router.get("/sessions/{number}/rsvps.csv", response_class=Response)
def session_rsvps_csv(number: Number) -> Response:
    """The same answers as CSV."""
    with session_scope(get_settings().database_url) as db:
        salon_id, _ = _salon_id(db, number)
        text = session_attendees_csv(db, salon_id)
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="rsvps-{number}.csv"'},
    )


@router.post("/sessions/{number}/reminders", status_code=201)
def create_reminder(number: Number, body: ReminderIn | None = None) -> CampaignProgress:
    """Remind those who answered yes (confirmed, not waitlisted) and start sending at once.

    404 for an unknown session; 409 when it is cancelled, over, or nobody has confirmed.
    """
    with _refusals_as_http(), session_scope(get_settings().database_url) as db:
        campaign_id = campaigns.create_reminder(
            db, number, subject=body.subject if body else None
        ).id
    _start(campaign_id)  # after the commit above
    return _campaign_out(campaign_id)


def _start(campaign_id: int) -> None:
    """Ask a worker to start sending the campaign (saved already). With the broker down:
    503 saying so; sending again is harmless (it only restarts the same rows)."""
    try:
        enqueue(start_campaign, campaign_id)
    except Exception as error:
        if not is_unavailable(error):
            raise
        log.warning(
            "campaign %s: the broker did not take the start (%s)", campaign_id, type(error).__name__
        )
        raise HTTPException(
            503,
            f"campaign {campaign_id} is saved but not started: the message broker is "
            f"unavailable; POST /api/campaigns/{campaign_id}/send again shortly",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        ) from None


@router.get("/campaigns")
def list_campaigns() -> list[CampaignProgress]:
    """The 50 newest campaigns."""
    with session_scope(get_settings().database_url) as db:
        return [progress for _, progress in campaigns.list_progress(db)]


@router.post("/campaigns", status_code=201)
def create_campaign(body: CampaignIn) -> CampaignProgress:
    """Create a draft campaign (recipients snapshotted now); send it with .../send."""
    with _refusals_as_http(), session_scope(get_settings().database_url) as db:
        campaign_id = campaigns.create_campaign(
            db, body.number, subject=body.subject, tag=body.tag
        ).id
    return _campaign_out(campaign_id)


@dataclass(frozen=True, slots=True)
class CampaignStatusOut(CampaignProgress):
    """A campaign's state and counts with its returned mail: hard bounces and complaints,
    their rates per sent delivery and whether they are above 2 % / 0.1 % (one rule:
    newsletter.inbound.rates)."""

    bounces: int = 0
    complaints: int = 0
    bounce_rate: float | None = None
    complaint_rate: float | None = None
    bounce_warning: bool = False
    complaint_warning: bool = False


@router.get("/campaigns/{campaign_id}")
def campaign_status(campaign_id: CampaignId) -> CampaignStatusOut:
    """State and counts, as kept on the campaign row, and the returned-mail rates."""
    with _refusals_as_http(), session_scope(get_settings().database_url) as db:
        returned = rates_of(campaigns.require_campaign(db, campaign_id))
        progress = campaigns.progress(db, campaign_id)
    return CampaignStatusOut(
        **{f.name: getattr(progress, f.name) for f in fields(progress)},
        bounces=returned.bounces,
        complaints=returned.complaints,
        bounce_rate=returned.bounce_rate,
        complaint_rate=returned.complaint_rate,
        bounce_warning=returned.bounce_warning,
        complaint_warning=returned.complaint_warning,
    )


@router.post("/campaigns/{campaign_id}/{action}")
def change_campaign(
    campaign_id: CampaignId, action: Literal["send", "pause", "resume", "cancel"]
) -> CampaignProgress:
    """Send (or resume), pause, or cancel a campaign."""
    with _refusals_as_http(), session_scope(get_settings().database_url) as db:
        start = campaigns.apply_organizer_action(db, campaign_id, action)
    if start:
        _start(campaign_id)  # after the commit above
    return _campaign_out(campaign_id)


class SubscriberIn(BaseModel):
    """One person, by address: in the body, never in the URL (URLs end up in logs)."""

    email: str = Field(min_length=1, max_length=320)


class ErasedOut(BaseModel):
    """What an erasure did."""

    subscriber_id: int
    answers_given_up: int


@contextmanager
def _person_refusals() -> Iterator[None]:
    """404 for an address not on the list (or erased), 422 for one that is not an address."""
    try:
        yield
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from None
    except SubscriberDataError as exc:
        raise HTTPException(422, str(exc)) from None


@router.post("/subscribers/export")
def export_subscriber(body: SubscriberIn) -> dict[str, Any]:
    """Everything held about one person (GDPR access), as ``subscribers export`` prints it."""
    settings = get_settings()
    with _person_refusals(), session_scope(settings.database_url) as db:
        return gdpr.export_subscriber(db, gdpr.find_by_email(db, body.email), settings=settings)


@router.post("/subscribers/erase")
def erase_subscriber(body: SubscriberIn) -> ErasedOut:
    """Erase one person's personal data at once (GDPR; no confirmation: the caller decided).
    Anonymous counts stay; a later import skips the address."""
    settings = get_settings()
    with _person_refusals(), session_scope(settings.database_url) as db:
        erased = gdpr.erase_subscriber(db, settings, gdpr.find_by_email(db, body.email))
    return ErasedOut(**asdict(erased))
