-- Named queries of `enrollstream as-of` (runtime/as_of.py, docs/time-travel.md "As of T").

-- name: contact_event_positions
-- Where one contact's events sit in the events topic (migration 0017), in the order they were decided,
-- up to (not including) its first event after $3: as of $3 the contact's history is that prefix. Null
-- positions: rows the projector wrote before migration 0017.
select t.event_partition, t.event_offset, t.version
  from enrollment_timeline t
 where t.account_id = $1 and t.contact_id = $2
   and t.version < coalesce(
         (select min(a.version) from enrollment_timeline a
           where a.account_id = $1 and a.contact_id = $2 and a.occurred_at > $3),
         9223372036854775807)
 order by t.version, t.event_id;

-- name: events_checkpoint
-- How far the live projector has applied one partition of the events topic (the tail after it is not
-- in the timeline yet).
select next_offset from projection_checkpoints
 where projection = 'read_models' and topic = $1 and partition = $2;

-- name: rows_of_campaign
-- A rebuilt schema's enrollment rows of one campaign (search_path is the schema), oldest first.
select * from enrollments
 where account_id = $1 and campaign_id = $2
 order by enrolled_at, enrollment_id
 limit $3;

-- name: cards_of_campaign
-- A rebuilt schema's stats cards of one campaign (the same view the live cards are read from).
select * from campaign_stats_cards where account_id = $1 and campaign_id = $2;
