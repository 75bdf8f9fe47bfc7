-- The dispatcher's and the inbound matcher's SQL on `delivery_ledger` (projections/0008).

-- name: ledger_row
select * from delivery_ledger where enrollment_id = $1 and step_index = $2 and attempt = $3;

-- name: lock_sender
-- Serialises the rate-limit check and the `started` insert per sender across processes.
select pg_advisory_xact_lock(hashtextextended('enrollstream.sender:' || $1::text, 0));

-- name: sender_sends_since
-- The attempts that may have reached the provider, at their start: what the rate limits count.
select started_at
  from delivery_ledger
 where sender = $1 and started_at > $2 and state in ('started', 'sent', 'unknown')
 order by started_at desc;

-- name: insert_started
-- Committed before any connection to the transport. A row that exists already wins (another
-- instance is on it, or did it): the caller rereads it.
insert into delivery_ledger (
    enrollment_id, step_index, attempt, message_id, message_id_header, account_id, contact_id,
    channel, sender, recipient, state, started_at
) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'started', $11)
on conflict do nothing
returning enrollment_id;

-- name: insert_final
-- An attempt that ended before any send (an unusable message): straight to its outcome.
insert into delivery_ledger (
    enrollment_id, step_index, attempt, message_id, message_id_header, account_id, contact_id,
    channel, sender, recipient, state, retryable, detail, code, provider_message_id, started_at,
    finished_at
) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $16)
on conflict do nothing
returning enrollment_id;

-- name: finish
-- started -> the outcome; only from started, so an outcome is never overwritten.
update delivery_ledger
   set state = $4, retryable = $5, detail = $6, code = $7, provider_message_id = $8, finished_at = $9
 where enrollment_id = $1 and step_index = $2 and attempt = $3 and state = 'started'
returning *;

-- name: mark_reported
update delivery_ledger
   set reported = true, reported_at = coalesce(reported_at, $4)
 where enrollment_id = $1 and step_index = $2 and attempt = $3;

-- name: match_message_ids
-- The ledger rows whose Message-ID an inbound message names (In-Reply-To, References).
select enrollment_id, step_index, attempt, account_id, contact_id, message_id, message_id_header
  from delivery_ledger
 where message_id_header = any($1::text[]);
