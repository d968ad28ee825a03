"""No input makes any route answer 500: random paths, tokens, forms and bodies over HTTP."""

from __future__ import annotations

import json
import random
import string
import time
from pathlib import Path
from urllib.parse import quote

from tests.conftest import Configure
from tests.servers import free_port
from tests.webapp import Live, form_token, live, serve_live

__all__ = ["live"]  # the fixture

JUNK = [
    "",
    "0",
    "-1",
    "99999999999999999999",
    "yes",
    "maybe",
    "no",
    "YES",
    "null",
    "[]",
    "{}",
    "<script>alert(1)</script>",
    "' OR 1=1 --",
    "../../etc/passwd",
    "%00",
    "\u0000",
    "𠜎" * 50,
    "a" * 5000,
    "List-Unsubscribe=One-Click",
    "=?utf-8?b?5L2g5aW9?=",
]


def mutate(rng: random.Random, token: str) -> str:
    choice = rng.randrange(6)
    if choice == 0:
        return token[: rng.randrange(len(token))]
    if choice == 1:
        i = rng.randrange(len(token))
        return token[:i] + rng.choice(string.printable) + token[i + 1 :]
    if choice == 2:
        return token + rng.choice(JUNK)
    if choice == 3:
        return "".join(rng.choice(string.ascii_letters + "-_.") for _ in range(rng.randrange(90)))
    if choice == 4:
        return rng.choice(JUNK)
    return token


def test_no_route_answers_500(live: Live) -> None:
    rng = random.Random(20261123)
    rsvp, unsubscribe = live.links(0)
    rsvp_token = rsvp.removeprefix("/rsvp/").split("?")[0]
    unsub_token = unsubscribe.removeprefix("/unsubscribe/")
    real_csrf = form_token(live.client.get(rsvp).text)
    headers = {"Authorization": "Bearer test-admin-token"}
    statuses: dict[int, int] = {}
    for _ in range(600):
        kind = rng.randrange(8)
        # Percent-encoded, as a browser would send it: the client refuses raw control chars.
        token = quote(mutate(rng, rsvp_token if kind < 4 else unsub_token), safe="")
        field = {
            "answer": rng.choice([*JUNK, "yes", "no"]),
            "csrf": rng.choice([real_csrf, mutate(rng, real_csrf)]),
            "guests": rng.choice(["0", "1", "-5", "abc", "1e9", ""]),
        }
        if kind == 0:
            response = live.client.get(f"/rsvp/{token}", params={"answer": rng.choice(JUNK)})
        elif kind in (1, 2):
            response = live.client.post(f"/rsvp/{token}", data=field)
        elif kind == 3:
            response = live.client.post(
                f"/rsvp/{rsvp_token}",
                content=rng.choice(JUNK).encode(),
                headers={
                    "Content-Type": rng.choice(
                        [
                            "application/json",
                            "text/plain",
                            "application/x-www-form-urlencoded",
                            "multipart/form-data; boundary=x",
                        ]
                    )
                },
            )
        elif kind == 4:
            response = live.client.get(f"/unsubscribe/{token}")
        elif kind == 5:
            response = live.client.post(
                f"/unsubscribe/{token}",
                content=rng.choice(JUNK).encode(),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
        elif kind == 6:
            path = rng.choice(["/sessions/", "/api/campaigns/", "/api/sessions/", "/"])
            response = live.client.request(
                rng.choice(["GET", "POST", "PUT", "DELETE"]),
                path + quote(mutate(rng, "95.ics"), safe=""),
                headers=headers if rng.random() < 0.5 else {},
            )
            # The public pages: a number or .ics, any search text, any cache validator.
            public = rng.choice(["/sessions/", "/archive?q=", "/calendar.ics?", "/feed.xml?", "/?"])
            response = live.client.get(
                public + quote(mutate(rng, rng.choice(["95", "叶寅", "61.ics"])), safe=""),
                headers={
                    rng.choice(["If-None-Match", "If-Modified-Since"]): quote(
                        rng.choice(JUNK), safe=' ,:"/'
                    )
                },
            )
            assert response.status_code < 500, (public, response.text[:200])
        else:
            response = live.client.post(
                "/api/campaigns",
                content=rng.choice(JUNK).encode(),
                headers={**headers, "Content-Type": "application/json"},
            )
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (kind, token[:80], response.text[:200])
    assert set(statuses) & {400, 403, 404}  # the fuzzer did reach the refusals


def test_no_admin_route_answers_500(live: Live) -> None:
    """The dashboard, logged in and out, with junk paths, forms, cookies and form tokens."""
    rng = random.Random(20261124)
    # The first campaign of the fixture's database, so some actions reach a real row.
    from newsletter.campaigns import service as campaigns
    from newsletter.db import session_scope

    with session_scope(live.settings.database_url) as db:
        campaign_id = campaigns.create_campaign(db, 95).id
    assert live.client.post("/admin/login", data={"token": "test-admin-token"}).status_code == 303
    good_cookie = live.client.cookies["newsletter_admin"]
    real_csrf = form_token(live.client.get("/admin").text)
    paths = [
        "/admin",
        "/admin/login",
        "/admin/logout",
        "/admin/sessions/{}",
        "/admin/sessions/{}/rsvps.csv",
        "/admin/sessions/{}/remind",
        "/admin/sessions/{}/reminders/{}/cancel",
        "/admin/sessions/95/reminders/P1D/cancel",
        "/admin/campaigns/{}",
        "/admin/campaigns/{}/pause",
        "/admin/campaigns/{}/resume",
        "/admin/campaigns/{}/send",
        "/admin/campaigns/{}/{}",
        "/admin/{}",
    ]
    statuses: dict[int, int] = {}
    for _ in range(400):
        template = rng.choice(paths)
        pieces = [
            quote(
                rng.choice([*JUNK, "95", "95", "95", str(campaign_id), str(campaign_id)]), safe=""
            )
            for _ in range(template.count("{}"))
        ]
        path = template.format(*pieces)
        # Quoted: a client cannot send raw control characters in a header either.
        mutated = quote(mutate(rng, good_cookie), safe="-_.")
        cookie = rng.choice([good_cookie, good_cookie, mutated, None])
        live.client.cookies.clear()
        if cookie is not None:
            live.client.cookies.set("newsletter_admin", cookie, domain="127.0.0.1", path="/admin")
        data = {
            "csrf": rng.choice([real_csrf, mutate(rng, real_csrf)]),
            "token": rng.choice([*JUNK, "test-admin-token"]),
        }
        method = rng.choices(["GET", "POST", "PUT", "DELETE"], weights=[9, 9, 1, 1])[0]
        if method == "POST" and rng.random() < 0.3:
            response = live.client.post(
                path,
                content=rng.choice(JUNK).encode(),
                headers={"Content-Type": "multipart/form-data; boundary=x"},
            )
        elif method == "POST":
            response = live.client.post(path, data=data)
        else:
            response = live.client.request(method, path)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (method, path[:80], response.text[:200])
    assert {200, 303, 400, 403, 404} <= set(statuses), statuses


def test_no_signup_route_answers_500(live: Live) -> None:
    """The sign-up form and the confirm page: junk fields, tokens, bodies and methods."""
    from newsletter.tokens import Purpose, sign
    from newsletter.web import subscribe

    rng = random.Random(20261202)
    real_csrf = form_token(live.client.get("/subscribe").text)
    confirm_token = sign(Purpose.CONFIRM, {"u": live.people[0], "m": 1}, live.settings.secret_keys)
    statuses: dict[int, int] = {}
    for _ in range(400):
        subscribe.throttle.clear()  # the limit's 429 would hide the rest
        kind = rng.randrange(5)
        token = quote(mutate(rng, confirm_token), safe="")
        if kind == 0:
            data = {
                "email": rng.choice([*JUNK, "a@example.org", "x@例子.中国"]),
                "name": rng.choice(JUNK),
                "topics": rng.choice(JUNK),
                "csrf": rng.choice([real_csrf, mutate(rng, real_csrf)]),
            }
            response = live.client.post("/subscribe", data=data)
        elif kind == 1:
            response = live.client.post(
                "/subscribe",
                content=rng.choice(JUNK).encode(),
                headers={
                    "Content-Type": rng.choice(
                        ["application/json", "multipart/form-data; boundary=x", "text/plain"]
                    )
                },
            )
        elif kind == 2:
            response = live.client.get(f"/subscribe/confirm/{token}")
        elif kind == 3:
            response = live.client.post(
                f"/subscribe/confirm/{token}",
                data={"csrf": rng.choice([real_csrf, mutate(rng, real_csrf)])},
            )
        else:
            response = live.client.request(
                rng.choice(["GET", "PUT", "DELETE", "PATCH"]),
                rng.choice(["/subscribe", "/subscribe/confirm", "/subscribe/confirm/" + token]),
            )
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (kind, token[:80], response.text[:200])
    assert {200, 400, 403} <= set(statuses), statuses


def test_no_preference_route_answers_500(live: Live) -> None:
    """The preference page and its one form: junk tokens, actions, fields, bodies, methods;
    the API's export and erase with junk JSON bodies."""
    from newsletter.links import preferences_link

    rng = random.Random(20261203)
    link = preferences_link(
        live.settings.base_url, live.settings.secret_keys, subscriber_id=live.people[0]
    )
    token = link.rsplit("/", 1)[1]
    real_csrf = form_token(live.client.get(f"/preferences/{token}").text)
    headers = {"Authorization": "Bearer test-admin-token"}
    statuses: dict[int, int] = {}
    for _ in range(400):
        kind = rng.randrange(5)
        mutated = quote(mutate(rng, token), safe="")
        if kind == 0:
            response = live.client.get(f"/preferences/{mutated}")
        elif kind in (1, 2):
            data = {
                "csrf": rng.choice([real_csrf, real_csrf, mutate(rng, real_csrf)]),
                "action": rng.choice(["save", "unsubscribe", "resubscribe", "export", *JUNK]),
                "name": rng.choice(JUNK),
                "topics": rng.choice(JUNK),
                "paused_until": rng.choice([*JUNK, "2099-01-01", "2027-02-30", "2026-13-01"]),
            }
            response = live.client.post(
                f"/preferences/{token if kind == 1 else mutated}", data=data
            )
        elif kind == 3:
            response = live.client.post(
                rng.choice(["/api/subscribers/export", "/api/subscribers/erase"]),
                content=rng.choice([*JUNK, '{"email": 5}', '{"email": "a@b"}']).encode(),
                headers={**headers, "Content-Type": "application/json"},
            )
        else:
            response = live.client.request(
                rng.choice(["PUT", "DELETE", "PATCH", "POST"]),
                rng.choice(["/preferences", "/preferences/", f"/preferences/{mutated}/x"]),
                content=rng.choice(JUNK).encode(),
            )
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (kind, mutated[:80], response.text[:200])
    assert {200, 400, 403} <= set(statuses), statuses


def test_no_webhook_request_answers_500(configure: Configure, tmp_path: Path) -> None:
    """The providers' webhook: junk bodies signed and unsigned, junk headers and methods."""
    from newsletter.web import inbound_webhook
    from newsletter.web.inbound_webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, signature

    settings = configure(base_url=f"http://127.0.0.1:{free_port()}", inbound_webhook_secret="s")
    rng = random.Random(20261204)
    events = [
        {"id": "e", "type": "bounce", "bounce_type": "permanent", "email": "w0@example.org"},
        {"id": "e", "type": "complaint", "message_id": "<d1.0123456789abcdef@example.org>"},
        {"id": "u", "type": "unsubscribe", "token": "x.y.z"},
    ]
    statuses: dict[int, int] = {}
    with serve_live(settings, tmp_path) as live:
        for _ in range(300):
            inbound_webhook.requests.clear()  # the limits' 429 would hide the rest
            inbound_webhook.bad_signatures.clear()
            event: dict[str, object] = dict(rng.choice(events))
            for _ in range(rng.randrange(3)):
                event[rng.choice(["id", "type", "email", "status", "bounce_type", "token"])] = (
                    rng.choice([*JUNK, 5, None, [], {}, True, -1.5])
                )
            body = rng.choice(
                [
                    json.dumps({"events": [event] * rng.randrange(1, 4)}),
                    json.dumps(event),
                    rng.choice(JUNK),
                    json.dumps({"events": rng.choice(JUNK)}),
                ]
            ).encode()
            timestamp = rng.choice([str(int(time.time())), *JUNK])
            signed = signature("s", timestamp, body) if timestamp.isascii() else "x"
            headers = {
                TIMESTAMP_HEADER: quote(timestamp, safe=""),
                SIGNATURE_HEADER: rng.choice([signed, signed, quote(mutate(rng, signed))]),
            }
            method = rng.choices(["POST", "GET", "PUT"], weights=[18, 1, 1])[0]
            response = live.client.request(
                method, "/inbound/webhook", content=body, headers=headers
            )
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code < 500, (body[:200], response.text[:200])
    assert {200, 403, 405, 422} <= set(statuses), statuses


def test_no_feedback_route_answers_500(live: Live) -> None:
    """The follow-up's feedback page and the dashboard's follow-up button: junk tokens,
    ratings, comments, form tokens and methods, before and after the session ended."""
    from sqlalchemy import update

    from newsletter.db import session_scope, utcnow
    from newsletter.rsvp.feedback import feedback_link
    from newsletter.sessions.models import SalonSession
    from newsletter.web import feedback as feedback_web

    rng = random.Random(20261205)
    link = feedback_link(
        live.settings.base_url,
        live.settings.secret_keys,
        session_id=live.session_id,
        subscriber_id=live.people[0],
    )
    token = link.rsplit("/", 1)[1]
    assert live.client.post("/admin/login", data={"token": "test-admin-token"}).status_code == 303
    admin_csrf = form_token(live.client.get("/admin").text)
    statuses: dict[int, int] = {}
    real_csrf = ""
    for round_ in range(400):
        if round_ == 100:  # the session ends: the form opens, the follow-up can be made
            with session_scope(live.settings.database_url) as db:
                db.execute(
                    update(SalonSession)
                    .where(SalonSession.id == live.session_id)
                    .values(ends_at=utcnow(), starts_at=utcnow())
                )
            real_csrf = form_token(live.client.get(f"/feedback/{token}").text)
        feedback_web.throttle.clear()  # the limit's 429 would hide the rest
        kind = rng.randrange(5)
        mutated = quote(mutate(rng, token), safe="")
        if kind == 0:
            response = live.client.get(f"/feedback/{rng.choice([token, mutated])}")
        elif kind in (1, 2):
            data = {
                "csrf": rng.choice([real_csrf, real_csrf, mutate(rng, real_csrf or "x")]),
                "rating": rng.choice(["1", "4", "5", *JUNK]),
                "comment": rng.choice([*JUNK, "a" * 2001, "b" * 9000]),
            }
            response = live.client.post(f"/feedback/{token if kind == 1 else mutated}", data=data)
        elif kind == 3:
            data = {
                "csrf": rng.choice([admin_csrf, admin_csrf, mutate(rng, admin_csrf)]),
                "everyone": rng.choice(["1", *JUNK]),
            }
            number = rng.choice(["95", "95", "999", *[quote(j, safe="") for j in JUNK[:8]]])
            response = live.client.post(f"/admin/sessions/{number}/followup", data=data)
        else:
            response = live.client.request(
                rng.choice(["PUT", "DELETE", "PATCH", "POST"]),
                rng.choice(["/feedback", "/feedback/", f"/feedback/{mutated}/x"]),
                content=rng.choice(JUNK).encode(),
            )
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (kind, mutated[:80], response.text[:200])
    assert {200, 400, 403, 409} <= set(statuses), statuses


def test_no_change_notice_route_answers_500(live: Live, tmp_path: Path) -> None:
    """The dashboard's change-notice button: junk session numbers, revisions, audiences and
    form tokens, before the session was announced and after it changed, and once sent."""
    from tests.test_change_notices_web import announce_and_move

    rng = random.Random(20261202)
    assert live.client.post("/admin/login", data={"token": "test-admin-token"}).status_code == 303
    real_csrf = form_token(live.client.get("/admin").text)
    statuses: dict[int, int] = {}
    for round_ in range(300):
        if round_ == 60:  # announced, then moved to another room: a notice is pending
            announce_and_move(live, tmp_path)
        # Mostly what the page sends, now and then one junk value: a form with several
        # junk fields only ever meets the validation.
        data = {
            "csrf": real_csrf,
            "revision": rng.choice(["1", "1", "0"]),
            "audience": rng.choice(["answered", "invited"]),
        }
        if rng.random() < 0.5:
            field = rng.choice(list(data))
            data[field] = mutate(rng, data[field]) if field == "csrf" else rng.choice(JUNK)
        if rng.random() < 0.2:
            del data[rng.choice(list(data))]
        number = rng.choice(["95"] * 8 + ["999", *[quote(j, safe="") for j in JUNK[:8]]])
        method = rng.choices(["POST", "GET", "PUT"], weights=[8, 1, 1])[0]
        path = f"/admin/sessions/{number}/change-notice"
        if method == "POST" and rng.random() < 0.2:
            response = live.client.post(
                path,
                content=rng.choice(JUNK).encode(),
                headers={"Content-Type": "multipart/form-data; boundary=x"},
            )
        elif method == "POST":
            response = live.client.post(path, data=data)
        else:
            response = live.client.request(method, path)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (method, path[:80], response.text[:200])
    assert {303, 403, 404, 409} <= set(statuses), statuses


def test_no_seat_confirmation_answers_500(live: Live) -> None:
    """POST /rsvp/{token}/seat (a promoted person confirms): junk tokens, forms and bodies,
    before and after there is a seat to confirm, never a 500."""
    from tests.test_waitlist_promotion import promote_with_a_seat_to_confirm

    rng = random.Random(20261202)
    rsvp = live.links(1)[0].split("?")[0]
    rsvp_token = rsvp.removeprefix("/rsvp/")
    real_csrf = form_token(live.client.get(rsvp).text)
    statuses: dict[int, int] = {}
    for round_ in range(300):
        if round_ == 150:
            promote_with_a_seat_to_confirm(live)  # now there is a seat to confirm
        token = quote(mutate(rng, rsvp_token), safe="")
        csrf = rng.choice([real_csrf, mutate(rng, real_csrf), *JUNK[:3]])
        kind = rng.randrange(3)
        if kind == 0:
            response = live.client.post(f"/rsvp/{token}/seat", data={"csrf": csrf})
        elif kind == 1:
            response = live.client.request(rng.choice(["GET", "PUT"]), f"/rsvp/{token}/seat")
        else:
            response = live.client.post(
                f"/rsvp/{rsvp_token}/seat",
                content=rng.choice(JUNK).encode(),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (kind, token[:80], response.text[:200])
    assert set(statuses) & {400, 403, 409}  # the refusals were reached


def test_no_checkin_route_answers_500(live: Live) -> None:
    """The door (/admin/sessions/{number}/checkin and its counts, code, present, undo and
    walk-in): logged out and in, junk numbers, codes, ids, names, form tokens and bodies, as
    a form post and as the page's script (Accept: application/json), never a 500."""
    from newsletter.rsvp.checkin import make_code
    from tests.test_admin import TOKEN, answer

    rng = random.Random(20261213)
    answer(live, 0, "yes")
    keys = live.settings.secret_keys
    codes = [make_code(keys, 95, live.people[0]), make_code(keys, 95, live.people[2])]
    codes += [make_code(keys, 97, live.people[0]), make_code(["other"], 95, live.people[0])]
    statuses: dict[int, int] = {}
    real_csrf = ""
    for round_ in range(400):
        if round_ == 40:
            live.client.post("/admin/login", data={"token": TOKEN})
            real_csrf = form_token(live.client.get("/admin/sessions/95/checkin").text)
        number = rng.choice(["95"] * 8 + ["999", "0", *[quote(j, safe="") for j in JUNK[:8]]])
        action = rng.choice(["", "/counts", "/code", "/present", "/undo", "/walk-in", "/x"])
        path = f"/admin/sessions/{number}/checkin{action}"
        data = {
            "csrf": real_csrf if rng.random() < 0.8 else mutate(rng, real_csrf or "x"),
            "code": rng.choice([*codes, mutate(rng, codes[0]), *JUNK]),
            "subscriber": rng.choice([str(p) for p in live.people] + JUNK[:6]),
            "name": rng.choice(["路人甲", " ", "x" * 101, *JUNK]),
        }
        if rng.random() < 0.2:
            del data[rng.choice(list(data))]
        headers = {"Accept": rng.choice(["application/json", "text/html", "*/*", "\x00"[:0]])}
        if action in ("", "/counts", "/x") or rng.random() < 0.1:
            query = rng.choice(["", "?q=" + quote(rng.choice(JUNK)), "?done=present&who=x"])
            response = live.client.request(rng.choice(["GET", "GET", "PUT"]), path + query)
        elif rng.random() < 0.15:
            response = live.client.post(
                path,
                content=rng.choice(JUNK).encode(),
                headers={"Content-Type": "application/x-www-form-urlencoded", **headers},
            )
        else:
            response = live.client.post(path, data=data, headers=headers)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (path[:80], data, response.text[:200])
    assert {200, 303, 400, 403, 404} <= set(statuses), statuses
