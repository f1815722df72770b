-- User-to-user CF in the portable install: the statistics, the queue and its triggers are
-- the full install's (sql/50_cf.sql); the in-backend sparse matrix is not, so computing the
-- recommendations is a CLI job (`movrec cf refresh`, `movrec worker`).  recommend() reads
-- what it wrote (model.user_recommendation) as in the full install.

CREATE OR REPLACE FUNCTION movrec._user_to_user(
    user_id integer, min_corr double precision, min_overlap integer, min_raters integer,
    shrinkage double precision, damping double precision, baseline boolean, store boolean)
RETURNS TABLE (rank integer, movie_id integer, title text, score real, neighbours integer)
LANGUAGE plpgsql VOLATILE SET search_path = movrec, pg_temp AS $$
BEGIN
    PERFORM movrec._needs_cli('user_to_user()', 'movrec cf refresh');
END $$;
COMMENT ON FUNCTION movrec._user_to_user(integer, double precision, integer, integer, double precision,
                                         double precision, boolean, boolean) IS
    'Portable install: CF runs in the CLI (`movrec cf refresh`); raises 0A000';

CREATE OR REPLACE FUNCTION movrec._cf_drain(max_jobs integer) RETURNS integer
LANGUAGE plpgsql VOLATILE SET search_path = movrec, pg_temp AS $$
BEGIN
    PERFORM movrec._needs_cli('cf_drain()', 'movrec worker');
    RETURN NULL;
END $$;
COMMENT ON FUNCTION movrec._cf_drain(integer) IS
    'Portable install: the CF queue is drained by the CLI (`movrec worker`); raises 0A000';

CREATE OR REPLACE FUNCTION movrec.cf_cache_info() RETURNS jsonb
LANGUAGE sql STABLE SET search_path = movrec, pg_temp AS $$
    SELECT '{"install": "portable", "cache": "none: CF runs in the CLI"}'::jsonb
$$;
COMMENT ON FUNCTION movrec.cf_cache_info() IS
    'Portable install: backends keep no CF cache (CF runs in the CLI)';
