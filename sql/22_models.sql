-- Models: train, deploy, roll back, evaluate.

-- Which catalogue a model was trained on.  A movie id means a movie only within one
-- catalogue: the first ETL run gives ids 1..N to other movies than the demo had, so a model
-- may serve only where each of its movie ids still names the movie it was trained on.  At
-- register time the registry stamps data_snapshot.catalogue with a fingerprint of the
-- model's movie ids and their identities (MovieLens id, or the title when there is none),
-- the ETL run then published and the number of movies; deploy, rollback and deploy_best
-- recompute it over the same ids against movrec.movies and refuse a model whose ids name
-- other movies now, or no movie (SQLSTATE 55000, object_not_in_prerequisite_state).

CREATE OR REPLACE FUNCTION movrec._model_movie_ids(ids bytea) RETURNS integer[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog AS $$
    -- serving_movie_ids: little-endian int32, ascending
    SELECT coalesce(array_agg(((get_byte(ids, i + 3) << 24) | (get_byte(ids, i + 2) << 16)
                               | (get_byte(ids, i + 1) << 8) | get_byte(ids, i)) ORDER BY i), '{}')
    FROM generate_series(0, length(ids) - 4, 4) AS i
$$;
COMMENT ON FUNCTION movrec._model_movie_ids(bytea) IS
    'The movie ids of a model.registry.serving_movie_ids blob (int32, little-endian) as an array';

CREATE OR REPLACE FUNCTION movrec._catalogue_fingerprint(ids integer[]) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT md5(coalesce(string_agg(i::text || '=' || coalesce('ml' || m.ml_movie_id, 't' || m.title, '-'), ','
                                   ORDER BY i), ''))
    FROM unnest(ids) AS i LEFT JOIN movrec.movies m ON m.movie_id = i
$$;
COMMENT ON FUNCTION movrec._catalogue_fingerprint(integer[]) IS
    'md5 of these movie ids with what each names in movrec.movies now (MovieLens id, else title; - for none)';

CREATE OR REPLACE FUNCTION movrec._catalogue_of(ids bytea) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    movie_ids integer[] := movrec._model_movie_ids(ids);
BEGIN
    RETURN jsonb_build_object(
        'fingerprint', movrec._catalogue_fingerprint(movie_ids),
        'n_movies', cardinality(movie_ids),
        'etl_run', (SELECT max(etl_run) FROM movrec.etl_runs WHERE stage = 'publish'));
END $$;
COMMENT ON FUNCTION movrec._catalogue_of(bytea) IS
    'data_snapshot.catalogue for a model with these serving movie ids: fingerprint, n_movies, etl_run (the last '
    'published ETL run; NULL: none yet)';

CREATE OR REPLACE FUNCTION movrec.registry_stamp_catalogue() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = movrec, model, pg_temp AS $$
BEGIN
    IF TG_RELID <> 'model.registry'::regclass THEN  -- raises: not its table
        PERFORM movrec._trigger_applies('movrec.registry_stamp_catalogue()', TG_RELID, 'model.registry');
    END IF;
    -- a row that carries its catalogue (a restore) keeps it
    IF NOT NEW.data_snapshot ? 'catalogue' THEN
        NEW.data_snapshot := NEW.data_snapshot
                             || jsonb_build_object('catalogue', movrec._catalogue_of(NEW.serving_movie_ids));
    END IF;
    RETURN NEW;
END $$;
COMMENT ON FUNCTION movrec.registry_stamp_catalogue() IS
    'Trigger: records in data_snapshot.catalogue which catalogue a newly registered model was trained on';
CREATE OR REPLACE TRIGGER movrec_registry_catalogue
    BEFORE INSERT ON model.registry FOR EACH ROW EXECUTE FUNCTION movrec.registry_stamp_catalogue();
COMMENT ON TRIGGER movrec_registry_catalogue ON model.registry IS
    'Stamps data_snapshot.catalogue at register time (movrec.registry_stamp_catalogue)';
COMMENT ON COLUMN model.registry.data_snapshot IS
    'The data the model was trained on: n_ratings, n_users, n_movies, max_rated_at, and catalogue '
    '{fingerprint, n_movies, etl_run} (what its movie ids named; deploy checks it)';

-- Models registered before the catalogue was recorded: one trained before the first ETL
-- publish used the ids of the data that publish replaced, and can never match; a later one
-- is taken to fit the catalogue as it is now (ids keep their meaning across ETL reruns).
DO $$
DECLARE
    first_publish timestamptz;
BEGIN
    IF EXISTS (SELECT FROM model.registry WHERE NOT data_snapshot ? 'catalogue') THEN
        IF to_regclass('movrec.etl_runs') IS NOT NULL THEN
            EXECUTE 'SELECT min(finished_at) FROM movrec.etl_runs WHERE stage = ''publish''' INTO first_publish;
        END IF;
        UPDATE model.registry r SET data_snapshot = r.data_snapshot || jsonb_build_object('catalogue',
            CASE WHEN r.trained_at < first_publish
                 THEN jsonb_build_object('fingerprint', 'unknown: trained before the first etl run',
                                         'n_movies', length(r.serving_movie_ids) / 4, 'etl_run', NULL)
                 ELSE movrec._catalogue_of(r.serving_movie_ids) || '{"recorded": "at upgrade"}' END)
        WHERE NOT r.data_snapshot ? 'catalogue';
    END IF;
END $$;

-- NULL when the model's movie ids name what they named at training, else why not.
CREATE OR REPLACE FUNCTION movrec._catalogue_mismatch(model_id bigint) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    recorded jsonb;
    ids bytea;
    now_run bigint := (SELECT max(etl_run) FROM movrec.etl_runs WHERE stage = 'publish');
BEGIN
    SELECT r.data_snapshot -> 'catalogue', r.serving_movie_ids INTO recorded, ids
    FROM model.registry r WHERE r.model_id = _catalogue_mismatch.model_id;
    IF recorded ->> 'fingerprint' IS NOT DISTINCT FROM movrec._catalogue_fingerprint(movrec._model_movie_ids(ids)) THEN
        RETURN NULL;
    END IF;
    RETURN format('model %s was trained on another catalogue (%s; the catalogue now: %s): its movie ids name '
                  'other movies now, or none',
                  model_id,
                  coalesce('etl run ' || (recorded ->> 'etl_run'),
                           CASE WHEN recorded IS NULL THEN 'unknown' ELSE 'before any etl run' END),
                  coalesce('etl run ' || now_run, 'no etl run'));
END $$;
COMMENT ON FUNCTION movrec._catalogue_mismatch(bigint) IS
    'NULL when a model''s movie ids still name the movies it was trained on (data_snapshot.catalogue), else why not';

CREATE OR REPLACE FUNCTION movrec._require_current_catalogue(model_id bigint, caller text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    why text := movrec._catalogue_mismatch(model_id);
BEGIN
    IF why IS NOT NULL THEN
        RAISE EXCEPTION '%: %', caller, why
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'train a model on the current data (SELECT movrec.train()), or deploy one trained on it '
                         '(SELECT movrec.deploy_best()); nothing was changed';
    END IF;
END $$;
COMMENT ON FUNCTION movrec._require_current_catalogue(bigint, text) IS
    'Raises 55000 when a model was trained on another catalogue than the current one (deploy, rollback, deploy_best)';

-- Deployment history as a stack: each row points at the deployment that was champion
-- before it.  A deploy pushes (previous = the latest row); a rollback moves to the
-- previous row's model and points at that row's own previous, so the next rollback goes
-- one step further back instead of toggling between the last two.
CREATE OR REPLACE FUNCTION movrec._last_deployment_id() RETURNS bigint
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT max(deployment_id) FROM model.deployments
$$;
COMMENT ON FUNCTION movrec._last_deployment_id() IS
    'The latest model.deployments row: the default of deployments.previous_deployment_id';
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'model.deployments'::regclass
                   AND attname = 'previous_deployment_id' AND NOT attisdropped) THEN
        ALTER TABLE model.deployments ADD COLUMN previous_deployment_id bigint, ADD COLUMN rolled_back_from bigint;
        -- history from before: each row followed the one before it
        UPDATE model.deployments d SET previous_deployment_id = p.prev
        FROM (SELECT deployment_id, lag(deployment_id) OVER (ORDER BY deployment_id) AS prev
              FROM model.deployments) p
        WHERE p.deployment_id = d.deployment_id;
    END IF;
END $$;
ALTER TABLE model.deployments ALTER COLUMN previous_deployment_id SET DEFAULT movrec._last_deployment_id();
COMMENT ON COLUMN model.deployments.previous_deployment_id IS
    'The deployment that was champion before this one (a deploy: the latest row; a rollback: the previous of the '
    'row it went back to); rollback() walks this chain, skipping retirements (NULL model_id)';
COMMENT ON COLUMN model.deployments.rolled_back_from IS
    'For a rollback: the deployment it undid; NULL for a deploy';

-- A plpgsql front door: a standby refuses before minutes of training, not at the first write.
CREATE OR REPLACE FUNCTION movrec.train(model text DEFAULT 'hybrid', options jsonb DEFAULT '{}', deploy boolean DEFAULT true)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
DECLARE
    msg text;
    state text;
    hint text;
    detail text;
BEGIN
    PERFORM movrec._require_primary('train()');
    IF movrec._distributed() THEN
        -- it reads every shard of watch_events, then writes the registry (a reference table):
        -- Citus allows that in one transaction over one connection per node
        PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);
    END IF;
    RETURN movrec._train(model, options, deploy);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, state = RETURNED_SQLSTATE, hint = PG_EXCEPTION_HINT,
        detail = PG_EXCEPTION_DETAIL;
    PERFORM movrec._reraise(msg, state, hint, detail);
END $$;
COMMENT ON FUNCTION movrec.train(text, jsonb, boolean) IS
    'Trains a model (hybrid, mf, functional, mlp) on watch_events with a seeded train/validation split, registers '
    'it, and deploys it unless deploy => false. options: epochs, dim, lr, reg, batch_size, seed, val_fraction, '
    'patience, device, ranking, negatives, field_dim, hidden, dropout, budget_s (seconds to choose the options not '
    'given on the validation split; default movrec.settings.train_budget_s). Returns model_id';

CREATE OR REPLACE FUNCTION movrec.deploy(model_id bigint) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
DECLARE
    msg text;
    state text;
    hint text;
    detail text;
BEGIN
    PERFORM movrec._require_primary('deploy()');
    IF NOT EXISTS (SELECT FROM model.registry r WHERE r.model_id = deploy.model_id) THEN
        RAISE EXCEPTION 'deploy(): model % is not in model.registry', coalesce(model_id::text, 'NULL')
            USING ERRCODE = 'no_data_found', HINT = 'SELECT model_id, kind, metrics FROM model.registry';
    END IF;
    PERFORM movrec._require_current_catalogue(model_id, 'deploy()');
    BEGIN
        RETURN movrec._deploy(model_id);
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, state = RETURNED_SQLSTATE, hint = PG_EXCEPTION_HINT,
            detail = PG_EXCEPTION_DETAIL;
        PERFORM movrec._reraise(msg, state, hint, detail);
    END;
END $$;
COMMENT ON FUNCTION movrec.deploy(bigint) IS
    'Makes a registered model the champion: publishes its movie and user vectors. Atomic; a corrupt checkpoint, or a '
    'model trained on another catalogue (SQLSTATE 55000), is refused';

-- rollback() and deploy_best() in three parts, so that the portable install's CLI (which
-- deploys with torch in its own process) chooses and records exactly as the full install does:
-- _rollback_plan and _best_model choose (and raise the errors), _deploy deploys,
-- _rollback_record writes the rollback into the history.
CREATE OR REPLACE FUNCTION movrec._rollback_plan(OUT model_id bigint, OUT undone_deployment bigint,
                                                 OUT undone_model bigint, OUT previous_deployment bigint)
LANGUAGE plpgsql VOLATILE SET search_path = movrec, model, public, pg_temp AS $$
DECLARE
    cur model.deployments;
    target model.deployments;
    prev bigint;
BEGIN
    -- one rollback at a time: two would both read the same champion and both step back once
    LOCK TABLE model.deployments IN SHARE ROW EXCLUSIVE MODE;
    SELECT * INTO cur FROM model.deployments ORDER BY deployment_id DESC LIMIT 1;
    prev := cur.previous_deployment_id;
    LOOP  -- ids only decrease along the chain, so this ends
        EXIT WHEN prev IS NULL;
        SELECT * INTO target FROM model.deployments d WHERE d.deployment_id = prev;
        EXIT WHEN target.model_id IS NOT NULL AND target.model_id IS DISTINCT FROM cur.model_id;
        prev := target.previous_deployment_id;  -- a retirement, or the champion itself again
    END LOOP;
    IF prev IS NULL THEN
        RAISE EXCEPTION 'rollback(): no earlier champion to go back to' USING ERRCODE = 'no_data_found',
            HINT = 'SELECT * FROM model.deployments ORDER BY deployment_id';
    END IF;
    PERFORM movrec._require_current_catalogue(target.model_id, 'rollback()');
    model_id := target.model_id;
    undone_deployment := cur.deployment_id;
    undone_model := cur.model_id;
    previous_deployment := target.previous_deployment_id;
END $$;
COMMENT ON FUNCTION movrec._rollback_plan() IS
    'rollback()''s choice: the model one step back through the deployment history (retirements skipped), the '
    'deployment it undoes, and the previous of the row it goes back to; takes the deployments lock; raises P0002 '
    'when there is none, 55000 for a model trained on another catalogue';

CREATE OR REPLACE FUNCTION movrec._rollback_record(undone_deployment bigint, undone_model bigint,
                                                   previous_deployment bigint) RETURNS void
LANGUAGE sql VOLATILE SET search_path = movrec, model, public, pg_temp AS $$
    UPDATE model.deployments
    SET reason = format('rollback from %s', coalesce(undone_model::text, 'none')),
        previous_deployment_id = previous_deployment, rolled_back_from = undone_deployment
    WHERE deployment_id = (SELECT max(deployment_id) FROM model.deployments);
$$;
COMMENT ON FUNCTION movrec._rollback_record(bigint, bigint, bigint) IS
    'After rollback()''s deploy: marks the newest deployment as the rollback it is (reason, rolled_back_from) and '
    'points it at the previous of the row it went back to, so that the next rollback goes further back';

CREATE OR REPLACE FUNCTION movrec.rollback() RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
DECLARE
    plan record;
BEGIN
    PERFORM movrec._require_primary('rollback()');
    SELECT * INTO plan FROM movrec._rollback_plan();
    PERFORM movrec._deploy(plan.model_id);
    PERFORM movrec._rollback_record(plan.undone_deployment, plan.undone_model, plan.previous_deployment);
    RETURN plan.model_id;
END $$;
COMMENT ON FUNCTION movrec.rollback() IS
    'Goes one step back through the deployment history (each call further back; retirements skipped) and returns '
    'the model_id it deployed; refuses (55000) a model trained on another catalogue';

CREATE OR REPLACE FUNCTION movrec._best_model(metric text) RETURNS bigint
LANGUAGE plpgsql STABLE SET search_path = movrec, model, public, pg_temp AS $$
DECLARE
    candidate bigint;
    other_catalogue integer := 0;
    higher_is_better boolean := metric LIKE '%ndcg%' OR metric LIKE '%precision%' OR metric LIKE '%recall%';
BEGIN
    -- best first; only models trained on the current catalogue compete
    FOR candidate IN
        SELECT r.model_id FROM model.registry r
        WHERE r.kind <> 'mlp' AND r.dim = 100 AND (r.metrics ->> metric) IS NOT NULL
        ORDER BY CASE WHEN higher_is_better THEN -(r.metrics ->> metric)::float8
                      ELSE (r.metrics ->> metric)::float8 END,
                 r.model_id DESC
    LOOP
        IF movrec._catalogue_mismatch(candidate) IS NULL THEN
            RETURN candidate;
        END IF;
        other_catalogue := other_catalogue + 1;
    END LOOP;
    IF other_catalogue > 0 THEN
        RAISE EXCEPTION 'deploy_best(): the % model(s) with the metric % were trained on another catalogue',
            other_catalogue, metric USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'train a model on the current data: SELECT movrec.train()';
    END IF;
    RAISE EXCEPTION 'deploy_best(): no deployable model has the metric %', metric USING ERRCODE = 'no_data_found',
        HINT = 'metrics are keys of model.registry.metrics, e.g. val_rmse, val_ndcg@10';
END $$;
COMMENT ON FUNCTION movrec._best_model(text) IS
    'deploy_best()''s choice: the registered model with the best value of a metric (lowest for errors, highest for '
    'ndcg/precision/recall) among those trained on the current catalogue; raises 55000 or P0002 when there is none';

CREATE OR REPLACE FUNCTION movrec.deploy_best(metric text DEFAULT 'val_rmse') RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
BEGIN
    PERFORM movrec._require_primary('deploy_best()');
    RETURN movrec.deploy(movrec._best_model(metric));
END $$;
COMMENT ON FUNCTION movrec.deploy_best(text) IS
    'Deploys the registered model with the best value of a metric (lowest for errors, highest for ndcg/precision/recall) '
    'among the models trained on the current catalogue; 55000 when there is none';

-- The table is read as the owner: the session's own user must be allowed to read it, or
-- evaluate() would be a way around the table's privileges.
CREATE OR REPLACE FUNCTION movrec.evaluate(model_id bigint, test_ratings regclass DEFAULT NULL)
RETURNS TABLE (metric text, value float8)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
BEGIN
    PERFORM movrec._require_primary('evaluate()');  -- it stores the metrics in the registry
    IF test_ratings IS NOT NULL AND NOT has_table_privilege(session_user, test_ratings, 'SELECT') THEN
        RAISE EXCEPTION 'evaluate(): permission denied for table %', test_ratings
            USING ERRCODE = 'insufficient_privilege',
                  HINT = format('evaluate() reads the test table as the user %s, who needs SELECT on it', session_user);
    END IF;
    RETURN QUERY SELECT * FROM movrec._evaluate(model_id, test_ratings);
END $$;
COMMENT ON FUNCTION movrec.evaluate(bigint, regclass) IS
    'RMSE, MAE, Precision@10, Recall@10/20, NDCG@10 of a model on a table of (user_id, movie_id, rating) that the '
    'session user may read, or on its own validation split; relevant = held-out ratings >= 4, candidates = movies '
    'unrated in training. Stored in the registry';
