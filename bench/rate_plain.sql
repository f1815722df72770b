-- movrec bench serving: the same insert into bench_plain_ratings (watch_events' columns, keys and
-- checks, no triggers): the baseline the online update is compared with
\set uid random(1, :n_users)
\set mid random(1, :n_movies)
\set half random(1, 10)
INSERT INTO bench_plain_ratings (user_id, movie_id, rating) VALUES (:uid, :mid, :half / 2.0)
ON CONFLICT (user_id, movie_id) DO UPDATE SET rating = excluded.rating;
