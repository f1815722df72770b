-- movrec bench serving: a rating through the online-update trigger (pgbench -D n_users=N -D n_movies=M)
\set uid random(1, :n_users)
\set mid random(1, :n_movies)
\set half random(1, 10)
INSERT INTO movrec.watch_events (user_id, movie_id, rating) VALUES (:uid, :mid, :half / 2.0)
ON CONFLICT (user_id, movie_id) DO UPDATE SET rating = excluded.rating;
