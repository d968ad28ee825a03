"""Configuration: embedded defaults work with nothing set; generated secrets are private."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from newsletter.config import Settings
from tests.conftest import Configure


def test_defaults_need_no_configuration(
    configure: Configure, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NEWSLETTER_SECRET_KEY")
    monkeypatch.delenv("NEWSLETTER_ADMIN_TOKEN")
    settings = configure()
    assert settings.database_url == "sqlite:///var/newsletter.db"
    assert settings.broker_url is None
    assert settings.mail_url == "file://var/outbox"
    assert settings.sender_domain == "example.org"


def test_generated_secret_is_written_once_with_mode_0600_and_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(var_dir=tmp_path / "var")
    with caplog.at_level(logging.WARNING):
        first = settings.secret_keys
    path = tmp_path / "var" / "secret.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "NEWSLETTER_SECRET_KEY is not set" in caplog.text
    assert first[0] not in caplog.text  # the secret itself is never logged
    caplog.clear()
    assert Settings(var_dir=tmp_path / "var").secret_keys == first
    assert caplog.text == ""
    token = settings.admin_bearer_token
    assert token != first[0]
    assert stat.S_IMODE((tmp_path / "var" / "admin.token").stat().st_mode) == 0o600


def test_secret_key_list_allows_rotation() -> None:
    settings = Settings(secret_key="new-key, old-key")
    assert settings.secret_keys == ["new-key", "old-key"]


def test_secrets_do_not_show_in_repr() -> None:
    settings = Settings(secret_key="s3cret-value", admin_token="t0ken-value")
    assert "s3cret-value" not in repr(settings)
    assert "t0ken-value" not in repr(settings)


def test_mail_domain_overrides_from_domain() -> None:
    assert Settings(mail_domain="lists.example.net").sender_domain == "lists.example.net"


def test_bad_from_address_is_refused() -> None:
    with pytest.raises(ValueError, match="no e-mail address"):
        Settings(from_address="just a name")
