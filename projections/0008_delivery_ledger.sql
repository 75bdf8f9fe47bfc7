-- enrollstream migration 0008: the dispatcher's delivery ledger (docs/delivery.md, "The ledger").
--
-- Unlike the read models this table is not derived from the events topic: it is the dispatcher's own
-- memory of what it handed to a transport, so a restart never sends one attempt twice. One row per
-- attempt (enrollment, step, attempt), written `started` and committed *before* the dispatcher
-- connects to the SMTP server; the outcome replaces `started` afterwards. A row still `started` when
-- its StepDispatched is processed again means a crash inside the send: it becomes `unknown`, never
-- sent again. `reported` turns true once the DeliveryReported command for the row was acknowledged
-- by the broker (a re-report is a duplicate by its deterministic command id).
create table delivery_ledger (
    enrollment_id       text        not null,
    step_index          integer     not null check (step_index >= 0),
    attempt             integer     not null check (attempt >= 1),
    message_id          text        not null unique,   -- ids.message_id: es-<hex>
    message_id_header   text        unique,            -- <es-…@domain> as sent (email only)
    account_id          text        not null,
    contact_id          text        not null,
    channel             text        not null,
    sender              text        not null,          -- the rate-limit key: the From address, or 'sms'
    recipient           text        not null,
    state               text        not null default 'started'
                        check (state in ('started', 'sent', 'bounced', 'failed', 'unknown', 'error')),
    retryable           boolean     not null default false,
    detail              text        not null default '',
    code                integer,                       -- the SMTP reply code that decided it
    provider_message_id text,
    started_at          timestamptz not null,          -- the dispatcher's (injected) clock
    finished_at         timestamptz,                   -- when the outcome was recorded; null while started
    reported            boolean     not null default false,
    reported_at         timestamptz,
    primary key (enrollment_id, step_index, attempt)
);

-- Per-sender rate limits count the attempts that may have reached the provider (sent, unknown, and
-- started ones in flight) over the last 24 hours.
create index delivery_ledger_sender_sends on delivery_ledger (sender, started_at)
    where state in ('started', 'sent', 'unknown');
