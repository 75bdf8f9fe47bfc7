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
-- instance is on it, or did it): nothing is returned and the caller rereads it. Only a deferral of an
-- earlier dispatch of the attempt (migration 0010) gives way to this dispatch.
insert into delivery_ledger (
    enrollment_id, step_index, attempt, message_id, message_id_header, account_id, contact_id,
    channel, sender, recipient, state, started_at, dispatch
) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'started', $11, $12)
on conflict (enrollment_id, step_index, attempt) do update
   set message_id_header = excluded.message_id_header, sender = excluded.sender,
       recipient = excluded.recipient, state = 'started', detail = '', started_at = excluded.started_at,
       finished_at = null, retry_at = null, dispatch = excluded.dispatch, reported = false,
       reported_at = null
 where delivery_ledger.state = 'deferred' and delivery_ledger.dispatch < excluded.dispatch
returning *;

-- name: insert_deferred
-- The sender is over its limit: nothing starts. Recorded so that processing the same StepDispatched
-- again reports the same deferral instead of sending; a later dispatch may replace it.
insert into delivery_ledger (
    enrollment_id, step_index, attempt, message_id, message_id_header, account_id, contact_id,
    channel, sender, recipient, state, detail, started_at, finished_at, dispatch, retry_at
) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'deferred', $11, $12, $12, $13, $14)
on conflict (enrollment_id, step_index, attempt) do update
   set message_id_header = excluded.message_id_header, sender = excluded.sender,
       recipient = excluded.recipient, detail = excluded.detail, started_at = excluded.started_at,
       finished_at = excluded.finished_at, dispatch = excluded.dispatch, retry_at = excluded.retry_at,
       reported = false, reported_at = null
 where delivery_ledger.state = 'deferred' and delivery_ledger.dispatch < excluded.dispatch
returning *;

-- name: insert_final
-- An attempt that ended before any send (an unusable message): straight to its outcome.
insert into delivery_ledger (
    enrollment_id, step_index, attempt, message_id, message_id_header, account_id, contact_id,
    channel, sender, recipient, state, retryable, detail, code, provider_message_id, started_at,
    finished_at, dispatch
) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $16, $17)
on conflict (enrollment_id, step_index, attempt) do update
   set state = excluded.state, retryable = excluded.retryable, detail = excluded.detail,
       code = excluded.code, provider_message_id = excluded.provider_message_id,
       started_at = excluded.started_at, finished_at = excluded.finished_at, retry_at = null,
       dispatch = excluded.dispatch, reported = false, reported_at = null
 where delivery_ledger.state = 'deferred' and delivery_ledger.dispatch < excluded.dispatch
returning enrollment_id;

-- name: finish
-- started -> the outcome; only from started, so an outcome is never overwritten.
update delivery_ledger
   set state = $4, retryable = $5, detail = $6, code = $7, provider_message_id = $8, finished_at = $9
 where enrollment_id = $1 and step_index = $2 and attempt = $3 and state = 'started'
returning *;

-- name: mark_reported
-- Only the row as reported: a later dispatch that replaced a deferral is not marked by the old report.
update delivery_ledger
   set reported = true, reported_at = coalesce(reported_at, $4)
 where enrollment_id = $1 and step_index = $2 and attempt = $3 and state = $5 and dispatch = $6;

-- name: match_message_ids
-- The ledger rows whose Message-ID an inbound message names (In-Reply-To, References).
select enrollment_id, step_index, attempt, account_id, contact_id, message_id, message_id_header
  from delivery_ledger
 where message_id_header = any($1::text[]);
