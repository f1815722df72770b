-- movrec bench serving --portable: the reference, pgvector's HNSW top-10 for a random user's
-- [vector | 1] over the portable install's movie vectors, with no filter at all
\set uid random(1, :n_users)
SELECT v.movie_id FROM model.movie_serving_vectors v
ORDER BY v.ranking <#> (SELECT (u.embedding::real[] || 1::real)::vector
                        FROM model.user_latent_attributes u WHERE u.user_id = :uid)
LIMIT 10;
