-- 0.2.0 -> 0.3.0: what the upgrade needs before the 0.3.0 install runs again over it.
-- Add a column to a 0.2.0 table here (ALTER TABLE ... ADD COLUMN IF NOT EXISTS) as well as in
-- its CREATE TABLE; drop here what 0.3.0 no longer has.

-- The portable install's recommend() search (from 0.1.0 the table is created later, whole).
ALTER TABLE IF EXISTS movrec.settings
    ADD COLUMN IF NOT EXISTS recommend_search text NOT NULL DEFAULT 'exact'
        CONSTRAINT recommend_search_is_exact_or_hnsw CHECK (recommend_search IN ('exact', 'hnsw')),
    ADD COLUMN IF NOT EXISTS hnsw_ef_search integer NOT NULL DEFAULT 40
        CONSTRAINT hnsw_ef_search_is_10_to_1000 CHECK (hnsw_ef_search BETWEEN 10 AND 1000),
    ADD COLUMN IF NOT EXISTS train_budget_s float8 NOT NULL DEFAULT 120
        CONSTRAINT train_budget_s_is_0_to_604800 CHECK (train_budget_s >= 0 AND train_budget_s <= 604800);

-- evaluate() scores the rows a model held out, stored with it (NULL for models trained before).
ALTER TABLE model.registry ADD COLUMN IF NOT EXISTS validation_split bytea;
-- The hybrid's item-item weights (NULL for models trained before).
ALTER TABLE model.registry ADD COLUMN IF NOT EXISTS item_item bytea;

-- Citus: whose transaction ids a statistics row's changed_xid holds (0: this server's).
ALTER TABLE IF EXISTS model.user_rating_stats ADD COLUMN IF NOT EXISTS changed_group integer NOT NULL DEFAULT 0;

-- The refresh queue is written by the rating-statistics triggers (movrec.cf_on_ratings_changed),
-- and an update fires a row trigger (movrec_cf_enqueue_changed) in place of a statement trigger.
DROP TRIGGER IF EXISTS movrec_refresh_enqueue ON movrec.watch_events;
DROP TRIGGER IF EXISTS movrec_refresh_enqueue_update ON movrec.watch_events;
DROP TRIGGER IF EXISTS movrec_cf_enqueue_update ON movrec.watch_events;
DROP FUNCTION IF EXISTS movrec.refresh_on_ratings_changed();
