"""The operator commands, run as a user runs them (subprocesses), against the real stack and a worker."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.config import Settings
from enrollstream.stack.processes import free_port
from tests.support import eventually, publish, read_until, running_worker

CAMPAIGN_YAML = """\
campaign_id: welcome
account_id: acct-cli
version: 1
name: Welcome
steps:
  - channel: email
    delay: PT1H
    content: {subject: "Hi {{ name }}", body: "Hello"}
  - channel: email
    delay: P1D
    content: {subject: "Again", body: "Still there?"}
"""


@dataclass
class Ran:
    code: int
    out: str
    err: str

    @property
    def one_error_line(self) -> bool:
        lines = [line for line in self.err.splitlines() if line.strip()]
        return "Traceback" not in self.out + self.err and len(lines) == 1


def cli_env(settings: Settings) -> dict[str, str]:
    assert settings.kafka_bootstrap_servers and settings.database_url
    return {
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "DATABASE_URL": settings.database_url,
        "ENROLLSTREAM_TOPIC_PREFIX": settings.topic_prefix,
        "ENROLLSTREAM_PARTITIONS": str(settings.partitions),
        "ENROLLSTREAM_ACCOUNT": "acct-cli",
    }


async def cli(*args: str, env: dict[str, str]) -> Ran:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "enrollstream", *args,
        env={**os.environ, "COLUMNS": "250", **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


async def test_apply_enroll_stop_then_the_pages_the_stats_and_the_timeline_show_it(
    settings: Settings, topics: Topics, tmp_path: Path
) -> None:
    env = cli_env(settings)
    campaign = tmp_path / "welcome.yaml"
    campaign.write_text(CAMPAIGN_YAML)
    applied = await cli("campaign", "apply", str(campaign), env=env)
    assert applied.code == 0, applied.err
    assert "'welcome' version 1 published" in applied.out

    async with running_worker(settings):
        for contact, name in (("c1", "Ada Lovelace"), ("c2", "Grace Hopper"), ("c3", "Alan Turing")):
            enrolled = await cli("enroll", contact, "welcome", "--name", name, "--email", f"{contact}@x.org",
                                 env=env)  # fmt: skip
            assert enrolled.code == 0, enrolled.err
            assert enrolled.out.startswith("accepted: Enroll.v1")
        again = await cli("enroll", "c1", "welcome", "--name", "Ada", env=env)
        assert again.code == 1 and "contact_already_enrolled" in again.err and again.one_error_line
        stopped = await cli("stop", "c2", "--campaign", "welcome", "--note", "asked by phone", env=env)
        # The stop looks the enrollment up in the read model: the projector may lag a moment.
        for _ in range(50):
            if stopped.code == 0:
                break
            await asyncio.sleep(0.2)
            stopped = await cli("stop", "c2", "--campaign", "welcome", "--note", "asked by phone", env=env)
        assert stopped.code == 0, stopped.err

        async def projected() -> Ran:
            for _ in range(50):
                page = await cli("enrollments", "welcome", "--status", "stopped", env=env)
                if "Grace Hopper" in page.out:
                    return page
                await asyncio.sleep(0.2)
            return page

        only_stopped = await projected()

        async def refusal_projected() -> Ran:
            for _ in range(50):
                why = await cli("why", "c1", env=env)
                if "contact_already_enrolled" in why.out:
                    return why
                await asyncio.sleep(0.2)
            return why

        why = await refusal_projected()
        stop_in_words = await cli("why", "c2", "--words", env=env)
    assert only_stopped.code == 0, only_stopped.err
    # In plain words, the stop names its command and who sent it, and the step it left unsent.
    assert stop_in_words.code == 0, stop_in_words.err
    stopped_line = next(line for line in stop_in_words.out.splitlines() if "Stopped by cli" in line)
    assert "Caused by Stop " in stopped_line and "from cli at " in stopped_line, stopped_line
    assert "step 1 of 2, due " in stopped_line and stopped_line.endswith("will not be sent."), stopped_line
    # "Why" lists the refused second enroll with its code and who asked, after the enrollment it met.
    assert why.code == 0, why.err
    assert why.out.index("ContactEnrolled") < why.out.index("contact_already_enrolled"), why.out
    assert "rejected" in why.out and "cli" in why.out
    elsewhere = await cli("why", "c1", "--account", "acct-other", env=env)
    assert elsewhere.code == 1 and elsewhere.one_error_line and "no decisions" in elsewhere.err
    assert "Grace Hopper" in only_stopped.out and "Ada Lovelace" not in only_stopped.out

    everyone = await cli("enrollments", "welcome", "--limit", "2", env=env)
    assert everyone.code == 0 and "Ada Lovelace" in everyone.out and "Step 1 of 2" in everyone.out
    assert "next page: --after " in everyone.out
    cursor = everyone.out.split("next page: --after ")[1].split()[0]
    rest = await cli("enrollments", "welcome", "--limit", "2", "--after", cursor, env=env)
    assert "Alan Turing" in rest.out and "Ada Lovelace" not in rest.out and "next page" not in rest.out
    searched = await cli("enrollments", "welcome", "--search", "hop", env=env)
    assert "Grace Hopper" in searched.out and "Alan Turing" not in searched.out

    stats = await cli("stats", "welcome", env=env)
    assert stats.code == 0, stats.err
    cells = [line.strip("│ ").split("│") for line in stats.out.splitlines() if line.count("│") >= 3]
    cards = {cell[0].strip(): cell[1].strip() for cell in cells}
    assert (cards["total"], cards["active"], cards["stopped"]) == ("3", "2", "1"), stats.out

    timeline = await cli("timeline", "c2", env=env)
    assert timeline.code == 0, timeline.err
    assert "ContactEnrolled" in timeline.out and "EnrollmentStopped" in timeline.out
    assert "cmd-" in timeline.out  # each line names the command that caused it


async def test_an_enroll_that_is_skipped_exits_3_naming_the_skip_and_why_shows_it_skipped(
    settings: Settings, topics: Topics, tmp_path: Path
) -> None:
    env = cli_env(settings)
    campaign = tmp_path / "welcome.yaml"
    campaign.write_text(CAMPAIGN_YAML)
    assert (await cli("campaign", "apply", str(campaign), env=env)).code == 0

    async with running_worker(settings):
        # An email campaign and no email address: skipped (missing_address), not enrolled.
        skipped = await cli("enroll", "c9", "welcome", "--name", "No Mail", env=env)

        async def skip_projected() -> Ran:
            for _ in range(50):
                why = await cli("why", "c9", env=env)
                if "EnrollmentSkipped" in why.out:
                    return why
                await asyncio.sleep(0.2)
            return why

        why = await skip_projected()
    assert skipped.code == 3, (skipped.code, skipped.out, skipped.err)
    assert skipped.one_error_line and "skipped (missing_address)" in skipped.err
    assert "No email address for an email step" in skipped.err and "enrollment" not in skipped.out
    assert why.code == 0, why.err
    assert "EnrollmentSkipped (skipped)" in why.out, why.out


async def test_clear_errors_unknown_campaign_bad_files_and_an_unreachable_broker(
    settings: Settings, topics: Topics, tmp_path: Path
) -> None:
    env = cli_env(settings)
    unknown = await cli("stats", "no-such-campaign", env=env)
    assert (
        unknown.code == 1 and unknown.one_error_line and "unknown campaign 'no-such-campaign'" in unknown.err
    )

    broken = tmp_path / "broken.yaml"
    broken.write_text("campaign_id: [unclosed\n")
    bad_yaml = await cli("campaign", "apply", str(broken), env=env)
    assert bad_yaml.code == 1 and bad_yaml.one_error_line and "not valid YAML" in bad_yaml.err

    invalid = tmp_path / "invalid.json"
    invalid.write_text('{"campaign_id": "x", "account_id": "acct-cli", "version": 1, "steps": "none"}')
    bad_campaign = await cli("campaign", "apply", str(invalid), env=env)
    assert bad_campaign.code == 1 and bad_campaign.one_error_line and "steps" in bad_campaign.err

    missing = await cli("campaign", "apply", str(tmp_path / "nope.yaml"), env=env)
    assert missing.code == 1 and missing.one_error_line

    nowhere = {**env, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}
    unreachable = await cli("enroll", "c1", "welcome", env=nowhere)
    assert unreachable.code == 1 and unreachable.one_error_line, unreachable.err


async def test_dead_letters_are_listed_with_their_reason_and_can_be_retried(
    settings: Settings, topics: Topics
) -> None:
    env = cli_env(settings)
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    async with running_worker(settings):
        await publish(bootstrap, topics.commands, b"{broken json", key="acct-cli/c9")
        await read_until(bootstrap, topics.dead_letters, lambda rs: len(rs) == 1)
        listed = await cli("dlq", "list", env=env)
        assert listed.code == 0, listed.err
        assert "not a valid command" in listed.out and f"{topics.commands}:" in listed.out
        letter_id = next(
            line.split("│")[1].strip() for line in listed.out.splitlines() if "not a valid" in line
        )
        retried = await cli("dlq", "retry", letter_id, env=env)
        assert retried.code == 0, retried.err
        # Still broken, so the decider dead-letters it again: it went through the commands topic once more.
        letters = await read_until(bootstrap, topics.dead_letters, lambda rs: len(rs) == 2)
    assert letters[1].value == b"{broken json"
    nonsense = await cli("dlq", "retry", "9:999", env=env)
    assert nonsense.code == 1 and nonsense.one_error_line and "no dead letter 9:999" in nonsense.err


async def test_pause_and_resume_publish_new_versions_that_keep_the_pause_history(
    settings: Settings, topics: Topics, tmp_path: Path
) -> None:
    from enrollstream.runtime.campaigns import CampaignCatalog

    env = cli_env(settings)
    campaign = tmp_path / "welcome.yaml"
    campaign.write_text(CAMPAIGN_YAML)
    assert (await cli("campaign", "apply", str(campaign), env=env)).code == 0
    paused = await cli("campaign", "pause", "welcome", env=env)
    assert paused.code == 0, paused.err
    assert "'welcome' version 2: status paused" in paused.out
    again = await cli("campaign", "pause", "welcome", env=env)
    assert again.code == 1 and again.one_error_line and "already paused" in again.err
    resumed = await cli("campaign", "resume", "welcome", env=env)
    assert resumed.code == 0, resumed.err
    assert "'welcome' version 3: status active" in resumed.out
    # Re-applying the file (version 4) keeps the history the operators' pauses left.
    campaign.write_text(CAMPAIGN_YAML.replace("version: 1", "version: 4"))
    assert (await cli("campaign", "apply", str(campaign), env=env)).code == 0

    assert settings.kafka_bootstrap_servers
    catalog = CampaignCatalog(settings.kafka_bootstrap_servers, topics.campaigns)
    await catalog.start()
    try:
        latest = catalog.get("acct-cli", "welcome")
    finally:
        await catalog.stop()
    assert latest is not None and (latest.version, latest.status) == (4, "active")
    [pause] = latest.pauses
    assert pause.ended_at is not None and pause.ended_at >= pause.started_at


async def test_data_that_looks_like_rich_markup_is_printed_literally(
    settings: Settings, topics: Topics, tmp_path: Path, db: asyncpg.Connection
) -> None:
    # A closing tag with no opening one made rich raise MarkupError (a traceback, exit 1), and a link
    # tag turned a contact's name into a hyperlink: every value the CLI prints is data, never markup.
    bold, link = "[/bold]", "[link=https://evil.example]x[/link]"
    env = cli_env(settings)
    campaign = tmp_path / "welcome.yaml"
    campaign.write_text(CAMPAIGN_YAML)
    assert (await cli("campaign", "apply", str(campaign), env=env)).code == 0

    async with running_worker(settings):
        enrolled = {}
        for contact, name in (("mk1", bold), ("mk2", link)):
            email = f"{contact}@x.org"
            ran = await cli("enroll", contact, "welcome", "--name", name, "--email", email, env=env)
            assert ran.code == 0, ran.err
            enrolled[contact] = ran.out.split(" enrollment ")[1].split()[0]
        note = f"{bold} {link}"
        stopped = await cli("stop", "mk1", "--enrollment", enrolled["mk1"], "--note", note, env=env)
        assert stopped.code == 0, stopped.err

        async def projected() -> bool:
            count = await db.fetchval(
                "select count(*) from enrollment_timeline where account_id = 'acct-cli' and "
                "((contact_id = 'mk1' and type = 'EnrollmentStopped.v1') or contact_id = 'mk2')"
            )
            return bool(count >= 2)

        await eventually(projected, what="the stop and the second enrollment projected")

    page = await cli("enrollments", "welcome", env=env)
    assert page.code == 0, page.err
    assert bold in page.out and link in page.out, page.out
    for command in (("timeline", "mk1"), ("why", "mk1")):
        ran = await cli(*command, env=env)
        assert ran.code == 0, ran.err
        assert "EnrollmentStopped" in ran.out and f"note={note}" in ran.out, ran.out
    searched = await cli("enrollments", "welcome", "--search", link, env=env)
    assert searched.code == 0 and link in searched.out and bold not in searched.out, searched.out
