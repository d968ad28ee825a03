"""Never the wrong person: no mail of any kind reaches a subscriber who is not active when it
goes out, and leaving the list, whichever way, gives up seats and waitlist places in the
sessions ahead (the next active person on the waitlist moves up and is told by mail).

Everything goes through the real paths: the RSVP and unsubscribe pages of a live app, the
`newsletter` CLI, the outbox sender task and a real SMTP server, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import csv
import email
import email.policy
import io
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, text, update
from typer.testing import CliRunner, Result

from newsletter.campaigns import service as campaigns
from newsletter.campaigns.models import Delivery
from newsletter.cli import app as newsletter_app
from newsletter.db import get_sessionmaker, session_scope, utcnow
from newsletter.metrics.repo import pending_notices
from newsletter.rsvp import repo as rsvp_repo
from newsletter.rsvp.models import Answer, RsvpEvent
from newsletter.rsvp.service import record_answer
from subscribers.models import Subscriber, SubscriberStatus
from subscribers.service import suppress, unsubscribe
from tasks.rsvp import send_rsvp_notices
from tests.conftest import Configure, _empty_tables
from tests.servers import free_port
from tests.smtp import SmtpServer
from tests.test_admin import log_in
from tests.test_rsvp_service import answer as record_by_service
from tests.test_rsvp_service import setup_session
from tests.webapp import Live, form_token, serve_live
from tests.worker import wait_for_worker

StartSmtp = Callable[..., SmtpServer]
ADMIN = {"Authorization": "Bearer test-admin-token"}


@contextmanager
def club(
    configure: Configure,
    tmp_path: Path,
    relay: SmtpServer,
    database_url: str,
    *,
    capacity: int | None = 1,
    people: int = 3,
) -> Iterator[Live]:
    """Session no. 95 (``capacity`` seats) and people w0…, served live, mailing via ``relay``.

    The app's own outbox sweep is slowed right down: the tests run the sweep's task
    themselves, at the moment that matters, instead of racing it.
    """
    settings = configure(
        database_url=database_url,
        base_url=f"http://127.0.0.1:{free_port()}",
        mail_url=f"smtp://127.0.0.1:{relay.port}",
        sweep_interval="3600",
    )
    with serve_live(settings, tmp_path, people=people, capacity=capacity) as live:
        yield live


def newsletter(*args: str) -> Result:
    """Run the `newsletter` CLI in this process, on the settings of the test."""
    result = CliRunner().invoke(newsletter_app, list(args))
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def answer_page(live: Live, person: int, choice: str) -> httpx.Response:
    """Answer through the RSVP page and its button, as a person does."""
    rsvp, _ = live.links(person)
    token = form_token(live.client.get(rsvp).text)
    return live.client.post(rsvp, data={"answer": choice, "csrf": token})


def post_answer(live: Live, person: int, choice: str) -> int:
    """The HTTP status of :func:`answer_page`."""
    return answer_page(live, person, choice).status_code


def one_click(live: Live, person: int) -> None:
    """RFC 8058 one-click unsubscribe, as a mail provider sends it."""
    _, unsubscribe = live.links(person)
    response = live.client.post(
        unsubscribe,
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200


def button(live: Live, person: int) -> None:
    """The unsubscribe page's button."""
    _, unsubscribe = live.links(person)
    token = form_token(live.client.get(unsubscribe).text)
    assert live.client.post(unsubscribe, data={"csrf": token}).status_code == 200


def cli_remove(live: Live, person: int) -> None:
    """`newsletter subscribers remove ADDRESS`."""
    result = newsletter("subscribers", "remove", f"w{person}@example.org")
    assert result.exit_code == 0, result.output


def hard_bounce(live: Live, person: int) -> None:
    """What the sender does on a 5.1.x refusal."""
    with session_scope(live.settings.database_url) as db:
        suppress(
            db,
            subscriber_id=live.people[person],
            status=SubscriberStatus.bounced,
            reason="hard bounce: 550 5.1.1 mailbox unknown",
        )


def recipients(relay: SmtpServer) -> list[str]:
    """Who the relay accepted mail about a seat for (a confirmation, a promotion): the
    waitlist's place-in-line mails aside, which :func:`places` lists."""
    return sorted(
        rcpt
        for received in relay.handler.received
        if not _place_in_line(received.data)
        for rcpt in received.rcpt_tos
    )


def places(relay: SmtpServer) -> list[str]:
    """Who was told their place on the waitlist."""
    return sorted(
        rcpt
        for received in relay.handler.received
        if _place_in_line(received.data)
        for rcpt in received.rcpt_tos
    )


def _place_in_line(data: bytes) -> bool:
    message = email.message_from_bytes(data, policy=email.policy.default)
    return str(message["Subject"]).startswith("你在候补名单第")


def mail_to(relay: SmtpServer, address: str) -> list[str]:
    """The plain-text parts of every mail the relay accepted for ``address``."""
    texts = []
    for received in relay.handler.received:
        if address in received.rcpt_tos:
            message = email.message_from_bytes(received.data, policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            body = message.get_body(("plain",))
            assert body is not None
            texts.append(body.get_content())
    return texts


def answers(live: Live) -> dict[int, tuple[str, bool]]:
    """Each person's (answer, waitlisted), by index in ``live.people``."""
    by_id = {
        subscriber_id: (answer, waitlisted) for subscriber_id, answer, waitlisted in live.rsvps()
    }
    return {i: by_id[p] for i, p in enumerate(live.people) if p in by_id}


def notes(live: Live, person: int) -> list[str]:
    """What the history and the outbox say about one person's rows."""
    with session_scope(live.settings.database_url) as db:
        found = db.scalars(
            select(RsvpEvent.notice_error)
            .where(RsvpEvent.subscriber_id == live.people[person])
            .order_by(RsvpEvent.id)
        ).all()
    return [note for note in found if note]


def pending(live: Live) -> int:
    with session_scope(live.settings.database_url) as db:
        return pending_notices(db)


# --- promotion: the reported bug ------------------------------------------------------------


def test_a_waitlisted_person_who_unsubscribed_is_never_promoted_nor_mailed(
    db_url: str, configure: Configure, tmp_path: Path, start_smtp: StartSmtp
) -> None:
    relay = start_smtp()
    with club(configure, tmp_path, relay, db_url, people=3) as live:
        assert post_answer(live, 0, "yes") == 200  # the seat (confirmation mailed)
        wait_for_worker()  # before 0 answers again: else the confirmation is stale, not sent
        assert post_answer(live, 1, "yes") == 200  # waitlist no. 1
        assert post_answer(live, 2, "yes") == 200  # waitlist no. 2
        wait_for_worker()  # each is told their place in line
        one_click(live, 1)
        assert answers(live)[1] == ("no", False)  # the waitlist place was given up
        assert post_answer(live, 0, "no") == 200  # the seat frees: no. 2 moves up, not no. 1
        wait_for_worker()  # the senders the answers asked for
        send_rsvp_notices(None)  # what the sweep runs
        assert answers(live) == {0: ("no", False), 1: ("no", False), 2: ("yes", False)}
        assert recipients(relay) == ["w0@example.org", "w2@example.org"]
        # Their places in line went out before no. 1 left: nothing else reached them after.
        assert places(relay) == ["w1@example.org", "w2@example.org"]
        assert ["候补名单第 1 位" in text for text in mail_to(relay, "w1@example.org")] == [True]
        assert any("候补名单递补" in text for text in mail_to(relay, "w2@example.org"))
        assert notes(live, 1) == [
            "withdrawn: subscriber unsubscribed (unsubscribed by link (campaign 1))"
        ]
        assert pending(live) == 0


def test_promotion_passes_over_anyone_not_active_even_on_old_rows(
    db_url: str, configure: Configure, tmp_path: Path, start_smtp: StartSmtp
) -> None:
    """A waitlist row kept from before answers were withdrawn (or a status changed by hand in
    the database) still holds no claim on a seat: the next active person gets it."""
    relay = start_smtp()
    with club(configure, tmp_path, relay, db_url, people=3) as live:
        for person in range(3):
            assert post_answer(live, person, "yes") == 200
        wait_for_worker()  # 0's confirmation goes out
        with session_scope(live.settings.database_url) as db:
            db.execute(
                update(Subscriber)
                .where(Subscriber.id == live.people[1])
                .values(status=SubscriberStatus.unsubscribed)
            )
        # The one still active behind them is first in line now.
        assert "候补名单第 <strong>1</strong> 位" in answer_page(live, 2, "yes").text
        assert post_answer(live, 0, "no") == 200
        wait_for_worker()
        send_rsvp_notices(None)
        assert answers(live)[1] == ("yes", True) and answers(live)[2] == ("yes", False)
        assert recipients(relay) == ["w0@example.org", "w2@example.org"]


# --- leaving, every way, gives up the seat and promotes the next ---------------------------


@pytest.mark.parametrize("leave", [button, one_click, cli_remove, hard_bounce])
def test_leaving_gives_up_the_seat_and_the_next_person_is_promoted_and_told(
    db_url: str,
    configure: Configure,
    tmp_path: Path,
    start_smtp: StartSmtp,
    leave: Callable[[Live, int], None],
) -> None:
    relay = start_smtp()
    with club(configure, tmp_path, relay, db_url, people=3) as live:
        for person in range(3):  # 0 has the seat; 1 and 2 wait in that order
            assert post_answer(live, person, "yes") == 200
        wait_for_worker()  # 0's confirmation goes out
        leave(live, 0)
        assert answers(live) == {0: ("no", False), 1: ("yes", False), 2: ("yes", True)}
        with session_scope(live.settings.database_url) as db:
            counts = rsvp_repo.counts(db, live.session_id)
        assert (counts.yes, counts.waitlisted, counts.no, counts.seats) == (1, 1, 1, 1)
        (why,) = notes(live, 0)
        assert why.startswith("withdrawn: subscriber ")
        assert ("bounced" if leave is hard_bounce else "unsubscribed") in why
        wait_for_worker()
        send_rsvp_notices(None)  # the sweep tells the person who moved up
        assert recipients(relay) == ["w0@example.org", "w1@example.org"]  # 0: the confirmation
        assert sum("候补名单递补" in m for m in mail_to(relay, "w1@example.org")) == 1
        hard_bounce(live, 0)  # a later bounce (or a second one) changes nothing more
        assert answers(live)[1] == ("yes", False) and answers(live)[2] == ("yes", True)


def test_a_waitlist_place_is_given_up_and_those_behind_move_forward(
    db_url: str, configure: Configure, tmp_path: Path, start_smtp: StartSmtp
) -> None:
    relay = start_smtp()
    with club(configure, tmp_path, relay, db_url, people=3) as live:
        for person in range(3):
            assert post_answer(live, person, "yes") == 200
        cli_remove(live, 1)
        assert "候补名单第 <strong>1</strong> 位" in answer_page(live, 2, "yes").text
        assert answers(live) == {0: ("yes", False), 1: ("no", False), 2: ("yes", True)}


def test_an_answer_being_recorded_while_its_person_leaves_is_withdrawn_too(
    postgres_url: str, tmp_path: Path
) -> None:
    """The answer took the seat (its transaction still open) when the person unsubscribed:
    the departure waits for it, sees it and gives the seat to the next person."""
    _empty_tables(postgres_url)
    sid, people = setup_session(postgres_url, tmp_path, capacity=1, people=2)
    answering = get_sessionmaker(postgres_url)()
    left: list[bool] = []

    def leave() -> None:
        with session_scope(postgres_url) as db:
            left.append(unsubscribe(db, people[0], "unsubscribed by link (campaign 1)"))

    try:
        assert not record_answer(answering, sid, people[0], Answer.yes).waitlisted
        leaving = threading.Thread(target=leave)
        leaving.start()
        while leaving.is_alive() and not _someone_waits_for_a_lock(postgres_url):
            time.sleep(0.01)
        answering.commit()
    finally:
        answering.close()
    leaving.join(30)
    assert left == [True]
    assert record_by_service(postgres_url, sid, people[1], Answer.yes).waitlisted is False
    with session_scope(postgres_url) as db:
        mine = rsvp_repo.get(db, sid, people[0])
        assert mine is not None and mine.answer == Answer.no


def _someone_waits_for_a_lock(url: str) -> bool:
    with session_scope(url) as db:
        waiting = db.scalar(
            text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
        )
    return bool(waiting)


# --- answers from people who left are refused ------------------------------------------------


@pytest.mark.parametrize("capacity", [1, None])
def test_someone_who_left_cannot_answer_with_an_old_link(
    db_url: str,
    configure: Configure,
    tmp_path: Path,
    start_smtp: StartSmtp,
    capacity: int | None,
) -> None:
    """Both the seat path and the one-statement path (sessions without a limit)."""
    relay = start_smtp()
    with club(configure, tmp_path, relay, db_url, capacity=capacity, people=2) as live:
        rsvp, _ = live.links(0)
        token = form_token(live.client.get(rsvp).text)
        one_click(live, 0)
        refused = live.client.post(rsvp, data={"answer": "yes", "csrf": token})
        assert refused.status_code == 400
        assert "unsubscribed" in refused.text and "Traceback" not in refused.text
        assert live.rsvps() == []
        assert recipients(relay) == []
        assert post_answer(live, 1, "yes") == 200  # the others answer as before
        assert answers(live) == {1: ("yes", False)}


# --- confirmation ----------------------------------------------------------------------------


def test_a_confirmation_waiting_in_the_outbox_is_not_sent_after_unsubscribing(
    db_url: str, configure: Configure, tmp_path: Path, start_smtp: StartSmtp
) -> None:
    """Answered yes (the mail waits in the outbox: no sender has run yet, as when the broker
    is down), then unsubscribed: the confirmation never goes out."""
    relay = start_smtp()
    with club(configure, tmp_path, relay, db_url, capacity=None, people=2) as live:
        for person in range(2):
            record_by_service(db_url, live.session_id, live.people[person], Answer.yes)
        assert pending(live) == 2
        button(live, 0)
        send_rsvp_notices(None)
        assert recipients(relay) == ["w1@example.org"]
        assert pending(live) == 0
        assert "not sent: subscriber unsubscribed (unsubscribed by link (campaign 1))" in notes(
            live, 0
        )


def test_the_sender_checks_the_status_when_it_claims_the_notice(
    db_url: str, configure: Configure, tmp_path: Path, start_smtp: StartSmtp
) -> None:
    """Whatever changed the status (here a change made in the database directly, which
    withdrew nothing), the sender reads it when it claims the notice and drops the mail."""
    relay = start_smtp()
    with club(configure, tmp_path, relay, db_url, capacity=None, people=3) as live:
        for person in range(3):
            record_by_service(db_url, live.session_id, live.people[person], Answer.yes)
        with session_scope(db_url) as db:
            for person, status in ((0, SubscriberStatus.unsubscribed), (1, "suppressed")):
                db.execute(
                    update(Subscriber)
                    .where(Subscriber.id == live.people[person])
                    .values(status=status)
                )
        send_rsvp_notices(None)
        assert recipients(relay) == ["w2@example.org"]
        assert notes(live, 0) == ["not sent: subscriber unsubscribed"]
        assert notes(live, 1) == ["not sent: subscriber suppressed"]
        assert pending(live) == 0


# --- later notices: a retry after a refusal ---------------------------------------------------


def test_a_notice_waiting_for_a_retry_is_dropped_when_the_person_leaves(
    db_url: str, configure: Configure, tmp_path: Path, start_smtp: StartSmtp
) -> None:
    relay = start_smtp()
    relay.handler.refuse_first = 3  # the first three mails: "421 Try again later"
    with club(configure, tmp_path, relay, db_url, capacity=1, people=3) as live:
        # After each answer its sender has run, so the relay sees the mails in this order.
        assert post_answer(live, 0, "yes") == 200  # confirmation refused: waits for a retry
        wait_for_worker()
        assert post_answer(live, 1, "yes") == 200  # waitlisted
        assert post_answer(live, 2, "yes") == 200  # waitlisted
        assert post_answer(live, 0, "no") == 200  # 1 moves up; the promotion is refused too
        wait_for_worker()
        assert answers(live)[1] == ("yes", False)
        # 0's confirmation (stale now), 2's place in line and 1's promotion wait (1's place is
        # stale: they moved up before it went); nothing went out.
        assert pending(live) == 3 and recipients(relay) == [] and places(relay) == []
        one_click(live, 1)  # leaves with the promotion still to be retried
        assert answers(live)[2] == ("yes", False)  # and passes the seat on
        with session_scope(db_url) as db:  # every back-off has passed
            db.execute(
                update(RsvpEvent)
                .where(RsvpEvent.notice_due_at.is_not(None))
                .values(notice_due_at=utcnow() - timedelta(seconds=1))
            )
        send_rsvp_notices(None)
        assert recipients(relay) == ["w2@example.org"]
        assert places(relay) == []  # 2's place is stale too: they have the seat now
        assert any(note.startswith("not sent: subscriber unsubscribed") for note in notes(live, 1))
        assert pending(live) == 0


# --- invitations and reminders ---------------------------------------------------------------


def delivery_status(live: Live, campaign_id: int) -> dict[int, str]:
    with session_scope(live.settings.database_url) as db:
        rows = db.execute(
            select(Delivery.subscriber_id, Delivery.status).where(
                Delivery.campaign_id == campaign_id
            )
        ).all()
    index = {p: i for i, p in enumerate(live.people)}
    return {index[subscriber_id]: str(status) for subscriber_id, status in rows}


def test_an_invitation_skips_whoever_unsubscribed_after_the_campaign_was_created(
    db_url: str, configure: Configure, tmp_path: Path, start_smtp: StartSmtp
) -> None:
    relay = start_smtp()
    with club(configure, tmp_path, relay, db_url, people=3) as live:
        created = newsletter("campaign", "create", "95")
        assert created.exit_code == 0, created.output
        campaign_id = int(created.stdout.strip().splitlines()[-1])
        one_click(live, 1)
        sent = newsletter("campaign", "send", str(campaign_id))
        assert sent.exit_code == 0, sent.output
        assert recipients(relay) == ["w0@example.org", "w2@example.org"]
        assert delivery_status(live, campaign_id) == {0: "sent", 1: "skipped", 2: "sent"}


def test_a_reminder_skips_whoever_unsubscribed_after_it_was_created(
    db_url: str, configure: Configure, tmp_path: Path, start_smtp: StartSmtp
) -> None:
    relay = start_smtp()
    with club(configure, tmp_path, relay, db_url, capacity=3, people=3) as live:
        for person in range(3):
            assert post_answer(live, person, "yes") == 200
        wait_for_worker()  # the confirmations go out
        with session_scope(db_url) as db:
            campaign_id = campaigns.create_reminder(db, 95).id
        button(live, 2)
        relay.handler.received.clear()  # the confirmations
        sent = newsletter("campaign", "send", str(campaign_id))
        assert sent.exit_code == 0, sent.output
        assert recipients(relay) == ["w0@example.org", "w1@example.org"]
        assert delivery_status(live, campaign_id) == {0: "sent", 1: "sent", 2: "skipped"}


# --- the attendee CSV ------------------------------------------------------------------------

FORMULA_PEOPLE = [
    ("=1+1@example.org", '=HYPERLINK("https://evil.example","点我")'),
    ("+cmd@example.org", "@SUM(1)"),
]


def test_every_csv_cell_a_person_typed_is_neutralised(
    configure: Configure, tmp_path: Path, start_smtp: StartSmtp
) -> None:
    relay = start_smtp()
    database_url = f"sqlite:///{tmp_path / 'csv.db'}"
    with club(configure, tmp_path, relay, database_url, capacity=5, people=1) as live:
        for address, name in FORMULA_PEOPLE:
            added = newsletter("subscribers", "add", address, "--name", name)
            assert added.exit_code == 0, added.output
            with session_scope(database_url) as db:
                found = db.scalar(select(Subscriber.id).where(Subscriber.email == address))
            assert found is not None
            live.people.append(found)
        for person in range(len(live.people)):
            assert post_answer(live, person, "yes") == 200
        exported = newsletter("rsvp", "list", "95", "--csv")
        assert exported.exit_code == 0, exported.output
        log_in(live)
        exports = {
            "cli": exported.stdout,
            "api": live.client.get("/api/sessions/95/rsvps.csv", headers=ADMIN).text,
            "admin": live.client.get("/admin/sessions/95/rsvps.csv").text,
        }
    for where, body in exports.items():
        rows = list(csv.DictReader(io.StringIO(body)))
        cells = {(row["email"], row["name"]) for row in rows}
        assert cells == {
            ("w0@example.org", "访客0"),
            *(("'" + address, "'" + name) for address, name in FORMULA_PEOPLE),
        }, where
        for row in rows:  # no cell of any column starts a formula
            # (an empty cell, such as checked_in_at before the door, starts nothing)
            assert not any(value.startswith(tuple("=+-@")) for value in row.values()), (where, row)


def test_the_csv_neutraliser_covers_every_formula_start() -> None:
    from newsletter.spreadsheet import spreadsheet_safe

    for risky in ["=1", "+1", "-1", "@x", "\tx", "\rx", " =1", "\u3000＝1", "＋1", "－1", "＠x"]:
        assert spreadsheet_safe(risky) == "'" + risky
    for plain in ["", "访客", "a=b", "w0@example.org", "2026-12-01T10:00:00+00:00", 3]:
        assert spreadsheet_safe(plain) == str(plain)
