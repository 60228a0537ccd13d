-- guard_place_holds_counted (0020) with nothing to place: it answers with the day's figures at once. It looked
-- its keys up and inserted them whatever their number, and with none the look-up could scan every open hold
-- (see below). The guard now calls it with none only to have a denial's figures summed under the day's lock;
-- a worker of an earlier version also called it so when every key it placed was taken (a retried request).
CREATE OR REPLACE FUNCTION guard_place_holds_counted(
    p_destination TEXT, p_day TEXT, p_now TIMESTAMPTZ, p_seen_total BIGINT, p_seen_held BIGINT,
    p_seen_placed BIGINT, p_exact BOOLEAN, p_keys TEXT[], p_users TEXT[], p_amounts BIGINT[], p_answers TEXT[],
    p_created TIMESTAMPTZ[], p_expires TIMESTAMPTZ[]
) RETURNS TABLE (outcome TEXT, total BIGINT, held BIGINT, placed BIGINT, keys TEXT[])
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    t BIGINT;
    h BIGINT;
    c BIGINT;
    k TEXT[];
BEGIN
    -- The day's lock: the counter row, locked without writing it when it exists.
    SELECT i.total_cents, i.holds_placed INTO t, c FROM inbound_day i
        WHERE i.destination_id = p_destination AND i.bank_day = p_day FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO inbound_day (destination_id, bank_day, total_cents, transfers) VALUES (p_destination, p_day, 0, 0)
            ON CONFLICT (destination_id, bank_day) DO UPDATE SET total_cents = inbound_day.total_cents
            RETURNING inbound_day.total_cents, inbound_day.holds_placed INTO t, c;
    END IF;
    IF p_exact OR t IS DISTINCT FROM p_seen_total OR c IS DISTINCT FROM p_seen_placed THEN
        SELECT CAST(COALESCE(SUM(g.amount_cents), 0) AS BIGINT) INTO h FROM guard_hold g
            WHERE g.destination_id = p_destination AND g.bank_day = p_day AND g.ended_at IS NULL
              AND g.expires_at > p_now;
        IF t IS DISTINCT FROM p_seen_total OR h IS DISTINCT FROM p_seen_held THEN
            RETURN QUERY SELECT 'changed'::TEXT, t, h, c, NULL::TEXT[];
            RETURN;
        END IF;
    ELSE
        h := p_seen_held;
    END IF;
    -- Nothing to store (the guard wants the day's exact figures, or every key was taken): no key look-up, no
    -- insert. `hold_key = ANY ('{}')` is false for every row, so the planner may read it through any partial
    -- index, guard_hold_open among them: with that index's statistics stale (taken while few holds were open)
    -- it chose a scan of every open hold, 100 ms at 68,000.
    IF COALESCE(cardinality(p_keys), 0) = 0 THEN
        RETURN QUERY SELECT 'placed'::TEXT, t, h, c, NULL::TEXT[];
        RETURN;
    END IF;
    SELECT array_agg(g.hold_key) INTO k FROM guard_hold g WHERE g.hold_key = ANY (p_keys);
    IF k IS NOT NULL THEN
        RETURN QUERY SELECT 'taken'::TEXT, t, h, c, k;
        RETURN;
    END IF;
    -- A key stored since by a hold on another destination (whose lock this is not) is skipped and returned.
    WITH stored AS (
        INSERT INTO guard_hold (hold_key, user_id, destination_id, bank_day, amount_cents, answer, created_at,
                                expires_at)
        SELECT x.k, x.u, p_destination, p_day, x.a, x.j, x.c, x.e
        FROM unnest(p_keys, p_users, p_amounts, p_answers, p_created, p_expires) AS x (k, u, a, j, c, e)
        ON CONFLICT (hold_key) DO NOTHING
        RETURNING hold_key
    )
    SELECT array_agg(x) INTO k FROM unnest(p_keys) AS x WHERE x NOT IN (SELECT hold_key FROM stored);
    SELECT i.holds_placed INTO c FROM inbound_day i WHERE i.destination_id = p_destination AND i.bank_day = p_day;
    RETURN QUERY SELECT 'placed'::TEXT, t, h, c, k;
END
$$;
