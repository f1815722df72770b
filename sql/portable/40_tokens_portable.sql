-- Tokenizing runs in the CLI's process in the portable install (sql/40_tokens.sql has the tables).

CREATE OR REPLACE FUNCTION movrec.tokenize(options jsonb DEFAULT '{}')
RETURNS TABLE (field text, vocab_size integer, length integer, unk_rate real)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
BEGIN
    PERFORM movrec._needs_cli('tokenize()', 'movrec tokenize');
END $$;
COMMENT ON FUNCTION movrec.tokenize(jsonb) IS
    'Portable install: tokenizing runs in the CLI (`movrec tokenize`); raises 0A000';
