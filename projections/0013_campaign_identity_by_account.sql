-- Placeholder on branch i12-projector only: migration 0013 belongs to issue 12 item 7 (branch
-- i12-accounts, the same file name). It keeps the version numbers gapless here; on merge, take
-- that branch's file and regenerate schema.sql.
select 1;
