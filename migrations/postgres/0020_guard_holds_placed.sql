-- Holds placed on a day are counted on the day's counter row (`holds_placed`, by a trigger, so no writer of
-- holds can forget it: a worker of an earlier version still running through guard_place_hold(s) counts too).
-- A placement then checks that the day moved by nothing but ended holds by reading that one row under the
-- day's lock, instead of summing every open hold of the day: that sum grew with the day's holds (30 ms at
-- 48,000) and was most of what callers contending for a busy day waited for. A hold that ends lowers the held
-- sum without counting: figures carried past it hold more than there is, so an allowed hold stays right and a
-- denial is decided on the sum taken under the lock (guard_place_holds_counted's p_exact).
ALTER TABLE inbound_day ADD COLUMN holds_placed BIGINT NOT NULL DEFAULT 0;

CREATE FUNCTION guard_hold_count_placed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO inbound_day (destination_id, bank_day, total_cents, transfers, holds_placed)
        SELECT p.destination_id, p.bank_day, 0, 0, COUNT(*) FROM placed p GROUP BY p.destination_id, p.bank_day
        ON CONFLICT (destination_id, bank_day) DO UPDATE SET holds_placed = inbound_day.holds_placed + excluded.holds_placed;
    RETURN NULL;
END
$$;

CREATE TRIGGER guard_hold_placed AFTER INSERT ON guard_hold REFERENCING NEW TABLE AS placed
    FOR EACH STATEMENT EXECUTE FUNCTION guard_hold_count_placed();

-- As guard_place_holds (0014), but the figures the guard decided on carry the day's `holds_placed`: when the
-- counted total and that count are unchanged under the lock, the carried held sum stands (it can only be more
-- than the open holds now) and the day's holds are not summed; otherwise, or with p_exact (the guard denied
-- one of them), they are summed and compared. The outcome carries the figures after: `placed` the count after
-- this placement's own holds.
CREATE FUNCTION guard_place_holds_counted(
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
