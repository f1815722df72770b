"""Evaluate a trained model on held-out ratings, the way recommend() serves it.

``evaluate_model`` is pure numpy over the model's published sides, shared by
``movrec.evaluate()`` and ``movrec bench quality``:

- rating metrics over every test row: a row whose user or movie the model does
  not know (the ETL removed it, or it is new) is predicted with the training
  mean and counted; the same metrics over the known rows are reported beside.
- ranking metrics (metrics.ranking_metrics) with recommend()'s order: the
  ranking score (or predicted rating), movies predicted below the
  min_predicted filter after all others; candidates are ``movie_space`` minus the
  user's training movies, and movies the model does not know rank last.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from movrec.metrics import ranking_metrics, rating_metrics, split

if TYPE_CHECKING:
    from movrec.models import Model


def _positions(known: np.ndarray, ids: np.ndarray) -> np.ndarray:
    pos = np.minimum(np.searchsorted(known, ids), len(known) - 1)
    return np.where(known[pos] == ids, pos, -1)


def evaluate_model(
    model: Model,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray, np.ndarray],
    movie_space: np.ndarray | None = None,
    min_predicted: float = 3.0,
) -> dict[str, Any]:
    """train = (user ids, movie ids); test = (user ids, movie ids, ratings)."""
    user_ids, users, user_bias = (t.numpy() for t in model.user_side())
    movie_ids, movies, movie_bias = (t.numpy() for t in model.movie_side())
    ranking_side = model.ranking_side()
    ranking = ranking_side.numpy() if ranking_side is not None else None
    mean = float(model.global_mean)
    default_u, default_b = users.mean(axis=0), float(user_bias.mean())

    tu, tm, tr = (np.asarray(x) for x in test)
    up, mp = _positions(user_ids, tu), _positions(movie_ids, tm)
    known = (up >= 0) & (mp >= 0)
    pred = np.full(len(tr), mean)
    pred[known] = np.clip(
        (users[up[known]] * movies[mp[known]]).sum(1)
        + user_bias[up[known]]
        + movie_bias[mp[known]]
        + mean,
        0.5,
        5.0,
    )
    out: dict[str, Any] = {f"test_{k}": v for k, v in rating_metrics(pred, tr).items()}
    if known.any():
        out.update(
            {f"test_known_{k}": v for k, v in rating_metrics(pred[known], tr[known]).items()}
        )
    out.update({"n_test": int(len(tr)), "n_test_unknown": int((~known).sum())})

    # ranking, in movie_space's index space
    space = np.unique(movie_ids if movie_space is None else movie_space)
    in_model = _positions(movie_ids, space)
    all_users = np.unique(np.concatenate([train[0], tu]))
    u_of = {u: i for i, u in enumerate(all_users)}
    upos_all = _positions(user_ids, all_users)

    def score(idx: np.ndarray) -> np.ndarray:
        vecs = np.where(
            (upos_all[idx] >= 0)[:, None], users[np.maximum(upos_all[idx], 0)], default_u
        )
        biases = np.where(upos_all[idx] >= 0, user_bias[np.maximum(upos_all[idx], 0)], default_b)
        predicted = vecs @ movies.T + movie_bias + biases[:, None] + mean
        rank = predicted if ranking is None else vecs @ ranking[:, :-1].T + ranking[:, -1]
        rank = np.where(
            predicted >= min_predicted, rank, rank - 1e6
        )  # the filter: after all others
        full = np.full((len(idx), len(space)), -1e12)
        full[:, in_model >= 0] = rank[:, in_model[in_model >= 0]]
        return full

    def index(users_: np.ndarray, movies_: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = _positions(space, movies_)
        keep = m >= 0
        return np.array([u_of[u] for u in users_[keep]], dtype=np.int64), m[keep], keep

    tr_u, tr_m, _ = index(np.asarray(train[0]), np.asarray(train[1]))
    te_u, te_m, keep = index(tu, tm)
    out.update(ranking_metrics(score, tr_u, tr_m, te_u, te_m, tr[keep], len(all_users), len(space)))
    return out


# --- SQL glue ---------------------------------------------------------------------


def evaluate_from_sql(model_id: int, test_table: str | None) -> list[tuple[str, float]]:
    """Evaluate on a table of (user_id, movie_id, rating), or on the model's own validation split."""
    import json

    import plpy  # type: ignore[import-not-found]

    from movrec import backend, registry, training
    from movrec.errors import NotFound

    rows = plpy.execute(
        plpy.prepare(
            "SELECT kind, checkpoint, params FROM model.registry WHERE model_id = $1", ["int8"]
        ),
        [model_id],
    )
    if not rows:
        raise NotFound(f"model {model_id} is not in model.registry")
    model = registry.load_checkpoint(rows[0]["kind"], rows[0]["checkpoint"], model_id)
    data, _ = training.read_ratings()
    if test_table:
        t = plpy.execute(
            f"SELECT array_agg(user_id) u, array_agg(movie_id) m, array_agg(rating) r "
            f"FROM {test_table}"
        )[0]
        test = (
            np.asarray(t["u"] or [], np.int64),
            np.asarray(t["m"] or [], np.int64),
            np.asarray(t["r"] or [], np.float64),
        )
        train = (data.users, data.movies)
        source = test_table
    else:
        params = json.loads(rows[0]["params"])
        train_rows, val_rows = split(
            len(data), params.get("seed", 42), 1 - params.get("val_fraction", 0.05)
        )
        test = (
            data.users[val_rows],
            data.movies[val_rows],
            data.ratings[val_rows].astype(np.float64),
        )
        train = (data.users[train_rows], data.movies[train_rows])
        source = "validation split"
    result = evaluate_model(model, train, test)
    result["evaluated_on"] = source
    backend.execute(
        "UPDATE model.registry SET metrics = metrics || jsonb_build_object('evaluation', $2::jsonb) "
        "WHERE model_id = $1",
        ["int8", "text"],
        [model_id, json.dumps(result)],
    )
    return [(k, float(v)) for k, v in result.items() if isinstance(v, int | float)]
