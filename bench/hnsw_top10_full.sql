-- movrec bench serving: the reference, pgvector's HNSW top-10 (the full install's cosine index
-- over the published movie vectors) for a random user's vector, with no filter at all
\set uid random(1, :n_users)
SELECT a.movie_id FROM model.movie_latent_attributes a
ORDER BY a.embedding <=> (SELECT u.embedding FROM model.user_latent_attributes u WHERE u.user_id = :uid)
LIMIT 10;
