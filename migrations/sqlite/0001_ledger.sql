-- The slot ledger: one claim per (job, slot) decides which process does a slot's work; job_run keeps the
-- history of every run (several per slot when a slot is forced, retried or taken over).

-- Who holds or finished a slot. The primary key is the exactly-once guarantee; run_id is the fencing token
-- (every update names the run_id it expects).
CREATE TABLE slot_claim (
    job         TEXT NOT NULL,
    slot        TEXT NOT NULL,              -- UTC instant (RFC 3339)
    run_id      TEXT NOT NULL,
    owner       TEXT NOT NULL,              -- host:pid of the claiming process
    state       TEXT NOT NULL CHECK (state IN ('running', 'succeeded', 'partial', 'failed', 'interrupted')),
    lease_until TEXT,                       -- while running: another process may take over after this
    attempts    INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (job, slot)
);

-- One row per run: what happened, with counts.
CREATE TABLE job_run (
    run_id           TEXT PRIMARY KEY,
    job              TEXT NOT NULL,
    slot             TEXT NOT NULL,
    owner            TEXT NOT NULL,
    forced           BOOLEAN NOT NULL,
    started_at       TEXT NOT NULL,
    finished_at      TEXT,
    outcome          TEXT NOT NULL,          -- running | succeeded | partial | failed | interrupted
    processed        BIGINT NOT NULL DEFAULT 0,
    failed           BIGINT NOT NULL DEFAULT 0,
    skipped          BIGINT NOT NULL DEFAULT 0,
    requests         BIGINT NOT NULL DEFAULT 0,
    rate_configured  BIGINT NOT NULL DEFAULT 0, -- requests per second allowed
    details          TEXT,                   -- JSON object with the job's own figures
    error            TEXT
);
CREATE INDEX job_run_by_job ON job_run (job, started_at);
