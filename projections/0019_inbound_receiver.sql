-- enrollstream read models, migration 0019: the inbound mail receiver (issue 17, docs/delivery.md
-- "Receiving replies").
--
-- inbound_imap_checkpoints: how far the receiver's IMAP poller has read each mailbox. A mailbox's UIDs
-- mean something only under its UIDVALIDITY, so both are kept; `last_uid` is advanced (one message at a
-- time) only after that message's InboundEmailReceived was acknowledged by Kafka, so a restart never
-- reads a message twice except the one in hand when it stopped (whose key and command ids are the
-- same: a repeat downstream recognises).
create table inbound_imap_checkpoints (
    mailbox_key  text primary key,          -- user@host:port/mailbox
    uidvalidity  bigint not null,
    last_uid     bigint not null default 0,
    updated_at   timestamptz not null default now()
);

-- inbound_unmatched: received mail the inbound role could match to nothing (no In-Reply-To/References,
-- none of them one of our Message-IDs, one of another account's, a DSN about a message not ours) or the
-- receiver could not give an account: kept for inspection instead of being dead-lettered. Bounded: the
-- role keeps the newest `ENROLLSTREAM_INBOUND_UNMATCHED_MAX_ROWS` rows and at most 16 KiB of record per
-- row; one row per (account, inbound Message-ID), so a repeat does not add one.
create table inbound_unmatched (
    id                  bigserial primary key,
    account_id          text,                    -- null: the receiver could not tell the account
    inbound_message_id  text not null,
    reason              text not null,
    from_address        text not null default '',
    subject             text not null default '',
    received_at         timestamptz,
    kept_at             timestamptz not null default now(),
    record              text not null            -- the InboundEmailReceived JSON, cut at 16 KiB
);
create unique index inbound_unmatched_message on inbound_unmatched (coalesce(account_id, ''), inbound_message_id);
create index inbound_unmatched_account on inbound_unmatched (account_id, id);
