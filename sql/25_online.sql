-- Online learning: the rating trigger moves the rater's vector.
--
-- Settings (movrec.settings, one row that movrec_admin updates; session SETs are ignored,
-- because this code runs as the owner):
--   online_update     sgd (default): one gradient step on the user's vector, movie side fixed,
--                     done in SQL with pgvector arithmetic (no Python on the insert path);
--                     refit: the user's ridge regression solved exactly over their whole
--                     history, movie side fixed (fold-in), numpy in PL/Python.
--   online_lr, online_reg   sgd's step (0.05) and L2 (0.02); the step is capped at
--                     0.5 / (|m|^2 + 1) as scoring.sgd_step does.
--   refit_reg         refit's ridge weight (default 10), shrinking toward the champion's
--                     default vector (plpython/movrec/online.py, ridge_fold_in).
--   backup_retention  archived vectors kept per user (default 20; 0 keeps them all), a
--                     ring buffer per user (model.user_latent_attributes_backups).
--
-- Concurrency: the user's row in model.user_latent_attributes is locked (FOR UPDATE)
-- before it is read, so ratings by one user serialise and none is lost; updated_at
-- is clock_timestamp(), so it increases in lock order.  A deploy locks every user's row:
-- a rating that read the old champion and then waited for the deploy to commit reads the
-- champion again once it has the row, so the deploy's vector is never lost or relabelled.
--
-- Trigger functions here and in the other files are executable by nobody (attaching one to
-- a table needs EXECUTE) and refuse to run on any table but their own: they are SECURITY
-- DEFINER and write tables the application may not.

CREATE OR REPLACE FUNCTION movrec.on_rating() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
DECLARE
    champ bigint;
    mu double precision;
    m vector;
    b_m real;
    old_u vector;
    old_b real;
    old_model bigint;
    n_update bigint;
    ring integer;
    ring_slot bigint;
    u vector;
    b_u double precision;
    new_u vector;
    new_b double precision;
    fit real[];
    err double precision;
    step double precision;
    lr double precision;
    reg double precision;
    keep integer;
    mode text;
    stamp timestamptz;
BEGIN
    IF TG_RELID <> 'movrec.watch_events'::regclass OR current_setting('application_name') = 'pg_restore' THEN
        IF NOT movrec._trigger_applies('movrec.on_rating()', TG_RELID, 'movrec.watch_events') THEN
            RETURN NULL;  -- a restore replays rows whose effects the dump holds
        END IF;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.rating = OLD.rating THEN
        RETURN NULL;  -- the same rating again: nothing to learn
    END IF;
    -- The common case in one statement: sgd, a user whose row is of the champion and whose
    -- ring is laid out for the retention now (or who has no archive yet).  It reads the champion, its mean, the movie's
    -- vector and the settings, locks the user's row (FOR UPDATE: a row another rating changed
    -- meanwhile is read again, at its newest version, and must still match), archives the old
    -- vector and writes the stepped one: what the general path below does in three
    -- statements, with the same arithmetic.  The stamp is taken after the lock (s reads the
    -- locked rows), so updated_at increases in lock order.  No row (another mode, a new user,
    -- a vector of another model, a ring of another size, no champion or no vector for the
    -- movie): nothing was written, and the general path decides.  On a Citus shard (another
    -- TG_RELID) only the general path's plain router statements run.
    IF TG_RELID = 'movrec.watch_events'::regclass THEN
        WITH c AS (
            SELECT d.model_id, r.global_mean::float8 AS mu, x.embedding AS m, x.bias AS b_m, s.online_lr AS lr,
                   s.online_reg AS reg, s.backup_retention AS keep
            FROM (SELECT model_id FROM model.deployments ORDER BY deployment_id DESC LIMIT 1) d
            JOIN model.registry r USING (model_id)
            JOIN model.movie_latent_attributes x ON x.movie_id = NEW.movie_id AND x.model_id = d.model_id
            CROSS JOIN movrec.settings s
            WHERE s.online_update = 'sgd'
        ), o AS (
            -- (float8 as the general path's variables: the sums below in double precision, as there)
            SELECT a.user_id, a.embedding AS u, a.bias::float8 AS b_u, a.n_updates + 1 AS n, c.*
            FROM model.user_latent_attributes a JOIN c ON a.model_id = c.model_id
            -- the ring laid out for this retention, or none yet: no update archived anything
            -- (n_updates counts every archive row), so there is nothing to renumber
            WHERE a.user_id = NEW.user_id AND (a.backup_ring = c.keep OR (a.backup_ring IS NULL AND a.n_updates = 0))
            FOR UPDATE OF a
        ), s AS (
            -- scoring.sgd_step: err = r - (mu + b_u + b_m + u.m); step = min(lr, 0.5 / (|m|^2 + 1))
            SELECT o.*, clock_timestamp() AS stamp, e.err,
                   least(o.lr, 0.5 / (1.0 - (o.m OPERATOR(public.<#>) o.m))) AS step
            FROM o, LATERAL (SELECT NEW.rating - (o.mu + o.b_u + o.b_m - (o.u OPERATOR(public.<#>) o.m)) AS err) e
        ), archived AS (
            INSERT INTO model.user_latent_attributes_backups AS b
                (user_id, slot, update_seq, embedding, bias, model_id, archived_at)
            SELECT s.user_id, CASE WHEN s.keep = 0 THEN s.n ELSE s.n % s.keep END, s.n, s.u, s.b_u, s.model_id,
                   s.stamp
            FROM s
            ON CONFLICT (user_id, slot) DO UPDATE
            SET update_seq = excluded.update_seq, embedding = excluded.embedding, bias = excluded.bias,
                model_id = excluded.model_id, archived_at = excluded.archived_at
        )
        -- u + step (err m - reg u) = (1 - step reg) u + (step err) m, as below
        UPDATE model.user_latent_attributes a
        SET embedding = (s.u OPERATOR(public.*) array_fill((1.0 - s.step * s.reg)::real, ARRAY[vector_dims(s.u)])::vector)
                        OPERATOR(public.+)
                        (s.m OPERATOR(public.*) array_fill((s.step * s.err)::real, ARRAY[vector_dims(s.m)])::vector),
            bias = s.b_u + s.step * (s.err - s.reg * s.b_u), model_id = s.model_id, n_updates = s.n,
            backup_ring = s.keep, updated_at = s.stamp
        FROM s
        WHERE a.user_id = s.user_id;
        IF FOUND THEN
            RETURN NULL;
        END IF;
    END IF;
    -- The champion, its global mean, the movie's vector of that model and the settings, in one
    -- statement.  (Not the movie row's model_id alone: a cold-start job that raced a deploy
    -- can leave a row of the previous model behind.)
    SELECT d.model_id, r.global_mean, x.embedding, x.bias, s.online_update, s.online_lr, s.online_reg,
           s.backup_retention
    INTO champ, mu, m, b_m, mode, lr, reg, keep
    FROM (SELECT model_id FROM model.deployments ORDER BY deployment_id DESC LIMIT 1) d
    JOIN model.registry r USING (model_id)
    JOIN model.movie_latent_attributes x ON x.movie_id = NEW.movie_id AND x.model_id = d.model_id
    CROSS JOIN movrec.settings s;
    IF champ IS NULL THEN
        RETURN NULL;  -- nothing deployed, or a movie the champion has no vector for: just stored
    END IF;

    SELECT embedding, bias, model_id, n_updates + 1, backup_ring INTO old_u, old_b, old_model, n_update, ring
    FROM model.user_latent_attributes WHERE user_id = NEW.user_id FOR UPDATE;
    IF NOT FOUND THEN  -- a new user starts from the champion's default (mean) vector
        -- (values, not INSERT .. SELECT, and no volatile call in the statement: on Citus this
        -- runs on the user's shard, where a write must be a plain router statement)
        SELECT default_embedding::vector, default_bias INTO u, b_u FROM model.registry r WHERE r.model_id = champ;
        stamp := clock_timestamp();
        INSERT INTO model.user_latent_attributes (user_id, embedding, bias, model_id, updated_at)
        VALUES (NEW.user_id, u, b_u, champ, stamp)
        ON CONFLICT (user_id) DO NOTHING;
        SELECT embedding, bias, model_id, n_updates + 1, backup_ring INTO old_u, old_b, old_model, n_update, ring
        FROM model.user_latent_attributes WHERE user_id = NEW.user_id FOR UPDATE;
    END IF;

    IF old_model IS DISTINCT FROM champ THEN
        -- The row may hold a champion newer than the one read above: a deploy that committed
        -- while this trigger waited for the row lock (it locks every user's row).  Read the
        -- champion again, with a new snapshot, so that the step starts from the vector the
        -- deploy published and is labelled with its model; otherwise the row is of an older
        -- model and the step starts from this champion's default.  Rare, so the insert path
        -- pays one branch.
        SELECT d.model_id, r.global_mean, x.embedding, x.bias, s.online_update, s.online_lr,
               s.online_reg, s.backup_retention
        INTO champ, mu, m, b_m, mode, lr, reg, keep
        FROM (SELECT model_id FROM model.deployments ORDER BY deployment_id DESC LIMIT 1) d
        JOIN model.registry r USING (model_id)
        JOIN model.movie_latent_attributes x ON x.movie_id = NEW.movie_id AND x.model_id = d.model_id
        CROSS JOIN movrec.settings s;
        IF champ IS NULL THEN
            RETURN NULL;  -- the new champion has no vector for this movie: just stored
        END IF;
    END IF;

    IF mode = 'refit' THEN
        fit := movrec._online_refit(NEW.user_id, champ);
        IF fit IS NULL THEN
            RETURN NULL;
        END IF;
        new_u := fit[1:array_length(fit, 1) - 1]::vector;
        new_b := fit[array_length(fit, 1)];
    ELSE
        IF old_model = champ THEN
            u := old_u; b_u := old_b;
        ELSE  -- a vector of an older model: start again from this model's default
            SELECT default_embedding::vector, default_bias INTO u, b_u FROM model.registry r WHERE r.model_id = champ;
        END IF;
        -- scoring.sgd_step: err = r - (mu + b_u + b_m + u.m); step = min(lr, 0.5 / (|m|^2 + 1))
        err := NEW.rating - (mu + b_u + b_m - (u OPERATOR(public.<#>) m));
        step := least(lr, 0.5 / (1.0 - (m OPERATOR(public.<#>) m)));
        -- u + step (err m - reg u) = (1 - step reg) u + (step err) m; pgvector has no scalar
        -- multiply, so the scalars are vectors of one value
        new_u := (u OPERATOR(public.*) array_fill((1.0 - step * reg)::real, ARRAY[vector_dims(u)])::vector)
                 OPERATOR(public.+) (m OPERATOR(public.*) array_fill((step * err)::real, ARRAY[vector_dims(m)])::vector);
        new_b := b_u + step * (err - reg * b_u);
    END IF;

    IF ring IS DISTINCT FROM keep THEN
        -- The user's ring was laid out for another retention (the setting changed, or a
        -- layout before the ring): keep the newest `keep`, renumber them for this size, once.
        -- Negative slots first, so no two rows ever share a slot on the way.
        IF keep > 0 THEN
            DELETE FROM model.user_latent_attributes_backups b
            WHERE b.user_id = NEW.user_id AND b.update_seq <= n_update - keep;
        END IF;
        UPDATE model.user_latent_attributes_backups b SET slot = -b.update_seq WHERE b.user_id = NEW.user_id;
        UPDATE model.user_latent_attributes_backups b
        SET slot = CASE WHEN keep = 0 THEN b.update_seq ELSE b.update_seq % keep END
        WHERE b.user_id = NEW.user_id;
    END IF;
    ring_slot := CASE WHEN keep = 0 THEN n_update ELSE n_update % keep END;
    stamp := clock_timestamp();  -- after the row lock: updated_at increases in lock order
    -- Archive the previous vector into the user's ring slot (the oldest of the last `keep`)
    -- and write the new vector: one statement.
    WITH archived AS (
        INSERT INTO model.user_latent_attributes_backups AS b
            (user_id, slot, update_seq, embedding, bias, model_id, archived_at)
        VALUES (NEW.user_id, ring_slot, n_update, old_u, old_b, old_model, stamp)
        ON CONFLICT (user_id, slot) DO UPDATE
        SET update_seq = excluded.update_seq, embedding = excluded.embedding, bias = excluded.bias,
            model_id = excluded.model_id, archived_at = excluded.archived_at
    )
    UPDATE model.user_latent_attributes
    SET embedding = new_u, bias = new_b, model_id = champ, n_updates = n_update, backup_ring = keep,
        updated_at = stamp
    WHERE user_id = NEW.user_id;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION movrec.on_rating() IS
    'Trigger of movrec.watch_events only: moves the rater''s vector (movrec.settings.online_update: sgd = one gradient '
    'step in SQL, refit = ridge fold-in over the user''s history); the old vector goes to the backups table (the last '
    'movrec.settings.backup_retention kept)';

-- Rows an ETL publish writes carry its run (etl_run) and are skipped here, in the trigger's
-- WHEN clause, which costs no function call per row: a publish leaves the trigger enabled
-- (disabling it would lock the table against ratings) and a model learns those rows in
-- training.  An application cannot write etl_run, and a re-rating makes a row live
-- (movrec.on_rerating), so every rating from outside still moves its user's vector.
CREATE OR REPLACE TRIGGER movrec_online_update
    AFTER INSERT OR UPDATE OF rating ON movrec.watch_events
    FOR EACH ROW WHEN (NEW.etl_run IS NULL) EXECUTE FUNCTION movrec.on_rating();
COMMENT ON TRIGGER movrec_online_update ON movrec.watch_events IS
    'Online learning: each live rating (etl_run NULL) moves the user''s vector (movrec.on_rating)';

-- A re-rating is a new rating: it is stamped now and becomes live (an ETL rerun keeps live
-- ratings), whoever wrote it and whatever rated_at the statement set.
CREATE OR REPLACE FUNCTION movrec.on_rerating() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF NEW.rating IS DISTINCT FROM OLD.rating THEN
        NEW.rated_at := now();
        NEW.etl_run := NULL;
    END IF;
    RETURN NEW;
END $$;
COMMENT ON FUNCTION movrec.on_rerating() IS
    'Trigger of movrec.watch_events: a changed rating gets rated_at = now() and etl_run = NULL (a live rating)';

CREATE OR REPLACE TRIGGER movrec_rerating_stamp
    BEFORE UPDATE OF rating ON movrec.watch_events
    FOR EACH ROW EXECUTE FUNCTION movrec.on_rerating();
COMMENT ON TRIGGER movrec_rerating_stamp ON movrec.watch_events IS
    'Re-ratings are stamped now and live (movrec.on_rerating)';
