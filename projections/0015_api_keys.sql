-- enrollstream, migration 0015: the HTTP API's keys (issue 13, docs/api.md "Keys").
--
-- Not a read model: nothing in the log folds into this table, `enrollstream replay` neither rebuilds nor
-- compares it. A key belongs to one account and sees and touches only that account's campaigns,
-- contacts and enrollments. Only the SHA-256 of a key is kept: keys are 256 random bits, so a fast hash
-- is as safe as a slow one and lets every request be checked with one indexed lookup. `key_id` is the
-- key's public part (its prefix), what `api-key list` shows and `api-key revoke` takes.
create table api_keys (
    key_id      text        primary key,
    account_id  text        not null check (length(account_id) between 1 and 200),
    key_sha256  bytea       not null unique,
    label       text        not null default '',
    created_at  timestamptz not null default now(),
    revoked_at  timestamptz
);

create index api_keys_by_account on api_keys (account_id, created_at);
