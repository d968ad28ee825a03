"""``POST /inbound/webhook``: bounces, complaints and unsubscribes reported by a mail provider.

One JSON format (README, "Providers' webhook"); a provider's own format is translated into it
by a small relay or the provider's templating. The body::

    {"events": [{"id": "evt-123", "type": "bounce", "bounce_type": "permanent",
                 "email": "a@example.org", "message_id": "<d42.0123456789abcdef@example.org>",
                 "status": "5.1.1", "diagnostic": "550 5.1.1 user unknown"}]}

``type`` is ``bounce`` (with ``bounce_type`` ``permanent`` or ``transient``), ``complaint``
or ``unsubscribe`` (which needs ``token``: the token of our List-Unsubscribe mailto, as the
mail the provider received carried it; without one the event is stored and changes nothing,
as for a mailto without a token). ``email`` or ``message_id`` (the Message-ID of the mail we
sent) says whom it is about; unknown fields are ignored.

Authentication: ``X-Newsletter-Timestamp`` (Unix seconds) and ``X-Newsletter-Signature:
sha256=HEX``, the HMAC-SHA256 with ``NEWSLETTER_INBOUND_WEBHOOK_SECRET`` of the timestamp,
a dot and the raw body (``f"{timestamp}.".encode() + body``), compared in constant time. A
timestamp more than :data:`TOLERANCE_S` from now is refused, so a captured request cannot be
replayed later; within the window, the event ids make a replay change nothing (each event
is applied once, by :func:`newsletter.inbound.service.apply_report`).

Answers: 200 with what each event did; 404 when no secret is configured (the route does not
exist then); 403 for a missing or wrong signature or a stale timestamp; 413 over
``MAX_BODY_BYTES`` (before anything reads the body, :mod:`newsletter.web.limits`); 422 for
a body that is not the format, saying where; 429 with Retry-After past the rate limits.
The events of one request are applied in one transaction: all or none, and a provider that
retries after an error gets each event applied once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.concurrency import run_in_threadpool

from newsletter.config import get_settings
from newsletter.db import session_scope
from newsletter.inbound.models import InboundKind
from newsletter.inbound.report import Report
from newsletter.inbound.service import apply_report
from newsletter.web.login_throttle import LoginThrottle

log = logging.getLogger(__name__)

router = APIRouter()

PATH = "/inbound/webhook"
SIGNATURE_HEADER = "X-Newsletter-Signature"
TIMESTAMP_HEADER = "X-Newsletter-Timestamp"
#: How far the timestamp may be from this server's clock, in seconds (either way).
TOLERANCE_S = 300
MAX_EVENTS = 1000
#: Requests per client address a minute (a provider's burst fits; a flood does not) ...
MAX_REQUESTS = 600
REQUEST_WINDOW_S = 60
#: ... and wrong signatures per client address in 15 minutes (a guess of the secret).
MAX_BAD_SIGNATURES = 10

requests = LoginThrottle(
    max_failures=MAX_REQUESTS, window_s=REQUEST_WINDOW_S, max_failures_all=MAX_REQUESTS * 10
)
bad_signatures = LoginThrottle(max_failures=MAX_BAD_SIGNATURES, max_failures_all=100)


class WebhookEvent(BaseModel):
    """One event of the documented format (see the module docstring)."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    id: str = Field(min_length=1, max_length=200)
    type: Literal["bounce", "complaint", "unsubscribe"]
    bounce_type: Literal["permanent", "transient"] | None = None
    email: str | None = Field(default=None, max_length=320)
    message_id: str | None = Field(default=None, max_length=998)
    status: str | None = Field(default=None, pattern=r"^[245]\.\d{1,3}\.\d{1,3}$")
    diagnostic: str | None = Field(default=None, max_length=2000)
    token: str | None = Field(default=None, max_length=2000)

    @model_validator(mode="after")
    def _complete(self) -> WebhookEvent:
        if self.type == "bounce" and self.bounce_type is None:
            raise ValueError("a bounce needs bounce_type: permanent or transient")
        if not self.email and not self.message_id and not self.token:
            raise ValueError("give email or message_id (or the unsubscribe token)")
        return self

    def report(self) -> Report:
        """The event as every way mail comes back ends: a Report."""
        if self.type == "bounce":
            kind = (
                InboundKind.hard_bounce
                if self.bounce_type == "permanent"
                else InboundKind.soft_bounce
            )
        elif self.type == "complaint":
            kind = InboundKind.complaint
        else:
            kind = InboundKind.unsubscribe
        return Report(
            kind=kind,
            message_id=self.message_id or None,
            address=self.email or None,
            status_code=self.status,
            diagnostic=self.diagnostic,
            unsubscribe_token=self.token,
        )


class WebhookBody(BaseModel):
    """The whole request body."""

    model_config = ConfigDict(extra="ignore")

    events: list[WebhookEvent] = Field(min_length=1, max_length=MAX_EVENTS)


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Newsletter-Signature`` value of ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, "sha256")
    return "sha256=" + mac.hexdigest()


def fingerprint(event_id: str) -> str:
    """The idempotence key of a webhook event: its id, hashed in the webhook's own space."""
    return hashlib.sha256(b"webhook\0" + event_id.encode("utf-8")).hexdigest()


def _refused(status: int, detail: str, **headers: str) -> JSONResponse:
    return JSONResponse(
        {"detail": detail}, status_code=status, headers={"Cache-Control": "no-store", **headers}
    )


def _authentic(secret: str, timestamp: str | None, given: str | None, body: bytes) -> str | None:
    """None when the request is signed and fresh, else why not."""
    if not timestamp or not given:
        return f"missing {TIMESTAMP_HEADER} or {SIGNATURE_HEADER}"
    if not timestamp.isdigit() or len(timestamp) > 12:
        return f"{TIMESTAMP_HEADER} must be Unix seconds"
    expected = signature(secret, timestamp, body)
    # Constant time, over bytes: a str compare would raise on non-ASCII input.
    if not hmac.compare_digest(expected.encode(), given.strip().encode("utf-8", "replace")):
        return "the signature does not match"
    if abs(time.time() - int(timestamp)) > TOLERANCE_S:
        return f"the timestamp is more than {TOLERANCE_S} seconds from now"
    return None


def _where(error: dict[str, Any]) -> str:
    place = [str(part) for part in error.get("loc", ())]
    if len(place) >= 2 and place[0] == "events" and place[1].isdigit():
        rest = ".".join(place[2:])
        return f"events[{place[1]}]" + (f".{rest}" if rest else "")
    return ".".join(place) or "body"


def _apply(body: WebhookBody) -> list[dict[str, Any]]:
    settings = get_settings()
    results = []
    with session_scope(settings.database_url) as db:  # all the events, or none
        for event in body.events:
            raw = json.dumps(event.model_dump(exclude_none=True), ensure_ascii=False).encode()
            outcome = apply_report(
                db,
                settings,
                event.report(),
                source="webhook",
                fingerprint=fingerprint(event.id),
                raw=raw,
            )
            results.append(
                {
                    "id": event.id,
                    "result": "applied" if outcome.new else "duplicate",
                    "kind": str(outcome.kind),
                    "matched_by": outcome.matched_by,
                    "event": outcome.event_id,
                }
            )
    return results


@router.post(PATH)
async def webhook(request: Request) -> JSONResponse:
    """Apply a provider's events (see the module docstring for the format and the answers)."""
    secret = get_settings().inbound_webhook_secret
    if not secret:
        raise HTTPException(404)  # like any route that does not exist
    client = request.client.host if request.client else "unknown"
    wait = max(requests.retry_after(client), bad_signatures.retry_after(client))
    if wait:
        return _refused(429, "too many requests; try again later", **{"Retry-After": str(wait)})
    requests.failed(client)  # counted: every request
    body = await request.body()  # bounded by MAX_BODY_BYTES (the limits middleware)
    why = _authentic(
        secret, request.headers.get(TIMESTAMP_HEADER), request.headers.get(SIGNATURE_HEADER), body
    )
    if why is not None:
        bad_signatures.failed(client)
        log.warning("inbound webhook refused: %s", why)
        return _refused(403, why)
    try:
        parsed = WebhookBody.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first.get("type") == "json_invalid":
            return _refused(422, "the body is not JSON")
        message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        return _refused(422, f"{_where(dict(first))}: {message}")
    results = await run_in_threadpool(_apply, parsed)
    return JSONResponse({"events": results}, headers={"Cache-Control": "no-store"})
