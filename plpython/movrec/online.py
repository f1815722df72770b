"""Online learning: what the rating trigger computes in Python.

The trigger itself is plpgsql (sql/25_online.sql): it locks the user's row,
archives the old vector, prunes the archive and writes the new vector.  The
default mode (``movrec.online_update = sgd``) is one gradient step done with
pgvector arithmetic in SQL, the same step as :func:`movrec.scoring.sgd_step`.
``refit`` calls :func:`refit_from_sql`: the user's ridge regression over their
whole history with the champion's movie vectors fixed (fold-in), solved exactly
with numpy (a 101 x 101 system at 100 dims).
"""

from __future__ import annotations

import numpy as np

from movrec import backend

DEFAULT_LR = 0.05
DEFAULT_REG = 0.02
DEFAULT_REFIT_REG = 10.0  # bench online (ml-latest-small): best RMSE of 0.3, 1, 3, 10

# The user's ratings of movies the champion knows, with the published movie vectors
# (model.movie_latent_attributes, what the sgd step reads too), in one round trip.  The
# vectors come as one bytea of pgvector's binary form (int16 dim, int16 unused, float4 BE
# each): no Python float per element.
HISTORY_SQL = """
SELECT r.global_mean, r.default_embedding, r.default_bias, h.n, h.ratings, h.bias, h.vectors,
       (SELECT s.refit_reg FROM movrec.settings s) AS reg
FROM model.registry r
CROSS JOIN LATERAL (
    SELECT count(*) AS n, array_agg(w.rating ORDER BY w.movie_id) AS ratings,
           array_agg(m.bias ORDER BY w.movie_id) AS bias,
           string_agg(public.vector_send(m.embedding), ''::bytea ORDER BY w.movie_id) AS vectors
    FROM movrec.watch_events w
    -- one index probe per rating; as a plain join the planner, expecting the average
    -- history, hashed all 27k movie vectors instead (6 ms against 1 ms)
    CROSS JOIN LATERAL (SELECT x.embedding, x.bias FROM model.movie_latent_attributes x
                        WHERE x.movie_id = w.movie_id AND x.model_id = r.model_id LIMIT 1) m
    WHERE w.user_id = $1
) h
WHERE r.model_id = $2
"""


def vector_literal(v: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in v.tolist()) + "]"


def ridge_fold_in(
    vectors: np.ndarray,
    bias: np.ndarray,
    global_mean: float,
    ratings: np.ndarray,
    prior: np.ndarray,
    prior_bias: float,
    reg: float,
) -> tuple[np.ndarray, float]:
    """The user's [vector | bias] x minimising

        sum_j (r_j - mu - b_j - [m_j | 1] . x)^2 + reg * |x - [prior | prior_bias]|^2

    over their rated movies (rows of ``vectors``/``bias``), movie side fixed.  With no
    ratings it is the prior; the prior (the champion's default vector) keeps a user
    with a handful of ratings near the mean user.
    """
    x = np.hstack([vectors.astype(np.float64), np.ones((len(vectors), 1))])
    y = np.asarray(ratings, dtype=np.float64) - global_mean - bias.astype(np.float64)
    x0 = np.append(prior.astype(np.float64), prior_bias)
    a = x.T @ x
    a[np.diag_indices_from(a)] += reg
    sol = np.linalg.solve(a, x.T @ y + reg * x0)
    return sol[:-1].astype(np.float32), float(sol[-1])


def refit_from_sql(user_id: int, model_id: int) -> list[float] | None:
    """[vector | bias] of the user's fold-in under model ``model_id``; None if it is not registered."""
    rows = backend.execute(HISTORY_SQL, ["int4", "int8"], [user_id, model_id])
    if not rows:
        return None
    r = rows[0]
    reg = float(r["reg"]) if r["reg"] else DEFAULT_REFIT_REG
    prior = np.asarray(r["default_embedding"], dtype=np.float64)
    n = int(r["n"])
    if n == 0:  # no rating of a known movie: the prior
        return [*prior.tolist(), float(r["default_bias"])]
    raw = np.frombuffer(r["vectors"], dtype=np.uint8).reshape(n, -1)
    vectors = raw[:, 4:].copy().view(">f4")  # drop each row's (dim, unused) header
    u, b = ridge_fold_in(
        vectors,
        np.asarray(r["bias"], dtype=np.float64),
        float(r["global_mean"]),
        np.asarray(r["ratings"], dtype=np.float64),
        prior,
        float(r["default_bias"]),
        reg,
    )
    return [*u.tolist(), b]
