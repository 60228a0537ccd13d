-- PostgreSQL's placing function stops looking up keys when there are none (its migration 0021); SQLite's
-- placement (src/reconcile/holds.rs) inserts hold by hold and has no such look-up. Nothing to change here; the
-- migration keeps both stores' numbering the same.
SELECT 1;
