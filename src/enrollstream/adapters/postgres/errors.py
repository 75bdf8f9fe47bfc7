"""Which PostgreSQL errors are the database's (retry) and which are the data's (never retry).

A role that writes to PostgreSQL tells the two apart: a lost connection, a server that is restarting or
refusing connections, a deadlock or a serialization failure pass, so it waits (`Backoff`) and tries the
same work again; a value PostgreSQL refuses (`DataError`: a NUL character, an integer out of range; an
integrity violation) fails again on every try, so it is the record's own failure and is dealt with per
record (the projector quarantines it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import asyncpg
from asyncpg.exceptions import _base as asyncpg_base

# Refused for what the statement carries: the same values fail the same way on every try. The client
# side DataError (asyncpg could not encode an argument, e.g. an int above int4) is an InterfaceError
# too, so it is tested before the connection errors.
DATA_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DataError,  # SQLSTATE class 22
    asyncpg_base.DataError,  # client-side encoding of an argument
    asyncpg.IntegrityConstraintViolationError,  # class 23
)

# The database, not the data: these pass.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable
    TimeoutError,  # asyncio.TimeoutError too
    asyncpg.PostgresConnectionError,  # class 08, ConnectionDoesNotExistError
    asyncpg.InterfaceError,  # "connection is closed", a pool being reset
    asyncpg.OperatorInterventionError,  # class 57: admin shutdown, cannot connect now
    asyncpg.InsufficientResourcesError,  # class 53: too many connections, disk full
    asyncpg.TransactionRollbackError,  # class 40: deadlock, serialization failure
)


def is_data_error(exc: BaseException) -> bool:
    return isinstance(exc, DATA_ERRORS)


def is_connection_error(exc: BaseException) -> bool:
    return not is_data_error(exc) and isinstance(exc, CONNECTION_ERRORS)


class Backoff:
    """Exponential waits between tries, capped; `reset()` after a success."""

    def __init__(self, first_s: float = 0.2, most_s: float = 2.0) -> None:
        self.first_s = first_s
        self.most_s = most_s
        self._next = first_s
        self.failures = 0

    def reset(self) -> None:
        self._next = self.first_s
        self.failures = 0

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self.most_s, self._next * 2)
        self.failures += 1
        return delay

    async def wait(self, stop: asyncio.Event | None = None) -> None:
        """Sleep the next delay, or less if `stop` is set meanwhile."""
        delay = self.next_delay()
        if stop is None:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)


async def retry_while_unavailable(
    work: Callable[[], Awaitable[object]],
    stop: asyncio.Event,
    on_retry: Callable[[BaseException], None],
    still_wanted: Callable[[], bool] = lambda: True,
) -> bool:
    """`work()` until it completes, waiting out PostgreSQL being unavailable (`on_retry` hears each
    connection error before the wait); any other error is raised. False if `stop` was set or the work
    was no longer wanted before it completed."""
    backoff = Backoff()
    while not stop.is_set() and still_wanted():
        try:
            await work()
            return True
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            on_retry(exc)
            await backoff.wait(stop)
    return False
