-- enrollstream read models, migration 0020: a ContactEnrolled's timeline row refers to its campaign
-- definition instead of carrying it (issue 15, docs/benchmarks.md "Projector pipeline").
--
-- A ContactEnrolled embeds the whole definition it runs under, and a campaign's enrollments repeat the
-- same few definitions: in the bench's mix that was 57% of the timeline's `data` bytes, parsed into
-- jsonb and written again for every enrollment. The projector now stores each definition once per
-- account in `campaign_definitions`, under the SHA-256 of its JSON, and the row's `data` without its
-- `campaign` key, naming the definition in `campaign_definition`. Readers read
-- `enrollment_timeline_events`, which puts the definition back: its `data` is the event's data whole,
-- as before (jsonb keeps no key order, so `data || {campaign}` is the same value). Rows written before
-- this migration keep their data whole and have `campaign_definition` null; the view passes them on.
-- Accounts are walls: a definition is found by the row's account and the digest together.
create table campaign_definitions (
    account_id text not null,
    digest     text not null,  -- SHA-256 (hex) of the definition's JSON as the event's data dumps it
    definition jsonb not null,
    primary key (account_id, digest)
);

alter table enrollment_timeline add column campaign_definition text;

create view enrollment_timeline_events as
select t.event_id,
       t.account_id,
       t.contact_id,
       t.campaign_id,
       t.enrollment_id,
       t.version,
       t.type,
       t.occurred_at,
       t.causation_id,
       case when t.campaign_definition is null then t.data
            else t.data || jsonb_build_object('campaign', d.definition)
       end as data,
       t.event_partition,
       t.event_offset
  from enrollment_timeline t
  left join campaign_definitions d
    on d.account_id = t.account_id and d.digest = t.campaign_definition;

-- "Why" (migration 0009) reads the events whole.
create or replace view contact_why as
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
  from enrollment_timeline_events t
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
