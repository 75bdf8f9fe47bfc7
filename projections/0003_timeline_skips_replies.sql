-- enrollstream read models, migration 0003: the per-enrollment timeline, enrollment skips and replies.

-- Every event, with its cause (the command id), so "why was this contact stopped?" is one query:
--   select occurred_at, type, causation_id, data from enrollment_timeline
--    where contact_id = $1 order by version;
create table enrollment_timeline (
    event_id      text        primary key,
    account_id    text        not null,
    contact_id    text        not null,
    campaign_id   text,                 -- null for contact-wide facts (an opt-out)
    enrollment_id text,                 -- null for contact-wide facts
    version       bigint      not null, -- per contact aggregate: the order of decisions
    type          text        not null,
    occurred_at   timestamptz not null,
    causation_id  text        not null,
    data          jsonb       not null
);
create index enrollment_timeline_contact on enrollment_timeline (account_id, contact_id, version);
create index enrollment_timeline_enrollment on enrollment_timeline (enrollment_id, version);

-- Seed 001's enrollment_skips: contacts not enrolled, by kind, with the evidence.
create table enrollment_skips (
    event_id          text        primary key,
    account_id        text        not null,
    contact_id        text        not null,
    campaign_id       text        not null,
    kind              text        not null,
    reason            text        not null,
    contact_name      text,
    email             text,
    batch_number      integer     not null default 0,
    contact_import_id text,
    evidence          jsonb       not null default '{}',
    skipped_at        timestamptz not null
);
create index enrollment_skips_campaign_kind on enrollment_skips (campaign_id, kind, skipped_at);

-- Seed 001's /replies: one row per reply, with hours_to_reply.
create table replies (
    event_id           text        primary key,
    account_id         text        not null,
    contact_id         text        not null,
    campaign_id        text        not null,
    enrollment_id      text        not null,
    replied_at         timestamptz not null,
    hours_to_reply     numeric(10, 2),
    first_reply        boolean     not null,
    reply_action       text        not null,
    inbound_message_id text,
    excerpt            text        not null default ''
);
create index replies_campaign on replies (campaign_id, replied_at);
