-- The numpy implementations of recommend() and predict() (front doors: 21_recommend.sql).
CREATE OR REPLACE FUNCTION movrec._recommend(user_id integer, k integer, genres text[], min_year integer,
                                             max_year integer)
RETURNS TABLE (movie_id integer, title text, score real, predicted_rating real, source text)
LANGUAGE plpython3u STABLE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
GD.get("movrec") or plpy.execute("SELECT movrec._activate()")
from movrec import serving; return serving.recommend(user_id, k, genres, min_year, max_year)
$$;
COMMENT ON FUNCTION movrec._recommend(integer, integer, text[], integer, integer) IS
    'Implementation of movrec.recommend(); call that instead';

CREATE OR REPLACE FUNCTION movrec._predict(user_id integer, movie_id integer) RETURNS real
LANGUAGE plpython3u STABLE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
GD.get("movrec") or plpy.execute("SELECT movrec._activate()")
from movrec import serving; return serving.predict(user_id, movie_id)
$$;
COMMENT ON FUNCTION movrec._predict(integer, integer) IS 'Implementation of movrec.predict(); call that instead';

CREATE OR REPLACE FUNCTION movrec._predict_many(user_ids integer[], movie_ids integer[])
RETURNS TABLE (user_id integer, movie_id integer, predicted_rating real)
LANGUAGE plpython3u STABLE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
GD.get("movrec") or plpy.execute("SELECT movrec._activate()")
from movrec import serving; return serving.predict_many(user_ids, movie_ids)
$$;
COMMENT ON FUNCTION movrec._predict_many(integer[], integer[]) IS 'Implementation of movrec.predict(int[], int[])';
