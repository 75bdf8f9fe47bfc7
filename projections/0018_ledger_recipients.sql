-- enrollstream migration 0018: find a message by its recipient (docs/delivery.md "Bounce webhooks").
--
-- A provider's bounce callback names the message by our Message-ID when it carries the header, and
-- otherwise only by the recipient: the bounce webhook endpoint then takes the account's latest email
-- to that address that may have reached the provider. Always within the endpoint's one account.
create index delivery_ledger_by_recipient
    on delivery_ledger (account_id, lower(recipient), started_at desc)
 where channel = 'email';
