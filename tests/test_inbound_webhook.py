"""``POST /inbound/webhook`` over real HTTP (uvicorn on loopback): signed provider events are
applied once per event id; unsigned, forged, stale, oversized and malformed requests are
refused with the right status, and a guesser of the secret is slowed down."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from newsletter.db import session_scope
from newsletter.inbound.models import InboundEvent
from newsletter.tokens import Purpose, sign
from newsletter.web import inbound_webhook
from newsletter.web.inbound_webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, signature
from subscribers import repo
from tests.conftest import Configure
from tests.servers import free_port
from tests.webapp import Live, serve_live

SECRET = "whsec-test-secret"
PATH = "/inbound/webhook"


@pytest.fixture(autouse=True)
def _fresh_limits() -> Iterator[None]:
    inbound_webhook.requests.clear()
    inbound_webhook.bad_signatures.clear()
    yield
    inbound_webhook.requests.clear()
    inbound_webhook.bad_signatures.clear()


@pytest.fixture
def hooked(configure: Configure, tmp_path: Path) -> Iterator[Live]:
    settings = configure(
        base_url=f"http://127.0.0.1:{free_port()}",
        inbound_webhook_secret=SECRET,
        max_body_bytes="4096",
    )
    with serve_live(settings, tmp_path) as built:
        yield built


def post(
    live: Live,
    body: bytes | dict[str, Any],
    *,
    secret: str = SECRET,
    at: float | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    timestamp = str(int(time.time() if at is None else at))
    signed = {
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: signature(secret, timestamp, data),
        "Content-Type": "application/json",
    }
    return live.client.post(PATH, content=data, headers=signed if headers is None else headers)


def status(live: Live, address: str) -> str:
    with session_scope(live.settings.database_url) as db:
        person = repo.get_by_email(db, address)
        assert person is not None
        return person.status


def events(live: Live) -> int:
    with session_scope(live.settings.database_url) as db:
        return int(db.scalar(select(func.count()).select_from(InboundEvent)) or 0)


def test_signed_events_are_applied_once_per_id(hooked: Live) -> None:
    token = sign(Purpose.UNSUBSCRIBE, {"u": hooked.people[2], "c": 1}, hooked.settings.secret_keys)
    body = {
        "events": [
            {"id": "e1", "type": "bounce", "bounce_type": "permanent", "email": "w0@example.org",
             "status": "5.1.1", "diagnostic": "550 5.1.1 user unknown", "provider": "ignored"},
            {"id": "e2", "type": "complaint", "email": "W1@Example.org"},
            {"id": "e3", "type": "bounce", "bounce_type": "transient", "email": "w2@example.org",
             "status": "4.2.2"},
            {"id": "e4", "type": "unsubscribe", "token": token},
        ]
    }  # fmt: skip
    response = post(hooked, body)
    assert response.status_code == 200, response.text
    results = response.json()["events"]
    assert [(r["id"], r["result"], r["kind"]) for r in results] == [
        ("e1", "applied", "hard_bounce"),
        ("e2", "applied", "complaint"),
        ("e3", "applied", "soft_bounce"),
        ("e4", "applied", "unsubscribe"),
    ]
    assert results[0]["matched_by"] == "address" and results[3]["matched_by"] == "token"
    assert "w0@example.org" not in response.text  # no address in the answer
    assert status(hooked, "w0@example.org") == "bounced"
    assert status(hooked, "w1@example.org") == "unsubscribed"
    assert status(hooked, "w2@example.org") == "unsubscribed"  # by its token (e4)
    # The provider retries the same delivery: nothing counts twice.
    again = post(hooked, body)
    assert [r["result"] for r in again.json()["events"]] == ["duplicate"] * 4
    assert events(hooked) == 4


def test_no_secret_no_route(configure: Configure, tmp_path: Path) -> None:
    settings = configure(base_url=f"http://127.0.0.1:{free_port()}")
    with serve_live(settings, tmp_path) as live:
        response = post(live, {"events": []}, secret="anything")
        assert response.status_code == 404


def test_forged_stale_or_unsigned_requests_are_refused(hooked: Live) -> None:
    body = {"events": [{"id": "x", "type": "complaint", "email": "w0@example.org"}]}
    data = json.dumps(body).encode()
    assert post(hooked, body, headers={"Content-Type": "application/json"}).status_code == 403
    assert post(hooked, body, secret="another secret").status_code == 403
    stale = post(hooked, body, at=time.time() - 3600)
    assert stale.status_code == 403 and "timestamp" in stale.json()["detail"]
    # A signature for other bytes (the body changed on the way).
    timestamp = str(int(time.time()))
    forged = hooked.client.post(
        PATH,
        content=data.replace(b"w0@", b"w1@"),
        headers={TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: signature(SECRET, timestamp, data)},
    )
    assert forged.status_code == 403
    junk = {TIMESTAMP_HEADER.encode(): b"yesterday", SIGNATURE_HEADER.encode(): "sha256=é".encode()}
    assert hooked.client.post(PATH, content=data, headers=junk).status_code == 403
    assert status(hooked, "w0@example.org") == "active"
    assert events(hooked) == 0


def test_oversized_and_malformed_bodies(hooked: Live) -> None:
    big = post(hooked, b"{" + b" " * 5000 + b"}")
    assert big.status_code == 413 and "detail" in big.json()
    assert post(hooked, b"not json").json() == {"detail": "the body is not JSON"}
    cases: list[tuple[Any, str]] = [
        ({}, "events"),
        ({"events": []}, "events"),
        ({"events": [{"id": "a", "type": "bounced", "email": "w0@example.org"}]}, "events[0].type"),
        ({"events": [{"id": "a", "type": "bounce", "email": "w0@example.org"}]}, "bounce_type"),
        ({"events": [{"id": "a", "type": "complaint"}]}, "email or message_id"),
        ({"events": [{"type": "complaint", "email": "w0@example.org"}]}, "events[0].id"),
        ({"events": [{"id": "a", "type": "bounce", "bounce_type": "permanent",
                      "email": "w0@example.org", "status": "550"}]}, "events[0].status"),
        ([1, 2], "body"),
    ]  # fmt: skip
    for body, where in cases:
        response = post(hooked, json.dumps(body).encode())
        assert response.status_code == 422, (body, response.text)
        assert where in response.json()["detail"], (where, response.json())
    assert events(hooked) == 0


def test_guessing_the_secret_is_slowed_down(hooked: Live) -> None:
    body = {"events": [{"id": "g", "type": "complaint", "email": "w0@example.org"}]}
    for _ in range(inbound_webhook.MAX_BAD_SIGNATURES):
        assert post(hooked, body, secret="guess").status_code == 403
    refused = post(hooked, body)  # even the right signature waits now
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) > 0
    assert events(hooked) == 0
