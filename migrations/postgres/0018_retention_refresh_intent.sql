-- no-transaction
-- The retention job finds closed refresh intents by when the work ended. Built concurrently, alone in its migration
-- (outside a transaction): a plain build holds every write to the table while it reads all of it, and the
-- call log's writers include a refresh between Astra's answer and the commit of its pair.
CREATE INDEX CONCURRENTLY IF NOT EXISTS refresh_intent_closed ON refresh_intent (closed_at) WHERE closed_at IS NOT NULL;
