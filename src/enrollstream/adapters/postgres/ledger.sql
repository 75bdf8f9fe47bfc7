-- The dispatcher's and the inbound matcher's SQL on `delivery_ledger` (projections/0008).

-- name: ledger_rows
-- The rows of a poll batch's attempts, in one round trip.
select d.*
  from delivery_ledger d
  join unnest($1::text[], $2::integer[], $3::integer[]) as k(enrollment_id, step_index, attempt)
    on (d.enrollment_id, d.step_index, d.attempt) = (k.enrollment_id, k.step_index, k.attempt);

-- name: lock_sender
-- Serialises the rate-limit check and the `started` inserts per sender across processes.
select pg_advisory_xact_lock(hashtextextended('enrollstream.sender:' || $1::text, 0));

-- name: sender_window_ranks
-- For one sender and one rate-limit window, under its lock: how many counted sends are after now ($2;
-- another host's clock ahead), and the counted send times of ranks $4 .. $4 + $5 - 1 (newest first)
-- after the window's start ($3): all that `next_send_at` can look at while this batch adds at most $5
-- sends (domain/delivery_policy.py, WindowRanks). Walks the partial index delivery_ledger_sender_sends
-- (migration 0008) from the newest send down to rank $4 + $5: the rows returned are bounded by the
-- batch, not by the sender's volume, and nothing older than the window is touched.
select (select count(*)
          from delivery_ledger
         where sender = $1 and started_at > $2 and state in ('started', 'sent', 'unknown')) as ahead,
       array(select started_at
               from delivery_ledger
              where sender = $1 and started_at > $3 and state in ('started', 'sent', 'unknown')
              order by started_at desc
             offset $4 limit $5) as ranked;

-- name: insert_started
-- A batch of attempts, committed before any connection to the transport. A row that exists already
-- wins (another instance is on it, or did it): it is not returned and the caller rereads it. Only a
-- deferral of an earlier dispatch of the attempt (migration 0010) gives way to this dispatch.
insert into delivery_ledger (
    enrollment_id, step_index, attempt, message_id, message_id_header, account_id, contact_id,
    channel, sender, recipient, state, started_at, dispatch
)
select v.enrollment_id, v.step_index, v.attempt, v.message_id, v.message_id_header, v.account_id,
       v.contact_id, v.channel, v.sender, v.recipient, 'started', $11, v.dispatch
  from unnest($1::text[], $2::integer[], $3::integer[], $4::text[], $5::text[], $6::text[], $7::text[],
              $8::text[], $9::text[], $10::text[], $12::integer[])
       as v(enrollment_id, step_index, attempt, message_id, message_id_header, account_id, contact_id,
            channel, sender, recipient, dispatch)
on conflict (enrollment_id, step_index, attempt) do update
   set message_id_header = excluded.message_id_header, sender = excluded.sender,
       recipient = excluded.recipient, state = 'started', detail = '', started_at = excluded.started_at,
       finished_at = null, retry_at = null, dispatch = excluded.dispatch, reported = false,
       reported_at = null
 where delivery_ledger.state = 'deferred' and delivery_ledger.dispatch < excluded.dispatch
returning *;

-- name: insert_deferred
-- Senders over their limit: nothing starts. Recorded so that processing the same StepDispatched
-- again reports the same deferral instead of sending; a later dispatch may replace it.
insert into delivery_ledger (
    enrollment_id, step_index, attempt, message_id, message_id_header, account_id, contact_id,
    channel, sender, recipient, state, detail, started_at, finished_at, dispatch, retry_at
)
select v.enrollment_id, v.step_index, v.attempt, v.message_id, v.message_id_header, v.account_id,
       v.contact_id, v.channel, v.sender, v.recipient, 'deferred', v.detail, $12, $12, v.dispatch,
       v.retry_at
  from unnest($1::text[], $2::integer[], $3::integer[], $4::text[], $5::text[], $6::text[], $7::text[],
              $8::text[], $9::text[], $10::text[], $11::text[], $13::integer[], $14::timestamptz[])
       as v(enrollment_id, step_index, attempt, message_id, message_id_header, account_id, contact_id,
            channel, sender, recipient, detail, dispatch, retry_at)
on conflict (enrollment_id, step_index, attempt) do update
   set message_id_header = excluded.message_id_header, sender = excluded.sender,
       recipient = excluded.recipient, detail = excluded.detail, started_at = excluded.started_at,
       finished_at = excluded.finished_at, dispatch = excluded.dispatch, retry_at = excluded.retry_at,
       reported = false, reported_at = null
 where delivery_ledger.state = 'deferred' and delivery_ledger.dispatch < excluded.dispatch
returning *;

-- name: insert_final
-- Attempts that ended before any send (an unusable message): straight to their outcome.
insert into delivery_ledger (
    enrollment_id, step_index, attempt, message_id, message_id_header, account_id, contact_id,
    channel, sender, recipient, state, retryable, detail, code, provider_message_id, started_at,
    finished_at, dispatch
)
select v.enrollment_id, v.step_index, v.attempt, v.message_id, v.message_id_header, v.account_id,
       v.contact_id, v.channel, v.sender, v.recipient, v.state, v.retryable, v.detail, v.code,
       v.provider_message_id, $16, $16, v.dispatch
  from unnest($1::text[], $2::integer[], $3::integer[], $4::text[], $5::text[], $6::text[], $7::text[],
              $8::text[], $9::text[], $10::text[], $11::text[], $12::boolean[], $13::text[],
              $14::integer[], $15::text[], $17::integer[])
       as v(enrollment_id, step_index, attempt, message_id, message_id_header, account_id, contact_id,
            channel, sender, recipient, state, retryable, detail, code, provider_message_id, dispatch)
on conflict (enrollment_id, step_index, attempt) do update
   set state = excluded.state, retryable = excluded.retryable, detail = excluded.detail,
       code = excluded.code, provider_message_id = excluded.provider_message_id,
       started_at = excluded.started_at, finished_at = excluded.finished_at, retry_at = null,
       dispatch = excluded.dispatch, reported = false, reported_at = null
 where delivery_ledger.state = 'deferred' and delivery_ledger.dispatch < excluded.dispatch
returning *;

-- name: finish
-- started -> the outcome, for a batch of attempts; only from started, so an outcome is never
-- overwritten (a row not returned had its outcome recorded by someone else first).
update delivery_ledger d
   set state = v.state, retryable = v.retryable, detail = v.detail, code = v.code,
       provider_message_id = v.provider_message_id, finished_at = $9
  from unnest($1::text[], $2::integer[], $3::integer[], $4::text[], $5::boolean[], $6::text[],
              $7::integer[], $8::text[])
       as v(enrollment_id, step_index, attempt, state, retryable, detail, code, provider_message_id)
 where (d.enrollment_id, d.step_index, d.attempt) = (v.enrollment_id, v.step_index, v.attempt)
   and d.state = 'started'
returning d.*;

-- name: mark_reported
-- Only the rows as reported: a later dispatch that replaced a deferral is not marked by the old report.
update delivery_ledger d
   set reported = true, reported_at = coalesce(d.reported_at, $6)
  from unnest($1::text[], $2::integer[], $3::integer[], $4::text[], $5::integer[])
       as v(enrollment_id, step_index, attempt, state, dispatch)
 where (d.enrollment_id, d.step_index, d.attempt) = (v.enrollment_id, v.step_index, v.attempt)
   and d.state = v.state and d.dispatch = v.dispatch;

-- name: match_message_ids
-- The ledger rows whose Message-ID an inbound message names (In-Reply-To, References).
select enrollment_id, step_index, attempt, account_id, contact_id, message_id, message_id_header
  from delivery_ledger
 where message_id_header = any($1::text[]);

-- name: bounce_by_message_id
-- The message a bounce callback names by its Message-ID header, if it is of the endpoint's account.
select enrollment_id, step_index, account_id, contact_id, message_id
  from delivery_ledger
 where message_id_header = $2 and account_id = $1;

-- name: bounce_by_recipient
-- A bounce callback without our Message-ID: the account's latest email to that address that may have
-- reached the provider (migration 0018's index).
select enrollment_id, step_index, account_id, contact_id, message_id
  from delivery_ledger
 where account_id = $1 and lower(recipient) = lower($2) and channel = 'email'
   and state in ('sent', 'unknown')
 order by started_at desc
 limit 1;
