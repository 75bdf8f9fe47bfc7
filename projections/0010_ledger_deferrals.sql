-- enrollstream migration 0010: deferrals in the delivery ledger (docs/delivery.md, "Rate limits").
--
-- A send over its sender's rate limit is not held in memory: the dispatcher records the attempt
-- `deferred` (nothing started, nothing counted against the limits) with the dispatch number of the
-- StepDispatched it processed and the time the sender may send again, and reports it. Processing that
-- same StepDispatched again (a restart before the offset commit) re-reports the same deferral and
-- sends nothing; only a later dispatch of the attempt (the decider rescheduled it) may replace the row
-- with `started` or a new deferral. Final rows keep the dispatch that sent them.
alter table delivery_ledger add column dispatch integer not null default 1 check (dispatch >= 1);
alter table delivery_ledger add column retry_at timestamptz;  -- deferred rows only
alter table delivery_ledger drop constraint delivery_ledger_state_check;
alter table delivery_ledger add constraint delivery_ledger_state_check
    check (state in ('deferred', 'started', 'sent', 'bounced', 'failed', 'unknown', 'error'));
alter table delivery_ledger add constraint delivery_ledger_deferral_has_retry_at
    check ((state = 'deferred') = (retry_at is not null));
