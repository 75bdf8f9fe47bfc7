-- enrollstream read models, migration 0004: the stats cards become a table the projector maintains.
--
-- 0002's `campaign_stats` view counted `enrollments` on every read: fine for a demo, a sequential scan
-- of a campaign's rows at a million enrollments. It is replaced, under the same name, by a table of
-- per-(account, campaign) counters: `total` and one column per enrollment status (EnrollmentStatus in
-- src/enrollstream/domain/statuses.py). The seed-000 cards (Active = pending + active, Completed =
-- completed + delivered, ...) are the view `campaign_stats_cards` below.
--
-- Who maintains it: the projector's `merge_enrollments_stage` statement (adapters/postgres/queries.sql),
-- in the same statement and transaction as the enrollments upsert. It captures each staged row's old
-- status in a CTE (the statement's snapshot, taken after the batch locked its checkpoints, so no other
-- projector can have changed those rows), takes the new status from the upsert's RETURNING (only rows
-- the version guard let through), and adds the net deltas with one upsert ordered by
-- (account_id, campaign_id). Why not a trigger: an `insert ... on conflict do update` fires the insert
-- and the update statement triggers separately, so one batch would lock stats rows in two rounds, in
-- two orders, and two projector instances sharing hot campaigns could deadlock; one ordered upsert per
-- batch cannot. The price is that only the projector's write path keeps the counters: anything else
-- that writes `enrollments` must go through it (tests do), and the `campaign_stats_mismatches` query
-- reports any disagreement with counting the table.
drop view campaign_stats;

create table campaign_stats (
    account_id       text   not null,
    campaign_id      text   not null,
    total            bigint not null default 0,
    pending          bigint not null default 0,
    queued           bigint not null default 0,
    awaiting_trigger bigint not null default 0,
    active           bigint not null default 0,
    processing       bigint not null default 0,
    delivered        bigint not null default 0,
    completed        bigint not null default 0,
    stopped          bigint not null default 0,
    failed           bigint not null default 0,
    expired          bigint not null default 0,
    handed_off       bigint not null default 0,
    unenrolled       bigint not null default 0,
    primary key (account_id, campaign_id)
);
create index campaign_stats_campaign on campaign_stats (campaign_id);

-- Backfill from what the projector has written so far (the migration runs in one transaction; stop the
-- projector while migrating, as for every migration).
insert into campaign_stats
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
 group by account_id, campaign_id;

-- The stats cards of seed 000 (and seed 002's extra statuses), one row per campaign, read from the
-- counters: Active counts pending and active enrollments; Completed counts completed sequences and
-- delivered blasts.
create view campaign_stats_cards as
select account_id,
       campaign_id,
       total,
       pending + active        as active,
       processing,
       completed + delivered   as completed,
       stopped,
       failed,
       queued,
       awaiting_trigger,
       expired,
       handed_off,
       unenrolled
  from campaign_stats;
