"""Shared fixtures: one real Kafka broker and one real PostgreSQL server for the whole run.

Per test, isolation comes from a fresh topic prefix and a fresh database, so tests never see each
other's records and the same servers serve the whole suite (and a developer's running stack).
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from enrollstream import stack
from enrollstream.adapters.kafka.topics import Topics, delete_topics, ensure_topics
from enrollstream.adapters.postgres.migrations import migrate
from enrollstream.config import Settings

TEST_PARTITIONS = 3

# Real SMTP and DNS servers on 127.0.0.1 (tests/servers): smtp_server, dns_server, manual_clock.
pytest_plugins = ["tests.servers.fixtures"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        elif "acceptance" in parts:
            item.add_marker(pytest.mark.acceptance)


_STACK = pytest.StashKey[tuple[Settings, list[str]]]()


def pytest_configure(config: pytest.Config) -> None:
    """The run's servers, started once by the process that runs the session (with `-n`, the xdist
    controller, before its workers start): from the environment, else the local stack. The workers
    inherit them through the environment, so they never race to start a stack of their own."""
    if hasattr(config, "workerinput"):
        return
    settings = Settings()
    state = stack.up(settings)
    config.stash[_STACK] = (settings, state.started)
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = state.endpoints.kafka_bootstrap_servers
    os.environ["DATABASE_URL"] = state.endpoints.database_url


def pytest_unconfigure(config: pytest.Config) -> None:
    settings, started = config.stash.get(_STACK, (None, []))
    if settings is not None and started:
        stack.down(settings)  # only what this run started; a developer's running stack stays


@pytest.fixture(scope="session")
def endpoints() -> stack.Endpoints:
    """The real servers this run uses (see pytest_configure)."""
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    return stack.up(Settings()).endpoints


@pytest.fixture
def settings(
    endpoints: stack.Endpoints, topics: Topics, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    return Settings(
        kafka_bootstrap_servers=endpoints.kafka_bootstrap_servers,
        database_url=database_url,
        topic_prefix=topics.prefix,
        partitions=TEST_PARTITIONS,
        group_id=f"{topics.prefix}group",
        # The suite's commands and ManualClocks use fixed days (2026-03-02, 2026-11-22, days ahead), not
        # the broker's clock: the issued_at skew check is off here and on, with its defaults, in
        # tests/integration/test_poison_inputs.py.
        command_max_future_skew_s=0,
        command_max_age_s=0,
        # The decider's stores under the session's temporary directory (each group has its own path).
        state_dir=tmp_path_factory.getbasetemp() / "decider-state",
    )


@pytest.fixture
def topics(endpoints: stack.Endpoints, topic_deleter: _Cleaner) -> Iterator[Topics]:
    """A fresh, bootstrapped set of topics under a prefix of this test's own, deleted afterwards (in the
    background): a suite's thousands of partitions would otherwise keep the broker's files open until it
    runs out of descriptors (and fails every test after that)."""
    topics = Topics(prefix=f"test-{uuid.uuid4().hex[:10]}.")
    asyncio.run(ensure_topics(endpoints.kafka_bootstrap_servers, topics, TEST_PARTITIONS))
    yield topics
    bootstrap = endpoints.kafka_bootstrap_servers
    topic_deleter.submit(topics.prefix, lambda: delete_topics(bootstrap, topics.prefix))


def _with_database(url: str, database: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{database}"


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


class _Cleaner:
    """Runs cleanups (dropping a test's database, deleting its topics) on a thread of its own, so no test
    waits for the one before it to be cleaned up (dropping a migrated database takes the server a second
    or more; deleting a test's topics, a few tenths). Each test's database and topics have names of their
    own, so a cleanup still running never touches the next test's data; the session waits for every
    cleanup at its end and fails if one failed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.jobs: queue.Queue[tuple[str, Callable[[], Coroutine[Any, Any, None]]] | None] = queue.Queue()
        self.failures: list[str] = []
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def submit(self, what: str, job: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.jobs.put((what, job))

    def _run(self) -> None:
        while (item := self.jobs.get()) is not None:
            what, job = item
            try:
                asyncio.run(job())
            except Exception as exc:  # reported at the session's end, not lost
                self.failures.append(f"{what}: {exc!r}")

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=300)
        assert not self.thread.is_alive(), f"{self.name}: still cleaning up after 300s"
        assert not self.failures, f"{self.name}: {self.failures}"


class _DatabaseDropper(_Cleaner):
    def __init__(self, admin_url: str) -> None:
        super().__init__("drop-test-databases")
        self.admin_url = admin_url

    def drop(self, name: str) -> None:
        self.submit(name, lambda: _admin(self.admin_url, f'drop database if exists "{name}" with (force)'))


@pytest.fixture(scope="session")
def database_dropper(endpoints: stack.Endpoints) -> Iterator[_DatabaseDropper]:
    dropper = _DatabaseDropper(endpoints.database_url)
    try:
        yield dropper
    finally:
        dropper.close()


@pytest.fixture(scope="session")
def topic_deleter() -> Iterator[_Cleaner]:
    # Its own thread: deleting topics keeps up with the tests, dropping databases does not always.
    deleter = _Cleaner("delete-test-topics")
    try:
        yield deleter
    finally:
        deleter.close()


@pytest.fixture
def empty_database_url(endpoints: stack.Endpoints, database_dropper: _DatabaseDropper) -> Iterator[str]:
    """A fresh, empty database on the real server, dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(endpoints.database_url, f'create database "{name}"'))
    try:
        yield _with_database(endpoints.database_url, name)
    finally:
        database_dropper.drop(name)


@pytest.fixture(scope="session")
def migrated_template(endpoints: stack.Endpoints, database_dropper: _DatabaseDropper) -> Iterator[str]:
    """One database with every migration applied, once per run: each test's database is a copy of it.
    Nothing connects to it after its migration (CREATE DATABASE ... TEMPLATE needs it idle)."""
    name = f"test_template_{uuid.uuid4().hex[:12]}"

    async def create_and_migrate() -> None:
        await _admin(endpoints.database_url, f'create database "{name}"')
        conn = await asyncpg.connect(_with_database(endpoints.database_url, name))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    asyncio.run(create_and_migrate())
    try:
        yield name
    finally:
        database_dropper.drop(name)


class _DatabaseCopies:
    """Copies of the migrated template made ahead, on a thread of their own, so a test takes a ready one
    instead of waiting for its copy (CREATE DATABASE ... TEMPLATE never connects to the template, so
    copies may be made while tests run). Copies left at the end are dropped with the others."""

    def __init__(self, admin_url: str, template: str, dropper: _DatabaseDropper, ahead: int = 2) -> None:
        self.admin_url, self.template, self.dropper = admin_url, template, dropper
        self.ready: queue.Queue[str] = queue.Queue(maxsize=ahead)
        self.failures: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="copy-test-databases", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            name = f"test_{uuid.uuid4().hex[:12]}"
            try:
                asyncio.run(_admin(self.admin_url, f'create database "{name}" template "{self.template}"'))
            except Exception as exc:
                self.failures.append(f"{name}: {exc!r}")
                return
            while True:
                try:
                    self.ready.put(name, timeout=0.2)
                    break
                except queue.Full:
                    if self.stopping.is_set():
                        self.dropper.drop(name)
                        return

    def take(self) -> str:
        try:
            return self.ready.get(timeout=120)
        except queue.Empty:
            raise AssertionError(f"no test database copy within 120s: {self.failures}") from None

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=60)
        while not self.ready.empty():
            self.dropper.drop(self.ready.get_nowait())
        assert not self.failures, f"test databases not copied: {self.failures}"


@pytest.fixture(scope="session")
def database_copies(
    endpoints: stack.Endpoints, migrated_template: str, database_dropper: _DatabaseDropper
) -> Iterator[_DatabaseCopies]:
    copies = _DatabaseCopies(endpoints.database_url, migrated_template, database_dropper)
    try:
        yield copies
    finally:
        copies.close()


@pytest.fixture
def database_url(
    endpoints: stack.Endpoints, database_copies: _DatabaseCopies, database_dropper: _DatabaseDropper
) -> Iterator[str]:
    """A fresh database with every migration applied: a copy of the run's migrated template (the same
    schema and migration records that migrating it would give, without running them per test)."""
    name = database_copies.take()
    try:
        yield _with_database(endpoints.database_url, name)
    finally:
        database_dropper.drop(name)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()
