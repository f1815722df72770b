-- similar_movies() and explain(), recommend()'s companions.
\set VERBOSITY terse

-- similar_movies(movie, k): the k nearest films by cosine similarity of the champion's
-- movie vectors, best first, never the film itself.
SELECT * FROM movrec.similar_movies(124) WHERE false;
CREATE TEMP TABLE sim AS SELECT row_number() OVER () AS rank, * FROM movrec.similar_movies(124, 5);
SELECT count(*) AS n, bool_and(movie_id <> 124) AS not_itself, bool_and(similarity BETWEEN -1 AND 1) AS cosine
FROM sim;
SELECT count(*) AS n FROM movrec.similar_movies(124);
SELECT bool_and(a.similarity >= b.similarity) AS best_first FROM sim a JOIN sim b ON b.rank = a.rank + 1;
-- the similarity is 1 - cosine distance of the two vectors
SELECT bool_and(abs(s.similarity - (1 - (a.embedding <=> q.embedding))) < 1e-5) AS is_cosine
FROM sim s JOIN model.movie_latent_attributes a USING (movie_id),
     (SELECT embedding FROM model.movie_latent_attributes WHERE movie_id = 124) q;
-- more than hnsw.ef_search (40) rows when asked: every other film
SELECT count(*) AS n FROM movrec.similar_movies(124, 1000);
-- Genre tastes are what the demo's ratings plant, so the vectors group films by genre:
-- a film's nearest neighbour nearly always shares a genre with it, far more often than two
-- films taken at random do (films the model knows: 03_online added one it does not).
SELECT avg((m.genres && n.genres)::int) > 0.8 AS nearest_shares_a_genre,
       (SELECT avg((a.genres && b.genres)::int) FROM movies a, movies b WHERE a.movie_id < b.movie_id) < 0.5
           AS random_pairs_do_not
FROM movies m JOIN model.movie_latent_attributes k USING (movie_id)
JOIN LATERAL (SELECT movie_id FROM movrec.similar_movies(m.movie_id, 1)) s ON true
JOIN movies n ON n.movie_id = s.movie_id;

-- explain(user, movie, k DEFAULT 3): the user's rated films that contribute most, with a
-- sentence; contribution = similarity * (rating - the user's damped mean), positive ones only.
SELECT * FROM movrec.explain(7, 124) WHERE false;
SELECT movie_id AS pick FROM recommend(7, 1) \gset
CREATE TEMP TABLE why AS SELECT row_number() OVER () AS rank, * FROM movrec.explain(7, :pick);
SELECT count(*) BETWEEN 1 AND 3 AS up_to_3, bool_and(contribution > 0) AS positive,
       bool_and(reason LIKE 'You rated ' || rated_title || ' %') AS says_what_was_rated
FROM why;
SELECT bool_and(a.contribution >= b.contribution) AS most_first FROM why a JOIN why b ON b.rank = a.rank + 1;
SELECT count(*) = (SELECT count(*) FROM why) AS are_own_ratings
FROM why y JOIN watch_events w ON w.user_id = 7 AND w.movie_id = y.rated_movie_id AND w.rating = y.rating;
SELECT bool_and(abs(y.similarity - (1 - (a.embedding <=> q.embedding))) < 1e-4) AS similarity_is_cosine
FROM why y JOIN model.movie_latent_attributes a ON a.movie_id = y.rated_movie_id,
     (SELECT embedding FROM model.movie_latent_attributes WHERE movie_id = :pick) q;
SELECT count(*) BETWEEN 1 AND 10 AS up_to_10 FROM movrec.explain(7, :pick, 10);
