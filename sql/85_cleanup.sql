-- Removing movrec removes what it left outside its schemas: its pg_cron jobs (cron.job rows
-- named movrec-* that run in this database) and this database's shared serving files under
-- /dev/shm/movrec-<uid>/.  `movrec uninstall` (with or without --drop-data) calls
-- movrec.cleanup(); an extension install runs it from an event trigger on DROP EXTENSION.

CREATE OR REPLACE FUNCTION movrec.cleanup() RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
DECLARE
    n_jobs integer := 0;
    n_files integer := 0;
    job bigint;
BEGIN
    -- pg_cron keeps its jobs in cron.database_name only: elsewhere movrec never scheduled any
    -- (cf_schedule refuses), so there is nothing to remove
    IF to_regclass('cron.job') IS NOT NULL THEN
        FOR job IN SELECT jobid FROM cron.job WHERE jobname LIKE 'movrec-%' AND database = current_database() LOOP
            PERFORM cron.unschedule(job);
            n_jobs := n_jobs + 1;
        END LOOP;
    END IF;
    -- Files are a cache: failing to remove them (a broken venv, an unreadable directory) must
    -- not block a removal; the files of a database that is gone are never mapped again.
    BEGIN
        n_files := movrec._remove_shared_files();
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'movrec.cleanup(): shared serving files not removed: %', SQLERRM;
    END;
    RETURN format('%s pg_cron job(s) and %s shared serving file(s) removed', n_jobs, n_files);
END $$;
COMMENT ON FUNCTION movrec.cleanup() IS
    'Removes movrec''s pg_cron jobs of this database (cron.job rows named movrec-*) and its shared serving files; '
    'run by `movrec uninstall` and, for the extension, on DROP EXTENSION movrec. Returns what it removed. The '
    'cron jobs go with the transaction; the files go at once (a rollback leaves them to be rebuilt on demand)';

CREATE OR REPLACE FUNCTION movrec.on_drop_extension() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
BEGIN
    -- ddl_command_start does not say which extension goes: the statement does.  A false match
    -- (another extension's DROP in a query string that names movrec) costs only a rebuild
    -- of the cache files and the cron jobs' removal rolls back with a failed DROP.
    IF current_query() ~* 'drop\s+extension\s+(if\s+exists\s+)?([a-z0-9_"]+\s*,\s*)*("movrec"|movrec\M)' THEN
        RAISE NOTICE '%', movrec.cleanup();
    END IF;
END $$;
COMMENT ON FUNCTION movrec.on_drop_extension() IS
    'Event trigger (ddl_command_start of DROP EXTENSION): runs movrec.cleanup() before DROP EXTENSION movrec';

-- Only in an extension install: there DROP EXTENSION is the way out, and the trigger goes with
-- the extension.  `movrec install` databases are removed by `movrec uninstall`, which calls
-- movrec.cleanup() itself (and an event trigger needs a superuser to create).
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_extension WHERE extname = 'movrec')
       AND NOT EXISTS (SELECT FROM pg_event_trigger WHERE evtname = 'movrec_drop_extension') THEN
        CREATE EVENT TRIGGER movrec_drop_extension ON ddl_command_start WHEN TAG IN ('DROP EXTENSION')
            EXECUTE FUNCTION movrec.on_drop_extension();
        COMMENT ON EVENT TRIGGER movrec_drop_extension IS
            'Removes movrec''s pg_cron jobs and shared serving files before DROP EXTENSION movrec (movrec.cleanup())';
    END IF;
END $$;
