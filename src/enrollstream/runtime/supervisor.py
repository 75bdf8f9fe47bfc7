"""`enrollstream worker --processes N`: N worker processes with the same roles, kept running.

Each child is an ordinary `enrollstream worker` process. Children running the same role join the same
consumer group, so Kafka splits that role's partitions between them (the partitions bound how many
children can do work: docs/architecture.md "Scale out"). The supervisor only starts, watches, restarts
and stops them; it consumes nothing and holds no state.

- A stop signal (SIGTERM, SIGINT) is forwarded to every child as SIGTERM: each drains its batch in flight,
  commits and leaves its groups. The supervisor exits 0 once every child has exited 0.
- A child that exits while nobody asked it to is restarted after a backoff (doubling, bounded). A child
  that keeps failing soon after it starts (`RestartPolicy.limit` times in a row, each within
  `quick_s` of its start) is given up on: the supervisor stops the other children and exits 1, naming it.
- Children are named `worker-<i>`; the name is in every log line they write (`worker` field).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from enrollstream.config import InvalidSettings, Settings

log = logging.getLogger(__name__)

# Roles that listen on a fixed, configured port (a second process would fail to bind it): they run in
# the first child only. For more of them, run `enrollstream worker --roles api` processes behind a load
# balancer. Every other role either shares a consumer group (decider, projector, dispatcher, inbound,
# relay: the partitions are split) or is safe any number of times (scheduler: SKIP LOCKED claims with a
# lease), so it runs in every child.
FIRST_CHILD_ONLY_ROLES = ("api", "unsubscribe", "receiver")  # receiver: its SMTP port
MAX_PROCESSES = 64
# Set in a child's environment: its name (in its logs) and its supervisor (it stops when that dies).
NAME_VARIABLE = "ENROLLSTREAM_WORKER_NAME"
SUPERVISOR_VARIABLE = "ENROLLSTREAM_SUPERVISOR_PID"


def child_name(index: int) -> str:
    return f"worker-{index}"


def child_roles(roles: Iterable[str], index: int) -> tuple[str, ...]:
    """The roles child `index` runs: all of them in the first, all but the port-binding ones in the rest."""
    roles = tuple(roles)
    return roles if index == 0 else tuple(r for r in roles if r not in FIRST_CHILD_ONLY_ROLES)


def check_processes(settings: Settings, roles: Iterable[str], processes: int) -> None:
    """What N processes need, checked before any starts: InvalidSettings says what cannot work."""
    roles = tuple(roles)
    if not 1 <= processes <= MAX_PROCESSES:
        raise InvalidSettings(f"--processes must be between 1 and {MAX_PROCESSES}, not {processes}")
    if processes > 1 and not child_roles(roles, 1):
        raise InvalidSettings(
            f"--processes {processes}: the roles {', '.join(roles)} run in one process only (they bind "
            "a fixed port); run several `enrollstream worker` processes with their own ports instead"
        )
    if settings.http_port and settings.http_port + processes - 1 > 65535:
        raise InvalidSettings(
            f"ENROLLSTREAM_HTTP_PORT={settings.http_port}: the children's ports "
            f"{settings.http_port}..{settings.http_port + processes - 1} do not fit below 65536"
        )


def child_environment(base: Mapping[str, str], settings: Settings, index: int) -> dict[str, str]:
    """The child's environment: the supervisor's, with its own name and its own /metrics port (the
    configured port + index, so each is predictable; 0 stays 0: any free port, logged at start)."""
    env = dict(base)
    env[NAME_VARIABLE] = child_name(index)
    env[SUPERVISOR_VARIABLE] = str(os.getpid())
    env["ENROLLSTREAM_HTTP_PORT"] = str(settings.http_port + index if settings.http_port else 0)
    return env


@dataclass(frozen=True)
class RestartPolicy:
    limit: int = 5  # failures in a row, each soon after the start, before the supervisor gives up
    quick_s: float = 60.0  # a child exiting sooner than this after its start failed quickly
    backoff_s: float = 1.0  # the wait before the first restart; doubles with each quick failure
    backoff_max_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RestartPolicy:
        return cls(
            limit=settings.worker_restart_limit,
            quick_s=settings.worker_quick_failure_s,
            backoff_s=settings.worker_restart_backoff_s,
            backoff_max_s=settings.worker_restart_backoff_max_s,
        )

    def delay(self, failures: int) -> float:
        """The wait before restarting a child that has failed `failures` (>= 1) times in a row."""
        return min(self.backoff_max_s, self.backoff_s * float(2 ** min(failures - 1, 30)))


@dataclass
class Supervisor:
    """Keeps `count` children running: `command(i)` is child i's argv, `environment(i)` its env."""

    count: int
    command: Callable[[int], list[str]]
    environment: Callable[[int], dict[str, str]]
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    # After a stop, how long the children may take to exit before they are killed (their own drain bound
    # plus some slack to start and stop their clients).
    stop_timeout_s: float = 40.0
    children: dict[int, asyncio.subprocess.Process] = field(default_factory=dict)
    gave_up: str | None = None  # why the supervisor stopped the children on its own
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _exit_codes: dict[int, int] = field(default_factory=dict)

    async def run(self) -> int:
        """Until stopped (or a child is given up on): 0 if every child exited cleanly, else 1."""
        slots = [asyncio.create_task(self._keep(index)) for index in range(self.count)]
        await self._stopping.wait()
        done, pending = await asyncio.wait(slots, timeout=self.stop_timeout_s)
        if pending:
            log.error(
                "children did not exit within %ss of the stop; killing them",
                self.stop_timeout_s,
                extra={"children": [child_name(i) for i in self.children]},
            )
            for process in list(self.children.values()):
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            await asyncio.wait(pending, timeout=10)
            return 1
        for task in done:
            task.result()  # the supervisor's own bug, if any, is not swallowed
        unclean = {
            child_name(i): code for i, code in self._exit_codes.items() if code not in (0, -signal.SIGTERM)
        }
        if unclean:
            log.error("children exited uncleanly after the stop", extra={"exit_codes": unclean})
        return 1 if self.gave_up is not None or unclean else 0

    def stop(self) -> None:
        """Forward the stop to every child (SIGTERM: drain, commit, leave the groups)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        log.info("stopping the children", extra={"children": [child_name(i) for i in self.children]})
        for process in list(self.children.values()):
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)

    async def _keep(self, index: int) -> None:
        name = child_name(index)
        failures = 0  # quick failures in a row
        while not self._stopping.is_set():
            started = time.monotonic()
            process = await asyncio.create_subprocess_exec(*self.command(index), env=self.environment(index))
            self.children[index] = process
            log.info("started %s (pid %d)", name, process.pid, extra={"child": name, "pid": process.pid})
            if self._stopping.is_set():  # the stop came while it was being started
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
            code = await process.wait()
            del self.children[index]
            lived = time.monotonic() - started
            if self._stopping.is_set():
                self._exit_codes[index] = code
                log.info(
                    "%s (pid %d) exited with status %d",
                    name, process.pid, code,
                    extra={"child": name, "pid": process.pid, "exit_code": code},
                )  # fmt: skip
                return
            failures = failures + 1 if lived < self.policy.quick_s else 1
            log.error(
                "%s (pid %d) exited unexpectedly with status %d after %.1f s",
                name, process.pid, code, lived,
                extra={"child": name, "pid": process.pid, "exit_code": code, "quick_failures": failures},
            )  # fmt: skip
            if failures >= self.policy.limit:
                self.gave_up = (
                    f"{name} failed {failures} times in a row, each within {self.policy.quick_s:g} s of "
                    f"its start (last exit status {code}); giving up and stopping the other children"
                )
                log.error(self.gave_up, extra={"child": name})
                self.stop()
                return
            delay = self.policy.delay(failures)
            log.info("restarting %s in %.1f s", name, delay, extra={"child": name})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)


def worker_argv(roles: Iterable[str]) -> list[str]:
    """A child: this interpreter running `enrollstream worker` with these roles, in one process."""
    return [sys.executable, "-m", "enrollstream", "worker", "--roles", ",".join(roles)]


def die_with_supervisor() -> None:
    """In a child: stop (SIGTERM, so it drains) if its supervisor dies, even by SIGKILL, rather than run
    on unsupervised beside the supervisor's replacement. Linux only (prctl); elsewhere a no-op."""
    supervisor = os.environ.get(SUPERVISOR_VARIABLE)
    if supervisor is None or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if str(os.getppid()) != supervisor:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
