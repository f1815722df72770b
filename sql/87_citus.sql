-- Citus: movrec over a coordinator and workers (README: Scaling out, Citus).
--
-- SELECT movrec.distribute() on a Citus coordinator (or `movrec install --citus`) lays the
-- tables out once:
--   distributed by user_id, colocated with movrec.watch_events: the ratings, the user vectors
--     and their backups, the rating statistics, both stored recommendation lists and both
--     per-user queues.  A user's rows are on one node, so the rating trigger and
--     recommend() touch one node only.
--   reference tables (a copy on every node): the catalogue, the registry and the
--     deployments (the champion), the movie vectors and their extras, the popularity
--     statistics, the settings and the installs (which venv backends load), the ETL runs
--     and the tokens.  The rating trigger and recommend() read them where they run.
--   everything else (staging, the ETL work tables, the id maps, the loads) stays on the
--     coordinator, where the ETL and the training run.
-- recommend() and rate() become distributed functions colocated by user_id: Citus runs a
-- call on the node that holds the user's rows.  Every other movrec function is propagated
-- to every node (the rating trigger and the delegated calls run there).
--
-- What changes on Citus, and why:
--   * Triggers on distributed tables fire per shard, on the node of the shard, and may
--     touch only colocated rows and reference tables: citus.enable_unsafe_triggers is set
--     for the database on every node.  The CF and refresh enqueueing is done by statement
--     triggers over transition tables on one node; a shard's statement cannot write the
--     statistics of other shards' users, so on Citus row triggers (movrec._cf_on_rating_row,
--     movrec._refresh_on_rating_row) replace them, one router write per changed rating.
--   * TRUNCATE: Citus puts no TRUNCATE trigger on the shards, but fires the distributed
--     table's own on the node that ran it: movrec._cf_on_truncate() zeroes the statistics
--     and queues the users there.
--   * Each node has its own transaction ids: a statistics row's stamp (changed_xid) names
--     its node's Citus group (changed_group), and a CF cache keeps a watermark per group.
--   * A trigger on a reference table would run on every copy: the deploy's follow-up
--     (movrec._follow_champion) is called by deploy and the ETL's retirement instead of by
--     the trigger movrec_serving_on_deploy, which distribute() drops.
--   * No NOTIFY movrec_cf from the row trigger (two-phase commit forbids it): `movrec worker`
--     finds CF jobs at its next poll.
--   * The drains claim a job on its user's shard (plpython/movrec/jobs.py): Citus locks rows
--     only in a statement that goes to one shard.

-- What a new champion (or a retirement) brings along: the champion's embedded new movies
-- back into the published vectors, and fresh popularity statistics.  One node runs it in
-- the deploy's transaction: the trigger on a single server, deploy itself on Citus.
CREATE OR REPLACE FUNCTION movrec._follow_champion() RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
BEGIN
    -- deploy republished model.movie_latent_attributes from the checkpoint: add back the
    -- movies embedded for this champion after it was trained (a rollback to it keeps them)
    INSERT INTO model.movie_latent_attributes (movie_id, embedding, bias, model_id)
    SELECT x.movie_id, x.embedding::vector, x.bias, x.model_id
    FROM model.movie_latent_extra x
    WHERE x.model_id = (SELECT d.model_id FROM model.deployments d ORDER BY d.deployment_id DESC LIMIT 1)
    ON CONFLICT (movie_id) DO NOTHING;
    PERFORM movrec.refresh_movie_stats();
END $$;
COMMENT ON FUNCTION movrec._follow_champion() IS
    'After a deploy, rollback or retirement: republishes the champion''s embedded new movies and rewrites '
    'model.movie_rating_stats (the trigger movrec_serving_on_deploy on one server; deploy itself on Citus)';

-- The enqueueing of 50_cf.sql and 60_serving.sql, one rating at a time, for Citus (see above).
CREATE OR REPLACE FUNCTION movrec._cf_on_rating_row() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = movrec, model, pg_temp AS $$
DECLARE
    users integer[];
    dn integer[];
    ds float8[];
    dss float8[];
    i integer;
    stamp_group integer;
BEGIN
    IF TG_RELID <> 'movrec.watch_events'::regclass OR current_setting('application_name') = 'pg_restore' THEN
        IF NOT movrec._trigger_applies('movrec._cf_on_rating_row()', TG_RELID, 'movrec.watch_events') THEN
            RETURN NULL;  -- a restore replays rows whose effects the dump holds
        END IF;
    END IF;
    IF TG_OP = 'INSERT' THEN
        users := ARRAY[NEW.user_id]; dn := ARRAY[1]; ds := ARRAY[NEW.rating::float8];
        dss := ARRAY[NEW.rating::float8 ^ 2];
    ELSIF TG_OP = 'DELETE' THEN
        users := ARRAY[OLD.user_id]; dn := ARRAY[-1]; ds := ARRAY[-OLD.rating::float8];
        dss := ARRAY[-(OLD.rating::float8 ^ 2)];
    ELSIF (NEW.user_id, NEW.movie_id, NEW.rating) IS NOT DISTINCT FROM (OLD.user_id, OLD.movie_id, OLD.rating) THEN
        RETURN NULL;  -- the same rating again (or a new rated_at): nothing changed here
    ELSIF NEW.user_id = OLD.user_id THEN
        users := ARRAY[NEW.user_id]; dn := ARRAY[0];
        ds := ARRAY[NEW.rating::float8 - OLD.rating::float8];
        dss := ARRAY[NEW.rating::float8 ^ 2 - OLD.rating::float8 ^ 2];
    ELSE  -- the row moved to another user (an owner's fix): both users change
        users := ARRAY[OLD.user_id, NEW.user_id]; dn := ARRAY[-1, 1];
        ds := ARRAY[-OLD.rating::float8, NEW.rating::float8];
        dss := ARRAY[-(OLD.rating::float8 ^ 2), NEW.rating::float8 ^ 2];
    END IF;
    -- The stamp is this node's transaction id, so it names this node's group: a CF cache
    -- compares it with a snapshot of this node (plpython/movrec/cf/cache.py).
    stamp_group := movrec._local_group();
    -- one user per statement: each statement goes to that user's shard alone
    FOR i IN 1 .. cardinality(users) LOOP
        INSERT INTO model.user_rating_stats AS s
            (user_id, n_ratings, sum_ratings, sum_squares, n_changes, changed_xid, changed_group, updated_at)
        VALUES (users[i], dn[i], ds[i], dss[i], 1, pg_current_xact_id(), stamp_group, now())
        ON CONFLICT (user_id) DO UPDATE
        SET n_ratings = s.n_ratings + excluded.n_ratings, sum_ratings = s.sum_ratings + excluded.sum_ratings,
            sum_squares = s.sum_squares + excluded.sum_squares, n_changes = s.n_changes + 1,
            changed_xid = excluded.changed_xid, changed_group = excluded.changed_group,
            updated_at = excluded.updated_at;
        INSERT INTO model.cf_queue (user_id) VALUES (users[i]) ON CONFLICT (user_id) DO NOTHING;
    END LOOP;
    -- No NOTIFY movrec_cf: a transaction that writes more than one node commits by two-phase
    -- commit, which NOTIFY forbids, and a worker's notification never reaches a LISTEN on the
    -- coordinator anyway; `movrec worker` finds the job at its next poll (--poll).
    RETURN NULL;
END $$;
COMMENT ON FUNCTION movrec._cf_on_rating_row() IS
    'Trigger (per row, Citus): what movrec.cf_on_ratings_changed() does per statement, for one rating: '
    'the user''s model.user_rating_stats and model.cf_queue rows (no NOTIFY: two-phase commits forbid it)';

-- TRUNCATE on Citus: the shards have no TRUNCATE triggers (Citus 13.2 creates none on them),
-- but the distributed table's own ones fire on the node that ran the TRUNCATE, once, after
-- Citus truncated the shards in the same transaction.  This one does there what the
-- TRUNCATE branch of movrec.cf_on_ratings_changed() does on one server, as statements over
-- every shard (the queue first, while the statistics still say who had ratings).
CREATE OR REPLACE FUNCTION movrec._cf_on_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = movrec, model, pg_temp AS $$
DECLARE
    stamp xid8;
    stamp_group integer := movrec._local_group();
    n_changed bigint;
BEGIN
    IF TG_RELID <> 'movrec.watch_events'::regclass OR current_setting('application_name') = 'pg_restore' THEN
        IF NOT movrec._trigger_applies('movrec._cf_on_truncate()', TG_RELID, 'movrec.watch_events') THEN
            RETURN NULL;  -- a restore replays rows whose effects the dump holds
        END IF;
    END IF;
    stamp := pg_current_xact_id();  -- (values, not calls: Citus evaluates none in an UPDATE of shards)
    INSERT INTO model.cf_queue (user_id)
    SELECT s.user_id FROM model.user_rating_stats s WHERE s.n_ratings <> 0
    ON CONFLICT (user_id) DO NOTHING;
    UPDATE model.user_rating_stats
    SET n_ratings = 0, sum_ratings = 0, sum_squares = 0, n_changes = n_changes + 1,
        changed_xid = stamp, changed_group = stamp_group, updated_at = now()
    WHERE n_ratings <> 0;
    GET DIAGNOSTICS n_changed = ROW_COUNT;
    IF n_changed > 0 THEN
        PERFORM pg_notify('movrec_cf', '');  -- (this node's own commit: not a prepared one)
    END IF;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION movrec._cf_on_truncate() IS
    'Trigger (TRUNCATE, Citus): zeroes model.user_rating_stats and queues every user who had ratings in '
    'model.cf_queue, as movrec.cf_on_ratings_changed() does on one server';

CREATE OR REPLACE FUNCTION movrec._refresh_on_rating_row() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = movrec, model, pg_temp AS $$
BEGIN
    IF TG_RELID <> 'movrec.watch_events'::regclass OR current_setting('application_name') = 'pg_restore' THEN
        IF NOT movrec._trigger_applies('movrec._refresh_on_rating_row()', TG_RELID, 'movrec.watch_events') THEN
            RETURN NULL;  -- a restore replays rows whose effects the dump holds
        END IF;
    END IF;
    INSERT INTO model.refresh_queue (user_id) VALUES (NEW.user_id) ON CONFLICT (user_id) DO NOTHING;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION movrec._refresh_on_rating_row() IS
    'Trigger (per row, Citus): what movrec.cf_on_ratings_changed() does for the refresh queue per statement, '
    'for one rating: the rater goes into model.refresh_queue';

CREATE OR REPLACE FUNCTION movrec.distribute() RETURNS jsonb
LANGUAGE plpgsql VOLATILE SET search_path = movrec, model, public, pg_temp AS $$
DECLARE
    -- Names, not oids: making a table a Citus table can give its name a new oid.
    -- Referenced before referencing: a reference table's foreign keys point at reference tables.
    reference_tables constant text[] := ARRAY[
        'model.registry', 'model.deployments', 'movrec.movies', 'model.movie_latent_attributes',
        'model.movie_latent_extra', 'model.movie_rating_stats', 'movrec.settings', 'movrec.installs',
        'movrec.etl_runs', 'movrec.vocab', 'movrec.movie_tokens'];
    user_tables constant text[] := ARRAY[
        'movrec.watch_events', 'model.user_latent_attributes', 'model.user_latent_attributes_backups',
        'model.user_rating_stats', 'model.model_recommendation', 'model.user_recommendation',
        'model.cf_queue', 'model.refresh_queue'];
    colocated constant text[] := ARRAY[
        'movrec.recommend(integer, integer, text[], integer, integer)',
        'movrec.rate(integer, integer, real)'];
    t regclass;
    name text;
    fk record;
    keys text[] := '{}';
    f regprocedure;
    v regclass;
    done jsonb := '{}';
    search_path_now text;
    set_triggers text := format('ALTER DATABASE %I SET citus.enable_unsafe_triggers = on', current_database());
BEGIN
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION 'distribute(): this database has no Citus (no extension citus)'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'on a Citus coordinator (shared_preload_libraries = ''citus''): CREATE EXTENSION citus, '
                         'add the workers (citus_add_node), then SELECT movrec.distribute()';
    END IF;
    IF NOT citus_is_coordinator() THEN
        RAISE EXCEPTION 'distribute(): this node is not the Citus coordinator'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'run it on the coordinator (SELECT citus_set_coordinator_host(...) there first)';
    END IF;
    -- Triggers on distributed and reference tables: this transaction (the DDL below), and
    -- every later session on every node (the DML that fires them on the shards).
    PERFORM set_config('citus.enable_unsafe_triggers', 'on', true);
    -- one connection per node: foreign keys to reference tables are added in this transaction
    PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);
    EXECUTE set_triggers;
    PERFORM run_command_on_workers(set_triggers);
    -- and the database's search_path (`movrec install` adds movrec to it), on every node
    SELECT substr(s, strpos(s, '=') + 1) INTO search_path_now
    FROM pg_db_role_setting d JOIN pg_database db ON db.oid = d.setdatabase, unnest(d.setconfig) s
    WHERE db.datname = current_database() AND d.setrole = 0 AND split_part(s, '=', 1) = 'search_path';
    IF search_path_now IS NOT NULL THEN
        PERFORM run_command_on_workers(format('ALTER DATABASE %I SET search_path = %s', current_database(),
                                              search_path_now));
    END IF;

    -- Statement triggers over transition tables write other users' rows: row triggers instead.
    DROP TRIGGER IF EXISTS movrec_cf_enqueue ON movrec.watch_events;
    DROP TRIGGER IF EXISTS movrec_cf_enqueue_update ON movrec.watch_events;
    DROP TRIGGER IF EXISTS movrec_cf_enqueue_changed ON movrec.watch_events;
    DROP TRIGGER IF EXISTS movrec_cf_enqueue_delete ON movrec.watch_events;
    DROP TRIGGER IF EXISTS movrec_cf_enqueue_truncate ON movrec.watch_events;
    DROP TRIGGER IF EXISTS movrec_refresh_enqueue ON movrec.watch_events;
    DROP TRIGGER IF EXISTS movrec_refresh_enqueue_update ON movrec.watch_events;
    -- On every copy of model.deployments it would rewrite reference tables from each node:
    -- deploy calls movrec._follow_champion() once instead.
    DROP TRIGGER IF EXISTS movrec_serving_on_deploy ON model.deployments;

    -- The foreign keys between these tables go while the tables become Citus tables, and
    -- come back after: Citus would otherwise turn a table whose key points at a new reference
    -- table into a "Citus local table", recreating it and dropping what depends on its row
    -- type (rate() returns one).
    FOR fk IN
        SELECT c.conrelid::regclass AS rel, c.conname, pg_get_constraintdef(c.oid) AS def
        FROM pg_constraint c
        WHERE c.contype = 'f'
          AND c.conrelid IN (SELECT x::regclass FROM unnest(reference_tables || user_tables) x)
          AND NOT EXISTS (SELECT FROM pg_dist_partition p WHERE p.logicalrelid = c.conrelid)
        ORDER BY 1, 2
    LOOP
        keys := keys || format('ALTER TABLE %s ADD CONSTRAINT %I %s', fk.rel, fk.conname, fk.def);
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', fk.rel, fk.conname);
    END LOOP;
    FOREACH name IN ARRAY reference_tables LOOP
        t := name::regclass;
        IF NOT EXISTS (SELECT FROM pg_dist_partition WHERE logicalrelid = t) THEN
            PERFORM create_reference_table(t);
            done := done || jsonb_build_object(name, 'reference');
        END IF;
    END LOOP;
    FOREACH name IN ARRAY user_tables LOOP
        t := name::regclass;
        IF NOT EXISTS (SELECT FROM pg_dist_partition WHERE logicalrelid = t) THEN
            PERFORM create_distributed_table(t, 'user_id', colocate_with =>
                CASE WHEN t = 'movrec.watch_events'::regclass THEN 'default' ELSE 'movrec.watch_events' END);
            done := done || jsonb_build_object(name, 'distributed by user_id');
        END IF;
    END LOOP;
    FOREACH name IN ARRAY keys LOOP
        EXECUTE name;
    END LOOP;

    -- A CF cache looks up the users stamped since its watermark, one range per node group
    -- (plpython/movrec/cf/cache.py); one server's caches use user_rating_stats_changed_xid_idx.
    CREATE INDEX IF NOT EXISTS user_rating_stats_changed_group_xid_idx
        ON model.user_rating_stats (changed_group, changed_xid);
    COMMENT ON INDEX model.user_rating_stats_changed_group_xid_idx IS
        'Citus: the users a node group stamped since a CF cache''s watermark of that group';

    CREATE OR REPLACE TRIGGER movrec_cf_enqueue_row
        AFTER INSERT OR UPDATE OR DELETE ON movrec.watch_events
        FOR EACH ROW EXECUTE FUNCTION movrec._cf_on_rating_row();
    COMMENT ON TRIGGER movrec_cf_enqueue_row ON movrec.watch_events IS
        'CF on Citus: each changed rating updates its user''s model.user_rating_stats row and queues the user';
    CREATE OR REPLACE TRIGGER movrec_refresh_enqueue_row
        AFTER INSERT OR UPDATE ON movrec.watch_events
        FOR EACH ROW EXECUTE FUNCTION movrec._refresh_on_rating_row();
    COMMENT ON TRIGGER movrec_refresh_enqueue_row ON movrec.watch_events IS
        'Serving on Citus: each rating queues its user for a refresh of model.model_recommendation';
    CREATE OR REPLACE TRIGGER movrec_cf_enqueue_truncate_citus
        AFTER TRUNCATE ON movrec.watch_events
        FOR EACH STATEMENT EXECUTE FUNCTION movrec._cf_on_truncate();
    COMMENT ON TRIGGER movrec_cf_enqueue_truncate_citus ON movrec.watch_events IS
        'CF on Citus: TRUNCATE zeroes model.user_rating_stats and enqueues every user who had ratings';

    -- Every function on every node; recommend() and rate() run where the user's rows are.
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname IN ('movrec', 'model') AND p.oid NOT IN (SELECT x::regprocedure FROM unnest(colocated) x)
          AND NOT EXISTS (SELECT FROM pg_dist_object o WHERE o.classid = 'pg_proc'::regclass AND o.objid = p.oid)
        ORDER BY p.oid
    LOOP
        PERFORM create_distributed_function(f);
    END LOOP;
    FOREACH name IN ARRAY colocated LOOP
        f := name::regprocedure;
        IF NOT EXISTS (SELECT FROM pg_dist_object o WHERE o.classid = 'pg_proc'::regclass AND o.objid = f
                       AND o.distribution_argument_index IS NOT NULL) THEN
            PERFORM create_distributed_function(f, '$1', colocate_with => 'movrec.watch_events');
            done := done || jsonb_build_object(name, 'colocated with movrec.watch_events');
        END IF;
    END LOOP;
    -- Views read by the functions that run on the workers: created again, which Citus
    -- propagates now that what they read is there.
    FOR v IN
        SELECT c.oid::regclass FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname IN ('movrec', 'model') AND c.relkind = 'v'
          AND NOT EXISTS (SELECT FROM pg_dist_object o WHERE o.classid = 'pg_class'::regclass AND o.objid = c.oid)
    LOOP
        EXECUTE format('CREATE OR REPLACE VIEW %s AS %s', v, pg_get_viewdef(v));
    END LOOP;
    RETURN done;
END $$;
COMMENT ON FUNCTION movrec.distribute() IS
    'On a Citus coordinator: distributes the per-user tables by user_id (colocated with watch_events), makes the '
    'catalogue, registry, champion and movie vectors reference tables, recommend() and rate() distributed '
    'functions colocated by user_id, and every other movrec function present on every node. Idempotent; returns '
    'what it changed. Owner only';
