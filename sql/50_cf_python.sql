-- user_to_user: a plpgsql front door (plain errors with a SQLSTATE) over the numpy implementation.
CREATE OR REPLACE FUNCTION movrec._user_to_user(
    user_id integer, min_corr double precision, min_overlap integer, min_raters integer,
    shrinkage double precision, damping double precision, baseline boolean, store boolean)
RETURNS TABLE (rank integer, movie_id integer, title text, score real, neighbours integer)
LANGUAGE plpython3u VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
GD.get("movrec") or plpy.execute("SELECT movrec._activate()")
from movrec import cf; return cf.user_to_user_from_sql(user_id, min_corr, min_overlap, min_raters, shrinkage, damping, baseline, store)
$$;
COMMENT ON FUNCTION movrec._user_to_user(integer, double precision, integer, integer, double precision, double precision, boolean, boolean) IS
    'Implementation of movrec.user_to_user(); call that instead';

CREATE OR REPLACE FUNCTION movrec._cf_drain(max_jobs integer) RETURNS integer
LANGUAGE plpython3u VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
GD.get("movrec") or plpy.execute("SELECT movrec._activate()")
from movrec import cf; return cf.drain_from_sql(max_jobs)
$$;
COMMENT ON FUNCTION movrec._cf_drain(integer) IS 'Implementation of movrec.cf_drain(); call that instead';

CREATE OR REPLACE FUNCTION movrec.cf_cache_info() RETURNS jsonb
LANGUAGE plpython3u VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
GD.get("movrec") or plpy.execute("SELECT movrec._activate()")
import json; from movrec import cf; return json.dumps(cf.cache_info())
$$;
COMMENT ON FUNCTION movrec.cf_cache_info() IS
    'What this backend''s CF cache holds: users, movies, ratings, the overlay of reloaded users, loads, watermark';
