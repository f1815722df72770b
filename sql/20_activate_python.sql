-- Loading movrec into a backend, and checking what a backend sees.  PL/Python bodies in
-- every file stay one or two lines that call into the movrec package (plpython/movrec), so
-- the logic is testable outside PostgreSQL.  The first line of each body activates movrec
-- once per backend.  Untrusted-language functions are SECURITY DEFINER with a pinned
-- search_path, and read nothing a session can set.

-- _activate: the only body with logic.  It must run before numpy is imported:
-- BLAS reads its thread count at load time, and default threads make backends
-- spin against each other (a numpy top-k fell from 2,180 to 300 tps).
-- The venv comes from movrec.installs, which only the owner writes: site.addsitedir() runs
-- every .pth file in it as the server's OS user, so a path a session could choose would be
-- a path to superuser.  The thread count comes from movrec.settings for the same reason.
CREATE OR REPLACE FUNCTION movrec._activate() RETURNS text
LANGUAGE plpython3u SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
import os, site, sys
row = plpy.execute("""SELECT (SELECT threads FROM movrec.settings) AS threads,
                             (SELECT venv FROM movrec.installs WHERE venv IS NOT NULL
                              ORDER BY install_id DESC LIMIT 1) AS venv""")[0]
threads = str(row["threads"] or 1)
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = threads
venv = row["venv"]
if not venv:
    plpy.error("movrec has no venv pinned in this database", sqlstate="55000",
               hint="run `movrec install`, or as a superuser SELECT movrec.pin_venv('/path/to/venv')")
lib = os.path.join(venv, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}", "site-packages")
if not os.path.isdir(lib):
    plpy.error(f"the pinned venv {venv!r} has no {lib}", sqlstate="58P01",
               hint="rerun `movrec install` from the venv, or as a superuser SELECT movrec.pin_venv('/path/to/venv')")
if lib not in sys.path:
    site.addsitedir(lib)
try:
    import movrec.backend
except ImportError as e:
    plpy.error(f"cannot import movrec in this backend: {e}", sqlstate="58P01",
               hint=f"the pinned venv {venv!r} must hold movrec, readable by the server's OS user")
GD["movrec"] = movrec.backend.activate(threads=int(threads))
return GD["movrec"]
$$;
COMMENT ON FUNCTION movrec._activate() IS
    'Loads movrec into this backend once: caps BLAS threads (movrec.settings.threads), adds the venv pinned in '
    'movrec.installs to sys.path. Called by movrec''s own functions; nobody else may execute it';

-- Not SECURITY DEFINER: it writes movrec.installs with the caller's rights, and only the
-- owner (a superuser: the untrusted language needs one) may write that table.
CREATE OR REPLACE FUNCTION movrec.pin_venv(venv text) RETURNS text
LANGUAGE plpgsql VOLATILE SET search_path = movrec, pg_temp AS $$
BEGIN
    IF venv IS NULL OR venv !~ '^/' THEN
        RAISE EXCEPTION 'pin_venv(): venv must be an absolute path, got %', coalesce(venv, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO movrec.installs (version, sql_sha256, venv)
    SELECT coalesce((SELECT version FROM movrec.installs ORDER BY install_id DESC LIMIT 1), 'unknown'),
           'pin_venv', pin_venv.venv;
    RETURN venv;
END $$;
COMMENT ON FUNCTION movrec.pin_venv(text) IS
    'Pins the virtualenv that backends load movrec from (new backends use it). Owner or superuser only: '
    'the venv''s code runs as the server''s OS user';

CREATE OR REPLACE FUNCTION movrec.doctor()
RETURNS TABLE (check_name text, ok boolean, detail text, fix text)
LANGUAGE plpython3u VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
try:
    GD.get("movrec") or plpy.execute("SELECT movrec._activate()")
except plpy.SPIError as e:  # movrec cannot load: that is the finding, not an error of doctor()
    return [("venv", False, str(e), "movrec install (pins the venv of the CLI), or as a superuser SELECT movrec.pin_venv('/path/to/.venv')")]
from movrec import doctor; return doctor.checks()
$$;
COMMENT ON FUNCTION movrec.doctor() IS
    'Checks this backend: Python and package versions, torch/CUDA, pgvector, thread caps, venv; each problem with its fix';
