-- The retention job forgets rows whose work is over by when it ended: these let it find them without
-- reading every row (the call log alone gains a row per Astra request).
CREATE INDEX api_call_at ON api_call (at);
CREATE INDEX webhook_inbox_processed ON webhook_inbox (processed_at) WHERE processed_at IS NOT NULL;
CREATE INDEX guard_hold_ended ON guard_hold (ended_at) WHERE ended_at IS NOT NULL;
CREATE INDEX refresh_intent_closed ON refresh_intent (closed_at) WHERE closed_at IS NOT NULL;
