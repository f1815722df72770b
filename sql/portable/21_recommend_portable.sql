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
-- A denser graph than pgvector's default (m 16, ef_construction 64): inner products of trained
-- vectors are hard for HNSW, and with these the same recall takes a smaller ef_search, which
-- costs less than the denser graph adds (27k movies: recall@10 0.94 at ef_search 40 with the
-- default, 0.99 with these; 0.976 with the default took ef_search 100 at 1.5x the time).
CREATE INDEX IF NOT EXISTS movie_serving_vectors_ranking_hnsw_idx
    ON model.movie_serving_vectors USING hnsw (ranking vector_ip_ops) WITH (m = 32, ef_construction = 128);
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

-- The model source of recommend(): the best `want` movies for q = [u | 1] among those not
-- excluded and passing the filters, each predicted (base - (rating <#> q)) >= min_pred.
-- exact orders every candidate; hnsw walks the index with an iterative scan until `want`
-- rows pass, then orders those exactly (relaxed order: the scan's own order is approximate).
-- The caller reads everything else (champion, settings, seen list) once, in one statement:
-- each statement here costs as much as a short query.  The function's SET clauses scope the
-- scan's settings to this call (restored on return, whatever the caller had).
DROP FUNCTION IF EXISTS movrec._recommend_model(bigint, vector, double precision, integer, integer[], text[], integer,
                                                integer, double precision);
CREATE OR REPLACE FUNCTION movrec._recommend_model(
    champ bigint, q vector, base double precision, has_ranking boolean, hnsw_ef integer, want integer,
    excluded integer[], lg text[], min_year integer, max_year integer, min_pred double precision)
RETURNS TABLE (movie_id integer, title text, score real, predicted_rating real)
LANGUAGE plpgsql STABLE SET search_path = movrec, model, public, pg_temp
    SET hnsw.iterative_scan = 'relaxed_order' SET hnsw.max_scan_tuples = 1000000 SET hnsw.ef_search = 40 AS $$
#variable_conflict use_column
BEGIN
    IF hnsw_ef IS NOT NULL THEN
        IF greatest(hnsw_ef, want) <> 40 THEN  -- 40: the SET clause's, movrec.settings' default
            PERFORM set_config('hnsw.ef_search', greatest(hnsw_ef, want)::text, true);
        END IF;
        IF lg IS NOT NULL OR min_year IS NOT NULL OR max_year IS NOT NULL THEN
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
        ELSIF want <= 10 THEN
            -- LIMIT a constant: the plan cache keeps one generic plan (the index scan) instead of
            -- planning each call (about as long as the scan itself).  An unknown LIMIT makes the
            -- generic plan a sort of every vector.  The 10 found are ordered exactly, the best
            -- `want` kept.
            RETURN QUERY
                WITH found AS MATERIALIZED (
                    SELECT v.movie_id, v.ranking <#> q AS d, base - (v.rating <#> q) AS p
                    FROM model.movie_serving_vectors v
                    WHERE v.model_id = champ AND v.movie_id <> ALL (excluded) AND base - (v.rating <#> q) >= min_pred
                    ORDER BY v.ranking <#> q
                    LIMIT 10)
                SELECT f.movie_id, m.title, (CASE WHEN has_ranking THEN -f.d ELSE f.p END)::real,
                       least(greatest(f.p, 0.5), 5.0)::real
                FROM found f JOIN movrec.movies m ON m.movie_id = f.movie_id
                ORDER BY f.d, f.movie_id
                LIMIT want;
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
        RETURN;
    END IF;
    -- exact: every vector scored once, in a subquery (OFFSET 0) so that only numbers, not
    -- vectors, reach the join with the catalogue and the top-k sort
    IF lg IS NOT NULL OR min_year IS NOT NULL OR max_year IS NOT NULL THEN
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
COMMENT ON FUNCTION movrec._recommend_model(bigint, vector, double precision, boolean, integer, integer, integer[],
                                            text[], integer, integer, double precision) IS
    'Portable recommend()''s model source: the best movies for q = [user vector | 1] (exact scan; HNSW iterative '
    'scan with this ef_search when hnsw_ef is not NULL), predicted base - (rating <#> q) >= min_pred, lower-case '
    'genres and years applied';

-- The champion's item-item weights (movrec.item_item), times its blend: a hybrid's ranking adds
-- the weights of the movies the user rated.  Published at every deploy from model.registry.item_item
-- (the CLI's deploy: movrec.registry.deploy_model); no rows for a champion without weights.
CREATE TABLE IF NOT EXISTS model.movie_neighbours (
    movie_id     integer NOT NULL,
    neighbour_id integer NOT NULL,
    model_id     bigint NOT NULL,
    weight       real NOT NULL,
    PRIMARY KEY (movie_id, neighbour_id)
);
COMMENT ON TABLE model.movie_neighbours IS
    'Portable install: the champion''s item-item weights (rated movie_id adds weight to neighbour_id''s ranking '
    'score); rebuilt at every deploy from model.registry.item_item';

-- The model source of recommend() for a champion with item-item weights: the ranking score
-- -(ranking <#> q) plus the sum of the weights of the movies in `seen`, so every candidate is
-- scored (exact: the HNSW index orders the inner product alone); as _recommend_model otherwise.
CREATE OR REPLACE FUNCTION movrec._recommend_item_item(
    champ bigint, q vector, base double precision, want integer, excluded integer[], seen integer[],
    lg text[], min_year integer, max_year integer, min_pred double precision)
RETURNS TABLE (movie_id integer, title text, score real, predicted_rating real)
LANGUAGE sql STABLE SET search_path = movrec, model, public, pg_temp AS $$
    WITH ii AS (
        SELECT n.neighbour_id, sum(n.weight::float8) AS s
        FROM model.movie_neighbours n
        WHERE n.movie_id = ANY (seen) AND n.model_id = champ
        GROUP BY n.neighbour_id
    ), scored AS (
        SELECT v.movie_id, -(v.ranking <#> q) + coalesce(ii.s, 0) AS d, base - (v.rating <#> q) AS p
        FROM model.movie_serving_vectors v LEFT JOIN ii ON ii.neighbour_id = v.movie_id
        WHERE v.model_id = champ AND v.movie_id <> ALL (excluded)
        OFFSET 0
    )
    SELECT s.movie_id, m.title, s.d::real, least(greatest(s.p, 0.5), 5.0)::real
    FROM scored s JOIN movrec.movies m ON m.movie_id = s.movie_id
    WHERE s.p >= min_pred
      AND (lg IS NULL OR EXISTS (SELECT FROM unnest(m.genres) g WHERE lower(g) = ANY (lg)))
      AND (min_year IS NULL OR m.year >= min_year) AND (max_year IS NULL OR m.year <= max_year)
    ORDER BY s.d DESC, s.movie_id
    LIMIT want
$$;
COMMENT ON FUNCTION movrec._recommend_item_item(bigint, vector, double precision, integer, integer[], integer[],
                                                text[], integer, integer, double precision) IS
    'Portable recommend()''s model source for a champion with item-item weights: ranking plus the rated movies'' '
    'weights (model.movie_neighbours), exact, predicted base - (rating <#> q) >= min_pred, filters applied';

CREATE OR REPLACE FUNCTION movrec._recommend(user_id integer, k integer, genres text[], min_year integer,
                                             max_year integer)
RETURNS TABLE (movie_id integer, title text, score real, predicted_rating real, source text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
#variable_conflict use_column
DECLARE
    uid constant integer := user_id;
    c record;
    own boolean;
    q vector;
    chosen integer[];
    got integer := 0;  -- rows returned so far (not n: a column of the popular query)
    min_pred double precision := coalesce(nullif(current_setting('movrec.min_predicted_rating', true), '')::float8, 3);
    lg text[];
    unknown text[];
    r record;
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
    -- the champion, its numbers, the user's vector of it, the search setting and what the
    -- user rated: one statement
    SELECT d.model_id AS champ, g.global_mean AS mu, g.serving_ranking IS NOT NULL AS has_ranking,
           g.default_embedding, g.default_bias, a.embedding AS u, a.bias AS b_u,
           CASE WHEN s.recommend_search = 'hnsw' THEN s.hnsw_ef_search END AS hnsw_ef,
           (SELECT coalesce(array_agg(w.movie_id), '{}') FROM movrec.watch_events w WHERE w.user_id = uid) AS seen,
           g.serving_ranking IS NOT NULL
               AND EXISTS (SELECT FROM model.movie_neighbours n WHERE n.model_id = d.model_id) AS item_item
    INTO c
    FROM movrec.settings s
    LEFT JOIN (SELECT d.model_id FROM model.deployments d ORDER BY d.deployment_id DESC LIMIT 1) d ON true
    LEFT JOIN model.registry g ON g.model_id = d.model_id
    LEFT JOIN model.user_latent_attributes a ON a.user_id = uid AND a.model_id = d.model_id;
    own := c.u IS NOT NULL;
    chosen := c.seen;
    -- 1. the user's own vector
    IF own THEN
        q := (c.u::real[] || 1::real)::vector;
        FOR r IN SELECT * FROM movrec._recommend_model(c.champ, q, c.mu + c.b_u, c.has_ranking, c.hnsw_ef, k,
                                                       chosen, lg, min_year, max_year, min_pred)
                 WHERE NOT c.item_item
                 UNION ALL
                 SELECT * FROM movrec._recommend_item_item(c.champ, q, c.mu + c.b_u, k, chosen, c.seen, lg,
                                                           min_year, max_year, min_pred)
                 WHERE c.item_item
        LOOP
            chosen := chosen || r.movie_id;
            got := got + 1;
            movie_id := r.movie_id; title := r.title; score := r.score; predicted_rating := r.predicted_rating;
            source := 'model';
            RETURN NEXT;
        END LOOP;
        IF got >= k THEN
            RETURN;  -- the usual case: the fallbacks below have nothing to fill
        END IF;
    END IF;
    -- 2. Pearson CF rows; with the user's own vector, movies it predicts below min_pred are skipped
    FOR r IN
        SELECT x.movie_id, m.title, x.score FROM model.user_recommendation x
        JOIN movrec.movies m ON m.movie_id = x.movie_id
        LEFT JOIN model.movie_serving_vectors v ON v.movie_id = x.movie_id AND v.model_id = c.champ AND own
        WHERE x.user_id = uid AND x.movie_id <> ALL (chosen)
          AND (v.movie_id IS NULL OR c.mu + c.b_u - (v.rating <#> q) >= min_pred)
          AND (lg IS NULL OR EXISTS (SELECT FROM unnest(m.genres) g WHERE lower(g) = ANY (lg)))
          AND (min_year IS NULL OR m.year >= min_year) AND (max_year IS NULL OR m.year <= max_year)
        ORDER BY x.rank
        LIMIT k - got
    LOOP
        chosen := chosen || r.movie_id;
        got := got + 1;
        movie_id := r.movie_id; title := r.title; score := r.score;
        predicted_rating := least(greatest(r.score, 0.5), 5.0); source := 'cf';
        RETURN NEXT;
    END LOOP;
    -- 3. a rater without a vector of the champion: the default (mean) vector
    IF NOT own AND c.champ IS NOT NULL AND cardinality(c.seen) > 0 AND got < k THEN
        FOR r IN
            SELECT * FROM movrec._recommend_model(c.champ, (c.default_embedding || 1::real)::vector,
                                                  c.mu + c.default_bias, c.has_ranking, c.hnsw_ef, k - got, chosen,
                                                  lg, min_year, max_year, min_pred)
            WHERE NOT c.item_item
            UNION ALL
            SELECT * FROM movrec._recommend_item_item(c.champ, (c.default_embedding || 1::real)::vector,
                                                      c.mu + c.default_bias, k - got, chosen, c.seen, lg,
                                                      min_year, max_year, min_pred)
            WHERE c.item_item
        LOOP
            chosen := chosen || r.movie_id;
            got := got + 1;
            movie_id := r.movie_id; title := r.title; score := r.score; predicted_rating := r.predicted_rating;
            source := 'model';
            RETURN NEXT;
        END LOOP;
    END IF;
    -- 4. popular: damped mean rating (sum + 10 mu) / (n + 10), from model.movie_rating_stats,
    -- or from the ratings themselves where the statistics were never written (no deploy yet)
    IF got < k THEN
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
            LEFT JOIN model.movie_serving_vectors v ON v.movie_id = st.movie_id AND v.model_id = c.champ AND own
            WHERE st.movie_id <> ALL (chosen)
              AND (v.movie_id IS NULL OR c.mu + c.b_u - (v.rating <#> q) >= min_pred)
              AND (lg IS NULL OR EXISTS (SELECT FROM unnest(m.genres) g WHERE lower(g) = ANY (lg)))
              AND (min_year IS NULL OR m.year >= min_year) AND (max_year IS NULL OR m.year <= max_year)
            ORDER BY 3 DESC, st.movie_id
            LIMIT k - got
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
