-- enrollstream read models, migration 0005: BulkEnroll requests and their summaries (seed 001's
-- `POST /campaigns/:id/enroll` answer: enrolled, batches, batch_size, skipped [{contact_id, email, reason}]).

-- The children of a BulkEnroll carry its command id (ContactEnrolled / EnrollmentSkipped
-- `bulk_enroll_id`); null for single enrollments.
alter table enrollments add column bulk_enroll_id text;
alter table enrollment_skips add column bulk_enroll_id text;
create index enrollments_bulk_enroll on enrollments (bulk_enroll_id) where bulk_enroll_id is not null;
create index enrollment_skips_bulk_enroll on enrollment_skips (bulk_enroll_id) where bulk_enroll_id is not null;

-- One row per accepted BulkEnroll, from its BulkEnrollAccepted event (the decider writes it to the events
-- topic in the transaction that fans the children out). A redelivered BulkEnroll repeats the same event
-- id; the first row stays (`on conflict do nothing`), so nothing is counted twice.
create table bulk_enrollments (
    bulk_enroll_id    text        primary key,  -- the BulkEnroll command id
    event_id          text        not null unique,
    account_id        text        not null,
    campaign_id       text        not null,
    campaign_version  integer     not null,
    contact_import_id text        not null,
    contacts          integer     not null,     -- distinct contacts fanned out
    batches           integer     not null,
    batch_size        integer     not null,
    requested_by      text        not null default '',
    requested_at      timestamptz not null
);
create index bulk_enrollments_campaign on bulk_enrollments (campaign_id, requested_at);
create index bulk_enrollments_import on bulk_enrollments (account_id, contact_import_id);

-- The summary of each BulkEnroll as the children are decided and projected:
--   enrolled  children that became an enrollment (whatever its status is now)
--   skipped   children recorded as skips (already enrolled, cross-campaign duplicate, mx_invalid, ...),
--             with `skipped_list` as seed 001's [{contact_id, email, reason}] (and kind), in batch order
--   pending   contacts - enrolled - skipped: children not decided or not projected yet, or refused
--             (a refused child, e.g. contact_not_found without facts, has a rejected command result and
--             no event, so it stays pending; see the command-results topic)
--   complete  pending = 0
create view bulk_enroll_summaries as
select b.bulk_enroll_id,
       b.account_id,
       b.campaign_id,
       b.contact_import_id,
       b.contacts,
       b.batches,
       b.batch_size,
       b.requested_by,
       b.requested_at,
       coalesce(e.enrolled, 0)                                  as enrolled,
       coalesce(s.skipped, 0)                                   as skipped,
       coalesce(s.skipped_list, '[]'::jsonb)                    as skipped_list,
       b.contacts - coalesce(e.enrolled, 0) - coalesce(s.skipped, 0) as pending,
       b.contacts - coalesce(e.enrolled, 0) - coalesce(s.skipped, 0) <= 0 as complete
  from bulk_enrollments b
  left join lateral (
        select count(*) as enrolled
          from enrollments
         where bulk_enroll_id = b.bulk_enroll_id
       ) e on true
  left join lateral (
        select count(*) as skipped,
               jsonb_agg(
                   jsonb_build_object('contact_id', contact_id, 'email', email, 'reason', reason, 'kind', kind)
                   order by batch_number, skipped_at, contact_id
               ) as skipped_list
          from enrollment_skips
         where bulk_enroll_id = b.bulk_enroll_id
       ) s on true;
