-- Serving extras of the portable install: explain(), the stored top 150 and its queue's drain,
-- in plpgsql (tables, triggers and front doors: sql/60_serving.sql).  Embedding new movies
-- runs the champion's movie sub-network (torch): a CLI job here.

CREATE OR REPLACE FUNCTION movrec._explain(user_id integer, movie_id integer, k integer)
RETURNS TABLE (rated_movie_id integer, rated_title text, rating real, similarity real, contribution real,
               reason text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
#variable_conflict use_column
DECLARE
    champ bigint := (SELECT d.model_id FROM model.deployments d ORDER BY d.deployment_id DESC LIMIT 1);
    mu double precision;
    cand vector;
    cand_title text;
    baseline double precision;
BEGIN
    SELECT r.global_mean INTO mu FROM model.registry r WHERE r.model_id = champ;
    SELECT a.embedding INTO cand FROM model.movie_latent_attributes a
    WHERE a.movie_id = _explain.movie_id AND a.model_id = champ;
    IF cand IS NULL THEN
        RAISE EXCEPTION 'movie % is not known to model %', _explain.movie_id, champ USING ERRCODE = 'no_data_found';
    END IF;
    cand_title := coalesce((SELECT m.title FROM movrec.movies m WHERE m.movie_id = _explain.movie_id),
                           'movie ' || _explain.movie_id);
    -- the user's mean rating damped toward the global mean: (sum + 5 mu) / (n + 5)
    SELECT (sum(w.rating::float8) + 5 * mu) / (count(*) + 5) INTO baseline
    FROM movrec.watch_events w JOIN movrec.movies m ON m.movie_id = w.movie_id
    WHERE w.user_id = _explain.user_id;
    RETURN QUERY
        SELECT e.movie_id, e.title, e.rating::real, e.sim::real, e.contrib::real,
               format('You rated %s %s (your average is about %s); it is %s %s (similarity %s)',
                      e.title, to_char(e.rating, 'FM990.0'), to_char(baseline, 'FM990.0'),
                      CASE WHEN e.sim >= 0.5 THEN 'close to' WHEN e.sim >= 0.2 THEN 'somewhat like'
                           WHEN e.sim >= 0 THEN 'a little like' WHEN e.sim > -0.2 THEN 'a little unlike'
                           ELSE 'unlike' END,
                      cand_title, to_char(e.sim, 'FM990.00'))
        FROM (SELECT w.movie_id, m.title, w.rating::float8 AS rating,
                     coalesce(1 - (a.embedding <=> cand), 0) AS sim,
                     coalesce(1 - (a.embedding <=> cand), 0) * (w.rating - baseline) AS contrib
              FROM movrec.watch_events w JOIN movrec.movies m ON m.movie_id = w.movie_id
              JOIN model.movie_latent_attributes a ON a.movie_id = w.movie_id AND a.model_id = champ
              WHERE w.user_id = _explain.user_id AND w.movie_id <> _explain.movie_id) e
        WHERE e.contrib > 0
        ORDER BY e.contrib DESC, e.movie_id
        LIMIT k;
END $$;
COMMENT ON FUNCTION movrec._explain(integer, integer, integer) IS
    'Implementation of movrec.explain() in the portable install; call that instead';

CREATE OR REPLACE FUNCTION movrec.refresh_recommendations_batch(user_ids integer[]) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
DECLARE
    champ bigint := (SELECT d.model_id FROM model.deployments d ORDER BY d.deployment_id DESC LIMIT 1);
    min_pred double precision := coalesce(nullif(current_setting('movrec.min_predicted_rating', true), '')::float8, 3);
    ids integer[];
    u record;
    n integer := 0;
    written integer;
    -- a hybrid champion with item-item weights: recommend()'s order, ranking + the rated movies' weights
    with_weights boolean := EXISTS (SELECT FROM model.registry g WHERE g.model_id = champ AND g.serving_ranking IS NOT NULL)
                         AND EXISTS (SELECT FROM model.movie_neighbours x WHERE x.model_id = champ);
BEGIN
    IF user_ids IS NULL THEN
        RAISE EXCEPTION 'user_ids must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF array_ndims(user_ids) > 1 THEN
        RAISE EXCEPTION 'user_ids must be a one-dimensional array' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF array_position(user_ids, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'user_ids must not contain NULLs (element %)', array_position(user_ids, NULL)
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF cardinality(user_ids) > 4096 THEN  -- movrec.serving.refresh.MAX_BATCH: one lock each
        RAISE EXCEPTION 'user_ids: at most 4096 users a call (one lock each), got %', cardinality(user_ids)
            USING ERRCODE = 'invalid_parameter_value', HINT = 'call it in batches: movrec refresh --batch-size';
    END IF;
    ids := ARRAY(SELECT DISTINCT x FROM unnest(user_ids) x ORDER BY x);
    PERFORM pg_advisory_xact_lock(28022, x) FROM unnest(ids) x;  -- movrec.locks.REFRESH, per user
    DELETE FROM model.model_recommendation r WHERE r.user_id = ANY (ids);
    IF champ IS NULL THEN
        RETURN 0;
    END IF;
    -- a user without a vector of the champion who rated gets the default vector's list
    FOR u IN
        SELECT t.id, (coalesce(a.embedding::real[], g.default_embedding) || 1::real)::vector AS q,
               g.global_mean + coalesce(a.bias, g.default_bias) AS base, g.serving_ranking IS NOT NULL AS has_ranking,
               CASE WHEN s.recommend_search = 'hnsw' THEN s.hnsw_ef_search END AS hnsw_ef,
               ARRAY(SELECT w.movie_id FROM movrec.watch_events w WHERE w.user_id = t.id) AS seen
        FROM unnest(ids) AS t (id)
        CROSS JOIN model.registry g CROSS JOIN movrec.settings s
        LEFT JOIN model.user_latent_attributes a ON a.user_id = t.id AND a.model_id = champ
        WHERE g.model_id = champ
          AND (a.user_id IS NOT NULL OR EXISTS (SELECT FROM movrec.watch_events w WHERE w.user_id = t.id))
    LOOP
        INSERT INTO model.model_recommendation (user_id, rank, movie_id, score, predicted_rating, model_id, computed_at)
        SELECT u.id, row_number() OVER (), x.movie_id, x.score, x.predicted_rating, champ, clock_timestamp()
        FROM (SELECT * FROM movrec._recommend_model(champ, u.q, u.base, u.has_ranking, u.hnsw_ef, 150, u.seen, NULL,
                                                    NULL, NULL, min_pred)
              WHERE NOT with_weights
              UNION ALL
              SELECT * FROM movrec._recommend_item_item(champ, u.q, u.base, 150, u.seen, u.seen, NULL, NULL, NULL,
                                                        min_pred)
              WHERE with_weights) x;
        GET DIAGNOSTICS written = ROW_COUNT;
        n := n + written;
    END LOOP;
    RETURN n;
END $$;
COMMENT ON FUNCTION movrec.refresh_recommendations_batch(integer[]) IS
    'Replaces these users'' rows of model.model_recommendation with the champion''s top 150 (as recommend() ranks '
    'them, 3-star filter included) in the caller''s transaction; returns rows written (portable install)';

CREATE OR REPLACE FUNCTION movrec.embed_new_movies(max_movies integer DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
BEGIN
    PERFORM movrec._needs_cli('embed_new_movies()', 'movrec embed');
    RETURN NULL;
END $$;
COMMENT ON FUNCTION movrec.embed_new_movies(integer) IS
    'Portable install: embedding new movies runs the champion''s sub-network (torch) in the CLI; raises 0A000';

-- The refresh queue's drain, as movrec.jobs.drain does it: one due job at a time, FOR UPDATE
-- SKIP LOCKED, each in a subtransaction; a job is deleted with its result unless the user's
-- vector row changed meanwhile (a rating in flight), else kept with its error and a backoff.
CREATE OR REPLACE FUNCTION movrec._serving_drain(max_jobs integer) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
DECLARE
    attempted integer[] := '{}';
    uid integer;
    version text;
    msg text;
BEGIN
    WHILE cardinality(attempted) < max_jobs LOOP
        SELECT q.user_id, (SELECT s.xmin::text FROM model.user_latent_attributes s WHERE s.user_id = q.user_id)
        INTO uid, version
        FROM model.refresh_queue q
        WHERE q.not_before <= clock_timestamp() AND q.user_id <> ALL (attempted)
        ORDER BY q.enqueued_at, q.user_id
        LIMIT 1
        FOR UPDATE OF q SKIP LOCKED;
        EXIT WHEN uid IS NULL;
        attempted := attempted || uid;
        BEGIN
            PERFORM movrec.refresh_recommendations_batch(ARRAY[uid]);
            WITH cur AS (
                SELECT s.xmin::text AS v FROM model.user_latent_attributes s WHERE s.user_id = uid FOR SHARE SKIP LOCKED
            )
            DELETE FROM model.refresh_queue q
            WHERE q.user_id = uid
              AND (version IS NULL AND NOT EXISTS (SELECT FROM model.user_latent_attributes s WHERE s.user_id = uid)
                   OR (SELECT v FROM cur) = version);
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
            IF SQLSTATE LIKE '57%' THEN
                RAISE;  -- a cancel or shutdown ends the whole call
            END IF;
            UPDATE model.refresh_queue
            SET attempts = attempts + 1, last_error = left(msg, 2000), last_attempt_at = clock_timestamp(),
                not_before = clock_timestamp() + least(3600, 2 ^ attempts) * interval '1 second'
            WHERE user_id = uid;
            RAISE WARNING 'refresh job for user % failed: %', uid, msg;
        END;
        uid := NULL;
    END LOOP;
    RETURN cardinality(attempted);
END $$;
COMMENT ON FUNCTION movrec._serving_drain(integer) IS
    'Implementation of movrec.serving_drain() in the portable install; call that instead';
