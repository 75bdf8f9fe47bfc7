-- The projector's and the read side's SQL, one statement per `-- name:` section (procrastinate-style).

-- name: lock_checkpoints
-- The checkpoints of the partitions a batch touches, locked: two projector instances that both think
-- they own a partition (a rebalance in flight) serialise here, and the second sees what the first did.
select partition, next_offset
  from projection_checkpoints
 where projection = $1 and topic = $2 and partition = any($3::int[])
   for update;

-- name: advance_checkpoints
-- Only ever forward, in the same transaction as the rows the batch changed.
insert into projection_checkpoints as c (projection, topic, partition, next_offset)
select $1, $2, p, o from unnest($3::int[], $4::bigint[]) as t(p, o)
on conflict (projection, topic, partition) do update
   set next_offset = excluded.next_offset, updated_at = now()
 where c.next_offset < excluded.next_offset;

-- name: read_checkpoints
select partition, next_offset from projection_checkpoints where projection = $1 and topic = $2;

-- name: enrollments_by_id
select * from enrollments where enrollment_id = any($1::text[]);

-- name: create_enrollments_stage
-- Once per connection, emptied at every commit: created and dropped in every batch, its catalog rows
-- cost about as much as the COPY into it (docs/benchmarks.md, "Projector after the light parse").
create temporary table if not exists enrollments_stage (like enrollments including defaults)
    on commit delete rows;

-- name: merge_enrollments_stage
-- The staged rows into `enrollments` (only newer versions win), and the net status deltas of the rows
-- actually written into `campaign_stats`, in one statement (see projections/0004 for why not a
-- trigger). `before` reads the statement's snapshot: the old status of each staged row that exists.
-- `written` is what the guarded upsert inserted or updated, with the new status. Sibling CTEs share
-- the snapshot, so `before` never sees `written`'s effects.
with before as (
    select e.enrollment_id, e.account_id, e.campaign_id, e.status
      from enrollments e
      join enrollments_stage s using (enrollment_id)
), written as (
    insert into enrollments select * from enrollments_stage
    on conflict (enrollment_id) do update set
        campaign_version = excluded.campaign_version,
        contact_name = excluded.contact_name,
        email = excluded.email,
        mobile = excluded.mobile,
        status = excluded.status,
        stage = excluded.stage,
        stop_reason = excluded.stop_reason,
        outcome = excluded.outcome,
        current_step = excluded.current_step,
        total_steps = excluded.total_steps,
        next_execution_at = excluded.next_execution_at,
        batch_number = excluded.batch_number,
        priority = excluded.priority,
        sent_at = excluded.sent_at,
        opened_at = excluded.opened_at,
        replied_at = excluded.replied_at,
        bounced_at = excluded.bounced_at,
        bounce_reason = excluded.bounce_reason,
        hours_to_reply = excluded.hours_to_reply,
        completed_at = excluded.completed_at,
        last_version = excluded.last_version,
        updated_at = excluded.updated_at,
        bulk_enroll_id = excluded.bulk_enroll_id,
        failure_reason = excluded.failure_reason,
        failure_detail = excluded.failure_detail,
        mx_check = excluded.mx_check
     where enrollments.last_version < excluded.last_version
    returning enrollment_id, account_id, campaign_id, status
), delta as (
    select account_id, campaign_id, status, sum(d) as d
      from (select account_id, campaign_id, status, 1 as d from written
            union all
            select b.account_id, b.campaign_id, b.status, -1 from before b join written w using (enrollment_id)) x
     group by account_id, campaign_id, status
    having sum(d) <> 0
)
insert into campaign_stats as s
    (account_id, campaign_id, total, pending, queued, awaiting_trigger, active, processing, delivered, completed, stopped, failed, expired, handed_off, unenrolled)
select account_id,
       campaign_id,
       sum(d),
       coalesce(sum(d) filter (where status = 'pending'), 0),
       coalesce(sum(d) filter (where status = 'queued'), 0),
       coalesce(sum(d) filter (where status = 'awaiting_trigger'), 0),
       coalesce(sum(d) filter (where status = 'active'), 0),
       coalesce(sum(d) filter (where status = 'processing'), 0),
       coalesce(sum(d) filter (where status = 'delivered'), 0),
       coalesce(sum(d) filter (where status = 'completed'), 0),
       coalesce(sum(d) filter (where status = 'stopped'), 0),
       coalesce(sum(d) filter (where status = 'failed'), 0),
       coalesce(sum(d) filter (where status = 'expired'), 0),
       coalesce(sum(d) filter (where status = 'handed_off'), 0),
       coalesce(sum(d) filter (where status = 'unenrolled'), 0)
  from delta
 group by account_id, campaign_id
 -- one lock order for every batch: concurrent projectors touching the same campaigns cannot deadlock
 order by account_id, campaign_id
on conflict (account_id, campaign_id) do update set
    total = s.total + excluded.total,
    pending = s.pending + excluded.pending,
    queued = s.queued + excluded.queued,
    awaiting_trigger = s.awaiting_trigger + excluded.awaiting_trigger,
    active = s.active + excluded.active,
    processing = s.processing + excluded.processing,
    delivered = s.delivered + excluded.delivered,
    completed = s.completed + excluded.completed,
    stopped = s.stopped + excluded.stopped,
    failed = s.failed + excluded.failed,
    expired = s.expired + excluded.expired,
    handed_off = s.handed_off + excluded.handed_off,
    unenrolled = s.unenrolled + excluded.unenrolled;

-- name: create_timeline_stage
create temporary table enrollment_timeline_stage (like enrollment_timeline) on commit drop;

-- name: merge_timeline_stage
-- A batch's events, COPY-ed into the stage, into the timeline; an event id already there (a redelivered
-- BulkEnroll repeats its events, ids included) keeps its first row.
insert into enrollment_timeline
    (event_id, account_id, contact_id, campaign_id, enrollment_id, version, type, occurred_at, causation_id, data,
     event_partition, event_offset, campaign_definition)
select event_id, account_id, contact_id, campaign_id, enrollment_id, version, type, occurred_at, causation_id, data,
       event_partition, event_offset, campaign_definition
  from enrollment_timeline_stage
on conflict (event_id) do nothing;

-- name: insert_campaign_definitions
-- The campaign definitions a batch's ContactEnrolled timeline rows refer to (migration 0020), once per
-- account and digest; in the batch's transaction, so a row never names a definition that is not there.
insert into campaign_definitions (account_id, digest, definition)
select * from unnest($1::text[], $2::text[], $3::jsonb[])
on conflict (account_id, digest) do nothing;

-- name: insert_decisions
-- From the command-results topic; a result's (partition, offset) is its identity, so re-applying a batch
-- is a no-op.
insert into decisions
    (result_partition, result_offset, command_id, command_type, account_id, contact_id, campaign_id,
     enrollment_id, actor, status, code, message, details, event_ids, enrollment_ids, contact_version,
     issued_at)
select p, o, command_id, command_type, account_id, contact_id, campaign_id, enrollment_id, actor, status,
       code, message, details, array(select jsonb_array_elements_text(event_ids)),
       array(select jsonb_array_elements_text(enrollment_ids)), contact_version, issued_at
  from unnest($1::int[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
              $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::jsonb[], $14::jsonb[],
              $15::jsonb[], $16::bigint[], $17::timestamptz[])
       as r(p, o, command_id, command_type, account_id, contact_id, campaign_id, enrollment_id, actor,
            status, code, message, details, event_ids, enrollment_ids, contact_version, issued_at)
on conflict (result_partition, result_offset) do nothing;

-- name: insert_skips
insert into enrollment_skips
    (event_id, account_id, contact_id, campaign_id, kind, reason, contact_name, email, batch_number,
     contact_import_id, evidence, skipped_at, bulk_enroll_id)
select * from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                     $8::text[], $9::int[], $10::text[], $11::jsonb[], $12::timestamptz[], $13::text[])
on conflict (event_id) do nothing;

-- name: insert_bulk_enrollments
-- From BulkEnrollAccepted events. A redelivered BulkEnroll repeats the event (same event id, same
-- command id): the first row stays, so a summary never counts a request twice.
insert into bulk_enrollments
    (bulk_enroll_id, event_id, account_id, campaign_id, campaign_version, contact_import_id, contacts,
     batches, batch_size, requested_by, requested_at)
select * from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[], $7::int[],
                     $8::int[], $9::int[], $10::text[], $11::timestamptz[])
on conflict do nothing;

-- name: insert_replies
insert into replies
    (event_id, account_id, contact_id, campaign_id, enrollment_id, replied_at, hours_to_reply, first_reply,
     reply_action, inbound_message_id, excerpt)
select * from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],
                     $7::numeric[], $8::bool[], $9::text[], $10::text[], $11::text[])
on conflict (event_id) do nothing;

-- name: campaign_stats_mismatches
-- For verifiers (chaos tests, operators): every (account, campaign) whose counters in `campaign_stats`
-- differ from counting `enrollments`, with both sides as JSON. No rows: the cards are right. A missing
-- stats row and a row of zeros both mean "no enrollments". Counts the whole table: not for a page.
with counted as (
    select account_id,
           campaign_id,
           count(*) as total,
           count(*) filter (where status = 'pending') as pending,
           count(*) filter (where status = 'queued') as queued,
           count(*) filter (where status = 'awaiting_trigger') as awaiting_trigger,
           count(*) filter (where status = 'active') as active,
           count(*) filter (where status = 'processing') as processing,
           count(*) filter (where status = 'delivered') as delivered,
           count(*) filter (where status = 'completed') as completed,
           count(*) filter (where status = 'stopped') as stopped,
           count(*) filter (where status = 'failed') as failed,
           count(*) filter (where status = 'expired') as expired,
           count(*) filter (where status = 'handed_off') as handed_off,
           count(*) filter (where status = 'unenrolled') as unenrolled
      from enrollments
     group by account_id, campaign_id
), stored as (
    select * from campaign_stats where total <> 0 or (pending <> 0 or queued <> 0 or awaiting_trigger <> 0 or active <> 0 or processing <> 0 or delivered <> 0 or completed <> 0 or stopped <> 0 or failed <> 0 or expired <> 0 or handed_off <> 0 or unenrolled <> 0)
)
select coalesce(s.account_id, c.account_id) as account_id,
       coalesce(s.campaign_id, c.campaign_id) as campaign_id,
       to_jsonb(s) - 'account_id' - 'campaign_id' as stored,
       to_jsonb(c) - 'account_id' - 'campaign_id' as counted
  from stored s
  full join counted c using (account_id, campaign_id)
 where (s.total, s.pending, s.queued, s.awaiting_trigger, s.active, s.processing, s.delivered, s.completed, s.stopped, s.failed, s.expired, s.handed_off, s.unenrolled)
       is distinct from
       (c.total, c.pending, c.queued, c.awaiting_trigger, c.active, c.processing, c.delivered, c.completed, c.stopped, c.failed, c.expired, c.handed_off, c.unenrolled)
 order by 1, 2;

-- name: bulk_enroll_summary
-- Seed 001's bulk enroll answer for one BulkEnroll (by its command id), as far as it is projected.
select * from bulk_enroll_summaries where account_id = $1 and bulk_enroll_id = $2;

-- name: force_custom_plans
-- For the page queries below: their optional filters (`$n is null or ...`) need plans made for the
-- values at hand. A cached generic plan would keep the `or` and could not use the filter's index.
-- Transaction-local; the wrappers in read_side.py run it first.
select set_config('plan_cache_mode', 'force_custom_plan', true);

-- name: enrollments_page
-- The Enrollments page (seed 000 / seed 001 GET .../enrollments): one campaign, filtered by status
-- (any of $3), batch number ($4), current step ($5) and contact name ($6: case-insensitive substring;
-- % and _ match themselves), in stable order (enrolled_at, enrollment_id), from after the keyset
-- cursor ($7, $8) (null: the first page), at most $9 rows; $10: seed 001's status, the stage (any of).
-- Keyset rather than OFFSET: page 5,000 costs what page 1 costs, and rows moving between pages cannot
-- repeat or vanish. `sender` is the sender of the enrollment's latest attempt (the From address, or
-- 'sms'; seed 001's smtp_credential_id), from the delivery ledger by its primary key.
-- Indexes (0002, 0006): enrollments_campaign_page, enrollments_campaign_status_page,
-- enrollments_campaign_batch_page, enrollments_contact_name_trgm.
select enrollment_id, contact_id, contact_name, email, mobile, status, stage, stop_reason, outcome,
       current_step, total_steps, step_label, next_execution_at, next_execution_indicator, enrolled_at,
       batch_number, priority, sent_at, opened_at, replied_at, bounced_at, bounce_reason, hours_to_reply,
       failure_reason, failure_detail, sequence_status, mx_check,
       (select l.sender from delivery_ledger l
         where l.enrollment_id = t.enrollment_id
         order by l.step_index desc, l.attempt desc limit 1) as sender
  from enrollment_table t
 where account_id = $1
   and campaign_id = $2
   and ($3::text[] is null or status = any($3::text[]))
   and ($10::text[] is null or stage = any($10::text[]))
   and ($4::int is null or batch_number = $4::int)
   and ($5::int is null or current_step = $5::int)
   and ($6::text is null
        or contact_name ilike '%' || replace(replace(replace($6::text, '\', '\\'), '%', '\%'), '_', '\_') || '%')
   and ($7::timestamptz is null or (enrolled_at, enrollment_id) > ($7::timestamptz, $8::text))
 order by enrolled_at, enrollment_id
 limit $9;

-- name: campaign_replies
-- Seed 001 GET /campaigns/:id/replies?limit=100: newest first, with hours_to_reply (from the first
-- delivery) and who replied. Index: replies_campaign (0003), read backwards.
select r.event_id, r.enrollment_id, r.contact_id, e.contact_name, e.email, r.replied_at, r.hours_to_reply,
       r.first_reply, r.reply_action, r.inbound_message_id, r.excerpt
  from replies r
  left join enrollments e on e.enrollment_id = r.enrollment_id
 where r.account_id = $1 and r.campaign_id = $2
 order by r.replied_at desc, r.event_id desc
 limit $3;

-- name: campaign_skips
-- Seed 001 GET /campaigns/:id/skips?kind=mx_invalid&limit=100 ($3 null: every kind), oldest first.
-- Index: enrollment_skips_campaign_kind (0003).
select event_id, contact_id, contact_name, email, kind, reason, evidence, batch_number, contact_import_id,
       bulk_enroll_id, skipped_at
  from enrollment_skips
 where account_id = $1 and campaign_id = $2 and ($3::text is null or kind = $3::text)
 order by skipped_at, event_id
 limit $4;

-- name: schema_catalog
-- The schema as the catalogs see it, one (kind, name, definition) row per object of the current schema
-- (the first on the search path), without the migration runner's own table: what `schema_dump` and the
-- schema-equals-migrations test compare. Columns in order with type, nullability and default; every
-- constraint, index, view, function, trigger, sequence and extension with its definition.
with ns as (select oid from pg_namespace where nspname = current_schema()),
rels as (
    select c.oid, c.relname, c.relkind
      from pg_class c
     where c.relnamespace = (select oid from ns) and c.relname <> 'schema_migrations'
)
select kind, name, definition from (
    select 'column' as kind,
           r.relname || '.' || lpad(row_number() over (partition by r.oid order by a.attnum)::text, 3, '0')
               || '.' || a.attname as name,
           format_type(a.atttypid, a.atttypmod)
               || case when a.attnotnull then ' not null' else ' null' end
               || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
               || case when a.attgenerated <> '' then ' generated ' || a.attgenerated::text else '' end
               || case when a.attidentity <> '' then ' identity ' || a.attidentity::text else '' end
               as definition
      from rels r
      join pg_attribute a on a.attrelid = r.oid and a.attnum > 0 and not a.attisdropped
      left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
     where r.relkind in ('r', 'p', 'v', 'm', 'f')
    union all
    select 'relation', r.relname, r.relkind::text from rels r where r.relkind <> 'i'
    union all
    select 'constraint', r.relname || '.' || con.conname, pg_get_constraintdef(con.oid)
      from pg_constraint con join rels r on r.oid = con.conrelid
    union all
    select 'index', i.indexname, i.indexdef
      from pg_indexes i where i.schemaname = current_schema() and i.tablename <> 'schema_migrations'
    union all
    select 'view', r.relname, pg_get_viewdef(r.oid) from rels r where r.relkind in ('v', 'm')
    union all
    select 'function', p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
           pg_get_functiondef(p.oid)
      from pg_proc p
     where p.pronamespace = (select oid from ns)
       and not exists (select 1 from pg_depend dep where dep.objid = p.oid and dep.deptype = 'e')
    union all
    select 'trigger', r.relname || '.' || t.tgname, pg_get_triggerdef(t.oid)
      from pg_trigger t join rels r on r.oid = t.tgrelid where not t.tgisinternal
    union all
    select 'extension', x.extname, n.nspname
      from pg_extension x join pg_namespace n on n.oid = x.extnamespace where x.extname <> 'plpgsql'
) catalog
order by kind, name;

-- name: lock_campaign_stats
-- Before a recount: no projector batch may add deltas between the delete and the insert (they wait on
-- this lock, then add their deltas to the recounted rows). Transaction-scoped.
lock table campaign_stats in share row exclusive mode;

-- name: clear_campaign_stats
delete from campaign_stats;

-- name: recount_campaign_stats
-- Repair: recount every counter from `enrollments` (after `campaign_stats_mismatches` found drift, e.g.
-- rows written behind the projector's back, or an old projector still running during a deploy of 0004).
-- Run after lock_campaign_stats and clear_campaign_stats, in the same transaction (an insert cannot see
-- a delete of the same statement); returns the number of campaigns recounted.
with recounted as (
    insert into campaign_stats
        (account_id, campaign_id, total, pending, queued, awaiting_trigger, active, processing, delivered, completed, stopped, failed, expired, handed_off, unenrolled)
    select account_id,
           campaign_id,
           count(*),
           count(*) filter (where status = 'pending'),
       count(*) filter (where status = 'queued'),
       count(*) filter (where status = 'awaiting_trigger'),
       count(*) filter (where status = 'active'),
       count(*) filter (where status = 'processing'),
       count(*) filter (where status = 'delivered'),
       count(*) filter (where status = 'completed'),
       count(*) filter (where status = 'stopped'),
       count(*) filter (where status = 'failed'),
       count(*) filter (where status = 'expired'),
       count(*) filter (where status = 'handed_off'),
       count(*) filter (where status = 'unenrolled')
      from enrollments
     group by account_id, campaign_id
    returning 1
)
select count(*) from recounted;

-- name: latest_enrollment
-- The contact's newest enrollment in a campaign (what `enrollstream stop/unenroll --campaign` acts on).
select enrollment_id, status
  from enrollments
 where account_id = $1 and contact_id = $2 and campaign_id = $3
 order by enrolled_at desc, enrollment_id desc
 limit 1;

-- name: campaign_stats_card
-- Seed 000's stats cards for one campaign (a row of the campaign_stats_cards view; none: no enrollments).
select * from campaign_stats_cards where account_id = $1 and campaign_id = $2;

-- name: contact_timeline
-- Every decision about one contact, in the order it was made, with its cause: the answer to "why".
-- The events whole: the view puts a ContactEnrolled's campaign definition back (migration 0020).
select t.occurred_at, t.version, t.type, t.campaign_id, t.enrollment_id, t.causation_id, t.data
  from enrollment_timeline_events t
 where t.account_id = $1 and t.contact_id = $2
 order by t.version, t.event_id;

-- name: contact_why
-- "Why" for one contact: its events and the decisions that changed nothing (refused, duplicate, stale,
-- deferred), in the order they were made, each with its command, actor and reason. $3: one campaign,
-- or null for all.
select w.at, w.version, w.kind, w.what, w.campaign_id, w.enrollment_id, w.command_id, w.command_type,
       w.actor, w.status, w.code, w.reason, w.data
  from contact_why w
 where w.account_id = $1 and w.contact_id = $2 and ($3::text is null or w.campaign_id = $3)
 order by w.version, w.position;

-- name: delete_timers
delete from timers t
 using unnest($1::text[], $2::text[]) as d(enrollment_id, kind)
 where t.enrollment_id = d.enrollment_id and t.kind = d.kind;

-- name: create_timers_stage
-- The projector's batch of timer rows, COPY-ed (array parameters cost asyncpg a Python-level ABC check per
-- element, docs/benchmarks.md "Projector after the light parse"); one row per (enrollment_id, kind).
-- Once per connection, emptied at every commit (as enrollments_stage).
create temporary table if not exists timers_stage (like timers) on commit delete rows;

-- name: merge_timers_stage
-- A new timer of a kind replaces the old one (the next step, a retry) and is claimable at once.
insert into timers as t
    (enrollment_id, kind, account_id, contact_id, campaign_id, step_index, attempt, due_at, batch_number,
     priority, enrolled_at)
select enrollment_id, kind, account_id, contact_id, campaign_id, step_index, attempt, due_at, batch_number,
       priority, enrolled_at
  from timers_stage
on conflict (enrollment_id, kind) do update set
    account_id = excluded.account_id,
    contact_id = excluded.contact_id,
    campaign_id = excluded.campaign_id,
    step_index = excluded.step_index,
    attempt = excluded.attempt,
    due_at = excluded.due_at,
    batch_number = excluded.batch_number,
    priority = excluded.priority,
    enrolled_at = excluded.enrolled_at,
    claimed_until = null;

-- name: claim_due_timers
-- The scheduler's claim: up to $5 due rows that no live lease holds, outside the paused campaigns (the
-- pairs of accounts $3 and campaign ids $4: a campaign is (account, campaign), so another account's pause
-- of the same campaign id holds nothing here), leased until $2. Within a campaign in dispatch order:
-- batch number, priority first, enrollment time;
-- within an enrollment by due time, a step before an expiry or wait timeout due at the same time, so
-- after a pause or an outage an expiry never overtakes a step that was due before it.
-- SKIP LOCKED: a concurrent claimer passes over the rows this one is taking instead of waiting for them,
-- and the lease keeps them from it once this transaction commits. The update finds the locked rows by
-- ctid (stable while we hold their locks): a TID scan, never a join over the whole table.
with due as (
    select ctid
      from timers
     where ((claimed_until is null and due_at <= $1) or (claimed_until < $1 and due_at <= $1))
       and not exists (select 1 from unnest($3::text[], $4::text[]) as p(account_id, campaign_id)
                        where p.account_id = timers.account_id and p.campaign_id = timers.campaign_id)
     order by account_id, campaign_id, batch_number, priority desc, enrolled_at, enrollment_id, due_at,
              kind <> 'step_due'
     limit $5
       for update skip locked
), claimed as (
    update timers t
       set claimed_until = $2
     where t.ctid = any(array(select ctid from due))
    returning t.*
)
select * from claimed
 order by account_id, campaign_id, batch_number, priority desc, enrolled_at, enrollment_id, due_at, kind <> 'step_due';

-- name: release_timer_claims
-- Hand back claims whose commands could not be published (only the lease this claim set).
update timers t
   set claimed_until = null
  from unnest($1::text[], $2::text[]) as r(enrollment_id, kind)
 where t.enrollment_id = r.enrollment_id and t.kind = r.kind and t.claimed_until = $3;

-- name: chaos_sends_in_flight
-- The crash suite waits for quiet: a step still due, or a send the dispatcher has not reported yet.
select exists (select 1 from timers where kind = 'step_due')
    or exists (select 1 from delivery_ledger where not reported);

-- name: chaos_ledger
-- The crash suite's view of the delivery ledger: which step each sent Message-ID belongs to.
select enrollment_id, step_index, attempt, message_id_header, state
  from delivery_ledger
 where channel = 'email';

-- name: demo_progress
-- What `enrollstream demo` watches and checks for one campaign ($1 account, $2 campaign): enrollments by
-- status and by stop reason, email ledger rows by state, StepDelivered events projected into the
-- timeline, replies, and contacts skipped for a domain without MX. Small tables, a demo's sizes.
select (select coalesce(jsonb_object_agg(status, n), '{}')
          from (select status, count(*) as n from enrollments
                 where account_id = $1 and campaign_id = $2 group by 1) s) as statuses,
       (select coalesce(jsonb_object_agg(stop_reason, n), '{}')
          from (select stop_reason, count(*) as n from enrollments
                 where account_id = $1 and campaign_id = $2 and stop_reason is not null group by 1) s)
           as stop_reasons,
       (select coalesce(jsonb_object_agg(state, n), '{}')
          from (select state, count(*) as n from delivery_ledger
                 where account_id = $1 and channel = 'email' group by 1) s) as ledger,
       (select count(*) from enrollment_timeline
         where account_id = $1 and campaign_id = $2 and type = 'StepDelivered.v1') as delivered_events,
       (select count(*) from replies where account_id = $1 and campaign_id = $2) as replies,
       (select count(*) from enrollment_skips
         where account_id = $1 and campaign_id = $2 and kind = 'mx_invalid') as mx_skips;

-- name: count_due_timers
-- The scheduler's backlog gauge: timers due at $1 and not held by a live claim.
select count(*) from timers where due_at <= $1 and (claimed_until is null or claimed_until < $1);

-- name: chaos_enrollments
-- The crash suite compares every enrollments row with what the domain's snapshot says (row_of).
select * from enrollments;

-- name: quarantine_event
-- An event the projector cannot write, kept with why (migration 0014); the caller moves the partition's
-- checkpoint past it in the same transaction. A replay of the same offset changes nothing.
insert into unprojectable_events
       (projection, topic, partition, "offset", event_id, type, account_id, reason, value, value_size,
        value_sha256)
values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
on conflict (projection, topic, partition, "offset") do nothing;

-- name: unprojectable_events
select projection, topic, partition, "offset", event_id, type, account_id, reason, value, value_size,
       value_sha256, at
  from unprojectable_events
 order by at desc, topic desc, partition desc, "offset" desc
 limit $1;

-- name: upsert_contacts
-- From ContactProfileSet events (the last per contact of a batch): the whole profile. The version guard
-- makes a replayed or older event a no-op.
insert into contacts
    (account_id, contact_id, name, email, mobile, line_type, time_zone, opted_out, last_version, updated_at)
select * from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                     $8::bool[], $9::bigint[], $10::timestamptz[])
on conflict (account_id, contact_id) do update
   set name = excluded.name, email = excluded.email, mobile = excluded.mobile,
       line_type = excluded.line_type, time_zone = excluded.time_zone, opted_out = excluded.opted_out,
       last_version = excluded.last_version, updated_at = excluded.updated_at
 where contacts.last_version < excluded.last_version;

-- name: opt_out_contacts
-- From ContactOptedOut events: a contact with a profile is opted out from then on. A contact without one
-- gets it opted out when it is put (the decider records the profile opted out).
update contacts c
   set opted_out = true, last_version = u.version, updated_at = u.at
  from unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[]) as u(account_id, contact_id, version, at)
 where c.account_id = u.account_id and c.contact_id = u.contact_id and c.last_version < u.version;

-- name: contact_by_id
-- One contact of one account's directory (another account's contact of the same id is not found).
select account_id, contact_id, name, email, mobile, line_type, time_zone, opted_out, last_version, updated_at
  from contacts
 where account_id = $1 and contact_id = $2;

-- name: enrollments_of_campaign
-- The API's operator actions: which of these enrollment ids ($3) are the account's ($1) in the campaign
-- ($2), with the contact each belongs to (a command is keyed by its contact). Primary key lookups.
select enrollment_id, contact_id, status
  from enrollments
 where account_id = $1 and campaign_id = $2 and enrollment_id = any($3::text[]);

-- name: command_decision
-- The API's `GET /commands/{id}` and idempotent retries: the first decision of a command in the
-- account (a duplicate's later rows say only "decided before"). Index: decisions_command (0009).
select command_id, command_type, status, code, message, details, enrollment_ids, campaign_id,
       enrollment_id, contact_id, issued_at
  from decisions
 where command_id = $1 and account_id = $2
 order by (status = 'duplicate'), result_partition, result_offset
 limit 1;
