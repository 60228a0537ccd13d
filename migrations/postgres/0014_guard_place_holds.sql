-- Holds placed together: the holds on one destination-day that queued in one process while another was being
-- placed (src/reconcile/guard/lane.rs) go in one round trip and one commit. As with guard_place_hold (0011),
-- under the destination-day's lock (the counter row, as every writer of the day takes it) the day's counted
-- total and open held sum are read again, and only when both are what the guard decided on are the holds
-- inserted; otherwise the figures found are returned and the guard decides again. A key already stored is
-- returned and nothing is inserted, so no decision counts a hold that is not there. The decisions stay in the
-- worker. guard_place_hold stays, so a worker of the previous version still running while this one migrates
-- keeps placing holds (it must not restart on the old version: it would refuse the newer schema).
CREATE FUNCTION guard_place_holds(
    p_destination TEXT, p_day TEXT, p_now TIMESTAMPTZ, p_seen_total BIGINT, p_seen_held BIGINT,
    p_keys TEXT[], p_users TEXT[], p_amounts BIGINT[], p_answers TEXT[], p_created TIMESTAMPTZ[],
    p_expires TIMESTAMPTZ[]
) RETURNS TABLE (outcome TEXT, total BIGINT, held BIGINT, keys TEXT[])
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    t BIGINT;
    h BIGINT;
    k TEXT[];
BEGIN
    INSERT INTO inbound_day (destination_id, bank_day, total_cents, transfers) VALUES (p_destination, p_day, 0, 0)
        ON CONFLICT (destination_id, bank_day) DO UPDATE SET total_cents = inbound_day.total_cents
        RETURNING inbound_day.total_cents INTO t;
    SELECT CAST(COALESCE(SUM(g.amount_cents), 0) AS BIGINT) INTO h FROM guard_hold g
        WHERE g.destination_id = p_destination AND g.bank_day = p_day AND g.ended_at IS NULL
          AND g.expires_at > p_now;
    IF t <> p_seen_total OR h <> p_seen_held THEN
        RETURN QUERY SELECT 'changed'::TEXT, t, h, NULL::TEXT[];
        RETURN;
    END IF;
    SELECT array_agg(g.hold_key) INTO k FROM guard_hold g WHERE g.hold_key = ANY (p_keys);
    IF k IS NOT NULL THEN
        RETURN QUERY SELECT 'taken'::TEXT, t, h, k;
        RETURN;
    END IF;
    -- A key stored since by a hold on another destination (whose lock this is not) is skipped and returned.
    WITH placed AS (
        INSERT INTO guard_hold (hold_key, user_id, destination_id, bank_day, amount_cents, answer, created_at,
                                expires_at)
        SELECT x.k, x.u, p_destination, p_day, x.a, x.j, x.c, x.e
        FROM unnest(p_keys, p_users, p_amounts, p_answers, p_created, p_expires) AS x (k, u, a, j, c, e)
        ON CONFLICT (hold_key) DO NOTHING
        RETURNING hold_key
    )
    SELECT array_agg(x) INTO k FROM unnest(p_keys) AS x WHERE x NOT IN (SELECT hold_key FROM placed);
    RETURN QUERY SELECT 'placed'::TEXT, t, h, k;
END
$$;
