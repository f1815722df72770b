-- Functions.  PL/Python bodies stay one or two lines that call into the movrec
-- package (plpython/movrec), so the logic is testable outside PostgreSQL.  The
-- first line of each body activates movrec once per backend (see _activate).
-- Untrusted-language functions are SECURITY DEFINER with a pinned search_path.

-- _activate: the only body with logic.  It must run before numpy is imported:
-- BLAS reads its thread count at load time, and default threads make backends
-- spin against each other (a numpy top-k fell from 2,180 to 300 tps).
CREATE OR REPLACE FUNCTION movrec._activate() RETURNS text
LANGUAGE plpython3u SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
import os, site, sys
setting = lambda name: plpy.execute(f"SELECT current_setting('{name}', true) AS v")[0]["v"]
threads = setting("movrec.threads") or "1"
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = threads
venv = setting("movrec.venv")
if venv:
    lib = os.path.join(venv, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}", "site-packages")
    if not os.path.isdir(lib):
        plpy.error(f"movrec.venv = {venv!r} has no {lib}",
                   hint="run `movrec install` from the venv, or ALTER DATABASE ... SET movrec.venv = '/path/to/venv'")
    if lib not in sys.path:
        site.addsitedir(lib)
try:
    import movrec.backend
except ImportError as e:
    plpy.error(f"cannot import movrec in this backend: {e}",
               hint="set movrec.venv to the virtualenv holding movrec (`movrec install` does), readable by the server's OS user")
GD["movrec"] = movrec.backend.activate(threads=int(threads))
return GD["movrec"]
$$;
COMMENT ON FUNCTION movrec._activate() IS
    'Loads movrec into this backend once: caps BLAS threads (movrec.threads), adds movrec.venv to sys.path';

-- recommend() and predict() are plpgsql front doors: they check arguments and
-- raise plain errors (no Python traceback), then call the numpy implementation.
-- recommend() had two arguments before 0.2; drop that signature (and its implementation)
-- so that the five-argument one below does not make calls ambiguous.
DROP FUNCTION IF EXISTS movrec.recommend(integer, integer);
DROP FUNCTION IF EXISTS movrec._recommend(integer, integer);

CREATE OR REPLACE FUNCTION movrec._recommend(user_id integer, k integer, genres text[], min_year integer,
                                             max_year integer)
RETURNS TABLE (movie_id integer, title text, score real, predicted_rating real, source text)
LANGUAGE plpython3u STABLE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
GD.get("movrec") or plpy.execute("SELECT movrec._activate()")
from movrec import serving; return serving.recommend(user_id, k, genres, min_year, max_year)
$$;
COMMENT ON FUNCTION movrec._recommend(integer, integer, text[], integer, integer) IS
    'Implementation of movrec.recommend(); call that instead';

CREATE OR REPLACE FUNCTION movrec.recommend(user_id integer, k integer DEFAULT 10, genres text[] DEFAULT NULL,
                                            min_year integer DEFAULT NULL, max_year integer DEFAULT NULL)
RETURNS TABLE (movie_id integer, title text, score real, predicted_rating real, source text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
DECLARE
    msg text;
    hint text;
BEGIN
    IF user_id IS NULL THEN
        RAISE EXCEPTION 'recommend(): user_id must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF k IS NULL OR k < 1 OR k > 10000 THEN
        RAISE EXCEPTION 'recommend(): k must be between 1 and 10000, got %', coalesce(k::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF genres IS NOT NULL AND (cardinality(genres) = 0 OR array_position(genres, NULL) IS NOT NULL) THEN
        RAISE EXCEPTION 'recommend(): genres must be NULL (any genre) or a non-empty array without NULLs'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF min_year > max_year THEN
        RAISE EXCEPTION 'recommend(): min_year % is after max_year %', min_year, max_year
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    BEGIN
        RETURN QUERY SELECT * FROM movrec._recommend(user_id, k, genres, min_year, max_year);
    EXCEPTION WHEN invalid_parameter_value THEN  -- an unknown genre: re-raised without the Python traceback
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
        RAISE EXCEPTION 'recommend(): %', regexp_replace(msg, '^plpy\.Error: ', '')
            USING ERRCODE = 'invalid_parameter_value',
            HINT = coalesce(hint, 'see COMMENT ON FUNCTION movrec.recommend');
    END;
END $$;
COMMENT ON FUNCTION movrec.recommend(integer, integer, text[], integer, integer) IS
    'Top-k unseen movies for a user, best first, predicted >= movrec.min_predicted_rating (3) where the model knows '
    'the user. Filters: genres = the movie has ANY of them (case-insensitive; an unknown genre is an error), '
    'min_year/max_year inclusive (a movie without a year fails a year bound). source per row, in fallback order: '
    'model (the user''s vector), cf (model.user_recommendation), model (the default vector, for a rater without a '
    'vector), popular (damped mean rating, model.movie_rating_stats). Read-only: runs on a hot standby';

CREATE OR REPLACE FUNCTION movrec._predict(user_id integer, movie_id integer) RETURNS real
LANGUAGE plpython3u STABLE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
GD.get("movrec") or plpy.execute("SELECT movrec._activate()")
from movrec import serving; return serving.predict(user_id, movie_id)
$$;
COMMENT ON FUNCTION movrec._predict(integer, integer) IS 'Implementation of movrec.predict(); call that instead';

CREATE OR REPLACE FUNCTION movrec.predict(user_id integer, movie_id integer) RETURNS real
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
BEGIN
    IF user_id IS NULL OR movie_id IS NULL THEN
        RAISE EXCEPTION 'predict(): user_id and movie_id must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT EXISTS (SELECT FROM model.deployments) THEN
        RAISE EXCEPTION 'predict(): no model is deployed' USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'train one: SELECT movrec.train(''mf'') or `movrec train`';
    END IF;
    IF NOT EXISTS (SELECT FROM model.movie_latent_attributes m WHERE m.movie_id = predict.movie_id) THEN
        RAISE EXCEPTION 'predict(): movie % is not known to the deployed model', movie_id
            USING ERRCODE = 'no_data_found', HINT = 'SELECT movie_id FROM model.movie_latent_attributes';
    END IF;
    RETURN movrec._predict(user_id, movie_id);
END $$;
COMMENT ON FUNCTION movrec.predict(integer, integer) IS
    'The champion''s predicted rating (clipped to 0.5..5) of a movie by a user; users without a vector get the default vector';

CREATE OR REPLACE FUNCTION movrec.rate(user_id integer, movie_id integer, rating real)
RETURNS movrec.watch_events
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
    INSERT INTO movrec.watch_events AS w (user_id, movie_id, rating, rated_at)
    VALUES (rate.user_id, rate.movie_id, rate.rating, now())
    ON CONFLICT (user_id, movie_id) DO UPDATE
    SET rating = excluded.rating, rated_at = excluded.rated_at, etl_run = NULL
    RETURNING w.*;
$$;
COMMENT ON FUNCTION movrec.rate(integer, integer, real) IS
    'Records (or updates) a rating; the trigger moves the user''s vector toward it';

CREATE OR REPLACE FUNCTION movrec.train(model text DEFAULT 'hybrid', options jsonb DEFAULT '{}', deploy boolean DEFAULT true)
RETURNS bigint
LANGUAGE plpython3u VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
GD.get("movrec") or plpy.execute("SELECT movrec._activate()")
from movrec import training; return training.train_from_sql(model, options, deploy)
$$;
COMMENT ON FUNCTION movrec.train(text, jsonb, boolean) IS
    'Trains a model (hybrid, mf, functional, mlp) on watch_events with a seeded train/validation split, registers '
    'it, and deploys it unless deploy => false. options: epochs, dim, lr, reg, batch_size, seed, val_fraction, '
    'patience, device, ranking, negatives, field_dim, hidden, dropout. Returns model_id';

CREATE OR REPLACE FUNCTION movrec._deploy(model_id bigint) RETURNS bigint
LANGUAGE plpython3u VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
GD.get("movrec") or plpy.execute("SELECT movrec._activate()")
from movrec import registry; return registry.deploy(model_id)
$$;
COMMENT ON FUNCTION movrec._deploy(bigint) IS 'Implementation of movrec.deploy(); call that instead';

CREATE OR REPLACE FUNCTION movrec.deploy(model_id bigint) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM model.registry r WHERE r.model_id = deploy.model_id) THEN
        RAISE EXCEPTION 'deploy(): model % is not in model.registry', coalesce(model_id::text, 'NULL')
            USING ERRCODE = 'no_data_found', HINT = 'SELECT model_id, kind, metrics FROM model.registry';
    END IF;
    RETURN movrec._deploy(model_id);
END $$;
COMMENT ON FUNCTION movrec.deploy(bigint) IS
    'Makes a registered model the champion: publishes its movie and user vectors. Atomic; a corrupt checkpoint is refused';

CREATE OR REPLACE FUNCTION movrec._predict_many(user_ids integer[], movie_ids integer[])
RETURNS TABLE (user_id integer, movie_id integer, predicted_rating real)
LANGUAGE plpython3u STABLE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
GD.get("movrec") or plpy.execute("SELECT movrec._activate()")
from movrec import serving; return serving.predict_many(user_ids, movie_ids)
$$;
COMMENT ON FUNCTION movrec._predict_many(integer[], integer[]) IS 'Implementation of movrec.predict(int[], int[])';

CREATE OR REPLACE FUNCTION movrec.predict(user_ids integer[], movie_ids integer[])
RETURNS TABLE (user_id integer, movie_id integer, predicted_rating real)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
BEGIN
    IF user_ids IS NULL OR movie_ids IS NULL OR cardinality(user_ids) <> cardinality(movie_ids) THEN
        RAISE EXCEPTION 'predict(): user_ids and movie_ids must be arrays of one length'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT EXISTS (SELECT FROM model.champion) THEN
        RAISE EXCEPTION 'predict(): no model is deployed' USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    RETURN QUERY SELECT * FROM movrec._predict_many(user_ids, movie_ids);
END $$;
COMMENT ON FUNCTION movrec.predict(integer[], integer[]) IS
    'Batch scoring: predicted rating for each (user_ids[i], movie_ids[i]) pair; NULL for a movie the model does not know';

CREATE OR REPLACE FUNCTION movrec.rollback() RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
DECLARE
    current bigint := (SELECT model_id FROM model.deployments ORDER BY deployment_id DESC LIMIT 1);
    previous bigint := (SELECT model_id FROM model.deployments
                        WHERE model_id IS NOT NULL AND model_id IS DISTINCT FROM current
                          AND deployment_id < (SELECT max(deployment_id) FROM model.deployments)
                        ORDER BY deployment_id DESC LIMIT 1);
BEGIN
    IF previous IS NULL THEN
        RAISE EXCEPTION 'rollback(): no earlier champion to go back to' USING ERRCODE = 'no_data_found';
    END IF;
    PERFORM movrec._deploy(previous);
    UPDATE model.deployments SET reason = format('rollback from %s', coalesce(current::text, 'none'))
    WHERE deployment_id = (SELECT max(deployment_id) FROM model.deployments);
    RETURN previous;
END $$;
COMMENT ON FUNCTION movrec.rollback() IS 'Makes the previous champion the champion again; returns its model_id';

CREATE OR REPLACE FUNCTION movrec.deploy_best(metric text DEFAULT 'val_rmse') RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
DECLARE
    best bigint;
    higher_is_better boolean := metric LIKE '%ndcg%' OR metric LIKE '%precision%' OR metric LIKE '%recall%';
BEGIN
    SELECT model_id INTO best FROM model.registry
    WHERE kind <> 'mlp' AND dim = 100 AND (metrics ->> metric) IS NOT NULL
    ORDER BY CASE WHEN higher_is_better THEN -(metrics ->> metric)::float8 ELSE (metrics ->> metric)::float8 END,
             model_id DESC
    LIMIT 1;
    IF best IS NULL THEN
        RAISE EXCEPTION 'deploy_best(): no deployable model has the metric %', metric USING ERRCODE = 'no_data_found',
            HINT = 'metrics are keys of model.registry.metrics, e.g. val_rmse, val_ndcg@10';
    END IF;
    RETURN movrec.deploy(best);
END $$;
COMMENT ON FUNCTION movrec.deploy_best(text) IS
    'Deploys the registered model with the best value of a metric (lowest for errors, highest for ndcg/precision/recall)';

CREATE OR REPLACE FUNCTION movrec.evaluate(model_id bigint, test_ratings regclass DEFAULT NULL)
RETURNS TABLE (metric text, value float8)
LANGUAGE plpython3u VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
GD.get("movrec") or plpy.execute("SELECT movrec._activate()")
from movrec import backend, evaluation; return backend.sql_entry(evaluation.evaluate_from_sql)(model_id, test_ratings)
$$;
COMMENT ON FUNCTION movrec.evaluate(bigint, regclass) IS
    'RMSE, MAE, Precision@10, Recall@10/20, NDCG@10 of a model on a table of (user_id, movie_id, rating), or on its '
    'own validation split; relevant = held-out ratings >= 4, candidates = movies unrated in training. Stored in the registry';

CREATE OR REPLACE FUNCTION movrec.doctor()
RETURNS TABLE (check_name text, ok boolean, detail text, fix text)
LANGUAGE plpython3u VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
GD.get("movrec") or plpy.execute("SELECT movrec._activate()")
from movrec import doctor; return doctor.checks()
$$;
COMMENT ON FUNCTION movrec.doctor() IS
    'Checks this backend: Python and package versions, torch/CUDA, pgvector, thread caps, venv; each problem with its fix';

