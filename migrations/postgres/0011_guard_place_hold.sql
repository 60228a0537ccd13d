-- A hold placed in one round trip: under the destination-day's lock (the counter row, as every writer of the
-- day takes it), the day's counted total and open held sum are read again and, only when both are what the
-- guard decided on, the hold is inserted; otherwise the figures found are returned and the guard decides again.
-- A VOLATILE function reads with a fresh snapshot per statement, so the sum taken after the lock sees every
-- hold committed before it. The decision itself stays in the worker (src/reconcile/guard); SQLite does the same
-- steps in a transaction (src/reconcile/holds.rs).
CREATE FUNCTION guard_place_hold(
    p_destination TEXT, p_day TEXT, p_now TIMESTAMPTZ, p_seen_total BIGINT, p_seen_held BIGINT,
    p_key TEXT, p_user TEXT, p_amount BIGINT, p_answer TEXT, p_expires TIMESTAMPTZ
) RETURNS TABLE (outcome TEXT, total BIGINT, held BIGINT)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    t BIGINT;
    h BIGINT;
    n INTEGER;
BEGIN
    INSERT INTO inbound_day (destination_id, bank_day, total_cents, transfers) VALUES (p_destination, p_day, 0, 0)
        ON CONFLICT (destination_id, bank_day) DO UPDATE SET total_cents = inbound_day.total_cents
        RETURNING inbound_day.total_cents INTO t;
    SELECT CAST(COALESCE(SUM(g.amount_cents), 0) AS BIGINT) INTO h FROM guard_hold g
        WHERE g.destination_id = p_destination AND g.bank_day = p_day AND g.ended_at IS NULL
          AND g.expires_at > p_now;
    IF t <> p_seen_total OR h <> p_seen_held THEN
        RETURN QUERY SELECT 'changed'::TEXT, t, h;
        RETURN;
    END IF;
    INSERT INTO guard_hold (hold_key, user_id, destination_id, bank_day, amount_cents, answer, created_at, expires_at)
        VALUES (p_key, p_user, p_destination, p_day, p_amount, p_answer, p_now, p_expires)
        ON CONFLICT (hold_key) DO NOTHING;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN QUERY SELECT CASE WHEN n = 1 THEN 'placed' ELSE 'key_taken' END, t, h;
END
$$;
