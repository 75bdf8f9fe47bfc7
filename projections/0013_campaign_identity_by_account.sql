-- enrollstream read models, migration 0013: a campaign is (account_id, campaign_id) (issue 12, item 7).
--
-- Two accounts may use the same campaign id for two different campaigns. Every read of a campaign's rows
-- already says `account_id = $1 and campaign_id = $2`; the indexes behind those reads led with
-- campaign_id alone, so one account's page or stats walked the other account's rows of the same id.
-- They now lead with the account (same names, same column order after it). The campaign_stats index on
-- campaign_id alone served nothing the primary key (account_id, campaign_id) does not.

drop index enrollments_campaign_page;
create index enrollments_campaign_page on enrollments (account_id, campaign_id, enrolled_at, enrollment_id);
drop index enrollments_campaign_status_page;
create index enrollments_campaign_status_page
    on enrollments (account_id, campaign_id, status, enrolled_at, enrollment_id);
drop index enrollments_campaign_batch_page;
create index enrollments_campaign_batch_page
    on enrollments (account_id, campaign_id, batch_number, enrolled_at, enrollment_id);
drop index enrollment_skips_campaign_kind;
create index enrollment_skips_campaign_kind on enrollment_skips (account_id, campaign_id, kind, skipped_at);
drop index replies_campaign;
create index replies_campaign on replies (account_id, campaign_id, replied_at);
drop index bulk_enrollments_campaign;
create index bulk_enrollments_campaign on bulk_enrollments (account_id, campaign_id, requested_at);
drop index campaign_stats_campaign;

-- A BulkEnroll is identified by its command id within its account (command ids are the idempotency keys
-- of one account's commands): two accounts' BulkEnrolls with the same command id are two requests, and
-- a summary counts only its own account's children.
alter table bulk_enrollments drop constraint bulk_enrollments_pkey;
alter table bulk_enrollments add primary key (account_id, bulk_enroll_id);
drop index enrollments_bulk_enroll;
create index enrollments_bulk_enroll on enrollments (account_id, bulk_enroll_id) where bulk_enroll_id is not null;
drop index enrollment_skips_bulk_enroll;
create index enrollment_skips_bulk_enroll
    on enrollment_skips (account_id, bulk_enroll_id) where bulk_enroll_id is not null;

create or replace view bulk_enroll_summaries as
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
         where account_id = b.account_id and bulk_enroll_id = b.bulk_enroll_id
       ) e on true
  left join lateral (
        select count(*) as skipped,
               jsonb_agg(
                   jsonb_build_object('contact_id', contact_id, 'email', email, 'reason', reason, 'kind', kind)
                   order by batch_number, skipped_at, contact_id
               ) as skipped_list
          from enrollment_skips
         where account_id = b.account_id and bulk_enroll_id = b.bulk_enroll_id
       ) s on true;
