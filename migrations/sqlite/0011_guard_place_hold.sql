-- PostgreSQL places a hold with the function guard_place_hold (its migration 0011); SQLite, whose writers are
-- serialized by the database lock, takes the same steps in a transaction (src/reconcile/holds.rs). Nothing to
-- change here; the migration keeps both stores' numbering the same.
SELECT 1;
