-- enrollstream read models, migration 0007: durable timers for the scheduler.

-- One row per pending timer of an enrollment, kept by the projector in the same transaction as the other
-- read models: StepScheduled sets the `step_due` timer (StepDispatched removes it), ExpiryScheduled the
-- `expiry` timer, TriggerAwaited with a timeout the `wait_timeout` timer (TriggerReceived removes it),
-- and every ending (stopped, unenrolled, completed, delivered, failed, expired, handed off) removes all
-- of the enrollment's timers. An enrollment has at most one timer per kind.
--
-- Everything but `claimed_until` is a pure fold of the events topic (replay compares it). `claimed_until`
-- is the scheduler's lease: a claim sets it, and the row is not claimed again before it passes, so
-- several schedulers never fire one row at once; a row whose command was deferred or went stale stays
-- and fires again after the lease. A new timer of the same kind (the next step, a retry) clears it.
create table timers (
    enrollment_id  text        not null,
    kind           text        not null check (kind in ('step_due', 'expiry', 'wait_timeout')),
    account_id     text        not null,
    contact_id     text        not null,
    campaign_id    text        not null,
    step_index     integer,                  -- step_due only
    attempt        integer,                  -- step_due only
    due_at         timestamptz not null,
    -- dispatch order within a campaign: batch number, priority first, then enrollment time (seed 001)
    batch_number   integer     not null default 0,
    priority       boolean     not null default false,
    enrolled_at    timestamptz not null,
    claimed_until  timestamptz,
    primary key (enrollment_id, kind),
    check ((kind = 'step_due') = (step_index is not null and attempt is not null))
);

-- Claimable rows: never claimed, by due time; and claimed ones, by when their lease runs out. The claim's
-- `due_at <= now and (claimed_until is null or claimed_until < now)` reads both (a BitmapOr).
create index timers_due_unclaimed on timers (due_at) where claimed_until is null;
create index timers_lease on timers (claimed_until) where claimed_until is not null;
