-- enrollstream read models, migration 0012: what an enrollment's MX check was (issue 11, item 12).
--
-- A campaign with `verify_email_mx` enrolls a contact whose email domain has MX records (`verified`)
-- and, when DNS gives no answer (a timeout, SERVFAIL, REFUSED), enrolls it anyway, `unverified`: a DNS
-- outage must neither hold a partition nor turn into `mx_invalid` skips. A campaign that does not
-- verify MX (or sends no email) records `not_required`. A domain that answered without MX is never
-- enrolled: it is the skip `mx_invalid` (enrollment_skips). docs/delivery.md "MX verification".
alter table enrollments add column mx_check text not null default 'not_required'
    constraint enrollments_mx_check_check check (mx_check in ('verified', 'unverified', 'not_required'));

-- Rows projected before this migration: what their ContactEnrolled event recorded (the same rule the
-- domain applies to events without `mx_check`: the campaign verified MX and an answer came along).
update enrollments e
   set mx_check = case when t.data->'mx'->>'answered' = 'false' then 'unverified' else 'verified' end
  from enrollment_timeline t
 where t.enrollment_id = e.enrollment_id
   and t.account_id = e.account_id
   and t.type = 'ContactEnrolled.v1'
   and jsonb_typeof(t.data->'mx') = 'object'
   and coalesce((t.data->'campaign'->>'verify_email_mx')::boolean, false)
   and exists (select 1 from jsonb_array_elements(t.data->'campaign'->'steps') s
                where s->>'channel' = 'email');

-- The enrollment table gains the column (its `e.*` was expanded when 0011 created it); otherwise the
-- same view.
drop view enrollment_table;
create view enrollment_table as
select e.*,
       case when e.current_step is not null and e.total_steps is not null
            then 'Step ' || e.current_step || ' of ' || e.total_steps end as step_label,
       case when e.next_execution_at is null then null
            when e.next_execution_at < now() then 'Overdue'
            when e.next_execution_at <= now() + interval '1 hour' then 'Coming soon'
            else 'Waiting' end as next_execution_indicator,
       case when e.status = 'failed' then 'Failed'
            when e.status = 'stopped' and e.stop_reason = 'opted_out' then 'Opted Out'
            when e.status in ('delivered', 'completed', 'stopped', 'expired', 'handed_off', 'unenrolled')
            then case e.outcome when 'responded' then 'Finished, responded'
                                when 'no_response' then 'Finished, no response'
                                else 'Finished, stopped' end
            else 'Pending' end as sequence_status
  from enrollments e;
