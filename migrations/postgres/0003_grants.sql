-- The token lifecycle: each user's Astra grant (tokens encrypted), refresh intents written before every call
-- to Astra's token endpoint, re-authorization episodes, and the outbox of messages to the fintech.

-- One row per user: the grant the fintech handed over, kept alive by rotation.
CREATE TABLE grant_token (
    user_id             TEXT PRIMARY KEY,
    status              TEXT NOT NULL CHECK (status IN ('active', 'needs_reauth')),
    token_version       BIGINT NOT NULL,     -- +1 with every new pair; writes compare-and-swap on it
    key_id              TEXT NOT NULL,       -- which token key sealed the ciphertexts
    access_ct           BYTEA NOT NULL,        -- AES-256-GCM(nonce || ciphertext), bound to user, version, kind
    refresh_ct          BYTEA NOT NULL,
    access_expires_at   TIMESTAMPTZ,
    refresh_expires_at  TIMESTAMPTZ NOT NULL,
    last_rotated_at     TIMESTAMPTZ,
    phone               TEXT,                -- prefilled in the re-authorization URL
    user_status         TEXT,                -- Astra's user status, when last read
    user_status_at      TIMESTAMPTZ,
    lease_owner         TEXT,                -- who is refreshing it now (a run id, or token:<pid>)
    lease_until         TIMESTAMPTZ,
    last_attempt_mark   TEXT,                -- the slot attempt (job@slot#n) that last claimed it
    imported_at         TIMESTAMPTZ NOT NULL,
    updated_at          TIMESTAMPTZ NOT NULL
);
CREATE INDEX grant_token_due ON grant_token (status, refresh_expires_at);

-- Written before each refresh call, closed after its result is stored. An intent still open when nobody holds
-- the grant's lease means a process died between Astra's answer and the commit.
CREATE TABLE refresh_intent (
    id              TEXT PRIMARY KEY,
    user_id         TEXT NOT NULL,
    token_version   BIGINT NOT NULL,         -- the version being refreshed
    owner           TEXT NOT NULL,
    opened_at       TIMESTAMPTZ NOT NULL,
    closed_at       TIMESTAMPTZ,
    result          TEXT                     -- rotated | adopted | rejected | failed | lost_rotation
);
CREATE UNIQUE INDEX refresh_intent_one_open ON refresh_intent (user_id) WHERE closed_at IS NULL;

-- A user who must authorize again. At most one open episode per grant.
CREATE TABLE reauth_episode (
    id                TEXT PRIMARY KEY,
    user_id           TEXT NOT NULL,
    reason            TEXT NOT NULL,         -- refresh_rejected | expired | lost_rotation
    opened_at         TIMESTAMPTZ NOT NULL,
    prompts_sent      INT NOT NULL,
    last_prompted_at  TIMESTAMPTZ NOT NULL,
    closed_at         TIMESTAMPTZ,
    close_reason      TEXT                   -- new_grant_imported
);
CREATE UNIQUE INDEX reauth_episode_one_open ON reauth_episode (user_id) WHERE closed_at IS NULL;

-- Messages to the fintech's endpoint (prompts, follow-ups), delivered signed, retried, once per key.
CREATE TABLE outbox (
    id               TEXT PRIMARY KEY,
    idempotency_key  TEXT NOT NULL UNIQUE,
    kind             TEXT NOT NULL,          -- reauthorization_prompt | user_suspended | transfer_stuck | …
    user_id          TEXT,
    payload          TEXT NOT NULL,          -- the JSON body delivered
    created_at       TIMESTAMPTZ NOT NULL,
    attempts         INT NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL,
    claimed_until    TIMESTAMPTZ,                    -- a deliverer holds it until then
    delivered_at     TIMESTAMPTZ,
    last_error       TEXT
);
CREATE INDEX outbox_pending ON outbox (delivered_at, next_attempt_at);
