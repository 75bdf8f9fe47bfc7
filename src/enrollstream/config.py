"""Configuration, read from environment variables (documented in the README)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _home_dir(*parts: str) -> Path:
    return Path.home().joinpath(*parts)


class Settings(BaseSettings):
    """Everything enrollstream reads from the environment.

    Connection strings use the names other tools already use (`KAFKA_BOOTSTRAP_SERVERS`,
    `DATABASE_URL`); the rest is prefixed `ENROLLSTREAM_`.
    """

    model_config = SettingsConfigDict(env_prefix="ENROLLSTREAM_", extra="ignore")

    kafka_bootstrap_servers: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "ENROLLSTREAM_KAFKA_BOOTSTRAP_SERVERS"),
    )
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "ENROLLSTREAM_DATABASE_URL")
    )
    topic_prefix: str = "enrollstream."
    partitions: int = Field(default=6, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    group_id: str = "enrollstream"
    # How soon the group notices a member that died without leaving (SIGKILL, lost host): its partitions
    # wait this long before moving. The broker's group.min.session.timeout.ms (6 s) bounds it below.
    session_timeout_ms: int = Field(default=10_000, ge=1_000)
    heartbeat_interval_ms: int = Field(default=3_000, ge=100)
    # Where `stack up` keeps its processes' data, logs and state file.
    stack_dir: Path = Field(default_factory=lambda: _home_dir(".local", "state", "enrollstream", "stack"))
    # Where the Kafka jars and the Maven repository are cached (outside the checkout).
    cache_dir: Path = Field(default_factory=lambda: _home_dir(".cache", "enrollstream"))

    # --- The dispatcher (docs/delivery.md) --------------------------------------------------------
    # The SMTP relay every email step goes through (ENROLLSTREAM_SMTP_HOST, ..._PORT, ...).
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_starttls: bool = True  # upgrade with STARTTLS and refuse to send in the clear
    smtp_implicit_tls: bool = False  # TLS from the first byte (465); excludes starttls
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_timeout: float = Field(default=30.0, gt=0)
    smtp_validate_certs: bool = True
    smtp_envelope_from: str | None = None  # MAIL FROM (bounce address); default: the From address
    # Who the steps are sent as (ENROLLSTREAM_SENDER_FROM="Acme <jobs@acme.example>").
    sender_from: str | None = None
    sender_reply_to: str | None = None
    message_id_domain: str | None = None  # default: the From address's domain
    # One-click unsubscribe (RFC 8058): https endpoint the token is appended to, and/or a mailto.
    unsubscribe_url: str | None = None
    unsubscribe_mailto: str | None = None
    unsubscribe_key: SecretStr | None = None  # HMAC-SHA256 key, at least 16 bytes
    # Per-sender limits over rolling windows (None: unlimited); over the limit the dispatcher waits.
    sender_per_hour: int | None = Field(default=None, ge=1)
    sender_per_day: int | None = Field(default=None, ge=1)


def load_settings() -> Settings:
    return Settings()
