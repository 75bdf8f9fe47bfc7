"""Configuration, read from environment variables (documented in the README)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

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
    # The decider takes a command's `issued_at` as its "now", so it checks it against the record's broker
    # timestamp (docs/client.md "Time"): at most this far ahead (a clock skew) or behind (a backlog, a
    # re-published report), else the command is rejected `issued_at_out_of_range`. 0: unchecked.
    command_max_future_skew_s: float = Field(default=300.0, ge=0)  # 5 minutes
    command_max_age_s: float = Field(default=7 * 24 * 3600.0, ge=0)  # 7 days, the commands' retention
    # MX verification: nameservers as "host" or "host:port", comma-separated (empty: the system's
    # resolv.conf), and the bound on one whole lookup. A lookup that times out enrolls unverified.
    dns_nameservers: str = ""
    dns_timeout_s: float = Field(default=3.0, gt=0)
    # The worker's /metrics, /healthz and /readyz (0: any free port, printed at start), its log format,
    # and how long SIGTERM may take to drain before the process exits anyway.
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=9464, ge=0, le=65535)
    log_format: Literal["json", "text"] = "json"
    shutdown_timeout_s: float = Field(default=30.0, gt=0)
    # `enrollstream worker --processes N` (runtime/supervisor.py): a child that exits on its own is
    # restarted after a backoff (doubling from _BACKOFF_S up to _BACKOFF_MAX_S); after _LIMIT failures in a
    # row, each within _QUICK_FAILURE_S of its start, the supervisor stops the others and exits 1.
    worker_restart_limit: int = Field(default=5, ge=1, le=1000)
    worker_quick_failure_s: float = Field(default=60.0, ge=0)
    worker_restart_backoff_s: float = Field(default=1.0, ge=0, le=3600)
    worker_restart_backoff_max_s: float = Field(default=30.0, ge=0, le=3600)
    # A supervised child's name (`worker-<i>`, set by the supervisor), in each of its log lines.
    worker_name: str | None = Field(default=None, max_length=64)
    # /healthz says 503 "stuck" when a role has had work waiting (records on a partition, a scheduler
    # tick) without moving for this long, or has failed this many times in a row at one offset.
    stuck_after_s: float = Field(default=300.0, gt=0)
    # How long the broker may hold the decider's fetch to gather more commands (Kafka's fetch.max.wait.ms
    # with a fetch.min.bytes): fewer, larger transactions for at most this much added latency.
    decider_batch_wait_ms: int = Field(default=100, ge=0, le=1000)
    stuck_retries: int = Field(default=5, ge=1)
    # The decider's local state (docs/architecture.md "Local state"): one RocksDB store per owned partition
    # under this directory, a cache of the aggregates changelog, so a restart replays only the changelog's
    # tail. "memory": no store on disk (every assignment restores the whole partition).
    state_store: Literal["disk", "memory"] = "disk"
    state_dir: Path = Field(default_factory=lambda: _home_dir(".local", "state", "enrollstream", "decider"))
    # Memory for state, per worker process, whatever the number of contacts: a quarter for RocksDB (block
    # cache and memtables), the rest for decoded hot aggregates.
    state_cache_mb: int = Field(default=128, ge=8, le=1_048_576)
    # Webhook relay (role `relay`, docs/webhooks.md): its own consumer group on the integration-events topic.
    relay_group_id: str | None = None  # default: `<group_id>.webhook-relay`
    relay_consumers: int = Field(default=1, ge=1)  # consumers in this process; each owns some partitions
    relay_request_timeout_s: float = Field(default=10.0, gt=0)
    relay_max_attempts: int = Field(default=6, ge=1)  # per URL and event, the first try included
    relay_retry_base_s: float = Field(default=1.0, ge=0)  # wait after the first failure
    relay_retry_factor: float = Field(default=2.0, ge=1)  # each next wait is this much longer
    relay_retry_max_s: float = Field(default=60.0, ge=0)  # no single wait longer than this
    # Events one subscriber URL may hold in memory (behind its retries); more are dead-lettered at once.
    relay_subscriber_backlog: int = Field(default=1000, ge=1)
    # One-click unsubscribe endpoint (role `unsubscribe`, RFC 8058).
    unsubscribe_host: str = "127.0.0.1"
    unsubscribe_port: int = Field(default=8025, ge=0, le=65535)  # 0: any free port
    # Comma-separated token keys (>= 16 bytes each); the first is the one messages are signed with.
    unsubscribe_keys: str = ""
    unsubscribe_publish_timeout_s: float = Field(default=5.0, gt=0)
    # Slow clients: a connection without a complete request this long is closed; a POST body not in
    # within its timeout is 408; past the connection limit the oldest idle one is closed (or 503).
    unsubscribe_idle_timeout_s: float = Field(default=15.0, gt=0)
    unsubscribe_body_timeout_s: float = Field(default=10.0, gt=0)
    unsubscribe_max_connections: int = Field(default=256, ge=1)
    # Provider bounce/complaint webhooks, served by the unsubscribe role at /webhooks/bounces/<name>
    # (docs/delivery.md "Bounce webhooks"): a JSON list of {name, account_id, format, secrets}.
    bounce_webhooks: str = ""
    # The HTTP API (role `api`, `enrollstream api`, docs/api.md).
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=0, le=65535)  # 0: any free port (the worker prints it)
    # A write waits this long for its command's result, then answers 202 with a Location to poll.
    api_result_timeout_s: float = Field(default=5.0, gt=0, le=60)
    # The inbound mail receiver (role `receiver`, docs/delivery.md "Receiving replies"): an SMTP listener
    # for the reply domain and/or an IMAP poller, both publishing InboundEmailReceived.
    receiver_domain: str | None = Field(default=None, max_length=253)  # RCPT to any other domain: 550
    # Which account a reply address is: "jobs=acme,talent=globex" (local part -> account), else the
    # address's +tag (reply+acme@domain), else receiver_account; none of them: 550 at RCPT.
    receiver_mailboxes: str = ""
    receiver_account: str | None = Field(default=None, max_length=256)
    receiver_smtp_enabled: bool = True
    receiver_smtp_host: str = "127.0.0.1"
    receiver_smtp_port: int = Field(default=2525, ge=0, le=65535)  # 0: any free port
    receiver_max_message_bytes: int = Field(default=10 * 2**20, ge=1024, le=100 * 2**20)  # over it: 552
    receiver_max_recipients: int = Field(default=50, ge=1, le=1000)  # per message; more: 452
    # Open SMTP connections at once (each idle one is closed after 60 s); more: 421 and closed.
    receiver_max_connections: int = Field(default=100, ge=1, le=10_000)
    receiver_publish_timeout_s: float = Field(default=10.0, gt=0)  # not acknowledged in time: 451
    # The IMAP poller (off unless a host is set): one connection per mailbox, IDLE where supported.
    receiver_imap_host: str | None = None
    receiver_imap_port: int = Field(default=993, ge=1, le=65535)
    receiver_imap_tls: bool = True  # implicit TLS (993); false: plain IMAP (tests, a local server)
    receiver_imap_username: str | None = None
    receiver_imap_password: SecretStr | None = None
    receiver_imap_mailboxes: str = "INBOX"  # comma-separated
    receiver_imap_poll_interval_s: float = Field(default=60.0, gt=0)  # without IDLE
    receiver_imap_idle_s: float = Field(default=600.0, gt=0, le=1740)  # IDLE is renewed within 29 min
    receiver_imap_batch: int = Field(default=100, ge=1, le=10_000)  # messages per round
    # The inbound role keeps mail that matched nothing in inbound_unmatched: the newest this many rows.
    inbound_unmatched_max_rows: int = Field(default=10_000, ge=1, le=10_000_000)
    # The scheduler role: how often it claims due timers, how many per claim, and how long a claim's
    # lease lasts (a row whose command was deferred or went stale fires again after it).
    scheduler_interval_ms: int = Field(default=500, ge=10)
    scheduler_batch: int = Field(default=500, ge=1)
    scheduler_lease_ms: int = Field(default=30_000, ge=100)
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
    sender_reply_to: str | None = None  # may name the account: "reply+{account}@reply.acme.example"
    message_id_domain: str | None = None  # default: the From address's domain
    # One-click unsubscribe (RFC 8058): https endpoint the token is appended to, and/or a mailto; the
    # tokens are signed with the first of ENROLLSTREAM_UNSUBSCRIBE_KEYS (see the unsubscribe role).
    unsubscribe_url: str | None = None
    unsubscribe_mailto: str | None = None
    # Open tracking: the pixel's public base URL, served by the unsubscribe role at /o/<token>.gif (e.g.
    # https://t.acme.example/o); signed with the same keys. Unset: no message carries a pixel.
    open_tracking_url: str | None = None
    # Per-sender limits over rolling windows (None: unlimited); over the limit the dispatcher waits.
    sender_per_hour: int | None = Field(default=None, ge=1)
    sender_per_day: int | None = Field(default=None, ge=1)


def parse_nameservers(value: str) -> list[tuple[str, int]]:
    """ "10.0.0.2, 127.0.0.1:5353" -> [("10.0.0.2", 53), ("127.0.0.1", 5353)]."""
    out: list[tuple[str, int]] = []
    for item in (part.strip() for part in value.split(",")):
        if item:
            host, _, port = item.rpartition(":") if ":" in item else (item, "", "53")
            out.append((host, int(port)))
    return out


def unsubscribe_key_list(settings: Settings) -> list[bytes]:
    return [key.strip().encode() for key in settings.unsubscribe_keys.split(",") if key.strip()]


class InvalidSettings(ValueError):
    """Settings a role cannot start with; the message names them by their environment variables."""


class MissingSettings(InvalidSettings):
    """Settings a role cannot start without, named by their environment variables."""

    def __init__(self, needs: dict[str, list[str]]) -> None:
        self.needs = needs  # role -> the variables it misses
        super().__init__(
            "; ".join(f"the {role} role needs {', '.join(missing)}" for role, missing in needs.items())
        )


def missing_for_roles(settings: Settings, roles: Iterable[str]) -> dict[str, list[str]]:
    """Per role, the environment variables it needs and that are not set (empty: ready to start)."""
    needed = {
        # Every email step goes through this relay, as this sender, with a signed unsubscribe link.
        "dispatcher": (
            ("ENROLLSTREAM_SMTP_HOST", settings.smtp_host),
            ("ENROLLSTREAM_SENDER_FROM", settings.sender_from),
            ("ENROLLSTREAM_UNSUBSCRIBE_KEYS", unsubscribe_key_list(settings)),
            (
                "ENROLLSTREAM_UNSUBSCRIBE_URL or ENROLLSTREAM_UNSUBSCRIBE_MAILTO",
                settings.unsubscribe_url or settings.unsubscribe_mailto,
            ),
        ),
        "unsubscribe": (("ENROLLSTREAM_UNSUBSCRIBE_KEYS", unsubscribe_key_list(settings)),),
        "receiver": (("ENROLLSTREAM_RECEIVER_DOMAIN", settings.receiver_domain),)
        + (
            (
                ("ENROLLSTREAM_RECEIVER_IMAP_USERNAME", settings.receiver_imap_username),
                ("ENROLLSTREAM_RECEIVER_IMAP_PASSWORD", settings.receiver_imap_password),
            )
            if settings.receiver_imap_host
            else ()
        ),
    }
    out: dict[str, list[str]] = {}
    for role in roles:
        missing = [name for name, value in needed.get(role, ()) if not value]
        if missing:
            out[role] = missing
    return out


def require_settings(settings: Settings, roles: Iterable[str]) -> None:
    """Raise MissingSettings naming every variable the roles need and lack."""
    missing = missing_for_roles(settings, roles)
    if missing:
        raise MissingSettings(missing)


def load_settings() -> Settings:
    return Settings()
