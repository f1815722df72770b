-- Before any model is trained: recommend() serves the popularity fallback.
-- The database is prepared by `make regress-db`: movrec installed, the demo data
-- loaded (200 films, 300 synthetic users, seed 7), nothing trained.
\set VERBOSITY terse

SELECT count(*) AS movies FROM movies;
SELECT count(DISTINCT user_id) AS users, count(*) BETWEEN 9000 AND 18000 AS about_40_ratings_each
FROM watch_events;
SELECT count(*) AS models FROM model.registry;
SELECT count(*) AS champions FROM model.champion;

-- The result's shape (columns and types), whatever the source.
SELECT * FROM recommend(7) WHERE false;
SELECT pg_get_function_result('movrec.recommend(integer, integer, text[], integer, integer)'::regprocedure);

-- No model: every row is popular, k rows (10 by default), none the user has rated,
-- score and predicted_rating the same number.
SELECT count(*) AS n, bool_and(source = 'popular') AS all_popular,
       bool_and(score = predicted_rating) AS score_is_rating
FROM recommend(7);
SELECT count(*) AS n FROM recommend(7, k => 25);
SELECT count(*) AS n FROM recommend(7, 3);
SELECT count(*) AS already_rated
FROM recommend(7, 50) r JOIN watch_events w ON w.user_id = 7 AND w.movie_id = r.movie_id;
SELECT count(*) = count(DISTINCT movie_id) AS no_duplicates FROM recommend(7, 50);

-- Popular is the damped mean (n * mean + 10 * global mean) / (n + 10), best first:
-- each row's score is that value, and no unrated movie left out scores higher.
CREATE TEMP VIEW damped AS
WITH stats AS (SELECT movie_id, count(*) AS n, sum(rating::float8) AS s FROM watch_events GROUP BY movie_id),
     mu AS (SELECT sum(s) / sum(n) AS mu FROM stats)
SELECT movie_id, (s + 10 * mu) / (n + 10) AS score FROM stats, mu;
CREATE TEMP TABLE rec7 AS SELECT row_number() OVER () AS rank, * FROM recommend(7);
SELECT bool_and(abs(r.score - d.score) < 1e-4) AS scores_are_damped_means
FROM rec7 r JOIN damped d USING (movie_id);
SELECT bool_and(a.score >= b.score) AS best_first FROM rec7 a JOIN rec7 b ON b.rank = a.rank + 1;
SELECT max(d.score) <= (SELECT min(score) FROM rec7) + 1e-4 AS nothing_better_left_out
FROM damped d
WHERE d.movie_id NOT IN (SELECT movie_id FROM rec7)
  AND d.movie_id NOT IN (SELECT movie_id FROM watch_events WHERE user_id = 7);

-- One lucky 5-star rating does not top the list: a new film rated once, 5 stars,
-- has the best plain mean of all, yet ranks below the films with many good ratings.
BEGIN;
INSERT INTO movies (movie_id, title, year, genres) VALUES (90001, 'Regress: One Lucky Rating', 2024, '{Drama}');
SELECT user_id, movie_id, rating FROM rate(1, 90001, 5);
SELECT movie_id FROM (SELECT movie_id, avg(rating) AS mean FROM watch_events GROUP BY movie_id
                      ORDER BY mean DESC, movie_id LIMIT 1) best;
SELECT rank > 10 AS not_in_top_10 FROM (SELECT row_number() OVER () AS rank, movie_id FROM recommend(7, 250)) r
WHERE movie_id = 90001;
-- with no model, the rating is just stored: no user vector appears
SELECT count(*) AS user_vectors FROM model.user_latent_attributes;
ROLLBACK;

-- Filters: genres (any of them, case-insensitive) and inclusive years; k rows while
-- enough unrated films pass, else all of those.
CREATE TEMP VIEW unrated7 AS
SELECT * FROM movies WHERE movie_id NOT IN (SELECT movie_id FROM watch_events WHERE user_id = 7);
SELECT count(*) AS n, bool_and(m.genres && '{Comedy,Horror}') AS all_match
FROM recommend(7, 20, genres => '{comedy,HORROR}') r JOIN movies m USING (movie_id);
SELECT count(*) = least(20, (SELECT count(*) FROM unrated7 WHERE year BETWEEN 1990 AND 1999)) AS k_or_all,
       bool_and(m.year BETWEEN 1990 AND 1999) AS all_in_nineties
FROM recommend(7, 20, min_year => 1990, max_year => 1999) r JOIN movies m USING (movie_id);
SELECT count(*) = (SELECT count(*) FROM unrated7 WHERE year = 1994) AS every_unrated_1994_film,
       bool_and(m.year = 1994) AS all_1994
FROM recommend(7, 100, min_year => 1994, max_year => 1994) r JOIN movies m USING (movie_id);
