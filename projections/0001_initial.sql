-- enrollstream read models, migration 0001: the projector's checkpoints and the enrollments table.
-- Every table here is derived from the events topic and can be rebuilt by `enrollstream replay`.

-- Where each projection stands in each partition of each topic. Written in the same transaction as
-- the rows a batch changes, so a projection and its checkpoint never disagree.
create table projection_checkpoints (
    projection  text        not null,
    topic       text        not null,
    partition   integer     not null,
    next_offset bigint      not null check (next_offset >= 0),
    updated_at  timestamptz not null default now(),
    primary key (projection, topic, partition)
);

-- One row per enrollment: the link between a contact and a campaign (seed 001), with what the
-- Enrollments page shows (seed 000) and the sequence contact list filters on (seed 003).
create table enrollments (
    enrollment_id      text        primary key,
    account_id         text        not null,
    contact_id         text        not null,
    campaign_id        text        not null,
    campaign_version   integer,
    contact_name       text,
    email              text,
    mobile             text,
    status             text        not null,
    stage              text        not null default 'pending',
    stop_reason        text,
    outcome            text,
    current_step       integer,
    total_steps        integer,
    next_execution_at  timestamptz,
    enrolled_at        timestamptz not null,
    batch_number       integer     not null default 0,
    priority           boolean     not null default false,
    sent_at            timestamptz,
    opened_at          timestamptz,
    replied_at         timestamptz,
    bounced_at         timestamptz,
    bounce_reason      text,
    hours_to_reply     numeric(10, 2),
    completed_at       timestamptz,
    -- the aggregate version of the last event folded into this row; replays of older events are no-ops
    last_version       bigint      not null,
    updated_at         timestamptz not null
);

create index enrollments_campaign_status on enrollments (campaign_id, status);
create index enrollments_contact on enrollments (account_id, contact_id);
