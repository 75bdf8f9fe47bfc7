-- Placeholder on the receiver branch only: 0018 belongs to the bounce-webhooks work (0018_ledger_recipients.sql),
-- which lands with its own file; drop this one when merging (migration versions run 1..n without gaps).
select 1;
