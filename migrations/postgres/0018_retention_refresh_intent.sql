-- The retention job finds closed refresh intents by when the work ended. A plain build, in the migration's
-- transaction: it holds writes to the table while it reads it (see README, "Retention", on a large call log).
-- Not CONCURRENTLY: a second process waiting on the migrator's lock holds a snapshot that such a build waits
-- for, a deadlock that leaves an invalid index behind.
CREATE INDEX refresh_intent_closed ON refresh_intent (closed_at) WHERE closed_at IS NOT NULL;
