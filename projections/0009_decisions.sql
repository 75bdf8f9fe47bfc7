-- enrollstream read models, migration 0009: every decision, with its cause, and the "why" of a contact.
--
-- The timeline has the events, so it only shows decisions that changed something. A command the
-- decider refused (`rejected` with its code), ignored (`duplicate`, `stale`, `deferred`) or otherwise
-- answered leaves its trace here: one row per published CommandResult, read from the command-results
-- topic (read_committed) by the projector in the same transaction and under the same checkpoints as the
-- rows it writes from the events topic. A result's (partition, offset) is its identity, so a batch applied
-- twice changes nothing, and a command decided twice (a duplicate) has two rows, as it had two decisions.
create table decisions (
    result_partition integer     not null,
    result_offset    bigint      not null,
    command_id       text        not null,
    command_type     text        not null,
    account_id       text        not null,
    contact_id       text        not null,  -- empty for a BulkEnroll (it names no one contact)
    campaign_id      text,                  -- the campaign the command names (Enroll, BulkEnroll)
    enrollment_id    text,                  -- the enrollment the command names (Stop, StepDue, ...)
    actor            text        not null,
    status           text        not null,  -- accepted, rejected, duplicate, stale, deferred, ...
    code             text,                  -- the rejection code or the ignored kind
    message          text        not null default '',
    details          jsonb       not null default '{}',
    event_ids        text[]      not null default '{}',
    enrollment_ids   text[]      not null default '{}',
    contact_version  bigint,                -- the contact's version once decided (orders the "why")
    issued_at        timestamptz,           -- the command's "now"
    primary key (result_partition, result_offset)
);
create index decisions_contact on decisions (account_id, contact_id, contact_version);
create index decisions_command on decisions (command_id);

-- "Why" for a contact: its events (each with the decision that caused it: command type, actor) and the
-- decisions that changed nothing, in the order they were made. Ordered by (`version`, `position`): an
-- event has its own version; a decision without events carries the version it found, so it comes after
-- the event of that version, and decisions at the same version keep their order in the results log.
-- Filter by `account_id` (accounts are walls) and `contact_id`, optionally `campaign_id`.
create view contact_why as
select t.account_id,
       t.contact_id,
       t.campaign_id,
       t.enrollment_id,
       t.version,
       0::bigint        as position,
       'event'          as kind,
       t.occurred_at    as at,
       t.type           as what,
       t.causation_id   as command_id,
       d.command_type,
       d.actor,
       coalesce(d.status, 'accepted') as status,
       null::text       as code,
       ''::text         as reason,
       t.data
  from enrollment_timeline t
  left join decisions d
    on d.command_id = t.causation_id and d.account_id = t.account_id and t.event_id = any(d.event_ids)
union all
select d.account_id,
       d.contact_id,
       coalesce(d.campaign_id, e.campaign_id),
       d.enrollment_id,
       coalesce(d.contact_version, 0),
       d.result_offset + 1,
       'decision',
       d.issued_at,
       d.status,
       d.command_id,
       d.command_type,
       d.actor,
       d.status,
       d.code,
       d.message,
       d.details
  from decisions d
  left join enrollments e on e.enrollment_id = d.enrollment_id and e.account_id = d.account_id
 where cardinality(d.event_ids) = 0;
