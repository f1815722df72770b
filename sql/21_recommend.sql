-- The application's calls: recommend(), predict(), rate().

-- recommend() and predict() are plpgsql front doors: they check arguments and raise plain
-- errors, then call the implementation (_recommend, _predict, _predict_many): numpy in
-- 21_recommend_python.sql, plpgsql and pgvector in portable/21_recommend_portable.sql.

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
    IF genres IS NOT NULL AND (cardinality(genres) = 0 OR array_ndims(genres) > 1
                               OR array_position(genres, NULL) IS NOT NULL) THEN
        RAISE EXCEPTION 'recommend(): genres must be NULL (any genre) or a non-empty array without NULLs, of one dimension'
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
    SELECT movrec._require_primary('rate()');
    INSERT INTO movrec.watch_events AS w (user_id, movie_id, rating, rated_at)
    VALUES (rate.user_id, rate.movie_id, rate.rating, now())
    ON CONFLICT (user_id, movie_id) DO UPDATE
    SET rating = excluded.rating, rated_at = excluded.rated_at, etl_run = NULL
    RETURNING w.*;
$$;
COMMENT ON FUNCTION movrec.rate(integer, integer, real) IS
    'Records (or updates) a rating; the trigger moves the user''s vector toward it';

CREATE OR REPLACE FUNCTION movrec.predict(user_ids integer[], movie_ids integer[])
RETURNS TABLE (user_id integer, movie_id integer, predicted_rating real)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
BEGIN
    IF user_ids IS NULL OR movie_ids IS NULL OR cardinality(user_ids) <> cardinality(movie_ids) THEN
        RAISE EXCEPTION 'predict(): user_ids and movie_ids must be arrays of one length'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Pairs are matched by position: a 2-D array has no one order, and a NULL id names no pair.
    IF array_ndims(user_ids) > 1 OR array_ndims(movie_ids) > 1 THEN
        RAISE EXCEPTION 'predict(): user_ids and movie_ids must be one-dimensional arrays, got % and % dimensions',
            array_ndims(user_ids), array_ndims(movie_ids) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF array_position(user_ids, NULL) IS NOT NULL OR array_position(movie_ids, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'predict(): user_ids and movie_ids must not contain NULLs (user_ids[%], movie_ids[%])',
            coalesce(array_position(user_ids, NULL)::text, '-'), coalesce(array_position(movie_ids, NULL)::text, '-')
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF cardinality(user_ids) > 1000000 THEN
        RAISE EXCEPTION 'predict(): at most 1000000 pairs a call, got %', cardinality(user_ids)
            USING ERRCODE = 'invalid_parameter_value', HINT = 'call it in batches';
    END IF;
    IF NOT EXISTS (SELECT FROM model.champion) THEN
        RAISE EXCEPTION 'predict(): no model is deployed' USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    RETURN QUERY SELECT * FROM movrec._predict_many(user_ids, movie_ids);
END $$;
COMMENT ON FUNCTION movrec.predict(integer[], integer[]) IS
    'Batch scoring: predicted rating for each (user_ids[i], movie_ids[i]) pair; NULL for a movie the model does not know. '
    'One-dimensional arrays of one length, at most 1000000 pairs, no NULL elements (SQLSTATE 22004; 22023 for the others)';
