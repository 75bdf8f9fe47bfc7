"""Configuration, read from environment variables (documented in the README)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
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
    # The scheduler role: how often it claims due timers, how many per claim, and how long a claim's
    # lease lasts (a row whose command was deferred or went stale fires again after it).
    scheduler_interval_ms: int = Field(default=500, ge=10)
    scheduler_batch: int = Field(default=500, ge=1)
    scheduler_lease_ms: int = Field(default=30_000, ge=100)
    # Where `stack up` keeps its processes' data, logs and state file.
    stack_dir: Path = Field(default_factory=lambda: _home_dir(".local", "state", "enrollstream", "stack"))
    # Where the Kafka jars and the Maven repository are cached (outside the checkout).
    cache_dir: Path = Field(default_factory=lambda: _home_dir(".cache", "enrollstream"))


def load_settings() -> Settings:
    return Settings()
