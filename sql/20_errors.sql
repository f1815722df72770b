-- Errors of the front doors, in both installs.

-- PL/Python reports an uncaught error as "plpy.Error: message" (or "spiexceptions.X: ...")
-- with the Python traceback as context.  Front doors over PL/Python catch it and raise it
-- again through this, so the caller sees the message, SQLSTATE, hint and detail alone.
CREATE OR REPLACE FUNCTION movrec._reraise(msg text, state text, hint text, detail text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    msg := regexp_replace(msg, '^(plpy\.Error|spiexceptions\.[A-Za-z]+): ', '');
    IF coalesce(hint, '') <> '' AND coalesce(detail, '') <> '' THEN
        RAISE EXCEPTION USING MESSAGE = msg, ERRCODE = state, HINT = hint, DETAIL = detail;
    ELSIF coalesce(hint, '') <> '' THEN
        RAISE EXCEPTION USING MESSAGE = msg, ERRCODE = state, HINT = hint;
    ELSIF coalesce(detail, '') <> '' THEN
        RAISE EXCEPTION USING MESSAGE = msg, ERRCODE = state, DETAIL = detail;
    END IF;
    RAISE EXCEPTION USING MESSAGE = msg, ERRCODE = state;
END $$;
COMMENT ON FUNCTION movrec._reraise(text, text, text, text) IS
    'Raises an error again without PL/Python''s "plpy.Error: " prefix and traceback (for front doors)';
