"""What organizers, the web app and the bounce handler do to subscribers.

Rules kept here, whoever calls:

* An address is stored once, normalised (:func:`~subscribers.validation.normalise_email`).
* Only ``active`` subscribers are mailed (and not while paused: ``campaigns.recipients``).
  Nothing but an explicit ``resubscribe=True`` from an organizer turns an unsubscribed,
  bounced or suppressed address back to active: not an import, not a second ``add``, not a
  web click; the exceptions are the person's own: confirming a new sign-up, and
  "resubscribe" on their signed preference page, which only an *unsubscribed* person has
  (:mod:`subscribers.preferences`).
* Erasure (GDPR) is :mod:`subscribers.gdpr`: it leaves the way everyone leaves (seats given
  up) and then removes the personal data.
* "Removing" keeps the row, marked unsubscribed, so past deliveries and RSVPs stay consistent;
  :func:`purge_subscriber` deletes only people without any history.
* Whoever leaves the list (unsubscribe, removal, bounce, suppression) gives up their seats and
  waitlist places in every session still ahead, and their mails not sent yet; freed seats go
  to the waitlist. The answer rules live in :mod:`newsletter.rsvp.service`, so this is the one
  place where the subscribers package calls up into ``newsletter``: every way of leaving
  passes through here, and a second copy of the seat rules would drift.

Functions take a Session and never commit; the caller's ``session_scope`` does. The CSV import
lives in :mod:`subscribers.csv_import` and is re-exported here; suppression lists and the CSV
export of the list are :mod:`subscribers.lists`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from newsletter.db import utcnow
from newsletter.errors import InvalidStateError, NotFoundError
from newsletter.rsvp.service import withdraw_answers
from subscribers import repo
from subscribers.csv_import import ImportReport, RowError, import_csv
from subscribers.models import Subscriber, SubscriberStatus
from subscribers.validation import (
    DEFAULT_LOCALE,
    normalise_email,
    normalise_locale,
    normalise_name,
    normalise_tag,
    parse_tags,
)

__all__ = [
    "Added",
    "ImportReport",
    "Removed",
    "RowError",
    "SubscriberExists",
    "SubscriberHasHistory",
    "SubscriberInactive",
    "SubscriberPage",
    "add_subscriber",
    "count_active",
    "import_csv",
    "list_subscribers",
    "purge_subscriber",
    "remove_subscriber",
    "status_counts",
    "suppress",
    "unsubscribe",
]

REMOVED_BY_ORGANIZER = "removed by organizer"
RESUBSCRIBED_BY_ORGANIZER = "resubscribed by organizer"


class SubscriberExists(InvalidStateError):
    """``add`` of an address that is already an active subscriber."""


class SubscriberInactive(InvalidStateError):
    """``add`` of an address that unsubscribed, bounced or was suppressed."""

    def __init__(self, message: str, *, email: str, status: str) -> None:
        super().__init__(message)
        self.email = email
        self.status = status


class SubscriberHasHistory(InvalidStateError):
    """A purge refused because deliveries or RSVPs point at the subscriber."""


@dataclass(frozen=True)
class Added:
    """The outcome of :func:`add_subscriber`."""

    subscriber: Subscriber
    resubscribed: bool  # True: the address existed, inactive, and is active again


@dataclass(frozen=True)
class Removed:
    """The outcome of :func:`remove_subscriber`."""

    email: str
    previous_status: str
    changed: bool  # False: the address was not active already; its status was kept


@dataclass(frozen=True)
class SubscriberPage:
    """One page of :func:`list_subscribers` and how many match in all."""

    items: list[Subscriber]
    total: int


def parse_status(value: SubscriberStatus | str | None) -> SubscriberStatus | None:
    """A status filter as typed (any case), None for no filter; an unknown one is an error
    naming the choices."""
    if value is None or isinstance(value, SubscriberStatus):
        return value
    try:
        return SubscriberStatus(value.strip().lower())
    except ValueError:
        choices = ", ".join(s.value for s in SubscriberStatus)
        raise InvalidStateError(f"unknown status {value!r} (one of: {choices})") from None


def _describe_inactive(subscriber: Subscriber) -> str:
    since = (
        f" since {subscriber.status_changed_at:%Y-%m-%d}" if subscriber.status_changed_at else ""
    )
    why = f" ({subscriber.status_reason})" if subscriber.status_reason else ""
    return f"{subscriber.email} is {subscriber.status}{since}{why}"


def _require(db: Session, email: str) -> Subscriber:
    address = normalise_email(email)
    subscriber = repo.get_by_email(db, address)
    if subscriber is None:
        raise NotFoundError(f"{address} is not on the subscriber list")
    return subscriber


def add_subscriber(
    db: Session,
    email: str,
    *,
    name: str | None = None,
    locale: str | None = None,
    tags: Iterable[str] = (),
    resubscribe: bool = False,
) -> Added:
    """Add one subscriber (active), with optional tags.

    An address already active raises :class:`SubscriberExists`. An address that unsubscribed,
    bounced or was suppressed raises :class:`SubscriberInactive` unless ``resubscribe`` is
    true: the organizer has then been told and asked for it explicitly (e.g. the person wrote
    to say they want the invitations again). Re-subscribing updates the name and locale when
    given and adds the tags.
    """
    address = normalise_email(email)
    clean_name = normalise_name(name)
    tag_names = parse_tags(list(tags))
    now = utcnow()
    existing = repo.get_by_email(db, address)
    if existing is None:
        new_id = repo.insert_subscriber(
            db,
            email=address,
            name=clean_name,
            locale=normalise_locale(locale),
            status=SubscriberStatus.active,
            reason=None,
            now=now,
        )
        if new_id is None:  # inserted by someone else between our lookup and our insert
            raise SubscriberExists(f"{address} is already subscribed")
        _attach_tags(db, new_id, tag_names)
        subscriber = repo.get_by_id(db, new_id)
        assert subscriber is not None  # we have just inserted it in this transaction
        return Added(subscriber, resubscribed=False)

    if existing.status == SubscriberStatus.active:
        raise SubscriberExists(f"{address} is already subscribed")
    if not resubscribe:
        raise SubscriberInactive(
            f"{_describe_inactive(existing)}; it was not subscribed again",
            email=address,
            status=existing.status,
        )
    repo.set_status(
        db,
        existing.id,
        SubscriberStatus.active,
        RESUBSCRIBED_BY_ORGANIZER,
        now,
        only_from=[s for s in SubscriberStatus if s is not SubscriberStatus.active],
    )
    repo.update_profiles(
        db,
        [
            (
                existing.id,
                clean_name or existing.name,
                normalise_locale(locale, default=existing.locale),
            )
        ],
    )
    _attach_tags(db, existing.id, tag_names)
    db.refresh(existing)
    return Added(existing, resubscribed=True)


def _attach_tags(db: Session, subscriber_id: int, tag_names: list[str]) -> None:
    ids = repo.ensure_tags(db, tag_names)
    repo.link_tags(db, [(subscriber_id, ids[name]) for name in tag_names])


def remove_subscriber(db: Session, email: str) -> Removed:
    """Stop mailing an address: mark it unsubscribed ("removed by organizer"), keep the row.

    Keeping the row keeps past deliveries and RSVPs consistent, and means a later import of
    an old spreadsheet will not bring the person back. An address that already unsubscribed,
    bounced or was suppressed keeps its status and reason. Unknown address: NotFoundError.
    """
    subscriber = _require(db, email)
    previous = subscriber.status
    changed = repo.set_status(
        db,
        subscriber.id,
        SubscriberStatus.unsubscribed,
        REMOVED_BY_ORGANIZER,
        utcnow(),
        only_from=[SubscriberStatus.active],
    )
    _give_up_answers(db, subscriber.id)
    return Removed(subscriber.email, previous, changed)


def _give_up_answers(db: Session, subscriber_id: int) -> None:
    """The subscriber is not active (any more): withdraw their answers for sessions ahead,
    noting the status and its reason. Also run when the status did not change, which is
    cheap and repairs answers kept from before this rule."""
    person = repo.get_by_id(db, subscriber_id)
    assert person is not None and person.status != SubscriberStatus.active
    why = f"{person.status} ({person.status_reason})" if person.status_reason else person.status
    withdraw_answers(db, subscriber_id, why)


def purge_subscriber(db: Session, email: str) -> None:
    """Delete an address and its tags for good, if nothing refers to it.

    The database refuses the delete when deliveries or RSVPs point at the subscriber; this then
    raises :class:`SubscriberHasHistory` and the session must be rolled back (``session_scope``
    does so), so call it in its own unit of work, after :func:`remove_subscriber`.
    """
    subscriber = _require(db, email)
    try:
        repo.delete_subscriber(db, subscriber.id)
    except IntegrityError:
        raise SubscriberHasHistory(
            f"{subscriber.email} has deliveries or RSVPs, so it cannot be deleted"
        ) from None


def unsubscribe(db: Session, subscriber_id: int, reason: str) -> bool:
    """Unsubscribe (the web link, RFC 8058 one-click, an organizer); idempotent.

    Only an active subscriber changes; a bounced or suppressed one keeps that stronger status.
    Their answers for sessions ahead are given up (see the module's rules). Returns whether
    the status changed. Unknown id: NotFoundError (the web app answers 404).
    """
    if repo.get_by_id(db, subscriber_id) is None:
        raise NotFoundError(f"subscriber #{subscriber_id} does not exist")
    changed = repo.set_status(
        db,
        subscriber_id,
        SubscriberStatus.unsubscribed,
        reason,
        utcnow(),
        only_from=[SubscriberStatus.active],
    )
    _give_up_answers(db, subscriber_id)
    return changed


def suppress(
    db: Session,
    *,
    email: str | None = None,
    subscriber_id: int | None = None,
    status: SubscriberStatus = SubscriberStatus.suppressed,
    reason: str,
) -> bool:
    """Never mail this address again: set ``status`` (bounced, suppressed, unsubscribed).

    Used by the bounce handler (``status=bounced`` after a 5.1.x) and by organizers. Give the
    subscriber's id or address. Their answers for sessions ahead are given up. An address that
    is not on the list yet is stored with that status, so that a later import cannot add it
    as active. Returns whether anything changed.
    """
    if status is SubscriberStatus.active:
        raise ValueError("suppress() makes an address inactive; use add_subscriber to activate")
    if (email is None) == (subscriber_id is None):
        raise ValueError("give exactly one of email or subscriber_id")
    now = utcnow()
    if subscriber_id is None:
        assert email is not None
        address = normalise_email(email)
        existing = repo.get_by_email(db, address)
    else:
        address, existing = "", repo.get_by_id(db, subscriber_id)
        if existing is None:
            raise NotFoundError(f"subscriber #{subscriber_id} does not exist")
    if existing is not None and existing.status == SubscriberStatus.erased:
        # A late bounce of an old delivery: the row holds no one any more, and "erased"
        # must stay what it says (subscribers.gdpr).
        return False
    if existing is not None:
        changed = repo.set_status(db, existing.id, status, reason, now)
        _give_up_answers(db, existing.id)
        return changed
    new_id = repo.insert_subscriber(
        db,
        email=address,
        name="",
        locale=DEFAULT_LOCALE,
        status=status,
        reason=reason,
        now=now,
    )
    if new_id is None:  # added concurrently: suppress that row instead
        return suppress(db, email=address, status=status, reason=reason)
    return True


def list_subscribers(
    db: Session,
    *,
    status: SubscriberStatus | str | None = None,
    tag: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> SubscriberPage:
    """Subscribers in the order they were added, filtered by status and/or tag, paged."""
    if limit < 1 or offset < 0:
        raise ValueError("limit must be positive and offset not negative")
    wanted = parse_status(status)
    tag_name = normalise_tag(tag) if tag is not None else None
    items = repo.list_subscribers(db, status=wanted, tag=tag_name, limit=limit, offset=offset)
    total = repo.count_subscribers(db, status=wanted, tag=tag_name)
    return SubscriberPage(items, total)


def count_active(db: Session, tag: str | None = None) -> int:
    """How many subscribers a campaign (for ``tag``, or everyone) would go to right now."""
    tag_name = normalise_tag(tag) if tag is not None else None
    return repo.count_subscribers(db, status=SubscriberStatus.active, tag=tag_name)


def status_counts(db: Session) -> dict[str, int]:
    """Subscribers per status, every status present (zero when none)."""
    counts = repo.count_by_status(db)
    return {s.value: counts.get(s.value, 0) for s in SubscriberStatus}
