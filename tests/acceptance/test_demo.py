"""`make demo`, short: the real CLI in a subprocess against the session's servers, checking itself.

The demo runs its own topic prefix and its own database (named here, dropped afterwards), so it
disturbs nothing else on the servers. Its summary compares what the SMTP sink received with the read
models, the delivery ledger and the stats cards, and the command exits non-zero on any mismatch.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid

import asyncpg

from enrollstream import stack
from enrollstream.config import Settings

CONTACTS = 40


async def _drop(server_url: str, database: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'drop database if exists "{database}" with (force)')
    finally:
        await conn.close()


def test_the_quick_demo_sends_replies_bounces_skips_and_unenrolls_and_its_summary_adds_up(
    endpoints: stack.Endpoints,
) -> None:
    database = f"demo_test_{uuid.uuid4().hex[:10]}"
    # With servers from the environment the demo starts nothing and leaves the local stack's record
    # alone: were it overwritten, the session's `stack down` would stop nothing and leave servers behind.
    record = Settings().stack_dir / "stack.json"
    before = record.read_text() if record.exists() else None
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": endpoints.kafka_bootstrap_servers,
        "DATABASE_URL": endpoints.database_url,
        "COLUMNS": "160",
    }
    try:
        result = subprocess.run(
            [sys.executable, "-m", "enrollstream.cli", "demo", "--quick", "--no-wait",
             "--contacts", str(CONTACTS), "--database", database],
            capture_output=True, text=True, timeout=240, env=env, check=False,
        )  # fmt: skip
    finally:
        asyncio.run(_drop(endpoints.database_url, database))
    output = result.stdout + result.stderr
    assert (record.read_text() if record.exists() else None) == before
    assert result.returncode == 0, output
    assert "Traceback" not in output, output
    line = re.search(r"^demo: (\w+) contacts=(\d+) emails=(\d+) failed_checks=(\d+)", result.stdout, re.M)
    assert line is not None, output
    verdict, contacts, emails, failed = line.groups()
    assert (verdict, int(contacts), int(failed)) == ("ok", CONTACTS, 0), output
    ordinary = CONTACTS - 6  # three repliers, a leaver, a bouncer and a contact without MX
    # Three emails each to the ordinary contacts; one to three each to the repliers and the leaver.
    assert ordinary * 3 + 4 <= int(emails) <= ordinary * 3 + 12, output
    for phase in ("1. Setting up", "2. The campaign", "3. Enrolling", "4. Sending", "5. Summary"):
        assert phase in result.stdout
    assert result.stdout.count("reply ") >= 3 and "bounce " in result.stdout and "unenroll " in result.stdout
    assert " NO " not in result.stdout, output
    # The console of the demo's worker: its URL and a key for the demo account (docs/console.md).
    assert re.search(r"console: http://127\.0\.0\.1:\d+/console/campaigns/demo-welcome/enrollments", output)
    assert re.search(r"key \(paste it into the login form\): es_\w+_\S+", output), output
