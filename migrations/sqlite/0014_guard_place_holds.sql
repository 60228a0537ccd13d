-- A day's held sum, kept: every guard and every placement read it, and summing a contended day's open holds
-- each time read every one of them. `guard_day_held.held_cents` is the sum of the day's holds not ended, kept
-- by triggers on guard_hold (so every writer of holds keeps it). What is held at a moment is that sum less the
-- holds that expired and are not ended yet, which the index below finds without reading the open ones.
CREATE TABLE guard_day_held (
    destination_id TEXT NOT NULL,
    bank_day       TEXT NOT NULL,
    held_cents     INTEGER NOT NULL,
    PRIMARY KEY (destination_id, bank_day)
);
INSERT INTO guard_day_held (destination_id, bank_day, held_cents)
    SELECT destination_id, bank_day, SUM(amount_cents) FROM guard_hold WHERE ended_at IS NULL
    GROUP BY destination_id, bank_day;

CREATE TRIGGER guard_day_held_inserted AFTER INSERT ON guard_hold WHEN NEW.ended_at IS NULL
BEGIN
    INSERT INTO guard_day_held (destination_id, bank_day, held_cents)
        VALUES (NEW.destination_id, NEW.bank_day, NEW.amount_cents)
        ON CONFLICT (destination_id, bank_day) DO UPDATE SET held_cents = held_cents + excluded.held_cents;
END;
CREATE TRIGGER guard_day_held_updated_old AFTER UPDATE ON guard_hold WHEN OLD.ended_at IS NULL
BEGIN
    UPDATE guard_day_held SET held_cents = held_cents - OLD.amount_cents
        WHERE destination_id = OLD.destination_id AND bank_day = OLD.bank_day;
END;
CREATE TRIGGER guard_day_held_updated_new AFTER UPDATE ON guard_hold WHEN NEW.ended_at IS NULL
BEGIN
    INSERT INTO guard_day_held (destination_id, bank_day, held_cents)
        VALUES (NEW.destination_id, NEW.bank_day, NEW.amount_cents)
        ON CONFLICT (destination_id, bank_day) DO UPDATE SET held_cents = held_cents + excluded.held_cents;
END;
CREATE TRIGGER guard_day_held_deleted AFTER DELETE ON guard_hold WHEN OLD.ended_at IS NULL
BEGIN
    UPDATE guard_day_held SET held_cents = held_cents - OLD.amount_cents
        WHERE destination_id = OLD.destination_id AND bank_day = OLD.bank_day;
END;

DROP INDEX guard_hold_open;
CREATE INDEX guard_hold_open ON guard_hold (destination_id, bank_day, expires_at, amount_cents)
    WHERE ended_at IS NULL;

-- PostgreSQL places the holds queued on one destination-day together with the function guard_place_holds;
-- SQLite takes the same steps in one transaction (src/reconcile/holds.rs).
