-- The retention job finds ended holds by when the work ended.
CREATE INDEX guard_hold_ended ON guard_hold (ended_at) WHERE ended_at IS NOT NULL;
