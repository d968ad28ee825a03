"""Signed tokens: ids only, one salt per purpose, key rotation, expiry, precise errors."""

from __future__ import annotations

import base64
import json
import re
import time

import pytest

from newsletter.config import Settings
from newsletter.errors import ConfigurationError, NewsletterError
from newsletter.tokens import (
    CLOCK_SKEW_SECONDS,
    Purpose,
    TokenError,
    TokenExpired,
    TokenInvalid,
    sign,
    verify,
)

KEYS = ["new-secret-key-2024", "old-secret-key-2023"]
PAYLOAD = {"s": 61, "u": 1234}


def payload_json(token: str) -> object:
    """What anyone holding the link can read: the first segment is plain base64 JSON."""
    first = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(first + "=" * (-len(first) % 4)))


def test_round_trip_and_payload_holds_ids_only() -> None:
    token = sign(Purpose.RSVP, PAYLOAD, KEYS)
    assert verify(Purpose.RSVP, token, KEYS) == PAYLOAD
    assert payload_json(token) == PAYLOAD
    assert re.fullmatch(r"[A-Za-z0-9_\-.]+", token), "must go into a URL unquoted"
    assert len(token) < 100


@pytest.mark.parametrize(
    "payload",
    [
        {"s": 61, "e": "alice@example.org"},  # an address has no place in a link
        {"s": True},
        {"s": 1.5},
        {},
    ],
)
def test_sign_refuses_anything_but_integer_ids(payload: dict[str, object]) -> None:
    with pytest.raises((TypeError, ValueError)):
        sign(Purpose.RSVP, payload, KEYS)  # type: ignore[arg-type]


def test_tokens_are_reusable() -> None:
    # Mail scanners open links first: verifying must not use the token up.
    token = sign(Purpose.UNSUBSCRIBE, {"u": 5, "c": 2}, KEYS)
    for _ in range(3):
        assert verify(Purpose.UNSUBSCRIBE, token, KEYS) == {"u": 5, "c": 2}


def test_a_token_is_only_valid_for_its_purpose() -> None:
    token = sign(Purpose.RSVP, {"u": 5, "c": 2}, KEYS)
    with pytest.raises(TokenInvalid):
        verify(Purpose.UNSUBSCRIBE, token, KEYS)
    assert len({p.salt for p in Purpose}) == len(Purpose)


def test_tampered_tokens_are_invalid() -> None:
    token = sign(Purpose.RSVP, PAYLOAD, KEYS)
    payload, timestamp, signature = token.split(".")
    forged_payload = base64.urlsafe_b64encode(b'{"s":61,"u":1235}').decode().rstrip("=")
    # A character from the middle: the last one carries padding bits that decoding ignores.
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    for bad in (
        f"{forged_payload}.{timestamp}.{signature}",  # someone else's subscriber id
        f"{payload}.{timestamp}.{flipped}",
        f"{payload}.{timestamp}",
        token[:-10],
        token + "x",
    ):
        with pytest.raises(TokenInvalid):
            verify(Purpose.RSVP, bad, KEYS)


@pytest.mark.parametrize(
    "garbage", ["", ".", "..", "abc", "a.b.c", "令牌.令牌.令牌", "%00", "x" * 5000]
)
def test_garbage_is_invalid_not_a_crash(garbage: str) -> None:
    with pytest.raises(TokenInvalid) as caught:
        verify(Purpose.RSVP, garbage, KEYS)
    assert isinstance(caught.value, TokenError)
    assert isinstance(caught.value, NewsletterError)


def test_a_token_signed_with_an_unknown_key_is_invalid() -> None:
    token = sign(Purpose.RSVP, PAYLOAD, ["someone-elses-key"])
    with pytest.raises(TokenInvalid):
        verify(Purpose.RSVP, token, KEYS)


def test_key_rotation_newest_signs_all_verify() -> None:
    issued_before_rotation = sign(Purpose.RSVP, PAYLOAD, ["old-secret-key-2023"])
    assert verify(Purpose.RSVP, issued_before_rotation, KEYS) == PAYLOAD
    issued_after = sign(Purpose.RSVP, PAYLOAD, KEYS)
    assert verify(Purpose.RSVP, issued_after, ["new-secret-key-2024"]) == PAYLOAD
    with pytest.raises(TokenInvalid):  # signed with the newest key, not the old one
        verify(Purpose.RSVP, issued_after, ["old-secret-key-2023"])


def test_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now)
    token = sign(Purpose.RSVP, PAYLOAD, KEYS)
    monkeypatch.setattr(time, "time", lambda: now + 3600)
    assert verify(Purpose.RSVP, token, KEYS, max_age_seconds=3601) == PAYLOAD
    assert verify(Purpose.RSVP, token, KEYS) == PAYLOAD  # no limit asked, none applied
    with pytest.raises(TokenExpired):
        verify(Purpose.RSVP, token, KEYS, max_age_seconds=3599)


def test_small_clock_skew_is_tolerated_a_large_one_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 30)  # the signing worker runs ahead
    token = sign(Purpose.RSVP, PAYLOAD, KEYS)
    monkeypatch.setattr(time, "time", lambda: now)
    assert verify(Purpose.RSVP, token, KEYS, max_age_seconds=60) == PAYLOAD
    monkeypatch.setattr(time, "time", lambda: now + CLOCK_SKEW_SECONDS + 60)
    far_future = sign(Purpose.RSVP, PAYLOAD, KEYS)
    monkeypatch.setattr(time, "time", lambda: now)
    with pytest.raises(TokenInvalid):
        verify(Purpose.RSVP, far_future, KEYS, max_age_seconds=60)


def test_keys_must_be_configured() -> None:
    with pytest.raises(ConfigurationError):
        sign(Purpose.RSVP, PAYLOAD, [])
    with pytest.raises(TypeError):
        sign(Purpose.RSVP, PAYLOAD, "a-single-string")


def test_error_messages_do_not_repeat_the_token() -> None:
    token = sign(Purpose.RSVP, PAYLOAD, ["someone-elses-key"])
    with pytest.raises(TokenInvalid) as caught:
        verify(Purpose.RSVP, token, KEYS)
    assert token not in str(caught.value)
    assert "rsvp" in str(caught.value)


def test_works_with_configured_keys(settings: Settings) -> None:
    token = sign(Purpose.UNSUBSCRIBE, {"u": 1, "c": 1}, settings.secret_keys)
    assert verify(Purpose.UNSUBSCRIBE, token, settings.secret_keys) == {"u": 1, "c": 1}
