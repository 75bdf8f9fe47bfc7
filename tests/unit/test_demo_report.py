"""The demo's verdict: any check that does not add up fails the run (the CLI then exits non-zero)."""

from __future__ import annotations

from rich.console import Console

from enrollstream.demo import Check, DemoPlan, DemoReport, demo_campaign, demo_commands, print_report


def test_a_single_mismatch_fails_the_report_and_says_so() -> None:
    report = DemoReport(contacts=40, checks=[Check("replies", 3, 3), Check("bounced", 1, 0)])
    assert not report.ok
    console = Console(record=True, width=120)
    print_report(report, console)
    text = console.export_text()
    assert "demo: FAILED contacts=40 emails=0 failed_checks=1" in text


def test_a_timeout_fails_the_report_even_when_every_check_adds_up() -> None:
    assert DemoReport(checks=[Check("replies", 3, 3)]).ok
    assert not DemoReport(checks=[Check("replies", 3, 3)], timed_out="slow").ok


def test_the_campaign_and_the_workload() -> None:
    plan = DemoPlan.quick()
    campaign = demo_campaign(plan.delays)
    assert len(campaign.steps) == 3 and campaign.verify_email_mx
    records = demo_commands(plan.contacts)
    assert len(records) == plan.contacts + 4  # two refusals and two malformed records
