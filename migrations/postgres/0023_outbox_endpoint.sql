-- An outbox endpoint that stopped answering (timed out, refused the connection), as every process sees it: job
-- runs do not deliver to it before `retry_at`, so a dead endpoint costs one timeout per back-off, not one per
-- run. A row is removed as soon as the endpoint answers.
CREATE TABLE outbox_endpoint (
    endpoint    TEXT PRIMARY KEY,
    failures    INT NOT NULL,
    retry_at    TIMESTAMPTZ NOT NULL,
    last_error  TEXT NOT NULL
);
