CREATE OR REPLACE FUNCTION movrec.tokenize(options jsonb DEFAULT '{}')
RETURNS TABLE (field text, vocab_size integer, length integer, unk_rate real)
LANGUAGE plpython3u VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
GD.get("movrec") or plpy.execute("SELECT movrec._activate()")
from movrec import backend, tokenizer; return backend.sql_entry(tokenizer.tokenize_from_sql)(options)
$$;
COMMENT ON FUNCTION movrec.tokenize(jsonb) IS
    'Rebuilds movrec.vocab and movrec.movie_tokens from movrec.movies. options: {"overview": {"length": 128, '
    '"min_freq": 3}, ...}. Returns each field''s vocabulary size (with PAD, UNK), length and share of UNK tokens';
