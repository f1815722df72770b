-- Training the base model in the database, then recommend() and predict() from it.
-- One torch thread and a fixed seed; the checks below still show only ids, counts and
-- booleans that float noise cannot flip.
\set VERBOSITY terse
UPDATE movrec.settings SET train_threads = 1;
SET client_min_messages = warning;  -- training reports progress as NOTICEs
SELECT movrec.train('mf', '{"epochs": 30, "seed": 1}') AS model_id;
RESET client_min_messages;

-- It is registered and deployed: the champion, a vector per film and per rater.
SELECT model_id, kind, dim FROM model.champion;
SELECT model_id, kind, dim, global_mean BETWEEN 0.5 AND 5 AS mean_is_a_rating,
       (metrics ->> 'val_rmse')::float8 < 0.8 * (metrics ->> 'baseline_val_rmse')::float8 AS beats_baseline_on_validation
FROM model.registry;
SELECT count(*) AS movie_vectors, count(DISTINCT model_id) AS models FROM model.movie_latent_attributes;
SELECT count(*) AS user_vectors, count(*) = (SELECT count(DISTINCT user_id) FROM watch_events) AS every_rater
FROM model.user_latent_attributes;

-- recommend() now comes from the model: k unrated films, each predicted at least 3 stars
-- (movrec.min_predicted_rating), best first; for MF the score is the predicted rating.
CREATE TEMP TABLE rec7 AS SELECT row_number() OVER () AS rank, * FROM recommend(7);
SELECT count(*) AS n, bool_and(source = 'model') AS all_model,
       bool_and(predicted_rating BETWEEN 3 AND 5) AS all_3_to_5_stars,
       bool_and(predicted_rating = least(greatest(score, 0.5), 5)) AS rating_is_clipped_score
FROM rec7;
SELECT bool_and(a.score >= b.score) AS best_first FROM rec7 a JOIN rec7 b ON b.rank = a.rank + 1;
SELECT count(*) AS already_rated FROM rec7 r JOIN watch_events w ON w.user_id = 7 AND w.movie_id = r.movie_id;
-- the top film is the best the model predicts among the unrated ones
SELECT (SELECT movie_id FROM rec7 WHERE rank = 1) = (
    SELECT p.movie_id FROM predict(array_fill(7, ARRAY[200]), (SELECT array_agg(movie_id ORDER BY movie_id) FROM movies)) p
    WHERE p.movie_id NOT IN (SELECT movie_id FROM watch_events WHERE user_id = 7)
    ORDER BY p.predicted_rating DESC LIMIT 1) AS top_is_best_predicted;

-- predict() agrees with recommend(), single and batch, and stays within 0.5..5.
SELECT bool_and(abs(predict(7, movie_id) - predicted_rating) < 1e-4) AS predict_matches FROM rec7;
SELECT count(*) AS n, bool_and(predicted_rating BETWEEN 0.5 AND 5) AS in_range,
       bool_and(abs(predicted_rating - predict(user_id, movie_id)) < 1e-4) AS batch_matches_single
FROM predict(ARRAY[1, 2, 3, 7], ARRAY[10, 20, 30, 40]);
SELECT predict(7, 124) BETWEEN 0.5 AND 5 AS in_range;

-- What the model learned: the demo's ratings are planted (a taste per user and genre, film
-- quality, user bias, noise).  Its predictions of the ratings follow them closely...
CREATE TEMP TABLE fit AS
SELECT w.rating, p.predicted_rating
FROM (SELECT array_agg(user_id ORDER BY user_id, movie_id) AS u, array_agg(movie_id ORDER BY user_id, movie_id) AS m
      FROM watch_events) a,
     predict(a.u, a.m) p JOIN watch_events w USING (user_id, movie_id);
SELECT count(*) = (SELECT count(*) FROM watch_events) AS every_rating,
       corr(rating, predicted_rating) > 0.8 AS follows_ratings,
       sqrt(avg((rating - predicted_rating) ^ 2)) < 0.7 * stddev_pop(rating) AS beats_global_mean
FROM fit;
-- ...and carry each user's genre taste to films they have not rated: take the genre a user
-- rated best and the one rated worst (5 ratings or more each); the unrated films of the
-- first are predicted higher than those of the second for nearly every user.
CREATE TEMP TABLE unrated AS
SELECT p.user_id, p.movie_id, p.predicted_rating, m.genres
FROM (SELECT array_agg(u ORDER BY u, movie_id) AS us, array_agg(movie_id ORDER BY u, movie_id) AS ms
      FROM generate_series(1, 300) u, movies) a,
     predict(a.us, a.ms) p JOIN movies m USING (movie_id)
WHERE NOT EXISTS (SELECT FROM watch_events w WHERE w.user_id = p.user_id AND w.movie_id = p.movie_id);
CREATE TEMP TABLE extremes AS
SELECT user_id, (array_agg(genre ORDER BY mean DESC, genre))[1] AS best, (array_agg(genre ORDER BY mean, genre))[1] AS worst
FROM (SELECT w.user_id, g.genre, avg(w.rating) AS mean
      FROM watch_events w JOIN movies m USING (movie_id), unnest(m.genres) g (genre)
      GROUP BY 1, 2 HAVING count(*) >= 5) t
GROUP BY user_id HAVING count(*) >= 2;
SELECT count(*) > 250 AS most_users, avg((best > worst)::int) > 0.9 AS taste_carries_over
FROM (SELECT e.user_id,
             avg(u.predicted_rating) FILTER (WHERE e.best = ANY (u.genres) AND NOT e.worst = ANY (u.genres)) AS best,
             avg(u.predicted_rating) FILTER (WHERE e.worst = ANY (u.genres) AND NOT e.best = ANY (u.genres)) AS worst
      FROM extremes e JOIN unrated u USING (user_id) GROUP BY e.user_id) s;

-- A higher min_predicted_rating holds for every row.
SET movrec.min_predicted_rating = 4;
SELECT count(*) > 0 AS some, bool_and(predicted_rating >= 4) AS all_4_stars_or_more FROM recommend(7, 30);
RESET movrec.min_predicted_rating;

-- The fallback chain for users the model cannot serve from their own vector.
BEGIN;
-- A rater without a vector of this model (a bulk load after the deploy skips the trigger):
-- scored with the model's default (mean) vector.
ALTER TABLE watch_events DISABLE TRIGGER movrec_online_update;
INSERT INTO watch_events (user_id, movie_id, rating) VALUES (5001, 124, 4);
ALTER TABLE watch_events ENABLE TRIGGER movrec_online_update;
SELECT count(*) AS user_vectors FROM model.user_latent_attributes WHERE user_id = 5001;
SELECT count(*) AS n, bool_and(source = 'model') AS all_model, bool_and(movie_id <> 124) AS skips_rated
FROM recommend(5001);
-- With user-to-user CF rows, those come first; the default vector fills the rest.
INSERT INTO model.user_recommendation (user_id, rank, movie_id, score) VALUES
    (5001, 1, 10, 4.9), (5001, 2, 20, 4.8), (5001, 3, 124, 4.7), (5001, 4, 30, 4.6);
SELECT rank, movie_id, source FROM (SELECT row_number() OVER () AS rank, * FROM recommend(5001, 5)) r WHERE rank <= 3;
SELECT source, count(*) FROM recommend(5001, 5) GROUP BY source ORDER BY source;
-- Someone who never rated anything: popular.
SELECT count(*) AS n, bool_and(source = 'popular') AS all_popular FROM recommend(5002);
ROLLBACK;

-- train(..., deploy => false) registers a model and leaves the champion as it is
-- (05_bad_input damages this one's checkpoint).
SET client_min_messages = warning;
SELECT movrec.train('mf', '{"epochs": 1, "seed": 1}', deploy => false) AS second;
RESET client_min_messages;
SELECT model_id FROM model.champion;
SELECT count(*) AS models FROM model.registry;
