-- The guard right the same day: holds placed by the guard until their transfer is counted, transfers that
-- could not be read marking their day uncertain, when each user's transfers were last read, and when each
-- landed transfer is read again.

-- An amount the guard allowed and reserved against a destination's bank day, under the caller's key.
CREATE TABLE guard_hold (
    hold_key        TEXT PRIMARY KEY,      -- the caller's key; the routine's client_correlation_id if it carries it
    user_id         TEXT NOT NULL,
    destination_id  TEXT NOT NULL,
    bank_day        TEXT NOT NULL,
    amount_cents    BIGINT NOT NULL CHECK (amount_cents > 0),
    answer          TEXT NOT NULL,         -- the guard's JSON answer, given again for the same key
    routine_id      TEXT,                  -- attached by the caller once the routine exists
    created_at      TIMESTAMPTZ NOT NULL,
    expires_at      TIMESTAMPTZ NOT NULL,
    ended_at        TIMESTAMPTZ,
    end_reason      TEXT CHECK (end_reason IN ('counted', 'released', 'expired')),
    transfer_id     TEXT                   -- the transfer that ended it, when counted
);
CREATE INDEX guard_hold_open ON guard_hold (destination_id, bank_day) WHERE ended_at IS NULL;
-- A routine stands for one open hold at a time; a transfer ends at most one hold.
CREATE UNIQUE INDEX guard_hold_open_routine ON guard_hold (routine_id) WHERE routine_id IS NOT NULL AND ended_at IS NULL;
CREATE INDEX guard_hold_transfer ON guard_hold (transfer_id) WHERE transfer_id IS NOT NULL;
CREATE INDEX guard_hold_user ON guard_hold (user_id) WHERE ended_at IS NULL;

-- A destination's bank day whose counter cannot be trusted: a transfer that counts there could not be read. One
-- row per unreadable transfer ('' when it had no readable id); it clears when that transfer reads.
CREATE TABLE uncertain_day (
    destination_id  TEXT NOT NULL,
    bank_day        TEXT NOT NULL,
    transfer_id     TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    detail          TEXT NOT NULL,
    since           TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (destination_id, bank_day, transfer_id)
);
CREATE INDEX uncertain_day_transfer ON uncertain_day (transfer_id);

-- When each user's transfers were last read from Astra, and the newest transfer seen (the sync's high-water mark).
CREATE TABLE transfer_sync (
    user_id            TEXT PRIMARY KEY,
    read_at            TIMESTAMPTZ NOT NULL,
    newest_initiated   TIMESTAMPTZ
);

-- A landed transfer is read again by id on a widening schedule until it is old enough to stay landed.
ALTER TABLE transfer ADD COLUMN client_correlation_id TEXT;
ALTER TABLE transfer ADD COLUMN recheck_at TIMESTAMPTZ;
CREATE INDEX transfer_recheck ON transfer (recheck_at) WHERE recheck_at IS NOT NULL;
