-- The portable install's recommend() and predict(): plpgsql over pgvector, no PL/Python.
-- The front doors (argument checks, errors) are the full install's, sql/21_recommend.sql;
-- these are the implementations they call, with the numpy ones' results
-- (plpython/movrec/serving/recommend.py and predict.py define them).

-- What serving reads, one row per movie of the champion: the rating side [vector | bias]
-- and the order side [ranking vector | prior] (the rating side again for a champion without
-- a ranking head), so that one inner product with [u | 1] gives either.  Rebuilt from the
-- published vectors and the registry at every deploy (movrec.publish_serving_vectors()).
CREATE TABLE IF NOT EXISTS model.movie_serving_vectors (
    movie_id integer PRIMARY KEY,
    model_id bigint NOT NULL,
    rating   vector(101) NOT NULL,
    ranking  vector(101) NOT NULL
);
COMMENT ON TABLE model.movie_serving_vectors IS
    'Portable install: the champion''s movies as recommend() scores them, rating = [vector | bias] and ranking = '
    '[ranking vector | prior] (= rating without a ranking head); rebuilt at every deploy';
-- recommend_search = hnsw: ORDER BY ranking <#> [u | 1] walks this index (iterative scan).
CREATE INDEX IF NOT EXISTS movie_serving_vectors_ranking_hnsw_idx
    ON model.movie_serving_vectors USING hnsw (ranking vector_ip_ops);
COMMENT ON INDEX model.movie_serving_vectors_ranking_hnsw_idx IS
    'HNSW (inner product) over the order side: recommend() when movrec.settings.recommend_search = hnsw';

-- float32 little-endian values of a bytea (the registry's serving blobs) as real[].
CREATE OR REPLACE FUNCTION movrec._float4s(b bytea) RETURNS real[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog AS $$
    SELECT coalesce(array_agg((CASE WHEN s THEN -1 ELSE 1 END
                               * CASE WHEN e = 0 THEN m * 2::float8 ^ -149
                                      WHEN e = 255 THEN 'NaN'::float8
                                      ELSE (8388608 + m) * 2::float8 ^ (e - 150) END)::real ORDER BY i), '{}')
    FROM (SELECT i, get_byte(b, i + 3) >= 128 AS s,
                 ((get_byte(b, i + 3) & 127) << 1) | (get_byte(b, i + 2) >> 7) AS e,
                 ((get_byte(b, i + 2) & 127) << 16) | (get_byte(b, i + 1) << 8) | get_byte(b, i) AS m
          FROM generate_series(0, length(b) - 4, 4) AS i) bits
$$;
COMMENT ON FUNCTION movrec._float4s(bytea) IS
    'The float32 (little-endian) values of a bytea as real[]: model.registry''s serving blobs read in SQL';

CREATE OR REPLACE FUNCTION movrec.publish_serving_vectors() RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
DECLARE
    champ bigint := (SELECT d.model_id FROM model.deployments d ORDER BY d.deployment_id DESC LIMIT 1);
    blob bytea;
    width integer;
    n bigint;
BEGIN
    DELETE FROM model.movie_serving_vectors;
    IF champ IS NULL THEN
        RETURN 0;
    END IF;
    SELECT r.serving_ranking, r.dim + 1 INTO blob, width FROM model.registry r WHERE r.model_id = champ;
    INSERT INTO model.movie_serving_vectors (movie_id, model_id, rating, ranking)
    SELECT a.movie_id, a.model_id, (a.embedding::real[] || a.bias)::vector,
           coalesce(x.ranking::vector,
                    movrec._float4s(substring(blob FROM (p.pos::integer - 1) * width * 4 + 1 FOR width * 4))::vector,
                    (a.embedding::real[] || a.bias)::vector)
    FROM model.movie_latent_attributes a
    LEFT JOIN model.movie_latent_extra x ON x.model_id = a.model_id AND x.movie_id = a.movie_id
    LEFT JOIN (SELECT ids.id, ids.pos FROM model.registry r,
                      unnest(movrec._model_movie_ids(r.serving_movie_ids)) WITH ORDINALITY AS ids (id, pos)
               WHERE r.model_id = champ AND blob IS NOT NULL) p ON p.id = a.movie_id
    WHERE a.model_id = champ;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;
COMMENT ON FUNCTION movrec.publish_serving_vectors() IS
    'Portable install: rebuilds model.movie_serving_vectors for the champion from model.movie_latent_attributes, '
    'its ranking blob and model.movie_latent_extra; runs at every deploy and after embed_new_movies. Returns movies';

CREATE OR REPLACE FUNCTION movrec.serving_vectors_on_deploy() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
BEGIN
    IF TG_RELID <> 'model.deployments'::regclass OR current_setting('application_name') = 'pg_restore' THEN
        IF NOT movrec._trigger_applies('movrec.serving_vectors_on_deploy()', TG_RELID, 'model.deployments') THEN
            RETURN NULL;  -- a restore replays rows whose effects the dump holds
        END IF;
    END IF;
    PERFORM movrec.publish_serving_vectors();
    RETURN NULL;
END $$;
COMMENT ON FUNCTION movrec.serving_vectors_on_deploy() IS
    'Trigger (portable install): a deploy or rollback rebuilds model.movie_serving_vectors';
-- named to fire after movrec_serving_on_deploy, which adds the champion's extra movies back
CREATE OR REPLACE TRIGGER movrec_serving_vectors_on_deploy
    AFTER INSERT ON model.deployments FOR EACH STATEMENT EXECUTE FUNCTION movrec.serving_vectors_on_deploy();
COMMENT ON TRIGGER movrec_serving_vectors_on_deploy ON model.deployments IS
    'Portable install: serving follows the champion (movrec.serving_vectors_on_deploy)';

-- The model source of recommend(): the best `want` movies for [u | 1] among those not
-- excluded and passing the filters, each predicted >= min_pred.  exact orders every
-- candidate; hnsw walks the index with an iterative scan until `want` rows pass, then
-- orders those exactly (relaxed order: the scan's own order is approximate).
CREATE OR REPLACE FUNCTION movrec._recommend_model(
    champ bigint, u vector, b_u double precision, want integer, excluded integer[], genres text[],
    min_year integer, max_year integer, min_pred double precision)
RETURNS TABLE (movie_id integer, title text, score real, predicted_rating real)
LANGUAGE plpgsql STABLE SET search_path = movrec, model, public, pg_temp AS $$
#variable_conflict use_column
DECLARE
    q vector := (u::real[] || 1::real)::vector;
    -- predicted rating = base - (rating <#> q); the ranking score = -(ranking <#> q) with a
    -- ranking head, else the predicted rating (whose order is the same)
    base double precision := (SELECT r.global_mean FROM model.registry r WHERE r.model_id = champ) + b_u;
    has_ranking boolean := (SELECT r.serving_ranking IS NOT NULL FROM model.registry r WHERE r.model_id = champ);
    lg text[] := (SELECT array_agg(lower(g)) FROM unnest(genres) g);
    filtered boolean := genres IS NOT NULL OR min_year IS NOT NULL OR max_year IS NOT NULL;
    mode text;
    ef integer;
BEGIN
    SELECT s.recommend_search, s.hnsw_ef_search INTO mode, ef FROM movrec.settings s;
    IF mode = 'hnsw' THEN
        PERFORM set_config('hnsw.iterative_scan', 'relaxed_order', true),
                set_config('hnsw.ef_search', greatest(ef, want)::text, true),
                set_config('hnsw.max_scan_tuples', '1000000', true);
        IF filtered THEN
            RETURN QUERY
                WITH found AS MATERIALIZED (
                    SELECT v.movie_id, m.title, v.ranking <#> q AS d, base - (v.rating <#> q) AS p
                    FROM model.movie_serving_vectors v JOIN movrec.movies m ON m.movie_id = v.movie_id
                    WHERE v.model_id = champ AND v.movie_id <> ALL (excluded) AND base - (v.rating <#> q) >= min_pred
                      AND (lg IS NULL OR EXISTS (SELECT FROM unnest(m.genres) g WHERE lower(g) = ANY (lg)))
                      AND (min_year IS NULL OR m.year >= min_year) AND (max_year IS NULL OR m.year <= max_year)
                    ORDER BY v.ranking <#> q
                    LIMIT want)
                SELECT f.movie_id, f.title, (CASE WHEN has_ranking THEN -f.d ELSE f.p END)::real,
                       least(greatest(f.p, 0.5), 5.0)::real
                FROM found f ORDER BY f.d, f.movie_id;
        ELSE
            RETURN QUERY
                WITH found AS MATERIALIZED (
                    SELECT v.movie_id, v.ranking <#> q AS d, base - (v.rating <#> q) AS p
                    FROM model.movie_serving_vectors v
                    WHERE v.model_id = champ AND v.movie_id <> ALL (excluded) AND base - (v.rating <#> q) >= min_pred
                    ORDER BY v.ranking <#> q
                    LIMIT want)
                SELECT f.movie_id, m.title, (CASE WHEN has_ranking THEN -f.d ELSE f.p END)::real,
                       least(greatest(f.p, 0.5), 5.0)::real
                FROM found f JOIN movrec.movies m ON m.movie_id = f.movie_id
                ORDER BY f.d, f.movie_id;
        END IF;
        PERFORM set_config('hnsw.iterative_scan', 'off', true);
        RETURN;
    END IF;
    -- exact: every vector scored once, in a subquery (OFFSET 0) so that only numbers, not
    -- vectors, reach the join with the catalogue and the top-k sort
    IF filtered THEN
        RETURN QUERY
            SELECT s.movie_id, m.title, (CASE WHEN has_ranking THEN -s.d ELSE base - s.r END)::real,
                   least(greatest(base - s.r, 0.5), 5.0)::real
            FROM (SELECT v.movie_id, v.ranking <#> q AS d, v.rating <#> q AS r FROM model.movie_serving_vectors v
                  WHERE v.model_id = champ AND v.movie_id <> ALL (excluded) OFFSET 0) s
            JOIN movrec.movies m ON m.movie_id = s.movie_id
            WHERE base - s.r >= min_pred
              AND (lg IS NULL OR EXISTS (SELECT FROM unnest(m.genres) g WHERE lower(g) = ANY (lg)))
              AND (min_year IS NULL OR m.year >= min_year) AND (max_year IS NULL OR m.year <= max_year)
            ORDER BY s.d, s.movie_id
            LIMIT want;
    ELSE
        -- the best `want`, then their titles (a movie deleted from the catalogue since is left
        -- out, as the numpy path does)
        RETURN QUERY
            SELECT t.movie_id, m.title, (CASE WHEN has_ranking THEN -t.d ELSE base - t.r END)::real,
                   least(greatest(base - t.r, 0.5), 5.0)::real
            FROM (SELECT s.movie_id, s.d, s.r
                  FROM (SELECT v.movie_id, v.ranking <#> q AS d, v.rating <#> q AS r FROM model.movie_serving_vectors v
                        WHERE v.model_id = champ AND v.movie_id <> ALL (excluded) OFFSET 0) s
                  WHERE base - s.r >= min_pred
                  ORDER BY s.d, s.movie_id
                  LIMIT want) t
            JOIN movrec.movies m ON m.movie_id = t.movie_id
            ORDER BY t.d, t.movie_id;
    END IF;
END $$;
COMMENT ON FUNCTION movrec._recommend_model(bigint, vector, double precision, integer, integer[], text[], integer,
                                            integer, double precision) IS
    'Portable recommend()''s model source: the best movies for a user vector (exact scan, or HNSW iterative scan '
    'when movrec.settings.recommend_search = hnsw), predicted >= min_pred, filters applied';

CREATE OR REPLACE FUNCTION movrec._recommend(user_id integer, k integer, genres text[], min_year integer,
                                             max_year integer)
RETURNS TABLE (movie_id integer, title text, score real, predicted_rating real, source text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
#variable_conflict use_column
DECLARE
    uid constant integer := user_id;
    champ bigint := (SELECT d.model_id FROM model.deployments d ORDER BY d.deployment_id DESC LIMIT 1);
    mu double precision;
    u vector;
    b_u double precision;
    q vector;
    own boolean := false;
    seen integer[];
    chosen integer[];
    min_pred double precision := coalesce(nullif(current_setting('movrec.min_predicted_rating', true), '')::float8, 3);
    lg text[];
    unknown text[];
    r record;
    pop_mu double precision;
BEGIN
    IF genres IS NOT NULL THEN  -- the numpy path's check: an unknown genre is an error
        lg := (SELECT array_agg(lower(g)) FROM unnest(genres) g);
        unknown := (SELECT array_agg(g ORDER BY o) FROM unnest(genres) WITH ORDINALITY AS x (g, o)
                    WHERE NOT EXISTS (SELECT FROM movrec.movies m, unnest(m.genres) mg WHERE lower(mg) = lower(x.g)));
        IF unknown IS NOT NULL THEN
            RAISE EXCEPTION 'unknown genre(s): %', array_to_string(unknown, ', ')
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'known genres: ' || (SELECT string_agg(DISTINCT mg, ', ') FROM movrec.movies m, unnest(m.genres) mg);
        END IF;
    END IF;
    seen := (SELECT coalesce(array_agg(w.movie_id), '{}') FROM movrec.watch_events w WHERE w.user_id = uid);
    chosen := seen;
    IF champ IS NOT NULL THEN
        SELECT r.global_mean INTO mu FROM model.registry r WHERE r.model_id = champ;
        SELECT a.embedding, a.bias INTO u, b_u FROM model.user_latent_attributes a
        WHERE a.user_id = uid AND a.model_id = champ;
        own := u IS NOT NULL;
    END IF;
    -- 1. the user's own vector
    IF own THEN
        FOR r IN SELECT * FROM movrec._recommend_model(champ, u, b_u, k, chosen, genres, min_year, max_year, min_pred)
        LOOP
            chosen := chosen || r.movie_id;
            movie_id := r.movie_id; title := r.title; score := r.score; predicted_rating := r.predicted_rating;
            source := 'model';
            RETURN NEXT;
        END LOOP;
        q := (u::real[] || 1::real)::vector;
    END IF;
    -- 2. Pearson CF rows; with the user's own vector, movies it predicts below min_pred are skipped
    IF cardinality(chosen) - cardinality(seen) < k THEN
        FOR r IN
            SELECT c.movie_id, m.title, c.score FROM model.user_recommendation c
            JOIN movrec.movies m ON m.movie_id = c.movie_id
            LEFT JOIN model.movie_serving_vectors v ON v.movie_id = c.movie_id AND v.model_id = champ AND own
            WHERE c.user_id = uid AND c.movie_id <> ALL (chosen)
              AND (v.movie_id IS NULL OR mu + b_u - (v.rating <#> q) >= min_pred)
              AND (lg IS NULL OR EXISTS (SELECT FROM unnest(m.genres) g WHERE lower(g) = ANY (lg)))
              AND (min_year IS NULL OR m.year >= min_year) AND (max_year IS NULL OR m.year <= max_year)
            ORDER BY c.rank
            LIMIT k - (cardinality(chosen) - cardinality(seen))
        LOOP
            chosen := chosen || r.movie_id;
            movie_id := r.movie_id; title := r.title; score := r.score;
            predicted_rating := least(greatest(r.score, 0.5), 5.0); source := 'cf';
            RETURN NEXT;
        END LOOP;
    END IF;
    -- 3. a rater without a vector of the champion: the default (mean) vector
    IF NOT own AND champ IS NOT NULL AND cardinality(seen) > 0 AND cardinality(chosen) - cardinality(seen) < k THEN
        FOR r IN
            SELECT x.* FROM model.registry g
            CROSS JOIN LATERAL movrec._recommend_model(champ, g.default_embedding::vector, g.default_bias,
                                                       k - (cardinality(chosen) - cardinality(seen)), chosen,
                                                       genres, min_year, max_year, min_pred) x
            WHERE g.model_id = champ
        LOOP
            chosen := chosen || r.movie_id;
            movie_id := r.movie_id; title := r.title; score := r.score; predicted_rating := r.predicted_rating;
            source := 'model';
            RETURN NEXT;
        END LOOP;
    END IF;
    -- 4. popular: damped mean rating (sum + 10 mu) / (n + 10), from model.movie_rating_stats,
    -- or from the ratings themselves where the statistics were never written (no deploy yet)
    IF cardinality(chosen) - cardinality(seen) < k THEN
        FOR r IN
            WITH stats AS (
                SELECT t.movie_id, t.n_ratings::float8 AS n, t.sum_ratings AS s FROM model.movie_rating_stats t
                UNION ALL
                SELECT w.movie_id, count(*)::float8, sum(w.rating::float8) FROM movrec.watch_events w
                WHERE NOT EXISTS (SELECT FROM model.movie_rating_stats) GROUP BY w.movie_id
            ), overall AS (
                SELECT coalesce(sum(s) / nullif(sum(n), 0), 3.0) AS mu FROM stats
            )
            SELECT st.movie_id, m.title, ((st.s + 10 * o.mu) / (st.n + 10)) AS score
            FROM stats st CROSS JOIN overall o JOIN movrec.movies m ON m.movie_id = st.movie_id
            LEFT JOIN model.movie_serving_vectors v ON v.movie_id = st.movie_id AND v.model_id = champ AND own
            WHERE st.movie_id <> ALL (chosen)
              AND (v.movie_id IS NULL OR mu + b_u - (v.rating <#> q) >= min_pred)
              AND (lg IS NULL OR EXISTS (SELECT FROM unnest(m.genres) g WHERE lower(g) = ANY (lg)))
              AND (min_year IS NULL OR m.year >= min_year) AND (max_year IS NULL OR m.year <= max_year)
            ORDER BY 3 DESC, st.movie_id
            LIMIT k - (cardinality(chosen) - cardinality(seen))
        LOOP
            movie_id := r.movie_id; title := r.title; score := r.score; predicted_rating := r.score;
            source := 'popular';
            RETURN NEXT;
        END LOOP;
    END IF;
END $$;
COMMENT ON FUNCTION movrec._recommend(integer, integer, text[], integer, integer) IS
    'Implementation of movrec.recommend() in the portable install (plpgsql + pgvector); call that instead';

CREATE OR REPLACE FUNCTION movrec._predict(user_id integer, movie_id integer) RETURNS real
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
DECLARE
    champ bigint := (SELECT d.model_id FROM model.deployments d ORDER BY d.deployment_id DESC LIMIT 1);
    p double precision;
BEGIN
    IF champ IS NULL THEN
        RAISE EXCEPTION 'no model is deployed' USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'train one: SELECT movrec.train(''mf'') or `movrec train`';
    END IF;
    SELECT r.global_mean + coalesce(a.bias, r.default_bias)
           - (v.rating <#> (coalesce(a.embedding::real[], r.default_embedding) || 1::real)::vector)
    INTO p
    FROM model.registry r
    JOIN model.movie_serving_vectors v ON v.movie_id = _predict.movie_id AND v.model_id = r.model_id
    LEFT JOIN model.user_latent_attributes a ON a.user_id = _predict.user_id AND a.model_id = r.model_id
    WHERE r.model_id = champ;
    IF p IS NULL THEN
        RAISE EXCEPTION 'movie % is not known to model %', movie_id, champ USING ERRCODE = 'no_data_found';
    END IF;
    RETURN least(greatest(p, 0.5), 5.0);
END $$;
COMMENT ON FUNCTION movrec._predict(integer, integer) IS
    'Implementation of movrec.predict() in the portable install; call that instead';

CREATE OR REPLACE FUNCTION movrec._predict_many(user_ids integer[], movie_ids integer[])
RETURNS TABLE (user_id integer, movie_id integer, predicted_rating real)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
    SELECT p.u, p.m,
           CASE WHEN v.movie_id IS NOT NULL THEN  -- NULL for a movie the champion does not know
               least(greatest(r.global_mean + coalesce(a.bias, r.default_bias)
                              - (v.rating <#> (coalesce(a.embedding::real[], r.default_embedding) || 1::real)::vector),
                              0.5), 5.0)::real END
    FROM unnest(user_ids, movie_ids) WITH ORDINALITY AS p (u, m, i)
    CROSS JOIN (SELECT g.* FROM model.registry g
                WHERE g.model_id = (SELECT d.model_id FROM model.deployments d ORDER BY d.deployment_id DESC LIMIT 1)) r
    LEFT JOIN model.movie_serving_vectors v ON v.movie_id = p.m AND v.model_id = r.model_id
    LEFT JOIN model.user_latent_attributes a ON a.user_id = p.u AND a.model_id = r.model_id
    ORDER BY p.i
$$;
COMMENT ON FUNCTION movrec._predict_many(integer[], integer[]) IS
    'Implementation of movrec.predict(int[], int[]) in the portable install';
