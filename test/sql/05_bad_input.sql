-- The README's "Bad input" table: each error's message and SQLSTATE, and that nothing
-- already stored changes.
\set VERBOSITY terse

CREATE TEMP VIEW stored AS
SELECT (SELECT md5(string_agg(w::text, '|' ORDER BY user_id, movie_id)) FROM watch_events w) AS ratings,
       (SELECT md5(string_agg(u::text, '|' ORDER BY user_id)) FROM model.user_latent_attributes u) AS vectors,
       (SELECT count(*) FROM model.user_latent_attributes_backups) AS archived,
       (SELECT model_id FROM model.champion) AS champion;
SELECT ratings AS ratings0, vectors AS vectors0, archived AS archived0, champion AS champion0 FROM stored \gset

-- recommend(NULL), predict(NULL, 1): user_id must not be NULL (22004)
SELECT * FROM recommend(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT predict(NULL, 1);
\echo :LAST_ERROR_SQLSTATE

-- recommend(1, 0), k > 10000: k must be between 1 and 10000 (22023)
SELECT * FROM recommend(1, 0);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM recommend(1, 10001);
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) > 0 AS k_10000_is_fine FROM recommend(1, 10000);

-- an unknown genre: the hint lists the known ones (22023)
\set VERBOSITY default
\set SHOW_CONTEXT never
SELECT * FROM recommend(7, genres => '{Westerns}');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY terse

-- predict(1, 999) for a movie the model does not know (P0002)
SELECT predict(1, 999);
\echo :LAST_ERROR_SQLSTATE

-- rating 7, 0, 3.3 or NaN: check rating_is_half_stars_from_0_5_to_5 (23514)
SELECT * FROM rate(1, 124, 7);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM rate(1, 124, 0);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM rate(1, 124, 3.3);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM rate(1, 124, 'NaN');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO watch_events (user_id, movie_id, rating) VALUES (1, 124, 7);
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS stored FROM watch_events WHERE user_id = 1 AND movie_id = 124;
UPDATE watch_events SET rating = 3.3
WHERE user_id = 1 AND movie_id = (SELECT min(movie_id) FROM watch_events WHERE user_id = 1);
\echo :LAST_ERROR_SQLSTATE

-- rating of a movie not in movies: foreign key watch_events_movie_id_fkey (23503)
SELECT * FROM rate(1, 999, 4);
\echo :LAST_ERROR_SQLSTATE
INSERT INTO watch_events (user_id, movie_id, rating) VALUES (1, 999, 4);
\echo :LAST_ERROR_SQLSTATE

-- deploy(42) for a model not registered (P0002)
SELECT movrec.deploy(42);
\echo :LAST_ERROR_SQLSTATE

-- train('mf', '{"epoch": 3}'): unknown training option(s) (22023)
SELECT movrec.train('mf', '{"epoch": 3}');
\echo :LAST_ERROR_SQLSTATE

-- deploying a damaged checkpoint: XX001, and the champion stays.  02_model registered a
-- second model without deploying it; its checkpoint is truncated here.
SELECT max(model_id) AS second FROM model.registry \gset
SELECT :second > :champion0 AS not_the_champion;
UPDATE model.registry SET checkpoint = substring(checkpoint FROM 1 FOR 200) WHERE model_id = :second;
-- (the message goes on with what torch said, which depends on its version: shown up to there)
\set VERBOSITY sqlstate
SELECT movrec.deploy(:second) IS NULL AS deployed;
SELECT substring(:'LAST_ERROR_MESSAGE' FROM '^(.* cannot be loaded): ') AS message;
\set VERBOSITY terse
SELECT (SELECT model_id FROM model.champion) = :champion0 AS champion_stays;
SELECT count(*) AS n, bool_and(source = 'model') AS all_model FROM recommend(7);

-- Nothing stored changed.
SELECT ratings = :'ratings0' AS same_ratings, vectors = :'vectors0' AS same_vectors,
       archived = :archived0 AS same_archive, champion = :champion0 AS same_champion
FROM stored;
