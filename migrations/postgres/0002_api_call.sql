-- Every HTTP call to Astra: Astra asks integrators to log and store each response's request-id.
-- Never a token, never a body.
CREATE TABLE api_call (
    id          BIGSERIAL PRIMARY KEY,
    run_id      TEXT,                   -- the job run it belongs to (NULL for `token` and other direct calls)
    at          TIMESTAMPTZ NOT NULL,
    method      TEXT NOT NULL,
    endpoint    TEXT NOT NULL,          -- the path, without query
    user_id     TEXT,
    attempt     INT NOT NULL,           -- 1 for the first try, then each retry
    status      INT,                    -- HTTP status; NULL when no response came
    latency_ms  BIGINT NOT NULL,
    request_id  TEXT,                   -- Astra's request-id header
    outcome     TEXT NOT NULL,          -- ok | grant_rejected | client_rejected | access_token_rejected |
                                        -- rate_limited | transient | not_found | refused | malformed
    error       TEXT
);
CREATE INDEX api_call_by_run ON api_call (run_id);
