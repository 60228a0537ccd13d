-- The retention job finds the call log (a row per Astra request) by when the work ended.
CREATE INDEX api_call_at ON api_call (at);
