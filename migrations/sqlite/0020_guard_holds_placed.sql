-- Holds placed on a day are counted on the day's counter row (`holds_placed`, by a trigger, so no writer of
-- holds can forget it). A placement whose figures carry that count reads the one row under the day's lock
-- instead of summing every open hold of the day, which grew with the day's holds (see the PostgreSQL
-- migration of the same number, and src/reconcile/holds.rs).
ALTER TABLE inbound_day ADD COLUMN holds_placed INTEGER NOT NULL DEFAULT 0;

CREATE TRIGGER guard_hold_placed AFTER INSERT ON guard_hold
BEGIN
    INSERT INTO inbound_day (destination_id, bank_day, total_cents, transfers, holds_placed)
        VALUES (NEW.destination_id, NEW.bank_day, 0, 0, 1)
        ON CONFLICT (destination_id, bank_day) DO UPDATE SET holds_placed = holds_placed + 1;
END;
