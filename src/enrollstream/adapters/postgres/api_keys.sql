-- The HTTP API's keys (migration 0015). Named queries, loaded by queries.query(name, "api_keys.sql").

-- name: insert_api_key
insert into api_keys (key_id, account_id, key_sha256, label) values ($1, $2, $3, $4)
returning key_id, account_id, label, created_at, revoked_at;

-- name: account_of_api_key
select account_id from api_keys where key_sha256 = $1 and revoked_at is null;

-- name: list_api_keys
select key_id, account_id, label, created_at, revoked_at
from api_keys
where $1::text is null or account_id = $1
order by account_id, created_at, key_id;

-- name: revoke_api_key
update api_keys set revoked_at = coalesce(revoked_at, now())
where key_id = $1
returning key_id, account_id, label, created_at, revoked_at;
