"""The API's idempotent command ids and its opaque page cursors (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from enrollstream.adapters.postgres.read_side import PageCursor
from enrollstream.api.commands import command_id_for
from enrollstream.api.enrollments import decode_cursor, encode_cursor
from enrollstream.api.errors import ApiError


def test_a_key_gives_the_same_command_id_per_account_route_and_part_and_none_gives_a_new_one() -> None:
    route = "POST /campaigns/welcome/enroll_contact"
    same = command_id_for("acct-a", route, "k1")
    assert same == command_id_for("acct-a", route, "k1") and len(same) <= 512
    others = {
        command_id_for("acct-b", route, "k1"),  # another account's same key: another command
        command_id_for("acct-a", "POST /campaigns/other/enroll_contact", "k1"),
        command_id_for("acct-a", route, "k2"),
        command_id_for("acct-a", route, "k1", "e-1"),
    }
    assert same not in others and len(others) == 4
    assert command_id_for("acct-a", route, None) != command_id_for("acct-a", route, None)


def test_a_cursor_round_trips_and_anything_else_is_a_422_on_query_cursor() -> None:
    cursor = PageCursor(datetime(2026, 11, 1, 9, 30, 0, 123456, tzinfo=UTC), "e-1/x")
    assert decode_cursor(encode_cursor(cursor)) == cursor
    for bad in (
        "",
        "not-a-cursor",
        "e30",
        "eyJhdCI6IDF9",
        "eyJhdCI6ICIyMDI2LTExLTAxVDA5OjMwOjAwIiwgImlkIjogImUifQ",
    ):
        with pytest.raises(ApiError) as raised:
            decode_cursor(bad)
        assert raised.value.status == 422 and [f.field for f in raised.value.fields or []] == ["query.cursor"]
