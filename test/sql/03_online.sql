-- rate() and the rating trigger: each new rating moves the rater's vector one step toward
-- it and archives the previous vector in a ring of the last 20 per user.
\set VERBOSITY terse

-- User 7 has the vector the deploy gave them, never updated online yet.
SELECT n_updates, model_id FROM model.user_latent_attributes WHERE user_id = 7;
SELECT count(*) AS archived FROM model.user_latent_attributes_backups WHERE user_id = 7;

-- Their top pick, rated half a star.
SELECT movie_id AS top FROM recommend(7, 1) \gset
SELECT predict(7, :top) AS before, embedding::text AS v0 FROM model.user_latent_attributes WHERE user_id = 7 \gset
SELECT user_id, movie_id = :top AS top_pick, rating, rated_at IS NOT NULL AS dated FROM rate(7, :top, 0.5);
SELECT count(*) AS ratings FROM watch_events WHERE user_id = 7 AND movie_id = :top AND rating = 0.5;
-- the vector moved (one update), the old one is archived as update 1 ...
SELECT n_updates, embedding::text <> :'v0' AS moved FROM model.user_latent_attributes WHERE user_id = 7;
SELECT slot, update_seq, embedding::text = :'v0' AS is_previous_vector, model_id
FROM model.user_latent_attributes_backups WHERE user_id = 7;
-- ... the prediction moved toward half a star, by at most half the gap (the step's cap),
-- and the film, now rated, is no longer recommended
SELECT predict(7, :top) < :before AS lower,
       predict(7, :top) - 0.5 >= (:before - 0.5) / 2 - 0.01 AS at_most_half_the_gap;
SELECT count(*) AS still_recommended FROM recommend(7, 100) WHERE movie_id = :top;

-- The same rating again does nothing: no step, nothing archived.
SELECT embedding::text AS v1 FROM model.user_latent_attributes WHERE user_id = 7 \gset
SELECT rating FROM rate(7, :top, 0.5);
SELECT n_updates, embedding::text = :'v1' AS unchanged FROM model.user_latent_attributes WHERE user_id = 7;
SELECT count(*) AS archived FROM model.user_latent_attributes_backups WHERE user_id = 7;
UPDATE watch_events SET rating = 0.5 WHERE user_id = 7 AND movie_id = :top;
SELECT n_updates FROM model.user_latent_attributes WHERE user_id = 7;

-- A different rating of the same film is learned: plain UPDATE, or rate() again.
SELECT predict(7, :top) AS p1 \gset
UPDATE watch_events SET rating = 5 WHERE user_id = 7 AND movie_id = :top;
SELECT n_updates, predict(7, :top) > :p1 AS higher FROM model.user_latent_attributes WHERE user_id = 7;
-- plain INSERT, as the README shows, goes through the same trigger
SELECT min(movie_id) AS other FROM recommend(7, 5) \gset
INSERT INTO watch_events (user_id, movie_id, rating) VALUES (7, :other, 3);
SELECT n_updates FROM model.user_latent_attributes WHERE user_id = 7;

-- A film the model does not know: the rating is just stored.
INSERT INTO movies (movie_id, title, year, genres) VALUES (90002, 'Regress: Added After Training', 2025, '{Comedy}');
SELECT rating FROM rate(7, 90002, 4);
SELECT n_updates FROM model.user_latent_attributes WHERE user_id = 7;

-- A new user starts from the champion's default (mean) vector: that is what gets archived.
SELECT user_id, rating FROM rate(6001, 124, 5);
SELECT u.n_updates, u.model_id = c.model_id AS of_champion
FROM model.user_latent_attributes u, model.champion c WHERE u.user_id = 6001;
SELECT b.update_seq, b.embedding = r.default_embedding::vector AS default_vector_archived
FROM model.user_latent_attributes_backups b JOIN model.registry r USING (model_id) WHERE b.user_id = 6001;

-- The archive is a ring per user: update n goes to slot n mod movrec.backup_retention (20),
-- so after 25 more ratings (one INSERT, one trigger call per row) the last 20 vectors remain.
INSERT INTO watch_events (user_id, movie_id, rating)
SELECT 7, movie_id, 1 + (movie_id % 9) / 2.0
FROM movies WHERE movie_id NOT IN (SELECT movie_id FROM watch_events WHERE user_id = 7) AND movie_id < 90000
ORDER BY movie_id LIMIT 25;
SELECT n_updates FROM model.user_latent_attributes WHERE user_id = 7;
SELECT count(*) AS archived, min(update_seq), max(update_seq), bool_and(slot = update_seq % 20) AS slot_is_seq_mod_20,
       count(DISTINCT slot) AS slots
FROM model.user_latent_attributes_backups WHERE user_id = 7;
-- ORDER BY update_seq reads them in the order they were archived
SELECT update_seq, slot FROM model.user_latent_attributes_backups WHERE user_id = 7 ORDER BY update_seq DESC LIMIT 3;
