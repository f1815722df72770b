-- The numpy implementations of recommend() and predict() (front doors: 21_recommend.sql).

-- _recommend() joins the numpy rows with their titles in the executor, an index probe per row,
-- where a lookup from Python cost a statement and a dict per call.  plpgsql, not an inlined SQL
-- function: Citus refuses a parameterised SQL function that reads a distributed or reference
-- table (recommend() runs on the user's worker there).  The inner join leaves out movies
-- deleted from the catalogue since training, as the Python lookup did.
CREATE OR REPLACE FUNCTION movrec._recommend_numpy(user_id integer, k integer, genres text[], min_year integer,
                                                   max_year integer)
RETURNS TABLE (movie_id integer, score real, predicted_rating real, source text)
LANGUAGE plpython3u STABLE SECURITY DEFINER ROWS 10 SET search_path = movrec, model, public, pg_temp AS $$
GD.get("movrec") or plpy.execute("SELECT movrec._activate()")
from movrec import serving; return serving.recommend_rows(user_id, k, genres, min_year, max_year)
$$;
COMMENT ON FUNCTION movrec._recommend_numpy(integer, integer, text[], integer, integer) IS
    'The rows of movrec.recommend() without titles, best first (numpy); movrec._recommend() adds the titles';

CREATE OR REPLACE FUNCTION movrec._recommend(user_id integer, k integer, genres text[], min_year integer,
                                             max_year integer)
RETURNS TABLE (movie_id integer, title text, score real, predicted_rating real, source text)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
    SELECT r.movie_id, m.title, r.score, r.predicted_rating, r.source
    FROM movrec._recommend_numpy(_recommend.user_id, _recommend.k, _recommend.genres, _recommend.min_year,
                                 _recommend.max_year) WITH ORDINALITY AS r
    JOIN movrec.movies m ON m.movie_id = r.movie_id
    ORDER BY r.ordinality;
END
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
