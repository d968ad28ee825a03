"""Secrets out of messages: every URL form, well-formed or not, loses its password."""

from __future__ import annotations

import pytest

from newsletter.errors import ConfigurationError
from newsletter.mail.transports import transport_from_url
from newsletter.redaction import redact_text, redact_url, userinfo_is_malformed

# (URL, what redact_url must show). The password is always "SECRET…" so that a test can
# check that no piece of it survives.
CASES = [
    # well-formed (percent-encoded) passwords keep the user name
    ("smtp://mailer:SECRET@mail.example.org:587?starttls=true",
     "smtp://mailer:***@mail.example.org:587?starttls=true"),
    ("smtps://mailer:SECRET%2F%23%3F%40%25x@mail.example.org:465",
     "smtps://mailer:***@mail.example.org:465"),
    ("postgresql+psycopg://app:SECRET@db.internal:5432/newsletter",
     "postgresql+psycopg://app:***@db.internal:5432/newsletter"),
    ("redis://:SECRET@cache:6379/0", "redis://:***@cache:6379/0"),
    ("rediss://default:SECRET@cache.example.org:6380/1",
     "rediss://default:***@cache.example.org:6380/1"),
    ("smtp://mailer:SECRET密码@mail.example.org", "smtp://mailer:***@mail.example.org"),
    ("smtp://mailer:SECRET%E5%AF%86@mail.example.org", "smtp://mailer:***@mail.example.org"),
    ("redis://SECRETTOKEN@cache:6379", "redis://***@cache:6379"),
    # malformed: an unencoded / # ? @ in the password hides the whole user-info
    ("smtp://mailer:SECRET/x@mail.example.org:587", "smtp://***@mail.example.org:587"),
    ("smtp://mailer:SECRET#x@mail.example.org:587", "smtp://***@mail.example.org:587"),
    ("smtp://mailer:SECRET?x@mail.example.org:587?starttls=true",
     "smtp://***@mail.example.org:587?starttls=true"),
    ("smtp://mailer:SECRET@x@mail.example.org:587", "smtp://mailer:***@mail.example.org:587"),
    ("smtps://mailer:SE@CR/ET#?x@mail.example.org", "smtps://***@mail.example.org"),
    ("postgresql+psycopg://app:SECRET/密#x@db.internal:5432/newsletter",
     "postgresql+psycopg://***@db.internal:5432/newsletter"),
    ("redis://:SECRET/x@cache:6379/0", "redis://***@cache:6379/0"),
    ("rediss://default:SECRET#1@cache:6380/1", "rediss://***@cache:6380/1"),
    ("smtp://mailer:SECRET", "smtp://mailer:***"),  # no host at all
    # secret query values
    ("redis://cache:6379/0?password=SECRET&db=2", "redis://cache:6379/0?password=***&db=2"),
    ("postgresql+psycopg://db/newsletter?sslpassword=SECRET&application_name=nl",
     "postgresql+psycopg://db/newsletter?sslpassword=***&application_name=nl"),
    ("https://hooks.example.org/x?token=SECRET&api_key=SECRET2&key=SECRET3",
     "https://hooks.example.org/x?token=***&api_key=***&key=***"),
    # nothing to hide
    ("file://var/outbox", "file://var/outbox"),
    ("file:///srv/mail@archive/outbox", "file:///srv/mail@archive/outbox"),
    ("smtp://mail.example.org:25", "smtp://mail.example.org:25"),
    ("sqlite:///var/newsletter.db", "sqlite:///var/newsletter.db"),
]  # fmt: skip


@pytest.mark.parametrize(("url", "shown"), CASES)
def test_redact_url_hides_the_password_of_every_form(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "SECRET" not in redact_url(url)


@pytest.mark.parametrize(("url", "shown"), CASES)
def test_redact_text_finds_urls_inside_messages(url: str, shown: str) -> None:
    text = f"cannot connect to '{url}': refused. Also see ({url}), then stop"
    assert (
        redact_text(text) == f"cannot connect to '{shown}': refused. Also see ({shown}), then stop"
    )


def test_a_url_without_credentials_is_only_recognised_as_well_formed() -> None:
    assert not userinfo_is_malformed("smtp://mailer:x%2Fy@mail.example.org:587")
    assert userinfo_is_malformed("smtp://mailer:x/y@mail.example.org:587")
    assert not userinfo_is_malformed("file:///srv/a@b")


@pytest.mark.parametrize("password", ["SECRET/x", "SECRET#x", "SECRET?x", "SECRET@x/y", "SECRET"])
def test_mail_url_errors_never_quote_the_password(password: str) -> None:
    # Each URL is refused (a malformed user-info, or a port that is no number); the message
    # may name the host but nothing of the password.
    with pytest.raises(ConfigurationError) as refused:
        transport_from_url(f"smtp://mailer:{password}@mail.example.org:58x7")
    message = str(refused.value)
    assert "SECRET" not in message
    assert "mail.example.org" in message
