"""Which errors a PostgreSQL writer retries (the database's) and which it quarantines (the record's)."""

from __future__ import annotations

import asyncpg
import pytest
from asyncpg.exceptions import _base as asyncpg_base
from pydantic import BaseModel, ValidationError

from enrollstream.adapters.postgres.errors import is_connection_error, is_data_error
from enrollstream.runtime.projector import is_record_error


class _Int(BaseModel):
    n: int


def _validation_error() -> ValidationError:
    try:
        _Int.model_validate({"n": "x"})
    except ValidationError as exc:
        return exc
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.CharacterNotInRepertoireError("invalid byte sequence for encoding UTF8: 0x00"),
        asyncpg.NumericValueOutOfRangeError("integer out of range"),
        asyncpg_base.DataError("invalid input for query argument $1: 2147483648 (value out of int32 range)"),
        asyncpg.NotNullViolationError("null value in column"),
    ],
)
def test_values_postgres_refuses_are_the_records_and_never_retried(error: BaseException) -> None:
    assert is_data_error(error) and is_record_error(error) and not is_connection_error(error)


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connect call failed"),
        ConnectionResetError(),
        TimeoutError(),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.InterfaceError("connection is closed"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.TooManyConnectionsError("sorry, too many clients already"),
        asyncpg.DeadlockDetectedError("deadlock detected"),
    ],
)
def test_connection_errors_are_the_databases_and_retried(error: BaseException) -> None:
    assert is_connection_error(error) and not is_record_error(error)


def test_a_record_that_does_not_parse_or_fold_is_the_records() -> None:
    assert is_record_error(_validation_error())
    assert is_record_error(OverflowError("value out of int32 range"))  # asyncpg's COPY encoder
    assert is_record_error(KeyError("step"))


def test_an_error_of_the_database_itself_is_retried_not_quarantined() -> None:
    # A missing table would refuse every event alike: a deployment to fix, not records to set aside.
    assert not is_record_error(asyncpg.UndefinedTableError('relation "enrollments" does not exist'))
