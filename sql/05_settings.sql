-- Settings that steer privileged code: one row, typed and range-checked, changed only by
-- movrec_admin (UPDATE movrec.settings SET ...).  SECURITY DEFINER functions and the rating
-- trigger read them from here and never from a session's SET: anything a session can SET,
-- an application could use to steer code that runs as the owner.
-- movrec.min_predicted_rating stays a session setting: it only shapes the caller's own read.

CREATE TABLE IF NOT EXISTS movrec.settings (
    singleton        boolean PRIMARY KEY DEFAULT true CONSTRAINT settings_has_one_row CHECK (singleton),
    threads          integer NOT NULL DEFAULT 1
        CONSTRAINT threads_is_1_to_64 CHECK (threads BETWEEN 1 AND 64),
    train_threads    integer
        CONSTRAINT train_threads_is_1_to_256 CHECK (train_threads BETWEEN 1 AND 256),
    device           text NOT NULL DEFAULT 'auto'
        CONSTRAINT device_is_auto_cpu_or_cuda CHECK (device IN ('auto', 'cpu', 'cuda')),
    online_update    text NOT NULL DEFAULT 'sgd'
        CONSTRAINT online_update_is_sgd_or_refit CHECK (online_update IN ('sgd', 'refit')),
    -- float8 NaN sorts above every number and 'Infinity' is a number: both fail these ranges
    online_lr        float8 NOT NULL DEFAULT 0.05
        CONSTRAINT online_lr_is_above_0_up_to_1 CHECK (online_lr > 0 AND online_lr <= 1),
    online_reg       float8 NOT NULL DEFAULT 0.02
        CONSTRAINT online_reg_is_0_to_10 CHECK (online_reg >= 0 AND online_reg <= 10),
    refit_reg        float8 NOT NULL DEFAULT 10
        CONSTRAINT refit_reg_is_above_0_up_to_1e6 CHECK (refit_reg > 0 AND refit_reg <= 1e6),
    backup_retention integer NOT NULL DEFAULT 20
        CONSTRAINT backup_retention_is_0_to_10000 CHECK (backup_retention BETWEEN 0 AND 10000),
    recommend_search text NOT NULL DEFAULT 'exact'
        CONSTRAINT recommend_search_is_exact_or_hnsw CHECK (recommend_search IN ('exact', 'hnsw')),
    hnsw_ef_search   integer NOT NULL DEFAULT 40
        CONSTRAINT hnsw_ef_search_is_10_to_1000 CHECK (hnsw_ef_search BETWEEN 10 AND 1000),
    train_budget_s   float8 NOT NULL DEFAULT 120
        CONSTRAINT train_budget_s_is_0_to_604800 CHECK (train_budget_s >= 0 AND train_budget_s <= 604800),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    updated_by       text NOT NULL DEFAULT session_user
);
INSERT INTO movrec.settings SELECT WHERE NOT EXISTS (SELECT FROM movrec.settings);
COMMENT ON TABLE movrec.settings IS
    'What privileged code reads (one row): UPDATE movrec.settings SET online_lr = 0.1 as movrec_admin. '
    'Session settings of the same names are ignored';
COMMENT ON COLUMN movrec.settings.threads IS
    'BLAS threads per backend, fixed when movrec first loads in a backend (more threads ran 7x slower under concurrency)';
COMMENT ON COLUMN movrec.settings.train_threads IS 'torch threads for training in a backend; NULL: all cores';
COMMENT ON COLUMN movrec.settings.device IS
    'Default training device (auto: CUDA when torch sees one); a train option "device" overrides it';
COMMENT ON COLUMN movrec.settings.online_update IS
    'The rating trigger''s update: sgd = one gradient step in SQL; refit = ridge fold-in over the user''s history';
COMMENT ON COLUMN movrec.settings.online_lr IS 'sgd''s learning rate; the step is capped at 0.5 / (|m|^2 + 1)';
COMMENT ON COLUMN movrec.settings.online_reg IS 'sgd''s L2 weight on the user vector and bias';
COMMENT ON COLUMN movrec.settings.refit_reg IS 'refit''s ridge weight, shrinking toward the champion''s default vector';
COMMENT ON COLUMN movrec.settings.backup_retention IS
    'Archived vectors kept per user in model.user_latent_attributes_backups (0: all)';
COMMENT ON COLUMN movrec.settings.recommend_search IS
    'Portable install: how recommend() finds the top k, exact (a scan of every movie vector) or hnsw (pgvector''s '
    'iterative HNSW scan, approximate, faster); the full install ranks exactly in numpy and ignores it';
COMMENT ON COLUMN movrec.settings.hnsw_ef_search IS
    'Portable install, recommend_search = hnsw: hnsw.ef_search of the scan (higher: better recall, slower)';
COMMENT ON COLUMN movrec.settings.train_budget_s IS
    'Seconds train() spends choosing the options a caller did not give, on the validation split, when the '
    'options name no budget_s (0: one run with the kind''s defaults)';

-- Who changed what, whoever updates the row.
CREATE OR REPLACE FUNCTION movrec._settings_stamp() RETURNS trigger
LANGUAGE plpgsql SET search_path = movrec, pg_temp AS $$
BEGIN
    IF current_setting('application_name') = 'pg_restore' THEN
        IF movrec._restoring() THEN
            RETURN NEW;  -- a restore keeps who changed them, and when
        END IF;
    END IF;
    NEW.updated_at := now();
    NEW.updated_by := session_user;
    RETURN NEW;
END $$;
COMMENT ON FUNCTION movrec._settings_stamp() IS 'Trigger: stamps movrec.settings.updated_at and updated_by';
CREATE OR REPLACE TRIGGER movrec_settings_stamp
    BEFORE UPDATE ON movrec.settings FOR EACH ROW EXECUTE FUNCTION movrec._settings_stamp();
COMMENT ON TRIGGER movrec_settings_stamp ON movrec.settings IS 'Records who changed the settings, and when';

-- The one row is there from the install on, so a restore (pg_restore into a database where
-- CREATE EXTENSION already made it) or any other INSERT becomes an update of that row.
CREATE OR REPLACE FUNCTION movrec._settings_merge() RETURNS trigger
LANGUAGE plpgsql SET search_path = movrec, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM movrec.settings) THEN
        RETURN NEW;
    END IF;
    UPDATE movrec.settings
    SET threads = NEW.threads, train_threads = NEW.train_threads, device = NEW.device,
        online_update = NEW.online_update, online_lr = NEW.online_lr, online_reg = NEW.online_reg,
        refit_reg = NEW.refit_reg, backup_retention = NEW.backup_retention,
        recommend_search = NEW.recommend_search, hnsw_ef_search = NEW.hnsw_ef_search,
        updated_at = NEW.updated_at, updated_by = NEW.updated_by;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION movrec._settings_merge() IS
    'Trigger: an INSERT into movrec.settings (a restore) updates the one row instead';
CREATE OR REPLACE TRIGGER movrec_settings_merge
    BEFORE INSERT ON movrec.settings FOR EACH ROW EXECUTE FUNCTION movrec._settings_merge();
COMMENT ON TRIGGER movrec_settings_merge ON movrec.settings IS
    'A second row (a restore over the installed one) merges into the first';
-- also under session_replication_role = replica, which a restore may use
ALTER TABLE movrec.settings ENABLE ALWAYS TRIGGER movrec_settings_merge;

-- A superuser's pg_restore replays rows whose effects the dump already holds (vectors moved,
-- statistics counted, users queued): the triggers on movrec's tables skip such a session.
-- Only a superuser counts, so an application cannot rate unseen by naming itself pg_restore.
CREATE OR REPLACE FUNCTION movrec._restoring() RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT current_setting('application_name') = 'pg_restore'
           AND coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = session_user), false)
$$;
COMMENT ON FUNCTION movrec._restoring() IS
    'True in a superuser''s pg_restore session: triggers skip rows the restore replays';

-- Trigger functions run as the owner and write what the roles may not: each refuses any
-- table but its own (or a Citus shard of it, named table_<shard id> in the same schema), and
-- a superuser's pg_restore.  Triggers call it only when their table or the session looks
-- unusual, so the rating path pays one comparison.
CREATE OR REPLACE FUNCTION movrec._trigger_applies(fn text, relid oid, own regclass) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
BEGIN
    -- (by name through regclass: Citus hides its shards from scans of pg_class)
    IF relid <> own
       AND relid::regclass::text !~ ('^' || replace(own::text, '.', '\.') || '_[0-9]+$') THEN
        RAISE EXCEPTION '% runs only as a trigger of %, not on %', fn, own, relid::regclass
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NOT movrec._restoring();
END $$;
COMMENT ON FUNCTION movrec._trigger_applies(text, oid, regclass) IS
    'For trigger functions: raises 42501 on a table that is not theirs; false in a pg_restore session (skip)';
