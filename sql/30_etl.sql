-- The data pipeline: raw files -> staging (COPY) -> four ETL stages -> movies, watch_events.
-- Loaders (movrec load ...) fill staging.* and movrec.quarantine; the stages are
-- procedures that write work tables in schema etl and one report row each.

CREATE SCHEMA IF NOT EXISTS staging;
COMMENT ON SCHEMA staging IS 'movrec: raw rows as loaded from MovieLens and TMDB files';
CREATE SCHEMA IF NOT EXISTS etl;
COMMENT ON SCHEMA etl IS 'movrec: work tables of the ETL stages (links1, ratings2, ... movies4)';

CREATE TABLE IF NOT EXISTS movrec.loads (
    load_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source      text NOT NULL CONSTRAINT source_is_known CHECK (source IN ('movielens', 'tmdb', 'tmdb-credits')),
    layout      text NOT NULL,
    path        text NOT NULL,
    checksum    text NOT NULL,
    rows_loaded jsonb NOT NULL DEFAULT '{}',
    rows_quarantined integer NOT NULL DEFAULT 0,
    loaded_at   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE movrec.loads IS 'Each file load: source, layout, checksum of the files, rows per staging table';

CREATE TABLE IF NOT EXISTS movrec.quarantine (
    quarantine_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    load_id       bigint NOT NULL REFERENCES movrec.loads (load_id) ON DELETE CASCADE,
    file          text NOT NULL,
    line_no       bigint NOT NULL,
    column_name   text,
    reason        text NOT NULL,
    raw           text
);
COMMENT ON TABLE movrec.quarantine IS
    'Malformed input rows, never silently dropped: file, line, column and reason';

CREATE TABLE IF NOT EXISTS staging.ml_ratings (
    user_id integer NOT NULL, movie_id integer NOT NULL, rating real NOT NULL, rated_at timestamptz
);
COMMENT ON TABLE staging.ml_ratings IS 'MovieLens ratings as loaded';
CREATE TABLE IF NOT EXISTS staging.ml_movies (
    movie_id integer NOT NULL, title text NOT NULL, year smallint, genres text[] NOT NULL DEFAULT '{}'
);
COMMENT ON TABLE staging.ml_movies IS 'MovieLens movies as loaded (title without the year, articles in front)';
CREATE TABLE IF NOT EXISTS staging.ml_links (movie_id integer, imdb_id text, tmdb_id integer);
COMMENT ON TABLE staging.ml_links IS 'MovieLens links as loaded, nulls and duplicates included (stage 1 cleans)';
CREATE TABLE IF NOT EXISTS staging.ml_tags (
    user_id integer NOT NULL, movie_id integer NOT NULL, tag text NOT NULL, tagged_at timestamptz
);
COMMENT ON TABLE staging.ml_tags IS 'MovieLens tags as loaded';
CREATE TABLE IF NOT EXISTS staging.tmdb_movies (
    tmdb_id integer NOT NULL, title text, original_title text, original_language text, overview text,
    tagline text, genres text[], keywords text[], companies text[], countries text[], release_date date,
    runtime real, popularity real, vote_average real, vote_count integer, budget bigint, revenue bigint
);
COMMENT ON TABLE staging.tmdb_movies IS 'TMDB movie metadata as loaded (JSON columns reduced to name lists)';
CREATE TABLE IF NOT EXISTS staging.tmdb_credits (
    tmdb_id integer NOT NULL, cast_names text[] NOT NULL DEFAULT '{}', directors text[] NOT NULL DEFAULT '{}'
);
COMMENT ON TABLE staging.tmdb_credits IS 'TMDB credits as loaded: cast in billing order, directors';

-- Id maps: compact ids are assigned once and kept, so a rerun never changes
-- what an id means (live ratings and user vectors stay valid).
CREATE TABLE IF NOT EXISTS movrec.movie_ids (
    movie_id    integer PRIMARY KEY,
    ml_movie_id integer NOT NULL UNIQUE,
    tmdb_id     integer,
    imdb_id     text,
    etl_run     bigint NOT NULL
);
COMMENT ON TABLE movrec.movie_ids IS 'Compact movie_id <-> MovieLens movieId, TMDB id, IMDb id';
CREATE TABLE IF NOT EXISTS movrec.user_ids (
    user_id    integer PRIMARY KEY,
    ml_user_id integer NOT NULL UNIQUE,
    etl_run    bigint NOT NULL
);
COMMENT ON TABLE movrec.user_ids IS 'Compact user_id <-> MovieLens userId';

CREATE SEQUENCE IF NOT EXISTS movrec.etl_run_seq;
COMMENT ON SEQUENCE movrec.etl_run_seq IS 'ETL run ids';
CREATE TABLE IF NOT EXISTS movrec.etl_runs (
    etl_run     bigint NOT NULL,
    stage       text NOT NULL,
    output      text NOT NULL,
    rows_in     bigint NOT NULL,
    rows_out    bigint NOT NULL,
    removed     jsonb NOT NULL DEFAULT '{}',
    params      jsonb NOT NULL DEFAULT '{}',
    duration_ms real NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (etl_run, stage, output)
);
COMMENT ON TABLE movrec.etl_runs IS 'One row per ETL stage and output: rows in, out, removed by reason, duration';

CREATE TABLE IF NOT EXISTS movrec.watch_events_archive (
    user_id     integer NOT NULL,
    movie_id    integer NOT NULL,
    rating      real NOT NULL,
    rated_at    timestamptz NOT NULL,
    etl_run     bigint,
    archived_by bigint NOT NULL,
    reason      text NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE movrec.watch_events_archive IS
    'Ratings an ETL publish took out of watch_events (their movie left the catalogue, or they predate the first ETL run)';

CREATE OR REPLACE FUNCTION movrec._etl_report(
    run bigint, stage text, output text, rows_in bigint, rows_out bigint, removed jsonb, params jsonb,
    started timestamptz
) RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    INSERT INTO movrec.etl_runs (etl_run, stage, output, rows_in, rows_out, removed, params, duration_ms)
    VALUES (run, stage, output, rows_in, rows_out, removed, params,
            extract(epoch FROM clock_timestamp() - started) * 1000)
    ON CONFLICT ON CONSTRAINT etl_runs_pkey DO UPDATE
    SET rows_in = excluded.rows_in, rows_out = excluded.rows_out, removed = excluded.removed,
        params = excluded.params, duration_ms = excluded.duration_ms, finished_at = excluded.finished_at;
    RAISE NOTICE 'etl run %: % -> %: % rows in, % out, removed %', run, stage, output, rows_in, rows_out, removed;
END $$;
COMMENT ON FUNCTION movrec._etl_report(bigint, text, text, bigint, bigint, jsonb, jsonb, timestamptz) IS
    'Writes one movrec.etl_runs row and a NOTICE';

-- Drops a work table quietly (DROP ... IF EXISTS would NOTICE on every first run).
CREATE OR REPLACE FUNCTION movrec._etl_drop(name text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        EXECUTE format('DROP TABLE %s', name);
    END IF;
END $$;
COMMENT ON FUNCTION movrec._etl_drop(text) IS 'Drops an ETL work table if it exists, without a NOTICE';

-- Stage 1: clean links.  Drops rows without a movieId or tmdbId, duplicate
-- movieIds, and a tmdbId claimed by two movies (the lower movieId keeps it).
CREATE OR REPLACE PROCEDURE movrec.etl_clean_links(INOUT run bigint DEFAULT NULL)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = movrec, pg_temp AS $$
DECLARE
    t0 timestamptz := clock_timestamp();
    n_in bigint; n_null bigint; n_dup_movie bigint; n_dup_tmdb bigint; n_out bigint;
BEGIN
    run := coalesce(run, nextval('movrec.etl_run_seq'));
    SELECT count(*), count(*) FILTER (WHERE movie_id IS NULL OR tmdb_id IS NULL)
    INTO n_in, n_null FROM staging.ml_links;
    PERFORM movrec._etl_drop('etl.links1');
    CREATE UNLOGGED TABLE etl.links1 AS
        SELECT DISTINCT ON (movie_id) movie_id, imdb_id, tmdb_id FROM staging.ml_links
        WHERE movie_id IS NOT NULL AND tmdb_id IS NOT NULL ORDER BY movie_id, tmdb_id;
    n_dup_movie := n_in - n_null - (SELECT count(*) FROM etl.links1);
    DELETE FROM etl.links1 a USING etl.links1 b WHERE a.tmdb_id = b.tmdb_id AND a.movie_id > b.movie_id;
    GET DIAGNOSTICS n_dup_tmdb = ROW_COUNT;
    ALTER TABLE etl.links1 ADD PRIMARY KEY (movie_id);
    SELECT count(*) INTO n_out FROM etl.links1;
    PERFORM movrec._etl_report(run, '1 clean links', 'etl.links1', n_in, n_out,
        jsonb_build_object('null_id', n_null, 'duplicate_movie_id', n_dup_movie, 'duplicate_tmdb_id', n_dup_tmdb),
        '{}', t0);
END $$;
COMMENT ON PROCEDURE movrec.etl_clean_links(bigint) IS
    'ETL stage 1: staging.ml_links -> etl.links1 without null ids and duplicates';

-- Stage 2: cross-filter.  Every rating's movie exists in movies, links and
-- TMDB (when TMDB data is loaded, or require_tmdb says so); every movie has ratings.
CREATE OR REPLACE PROCEDURE movrec.etl_cross_filter(INOUT run bigint DEFAULT NULL, require_tmdb boolean DEFAULT NULL)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = movrec, pg_temp AS $$
DECLARE
    t0 timestamptz := clock_timestamp();
    n_in bigint; n_dup bigint; n_no_movie bigint; n_no_link bigint; n_no_tmdb bigint; n_out bigint;
    m_in bigint; m_out bigint; m_no_link bigint; m_no_tmdb bigint;
BEGIN
    run := coalesce(run, nextval('movrec.etl_run_seq'));
    require_tmdb := coalesce(require_tmdb, EXISTS (SELECT FROM staging.tmdb_movies));
    IF to_regclass('etl.links1') IS NULL THEN
        RAISE EXCEPTION 'etl stage 2 needs etl.links1: run stage 1 first (CALL movrec.etl_clean_links())'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    SELECT count(*) INTO n_in FROM staging.ml_ratings;
    SELECT count(*) INTO m_in FROM staging.ml_movies;

    -- movies: one row per movieId, joined to its link and TMDB row
    PERFORM movrec._etl_drop('pg_temp.movies_joined');
    CREATE TEMP TABLE movies_joined AS
        SELECT DISTINCT ON (m.movie_id) m.movie_id, m.title, m.year, m.genres, l.imdb_id, l.tmdb_id,
               (t.tmdb_id IS NOT NULL) AS has_tmdb, t.overview, t.keywords, t.companies, t.countries,
               t.runtime, t.popularity, t.vote_average, t.vote_count, t.release_date,
               coalesce(c.cast_names, '{}') AS cast_names
        FROM staging.ml_movies m
        LEFT JOIN etl.links1 l USING (movie_id)
        LEFT JOIN (SELECT DISTINCT ON (tmdb_id) * FROM staging.tmdb_movies ORDER BY tmdb_id) t USING (tmdb_id)
        LEFT JOIN (SELECT DISTINCT ON (tmdb_id) * FROM staging.tmdb_credits ORDER BY tmdb_id) c USING (tmdb_id)
        ORDER BY m.movie_id;
    SELECT count(*) FILTER (WHERE tmdb_id IS NULL), count(*) FILTER (WHERE tmdb_id IS NOT NULL AND NOT has_tmdb)
    INTO m_no_link, m_no_tmdb FROM movies_joined;
    IF require_tmdb THEN
        DELETE FROM movies_joined WHERE NOT has_tmdb;
    END IF;
    ALTER TABLE movies_joined ADD PRIMARY KEY (movie_id);

    -- ratings: the latest of duplicate (user, movie) pairs, whose movie survived
    PERFORM movrec._etl_drop('etl.ratings2');
    CREATE UNLOGGED TABLE etl.ratings2 AS
        SELECT DISTINCT ON (user_id, movie_id) user_id, movie_id, rating, rated_at
        FROM staging.ml_ratings ORDER BY user_id, movie_id, rated_at DESC NULLS LAST;
    n_dup := n_in - (SELECT count(*) FROM etl.ratings2);
    DELETE FROM etl.ratings2 r WHERE NOT EXISTS (SELECT FROM staging.ml_movies m WHERE m.movie_id = r.movie_id);
    GET DIAGNOSTICS n_no_movie = ROW_COUNT;
    n_no_link := 0; n_no_tmdb := 0;
    IF require_tmdb THEN
        DELETE FROM etl.ratings2 r WHERE NOT EXISTS (SELECT FROM etl.links1 l WHERE l.movie_id = r.movie_id);
        GET DIAGNOSTICS n_no_link = ROW_COUNT;
        DELETE FROM etl.ratings2 r WHERE NOT EXISTS (SELECT FROM movies_joined m WHERE m.movie_id = r.movie_id);
        GET DIAGNOSTICS n_no_tmdb = ROW_COUNT;
    END IF;
    SELECT count(*) INTO n_out FROM etl.ratings2;

    PERFORM movrec._etl_drop('etl.movies2');
    CREATE UNLOGGED TABLE etl.movies2 AS
        SELECT * FROM movies_joined m WHERE EXISTS (SELECT FROM etl.ratings2 r WHERE r.movie_id = m.movie_id);
    ALTER TABLE etl.movies2 ADD PRIMARY KEY (movie_id);
    SELECT count(*) INTO m_out FROM etl.movies2;
    PERFORM movrec._etl_drop('etl.links2');
    CREATE UNLOGGED TABLE etl.links2 AS
        SELECT l.* FROM etl.links1 l WHERE EXISTS (SELECT FROM etl.movies2 m WHERE m.movie_id = l.movie_id);

    PERFORM movrec._etl_report(run, '2 cross-filter', 'etl.ratings2', n_in, n_out,
        jsonb_build_object('duplicate_rating', n_dup, 'unknown_movie', n_no_movie, 'no_link', n_no_link,
                           'no_tmdb_metadata', n_no_tmdb),
        jsonb_build_object('require_tmdb', require_tmdb), t0);
    PERFORM movrec._etl_report(run, '2 cross-filter', 'etl.movies2', m_in, m_out,
        jsonb_build_object('no_link', CASE WHEN require_tmdb THEN m_no_link ELSE 0 END,
                           'no_tmdb_metadata', CASE WHEN require_tmdb THEN m_no_tmdb ELSE 0 END,
                           'no_ratings', m_in - m_out - CASE WHEN require_tmdb THEN m_no_link + m_no_tmdb ELSE 0 END),
        jsonb_build_object('require_tmdb', require_tmdb), t0);
END $$;
COMMENT ON PROCEDURE movrec.etl_cross_filter(bigint, boolean) IS
    'ETL stage 2: ratings, links and enriched movies filtered so every referenced id exists in all three';

-- Stage 3: prune rare movies, then tiny profiles; assign compact ids.
CREATE OR REPLACE PROCEDURE movrec.etl_prune_remap(
    INOUT run bigint DEFAULT NULL, min_movie_ratings integer DEFAULT 5, min_user_ratings integer DEFAULT 5)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = movrec, pg_temp AS $$
DECLARE
    t0 timestamptz := clock_timestamp();
    n_in bigint; n_rare bigint; n_tiny bigint; n_out bigint; m_in bigint; m_out bigint;
BEGIN
    run := coalesce(run, nextval('movrec.etl_run_seq'));
    IF to_regclass('etl.ratings2') IS NULL THEN
        RAISE EXCEPTION 'etl stage 3 needs etl.ratings2: run stage 2 first (CALL movrec.etl_cross_filter())'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF min_movie_ratings < 1 OR min_user_ratings < 1 THEN
        RAISE EXCEPTION 'min_movie_ratings and min_user_ratings must be >= 1' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT count(*) INTO n_in FROM etl.ratings2;
    SELECT count(*) INTO m_in FROM etl.movies2;
    PERFORM movrec._etl_drop('pg_temp.kept');
    CREATE TEMP TABLE kept AS
        SELECT r.* FROM etl.ratings2 r
        JOIN (SELECT movie_id FROM etl.ratings2 GROUP BY movie_id HAVING count(*) >= min_movie_ratings) m
        USING (movie_id);
    n_rare := n_in - (SELECT count(*) FROM kept);
    DELETE FROM kept k USING (SELECT user_id FROM kept GROUP BY user_id HAVING count(*) < min_user_ratings) u
    WHERE k.user_id = u.user_id;
    GET DIAGNOSTICS n_tiny = ROW_COUNT;

    -- compact ids: existing assignments stay, newcomers get the next ids in original-id order
    INSERT INTO movrec.movie_ids (movie_id, ml_movie_id, tmdb_id, imdb_id, etl_run)
    SELECT coalesce((SELECT max(movie_id) FROM movrec.movie_ids), 0) + row_number() OVER (ORDER BY m.movie_id),
           m.movie_id, m.tmdb_id, m.imdb_id, run
    FROM etl.movies2 m
    WHERE EXISTS (SELECT FROM kept k WHERE k.movie_id = m.movie_id)
      AND NOT EXISTS (SELECT FROM movrec.movie_ids i WHERE i.ml_movie_id = m.movie_id)
    ORDER BY m.movie_id;
    UPDATE movrec.movie_ids i SET tmdb_id = m.tmdb_id, imdb_id = m.imdb_id
    FROM etl.movies2 m WHERE m.movie_id = i.ml_movie_id AND (i.tmdb_id, i.imdb_id) IS DISTINCT FROM (m.tmdb_id, m.imdb_id);
    INSERT INTO movrec.user_ids (user_id, ml_user_id, etl_run)
    SELECT coalesce((SELECT max(user_id) FROM movrec.user_ids), 0) + row_number() OVER (ORDER BY u.user_id),
           u.user_id, run
    FROM (SELECT DISTINCT user_id FROM kept) u
    WHERE NOT EXISTS (SELECT FROM movrec.user_ids i WHERE i.ml_user_id = u.user_id)
    ORDER BY u.user_id;

    PERFORM movrec._etl_drop('etl.ratings3');
    CREATE UNLOGGED TABLE etl.ratings3 AS
        SELECT u.user_id, m.movie_id, k.rating, k.rated_at
        FROM kept k JOIN movrec.user_ids u ON u.ml_user_id = k.user_id
        JOIN movrec.movie_ids m ON m.ml_movie_id = k.movie_id;
    PERFORM movrec._etl_drop('etl.movies3');
    CREATE UNLOGGED TABLE etl.movies3 AS
        SELECT i.movie_id, m.movie_id AS ml_movie_id, m.tmdb_id, m.imdb_id, m.title, m.year, m.genres,
               m.overview, m.keywords, m.cast_names, m.companies, m.countries, m.runtime, m.popularity,
               m.vote_average, m.vote_count, m.release_date
        FROM etl.movies2 m JOIN movrec.movie_ids i ON i.ml_movie_id = m.movie_id
        WHERE EXISTS (SELECT FROM kept k WHERE k.movie_id = m.movie_id);
    ALTER TABLE etl.movies3 ADD PRIMARY KEY (movie_id);
    SELECT count(*) INTO n_out FROM etl.ratings3;
    SELECT count(*) INTO m_out FROM etl.movies3;
    PERFORM movrec._etl_report(run, '3 prune and remap', 'etl.ratings3', n_in, n_out,
        jsonb_build_object('rare_movie', n_rare, 'tiny_profile', n_tiny),
        jsonb_build_object('min_movie_ratings', min_movie_ratings, 'min_user_ratings', min_user_ratings), t0);
    PERFORM movrec._etl_report(run, '3 prune and remap', 'etl.movies3', m_in, m_out,
        jsonb_build_object('rare_movie', m_in - m_out), '{}', t0);
END $$;
COMMENT ON PROCEDURE movrec.etl_prune_remap(bigint, integer, integer) IS
    'ETL stage 3: drop movies with few ratings, then users with few ratings; compact ids 1..N (kept across runs)';

-- Stage 4: drop super-raters and the movie columns no model uses.
CREATE OR REPLACE PROCEDURE movrec.etl_drop_super_raters(INOUT run bigint DEFAULT NULL, max_user_ratings integer DEFAULT 600)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = movrec, pg_temp AS $$
DECLARE
    t0 timestamptz := clock_timestamp();
    n_in bigint; n_out bigint; n_users bigint;
BEGIN
    run := coalesce(run, nextval('movrec.etl_run_seq'));
    IF to_regclass('etl.ratings3') IS NULL THEN
        RAISE EXCEPTION 'etl stage 4 needs etl.ratings3: run stage 3 first (CALL movrec.etl_prune_remap())'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    SELECT count(*) INTO n_in FROM etl.ratings3;
    PERFORM movrec._etl_drop('etl.ratings4');
    CREATE UNLOGGED TABLE etl.ratings4 AS
        SELECT r.* FROM etl.ratings3 r
        JOIN (SELECT user_id FROM etl.ratings3 GROUP BY user_id HAVING count(*) <= max_user_ratings) u USING (user_id);
    SELECT count(*), count(DISTINCT user_id) INTO n_out, n_users FROM etl.ratings4;
    PERFORM movrec._etl_drop('etl.movies4');
    CREATE UNLOGGED TABLE etl.movies4 AS
        SELECT movie_id, ml_movie_id, tmdb_id, title, year, genres, overview, keywords, cast_names,
               companies, countries, runtime, popularity, vote_average, vote_count
        FROM etl.movies3;
    ALTER TABLE etl.movies4 ADD PRIMARY KEY (movie_id);
    PERFORM movrec._etl_report(run, '4 drop super-raters', 'etl.ratings4', n_in, n_out,
        jsonb_build_object('super_rater', n_in - n_out),
        jsonb_build_object('max_user_ratings', max_user_ratings), t0);
    PERFORM movrec._etl_report(run, '4 drop super-raters', 'etl.movies4',
        (SELECT count(*) FROM etl.movies3), (SELECT count(*) FROM etl.movies4), '{}', '{}', t0);
END $$;
COMMENT ON PROCEDURE movrec.etl_drop_super_raters(bigint, integer) IS
    'ETL stage 4: drop users with more than max_user_ratings ratings, keep the movie columns models use';

-- Movies that a publish took out of the catalogue, kept like archived ratings.
CREATE TABLE IF NOT EXISTS movrec.movies_archive (
    movie_id    integer NOT NULL,
    title       text NOT NULL,
    ml_movie_id integer,
    movie       jsonb NOT NULL,
    archived_by bigint NOT NULL,
    reason      text NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE movrec.movies_archive IS
    'Movies an ETL publish took out of movrec.movies (they left the ETL result, or the first run replaced them): '
    'the whole row as jsonb, the run (archived_by) and the reason';
COMMENT ON COLUMN movrec.movies_archive.movie IS 'The movrec.movies row as it was (to_jsonb), every column';
COMMENT ON COLUMN movrec.movies_archive.archived_by IS 'The ETL run whose publish removed it';
CREATE INDEX IF NOT EXISTS movies_archive_movie_id_idx ON movrec.movies_archive (movie_id);

-- Publish: swap etl.movies4 / etl.ratings4 into movies and watch_events in the
-- caller's transaction, so readers see the old data or the new, never a mix.
--
-- The guard: a publish that would leave no movies or no ratings, or that would take out
-- more than half of the current movies or of the current ratings, is refused (SQLSTATE
-- 22000, data_exception) unless force => true.  A truncated file or a failed load looks
-- exactly like that, and publishing it would retire vectors and recommendations built on
-- the good data.  The first run into a database that holds data in another id space (the
-- demo) replaces it all by design: only the "nothing to publish" half applies to it.
-- Whatever leaves is archived, never deleted: movies in movrec.movies_archive, ratings in
-- movrec.watch_events_archive.
--
-- Ratings keep flowing during a rerun (every run after the first).  No table lock stops
-- them: the publish takes SHARE ROW EXCLUSIVE on movrec.movies only (publishes take turns and
-- no one else writes the catalogue meanwhile; a rating's foreign key check takes ROW SHARE,
-- which that mode lets through), and the online trigger skips the publish's rows by their
-- etl_run (its WHEN clause) instead of being disabled.  Three rules keep every rating:
--   * the movies that leave are locked FOR UPDATE before anything is counted or moved: a
--     rating of one that is in flight commits first (and is archived below), a later one
--     waits for that row and then fails on the foreign key (23503) once the movie is gone;
--   * what leaves is decided in one DELETE, judged on each row's newest version, so a
--     re-rating that turns an ETL row live meanwhile is kept if its movie stays;
--   * only rows whose value changes are rewritten, and the file's rows go in with ON
--     CONFLICT DO NOTHING: a live rating is newer than the file and wins.
-- The guard's counts are taken once the leaving movies are locked; ratings that arrive
-- meanwhile only add rows or turn ETL rows live, so what the publish takes out is at most
-- what was counted.  The first run gives ids new meanings (a rating that slipped in would
-- land on another movie): it also locks movrec.watch_events in SHARE ROW EXCLUSIVE mode, and
-- ratings wait for it.
DO $$
BEGIN
    -- force is a new trailing parameter: the old signature goes, or a call would be ambiguous
    IF to_regprocedure('movrec.etl_publish(bigint)') IS NOT NULL THEN
        DROP PROCEDURE movrec.etl_publish(bigint);
    END IF;
    IF to_regprocedure('movrec.etl(bigint, integer, integer, integer, boolean)') IS NOT NULL THEN
        DROP PROCEDURE movrec.etl(bigint, integer, integer, integer, boolean);
    END IF;
END $$;

CREATE OR REPLACE PROCEDURE movrec.etl_publish(INOUT run bigint DEFAULT NULL, force boolean DEFAULT false)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = movrec, pg_temp AS $$
DECLARE
    t0 timestamptz := clock_timestamp();
    first_run boolean;
    max_removed_share constant float8 := 0.5;
    n_archived bigint; n_kept bigint; n_live bigint; n_out bigint; n_movies bigint;
    n_movies_archived bigint; n_dropped bigint;
    new_movies bigint; new_ratings bigint; cur_movies bigint; cur_ratings bigint;
    gone_movies bigint; gone_ratings bigint;
BEGIN
    run := coalesce(run, currval('movrec.etl_run_seq'));
    force := coalesce(force, false);
    IF to_regclass('etl.ratings4') IS NULL OR to_regclass('etl.movies4') IS NULL THEN
        RAISE EXCEPTION 'nothing to publish: run the stages first (CALL movrec.etl())'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    LOCK TABLE movrec.movies IN SHARE ROW EXCLUSIVE MODE;
    first_run := NOT EXISTS (SELECT 1 FROM movrec.watch_events WHERE etl_run IS NOT NULL)
                 AND NOT EXISTS (SELECT FROM movrec.etl_runs WHERE stage = 'publish');
    IF first_run THEN
        LOCK TABLE movrec.watch_events IN SHARE ROW EXCLUSIVE MODE;
    ELSE
        PERFORM FROM movrec.movies m WHERE NOT EXISTS (SELECT FROM etl.movies4 n WHERE n.movie_id = m.movie_id)
        FOR UPDATE;
    END IF;

    -- What the publish would take out, counted with the leaving movies locked.
    SELECT count(*) INTO new_movies FROM etl.movies4;
    SELECT count(*) INTO new_ratings FROM etl.ratings4;
    SELECT count(*), count(*) FILTER (WHERE NOT EXISTS (SELECT FROM etl.movies4 n WHERE n.movie_id = m.movie_id))
    INTO cur_movies, gone_movies FROM movrec.movies m;
    -- a rating stays if it is live and its movie stays, or if the ETL result has its pair
    SELECT count(*), count(*) FILTER (WHERE first_run OR NOT (
               (w.etl_run IS NULL AND EXISTS (SELECT FROM etl.movies4 n WHERE n.movie_id = w.movie_id))
               OR EXISTS (SELECT FROM etl.ratings4 r WHERE r.user_id = w.user_id AND r.movie_id = w.movie_id)))
    INTO cur_ratings, gone_ratings FROM movrec.watch_events w;
    IF NOT force AND (new_movies = 0 OR new_ratings = 0) THEN
        RAISE EXCEPTION 'etl_publish(): run % has % movies and % ratings to publish; publishing would empty the catalogue',
            run, new_movies, new_ratings
            USING ERRCODE = 'data_exception',
                  DETAIL = format('movrec.movies holds %s movies, movrec.watch_events %s ratings; nothing was changed',
                                  cur_movies, cur_ratings),
                  HINT = format('check the loaded files (SELECT * FROM movrec.loads; movrec etl --report); to publish '
                                'anyway: CALL movrec.etl_publish(%s, force => true) or movrec etl --force', run);
    END IF;
    IF NOT force AND NOT first_run
       AND (gone_movies > max_removed_share * cur_movies OR gone_ratings > max_removed_share * cur_ratings) THEN
        RAISE EXCEPTION 'etl_publish(): run % would take out % of % movies and % of % ratings (more than % %%)',
            run, gone_movies, cur_movies, gone_ratings, cur_ratings, max_removed_share * 100
            USING ERRCODE = 'data_exception',
                  DETAIL = 'nothing was changed; what a publish takes out is archived, but a file that was cut '
                           'short or a failed load look like this',
                  HINT = format('check the loaded files (SELECT * FROM movrec.loads; movrec etl --report); to publish '
                                'anyway: CALL movrec.etl_publish(%s, force => true) or movrec etl --force', run);
    END IF;

    -- What leaves, archived, in one statement: live ratings whose movie leaves the catalogue
    -- (every rating, before the first run: those use another id space), and rows of earlier
    -- runs that this run's result no longer has.
    WITH gone AS (
        DELETE FROM movrec.watch_events w
        WHERE CASE WHEN w.etl_run IS NULL
                   THEN first_run OR NOT EXISTS (SELECT FROM etl.movies4 m WHERE m.movie_id = w.movie_id)
                   ELSE NOT EXISTS (SELECT FROM etl.ratings4 r WHERE r.user_id = w.user_id AND r.movie_id = w.movie_id)
              END
        RETURNING w.*
    ), archived AS (
        INSERT INTO movrec.watch_events_archive (user_id, movie_id, rating, rated_at, etl_run, archived_by, reason)
        SELECT user_id, movie_id, rating, rated_at, etl_run, run,
               CASE WHEN etl_run IS NOT NULL THEN 'left the etl result'
                    WHEN first_run THEN 'predates the first etl run'
                    ELSE 'movie left the catalogue' END
        FROM gone
        RETURNING etl_run
    )
    SELECT count(*) FILTER (WHERE etl_run IS NULL), count(*) FILTER (WHERE etl_run IS NOT NULL)
    INTO n_archived, n_dropped FROM archived;
    -- Rows of earlier runs whose value this run changes are replaced by this run's rows
    -- below; the others stay as they are (they keep the run that loaded them), so a rerun
    -- rewrites only what changed.  A file row without a time keeps the stored one.
    DELETE FROM movrec.watch_events w USING etl.ratings4 r
    WHERE w.etl_run IS NOT NULL AND r.user_id = w.user_id AND r.movie_id = w.movie_id
      AND (r.rating <> w.rating OR r.rated_at <> w.rated_at);
    -- Movies leaving the catalogue are archived; on the first run every movie is (the ids
    -- change meaning, and the upsert below would overwrite the old row).
    WITH gone AS (
        DELETE FROM movrec.movies m
        WHERE NOT EXISTS (SELECT FROM etl.movies4 n WHERE n.movie_id = m.movie_id)
        RETURNING m.*
    ), replaced AS (
        SELECT m.* FROM movrec.movies m WHERE first_run AND EXISTS (SELECT FROM etl.movies4 n WHERE n.movie_id = m.movie_id)
    )
    INSERT INTO movrec.movies_archive (movie_id, title, ml_movie_id, movie, archived_by, reason)
    SELECT g.movie_id, g.title, g.ml_movie_id, to_jsonb(g), run,
           CASE WHEN first_run THEN 'predates the first etl run' ELSE 'left the etl result' END FROM gone g
    UNION ALL
    SELECT r.movie_id, r.title, r.ml_movie_id, to_jsonb(r), run, 'predates the first etl run' FROM replaced r;
    GET DIAGNOSTICS n_movies_archived = ROW_COUNT;
    -- (an update that keeps movie_id takes FOR NO KEY UPDATE: ratings' key-share checks pass)
    INSERT INTO movrec.movies AS m (movie_id, ml_movie_id, tmdb_id, title, year, genres, overview, keywords,
                                    cast_names, companies, countries, runtime, popularity, vote_average, vote_count)
    SELECT movie_id, ml_movie_id, tmdb_id, title, year, coalesce(genres, '{}'), overview, coalesce(keywords, '{}'),
           coalesce(cast_names, '{}'), coalesce(companies, '{}'), coalesce(countries, '{}'), runtime, popularity,
           vote_average, vote_count
    FROM etl.movies4
    ON CONFLICT (movie_id) DO UPDATE SET ml_movie_id = excluded.ml_movie_id, tmdb_id = excluded.tmdb_id,
        title = excluded.title, year = excluded.year, genres = excluded.genres, overview = excluded.overview,
        keywords = excluded.keywords, cast_names = excluded.cast_names, companies = excluded.companies,
        countries = excluded.countries, runtime = excluded.runtime, popularity = excluded.popularity,
        vote_average = excluded.vote_average, vote_count = excluded.vote_count;
    GET DIAGNOSTICS n_movies = ROW_COUNT;
    -- This run's rows; the online trigger skips them (WHEN etl_run IS NULL): train afterwards.
    INSERT INTO movrec.watch_events (user_id, movie_id, rating, rated_at, etl_run)
    SELECT user_id, movie_id, rating, coalesce(rated_at, now()), run FROM etl.ratings4
    ON CONFLICT (user_id, movie_id) DO NOTHING;  -- a live rating is newer than the file
    GET DIAGNOSTICS n_out = ROW_COUNT;
    SELECT count(*), count(*) FILTER (WHERE etl_run IS NULL) INTO n_kept, n_live FROM movrec.watch_events;
    IF first_run AND EXISTS (SELECT FROM model.deployments) THEN
        -- ids changed meaning: retire the champion and the vectors that used the old ids
        INSERT INTO model.deployments (model_id, reason) VALUES (NULL, format('retired by etl run %s', run));
        IF movrec._distributed() THEN  -- (no deploy trigger there: 87_citus.sql)
            PERFORM movrec._follow_champion();
        END IF;
        TRUNCATE model.user_latent_attributes, model.user_latent_attributes_backups,
                 model.movie_latent_attributes, model.model_recommendation, model.user_recommendation;
        RAISE NOTICE 'etl run %: the deployed model used the old ids and is retired; train a new one', run;
    END IF;
    PERFORM movrec._etl_report(run, 'publish', 'movrec.watch_events', new_ratings,
        n_kept, jsonb_build_object('live_ratings_kept', n_live, 'archived', n_archived,
                                   'left_the_etl_result', n_dropped),
        jsonb_build_object('force', force), t0);
    PERFORM movrec._etl_report(run, 'publish', 'movrec.movies', new_movies, n_movies,
        jsonb_build_object('archived', n_movies_archived), jsonb_build_object('force', force), t0);
END $$;
COMMENT ON PROCEDURE movrec.etl_publish(bigint, boolean) IS
    'Swaps the ETL output into movies and watch_events atomically; movies and ratings that leave are archived '
    '(movrec.movies_archive, movrec.watch_events_archive), never lost. Refuses (SQLSTATE 22000) an empty result, '
    'or one that takes out more than 50 % of the current movies or ratings, unless force => true';

CREATE OR REPLACE PROCEDURE movrec.etl(
    INOUT run bigint DEFAULT NULL, min_movie_ratings integer DEFAULT 5, min_user_ratings integer DEFAULT 5,
    max_user_ratings integer DEFAULT 600, require_tmdb boolean DEFAULT NULL, force boolean DEFAULT false)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = movrec, pg_temp AS $$
BEGIN
    PERFORM movrec._require_primary('etl()');
    run := coalesce(run, nextval('movrec.etl_run_seq'));
    CALL movrec.etl_clean_links(run);
    CALL movrec.etl_cross_filter(run, require_tmdb);
    CALL movrec.etl_prune_remap(run, min_movie_ratings, min_user_ratings);
    CALL movrec.etl_drop_super_raters(run, max_user_ratings);
    CALL movrec.etl_publish(run, force);
END $$;
COMMENT ON PROCEDURE movrec.etl(bigint, integer, integer, integer, boolean, boolean) IS
    'The whole ETL: stages 1-4 and publish, in one transaction; returns the run id. force => true publishes '
    'a result that movrec.etl_publish() would refuse (empty, or taking out more than 50 % of movies or ratings)';
