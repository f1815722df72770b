-- The portable install has no PL/Python to load: doctor() checks what it runs on instead.

CREATE OR REPLACE FUNCTION movrec.doctor()
RETURNS TABLE (check_name text, ok boolean, detail text, fix text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
DECLARE
    pgvector text := (SELECT extversion FROM pg_extension WHERE extname = 'vector');
    champ bigint := (SELECT d.model_id FROM model.deployments d ORDER BY d.deployment_id DESC LIMIT 1);
BEGIN
    check_name := 'install'; ok := true;
    detail := 'portable (plpgsql and pgvector; training and the other jobs run in the CLI)'; fix := NULL;
    RETURN NEXT;
    check_name := 'pgvector'; ok := string_to_array(pgvector, '.')::int[] >= '{0,8}';
    detail := 'pgvector ' || coalesce(pgvector, 'missing');
    fix := CASE WHEN NOT ok THEN 'recommend_search = hnsw needs pgvector 0.8 (iterative scans): ALTER EXTENSION vector UPDATE' END;
    RETURN NEXT;
    check_name := 'champion'; ok := champ IS NOT NULL;
    detail := coalesce('model ' || champ, 'no model is deployed: recommend() serves the popular fallback');
    fix := CASE WHEN NOT ok THEN 'movrec train --dsn ...' END;
    RETURN NEXT;
    check_name := 'serving vectors';
    ok := champ IS NULL OR (SELECT count(*) FROM model.movie_serving_vectors v WHERE v.model_id = champ)
                           = (SELECT count(*) FROM model.movie_latent_attributes a WHERE a.model_id = champ);
    detail := (SELECT count(*) FROM model.movie_serving_vectors)::text || ' movies in model.movie_serving_vectors';
    fix := CASE WHEN NOT ok THEN 'SELECT movrec.publish_serving_vectors()' END;
    RETURN NEXT;
END $$;
COMMENT ON FUNCTION movrec.doctor() IS
    'Checks the portable install: pgvector version (0.8 for iterative scans), the champion, its serving vectors; '
    'each problem with its fix';
