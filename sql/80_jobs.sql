-- Background jobs: the queues (model.cf_queue, model.refresh_queue), their pg_cron schedule,
-- pruning of jobs whose user is gone, and one status view to alert on.  `movrec worker` drains
-- the same queues without pg_cron; both call the same drain functions.

-- The one way movrec registers a pg_cron job.  pg_cron must be loaded at server start and
-- can live in one database only (cron.database_name): anywhere else, scheduling cannot work,
-- and saying so is an error with the fix, not a NULL that a script would take for success.
CREATE OR REPLACE FUNCTION movrec._cron_job(job_name text, schedule text, command text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
DECLARE
    scheduled_job bigint;
    cron_db text := current_setting('cron.database_name', true);
BEGIN
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_cron') THEN
        IF coalesce(cron_db, '') <> current_database() THEN
            RAISE EXCEPTION 'pg_cron is not available in database % (cron.database_name is %)',
                current_database(), coalesce(cron_db, 'not set: pg_cron is not loaded')
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = format('in postgresql.conf set shared_preload_libraries = ''pg_cron'' and '
                                    'cron.database_name = %L, restart the server, then schedule again; '
                                    'or run `movrec worker` instead', current_database());
        END IF;
        -- in pg_catalog, not the first schema of this function's search_path (movrec): an
        -- extension in schema movrec would go with DROP SCHEMA movrec (uninstall --drop-data),
        -- every database's jobs with it, and would block DROP EXTENSION movrec
        CREATE EXTENSION pg_cron SCHEMA pg_catalog;
    END IF;
    -- a named job: scheduling again replaces it
    scheduled_job := cron.schedule(job_name, schedule, command);
    -- pg_cron runs a job through a libpq connection to cron.host (default localhost, over
    -- TCP).  A server that listens on its Unix socket only (the embedded cluster) would
    -- fail every run with "connection failed": point the job at the socket instead.
    IF coalesce(current_setting('cron.use_background_workers', true), 'off') = 'off'
       AND coalesce(current_setting('cron.host', true), 'localhost') = 'localhost'
       AND current_setting('listen_addresses') = '' THEN
        UPDATE cron.job
        SET nodename = trim(split_part(current_setting('unix_socket_directories'), ',', 1)),
            nodeport = current_setting('port')::integer
        WHERE jobid = scheduled_job;
    END IF;
    RETURN scheduled_job;
END $$;
COMMENT ON FUNCTION movrec._cron_job(text, text, text) IS
    'Implementation of movrec.schedule() and movrec.cf_schedule(): registers (or replaces) the named pg_cron job; '
    'an error (55000) with the fix where pg_cron is not available in this database';

-- Queue rows whose user has no rating left (an ETL rerun or forget_user took them out):
-- nothing to compute, and a queue depth that never falls would hide real backlog.
-- Rows a drain has claimed are skipped, not waited for.
CREATE OR REPLACE FUNCTION movrec.prune_queues() RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
DECLARE
    n integer;
    total integer := 0;
BEGIN
    IF movrec._distributed() THEN
        -- Citus locks rows only in a statement on one shard: a plain colocated DELETE, which
        -- waits for a job a drain holds instead of passing over it (a drain never waits here)
        DELETE FROM model.cf_queue q WHERE NOT EXISTS (SELECT FROM movrec.watch_events w WHERE w.user_id = q.user_id);
        GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
        DELETE FROM model.refresh_queue q
        WHERE NOT EXISTS (SELECT FROM movrec.watch_events w WHERE w.user_id = q.user_id);
        GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
        RETURN total;
    END IF;
    DELETE FROM model.cf_queue q
    WHERE q.user_id IN (SELECT s.user_id FROM model.cf_queue s
                        WHERE NOT EXISTS (SELECT FROM movrec.watch_events w WHERE w.user_id = s.user_id)
                        FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
    DELETE FROM model.refresh_queue q
    WHERE q.user_id IN (SELECT s.user_id FROM model.refresh_queue s
                        WHERE NOT EXISTS (SELECT FROM movrec.watch_events w WHERE w.user_id = s.user_id)
                        FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
    RETURN total;
END $$;
COMMENT ON FUNCTION movrec.prune_queues() IS
    'Deletes CF and refresh queue rows of users without any rating (gone); returns the rows deleted. '
    'movrec worker and the pg_cron job movrec-prune-queues run it';

-- Every queue movrec keeps, with the job that drains it: schedule() registers them all.
CREATE OR REPLACE FUNCTION movrec.schedule(schedule text DEFAULT '* * * * *', max_jobs integer DEFAULT 100)
RETURNS TABLE (job_name text, job_id bigint, command text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
DECLARE
    job record;
BEGIN
    IF max_jobs IS NULL OR max_jobs < 1 THEN
        RAISE EXCEPTION 'schedule(): max_jobs must be at least 1' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR job IN
        SELECT * FROM (VALUES
            ('movrec-cf-drain', schedule, format('SELECT movrec.cf_drain(%s)', max_jobs)),
            ('movrec-serving-drain', schedule, format('SELECT movrec.serving_drain(%s)', max_jobs)),
            ('movrec-prune-queues', '17 * * * *', 'SELECT movrec.prune_queues()'),
            ('movrec-retrain', '0 3 * * *', 'SELECT * FROM movrec.retrain_and_promote()')) AS j (name, cron, cmd)
    LOOP
        job_name := job.name;
        command := job.cmd;
        job_id := movrec._cron_job(job.name, job.cron, job.cmd);
        RETURN NEXT;
    END LOOP;
END $$;
COMMENT ON FUNCTION movrec.schedule(text, integer) IS
    'Registers the pg_cron jobs that drain every movrec queue (movrec-cf-drain, movrec-serving-drain, every minute '
    'by default, max_jobs each run), prune stale jobs (movrec-prune-queues, hourly) and retrain (movrec-retrain, '
    'nightly at 03:00: retrain_and_promote()); an error with the fix where pg_cron is not available';

-- The nightly retrain-and-promote loop: a new model of the champion's kind on the current data,
-- deployed only when it beats the champion on held-out ratings of the current data.  Each model
-- is scored by evaluate() on the ratings it held out (its stored validation split, as they stand
-- now), so neither is scored on rows it trained on; the champion's seed and val_fraction are
-- forced onto the new model, so both splits are drawn alike and of the same share.  The comparison
-- metric is NDCG@10 for a kind with a ranking head (that is what recommend() orders by),
-- else RMSE.  A champion that no longer fits the catalogue cannot serve, so any new model wins.
-- The outcome is recorded in the new model's metrics.retrain either way.
CREATE OR REPLACE FUNCTION movrec.retrain_and_promote(kind text DEFAULT NULL, options jsonb DEFAULT NULL)
RETURNS TABLE (model_id bigint, champion_id bigint, promoted boolean, metric text, value double precision,
               champion_value double precision, reason text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
DECLARE
    champ record;
    train_kind text;
    opts jsonb;
    higher_is_better boolean;
    mismatch text;
BEGIN
    PERFORM movrec._require_primary('retrain_and_promote()');
    IF options IS NOT NULL AND jsonb_typeof(options) <> 'object' THEN
        RAISE EXCEPTION 'retrain_and_promote(): options must be a JSON object, got %', jsonb_typeof(options)
            USING ERRCODE = 'invalid_parameter_value', HINT = 'e.g. ''{"epochs": 20}''';
    END IF;
    SELECT c.model_id, c.kind, r.params, r.metrics INTO champ
    FROM model.champion c JOIN model.registry r USING (model_id);
    train_kind := coalesce(retrain_and_promote.kind, champ.kind);
    IF train_kind IS NULL THEN
        RAISE EXCEPTION 'retrain_and_promote(): there is no champion, so no kind to retrain'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'name the kind (SELECT * FROM movrec.retrain_and_promote(''mf'')) or train one first '
                         '(SELECT movrec.train()); nothing was changed';
    END IF;
    -- the champion's own options when the kind is the same (its device is the database's
    -- default now, not what it had then; its search's trials are a record, not an option);
    -- the split is the champion's in any case
    opts := CASE WHEN champ.kind = train_kind THEN champ.params - 'device' - 'search' ELSE '{}' END
            || coalesce(options, '{}');
    IF champ.model_id IS NOT NULL THEN
        opts := opts || jsonb_strip_nulls(jsonb_build_object('seed', champ.params -> 'seed',
                                                             'val_fraction', champ.params -> 'val_fraction'));
    END IF;
    model_id := movrec.train(train_kind, opts, false);
    champion_id := champ.model_id;
    higher_is_better := (SELECT r.metrics ? 'val_ndcg@10' FROM model.registry r
                         WHERE r.model_id = retrain_and_promote.model_id);
    metric := CASE WHEN higher_is_better THEN 'val_ndcg@10' ELSE 'val_rmse' END;
    PERFORM FROM movrec.evaluate(model_id);
    value := (SELECT (r.metrics -> 'evaluation' ->> metric)::double precision FROM model.registry r
              WHERE r.model_id = retrain_and_promote.model_id);
    IF champ.model_id IS NULL THEN
        promoted := true;
        reason := 'promoted: there was no champion';
    ELSE
        mismatch := movrec._catalogue_mismatch(champ.model_id);
        IF mismatch IS NOT NULL THEN
            promoted := true;
            reason := format('promoted: the champion cannot serve the current catalogue (%s)', mismatch);
        ELSE
            PERFORM FROM movrec.evaluate(champ.model_id);
            champion_value := (SELECT (r.metrics -> 'evaluation' ->> metric)::double precision
                               FROM model.registry r WHERE r.model_id = champ.model_id);
            promoted := champion_value IS NULL OR value IS NOT NULL
                        AND CASE WHEN higher_is_better THEN value > champion_value ELSE value < champion_value END;
            reason := format('%s: %s %s %s the champion''s (model %s) %s, each on the ratings it held out',
                             CASE WHEN promoted THEN 'promoted' ELSE 'not promoted, the champion stays' END,
                             metric, round(value::numeric, 4),
                             CASE WHEN promoted THEN CASE WHEN higher_is_better THEN 'above' ELSE 'below' END
                                  ELSE 'does not beat' END,
                             champ.model_id, round(champion_value::numeric, 4));
        END IF;
    END IF;
    UPDATE model.registry r
    SET metrics = r.metrics || jsonb_build_object('retrain', jsonb_build_object(
        'champion', champion_id, 'promoted', promoted, 'metric', metric, 'value', value,
        'champion_value', champion_value, 'reason', reason, 'at', now()))
    WHERE r.model_id = retrain_and_promote.model_id;
    IF promoted THEN
        PERFORM movrec.deploy(model_id);
        UPDATE model.deployments d SET reason = 'retrain_and_promote'
        WHERE d.deployment_id = (SELECT max(x.deployment_id) FROM model.deployments x);
    END IF;
    RETURN NEXT;
END $$;
COMMENT ON FUNCTION movrec.retrain_and_promote(text, jsonb) IS
    'Trains a new model (kind: the champion''s by default, with its options and split; options override) on the '
    'current data, scores it and the champion with evaluate() on the ratings each held out (NDCG@10 for ranked '
    'kinds, else RMSE) and deploys it only when it is better; records the outcome in its metrics.retrain. The '
    'nightly pg_cron job movrec-retrain (movrec.schedule()) runs it';

CREATE OR REPLACE FUNCTION movrec.unschedule() RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
DECLARE
    n integer := 0;
    name text;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_cron') THEN
        RETURN 0;
    END IF;
    FOR name IN SELECT jobname FROM cron.job WHERE jobname LIKE 'movrec-%' LOOP
        PERFORM cron.unschedule(name);
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;
COMMENT ON FUNCTION movrec.unschedule() IS 'Removes every movrec pg_cron job; returns how many there were';

-- One row per thing to watch.  pg_cron's tables are read only when the extension is here, so
-- the view works (without those rows) on a server without it.
CREATE OR REPLACE FUNCTION movrec._status()
RETURNS TABLE (item text, value bigint, age interval, detail text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
BEGIN
    RETURN QUERY
        SELECT 'cf_queue', count(*), now() - min(q.enqueued_at),
               format('%s failing (attempts > 0); age: the oldest queued job', count(*) FILTER (WHERE q.attempts > 0))
        FROM model.cf_queue q;
    RETURN QUERY
        SELECT 'refresh_queue', count(*), now() - min(q.enqueued_at),
               format('%s failing (attempts > 0); age: the oldest queued job', count(*) FILTER (WHERE q.attempts > 0))
        FROM model.refresh_queue q;
    RETURN QUERY
        SELECT 'champion', c.model_id, now() - c.deployed_at,
               format('%s, trained %s on %s ratings of %s movies (etl run %s), val RMSE %s; age: since deployed',
                      c.kind, to_char(r.trained_at, 'YYYY-MM-DD HH24:MI'),
                      coalesce(r.data_snapshot->>'n_ratings', '?'), coalesce(r.data_snapshot->>'n_movies', '?'),
                      coalesce(r.data_snapshot->'catalogue'->>'etl_run', 'none'),
                      round((r.metrics->>'val_rmse')::numeric, 4))
        FROM model.champion c JOIN model.registry r USING (model_id);
    IF EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_cron') THEN
        RETURN QUERY EXECUTE $q$
            SELECT 'cron ' || j.jobname, j.jobid,
                   now() - (SELECT max(d.end_time) FROM cron.job_run_details d
                            WHERE d.jobid = j.jobid AND d.status = 'succeeded'),
                   format('%s %s; age: since the last successful run; last run %s',
                          j.schedule, j.command,
                          coalesce((SELECT d.status FROM cron.job_run_details d WHERE d.jobid = j.jobid
                                    ORDER BY d.runid DESC LIMIT 1), 'never'))
            FROM cron.job j WHERE j.jobname LIKE 'movrec-%' ORDER BY j.jobname $q$;
    END IF;
END $$;
COMMENT ON FUNCTION movrec._status() IS 'Implementation of the view movrec.status; read that instead';

CREATE OR REPLACE VIEW movrec.status AS SELECT * FROM movrec._status();
COMMENT ON VIEW movrec.status IS
    'What to alert on, one row each: queue depths (value) and the oldest queued job''s age, the champion (value: '
    'model id; age since deployed; the data it was trained on), and with pg_cron each movrec job''s time since its '
    'last successful run';
