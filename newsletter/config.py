"""Settings from the environment (``NEWSLETTER_*``) and ``.env``, with embedded defaults.

With no configuration at all the product runs on SQLite, the embedded worker and a file outbox.
Secrets that production must set (the signing key, the admin token) are generated once into
``var/`` with mode 0600 and a warning, so a laptop demo needs nothing, yet nothing secret is
ever hard-coded.
"""

from __future__ import annotations

import logging
import os
import secrets
from datetime import timedelta
from email.utils import parseaddr
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from newsletter.errors import ConfigurationError
from newsletter.sessions.offsets import parse_offsets

log = logging.getLogger(__name__)

DEFAULT_FROM = "Mo 人工智能俱乐部 <salon@localhost>"


class Settings(BaseSettings):
    """Everything configurable; immutable once loaded."""

    model_config = SettingsConfigDict(
        env_prefix="NEWSLETTER_",
        env_file=".env",
        env_file_encoding="utf-8",
        frozen=True,
        extra="ignore",
    )

    var_dir: Path = Path("var")
    database_url: str = "sqlite:///var/newsletter.db"
    broker_url: str | None = None
    mail_url: str = "file://var/outbox"
    secret_key: str | None = Field(default=None, repr=False)
    base_url: str = "http://127.0.0.1:8000"
    from_address: str = DEFAULT_FROM
    rate_limit: float | None = None
    admin_token: str | None = Field(default=None, repr=False)
    mail_domain: str | None = None
    bounce_address: str | None = None
    organizer: str = "Mo 人工智能俱乐部"
    timezone: str = "Asia/Shanghai"
    batch_size: int = Field(default=500, gt=0)
    # Seconds to wait before each retry of a temporary failure (SMTP 4xx, a dropped
    # connection, a full disk); one more failure after the last step fails the delivery.
    retry_backoff: str = "60,300,900,3600"
    # An in-flight delivery whose worker has not reported for this long is given back to the
    # queue (the worker is stuck); workers renew their claims every second (at most a third of
    # this timeout), and a dead worker's rows come back sooner through its stopped heartbeat.
    inflight_timeout: float = Field(default=300.0, gt=0)
    # Celery beat runs the sweeper this often (scheduled campaigns, lost batch tasks).
    sweep_interval: float = Field(default=15.0, gt=0)
    # Error budget: pause the campaign when more than this share of finished deliveries failed
    # for good (judged after error_budget_min of them) …
    error_budget: float = Field(default=0.1, ge=0, le=1)
    error_budget_min: int = Field(default=50, ge=1)
    # … or when the relay refused this many messages in a row, temporarily, with no success.
    error_streak: int = Field(default=200, ge=1)
    # SMTP connections each worker process keeps open to the relay and sends on at once
    # (a relay's own per-client connection limit is the ceiling to respect).
    smtp_connections: int = Field(default=4, ge=1, le=64)

    # --- Operations and limits (SPEC "Operations and limits") ---
    # Request bodies larger than this get 413 before anything parses or authenticates them.
    max_body_bytes: int = Field(default=65536, gt=0)
    # Addresses of reverse proxies whose X-Forwarded-For / -Proto are believed (comma-separated
    # IPs or networks, or "*"); unset: none, the client is the TCP peer.
    forwarded_allow_ips: str | None = None
    # "text" for people, "json" for log collectors (one object a line, no address or secret).
    log_format: Literal["text", "json"] = "text"
    # Seconds a request may take to arrive whole (headers and body) before it is dropped,
    # and an idle keep-alive connection is kept.
    request_timeout: float = Field(default=15.0, gt=0)
    keepalive_timeout: float = Field(default=5.0, gt=0)
    # Connections one web process serves at once; more get 503 at once instead of queueing.
    max_connections: int = Field(default=1000, gt=0)
    # Seconds to wait for the database or the broker before answering 503 with Retry-After.
    dependency_timeout: float = Field(default=2.0, gt=0)
    # A worker process writes a heartbeat this often; rows held by a worker whose heartbeat is
    # three intervals old are given back to the queue.
    heartbeat_interval: float = Field(default=2.0, gt=0)
    # Prometheus /metrics: with the admin token on the web app, or without it on this
    # separate address (host:port) only, e.g. 127.0.0.1:9100 for a scraper on the host.
    metrics_listen: str | None = None

    # --- Joining and leaving (SPEC "Joining and leaving") ---
    # Sign-ups not confirmed within this many days are removed.
    pending_days: int = Field(default=7, ge=1)
    # The tags offered as topics on the sign-up and preference pages (comma-separated);
    # unset: every tag the club has.
    topics: str | None = None

    # --- Mail coming back (SPEC "Mail coming back") ---
    # Temporary bounces within 30 days that suppress an address as a permanent one does.
    soft_bounce_limit: int = Field(default=3, ge=1)
    # imaps://user:pass@host/INBOX: the mailbox `newsletter inbound poll` reads.
    inbound_imap_url: str | None = Field(default=None, repr=False)
    # Shared secret of the providers' event webhook (HMAC-SHA256 of the body); unset: no webhook.
    inbound_webhook_secret: str | None = Field(default=None, repr=False)

    # --- Signing (SPEC "Signing") ---
    # With both set, every outgoing mail carries a DKIM signature (RSA-2048 or Ed25519 key).
    dkim_selector: str | None = None
    dkim_private_key: Path | None = None

    # --- A session's life and public pages (SPEC "A session's life", "Public pages") ---
    # Reminder offsets before a session when its record gives none (ISO 8601 durations,
    # comma-separated, e.g. "P1D,PT2H").
    reminders: str = "P1D"
    # How many earlier sessions an invitation's archive table shows before linking to
    # /archive for the rest; unset: all of them (as the seeds do).
    archive_rows: int | None = Field(default=None, ge=0)

    @field_validator("base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("from_address")
    @classmethod
    def _has_address(cls, value: str) -> str:
        _, address = parseaddr(value)
        if "@" not in address:
            raise ValueError(f"{value!r} has no e-mail address in it")
        return value

    @property
    def forwarded_allow_list(self) -> list[str]:
        """The trusted proxies' addresses, as uvicorn takes them (empty: trust no one)."""
        raw = self.forwarded_allow_ips or ""
        return [part.strip() for part in raw.split(",") if part.strip()]

    @field_validator("retry_backoff")
    @classmethod
    def _backoff_steps(cls, value: str) -> str:
        try:
            steps = [float(step) for step in value.split(",") if step.strip()]
        except ValueError:
            raise ValueError(
                f"{value!r}: give seconds separated by commas, e.g. 60,300,900"
            ) from None
        if not steps or any(step < 0 for step in steps):
            raise ValueError(f"{value!r}: give at least one non-negative number of seconds")
        return value

    @field_validator("reminders")
    @classmethod
    def _reminder_offsets(cls, value: str) -> str:
        parse_offsets(value)  # a bad one is a ValueError naming it
        return value

    @property
    def reminder_offsets(self) -> list[timedelta]:
        """The default reminder offsets before a session, in the order given."""
        return parse_offsets(self.reminders)

    @property
    def retry_delays(self) -> list[float]:
        """The back-off table: seconds before retry 1, 2, …; its length bounds the retries."""
        return [float(step) for step in self.retry_backoff.split(",") if step.strip()]

    @property
    def secret_keys(self) -> list[str]:
        """Signing keys, newest first: the first signs, all verify (key rotation).

        ``NEWSLETTER_SECRET_KEY`` may list several keys separated by commas.
        """
        raw = self.secret_key or _generated_secret(self.var_dir / "secret.key", "SECRET_KEY")
        keys = [k.strip() for k in raw.split(",") if k.strip()]
        if not keys:
            raise ConfigurationError("NEWSLETTER_SECRET_KEY is set but holds no key")
        return keys

    @property
    def admin_bearer_token(self) -> str:
        """The organizer token; generated into ``var/admin.token`` when not configured."""
        return self.admin_token or _generated_secret(self._admin_token_file, "ADMIN_TOKEN")

    @property
    def admin_token_location(self) -> str:
        """Where an organizer finds the admin token, for the demo and ``serve`` to print:
        never the token itself, which would land in terminal scrollback and logs."""
        if self.admin_token:
            return "from NEWSLETTER_ADMIN_TOKEN"
        return f"in {self._admin_token_file.resolve()}"

    @property
    def _admin_token_file(self) -> Path:
        return self.var_dir / "admin.token"

    @property
    def sender_domain(self) -> str:
        """Domain for Message-IDs and List-Id: configured, else the From address's domain."""
        if self.mail_domain:
            return self.mail_domain
        return parseaddr(self.from_address)[1].rpartition("@")[2].lower()


def _generated_secret(path: Path, name: str) -> str:
    """Read a generated secret, creating it (mode 0600) on first use with a warning."""
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    # O_EXCL: two processes starting at once must not each write a different key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
    log.warning(
        "NEWSLETTER_%s is not set: generated one into %s. Set it in production.", name, path
    )
    return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, loaded once."""
    try:
        return Settings()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ConfigurationError(f"configuration is invalid: {exc}") from exc
