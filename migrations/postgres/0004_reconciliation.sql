-- The money side: the fintech's client-issued destinations and their limits, users it blocked, the mirror of
-- Astra transfers, per-(destination, bank day) inbound counters, the daily limit decisions.

-- Destinations the limits apply to (an Astra account or card id the fintech issued).
CREATE TABLE destination (
    destination_id     TEXT PRIMARY KEY,
    user_id            TEXT NOT NULL,
    kind               TEXT NOT NULL CHECK (kind IN ('account', 'card')),
    bank_time_zone     TEXT NOT NULL,       -- IANA zone whose midnight starts the bank day
    daily_limit_cents  BIGINT NOT NULL CHECK (daily_limit_cents >= 0),
    frozen             BOOLEAN NOT NULL DEFAULT FALSE,   -- cards: frozen by the issuer
    push_enabled       BOOLEAN,
    pull_enabled       BOOLEAN,
    updated_at         TIMESTAMPTZ NOT NULL
);
CREATE INDEX destination_by_user ON destination (user_id);

-- The ACH credit the fintech created for an account-to-card routine (cancelled if the transfer fails).
CREATE TABLE ach_credit (
    routine_id     TEXT PRIMARY KEY,
    ach_credit_id  TEXT NOT NULL,
    addenda        TEXT NOT NULL
);

-- Users the fintech decided to stop ("selectively block users").
CREATE TABLE user_block (
    user_id     TEXT PRIMARY KEY,
    reason      TEXT NOT NULL,
    blocked_at  TIMESTAMPTZ NOT NULL
);

-- Astra transfers as last read. Writes compare-and-swap on version.
CREATE TABLE transfer (
    id                       TEXT PRIMARY KEY,
    user_id                  TEXT NOT NULL,    -- whose grant read it
    version                  BIGINT NOT NULL,
    routine_id               TEXT,
    routine_type             TEXT,
    source_id                TEXT,
    destination_id           TEXT,
    amount_cents             BIGINT NOT NULL,
    payment_type             TEXT,
    status                   TEXT NOT NULL,    -- pending | processed | cancelled | failed
    settlement_reason        TEXT,             -- astra_settlement_reason
    failure_reason           TEXT,
    initiated_at             TIMESTAMPTZ NOT NULL,
    updated_at               TIMESTAMPTZ,
    estimated_clearing_date  TEXT,
    bank_day                 TEXT,             -- the destination's bank day it counts toward, when registered
    counted                  BOOLEAN NOT NULL, -- in inbound_day now
    held_since               TIMESTAMPTZ,              -- first seen debited but not credited
    landed_at                TIMESTAMPTZ,              -- first seen processed
    cleared_at               TIMESTAMPTZ,              -- a held transfer seen credited
    first_seen_at            TIMESTAMPTZ NOT NULL,
    last_seen_at             TIMESTAMPTZ NOT NULL
);
CREATE INDEX transfer_by_user ON transfer (user_id, initiated_at);
CREATE INDEX transfer_held ON transfer (status, held_since);
CREATE INDEX transfer_by_day ON transfer (destination_id, bank_day);

-- Every change of a mirrored transfer, with when it was seen.
CREATE TABLE transfer_event (
    transfer_id        TEXT NOT NULL,
    seen_at            TIMESTAMPTZ NOT NULL,
    from_status        TEXT,
    to_status          TEXT NOT NULL,
    settlement_reason  TEXT
);
CREATE INDEX transfer_event_by_transfer ON transfer_event (transfer_id);

-- Inbound total per destination and bank day, updated in the same transaction as each mirrored transfer:
-- the guard reads it by primary key.
CREATE TABLE inbound_day (
    destination_id  TEXT NOT NULL,
    bank_day        TEXT NOT NULL,
    total_cents     BIGINT NOT NULL,
    transfers       BIGINT NOT NULL,
    PRIMARY KEY (destination_id, bank_day)
);

-- The daily job's decisions, with their evidence.
CREATE TABLE limit_decision (
    destination_id  TEXT NOT NULL,
    bank_day        TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('ok', 'warn', 'blocked')),
    total_cents     BIGINT NOT NULL,
    limit_cents     BIGINT NOT NULL,
    window_start    TIMESTAMPTZ NOT NULL,
    window_end      TIMESTAMPTZ NOT NULL,
    drift_cents     BIGINT NOT NULL,         -- counter minus recomputed total, before the fix
    computed_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (destination_id, bank_day)
);
