-- Erasure requests: movrec.forget_user() removes one user from every table movrec keeps.
--
-- One transaction: the user is gone everywhere or nowhere.  The ratings go first, because
-- deleting them fires the CF statistics trigger, which writes a row of zeros into
-- model.user_rating_stats and queues the user in model.cf_queue; those rows, and
-- everything else keyed by the user, are deleted after it.  staging and the etl work
-- tables hold the user's MovieLens ratings under the MovieLens id: they go too, or the
-- next ETL rerun would bring the user back (the source files on disk are not ours to edit).
-- A rating that commits after forget_user() is new data about a new user.

CREATE OR REPLACE FUNCTION movrec.forget_user(user_id integer) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = movrec, model, pg_temp AS $$
DECLARE
    u constant integer := forget_user.user_id;
    ml integer;
    counts jsonb := '{}';
    n bigint;
BEGIN
    PERFORM movrec._require_primary('forget_user()');
    IF u IS NULL THEN
        RAISE EXCEPTION 'forget_user(): user_id must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT i.ml_user_id INTO ml FROM movrec.user_ids i WHERE i.user_id = u;
    -- The user's vector row is what the rating trigger locks: a rating of this user in
    -- flight waits for this transaction, and one that was waiting is done before it.
    PERFORM FROM model.user_latent_attributes a WHERE a.user_id = u FOR UPDATE;

    DELETE FROM movrec.watch_events w WHERE w.user_id = u;
    GET DIAGNOSTICS n = ROW_COUNT; counts := counts || jsonb_build_object('movrec.watch_events', n);
    IF n > 0 THEN  -- other backends' CF caches still hold the ratings: they reload on this count
        INSERT INTO model.cf_erasures AS e (n_erasures, erased_at) VALUES (1, now())
        ON CONFLICT (singleton) DO UPDATE SET n_erasures = e.n_erasures + 1, erased_at = excluded.erased_at;
        -- recommend()'s popularity ranking counts the user's ratings in model.movie_rating_stats
        -- (a snapshot of the last rewrite): rewritten without them, under a new refreshed_at,
        -- which makes every backend reload the ranking.  Seconds at 20M ratings, for a rare call.
        IF EXISTS (SELECT FROM model.movie_rating_stats) THEN
            PERFORM movrec.refresh_movie_stats();
        END IF;
    END IF;
    DELETE FROM movrec.watch_events_archive w WHERE w.user_id = u;
    GET DIAGNOSTICS n = ROW_COUNT; counts := counts || jsonb_build_object('movrec.watch_events_archive', n);
    DELETE FROM model.user_latent_attributes_backups b WHERE b.user_id = u;
    GET DIAGNOSTICS n = ROW_COUNT; counts := counts || jsonb_build_object('model.user_latent_attributes_backups', n);
    DELETE FROM model.user_latent_attributes a WHERE a.user_id = u;
    GET DIAGNOSTICS n = ROW_COUNT; counts := counts || jsonb_build_object('model.user_latent_attributes', n);
    DELETE FROM model.model_recommendation r WHERE r.user_id = u;
    GET DIAGNOSTICS n = ROW_COUNT; counts := counts || jsonb_build_object('model.model_recommendation', n);
    DELETE FROM model.user_recommendation r WHERE r.user_id = u;
    GET DIAGNOSTICS n = ROW_COUNT; counts := counts || jsonb_build_object('model.user_recommendation', n);
    -- after the ratings: their trigger has written these rows by now
    DELETE FROM model.user_rating_stats s WHERE s.user_id = u;
    GET DIAGNOSTICS n = ROW_COUNT; counts := counts || jsonb_build_object('model.user_rating_stats', n);
    DELETE FROM model.cf_queue q WHERE q.user_id = u;
    GET DIAGNOSTICS n = ROW_COUNT; counts := counts || jsonb_build_object('model.cf_queue', n);
    DELETE FROM model.refresh_queue q WHERE q.user_id = u;
    GET DIAGNOSTICS n = ROW_COUNT; counts := counts || jsonb_build_object('model.refresh_queue', n);
    DELETE FROM movrec.user_ids i WHERE i.user_id = u;
    GET DIAGNOSTICS n = ROW_COUNT; counts := counts || jsonb_build_object('movrec.user_ids', n);

    -- the same person in the loaded files and the ETL work tables
    IF ml IS NOT NULL THEN
        DELETE FROM staging.ml_ratings r WHERE r.user_id = ml;
        GET DIAGNOSTICS n = ROW_COUNT; counts := counts || jsonb_build_object('staging.ml_ratings', n);
        DELETE FROM staging.ml_tags t WHERE t.user_id = ml;
        GET DIAGNOSTICS n = ROW_COUNT; counts := counts || jsonb_build_object('staging.ml_tags', n);
        IF to_regclass('etl.ratings2') IS NOT NULL THEN
            EXECUTE 'DELETE FROM etl.ratings2 WHERE user_id = $1' USING ml;
            GET DIAGNOSTICS n = ROW_COUNT; counts := counts || jsonb_build_object('etl.ratings2', n);
        END IF;
    END IF;
    IF to_regclass('etl.ratings3') IS NOT NULL THEN
        EXECUTE 'DELETE FROM etl.ratings3 WHERE user_id = $1' USING u;
        GET DIAGNOSTICS n = ROW_COUNT; counts := counts || jsonb_build_object('etl.ratings3', n);
    END IF;
    IF to_regclass('etl.ratings4') IS NOT NULL THEN
        EXECUTE 'DELETE FROM etl.ratings4 WHERE user_id = $1' USING u;
        GET DIAGNOSTICS n = ROW_COUNT; counts := counts || jsonb_build_object('etl.ratings4', n);
    END IF;
    RETURN counts;
END $$;
COMMENT ON FUNCTION movrec.forget_user(integer) IS
    'Erasure request: deletes one user (compact user_id) from every table, in one transaction: ratings and '
    'their archive, vector and backups, rating statistics, stored recommendations, CF and refresh queues, the '
    'id map row, and their rows in staging and the etl work tables; the user''s ratings leave the per-movie '
    'statistics, and every backend''s CF and popularity caches reload once it commits (model.cf_erasures). '
    'Returns rows deleted per table (jsonb)';
