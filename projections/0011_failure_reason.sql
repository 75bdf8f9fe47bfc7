-- enrollstream read models, migration 0011: why an enrollment failed (issue 11, item 6).
--
-- A permanent recipient failure (an invalid number or address, a 5xx on the recipient, a hard bounce)
-- ends the enrollment as `failed` (seeds 002, 003), and the row keeps why: `failure_reason` is
-- `invalid_recipient`, `bounced` or `undeliverable` (temporary failures until the attempts ran out),
-- `failure_detail` what the provider or the dispatcher said. Both null unless the status is `failed`.
alter table enrollments add column failure_reason text;
alter table enrollments add column failure_detail text;

-- The dispatcher's ledger records an address that cannot be a recipient as its own final state.
alter table delivery_ledger drop constraint delivery_ledger_state_check;
alter table delivery_ledger add constraint delivery_ledger_state_check
    check (state in ('deferred', 'started', 'sent', 'bounced', 'failed', 'unknown', 'error', 'invalid_recipient'));

-- The enrollment table gains the failure columns (its `e.*` was expanded when 0002 created it) and
-- seed 003's status label, computed from the same columns the stats cards count: a failed enrollment
-- is "Failed" here and counted by the Failed card, whatever the failure reason. Omitted Opted Out and
-- Omitted Landline are skips (enrollment_skips), not enrollments.
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
