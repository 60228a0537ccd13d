-- The open holds by user were a partial index on the same predicate (`ended_at IS NULL`) as the open holds by
-- destination and day; with both estimated empty (a new store, or one analyzed while no hold was open),
-- PostgreSQL's cached plan for the guard's sum of a day's holds chose the by-user index as "every open hold"
-- and filtered all of them on each guard. By user is now a plain index, so the one partial index on open holds
-- is the by-destination-and-day one the sum uses.
DROP INDEX guard_hold_user;
CREATE INDEX guard_hold_user ON guard_hold (user_id);
