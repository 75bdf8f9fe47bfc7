-- Named queries of the inbound mail receiver and the inbound role (migration 0019).

-- name: load_imap_checkpoint
select uidvalidity, last_uid from inbound_imap_checkpoints where mailbox_key = $1;

-- name: save_imap_checkpoint
-- Never backwards under one UIDVALIDITY; a new UIDVALIDITY replaces the old one and its UID.
insert into inbound_imap_checkpoints (mailbox_key, uidvalidity, last_uid, updated_at)
values ($1, $2, $3, now())
on conflict (mailbox_key) do update
   set uidvalidity = excluded.uidvalidity, last_uid = excluded.last_uid, updated_at = now()
 where inbound_imap_checkpoints.uidvalidity <> excluded.uidvalidity
    or inbound_imap_checkpoints.last_uid < excluded.last_uid;

-- name: keep_unmatched
insert into inbound_unmatched
       (account_id, inbound_message_id, reason, from_address, subject, received_at, record)
values ($1, $2, $3, $4, $5, $6, $7)
on conflict (coalesce(account_id, ''), inbound_message_id) do nothing
returning id;

-- name: prune_unmatched
-- Keeps the newest $1 rows.
delete from inbound_unmatched
 where id <= (select id from inbound_unmatched order by id desc offset $1 limit 1);

-- name: try_lock_mailbox
-- One poller per mailbox across processes: held on the poller's own connection while it reads.
select pg_try_advisory_lock(hashtextextended('enrollstream.imap:' || $1, 0));
