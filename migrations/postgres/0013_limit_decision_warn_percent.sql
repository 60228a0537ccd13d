-- The share of the limit (percent) from which the decision warned, when it was taken: a decision is taken again
-- when its total, its limit or this changed (NULL on decisions taken before it was kept: taken again once).
ALTER TABLE limit_decision ADD COLUMN warn_percent INTEGER;
