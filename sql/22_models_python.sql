CREATE OR REPLACE FUNCTION movrec._train(model text, options jsonb, deploy boolean) RETURNS bigint
LANGUAGE plpython3u VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
GD.get("movrec") or plpy.execute("SELECT movrec._activate()")
from movrec import training; return training.train_from_sql(model, options, deploy)
$$;
COMMENT ON FUNCTION movrec._train(text, jsonb, boolean) IS 'Implementation of movrec.train(); call that instead';

CREATE OR REPLACE FUNCTION movrec._deploy(model_id bigint) RETURNS bigint
LANGUAGE plpython3u VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
GD.get("movrec") or plpy.execute("SELECT movrec._activate()")
from movrec import registry; return registry.deploy(model_id)
$$;
COMMENT ON FUNCTION movrec._deploy(bigint) IS 'Implementation of movrec.deploy(); call that instead';

CREATE OR REPLACE FUNCTION movrec._evaluate(model_id bigint, test_ratings regclass)
RETURNS TABLE (metric text, value float8)
LANGUAGE plpython3u VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
GD.get("movrec") or plpy.execute("SELECT movrec._activate()")
from movrec import backend, evaluation; return backend.sql_entry(evaluation.evaluate_from_sql)(model_id, test_ratings)
$$;
COMMENT ON FUNCTION movrec._evaluate(bigint, regclass) IS 'Implementation of movrec.evaluate(); call that instead';
