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
create temporary table enrollments_stage (like enrollments including defaults) on commit drop;

-- name: merge_enrollments_stage
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
    updated_at = excluded.updated_at
 where enrollments.last_version < excluded.last_version;

-- name: insert_timeline
insert into enrollment_timeline
    (event_id, account_id, contact_id, campaign_id, enrollment_id, version, type, occurred_at, causation_id, data)
select * from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[],
                     $8::timestamptz[], $9::text[], $10::jsonb[])
on conflict (event_id) do nothing;

-- name: insert_skips
insert into enrollment_skips
    (event_id, account_id, contact_id, campaign_id, kind, reason, contact_name, email, batch_number,
     contact_import_id, evidence, skipped_at)
select * from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                     $8::text[], $9::int[], $10::text[], $11::jsonb[], $12::timestamptz[])
on conflict (event_id) do nothing;

-- name: insert_replies
insert into replies
    (event_id, account_id, contact_id, campaign_id, enrollment_id, replied_at, hours_to_reply, first_reply,
     reply_action, inbound_message_id, excerpt)
select * from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],
                     $7::numeric[], $8::bool[], $9::text[], $10::text[], $11::text[])
on conflict (event_id) do nothing;
