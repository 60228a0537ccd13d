-- PostgreSQL's placing function plans its statements once per connection (its migration 0022); SQLite prepares
-- each statement once and has no custom plans. Nothing to change here; the migration keeps both stores'
-- numbering the same.
SELECT 1;
