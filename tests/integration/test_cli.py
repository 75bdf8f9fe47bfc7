"""The command line, run as a user runs it (a subprocess), against the real servers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from enrollstream import stack
from enrollstream.adapters.kafka.topics import Topics
from enrollstream.stack.processes import free_port

CLI = [sys.executable, "-m", "enrollstream.cli"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        check=False,
    )


def test_stack_status_reports_both_services_ready(endpoints: stack.Endpoints) -> None:
    result = run("stack", "status")
    assert result.returncode == 0, result.stderr
    assert "kafka" in result.stdout and "postgres" in result.stdout
    assert "NO" not in result.stdout


def test_topics_and_migrate_are_idempotent(endpoints: stack.Endpoints, empty_database_url: str) -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": endpoints.kafka_bootstrap_servers,
        "DATABASE_URL": empty_database_url,
        "ENROLLSTREAM_TOPIC_PREFIX": f"cli-{os.getpid()}-{free_port()}.",
        "ENROLLSTREAM_PARTITIONS": "2",
    }
    expected = len(Topics().specs(2))  # every topic the contract names
    first = run("topics", env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("created") == expected
    second = run("topics", env=env)
    assert second.returncode == 0, second.stderr
    assert "created" not in second.stdout and second.stdout.count("exists") == expected

    migrated = run("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert "applied: 0001_initial" in migrated.stdout
    again = run("migrate", env=env)
    assert again.returncode == 0 and "up to date" in again.stdout


def test_an_unreachable_database_is_one_readable_line_and_a_non_zero_exit(endpoints: stack.Endpoints) -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": endpoints.kafka_bootstrap_servers,
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/postgres",
    }
    result = run("migrate", env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr


def test_the_console_script_is_installed() -> None:
    script = shutil.which("enrollstream", path=str(Path(sys.executable).parent))
    assert script is not None
    result = subprocess.run([script, "--help"], capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0
    for command in ("stack", "topics", "migrate", "worker", "demo"):
        assert command in result.stdout
