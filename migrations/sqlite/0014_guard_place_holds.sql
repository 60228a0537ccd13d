-- PostgreSQL places the holds queued on one destination-day together with the function guard_place_holds (its
-- migration 0014); SQLite takes the same steps in one transaction (src/reconcile/holds.rs). Nothing to change
-- here; the migration keeps both stores' numbering the same.
SELECT 1;
