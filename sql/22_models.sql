-- Models: train, deploy, roll back, evaluate.

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

CREATE OR REPLACE FUNCTION movrec._evaluate(model_id bigint, test_ratings regclass)
RETURNS TABLE (metric text, value float8)
LANGUAGE plpython3u VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
GD.get("movrec") or plpy.execute("SELECT movrec._activate()")
from movrec import backend, evaluation; return backend.sql_entry(evaluation.evaluate_from_sql)(model_id, test_ratings)
$$;
COMMENT ON FUNCTION movrec._evaluate(bigint, regclass) IS 'Implementation of movrec.evaluate(); call that instead';

-- The table is read as the owner: the session's own user must be allowed to read it, or
-- evaluate() would be a way around the table's privileges.
CREATE OR REPLACE FUNCTION movrec.evaluate(model_id bigint, test_ratings regclass DEFAULT NULL)
RETURNS TABLE (metric text, value float8)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
BEGIN
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
