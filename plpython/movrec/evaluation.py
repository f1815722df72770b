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
- a model with temporal features (movrec.temporal) is scored at each user's query time,
  their latest training rating (``train_times``), as serving takes their latest stored one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from movrec import temporal
from movrec.metrics import ranking_metrics, rating_metrics

if TYPE_CHECKING:
    from movrec.item_item import Neighbours
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
    prefix: str = "test",
    item_item: Neighbours | None = None,
    train_times: np.ndarray | None = None,
) -> dict[str, Any]:
    """train = (user ids, movie ids); test = (user ids, movie ids, ratings); ``train_times``
    (epoch seconds of the training rows) is required for a model with temporal features.

    ``item_item`` (the model's weights, movrec.item_item) adds to each user's ranking score
    the sum of their training movies' weights, as recommend() adds their rated movies'.

    Every figure is named for what it was measured on: ``{prefix}_rmse``, ``{prefix}_known_rmse``,
    ``{prefix}_ndcg@10``, ..., ``n_{prefix}`` and ``n_{prefix}_unknown`` (rows whose user or
    movie the model does not know).
    """
    user_ids, users, user_bias = (t.numpy() for t in model.user_side())
    movie_ids, movies, movie_bias = (t.numpy() for t in model.movie_side())
    ranking_side = model.ranking_side()
    ranking = ranking_side.numpy() if ranking_side is not None else None
    mean = float(model.global_mean)
    default_u, default_b = users.mean(axis=0), float(user_bias.mean())
    tside = model.temporal_side() if hasattr(model, "temporal_side") else None

    tu, tm, tr = (np.asarray(x) for x in test)
    all_users = np.unique(np.concatenate([train[0], tu]))
    u_of = {u: i for i, u in enumerate(all_users)}
    qyear = since = np.zeros(len(all_users))
    if tside is not None:
        if train_times is None:
            raise ValueError("a model with temporal features needs train_times")
        train_idx = np.searchsorted(all_users, np.asarray(train[0]))
        first, latest = temporal.user_times(train_idx, train_times, len(all_users))
        qyear, since = temporal.calendar_year(latest), latest - first
    up, mp = _positions(user_ids, tu), _positions(movie_ids, tm)
    known = (up >= 0) & (mp >= 0)
    pred = np.full(len(tr), mean)
    offset = 0.0
    if tside is not None:
        ti = np.searchsorted(all_users, tu[known])
        age = temporal.age_bin(qyear[ti], tside["movie_year"][mp[known]])
        offset = (
            tside["age_rating"][age]
            + tside["drift_rating"][temporal.drift_bin(since[ti])]
            + tside["recent_bias"][up[known]]
        )
    pred[known] = np.clip(
        (users[up[known]] * movies[mp[known]]).sum(1)
        + user_bias[up[known]]
        + movie_bias[mp[known]]
        + mean
        + offset,
        0.5,
        5.0,
    )
    out: dict[str, Any] = {f"{prefix}_{k}": v for k, v in rating_metrics(pred, tr).items()}
    if known.any():
        out.update(
            {f"{prefix}_known_{k}": v for k, v in rating_metrics(pred[known], tr[known]).items()}
        )
    out.update({f"n_{prefix}": int(len(tr)), f"n_{prefix}_unknown": int((~known).sum())})

    # ranking, in movie_space's index space
    space = np.unique(movie_ids if movie_space is None else movie_space)
    in_model = _positions(movie_ids, space)
    upos_all = _positions(user_ids, all_users)
    seen_of = _seen_lists(item_item, all_users, train)
    nbr_pos = _positions(movie_ids, item_item.neighbour_ids) if item_item is not None else None

    def score(idx: np.ndarray) -> np.ndarray:
        vecs = np.where(
            (upos_all[idx] >= 0)[:, None], users[np.maximum(upos_all[idx], 0)], default_u
        )
        biases = np.where(upos_all[idx] >= 0, user_bias[np.maximum(upos_all[idx], 0)], default_b)
        if tside is not None:  # the query time is the user's latest rating: always recent
            biases = biases + np.where(
                upos_all[idx] >= 0, tside["recent_bias"][np.maximum(upos_all[idx], 0)], 0.0
            )
        predicted = vecs @ movies.T + movie_bias + biases[:, None] + mean
        rank = predicted if ranking is None else vecs @ ranking[:, :-1].T + ranking[:, -1]
        if item_item is not None and nbr_pos is not None:
            rank = rank + np.stack(
                [item_item.term(seen_of[i], nbr_pos, len(movie_ids)) for i in idx]
            )
        if tside is not None:
            predicted = predicted + temporal.rating_offsets(tside, qyear[idx], since[idx])
            rank = rank + temporal.rank_offsets(tside, qyear[idx])
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
    ranked = ranking_metrics(score, tr_u, tr_m, te_u, te_m, tr[keep], len(all_users), len(space))
    out.update({f"{prefix}_{k}": v for k, v in ranked.items() if k != "n_users"})
    out[f"n_{prefix}_users_ranked"] = int(ranked["n_users"])
    return out


def _seen_lists(
    item_item: Neighbours | None, all_users: np.ndarray, train: tuple[np.ndarray, np.ndarray]
) -> list[np.ndarray]:
    """Each of ``all_users``' training movie ids (none are needed without item_item)."""
    if item_item is None:
        return []
    tu, tm = np.asarray(train[0], np.int64), np.asarray(train[1], np.int64)
    order = np.argsort(tu, kind="stable")
    bounds = (
        np.searchsorted(tu[order], all_users, side="left"),
        np.searchsorted(tu[order], all_users, side="right"),
    )
    movies = tm[order]
    return [movies[a:b] for a, b in zip(*bounds, strict=True)]


# --- the stored validation split -------------------------------------------------------


def row_keys(users: np.ndarray, movies: np.ndarray) -> np.ndarray:
    """One int64 per (user, movie): ids are int4 in the database, so the pair is exact."""
    return (np.asarray(users, np.int64) << 32) | (np.asarray(movies, np.int64) & 0xFFFFFFFF)


def rows_fingerprint(users: np.ndarray, movies: np.ndarray, ratings: np.ndarray) -> str:
    """sha256 of the ratings sorted by (user, movie): equal exactly when no rating was added,
    removed or changed."""
    import hashlib

    order = np.lexsort((movies, users))
    h = hashlib.sha256()
    for a, dtype in ((users, "<i4"), (movies, "<i4"), (ratings, "<f4")):
        h.update(np.ascontiguousarray(np.asarray(a)[order], dtype=dtype).tobytes())
    return h.hexdigest()


def pack_split(users: np.ndarray, movies: np.ndarray, ratings: np.ndarray) -> bytes:
    """model.registry.validation_split: int32 users, int32 movies, float32 ratings (little
    endian), sorted by (user, movie)."""
    order = np.lexsort((movies, users))
    return b"".join(
        np.ascontiguousarray(np.asarray(a)[order], dtype=dtype).tobytes()
        for a, dtype in ((users, "<i4"), (movies, "<i4"), (ratings, "<f4"))
    )


def unpack_split(blob: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The inverse of pack_split; CorruptCheckpoint when the length is not 12 bytes a row."""
    from movrec.errors import CorruptCheckpoint

    if len(blob) % 12:
        raise CorruptCheckpoint(
            f"validation_split is {len(blob)} bytes, not a whole number of 12-byte rows"
        )
    n = len(blob) // 12
    users = np.frombuffer(blob, "<i4", n, 0).astype(np.int64)
    movies = np.frombuffer(blob, "<i4", n, 4 * n).astype(np.int64)
    ratings = np.frombuffer(blob, "<f4", n, 8 * n).astype(np.float64)
    return users, movies, ratings


def stored_split(
    data: Any, blob: bytes
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray], int]:
    """(train, test, n_gone) for a model's stored split over the ratings as they are now.

    test = the stored held-out ratings that still exist with the same rating; n_gone = the
    others (deleted, or re-rated since). train = every other current rating: exactly the rows
    the model trained on while the data is unchanged; ratings added since count as movies the
    user has rated, which recommend() would not offer either.
    """
    vu, vm, vr = unpack_split(blob)
    now = row_keys(data.users, data.movies)
    order = np.argsort(now)
    stored = row_keys(vu, vm)
    pos = np.minimum(np.searchsorted(now[order], stored), max(len(now) - 1, 0))
    found = np.zeros(len(stored), bool)
    if len(now):
        rows = order[pos]
        found = (now[rows] == stored) & (
            data.ratings[rows].astype(np.float32) == vr.astype(np.float32)
        )
    in_val = np.isin(now, stored[found])
    train = (data.users[~in_val], data.movies[~in_val])
    return train, (vu[found], vm[found], vr[found]), int((~found).sum())


# --- SQL glue ---------------------------------------------------------------------


def _times_of(data: Any, rows: tuple[np.ndarray, np.ndarray]) -> np.ndarray | None:
    """The rated_at (epoch seconds) of these (user, movie) rows of ``data`` (training.Ratings,
    which holds each pair once), for a model with temporal features."""
    if data.times is None:
        return None
    keys = row_keys(data.users, data.movies)
    order = np.argsort(keys)
    pos = np.searchsorted(keys[order], row_keys(*rows))
    return np.asarray(data.times)[order[np.minimum(pos, max(len(keys) - 1, 0))]]


def evaluate_from_sql(model_id: int, test_table: str | None) -> list[tuple[str, float]]:
    """Evaluate on a table of (user_id, movie_id, rating) (figures ``eval_*``), or on the
    validation split stored with the model (figures ``val_*``: the rows it never trained on).

    When ratings changed since training, the stored split is scored on its rows that still
    exist unchanged, with a WARNING saying how many are gone; a model without a stored split
    (trained before 0.3.0), or with none of its rows left, is refused (55000).
    """
    import json

    import plpy  # type: ignore[import-not-found]

    from movrec import backend, registry, training
    from movrec.errors import NotEnoughData, NotFound

    rows = plpy.execute(
        plpy.prepare(
            "SELECT kind, checkpoint, data_snapshot, validation_split, params FROM model.registry "
            "WHERE model_id = $1",
            ["int8"],
        ),
        [model_id],
    )
    if not rows:
        raise NotFound(f"model {model_id} is not in model.registry")
    row = rows[0]
    if not test_table and row["validation_split"] is None:
        raise NotEnoughData(
            f"evaluate(): model {model_id} has no stored validation split (it was trained before "
            "movrec 0.3.0), so the rows it did not train on are unknown",
            hint="pass a table of held-out ratings (movrec.evaluate(id, 'my_table')), or train again",
        )
    model = registry.load_checkpoint(row["kind"], row["checkpoint"], model_id)
    data, _ = training.read_ratings()
    extra: dict[str, Any] = {}
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
        source, prefix = test_table, "eval"
    else:
        train, test, gone = stored_split(data, bytes(row["validation_split"]))
        snapshot = json.loads(row["data_snapshot"])
        recorded = snapshot.get("rows_sha256")
        changed = recorded != rows_fingerprint(data.users, data.movies, data.ratings)
        n_stored = len(test[0]) + gone
        if not len(test[0]):
            raise NotEnoughData(
                f"evaluate(): none of the {n_stored} validation ratings of model {model_id} "
                "exists unchanged any more (deleted or re-rated since training)",
                hint="pass a table of held-out ratings, or train again",
            )
        if changed:
            backend.warning(
                f"evaluate(): the ratings changed since model {model_id} was trained "
                f"({snapshot.get('n_ratings')} then, {len(data)} now); scoring the "
                f"{len(test[0])} of its {n_stored} validation ratings that still exist unchanged"
            )
        source, prefix = "stored validation split", "val"
        extra = {
            "data_changed_since_training": int(changed),
            "n_val_stored": n_stored,
            "n_val_gone": gone,
        }
    weights = None
    if registry._has_column("item_item"):  # the weights recommend() adds (0.3.0 and later)
        from movrec.item_item import Neighbours

        blob = plpy.execute(
            plpy.prepare("SELECT item_item FROM model.registry WHERE model_id = $1", ["int8"]),
            [model_id],
        )[0]["item_item"]
        weights = Neighbours.unpack(bytes(blob)) if blob is not None else None
        chosen = (json.loads(row["params"]).get("item_item") or {}).get("chosen")
        if weights is not None and chosen and not test_table:
            # The served weights were refitted on every rating, the validation split's too:
            # the split is scored with weights fitted as the choice was, on the other rows.
            from movrec.item_item import fit

            held = np.isin(row_keys(data.users, data.movies), row_keys(test[0], test[1]))
            weights = fit(
                data.users[~held],
                data.movies[~held],
                data.ratings[~held],
                float(chosen["lambda"]),
                int(chosen["neighbours"]),
            ).scaled(float(chosen["w"]))
            extra["item_item_refitted_without_split"] = 1
    result = evaluate_model(
        model, train, test, prefix=prefix, item_item=weights, train_times=_times_of(data, train)
    )
    result.update(extra)
    result["evaluated_on"] = source
    backend.execute(
        "UPDATE model.registry SET metrics = metrics || jsonb_build_object('evaluation', $2::jsonb) "
        "WHERE model_id = $1",
        ["int8", "text"],
        [model_id, json.dumps(result)],
    )
    return [(k, float(v)) for k, v in result.items() if isinstance(v, int | float)]
