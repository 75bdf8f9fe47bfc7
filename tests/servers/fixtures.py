"""Pytest fixtures for the real test servers; tests/conftest.py loads them with `pytest_plugins`."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

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


@pytest.fixture(scope="session")
def localhost_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (made with the openssl command): (certfile, keyfile).

    Clients trust it with `ssl.create_default_context(cafile=certfile)`.
    """
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder: Path = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)
