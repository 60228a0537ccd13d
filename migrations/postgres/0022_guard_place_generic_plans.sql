-- guard_place_holds_counted plans each of its statements once per connection. PL/pgSQL chooses for every
-- statement between a plan made for the values of the call (a custom plan, made again at every call) and one
-- made for any values (generic); for the key look-up, `hold_key = ANY (p_keys)`, the generic plan's estimate
-- (ten keys) always lost to the custom one's (one key), so every placement planned that statement again: a
-- fifth of the function's time under `POST /v1/guard` (perf, 2026-12-07). The generic plans are the ones the
-- custom plans were (the primary key for the look-up, guard_hold_open for the held sum, the counter row's key),
-- and they do not depend on the values: no literal can lead the planner to another index, as the empty key list
-- once did (0021). Measured with pgbench (one client, a new hold on one of 100,000 destinations per call, AMD
-- EPYC host): 0.50-0.56 ms a placement before, 0.44-0.49 ms after.
ALTER FUNCTION guard_place_holds_counted(
    TEXT, TEXT, TIMESTAMPTZ, BIGINT, BIGINT, BIGINT, BOOLEAN, TEXT[], TEXT[], BIGINT[], TEXT[], TIMESTAMPTZ[],
    TIMESTAMPTZ[]
) SET plan_cache_mode = force_generic_plan;
