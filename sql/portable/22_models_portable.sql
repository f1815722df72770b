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

-- rollback() and deploy_best() choose in SQL, as the full install does (sql/22_models.sql:
-- _rollback_plan, _best_model, so their errors are the full install's), and then need the
-- deploy, which loads a checkpoint with torch: `movrec deploy --rollback` / `--best` run
-- the same choice and the deploy in the CLI.  These replace the full install's bodies.
CREATE OR REPLACE FUNCTION movrec.rollback() RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
BEGIN
    PERFORM movrec._require_primary('rollback()');
    PERFORM movrec._rollback_plan();
    PERFORM movrec._needs_cli('rollback()', 'movrec deploy --rollback');
    RETURN NULL;
END $$;
COMMENT ON FUNCTION movrec.rollback() IS
    'Goes one step back through the deployment history (retirements skipped); in the portable install the deploy '
    'runs in the CLI: after the full install''s checks (P0002 none to go back to, 55000 another catalogue) it '
    'raises 0A000 naming `movrec deploy --rollback`';

CREATE OR REPLACE FUNCTION movrec.deploy_best(metric text DEFAULT 'val_rmse') RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
BEGIN
    PERFORM movrec._require_primary('deploy_best()');
    PERFORM movrec._best_model(metric);
    PERFORM movrec._needs_cli('deploy_best()', format('movrec deploy --best %s', metric));
    RETURN NULL;
END $$;
COMMENT ON FUNCTION movrec.deploy_best(text) IS
    'Deploys the registered model with the best value of a metric; in the portable install the deploy runs in the '
    'CLI: after the full install''s checks (P0002 no model has it, 55000 another catalogue) it raises 0A000 naming '
    '`movrec deploy --best METRIC`';
