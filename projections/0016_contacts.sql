-- enrollstream, migration 0016: the contact directory as a read model (issue 13, docs/architecture.md
-- "Contacts: a directory per account").
--
-- One row per (account, contact) that has a profile: the fold of ContactProfileSet (the whole profile,
-- an upsert) and ContactOptedOut (opted_out becomes true; nothing makes it false again). What the API's
-- GET /contacts/{contact_id} and the console read; the decider does not read it (the profile it decides
-- with is in the contact's aggregate). Another account's contact of the same id is another row.
create table contacts (
    account_id  text        not null,
    contact_id  text        not null,
    name        text        not null default '',
    email       text,
    mobile      text,
    line_type   text        not null default 'unknown',
    time_zone   text,
    opted_out   boolean     not null default false,
    -- the aggregate version of the last event folded into this row; replays of older events are no-ops
    last_version bigint     not null,
    updated_at  timestamptz not null,
    primary key (account_id, contact_id)
);

-- Search by name within an account (the console's search box), stable order.
create index contacts_by_name on contacts (account_id, lower(name), contact_id);
