-- Grants that survive races: when Astra issued the stored pair (import and refresh agree on "newer" by it),
-- the fingerprints of every refresh token a grant has held (an old pair is never revived), and a row whose
-- tokens cannot be opened flagged instead of stopping every run.

-- When Astra issued the stored pair: the refresh answer's time, or the import's refresh_token_issued_at (else
-- the import time). NULL on rows stored before this column: refresh_expires_at minus ten days stands in.
ALTER TABLE grant_token ADD COLUMN issued_at TEXT;
-- The fingerprint of the stored refresh token (see grant_fingerprint); NULL on rows stored before it.
ALTER TABLE grant_token ADD COLUMN refresh_fingerprint TEXT;
-- Why the stored tokens cannot be opened (set when a run finds it; cleared by a re-import of the user).
ALTER TABLE grant_token ADD COLUMN unreadable TEXT;
CREATE INDEX grant_token_key ON grant_token (key_id);

-- SHA-256 of every refresh token a grant held (never the token): an import of a pair the grant already held
-- and replaced is refused. Kept 30 days, well past a refresh token's ten-day life.
CREATE TABLE grant_fingerprint (
    user_id      TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    stored_at    TEXT NOT NULL,
    PRIMARY KEY (user_id, fingerprint)
);
