-- The portable install's refit (movrec.settings.online_update = refit): the rating trigger
-- (sql/25_online.sql, shared) calls movrec._online_refit(); here it is plpgsql over pgvector.
--
-- The same ridge fold-in as plpython/movrec/online.py (ridge_fold_in): the user's
-- x = [vector | bias] minimising sum_j (r_j - mu - b_j - [m_j | 1] . x)^2 + reg |x - x0|^2,
-- x0 the champion's default [vector | bias], movie side fixed.  Solved by conjugate gradients
-- on (X'X + reg I) x = X'y + reg x0, started at x0: each step is two passes of pgvector
-- arithmetic over the user's rated movies, and an exact solve of the 101 x 101 system would
-- be a million plpgsql operations.  float32 vectors: agrees with numpy's float64 solution to
-- about 1e-4 relative.

CREATE OR REPLACE FUNCTION movrec._scaled(v vector, s double precision) RETURNS vector
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog AS $$
    SELECT v OPERATOR(public.*) array_fill(s::real, ARRAY[public.vector_dims(v)])::public.vector
$$;
COMMENT ON FUNCTION movrec._scaled(vector, double precision) IS 'A vector times a number (pgvector has no scalar product)';

CREATE OR REPLACE FUNCTION movrec._online_refit(user_id integer, model_id bigint) RETURNS real[]
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
DECLARE
    mu double precision;
    x0 vector;
    reg double precision := (SELECT s.refit_reg FROM movrec.settings s);
    xs vector[];   -- [m_j | 1] per rated movie the model knows
    ys double precision[];  -- r_j - mu - b_j
    n integer;
    x vector;
    r vector;
    p vector;
    ap vector;
    rr double precision;
    rr_new double precision;
    alpha double precision;
    tol double precision;
    i integer := 0;
BEGIN
    SELECT g.global_mean, (g.default_embedding || g.default_bias)::vector INTO mu, x0
    FROM model.registry g WHERE g.model_id = _online_refit.model_id;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT array_agg((a.embedding::real[] || 1::real)::vector ORDER BY w.movie_id),
           array_agg(w.rating - mu - a.bias ORDER BY w.movie_id)
    INTO xs, ys
    FROM movrec.watch_events w
    JOIN model.movie_latent_attributes a ON a.movie_id = w.movie_id AND a.model_id = _online_refit.model_id
    WHERE w.user_id = _online_refit.user_id;
    n := coalesce(cardinality(xs), 0);
    IF n = 0 THEN  -- no rating of a known movie: the prior
        RETURN x0::real[];
    END IF;
    -- r = b - A x0 = X'(y - X x0)
    x := x0;
    SELECT sum(movrec._scaled(t.xj, ys[t.j] + (t.xj <#> x0))) INTO r FROM unnest(xs) WITH ORDINALITY AS t (xj, j);
    p := r;
    rr := -(r <#> r);
    -- stop at a residual of 1e-6 of |X'y + reg x0| (float32 arithmetic goes no further)
    SELECT sqrt(-(b <#> b)) * 1e-6 INTO tol
    FROM (SELECT sum(movrec._scaled(t.xj, ys[t.j])) + movrec._scaled(x0, reg) AS b
          FROM unnest(xs) WITH ORDINALITY AS t (xj, j)) bb;
    WHILE sqrt(rr) > tol AND i < 2 * vector_dims(x0) LOOP
        i := i + 1;
        -- A p = X'(X p) + reg p
        SELECT sum(movrec._scaled(t.xj, -(t.xj <#> p))) + movrec._scaled(p, reg) INTO ap FROM unnest(xs) AS t (xj);
        alpha := rr / -(p <#> ap);
        x := x + movrec._scaled(p, alpha);
        r := r - movrec._scaled(ap, alpha);
        rr_new := -(r <#> r);
        p := r + movrec._scaled(p, rr_new / rr);
        rr := rr_new;
    END LOOP;
    RETURN x::real[];
END $$;
COMMENT ON FUNCTION movrec._online_refit(integer, bigint) IS
    'Fold-in (portable install): the user''s [vector | bias] solving their ridge regression over all their ratings, '
    'movie side fixed, by conjugate gradients in pgvector (used by the rating trigger when online_update = refit)';
