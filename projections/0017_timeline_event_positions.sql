-- enrollstream read models, migration 0017: where each timeline event sits in the events topic (issue 16,
-- docs/time-travel.md "As of T").
--
-- `enrollstream as-of T --contact K` rebuilds one contact's rows at T from the events topic itself, the
-- truth, not from these rows; this index tells it which records to fetch (partition and offset), so its
-- cost is that contact's events, not the topic. The projector fills both from the record it read. Rows
-- written before this migration have them null: as-of then scans that contact's one partition for its
-- key instead (and says so). Found through the existing `enrollment_timeline_contact` index
-- (account_id, contact_id, version).
alter table enrollment_timeline
    add column event_partition integer,
    add column event_offset    bigint;
