"""Pytest fixtures for the real test servers; tests/conftest.py loads them with `pytest_plugins`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .clock import ManualClock
from .dns import LocalDnsServer
from .smtp import RecordingSmtpServer


@pytest.fixture
def smtp_server() -> Iterator[RecordingSmtpServer]:
    """A fresh recording SMTP server on 127.0.0.1; every recipient accepted unless told otherwise."""
    with RecordingSmtpServer() as server:
        yield server


@pytest.fixture
def dns_server() -> Iterator[LocalDnsServer]:
    """A fresh, empty authoritative DNS server on 127.0.0.1 (UDP and TCP); unknown names are NXDOMAIN."""
    with LocalDnsServer() as server:
        yield server


@pytest.fixture
def manual_clock() -> ManualClock:
    return ManualClock()
