-- movrec schemas, catalogue and ratings.
-- Every statement here is idempotent: `movrec install` reruns it on upgrade.

-- Were the rating-statistics triggers live before this install?  50_cf.sql recounts the
-- statistics only if not (a first install, or a reinstall after uninstall): recounting 20M
-- ratings takes half a minute under a lock that stops rating writes.
SELECT set_config('movrec.install_stats_were_live', (
    SELECT count(*) > 0 FROM pg_trigger
    WHERE tgrelid = to_regclass('movrec.watch_events') AND tgname IN ('movrec_cf_enqueue', 'movrec_cf_enqueue_row')  -- (the row trigger: on Citus)
      AND tgenabled <> 'D')::text,
    true);

CREATE SCHEMA IF NOT EXISTS movrec;
COMMENT ON SCHEMA movrec IS 'movrec: in-database movie recommender (catalogue, ratings, functions)';
CREATE SCHEMA IF NOT EXISTS model;
COMMENT ON SCHEMA model IS 'movrec: model registry, latent vectors and precomputed recommendations';

-- Is this database distributed (movrec.distribute() ran)?  No Citus: false.
CREATE OR REPLACE FUNCTION movrec._distributed() RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    found boolean;
BEGIN
    IF to_regclass('pg_catalog.pg_dist_partition') IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE 'SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition WHERE logicalrelid = $1)'
        INTO found USING to_regclass('movrec.watch_events');
    RETURN found;
END $$;
COMMENT ON FUNCTION movrec._distributed() IS
    'True where movrec.distribute() laid movrec out over Citus (watch_events is a distributed table)';

CREATE OR REPLACE FUNCTION movrec._local_group() RETURNS integer
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    g integer;
BEGIN
    IF to_regclass('pg_catalog.pg_dist_local_group') IS NULL THEN
        RETURN 0;
    END IF;
    EXECUTE 'SELECT groupid FROM pg_catalog.pg_dist_local_group' INTO g;
    RETURN coalesce(g, 0);
END $$;
COMMENT ON FUNCTION movrec._local_group() IS
    'This node''s Citus group (0 on the coordinator, and without Citus): whose transaction ids a '
    'model.user_rating_stats stamp holds';

CREATE TABLE IF NOT EXISTS movrec.movies (
    movie_id     integer PRIMARY KEY CONSTRAINT movie_id_is_positive CHECK (movie_id > 0),
    title        text NOT NULL CONSTRAINT title_is_not_empty CHECK (title <> ''),
    year         smallint CONSTRAINT year_is_plausible CHECK (year BETWEEN 1870 AND 2100),
    genres       text[] NOT NULL DEFAULT '{}',
    ml_movie_id  integer,
    tmdb_id      integer,
    overview     text,
    keywords     text[] NOT NULL DEFAULT '{}',
    cast_names   text[] NOT NULL DEFAULT '{}',
    companies    text[] NOT NULL DEFAULT '{}',
    countries    text[] NOT NULL DEFAULT '{}',
    runtime      real,
    popularity   real,
    vote_average real,
    vote_count   integer,
    created_at   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE movrec.movies IS 'The movie catalogue; movie_id is the compact id that models use';
COMMENT ON COLUMN movrec.movies.genres IS 'MovieLens genre names, e.g. {Action,Sci-Fi}';
COMMENT ON COLUMN movrec.movies.ml_movie_id IS 'MovieLens movieId (NULL for movies not from MovieLens)';
COMMENT ON COLUMN movrec.movies.tmdb_id IS 'TMDB id, when the movie was enriched from TMDB';

CREATE TABLE IF NOT EXISTS movrec.watch_events (
    user_id  integer NOT NULL CONSTRAINT user_id_is_positive CHECK (user_id > 0),
    movie_id integer NOT NULL REFERENCES movrec.movies (movie_id),
    rating   real NOT NULL
        CONSTRAINT rating_is_half_stars_from_0_5_to_5
        CHECK (rating >= 0.5 AND rating <= 5.0 AND rating * 2 = round(rating * 2)),
    rated_at timestamptz NOT NULL DEFAULT now(),
    etl_run  bigint,
    PRIMARY KEY (user_id, movie_id)
);
COMMENT ON COLUMN movrec.watch_events.etl_run IS
    'The ETL run that loaded the row; NULL for ratings that arrived live (kept across ETL reruns)';
COMMENT ON TABLE movrec.watch_events IS
    'Ratings, one row per user and movie (a re-rating updates the row: use movrec.rate() or INSERT .. ON CONFLICT). '
    'Each insert or re-rating updates the user''s vector through the trigger movrec_online_update.';
CREATE INDEX IF NOT EXISTS watch_events_movie_id_idx ON movrec.watch_events (movie_id);
-- A rating from the future would outlive every time-based split; a few minutes of clock skew
-- between an application and the server is allowed.  NOT VALID: rows already stored are not
-- rechecked (an upgrade never fails on old data), every new or changed row is.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conrelid = 'movrec.watch_events'::regclass
                   AND conname = 'rated_at_is_not_in_the_future') THEN
        ALTER TABLE movrec.watch_events ADD CONSTRAINT rated_at_is_not_in_the_future
            CHECK (rated_at <= now() + interval '5 minutes') NOT VALID;
    END IF;
END $$;

-- What `movrec install` deployed; CREATE EXTENSION keeps its own record in pg_extension.
CREATE TABLE IF NOT EXISTS movrec.installs (
    install_id   integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    version      text NOT NULL,
    sql_sha256   text NOT NULL,
    venv         text,
    installed_at timestamptz NOT NULL DEFAULT now(),
    installed_by text NOT NULL DEFAULT session_user
);
COMMENT ON TABLE movrec.installs IS
    'History of `movrec install`: version and checksum of the SQL applied, and the venv backends load movrec from '
    '(the newest row''s; only the owner may write here)';
