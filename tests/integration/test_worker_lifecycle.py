"""The worker process as an operator runs it: metrics, health, JSON logs, SIGTERM, failing fast."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import uuid
from datetime import timedelta
from typing import Any

import aiohttp
import asyncpg
from aiokafka.admin import AIOKafkaAdminClient

from enrollstream import stack
from enrollstream.adapters.kafka.topics import Topics
from enrollstream.config import Settings
from enrollstream.stack.processes import free_port
from tests.integration.test_decider_runtime import campaign, enroll, send
from tests.servers.smtp import RecordingSmtpServer
from tests.support import eventually, read_until

SENDING_PREFIXES = ("ENROLLSTREAM_SMTP_", "ENROLLSTREAM_SENDER_", "ENROLLSTREAM_UNSUBSCRIBE_")
# The roles these tests exercise without a mail server (the default also sends: it needs SMTP settings).
NO_SENDING = ("--roles", "decider,projector")
SENDING_SETTINGS = (
    "ENROLLSTREAM_SMTP_HOST",
    "ENROLLSTREAM_SENDER_FROM",
    "ENROLLSTREAM_UNSUBSCRIBE_KEYS",
    "ENROLLSTREAM_UNSUBSCRIBE_URL or ENROLLSTREAM_UNSUBSCRIBE_MAILTO",
)


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    assert settings.kafka_bootstrap_servers and settings.database_url
    # Sending settings come from each test, never from the developer's environment.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(SENDING_PREFIXES)}
    return {
        **inherited,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "DATABASE_URL": settings.database_url,
        "ENROLLSTREAM_TOPIC_PREFIX": settings.topic_prefix,
        "ENROLLSTREAM_PARTITIONS": str(settings.partitions),
        "ENROLLSTREAM_GROUP_ID": settings.group_id,
        "ENROLLSTREAM_HTTP_PORT": "0",
        "ENROLLSTREAM_LOG_FORMAT": "json",
        # As the settings fixture: these commands use fixed days, so the issued_at skew check is off.
        "ENROLLSTREAM_COMMAND_MAX_FUTURE_SKEW_S": str(settings.command_max_future_skew_s),
        "ENROLLSTREAM_COMMAND_MAX_AGE_S": str(settings.command_max_age_s),
        **extra,
    }


class WorkerProcess:
    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.env = env
        self.args = args
        self.lines: list[str] = []
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "enrollstream", "worker", *self.args, env=self.env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for line in self.process.stderr:
            self.lines.append(line.decode().rstrip("\n"))

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.lines:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    async def port(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for entry in self.logs():
                if "port" in entry:
                    return int(entry["port"])
            await asyncio.sleep(0.1)
        raise TimeoutError(f"the worker did not report its port: {self.lines[-5:]}")

    async def wait(self, timeout: float) -> int:
        """The exit code; a process still running after `timeout` is killed (never left behind)."""
        assert self.process is not None
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise
        assert self._reader is not None
        await self._reader
        return code


async def get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}{path}") as response:
        return response.status, await response.text()


async def test_metrics_health_json_logs_and_a_clean_sigterm(settings: Settings, topics: Topics) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    from enrollstream.runtime.campaigns import publish_campaign

    await publish_campaign(bootstrap, topics.campaigns, campaign())
    worker = WorkerProcess(worker_env(settings), *NO_SENDING)
    await worker.start()
    try:
        port = await worker.port()
        assert (await get(port, "/healthz"))[0] == 200
        for _ in range(300):
            if (await get(port, "/readyz"))[0] == 200:
                break
            await asyncio.sleep(0.1)
        assert (await get(port, "/readyz"))[0] == 200

        for contact in ("ann", "bob", "cyd"):
            await send(settings, topics, enroll(contact), f"acct-a/{contact}")
        refused = enroll("dee", campaign_id="no-such-campaign")
        await send(settings, topics, refused, "acct-a/dee")
        await read_until(bootstrap, topics.command_results, lambda rs: len(rs) == 4)

        status, metrics = await get(port, "/metrics")
        assert status == 200
        assert 'enrollstream_commands_total{status="accepted",type="Enroll.v1"} 3.0' in metrics
        assert 'enrollstream_commands_total{status="rejected",type="Enroll.v1"} 1.0' in metrics
        assert 'enrollstream_transactions_total{outcome="committed",role="decider"}' in metrics
        assert "enrollstream_consumer_lag{" in metrics and "enrollstream_decide_seconds_count" in metrics
        rejected = [e for e in worker.logs() if e.get("message") == "command rejected"]
        assert rejected and rejected[0]["command_id"] == refused["command_id"]
        assert rejected[0]["code"] == "campaign_not_found" and rejected[0]["level"] == "INFO"
    finally:
        assert worker.process is not None
        if worker.process.returncode is None:
            worker.process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    code = await worker.wait(timeout=40)
    assert code == 0, worker.lines[-10:]
    assert time.monotonic() - started < 35
    assert any(e.get("message") == "worker stopped cleanly" for e in worker.logs())
    assert not any("Traceback" in line for line in worker.lines)


async def test_startup_fails_fast_and_says_why(
    settings: Settings, topics: Topics, endpoints: stack.Endpoints
) -> None:
    # Kafka unreachable.
    nowhere = WorkerProcess(
        worker_env(settings, KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}"), *NO_SENDING
    )
    started = time.monotonic()
    await nowhere.start()
    try:
        code = await nowhere.wait(timeout=90)
    except TimeoutError:
        raise AssertionError(nowhere.lines) from None
    assert code == 1
    assert time.monotonic() - started < 90
    errors = [line for line in nowhere.lines if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(nowhere.lines), nowhere.lines

    # The schema behind the code: a database nobody migrated (the `settings` one is migrated).
    name = f"unmigrated_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(endpoints.database_url)
    try:
        await admin.execute(f'create database "{name}"')
        behind = WorkerProcess(
            worker_env(settings, DATABASE_URL=endpoints.database_url.rsplit("/", 1)[0] + "/" + name),
            *NO_SENDING,
        )
        await behind.start()
        assert await behind.wait(timeout=60) == 1
        assert any("schema is behind" in line for line in behind.lines), behind.lines
    finally:
        await admin.execute(f'drop database if exists "{name}" with (force)')
        await admin.close()


async def test_the_default_worker_without_sending_settings_stops_at_start_and_names_them(
    settings: Settings, endpoints: stack.Endpoints
) -> None:
    fresh = Topics(prefix=f"unstarted-{uuid.uuid4().hex[:8]}.")
    worker = WorkerProcess(worker_env(settings, ENROLLSTREAM_TOPIC_PREFIX=fresh.prefix))  # no --roles
    started = time.monotonic()
    await worker.start()
    assert await worker.wait(timeout=60) == 1, worker.lines
    assert time.monotonic() - started < 30
    errors = [line for line in worker.lines if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error:"), worker.lines
    for name in SENDING_SETTINGS:
        assert name in errors[0], errors[0]
    assert "dispatcher" in errors[0]
    # It stopped before touching anything: not even its topics were created.
    admin = AIOKafkaAdminClient(bootstrap_servers=endpoints.kafka_bootstrap_servers)
    await admin.start()
    try:
        assert not [t for t in await admin.list_topics() if t.startswith(fresh.prefix)]
    finally:
        await admin.close()


async def test_the_default_worker_with_smtp_settings_sends_an_enrolled_contact_its_first_step(
    settings: Settings, topics: Topics, smtp_server: RecordingSmtpServer
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    from enrollstream.runtime.campaigns import publish_campaign

    now = campaign(campaign_id="right-away").model_copy(
        update={"steps": [campaign().steps[0].model_copy(update={"delay": timedelta(0)})]}
    )
    await publish_campaign(bootstrap, topics.campaigns, now)
    sending = {
        "ENROLLSTREAM_SMTP_HOST": smtp_server.host,
        "ENROLLSTREAM_SMTP_PORT": str(smtp_server.port),
        "ENROLLSTREAM_SMTP_STARTTLS": "false",
        "ENROLLSTREAM_SMTP_TIMEOUT": "5",
        "ENROLLSTREAM_SENDER_FROM": "Acme <hello@acme.example>",
        "ENROLLSTREAM_UNSUBSCRIBE_KEYS": "k" * 32,
        "ENROLLSTREAM_UNSUBSCRIBE_URL": "https://u.acme.example/u",
        "ENROLLSTREAM_SCHEDULER_INTERVAL_MS": "100",
    }
    worker = WorkerProcess(worker_env(settings, **sending))  # no --roles: the default
    await worker.start()
    try:
        await send(settings, topics, enroll("eve", campaign_id="right-away"), "acct-a/eve")

        async def sent() -> bool:
            assert worker.process is not None and worker.process.returncode is None, worker.lines[-5:]
            return bool(smtp_server.messages)

        await eventually(sent, timeout=90, what="the first step at the SMTP server")
        [received] = smtp_server.messages
        assert received.rcpt_tos == ("eve@example.org",)
        assert received.message["From"] == "Acme <hello@acme.example>"
    finally:
        assert worker.process is not None
        if worker.process.returncode is None:
            worker.process.send_signal(signal.SIGTERM)
    assert await worker.wait(timeout=40) == 0, worker.lines[-10:]
    roles = [e for e in worker.logs() if e.get("message") == "worker starting"]
    assert roles and roles[0]["roles"] == ["decider", "projector", "scheduler", "dispatcher", "inbound"]
