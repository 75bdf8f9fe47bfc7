-- enrollstream read models, migration 0014: events the projector could not write (issue 12, item 4).
--
-- An event PostgreSQL refuses for what it carries (a NUL character in a text value, an integer above
-- what its column holds, a value the models no longer parse) is quarantined here, in the same
-- transaction that moves its partition's checkpoint past it, and the projector goes on with the next
-- one. The events topic is kept forever: without this, one such event would stop the projector for
-- good. `enrollstream dlq list --quarantined` lists them (docs/architecture.md "Projector").
--
-- `value` is the record's raw bytes (bytea: they may hold what text cannot), at most 64 KiB of them;
-- `value_size` and `value_sha256` describe the whole original. `event_id`, `type` and `account_id` are
-- what could be read from the record (NUL characters replaced), null when nothing could.
create table unprojectable_events (
    projection    text        not null,
    topic         text        not null,
    partition     int         not null,
    "offset"      bigint      not null,
    event_id      text,
    type          text,
    account_id    text,
    reason        text        not null,
    value         bytea       not null,
    value_size    int         not null,
    value_sha256  text        not null,
    at            timestamptz not null default now(),
    primary key (projection, topic, partition, "offset")
);

create index unprojectable_events_account on unprojectable_events (account_id, at);
