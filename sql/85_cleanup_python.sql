CREATE OR REPLACE FUNCTION movrec._remove_shared_files() RETURNS integer
LANGUAGE plpython3u VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
GD.get("movrec") or plpy.execute("SELECT movrec._activate()")
from movrec import cleanup; return cleanup.remove_shared_files()
$$;
COMMENT ON FUNCTION movrec._remove_shared_files() IS
    'Deletes this database''s shared serving files (movrec-<system id>-<database oid>-*) from /dev/shm/movrec-<uid>/; '
    'returns how many. Implementation of movrec.cleanup()';
