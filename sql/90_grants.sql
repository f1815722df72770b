-- Roles and privileges: the one place where they are created and granted.
--
--   movrec_user   the application: recommend, predict, similar_movies, explain, user_to_user,
--                 rate (or INSERT a rating; UPDATE only its rating), read the catalogue,
--                 wait_for_lsn (read-your-writes on a hot standby)
--   movrec_admin  jobs: train, deploy, rollback, evaluate, ETL, tokenize, refresh, CF, settings,
--                 erasure requests (forget_user)
--                 (a member of movrec_user)
--   the owner     install and upgrade (a superuser: plpython3u is an untrusted language)
--
-- Nothing for PUBLIC.  Implementation functions (_recommend, _deploy, ...) and trigger
-- functions are executable by nobody but the owner: the front doors call them as the owner,
-- and a trigger fires whatever the rights of the role whose statement fired it.
-- Roles are cluster-wide: a member of movrec_user is the application in every movrec
-- database of the cluster that it may CONNECT to (README: Roles).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'movrec_user') THEN
        CREATE ROLE movrec_user NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'movrec_admin') THEN
        CREATE ROLE movrec_admin NOLOGIN IN ROLE movrec_user;
    END IF;
END $$;

-- Start from nothing on every install and upgrade, so a privilege dropped here is dropped
-- from databases installed before.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA movrec, model FROM PUBLIC, movrec_user, movrec_admin;
REVOKE ALL ON ALL PROCEDURES IN SCHEMA movrec, model FROM PUBLIC, movrec_user, movrec_admin;
REVOKE ALL ON ALL TABLES IN SCHEMA movrec, model, staging, etl FROM PUBLIC, movrec_user, movrec_admin;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA movrec, model, staging, etl FROM PUBLIC, movrec_user, movrec_admin;
REVOKE ALL ON SCHEMA movrec, model, staging, etl FROM PUBLIC;

-- The application ---------------------------------------------------------------------
GRANT USAGE ON SCHEMA movrec, model TO movrec_user;
GRANT SELECT ON movrec.movies, model.champion, model.model_recommendation, model.user_recommendation
    TO movrec_user;
-- Ratings: an application writes who rated what and how, never the ETL bookkeeping or, on a
-- re-rating, the ids (movrec.on_rerating stamps rated_at and makes the row live).
GRANT SELECT, INSERT (user_id, movie_id, rating, rated_at), UPDATE (rating) ON movrec.watch_events TO movrec_user;
GRANT EXECUTE ON FUNCTION
    movrec.recommend(integer, integer, text[], integer, integer),
    movrec.predict(integer, integer), movrec.predict(integer[], integer[]),
    movrec.rate(integer, integer, real),
    movrec.similar_movies(integer, integer), movrec.explain(integer, integer, integer),
    movrec.user_to_user(integer, double precision, integer, integer, double precision, double precision, boolean, boolean),
    movrec.wait_for_lsn(pg_lsn, integer)
    TO movrec_user;

-- Jobs ----------------------------------------------------------------------------------
GRANT USAGE ON SCHEMA staging, etl TO movrec_admin;
GRANT EXECUTE ON FUNCTION
    movrec.train(text, jsonb, boolean), movrec.deploy(bigint), movrec.rollback(), movrec.deploy_best(text),
    movrec.evaluate(bigint, regclass), movrec.doctor(),
    movrec.tokenize(jsonb), movrec.detokenize(integer, text),
    movrec.refresh_recommendations(integer), movrec.refresh_recommendations_batch(integer[]),
    movrec.serving_drain(integer), movrec.embed_new_movies(integer), movrec.refresh_movie_stats(),
    movrec.cf_drain(integer), movrec.cf_rebuild_stats(), movrec.cf_schedule(text, integer),
    movrec.schedule(text, integer), movrec.unschedule(), movrec.prune_queues(),
    movrec.retrain_and_promote(text, jsonb),
    movrec.cf_unschedule(), movrec.cf_cache_info(), movrec.forget_user(integer)
    TO movrec_admin;
GRANT EXECUTE ON PROCEDURE
    movrec.etl(bigint, integer, integer, integer, boolean, boolean), movrec.etl_clean_links(bigint),
    movrec.etl_cross_filter(bigint, boolean), movrec.etl_prune_remap(bigint, integer, integer),
    movrec.etl_drop_super_raters(bigint, integer), movrec.etl_publish(bigint, boolean)
    TO movrec_admin;
GRANT SELECT ON ALL TABLES IN SCHEMA model TO movrec_admin;
GRANT SELECT ON movrec.vocab, movrec.movie_tokens, movrec.movie_ids, movrec.user_ids, movrec.etl_runs,
    movrec.loads, movrec.quarantine, movrec.installs, movrec.settings, movrec.watch_events_archive,
    movrec.movies_archive, movrec.status
    TO movrec_admin;
-- File loads (`movrec load`) fill staging and record the load and its quarantined rows.
GRANT SELECT, INSERT, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA staging TO movrec_admin;
GRANT INSERT, DELETE ON movrec.loads, movrec.quarantine TO movrec_admin;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA movrec TO movrec_admin;
-- Settings: the values, not the bookkeeping (movrec_settings_stamp writes that).
GRANT UPDATE (threads, train_threads, device, online_update, online_lr, online_reg, refit_reg, backup_retention,
               recommend_search, hnsw_ef_search, train_budget_s)
    ON movrec.settings TO movrec_admin;
