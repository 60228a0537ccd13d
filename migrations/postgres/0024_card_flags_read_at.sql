-- When a card's push/pull flags were last read from Astra (the read's start): a read begun earlier, answered
-- or recorded later (two webhooks of one card processed at once), does not overwrite them.
ALTER TABLE destination ADD COLUMN flags_read_at TIMESTAMPTZ;
