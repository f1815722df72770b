-- Serving extras (issue 5): movies embedded after deploy, popularity statistics, the
-- precomputed-recommendation refresh and its queue, similar_movies(), explain().
-- Idempotent like every file here: `movrec install` reruns it.  Logic: plpython/movrec/
-- serving/ (recommend, explain, refresh, queue) and coldstart.py (new movies).

-- Movies embedded after deploy by the champion's movie sub-network (coldstart.py).
CREATE TABLE IF NOT EXISTS model.movie_latent_extra (
    model_id   bigint NOT NULL REFERENCES model.registry (model_id) ON DELETE CASCADE,
    movie_id   integer NOT NULL,
    embedding  real[] NOT NULL,
    bias       real NOT NULL,
    ranking    real[],
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_id, movie_id)
);
COMMENT ON TABLE model.movie_latent_extra IS
    'Movies added after a model was trained, embedded from their content by its movie sub-network '
    '(movrec.embed_new_movies()); serving appends the champion''s rows to its cached matrix';
COMMENT ON COLUMN model.movie_latent_extra.ranking IS
    '[ranking vector | prior] (dim + 1) from the ranking head; NULL for a model without one';

-- Per-movie rating statistics for the popularity fallback (never aggregated per call).
CREATE TABLE IF NOT EXISTS model.movie_rating_stats (
    movie_id     integer PRIMARY KEY,
    n_ratings    bigint NOT NULL,
    sum_ratings  float8 NOT NULL,
    refreshed_at timestamptz NOT NULL
);
COMMENT ON TABLE model.movie_rating_stats IS
    'Ratings per movie (count, sum) for recommend()''s popularity fallback, damped mean '
    '(sum + 10 * mu) / (n + 10); rewritten by movrec.refresh_movie_stats() (at every deploy, by `movrec refresh`)';
COMMENT ON COLUMN model.movie_rating_stats.refreshed_at IS
    'When the table was rewritten (the same on every row): backends key their cached ranking by it';

CREATE OR REPLACE FUNCTION movrec.refresh_movie_stats() RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
DECLARE
    version timestamptz := clock_timestamp();
    n bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(28022, 0);  -- one rewrite at a time (movrec.locks.REFRESH)
    DELETE FROM model.movie_rating_stats;
    INSERT INTO model.movie_rating_stats (movie_id, n_ratings, sum_ratings, refreshed_at)
    SELECT w.movie_id, count(*), sum(w.rating::float8), version FROM movrec.watch_events w GROUP BY w.movie_id;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;
COMMENT ON FUNCTION movrec.refresh_movie_stats() IS
    'Rewrites model.movie_rating_stats from watch_events (one aggregate: seconds at 20M ratings); returns movies. '
    'Runs at every deploy and in `movrec refresh`; schedule it (pg_cron) to follow new ratings';

CREATE OR REPLACE FUNCTION movrec.serving_on_deploy() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
BEGIN
    IF TG_RELID <> 'model.deployments'::regclass OR current_setting('application_name') = 'pg_restore' THEN
        IF NOT movrec._trigger_applies('movrec.serving_on_deploy()', TG_RELID, 'model.deployments') THEN
            RETURN NULL;  -- a restore replays rows whose effects the dump holds
        END IF;
    END IF;
    PERFORM movrec._follow_champion();
    RETURN NULL;
END $$;
COMMENT ON FUNCTION movrec.serving_on_deploy() IS
    'Trigger: a deploy (or rollback) republishes the champion''s embedded new movies (model.movie_latent_extra) '
    'into model.movie_latent_attributes and rewrites model.movie_rating_stats, in its transaction';

-- (On Citus deploy calls movrec._follow_champion() itself: 87_citus.sql.)
DO $citus$
BEGIN
    IF NOT movrec._distributed() THEN
        CREATE OR REPLACE TRIGGER movrec_serving_on_deploy
            AFTER INSERT ON model.deployments FOR EACH STATEMENT EXECUTE FUNCTION movrec.serving_on_deploy();
        COMMENT ON TRIGGER movrec_serving_on_deploy ON model.deployments IS
            'Serving follows the champion: its extra movies and fresh popularity statistics (movrec.serving_on_deploy)';
    END IF;
END $citus$;

-- Nearest movies by cosine distance.  Deploy rewrites the table; the index follows.
CREATE INDEX IF NOT EXISTS movie_latent_attributes_embedding_hnsw_idx
    ON model.movie_latent_attributes USING hnsw (embedding vector_cosine_ops);
COMMENT ON INDEX model.movie_latent_attributes_embedding_hnsw_idx IS
    'HNSW (cosine) over the champion''s movie vectors: movrec.similar_movies()';

-- recommend()'s companions -------------------------------------------------------------

CREATE OR REPLACE FUNCTION movrec.similar_movies(movie integer, k integer DEFAULT 10)
RETURNS TABLE (movie_id integer, title text, similarity real)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
DECLARE
    q vector;
BEGIN
    IF similar_movies.movie IS NULL THEN
        RAISE EXCEPTION 'similar_movies(): movie must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF k IS NULL OR k < 1 OR k > 1000 THEN
        RAISE EXCEPTION 'similar_movies(): k must be between 1 and 1000, got %', coalesce(k::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT a.embedding INTO q FROM model.movie_latent_attributes a WHERE a.movie_id = similar_movies.movie;
    IF q IS NULL THEN
        RAISE EXCEPTION 'similar_movies(): movie % is not known to the deployed model', similar_movies.movie
            USING ERRCODE = 'no_data_found', HINT = 'new movies get a vector from SELECT movrec.embed_new_movies()';
    END IF;
    IF k + 1 > 40 THEN  -- HNSW returns at most hnsw.ef_search rows (default 40)
        PERFORM set_config('hnsw.ef_search', least(k + 1, 1000)::text, true);
    END IF;
    RETURN QUERY
        SELECT n.movie_id, m.title, (1 - n.d)::real
        FROM (SELECT a.movie_id, a.embedding <=> q AS d FROM model.movie_latent_attributes a
              ORDER BY a.embedding <=> q LIMIT k + 1) n
        JOIN movrec.movies m ON m.movie_id = n.movie_id
        WHERE n.movie_id <> similar_movies.movie
        ORDER BY n.d, n.movie_id
        LIMIT k;
END $$;
COMMENT ON FUNCTION movrec.similar_movies(integer, integer) IS
    'The k movies nearest to a movie by cosine similarity of the champion''s movie vectors (HNSW, approximate), '
    'best first; similarity = 1 - cosine distance';

CREATE OR REPLACE FUNCTION movrec.explain(user_id integer, movie_id integer, k integer DEFAULT 3)
RETURNS TABLE (rated_movie_id integer, rated_title text, rating real, similarity real, contribution real,
               reason text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
BEGIN
    IF explain.user_id IS NULL OR explain.movie_id IS NULL THEN
        RAISE EXCEPTION 'explain(): user_id and movie_id must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF k IS NULL OR k < 1 OR k > 100 THEN
        RAISE EXCEPTION 'explain(): k must be between 1 and 100, got %', coalesce(k::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT EXISTS (SELECT FROM model.champion) THEN
        RAISE EXCEPTION 'explain(): no model is deployed' USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    RETURN QUERY SELECT * FROM movrec._explain(explain.user_id, explain.movie_id, k);
END $$;
COMMENT ON FUNCTION movrec.explain(integer, integer, integer) IS
    'Why a movie suits a user: the k rated movies contributing most, contribution = cosine(rated movie, movie) * '
    '(rating - the user''s mean damped toward the global mean, (sum + 5 mu) / (n + 5)); positive ones only, '
    'with a sentence ("You rated Heat 5.0 ...; it is close to The Departed ...")';

-- The precomputed list: model.model_recommendation --------------------------------------

-- (an integer[] overload of refresh_recommendations made calls with an untyped argument ambiguous)
DROP FUNCTION IF EXISTS movrec.refresh_recommendations(integer[]);

CREATE OR REPLACE FUNCTION movrec.refresh_recommendations(user_id integer) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
BEGIN
    -- plpgsql, not sql: the batch it calls is defined by a later file of either install
    PERFORM movrec._require_primary('refresh_recommendations()');
    RETURN movrec.refresh_recommendations_batch(ARRAY[user_id]);
END $$;
COMMENT ON FUNCTION movrec.refresh_recommendations(integer) IS
    'Replaces one user''s rows of model.model_recommendation (at most 150), atomically; returns rows written';

CREATE TABLE IF NOT EXISTS model.refresh_queue (
    user_id         integer PRIMARY KEY,
    enqueued_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    not_before      timestamptz NOT NULL DEFAULT '-infinity',
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    last_attempt_at timestamptz
);
COMMENT ON TABLE model.refresh_queue IS
    'Users whose model.model_recommendation rows are stale (they rated since), one row per user. '
    'movrec.serving_drain() claims rows FOR UPDATE SKIP LOCKED and deletes one with its result unless the '
    'user''s vector changed meanwhile; a failed job stays with attempts, last_error and a backoff';
CREATE INDEX IF NOT EXISTS refresh_queue_enqueued_at_idx ON model.refresh_queue (enqueued_at, user_id);

-- The raters go into the queue from the rating-statistics triggers (movrec.cf_on_ratings_changed,
-- 50_cf.sql), in the statement that counts their ratings: one trigger per rating statement,
-- not one per concern.

CREATE OR REPLACE FUNCTION movrec.serving_drain(max_jobs integer DEFAULT 100) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
BEGIN
    PERFORM movrec._require_primary('serving_drain()');
    IF max_jobs IS NULL OR max_jobs < 1 OR max_jobs > 4096 THEN  -- 4096: movrec.jobs.MAX_JOBS
        RAISE EXCEPTION 'serving_drain(): max_jobs must be between 1 and 4096, got %', coalesce(max_jobs::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT FROM model.champion c WHERE c.kind IN ('hybrid', 'functional'))
       AND EXISTS (SELECT FROM movrec.movies m
                   WHERE NOT EXISTS (SELECT FROM model.movie_latent_attributes a WHERE a.movie_id = m.movie_id)) THEN
        BEGIN
            PERFORM movrec.embed_new_movies();
        EXCEPTION WHEN OTHERS THEN  -- a broken checkpoint must not stop the queue
            RAISE WARNING 'serving_drain(): embedding new movies failed: %', SQLERRM;
        END;
    END IF;
    RETURN movrec._serving_drain(max_jobs);
END $$;
COMMENT ON FUNCTION movrec.serving_drain(integer) IS
    'The serving job, for a worker or pg_cron (SELECT cron.schedule(''movrec-serving'', ''* * * * *'', '
    '''SELECT movrec.serving_drain()'')): embeds new movies, then refreshes up to max_jobs users of '
    'model.refresh_queue, each in a subtransaction. Returns the jobs attempted. Locks last until the caller commits';
