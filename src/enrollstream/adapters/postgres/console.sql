-- The Enrollments console's queries (src/enrollstream/console, docs/console.md). The page order and the
-- filters are those of `enrollments_page` (queries.sql), plus the enrolling user (seed 003), which the
-- enrollments table does not hold: it is the actor of the accepted Enroll.v1 decision (decisions,
-- index decisions_contact), so that filter costs one index probe per candidate row.

-- name: console_enrollments_after
-- One page forward: rows after the keyset cursor ($7, $8; null: the first page), at most $9.
-- $3 statuses, $4 current step, $5 name substring (% and _ match themselves), $6 enrolling actor.
select e.enrollment_id, e.contact_id, e.contact_name, e.email, e.mobile, e.status, e.stage, e.stop_reason,
       e.outcome, e.current_step, e.total_steps, e.step_label, e.next_execution_at,
       e.next_execution_indicator, e.enrolled_at, e.batch_number, e.failure_reason, e.sequence_status
  from enrollment_table e
 where e.account_id = $1
   and e.campaign_id = $2
   and ($3::text[] is null or e.status = any($3::text[]))
   and ($4::int is null or e.current_step = $4::int)
   and ($5::text is null
        or e.contact_name ilike '%' || replace(replace(replace($5::text, '\', '\\'), '%', '\%'), '_', '\_') || '%')
   and ($6::text is null or exists (
        select 1 from decisions d
         where d.account_id = e.account_id and d.contact_id = e.contact_id
           and d.command_type = 'Enroll.v1' and d.status = 'accepted' and d.actor = $6::text
           and e.enrollment_id = any(d.enrollment_ids)))
   and ($7::timestamptz is null or (e.enrolled_at, e.enrollment_id) > ($7::timestamptz, $8::text))
 order by e.enrolled_at, e.enrollment_id
 limit $9;

-- name: console_enrollments_before
-- One page back: the rows before ($7, $8), read backwards (newest first; the caller reverses them).
select e.enrollment_id, e.contact_id, e.contact_name, e.email, e.mobile, e.status, e.stage, e.stop_reason,
       e.outcome, e.current_step, e.total_steps, e.step_label, e.next_execution_at,
       e.next_execution_indicator, e.enrolled_at, e.batch_number, e.failure_reason, e.sequence_status
  from enrollment_table e
 where e.account_id = $1
   and e.campaign_id = $2
   and ($3::text[] is null or e.status = any($3::text[]))
   and ($4::int is null or e.current_step = $4::int)
   and ($5::text is null
        or e.contact_name ilike '%' || replace(replace(replace($5::text, '\', '\\'), '%', '\%'), '_', '\_') || '%')
   and ($6::text is null or exists (
        select 1 from decisions d
         where d.account_id = e.account_id and d.contact_id = e.contact_id
           and d.command_type = 'Enroll.v1' and d.status = 'accepted' and d.actor = $6::text
           and e.enrollment_id = any(d.enrollment_ids)))
   and (e.enrolled_at, e.enrollment_id) < ($7::timestamptz, $8::text)
 order by e.enrolled_at desc, e.enrollment_id desc
 limit $9;

-- name: console_enrollments_by_id
-- The rows a batch action names, only this account's and this campaign's (others are ignored).
select enrollment_id, contact_id, contact_name, email, mobile, status
  from enrollments
 where account_id = $1 and campaign_id = $2 and enrollment_id = any($3::text[]);

-- name: console_contact_enrollments
-- The contact's enrollments in one campaign, newest first (the detail view).
select enrollment_id, contact_id, contact_name, email, mobile, status, stage, stop_reason, outcome,
       step_label, next_execution_at, next_execution_indicator, enrolled_at, sequence_status,
       failure_reason, failure_detail
  from enrollment_table
 where account_id = $1 and contact_id = $2 and campaign_id = $3
 order by enrolled_at desc, enrollment_id desc;
