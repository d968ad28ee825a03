"""Signed, URL-safe tokens for the links in every mail (RSVP, unsubscribe, …).

A token is ``base64(compact JSON payload) . timestamp . HMAC-SHA256`` as made by itsdangerous'
``URLSafeTimedSerializer``. Rules that the rest of the project relies on:

* **One salt per purpose** (:class:`Purpose`): an RSVP token can never be replayed as an
  unsubscribe token, even though both are signed with the same secret.
* **Ids only.** Payloads are small dicts of integers (``{"s": 61, "u": 1234}``); an e-mail
  address in a URL would leak into proxies, browser histories and server logs.
* **Key rotation.** ``keys`` is newest first (``Settings.secret_keys``): the newest signs,
  every key in the list verifies, so old links keep working while a key is phased out.
* **Reusable.** Mail scanners open links before people do, so verifying a token changes
  nothing and a token can be verified any number of times (the web app makes the *action*
  idempotent, not the token single-use).

Signing runs once or twice per recipient while a campaign is sent, so serializers are cached
per (purpose, keys) and the payload skips itsdangerous' zlib attempt (see ``_IdSerializer``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from enum import StrEnum
from functools import lru_cache
from typing import Any, TypeGuard

from itsdangerous import BadSignature, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode
from itsdangerous.serializer import Serializer
from itsdangerous.timed import TimestampSigner

from newsletter.errors import ConfigurationError, NewsletterError

# Clocks of the workers that sign and the web servers that verify are never exactly in step;
# a token "signed in the future" by less than this is accepted when an age limit is checked.
CLOCK_SKEW_SECONDS = 300


class Purpose(StrEnum):
    """What a token may be used for; each purpose signs with its own salt.

    Add a member to add a purpose: existing tokens are unaffected because the salt is derived
    from the member's value, which must therefore never change once tokens are out.
    """

    RSVP = "rsvp"
    UNSUBSCRIBE = "unsubscribe"
    CSRF = "csrf"  # the form on a page a link opened: bound to the same ids as the link
    ADMIN_SESSION = "admin-session"  # the organizer dashboard's login cookie
    CONFIRM = "confirm"  # a sign-up's double opt-in link
    PREFERENCES = "preferences"  # the preference page every mail links to
    CHECKIN = "checkin"  # an attendee's check-in code (QR) at the door
    FEEDBACK = "feedback"  # the follow-up's one-question feedback form

    @property
    def salt(self) -> str:
        """The itsdangerous salt for this purpose."""
        return f"newsletter.{self.value}"


class TokenError(NewsletterError):
    """A token could not be accepted; the message is fit to show on a 4xx page."""


class TokenInvalid(TokenError):
    """The token is garbage, was altered, was signed with an unknown key or for another purpose."""


class TokenExpired(TokenError):
    """The token is authentic but older than the age limit the caller set."""


class _IdSerializer(URLSafeTimedSerializer):
    """``URLSafeTimedSerializer`` without the zlib attempt on dumping.

    itsdangerous tries ``zlib.compress`` on every payload and keeps it only when shorter; for
    a dict of two small ints it never is, and the attempt costs more than the HMAC itself
    (about 12 µs of a 36 µs token). The output is byte-for-byte what itsdangerous makes for
    such payloads, and loading still accepts compressed payloads.
    """

    def dump_payload(self, obj: Any) -> bytes:
        return base64_encode(Serializer.dump_payload(self, obj))


def _check_keys(keys: Sequence[str]) -> tuple[str, ...]:
    if isinstance(keys, str):
        # A bare string would be taken as a sequence of one-character keys.
        raise TypeError("keys must be a list of secret keys, newest first, not a string")
    checked = tuple(keys)
    if not checked or not all(checked):
        raise ConfigurationError("no secret key is configured for signing links")
    return checked


@lru_cache(maxsize=32)
def _serializer(purpose: Purpose, keys: tuple[str, ...]) -> _IdSerializer:
    # itsdangerous signs with the *last* key of its list and verifies with all of them, while
    # our configuration lists the newest first: hence the reversal.
    return _IdSerializer(
        secret_key=list(reversed(keys)),
        salt=purpose.salt,
        signer_kwargs={"digest_method": hashlib.sha256},
    )


@lru_cache(maxsize=32)
def _signer(purpose: Purpose, keys: tuple[str, ...]) -> TimestampSigner:
    signer = _serializer(purpose, keys).make_signer(purpose.salt)
    assert isinstance(signer, TimestampSigner)  # what a TimedSerializer makes
    return signer


def _check_payload(payload: Mapping[str, int]) -> None:
    if not payload:
        raise ValueError("a token payload needs at least one id")
    for name, value in payload.items():
        # bool is an int subclass, and anything else (an address above all) has no place here.
        if not isinstance(name, str) or type(value) is not int:
            raise TypeError(f"token payloads hold integer ids only, got {name!r}: {type(value)}")


def sign(purpose: Purpose, payload: Mapping[str, int], keys: Sequence[str]) -> str:
    """A URL-safe token for ``purpose`` carrying ``payload``, signed with the newest key.

    ``payload`` maps short names to integer ids (``{"s": session_id, "u": subscriber_id}``);
    anything else raises ``TypeError`` so that an address can never end up in a link.
    ``keys`` is newest first, as ``Settings.secret_keys`` returns them.
    """
    _check_payload(payload)
    checked = _check_keys(keys)
    data = _serializer(purpose, checked).dump_payload(dict(payload))
    return _signer(purpose, checked).sign(data).decode("ascii")


def verify(
    purpose: Purpose,
    token: str,
    keys: Sequence[str],
    *,
    max_age_seconds: int | None = None,
) -> dict[str, int]:
    """The payload of ``token`` if it is authentic, made for ``purpose`` and young enough.

    Raises :class:`TokenInvalid` for anything not signed by one of ``keys`` for ``purpose``
    (including garbage and tokens of another purpose) and :class:`TokenExpired` when
    ``max_age_seconds`` is given and the token is older. Verifying has no side effect, so the
    same token can be verified any number of times.
    """
    checked = _check_keys(keys)
    try:
        # The cached signer checks every key; ``serializer.loads`` would build a new signer
        # per key on every call, a tenth of the CPU of a whole RSVP confirmation.
        data, signed_at = _signer(purpose, checked).unsign(token, return_timestamp=True)
        payload = _serializer(purpose, checked).load_payload(data)
    except (BadSignature, UnicodeError, ValueError) as exc:
        raise TokenInvalid(
            f"this {purpose.value} link is not valid: it was changed, cut short or is not"
            " meant for this page"
        ) from exc
    if not _is_id_payload(payload):
        # Authentic but not shaped like ours: signed by some other code sharing the secret.
        raise TokenInvalid(f"this {purpose.value} link is not valid: unexpected content")
    if max_age_seconds is not None:
        # Checked here rather than by itsdangerous, which rejects a token signed a second in
        # the future: a worker's clock slightly ahead of the web server's must not break links.
        age = time.time() - signed_at.timestamp()
        if age > max_age_seconds:
            raise TokenExpired(f"this {purpose.value} link has expired")
        if age < -CLOCK_SKEW_SECONDS:
            raise TokenInvalid(f"this {purpose.value} link is not valid: signed in the future")
    return payload


def _is_id_payload(payload: object) -> TypeGuard[dict[str, int]]:
    return (
        isinstance(payload, dict)
        and bool(payload)
        and all(isinstance(k, str) and type(v) is int for k, v in payload.items())
    )
