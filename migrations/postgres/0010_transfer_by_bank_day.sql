-- The daily recompute reads one bank day of every destination in one pass (a GROUP BY over the day's
-- transfers): an index led by the day, covering what it sums, so the pass reads that day's entries alone and
-- never the heap (the mirror keeps every transfer it has seen, months of them).
CREATE INDEX transfer_by_bank_day ON transfer (bank_day, destination_id) INCLUDE (status, amount_cents);
