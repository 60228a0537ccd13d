-- Astra's webhooks, as received: one row per webhook_id (Astra retries the same id up to 10 times over about
-- 5 hours), processed in the background, retried with backoff when processing fails for a reason that may pass.
CREATE TABLE webhook_inbox (
    webhook_id       TEXT PRIMARY KEY,
    webhook_type     TEXT NOT NULL,
    user_id          TEXT,
    resource_id      TEXT,
    body             TEXT NOT NULL,         -- the raw body as received (never carries a token)
    received_at      TEXT NOT NULL,
    deliveries       INTEGER NOT NULL DEFAULT 1,   -- how many times Astra sent this webhook_id
    attempts         INTEGER NOT NULL DEFAULT 0,   -- processing attempts
    next_attempt_at  TEXT NOT NULL,
    claimed_by       TEXT,                  -- the processor holding it, until claimed_until
    claimed_until    TEXT,
    processed_at     TEXT,
    outcome          TEXT CHECK (outcome IN ('processed', 'ignored', 'failed')),
    last_error       TEXT
);
CREATE INDEX webhook_inbox_due ON webhook_inbox (next_attempt_at) WHERE processed_at IS NULL;

-- Who holds an outbox message's delivery, so completion is fenced on the claim that POSTed it.
ALTER TABLE outbox ADD COLUMN claimed_by TEXT;
-- Deliverers claim the oldest undelivered message one at a time.
CREATE INDEX outbox_undelivered ON outbox (created_at, id) WHERE delivered_at IS NULL;
