-- Privileges: nothing for PUBLIC.  Grant movrec_user to applications that
-- recommend and rate, movrec_admin to those that train and deploy.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'movrec_user') THEN
        CREATE ROLE movrec_user NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'movrec_admin') THEN
        CREATE ROLE movrec_admin NOLOGIN IN ROLE movrec_user;
    END IF;
END $$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA movrec FROM PUBLIC;
REVOKE ALL ON ALL PROCEDURES IN SCHEMA movrec FROM PUBLIC;
GRANT USAGE ON SCHEMA movrec, model TO movrec_user;
GRANT SELECT ON movrec.movies, model.champion, model.model_recommendation, model.user_recommendation TO movrec_user;
GRANT SELECT, INSERT, UPDATE ON movrec.watch_events TO movrec_user;
GRANT EXECUTE ON FUNCTION movrec._activate(), movrec.recommend(integer, integer, text[], integer, integer),
    movrec._recommend(integer, integer, text[], integer, integer),
    movrec.predict(integer, integer), movrec._predict(integer, integer),
    movrec.rate(integer, integer, real), movrec.on_rating() TO movrec_user;
GRANT EXECUTE ON FUNCTION movrec.train(text, jsonb, boolean), movrec.deploy(bigint), movrec._deploy(bigint), movrec.doctor(),
    movrec.rollback(), movrec.deploy_best(text), movrec.evaluate(bigint, regclass) TO movrec_admin;
GRANT EXECUTE ON FUNCTION movrec.predict(integer[], integer[]), movrec._predict_many(integer[], integer[]) TO movrec_user;
GRANT SELECT ON ALL TABLES IN SCHEMA model TO movrec_admin;
GRANT EXECUTE ON FUNCTION movrec.tokenize(jsonb), movrec.detokenize(integer, text) TO movrec_admin;
GRANT EXECUTE ON PROCEDURE movrec.etl(bigint, integer, integer, integer, boolean), movrec.etl_clean_links(bigint),
    movrec.etl_cross_filter(bigint, boolean), movrec.etl_prune_remap(bigint, integer, integer),
    movrec.etl_drop_super_raters(bigint, integer), movrec.etl_publish(bigint) TO movrec_admin;
-- serving (60_serving.sql)
GRANT EXECUTE ON FUNCTION movrec.similar_movies(integer, integer), movrec.explain(integer, integer, integer),
    movrec._explain(integer, integer, integer), movrec.refresh_on_ratings_changed() TO movrec_user;
GRANT EXECUTE ON FUNCTION movrec.refresh_recommendations(integer), movrec.refresh_recommendations_batch(integer[]),
    movrec.serving_drain(integer), movrec._serving_drain(integer), movrec.embed_new_movies(integer),
    movrec.refresh_movie_stats(), movrec.serving_on_deploy() TO movrec_admin;
