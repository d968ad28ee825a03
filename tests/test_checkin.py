"""Check-in at the door: signed codes (made, read, refused), marking present by code and by
person, walk-ins and the counts, the CLI's `rsvp checkin` and `rsvp list`, the attendee CSV,
the QR code in the confirmation mail, the reminder and the RSVP page, and the organizer's
routes over HTTP (login, CSRF, junk)."""

from __future__ import annotations

import csv
import email
import email.policy
import io
import re
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from newsletter.campaigns import service as campaigns
from newsletter.campaigns.compiled import build_message, compile_campaign
from newsletter.cli import app as cli_app
from newsletter.config import Settings
from newsletter.db import session_scope
from newsletter.rsvp import checkin
from newsletter.rsvp.checkin import CheckinRefused, CodeForAnotherSession, make_code, read_code
from newsletter.rsvp.models import Answer, NoticeKind, Rsvp
from newsletter.rsvp.notices import build_rsvp_notice
from newsletter.rsvp.service import record_answer
from newsletter.sessions import repo as sessions_repo
from newsletter.sessions.service import import_records
from newsletter.tokens import TokenInvalid
from tests.conftest import Configure
from tests.servers import free_port
from tests.test_admin import TOKEN
from tests.webapp import Live, form_token, seed, serve_live

KEYS = ["new-key", "old-key"]
PNG = b"\x89PNG\r\n\x1a\n"


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


# --- the codes ------------------------------------------------------------------------------


def test_a_code_names_session_and_person_and_reads_back_as_typed() -> None:
    code = make_code(KEYS, 61, 1234)
    number, person, mac = code.split("-")
    assert (number, person, len(mac)) == ("61", "1234", 8)
    assert read_code(KEYS, code) == checkin.CheckinCode(61, 1234)
    # Typed at the door: lower case and spaces are the same code.
    assert read_code(KEYS, " " + code.lower().replace("-", " - ") + " ").subscriber_id == 1234
    # Made before a key rotation (the old key now second): still read.
    assert read_code(KEYS, make_code(["old-key"], 61, 1234)).session_number == 61


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "junk",
        "61-1234",
        "61-1235-{mac}",  # another person with this person's signature
        "62-1234-{mac}",  # another session with this session's signature
        "61-1234-{flipped}",  # one letter changed
        "61-1234-{mac}X",
        "61-1234-" + "A" * 8,
        "-1-1234-{mac}",
        "61-1234-{mac}" + "A" * 200,
        "\x00" * 100,
    ],
)
def test_tampered_or_foreign_codes_are_refused(bad: str) -> None:
    mac = make_code(KEYS, 61, 1234).rsplit("-", 1)[1]
    flipped = ("B" if mac[0] == "A" else "A") + mac[1:]
    with pytest.raises(TokenInvalid):
        read_code(KEYS, bad.format(mac=mac, flipped=flipped))
    with pytest.raises(TokenInvalid):  # a code of another installation
        read_code(KEYS, make_code(["someone-elses-key"], 61, 1234))


# --- marking present ------------------------------------------------------------------------


@pytest.fixture
def door(settings: Settings, tmp_path: Path) -> Iterator[tuple[Settings, int, list[int]]]:
    """Session no. 95 without a seat limit and four people: yes, yes, maybe, silent; and
    session no. 97, where person 0 also said yes."""
    session_id, people = seed(settings, tmp_path, people=4, capacity=None)
    other = tmp_path / "097.yaml"
    other.write_text(
        (tmp_path / "095.yaml").read_text(encoding="utf-8").replace("number: 95", "number: 97"),
        encoding="utf-8",
    )
    with session_scope(settings.database_url) as db:
        import_records(db, [other], timezone="Asia/Shanghai")
        salon = sessions_repo.get_by_number(db, 97)
        assert salon is not None
        record_answer(db, session_id, people[0], Answer.yes)
        record_answer(db, session_id, people[1], Answer.yes)
        record_answer(db, session_id, people[2], Answer.maybe)
        record_answer(db, salon.id, people[0], Answer.yes)
    yield settings, session_id, people


def test_check_in_by_code_once_and_refusals_in_words(door: tuple[Settings, int, list[int]]) -> None:
    settings, session_id, people = door
    keys = settings.secret_keys
    with session_scope(settings.database_url) as db:
        salon = sessions_repo.get_by_id(db, session_id)
        assert salon is not None
        first = checkin.check_in_code(db, salon, make_code(keys, 95, people[0]), keys)
        assert first.first and first.name == "访客0"
        again = checkin.check_in_code(db, salon, make_code(keys, 95, people[0]), keys)
        assert not again.first and again.at == first.at  # twice is once, with the first time
        with pytest.raises(CodeForAnotherSession) as other:
            checkin.check_in_code(db, salon, make_code(keys, 97, people[0]), keys)
        assert other.value.session_number == 97
        with pytest.raises(CheckinRefused) as maybe:
            checkin.check_in_code(db, salon, make_code(keys, 95, people[2]), keys)
        assert (maybe.value.reason, maybe.value.answer) == ("not-yes", "maybe")
        with pytest.raises(CheckinRefused) as silent:
            checkin.check_in_code(db, salon, make_code(keys, 95, people[3]), keys)
        assert silent.value.reason == "no-answer"
        with pytest.raises(CheckinRefused) as gone:
            checkin.check_in_code(db, salon, make_code(keys, 95, 999_999), keys)
        assert gone.value.reason == "gone"
        with pytest.raises(TokenInvalid):
            checkin.check_in_code(db, salon, make_code(["other"], 95, people[1]), keys)
        checkin.add_walk_in(db, salon, "  路过的 朋友 ")
        with pytest.raises(Exception, match="1 to 100"):
            checkin.add_walk_in(db, salon, "   ")
        counts = checkin.attendance(db, salon.id)
        assert (counts.confirmed, counts.present, counts.walk_ins, counts.not_yet) == (2, 1, 1, 1)
        assert counts.no_show_rate == 0.5
        assert [row.name for row in checkin.door_list(db, salon.id, "访客")] == ["访客1", "访客0"]
        assert [row.name for row in checkin.door_list(db, salon.id, "w1@")] == ["访客1"]
        assert checkin.door_list(db, salon.id, "%") == []  # wildcards are literal
        assert checkin.undo(db, salon, people[0]) and not checkin.undo(db, salon, people[0])
        assert checkin.attendance(db, salon.id).present == 0


def test_a_person_who_stopped_being_confirmed_cannot_be_checked_in(
    door: tuple[Settings, int, list[int]],
) -> None:
    settings, session_id, people = door
    with session_scope(settings.database_url) as db:
        record_answer(db, session_id, people[1], Answer.no)
    with session_scope(settings.database_url) as db:
        salon = sessions_repo.get_by_id(db, session_id)
        assert salon is not None
        code = make_code(settings.secret_keys, 95, people[1])
        with pytest.raises(CheckinRefused) as refused:
            checkin.check_in_code(db, salon, code, settings.secret_keys)
        assert (refused.value.reason, refused.value.answer) == ("not-yes", "no")


# --- the CLI --------------------------------------------------------------------------------


def test_cli_checkin_exit_codes_and_messages(door: tuple[Settings, int, list[int]]) -> None:
    settings, _, people = door
    runner = CliRunner()
    keys = settings.secret_keys
    done = runner.invoke(cli_app, ["rsvp", "checkin", "95", make_code(keys, 95, people[0])])
    assert done.exit_code == 0, done.output
    assert "checked in: 访客0" in done.output and "签到 1/2" in done.output
    again = runner.invoke(cli_app, ["rsvp", "checkin", "95", make_code(keys, 95, people[0])])
    assert again.exit_code == 0 and "already checked in: 访客0" in again.output
    refusals = {
        make_code(keys, 97, people[0]): "this code is for session #97, not #95",
        make_code(keys, 95, people[2]): "answered 'maybe', not confirmed",
        make_code(keys, 95, people[3]): "did not answer for session #95",
        make_code(["other"], 95, people[1]): "not ours",
        "junk": "not a check-in code",
    }
    for code, message in refusals.items():
        refused = runner.invoke(cli_app, ["rsvp", "checkin", "95", code])
        assert refused.exit_code == 1, (code, refused.output)
        assert message in refused.output and "Traceback" not in refused.output
    unknown = runner.invoke(cli_app, ["rsvp", "checkin", "999", make_code(keys, 999, people[0])])
    assert unknown.exit_code == 1 and "Traceback" not in unknown.output
    helped = runner.invoke(cli_app, ["rsvp", "checkin", "--help"])
    assert helped.exit_code == 0 and "check-in code" in helped.output


def test_rsvp_list_and_the_csv_show_attendance_and_the_no_show_rate(
    door: tuple[Settings, int, list[int]],
) -> None:
    settings, session_id, people = door
    with session_scope(settings.database_url) as db:
        salon = sessions_repo.get_by_id(db, session_id)
        assert salon is not None
        checkin.check_in(db, salon, people[1])
        checkin.add_walk_in(db, salon, "路人甲")
    runner = CliRunner()
    listed = runner.invoke(cli_app, ["rsvp", "list", "95"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    assert "签到 1/2，现场报名 1，出席 2，未到 1（未到率 50%）" in listed.output
    as_csv = runner.invoke(cli_app, ["rsvp", "list", "95", "--csv"])
    header = as_csv.output.splitlines()[0]
    assert header.endswith(",checked_in_at")
    rows = {row["name"]: row for row in csv.DictReader(io.StringIO(as_csv.output))}
    assert rows["访客0"]["checked_in_at"] == "" and rows["访客1"]["checked_in_at"] != ""
    with session_scope(settings.database_url) as db:
        stored = db.scalar(select(Rsvp.checked_in_at).where(Rsvp.subscriber_id == people[1]))
    assert stored is not None and rows["访客1"]["checked_in_at"].startswith(stored.isoformat()[:16])


# --- the QR code in mails and on the RSVP page ------------------------------------------------


def qr_part(message: EmailMessage, code: str) -> None:
    """``message`` is multipart/related; its image is a PNG whose Content-ID the HTML shows,
    and the code is in both the text and the HTML."""
    assert message.get_content_type() == "multipart/related"
    images = [part for part in message.walk() if part.get_content_type() == "image/png"]
    assert len(images) == 1
    (image,) = images
    cid = str(image["Content-ID"]).strip("<>")
    assert cid.startswith(code) and image.get_content().startswith(PNG)
    assert image.get_content_disposition() == "inline"
    html, text = message.get_body(("html",)), message.get_body(("plain",))
    assert html is not None and text is not None
    assert f'src="cid:{cid}"' in html.get_content() and code in html.get_content()
    assert f"签到码：{code}" in text.get_content()


def test_the_confirmation_carries_the_code_and_its_qr(
    door: tuple[Settings, int, list[int]],
) -> None:
    settings, session_id, people = door
    with session_scope(settings.database_url) as db:
        mails = [
            build_rsvp_notice(db, settings, session_id, person, NoticeKind.confirmed)
            for person in people[:2]
        ]
        promoted = build_rsvp_notice(db, settings, session_id, people[0], NoticeKind.promoted)
    for person, mail in zip(people, mails, strict=False):
        assert mail is not None
        message = parse(mail.data)
        qr_part(message, make_code(settings.secret_keys, 95, person))
        # The event still travels with it, and the calendar part stays where clients look.
        assert any(p.get_content_type() == "text/calendar" for p in message.walk())
    assert promoted is not None and b"image/png" not in promoted.data


def test_the_reminder_carries_each_code_and_the_invitation_none(
    door: tuple[Settings, int, list[int]],
) -> None:
    settings, _, people = door
    keys = settings.secret_keys
    with session_scope(settings.database_url) as db:
        reminder = campaigns.create_reminder(db, 95).id
        invitation = campaigns.create_campaign(db, 95).id
    with session_scope(settings.database_url) as db:
        compiled = compile_campaign(db, reminder, settings)
        plain = compile_campaign(db, invitation, settings)
    for delivery, person in enumerate(people[:2], 1):
        built = build_message(compiled, delivery, person, "访客", "w@example.org", settings, keys)
        qr_part(parse(built.data), make_code(keys, 95, person))
        assert b"CheckinCodeSlot" not in built.data
    sent = parse(build_message(plain, 9, people[0], "访客", "w@example.org", settings, keys).data)
    assert sent.get_content_type() == "multipart/alternative"
    html = sent.get_body(("html",))
    assert html is not None and "签到码" not in html.get_content()


@pytest.fixture
def live_door(configure: Configure, tmp_path: Path) -> Iterator[Live]:
    """The app with session no. 95 (no seat limit) and four people."""
    settings = configure(base_url=f"http://127.0.0.1:{free_port()}")
    with serve_live(settings, tmp_path, people=4, capacity=None) as built:
        yield built


def answer(live: Live, person: int, choice: str) -> str:
    """Answer through the RSVP page as a person does; the page's path."""
    rsvp, _ = live.links(person)
    path = rsvp.split("?")[0]
    token = form_token(live.client.get(rsvp).text)
    assert live.client.post(path, data={"answer": choice, "csrf": token}).status_code == 200
    return path


def test_the_rsvp_page_shows_the_qr_to_a_confirmed_yes_only(live_door: Live) -> None:
    yes, maybe = answer(live_door, 0, "yes"), answer(live_door, 1, "maybe")
    rsvp, _ = live_door.links(0)
    token = form_token(live_door.client.get(rsvp).text)
    done = live_door.client.post(yes, data={"answer": "yes", "csrf": token}).text
    assert "入场签到码" in done and f'href="{yes}"' in done  # where to find it
    page = live_door.client.get(yes).text
    code = make_code(live_door.settings.secret_keys, 95, live_door.people[0])
    assert code in page and 'src="data:image/png;base64,' in page
    assert "签到码" not in live_door.client.get(maybe).text
    answer(live_door, 0, "no")
    assert code not in live_door.client.get(yes).text


# --- the organizer's routes over HTTP ------------------------------------------------------------


def log_in(live: Live) -> str:
    assert live.client.post("/admin/login", data={"token": TOKEN}).status_code == 303
    page = live.client.get("/admin/sessions/95/checkin")
    assert page.status_code == 200
    return form_token(page.text)


def test_the_door_routes_need_the_login_and_the_form_token(live_door: Live) -> None:
    answer(live_door, 0, "yes")
    code = make_code(live_door.settings.secret_keys, 95, live_door.people[0])
    base = "/admin/sessions/95/checkin"
    for path in (base, base + "/counts"):
        assert live_door.client.get(path).headers.get("location") == "/admin/login"
    refused = live_door.client.post(base + "/code", data={"code": code})
    assert refused.status_code in (303, 403)
    csrf = log_in(live_door)
    forged = live_door.client.post(base + "/code", data={"code": code, "csrf": "x"})
    assert forged.status_code == 403
    assert live_door.client.get(base + "/counts").json()["present"] == 0
    done = live_door.client.post(base + "/code", data={"code": code, "csrf": csrf})
    assert done.status_code == 303
    counts = live_door.client.get(base + "/counts")
    assert counts.headers["cache-control"] == "no-store"
    assert counts.json()["present"] == 1 and str(live_door.people[0]) in counts.json()["in"]
    page = live_door.client.get(done.headers["location"]).text
    assert "已签到：访客0" in page and "w0@example.org" not in page
    bad = live_door.client.post(base + "/code", data={"code": "nonsense", "csrf": csrf})
    assert bad.status_code == 400 and "签到码无效" in bad.text
    empty = live_door.client.post(base + "/walk-in", data={"name": " ", "csrf": csrf})
    assert empty.status_code == 400
    assert live_door.client.get("/admin/sessions/999/checkin").status_code == 404


def test_a_code_of_the_session_is_refused_after_the_answer_changes(live_door: Live) -> None:
    answer(live_door, 0, "yes")
    answer(live_door, 0, "maybe")
    csrf = log_in(live_door)
    code = make_code(live_door.settings.secret_keys, 95, live_door.people[0])
    refused = live_door.client.post(
        "/admin/sessions/95/checkin/code", data={"code": code, "csrf": csrf}
    )
    assert refused.status_code == 409 and "可能" in refused.text


def test_the_dashboard_session_page_shows_attendance(live_door: Live) -> None:
    for person in range(3):
        answer(live_door, person, "yes")
    csrf = log_in(live_door)
    keys = live_door.settings.secret_keys
    base = "/admin/sessions/95/checkin"
    code = make_code(keys, 95, live_door.people[0])
    assert live_door.client.post(base + "/code", data={"code": code, "csrf": csrf}).is_redirect
    marked = live_door.client.post(
        base + "/present",
        data={"subscriber": str(live_door.people[1]), "csrf": csrf},
        headers={"Accept": "application/json"},  # as the page's script asks
    )
    assert marked.status_code == 200
    assert marked.json()["message"].startswith("已签到：访客1") and marked.json()["present"] == 2
    walk_in = live_door.client.post(
        base + "/walk-in",
        data={"name": "路人甲", "csrf": csrf},
        headers={"Accept": "application/json"},
    )
    assert walk_in.json()["walk_ins"] == 1
    refused = live_door.client.post(
        base + "/code", data={"code": "junk", "csrf": csrf}, headers={"Accept": "application/json"}
    )
    assert refused.status_code == 400 and "签到码无效" in refused.json()["problem"]
    page = live_door.client.get("/admin/sessions/95").text
    text = " ".join(re.sub(r"<[^>]+>", " ", page).split())
    assert "签到 2 / 3 · 现场报名 1 · 出席 3 · 未到率 33%" in text
    assert f'href="{base}"' in page
