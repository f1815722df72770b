-- The SQL surface as the catalog shows it: every function and table in the movrec and model
-- schemas carries a comment, and nothing is granted to PUBLIC.  Each query lists offenders.

-- functions and procedures without a COMMENT
SELECT p.oid::regprocedure AS uncommented
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname IN ('movrec', 'model') AND obj_description(p.oid, 'pg_proc') IS NULL
ORDER BY 1::text;
-- (there are functions to check)
SELECT count(*) > 30 AS many_functions
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname IN ('movrec', 'model');

-- tables and views without a COMMENT
SELECT c.oid::regclass AS uncommented
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname IN ('movrec', 'model') AND c.relkind IN ('r', 'p', 'v', 'm')
  AND obj_description(c.oid, 'pg_class') IS NULL
ORDER BY 1::text;

-- functions and procedures PUBLIC may execute
SELECT p.oid::regprocedure AS executable_by_public
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname IN ('movrec', 'model') AND has_function_privilege('public', p.oid, 'EXECUTE')
ORDER BY 1::text;

-- tables and views PUBLIC has any privilege on, and the schemas themselves
SELECT c.oid::regclass AS public_table, a.privilege_type
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
     aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
WHERE n.nspname IN ('movrec', 'model') AND c.relkind IN ('r', 'p', 'v', 'm') AND a.grantee = 0
ORDER BY 1::text, 2;
SELECT nspname, has_schema_privilege('public', oid, 'USAGE') AS public_usage,
       has_schema_privilege('public', oid, 'CREATE') AS public_create
FROM pg_namespace WHERE nspname IN ('movrec', 'model') ORDER BY 1;

-- the application role reaches the documented front doors
SELECT fn, has_function_privilege('movrec_user', fn, 'EXECUTE') AS movrec_user
FROM unnest(ARRAY['movrec.recommend(integer, integer, text[], integer, integer)',
                  'movrec.predict(integer, integer)', 'movrec.predict(integer[], integer[])',
                  'movrec.rate(integer, integer, real)', 'movrec.similar_movies(integer, integer)',
                  'movrec.explain(integer, integer, integer)']) fn;
SELECT fn, has_function_privilege('movrec_user', fn, 'EXECUTE') AS movrec_user,
       has_function_privilege('movrec_admin', fn, 'EXECUTE') AS movrec_admin
FROM unnest(ARRAY['movrec.train(text, jsonb, boolean)', 'movrec.deploy(bigint)']) fn;
