-- 0.2.0 -> 0.3.0: what the upgrade needs before the 0.3.0 install runs again over it.
-- Add a column to a 0.2.0 table here (ALTER TABLE ... ADD COLUMN IF NOT EXISTS) as well as in
-- its CREATE TABLE; drop here what 0.3.0 no longer has.

-- evaluate() scores the rows a model held out, stored with it (NULL for models trained before).
ALTER TABLE model.registry ADD COLUMN IF NOT EXISTS validation_split bytea;
