-- The retention job finds closed refresh intents by when the work ended.
CREATE INDEX refresh_intent_closed ON refresh_intent (closed_at) WHERE closed_at IS NOT NULL;
