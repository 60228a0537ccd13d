-- The rotation claims its batch in (refresh_expires_at, user_id) order. Led by the expiry alone, the index left
-- the ties to be sorted on every claim: grants imported together share one expiry, so each claim of 200 sorted
-- every due grant (200,000 grants: a sort of up to 200,000 rows per batch). With user_id in the index the
-- claim reads its batch in index order and stops.
DROP INDEX grant_token_due;
CREATE INDEX grant_token_due ON grant_token (status, refresh_expires_at, user_id);
