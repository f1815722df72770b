-- Training, deploying and evaluating need torch: in the portable install they run in the
-- CLI's process (`movrec train`, `movrec deploy`, `movrec evaluate` with --portable
-- databases), which writes the registry and the vectors with the same code as the full
-- install.  Here the implementations say so, with the command, through the shared front
-- doors (sql/22_models.sql): same names, same checks, one error (0A000) for what needs torch.

CREATE OR REPLACE FUNCTION movrec._needs_cli(what text, command text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RAISE EXCEPTION '%: this is a portable install (no PL/Python): it runs in the movrec CLI', what
        USING ERRCODE = 'feature_not_supported',
              HINT = format('run `%s --dsn ...`; the CLI writes the result into this database', command);
END $$;
COMMENT ON FUNCTION movrec._needs_cli(text, text) IS
    'Raises 0A000 (feature_not_supported) naming the CLI command that does this in a portable install';

CREATE OR REPLACE FUNCTION movrec._train(model text, options jsonb, deploy boolean) RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = movrec, pg_temp AS $$
BEGIN
    PERFORM movrec._needs_cli('train()', 'movrec train');
    RETURN NULL;
END $$;
COMMENT ON FUNCTION movrec._train(text, jsonb, boolean) IS
    'Portable install: training runs in the CLI (`movrec train`); raises 0A000';

CREATE OR REPLACE FUNCTION movrec._deploy(model_id bigint) RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = movrec, pg_temp AS $$
BEGIN
    PERFORM movrec._needs_cli('deploy()', format('movrec deploy %s', model_id));
    RETURN NULL;
END $$;
COMMENT ON FUNCTION movrec._deploy(bigint) IS
    'Portable install: a deploy loads the checkpoint with torch, in the CLI (`movrec deploy ID`); raises 0A000';

CREATE OR REPLACE FUNCTION movrec._evaluate(model_id bigint, test_ratings regclass)
RETURNS TABLE (metric text, value float8)
LANGUAGE plpgsql VOLATILE SET search_path = movrec, pg_temp AS $$
BEGIN
    PERFORM movrec._needs_cli('evaluate()', format('movrec evaluate %s', model_id));
END $$;
COMMENT ON FUNCTION movrec._evaluate(bigint, regclass) IS
    'Portable install: evaluation runs in the CLI (`movrec evaluate ID`); raises 0A000';
