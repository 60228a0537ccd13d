-- A day's held sum, kept: every guard and every placement read it, and summing a contended day's open holds
-- each time read every one of them. `guard_day_held.held_cents` is the sum of the day's holds not ended, kept
-- by triggers on guard_hold (so every writer of holds keeps it, a worker of the previous
-- version too). What is held at a moment is that sum less the holds that expired and are not ended yet, which
-- the index below finds without reading the open ones. The sums are a table of their own, not a column of the
-- counter row: a writer that ends a hold (a release, the mirror counting a transfer under another day's lock)
-- must not take a day's counter lock after the hold's row, the reverse of what placements and the mirror do.
-- Row-level AFTER triggers run at the end of the statement that changed the rows: a held row is the last lock
-- a statement takes.
-- The table is locked as DROP INDEX below would lock it, from the start: no writer runs between the backfill and
-- the triggers, and no lock is raised halfway (a previous-version worker's reader could deadlock with that).
LOCK TABLE guard_hold IN ACCESS EXCLUSIVE MODE;
CREATE TABLE guard_day_held (
    destination_id TEXT NOT NULL,
    bank_day       TEXT NOT NULL,
    held_cents     BIGINT NOT NULL,
    PRIMARY KEY (destination_id, bank_day)
);
INSERT INTO guard_day_held (destination_id, bank_day, held_cents)
    SELECT destination_id, bank_day, SUM(amount_cents) FROM guard_hold WHERE ended_at IS NULL
    GROUP BY destination_id, bank_day;

CREATE FUNCTION guard_day_held_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.ended_at IS NULL THEN
        UPDATE guard_day_held SET held_cents = held_cents - OLD.amount_cents
            WHERE destination_id = OLD.destination_id AND bank_day = OLD.bank_day;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.ended_at IS NULL THEN
        INSERT INTO guard_day_held (destination_id, bank_day, held_cents)
            VALUES (NEW.destination_id, NEW.bank_day, NEW.amount_cents)
            ON CONFLICT (destination_id, bank_day) DO UPDATE SET held_cents = guard_day_held.held_cents + excluded.held_cents;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER guard_day_held_inserted_or_deleted AFTER INSERT OR DELETE ON guard_hold
    FOR EACH ROW EXECUTE FUNCTION guard_day_held_moved();
CREATE TRIGGER guard_day_held_updated AFTER UPDATE OF ended_at, amount_cents, destination_id, bank_day ON guard_hold
    FOR EACH ROW WHEN (OLD.ended_at IS DISTINCT FROM NEW.ended_at OR OLD.amount_cents <> NEW.amount_cents
                       OR OLD.destination_id <> NEW.destination_id OR OLD.bank_day <> NEW.bank_day)
    EXECUTE FUNCTION guard_day_held_moved();

DROP INDEX guard_hold_open;
CREATE INDEX guard_hold_open ON guard_hold (destination_id, bank_day, expires_at) INCLUDE (amount_cents)
    WHERE ended_at IS NULL;

-- Holds placed together: the holds on one destination-day that queued in one process while another was being
-- placed (src/reconcile/guard/lane.rs) go in one round trip and one commit. As with guard_place_hold (0011),
-- under the destination-day's lock (the counter row, as every writer of the day takes it) the day's counted
-- total and held sum are read again, and only when both are what the guard decided on are the holds
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
    SELECT COALESCE((SELECT d.held_cents FROM guard_day_held d
                     WHERE d.destination_id = p_destination AND d.bank_day = p_day), 0)
           - CAST(COALESCE(SUM(g.amount_cents), 0) AS BIGINT) INTO h FROM guard_hold g
        WHERE g.destination_id = p_destination AND g.bank_day = p_day AND g.ended_at IS NULL
          AND g.expires_at <= p_now;
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
