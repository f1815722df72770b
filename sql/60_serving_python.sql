CREATE OR REPLACE FUNCTION movrec._explain(user_id integer, movie_id integer, k integer)
RETURNS TABLE (rated_movie_id integer, rated_title text, rating real, similarity real, contribution real,
               reason text)
LANGUAGE plpython3u STABLE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
GD.get("movrec") or plpy.execute("SELECT movrec._activate()")
from movrec import serving; return serving.explain(user_id, movie_id, k)
$$;
COMMENT ON FUNCTION movrec._explain(integer, integer, integer) IS 'Implementation of movrec.explain(); call that instead';

CREATE OR REPLACE FUNCTION movrec.refresh_recommendations_batch(user_ids integer[]) RETURNS integer
LANGUAGE plpython3u VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
GD.get("movrec") or plpy.execute("SELECT movrec._activate()")
from movrec import serving; return serving.refresh_from_sql(user_ids)
$$;
COMMENT ON FUNCTION movrec.refresh_recommendations_batch(integer[]) IS
    'Replaces these users'' rows of model.model_recommendation with the champion''s top 150 (as recommend() ranks '
    'them, 3-star filter included) in the caller''s transaction; returns rows written. `movrec refresh` calls it in batches';

CREATE OR REPLACE FUNCTION movrec.embed_new_movies(max_movies integer DEFAULT NULL) RETURNS integer
LANGUAGE plpython3u VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
GD.get("movrec") or plpy.execute("SELECT movrec._activate()")
from movrec import coldstart; return coldstart.embed_new_movies(max_movies)
$$;
COMMENT ON FUNCTION movrec.embed_new_movies(integer) IS
    'A job (imports torch): movies in movrec.movies without a vector of the champion get one from its movie '
    'sub-network and their content (hybrid/functional champions; an MF champion cannot, a NOTICE says so). '
    'Written to model.movie_latent_extra and model.movie_latent_attributes; recommend() sees them at once. '
    'Returns movies embedded';

CREATE OR REPLACE FUNCTION movrec._serving_drain(max_jobs integer) RETURNS integer
LANGUAGE plpython3u VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
GD.get("movrec") or plpy.execute("SELECT movrec._activate()")
from movrec import serving; return serving.drain_from_sql(max_jobs)
$$;
COMMENT ON FUNCTION movrec._serving_drain(integer) IS 'Implementation of movrec.serving_drain(); call that instead';
