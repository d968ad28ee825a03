"""Check-in at the door: every confirmed attendee's code, its QR image, and marking people
present by code or by name.

The code is ``{session number}-{subscriber id}-{8 letters}``, e.g. ``61-1234-K7QWM3ZP``: the
ids in the clear and an HMAC-SHA256 over them under the secret key (``Purpose.CHECKIN``'s
salt), cut to 40 bits in base32. Why not the signed token of :mod:`newsletter.tokens`: that
is ~75 characters, which nobody types at a door when a phone cannot scan, and which makes
a dense QR that a cheap camera reads slowly. 40 bits is plenty here: a code is only accepted
by the organizer's logged-in page and CLI, for one session, and a forger gains one
check-in. The session number in the clear lets a code of another evening be refused in
words instead of as "tampered". Key rotation: the newest key makes codes, every key in
``SECRET_KEY`` reads them. Ids only: no address, no name.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import qrcode  # type: ignore[import-untyped]
import qrcode.image.pure  # type: ignore[import-untyped]
from sqlalchemy.orm import Session

from newsletter.db import utcnow
from newsletter.errors import InvalidStateError
from newsletter.rsvp import checkin_repo
from newsletter.rsvp import repo as rsvp_repo
from newsletter.rsvp.checkin_repo import Attendance, DoorRow
from newsletter.rsvp.models import Answer, WalkIn
from newsletter.sessions.models import SalonSession
from newsletter.tokens import Purpose, TokenInvalid
from subscribers import repo as subscribers_repo

_MAC_BYTES = 5  # 40 bits: 8 base32 letters
_CODE = re.compile(r"(\d{1,7})-(\d{1,12})-([A-Z2-7]{8})")
MAX_CODE_LENGTH = 40
# Names at the door: what a person types for a walk-in.
MAX_WALK_IN_NAME = 100


@dataclass(frozen=True, slots=True)
class CheckinCode:
    """What a check-in code says."""

    session_number: int
    subscriber_id: int


def _mac(key: str, number: int, subscriber_id: int) -> str:
    message = f"{Purpose.CHECKIN.salt}\x00{number}\x00{subscriber_id}".encode("ascii")
    digest = hmac.new(key.encode("utf-8"), message, hashlib.sha256).digest()[:_MAC_BYTES]
    return base64.b32encode(digest).decode("ascii")


def _check_keys(keys: Sequence[str]) -> None:
    if isinstance(keys, str) or not keys or not all(keys):
        raise TypeError("keys: the secret keys, newest first")


def make_code(keys: Sequence[str], number: int, subscriber_id: int) -> str:
    """The check-in code of a subscriber for session ``number``, signed with the newest key."""
    _check_keys(keys)
    if number < 1 or subscriber_id < 1:
        raise ValueError("a check-in code needs a session number and a subscriber id")
    return f"{number}-{subscriber_id}-{_mac(keys[0], number, subscriber_id)}"


def sample_code(number: int) -> str:
    """What a preview to nobody in particular shows in place of a code: the shape of a real
    one (``61-0-PREVIEW0``), which no door accepts (subscriber 0 and a MAC that is not
    base32)."""
    return f"{number}-0-PREVIEW0"


def read_code(keys: Sequence[str], code: str) -> CheckinCode:
    """What ``code`` says, checked against every key (older keys still read). Tolerates
    case and spaces as people type them; raises :class:`TokenInvalid` for anything not made
    by one of ``keys``."""
    _check_keys(keys)
    typed = re.sub(r"\s+", "", code[: MAX_CODE_LENGTH * 2]).upper()
    found = _CODE.fullmatch(typed)
    if found is None or len(typed) > MAX_CODE_LENGTH:
        raise TokenInvalid("this is not a check-in code")
    number, subscriber_id, mac = int(found[1]), int(found[2]), found[3]
    for key in keys:
        if hmac.compare_digest(_mac(key, number, subscriber_id), mac):
            return CheckinCode(number, subscriber_id)
    raise TokenInvalid("this check-in code is not ours: mistyped or altered")


def qr_png(data: str) -> bytes:
    """``data`` as a QR code PNG (pure Python, no Pillow): what mails and pages show."""
    image = qrcode.make(data, image_factory=qrcode.image.pure.PyPNGImage, box_size=8, border=2)
    out = io.BytesIO()
    image.save(out)
    return out.getvalue()


# --- marking people present ---------------------------------------------------------------


class CheckinRefused(InvalidStateError):
    """The code or the person cannot be checked in; the message says why, in words, and
    ``reason`` in one word for a page to put in its own language: ``no-answer``,
    ``waitlisted``, ``not-yes`` (with ``answer``), ``other-session`` or ``gone``."""

    def __init__(self, message: str, reason: str, answer: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.answer = answer


class CodeForAnotherSession(CheckinRefused):
    """A good code, for another session (``session_number``)."""

    def __init__(self, message: str, session_number: int) -> None:
        super().__init__(message, "other-session")
        self.session_number = session_number


@dataclass(frozen=True, slots=True)
class CheckedIn:
    """A person marked present: when (the first time), and whether this call did it."""

    subscriber_id: int
    name: str
    guests: int
    at: datetime
    first: bool


def check_in(
    db: Session, salon: SalonSession, subscriber_id: int, *, now: datetime | None = None
) -> CheckedIn:
    """Mark a confirmed attendee present; idempotent (twice is once, with the first time).
    Raises :class:`CheckinRefused` for anyone without a confirmed seat. The caller commits."""
    first = checkin_repo.mark_present(db, salon.id, subscriber_id, now or utcnow())
    row = checkin_repo.door_row(db, salon.id, subscriber_id)
    if row is None or row.checked_in_at is None:
        raise _refusal(db, salon, subscriber_id)
    return CheckedIn(row.subscriber_id, row.name, row.guests, row.checked_in_at, first)


def _refusal(db: Session, salon: SalonSession, subscriber_id: int) -> CheckinRefused:
    """Why this person has no confirmed seat to check in."""
    who = f"subscriber #{subscriber_id}"
    answer = rsvp_repo.get(db, salon.id, subscriber_id)
    if answer is None:
        if subscribers_repo.get_by_id(db, subscriber_id) is None:
            return CheckinRefused(f"{who} does not exist", "gone")
        return CheckinRefused(f"{who} did not answer for session #{salon.number}", "no-answer")
    if answer.waitlisted:
        return CheckinRefused(f"{who} is on the waitlist, not confirmed", "waitlisted")
    if answer.answer != Answer.yes:
        return CheckinRefused(
            f"{who} answered {answer.answer!r}, not confirmed", "not-yes", answer.answer
        )
    return CheckinRefused(f"{who} could not be checked in", "other")


def check_in_code(
    db: Session, salon: SalonSession, code: str, keys: Sequence[str], *, now: datetime | None = None
) -> CheckedIn:
    """Mark present the attendee whose code this is. Raises :class:`TokenInvalid` (not a
    code of ours), :class:`CodeForAnotherSession` or :class:`CheckinRefused`."""
    read = read_code(keys, code)
    if read.session_number != salon.number:
        raise CodeForAnotherSession(
            f"this code is for session #{read.session_number}, not #{salon.number}",
            read.session_number,
        )
    return check_in(db, salon, read.subscriber_id, now=now)


def undo(db: Session, salon: SalonSession, subscriber_id: int) -> bool:
    """Forget a person's check-in; True when there was one. The caller commits."""
    return checkin_repo.clear_present(db, salon.id, subscriber_id)


def add_walk_in(
    db: Session, salon: SalonSession, name: str, *, now: datetime | None = None
) -> WalkIn:
    """Count someone who came without an answer; ``name`` as typed (trimmed, 1-100)."""
    cleaned = " ".join(name.split())
    if not cleaned or len(cleaned) > MAX_WALK_IN_NAME:
        raise InvalidStateError(f"a walk-in needs a name of 1 to {MAX_WALK_IN_NAME} characters")
    return checkin_repo.add_walk_in(db, salon.id, cleaned, now or utcnow())


def attendance(db: Session, session_id: int) -> Attendance:
    """The door's counts: confirmed, present, walk-ins (and from them: not yet, no-shows)."""
    return checkin_repo.attendance(db, session_id)


def door_list(db: Session, session_id: int, query: str | None = None) -> list[DoorRow]:
    """Confirmed people matching ``query`` (name or address, never shown), not yet in first."""
    return checkin_repo.door_list(db, session_id, query.strip() if query else None)


def door_person(db: Session, session_id: int, subscriber_id: int) -> DoorRow | None:
    """One confirmed person's line (the page's message after an action), else None."""
    return checkin_repo.door_row(db, session_id, subscriber_id)


def present(db: Session, session_id: int) -> dict[int, datetime]:
    """Who is in: subscriber id -> check-in time."""
    return checkin_repo.present_ids(db, session_id)
