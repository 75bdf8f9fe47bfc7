"""Issue 11 item 9: the default worker sends, so it refuses to start without what sending needs."""

from __future__ import annotations

import pytest

from enrollstream.config import InvalidSettings, MissingSettings, Settings
from enrollstream.runtime.worker import DEFAULT_ROLES, check_settings, parse_roles

SENDING = {
    "smtp_host": "smtp.acme.example",
    "sender_from": "Acme <jobs@acme.example>",
    "unsubscribe_keys": "k" * 32,
    "unsubscribe_mailto": "unsubscribe@acme.example",
}


@pytest.fixture(autouse=True)
def no_sending_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(f"ENROLLSTREAM_{name.upper()}", raising=False)


def test_the_default_roles_are_every_role_a_sequence_needs() -> None:
    assert parse_roles(None) == DEFAULT_ROLES
    assert {"decider", "projector", "scheduler", "dispatcher"} <= set(DEFAULT_ROLES)
    assert not {"relay", "unsubscribe"} & set(DEFAULT_ROLES)  # opt-in: see worker.DEFAULT_ROLES


def test_the_default_worker_without_sending_settings_names_each_missing_one() -> None:
    with pytest.raises(MissingSettings) as raised:
        check_settings(Settings(), DEFAULT_ROLES)
    assert raised.value.needs == {
        "dispatcher": [
            "ENROLLSTREAM_SMTP_HOST",
            "ENROLLSTREAM_SENDER_FROM",
            "ENROLLSTREAM_UNSUBSCRIBE_KEYS",
            "ENROLLSTREAM_UNSUBSCRIBE_URL or ENROLLSTREAM_UNSUBSCRIBE_MAILTO",
        ]
    }
    assert str(raised.value).startswith("the dispatcher role needs ENROLLSTREAM_SMTP_HOST, ")


def test_roles_that_do_not_send_need_no_sending_settings_and_complete_ones_pass() -> None:
    check_settings(Settings(), ("decider", "projector", "scheduler", "inbound"))
    check_settings(Settings(**SENDING), DEFAULT_ROLES)


def test_an_unusable_sending_setting_is_named_before_anything_starts() -> None:
    settings = Settings(**{**SENDING, "unsubscribe_url": "http://u.acme.example/u"})
    with pytest.raises(InvalidSettings, match="https"):
        check_settings(settings, DEFAULT_ROLES)


def test_unusable_bounce_webhooks_stop_the_unsubscribe_role_before_anything_starts() -> None:
    short = '[{"name": "acme", "account_id": "acme", "format": "smtp2go", "secrets": ["short"]}]'
    for value in ("not json", short):
        settings = Settings(unsubscribe_keys="k" * 32, bounce_webhooks=value)
        with pytest.raises(InvalidSettings, match="ENROLLSTREAM_BOUNCE_WEBHOOKS"):
            check_settings(settings, ("unsubscribe",))
        check_settings(settings, ("decider",))  # only the role that serves them needs them
    usable = short.replace("short", "s" * 20)
    check_settings(Settings(unsubscribe_keys="k" * 32, bounce_webhooks=usable), ("unsubscribe",))


def test_the_receiver_is_opt_in_and_needs_its_reply_domain_and_imap_credentials() -> None:
    assert "receiver" not in DEFAULT_ROLES
    with pytest.raises(MissingSettings) as raised:
        check_settings(Settings(), ("receiver",))
    assert raised.value.needs == {"receiver": ["ENROLLSTREAM_RECEIVER_DOMAIN"]}
    with pytest.raises(MissingSettings) as raised:
        check_settings(
            Settings(receiver_domain="reply.acme.example", receiver_imap_host="imap.x"), ("receiver",)
        )
    assert raised.value.needs == {
        "receiver": ["ENROLLSTREAM_RECEIVER_IMAP_USERNAME", "ENROLLSTREAM_RECEIVER_IMAP_PASSWORD"]
    }
    check_settings(Settings(receiver_domain="reply.acme.example"), ("receiver",))
    assert Settings().receiver_smtp_host == "127.0.0.1"
