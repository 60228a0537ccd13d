-- A day's held sum, kept on its counter row: every guard and every placement read it, and summing a contended
-- day's open holds each time cost a read of every one of them. `held_cents` is the sum of the day's holds not
-- ended, kept by triggers on guard_hold (so every writer of holds keeps it); what is held at a moment is
-- `held_cents` less the holds that expired and are not ended yet, which the index below finds without reading
-- the open ones.
ALTER TABLE inbound_day ADD COLUMN held_cents INTEGER NOT NULL DEFAULT 0;
INSERT INTO inbound_day (destination_id, bank_day, total_cents, transfers, held_cents)
    SELECT destination_id, bank_day, 0, 0, SUM(amount_cents) FROM guard_hold WHERE ended_at IS NULL
    GROUP BY destination_id, bank_day
    ON CONFLICT (destination_id, bank_day) DO UPDATE SET held_cents = excluded.held_cents;

CREATE TRIGGER guard_hold_held_insert AFTER INSERT ON guard_hold WHEN NEW.ended_at IS NULL
BEGIN
    INSERT INTO inbound_day (destination_id, bank_day, total_cents, transfers, held_cents)
        VALUES (NEW.destination_id, NEW.bank_day, 0, 0, NEW.amount_cents)
        ON CONFLICT (destination_id, bank_day) DO UPDATE SET held_cents = held_cents + excluded.held_cents;
END;
CREATE TRIGGER guard_hold_held_update_old AFTER UPDATE OF ended_at, amount_cents, destination_id, bank_day
    ON guard_hold WHEN OLD.ended_at IS NULL
BEGIN
    UPDATE inbound_day SET held_cents = held_cents - OLD.amount_cents
        WHERE destination_id = OLD.destination_id AND bank_day = OLD.bank_day;
END;
CREATE TRIGGER guard_hold_held_update_new AFTER UPDATE OF ended_at, amount_cents, destination_id, bank_day
    ON guard_hold WHEN NEW.ended_at IS NULL
BEGIN
    INSERT INTO inbound_day (destination_id, bank_day, total_cents, transfers, held_cents)
        VALUES (NEW.destination_id, NEW.bank_day, 0, 0, NEW.amount_cents)
        ON CONFLICT (destination_id, bank_day) DO UPDATE SET held_cents = held_cents + excluded.held_cents;
END;
CREATE TRIGGER guard_hold_held_delete AFTER DELETE ON guard_hold WHEN OLD.ended_at IS NULL
BEGIN
    UPDATE inbound_day SET held_cents = held_cents - OLD.amount_cents
        WHERE destination_id = OLD.destination_id AND bank_day = OLD.bank_day;
END;

DROP INDEX guard_hold_open;
CREATE INDEX guard_hold_open ON guard_hold (destination_id, bank_day, expires_at, amount_cents)
    WHERE ended_at IS NULL;

-- PostgreSQL places the holds queued on one destination-day together with the function guard_place_holds;
-- SQLite takes the same steps in one transaction (src/reconcile/holds.rs).
