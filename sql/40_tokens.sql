-- Tokenized movie content: one vocabulary per field, fixed-length id arrays per movie.

CREATE TABLE IF NOT EXISTS movrec.vocab (
    field     text NOT NULL,
    token     text NOT NULL,
    token_id  integer NOT NULL CONSTRAINT token_id_after_pad_and_unk CHECK (token_id >= 2),
    frequency integer NOT NULL,
    PRIMARY KEY (field, token_id),
    UNIQUE (field, token)
);
COMMENT ON TABLE movrec.vocab IS
    'Tokenizer vocabularies, one per field (title, overview, cast, genres, keywords, companies, countries); '
    'ids 0 = PAD and 1 = UNK are reserved';

CREATE TABLE IF NOT EXISTS movrec.movie_tokens (
    movie_id  integer NOT NULL REFERENCES movrec.movies (movie_id) ON DELETE CASCADE,
    field     text NOT NULL,
    token_ids integer[] NOT NULL,
    PRIMARY KEY (movie_id, field)
);
COMMENT ON TABLE movrec.movie_tokens IS 'Per movie and field: token ids, padded with 0 or truncated to the field''s length';

CREATE OR REPLACE FUNCTION movrec.detokenize(movie_id integer, field text)
RETURNS text[] LANGUAGE sql STABLE SET search_path = movrec, pg_temp AS $$
    SELECT array_agg(coalesce(v.token, CASE t.id WHEN 1 THEN '<unk>' END) ORDER BY t.ord)
    FROM movrec.movie_tokens mt CROSS JOIN LATERAL unnest(mt.token_ids) WITH ORDINALITY AS t(id, ord)
    LEFT JOIN movrec.vocab v ON v.field = mt.field AND v.token_id = t.id
    WHERE mt.movie_id = detokenize.movie_id AND mt.field = detokenize.field AND t.id <> 0;
$$;
COMMENT ON FUNCTION movrec.detokenize(integer, text) IS 'A movie''s tokens of one field, back as text (for checking)';
