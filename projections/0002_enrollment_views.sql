-- enrollstream read models, migration 0002: the views behind the Enrollments page (seed 000).

-- The enrollment table as the page shows it: "Step 2 of 5" and the Next Execution indicator.
-- Overdue: should have been sent already; Coming soon: within the next hour; Waiting: later;
-- null (shown as "—"): no next step (finished, or nothing scheduled).
create view enrollment_table as
select e.*,
       case when e.current_step is not null and e.total_steps is not null
            then 'Step ' || e.current_step || ' of ' || e.total_steps end as step_label,
       case when e.next_execution_at is null then null
            when e.next_execution_at < now() then 'Overdue'
            when e.next_execution_at <= now() + interval '1 hour' then 'Coming soon'
            else 'Waiting' end as next_execution_indicator
  from enrollments e;

-- The stats cards: one row per campaign, counted from the enrollments table itself, so the cards can
-- never disagree with the table.
create view campaign_stats as
select campaign_id,
       account_id,
       count(*)                                              as total,
       count(*) filter (where status in ('pending', 'active')) as active,
       count(*) filter (where status = 'processing')         as processing,
       count(*) filter (where status in ('completed', 'delivered')) as completed,
       count(*) filter (where status = 'stopped')            as stopped,
       count(*) filter (where status = 'failed')             as failed,
       count(*) filter (where status = 'queued')             as queued,
       count(*) filter (where status = 'awaiting_trigger')   as awaiting_trigger,
       count(*) filter (where status = 'expired')            as expired,
       count(*) filter (where status = 'handed_off')         as handed_off,
       count(*) filter (where status = 'unenrolled')         as unenrolled
  from enrollments
 group by campaign_id, account_id;

-- The page lists 20 per page, stably ordered, filtered by status / batch / step, searched by name.
create index enrollments_campaign_page on enrollments (campaign_id, enrolled_at, enrollment_id);
create index enrollments_campaign_batch on enrollments (campaign_id, batch_number);
