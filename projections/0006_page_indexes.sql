-- enrollstream read models, migration 0006: indexes that keep the pages' queries fast at a million
-- enrollments (the named queries enrollments_page, campaign_replies, campaign_skips in
-- src/enrollstream/adapters/postgres/queries.sql).

-- Search by contact name, case-insensitive substring (`contact_name ilike '%ann%'`): a trigram GIN index.
-- pg_trgm ships with PostgreSQL (contrib) and is available on the embedded server and the usual managed
-- services. Where it is not, replace this with the documented fallback in projections/README.md (a
-- prefix search on `lower(contact_name) text_pattern_ops`).
create extension if not exists pg_trgm;

-- The operator class is looked up in the extension's schema, not on the search path: `enrollstream
-- replay` runs these migrations with only its own schema on the path.
do $$
declare
    trgm_schema text := (
        select n.nspname from pg_extension x join pg_namespace n on n.oid = x.extnamespace
         where x.extname = 'pg_trgm'
    );
begin
    execute format(
        'create index enrollments_contact_name_trgm on enrollments using gin (contact_name %I.gin_trgm_ops)',
        trgm_schema
    );
end
$$;

-- The status and batch filters, in page order: the first 20 rows of a filter are an index range read in
-- order, however rare the status. The old (campaign_id, status) index is a prefix of the new one.
create index enrollments_campaign_status_page on enrollments (campaign_id, status, enrolled_at, enrollment_id);
drop index enrollments_campaign_status;
create index enrollments_campaign_batch_page
    on enrollments (campaign_id, batch_number, enrolled_at, enrollment_id);
drop index enrollments_campaign_batch;
