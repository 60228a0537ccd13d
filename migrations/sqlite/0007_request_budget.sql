-- One request budget for the whole deployment: every process calling Astra is present here while it runs a
-- job, and takes an equal share of astra.requests_per_second. A process that died drops out when its row ages.
CREATE TABLE astra_presence (
    instance     TEXT PRIMARY KEY,     -- host:pid:random, one per process
    alive_until  TEXT NOT NULL
);
