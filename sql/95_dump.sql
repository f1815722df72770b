-- pg_dump keeps what users own.  Tables an extension script creates are the extension's, and
-- pg_dump leaves their rows out unless the script registers them: under CREATE EXTENSION (or
-- ALTER EXTENSION UPDATE) every table and sequence of schemas movrec and model is registered.
-- `movrec install` makes ordinary tables, which pg_dump keeps anyway.
--   staging.*   not registered: raw rows of the last file load, reloadable from the files
--               (`movrec load`), and as large as the files themselves.
--   etl.*       work tables, made by the ETL stages at run time, so not extension members:
--               pg_dump keeps them like any table.
--   movrec.installs  only rows that are not the extension script's own: a restore runs the
--               script again, which records the venv of the server restored into.
DO $$
DECLARE
    r record;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'movrec') THEN
        RETURN;  -- `movrec install`
    END IF;
    FOR r IN
        SELECT c.oid::regclass AS rel, c.relkind
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e'
        JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'movrec'
        WHERE n.nspname IN ('movrec', 'model') AND c.relkind IN ('r', 'S')
        ORDER BY 1
    LOOP
        PERFORM pg_extension_config_dump(r.rel,
            CASE WHEN r.rel = 'movrec.installs'::regclass THEN 'WHERE sql_sha256 <> ''extension''' ELSE '' END);
    END LOOP;
END $$;
