-- The portable install keeps no shared serving files: nothing to remove.

CREATE OR REPLACE FUNCTION movrec._remove_shared_files() RETURNS integer
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog AS $$
    SELECT 0
$$;
COMMENT ON FUNCTION movrec._remove_shared_files() IS
    'Portable install: no shared serving files exist, returns 0. Implementation of movrec.cleanup()';
