-- no-transaction
-- The retention job finds ended holds by when the work ended. Built concurrently, alone in its migration
-- (outside a transaction): a plain build holds every write to the table while it reads all of it, and the
-- call log's writers include a refresh between Astra's answer and the commit of its pair.
CREATE INDEX CONCURRENTLY IF NOT EXISTS guard_hold_ended ON guard_hold (ended_at) WHERE ended_at IS NOT NULL;
