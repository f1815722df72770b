"""Peer models on the benchmark protocol, scored by ``movrec.metrics``.

``run_baselines(train_df, test_df)`` fits each peer on the training frame and returns
one row per model: ``model, rmse, mae, precision@10, recall@10, recall@20, ndcg@10,
fit_seconds, note``. Frames have MovieLens columns ``userId, movieId, rating``.

What each row is (the exact choices, so the table can be compared):

- The index: users and movies are numbered over train and test together, so the
  ranking candidates for a user are every movie in the ratings file that the user did
  not rate in training (see ``movrec.metrics``). A movie seen only in test is still a
  candidate; each model scores it as it would score any unknown item (below).
- ``popularity`` (numpy): ranks movies by their number of training ratings. RMSE and
  MAE predict the movie's training mean rating, or the global training mean for a
  movie without training ratings.
- ``svd``: Surprise ``SVD(n_factors=100, random_state=0)``, other settings default
  (20 epochs, lr 0.005, reg 0.02, biased).
- ``svdpp``: Surprise ``SVDpp(random_state=0)`` with defaults (20 factors, 20 epochs,
  ``cache_ratings=False``; about 45 s on ml-latest-small, so no shortcut is needed).
- ``knnbaseline``: Surprise ``KNNBaseline()`` with defaults (it has no randomness): k=40,
  min_k=1, ``sim_options={}``, i.e. **user-based MSD** similarity (not
  pearson_baseline), baselines by ALS (10 epochs, reg_u 15, reg_i 10).
- Surprise RMSE and MAE come from ``algo.test`` (``Reader(rating_scale=(0.5, 5.0))``,
  so predictions are clipped to 0.5..5). Ranking scores are the model's unclipped
  estimate ``algo.estimate(u, i)``, computed for all movies at once from the fitted
  parameters (``bu, bi, pu, qi, yj``, the similarity matrix), with Surprise's rules for
  unknown users and items (their terms drop out); they equal ``estimate`` to 1e-12 for
  every (user, movie), KNNBaseline's tie-breaking between equally similar neighbours
  included.
- ``als`` / ``bpr``: implicit's ``AlternatingLeastSquares`` / ``BayesianPersonalizedRanking``
  on CPU with their defaults (100 factors; ALS 15 iterations, reg 0.01, alpha 1; BPR 100
  iterations, lr 0.01, reg 0.01) and ``random_state=0``, on a binary user x movie
  matrix: 1 where the training rating is >= ``positive_threshold`` (default 4.0; None
  takes every rating). BPR runs on one thread, so it is deterministic. Scores are
  ``user_factors @ item_factors.T``. They predict no ratings: rmse and mae are None.

- ``ease`` / ``ials``: movrec.closed_form's EASE and iALS (numpy, written here), each with
  its hyper-parameters chosen by validation NDCG@10 on a seeded 10 % cut of the training
  rows (EASE: λ and whether every rating or only ratings >= 4 are positives; iALS: a
  coordinate search over alpha, reg and factors), then refitted on all training rows. They
  predict no ratings (rmse n/a). Their ``fit_seconds`` include the search; the note says
  what was chosen.

``fit_seconds`` times the fit call alone (not building the Surprise trainset or the
sparse matrix, and not the evaluation).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from movrec.metrics import ranking_metrics, rating_metrics

USER, ITEM, RATING = "userId", "movieId", "rating"
MODELS = ("popularity", "svd", "svdpp", "knnbaseline", "als", "bpr", "ease", "ials")
COLUMNS = ("rmse", "mae", "precision@10", "recall@10", "recall@20", "ndcg@10")
ScoreFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Protocol:
    """The split as 0-based index arrays over all users and movies of both frames."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    train_u: np.ndarray
    train_i: np.ndarray
    train_r: np.ndarray
    test_u: np.ndarray
    test_i: np.ndarray
    test_r: np.ndarray

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @classmethod
    def from_frames(cls, train_df: pd.DataFrame, test_df: pd.DataFrame) -> Protocol:
        user_ids = np.unique(np.concatenate([train_df[USER].to_numpy(), test_df[USER].to_numpy()]))
        item_ids = np.unique(np.concatenate([train_df[ITEM].to_numpy(), test_df[ITEM].to_numpy()]))

        def index(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            return (
                np.searchsorted(user_ids, df[USER].to_numpy()).astype(np.int64),
                np.searchsorted(item_ids, df[ITEM].to_numpy()).astype(np.int64),
                df[RATING].to_numpy(dtype=np.float64),
            )

        return cls(user_ids, item_ids, *index(train_df), *index(test_df))

    def ranking(self, score_fn: ScoreFn) -> dict[str, float]:
        return ranking_metrics(
            score_fn,
            self.train_u,
            self.train_i,
            self.test_u,
            self.test_i,
            self.test_r,
            self.n_users,
            self.n_items,
        )


@dataclass
class Fitted:
    score_fn: ScoreFn
    test_pred: np.ndarray | None  # rating predictions for the test rows, or None
    fit_seconds: float
    note: str = ""
    trials: list[Any] | None = None  # a validated peer's search (closed_form.Trial)


class Missing(Exception):
    """An optional benchmark package is not installed."""


# --- popularity ----------------------------------------------------------------


def fit_popularity(p: Protocol) -> Fitted:
    started = time.perf_counter()
    counts = np.bincount(p.train_i, minlength=p.n_items).astype(np.float64)
    sums = np.bincount(p.train_i, weights=p.train_r, minlength=p.n_items)
    fit_seconds = time.perf_counter() - started
    global_mean = float(p.train_r.mean())
    item_mean = np.where(counts > 0, sums / np.maximum(counts, 1), global_mean)
    return Fitted(
        score_fn=lambda users: np.broadcast_to(counts, (len(users), p.n_items)),
        test_pred=item_mean[p.test_i],
        fit_seconds=fit_seconds,
        note="rank: training rating count; rmse: item mean, global mean fallback",
    )


# --- Surprise --------------------------------------------------------------------


def _surprise() -> Any:
    try:
        import surprise
    except ImportError as e:
        raise Missing(
            f"scikit-surprise is not installed ({e}); pip install 'movrec[bench]'"
        ) from None
    return surprise


@dataclass
class _Inner:
    """Surprise's inner ids for our indices (-1: unknown to the trainset)."""

    trainset: Any
    user: np.ndarray  # (n_users,) our index -> inner uid or -1
    item: np.ndarray  # (n_items,) our index -> inner iid or -1
    item_of_inner: np.ndarray  # (n_inner_items,) inner iid -> our index


def _surprise_trainset(p: Protocol) -> _Inner:
    surprise = _surprise()
    frame = pd.DataFrame({"u": p.train_u, "i": p.train_i, "r": p.train_r})
    data = surprise.Dataset.load_from_df(frame, surprise.Reader(rating_scale=(0.5, 5.0)))
    trainset = data.build_full_trainset()
    user = np.full(p.n_users, -1, dtype=np.int64)
    item = np.full(p.n_items, -1, dtype=np.int64)
    inner_users = np.fromiter(trainset.all_users(), dtype=np.int64)
    inner_items = np.fromiter(trainset.all_items(), dtype=np.int64)
    user[[trainset.to_raw_uid(int(x)) for x in inner_users]] = inner_users
    item_of_inner = np.array([trainset.to_raw_iid(int(x)) for x in inner_items], dtype=np.int64)
    item[item_of_inner] = inner_items
    return _Inner(trainset, user, item, item_of_inner)


def _surprise_test(algo: Any, p: Protocol) -> np.ndarray:
    testset = zip(p.test_u.tolist(), p.test_i.tolist(), p.test_r.tolist(), strict=True)
    return np.array([pred.est for pred in algo.test(list(testset))], dtype=np.float64)


def _expand(inner: _Inner, values: np.ndarray, axis_index: np.ndarray) -> np.ndarray:
    """Rows of ``values`` (indexed by inner id) at our indices; zeros where unknown."""
    out = np.zeros((len(axis_index),) + values.shape[1:], dtype=np.float64)
    known = axis_index >= 0
    out[known] = values[axis_index[known]]
    return out


def _factor_scores(
    inner: _Inner, bu: np.ndarray, bi: np.ndarray, pu: np.ndarray, qi: np.ndarray
) -> ScoreFn:
    """``global_mean + bu + bi + pu . qi``, each term present only when its side is known."""
    mean = inner.trainset.global_mean
    bu_all, pu_all = _expand(inner, bu, inner.user), _expand(inner, pu, inner.user)
    bi_all, qi_all = _expand(inner, bi, inner.item), _expand(inner, qi, inner.item)

    def score(users: np.ndarray) -> np.ndarray:
        return mean + bu_all[users, None] + bi_all[None, :] + pu_all[users] @ qi_all.T

    return score


def fit_svd(p: Protocol) -> Fitted:
    surprise = _surprise()
    inner = _surprise_trainset(p)
    algo = surprise.SVD(n_factors=100, random_state=0)
    started = time.perf_counter()
    algo.fit(inner.trainset)
    fit_seconds = time.perf_counter() - started
    score = _factor_scores(inner, algo.bu, algo.bi, algo.pu, algo.qi)
    return Fitted(score, _surprise_test(algo, p), fit_seconds, "n_factors=100, defaults")


def fit_svdpp(p: Protocol) -> Fitted:
    surprise = _surprise()
    inner = _surprise_trainset(p)
    algo = surprise.SVDpp(random_state=0)
    started = time.perf_counter()
    algo.fit(inner.trainset)
    fit_seconds = time.perf_counter() - started
    # the user side of SVD++: pu + |N(u)|^-1/2 * sum of yj over the items u rated
    ratings = np.array(list(inner.trainset.all_ratings()), dtype=np.float64)
    uid, iid = ratings[:, 0].astype(np.int64), ratings[:, 1].astype(np.int64)
    implicit_sum = np.zeros_like(algo.pu)
    np.add.at(implicit_sum, uid, algo.yj[iid])
    n_rated = np.bincount(uid, minlength=len(algo.pu)).astype(np.float64)
    user_side = algo.pu + implicit_sum / np.sqrt(np.maximum(n_rated, 1))[:, None]
    score = _factor_scores(inner, algo.bu, algo.bi, user_side, algo.qi)
    return Fitted(score, _surprise_test(algo, p), fit_seconds, "defaults (20 factors)")


def _knn_baseline_scores(inner: _Inner, algo: Any) -> ScoreFn:
    """KNNBaseline's ``estimate(u, i)`` for every movie (user-based, Surprise's default).

    est = b_ui + sum(sim(u, v) * (r_vi - b_vi)) / sum(sim(u, v)) over the k raters v of i
    most similar to u, counting only positive similarities (none: the baseline alone).
    Surprise picks the k with ``heapq.nlargest``, so a tie in similarity goes to the
    rater whose rating of i came first in the trainset; so it does here.
    """
    ts = inner.trainset
    mean, k, min_k = ts.global_mean, int(algo.k), int(algo.min_k)
    rated = np.zeros((ts.n_users, ts.n_items), dtype=bool)
    resid = np.zeros((ts.n_users, ts.n_items), dtype=np.float64)  # r_vi - b_vi where rated
    later = np.zeros((ts.n_users, ts.n_items), dtype=np.int64)  # place in the item's rater list
    for i, raters in ts.ir.items():
        v = np.fromiter((x for x, _ in raters), dtype=np.int64, count=len(raters))
        r = np.fromiter((y for _, y in raters), dtype=np.float64, count=len(raters))
        rated[v, i] = True
        resid[v, i] = r - (mean + algo.bu[v] + algo.bi[i])
        later[v, i] = np.arange(len(raters))
    stride = int(later.max()) + 1
    sim = np.asarray(algo.sim, dtype=np.float64)
    rated_f = rated.astype(np.float64)
    bu_all = _expand(inner, algo.bu, inner.user)
    bi_all = _expand(inner, algo.bi, inner.item)

    def neighbour_term(u: int) -> np.ndarray:
        """Per inner item: the weighted mean residual of u's top-k positive neighbours."""
        s = np.where(sim[u] > 0, sim[u], 0.0)
        num, den = s @ resid, s @ rated_f
        n_pos = (s > 0).astype(np.float64) @ rated_f
        crowded = np.flatnonzero(n_pos > k)  # more than k positive neighbours rated it
        if len(crowded):
            nb = np.flatnonzero(s > 0)
            # rank by similarity (equal sims share a rank), then by place in the rater list
            s_rank = np.unique(s[nb], return_inverse=True)[1].reshape(-1, 1)
            sub = np.ix_(nb, crowded)
            key = np.where(rated[sub], s_rank * stride + (stride - 1 - later[sub]), -1)
            top = np.argpartition(-key, k - 1, axis=0)[:k]  # all raters: each column has > k
            w = np.zeros(key.shape)
            np.put_along_axis(w, top, 1.0, axis=0)
            w *= s[nb, None]
            num[crowded] = (w * resid[sub]).sum(axis=0)
            den[crowded] = w.sum(axis=0)
        n_used = np.minimum(n_pos, k)
        return np.where((den > 0) & (n_used >= min_k), num / np.where(den > 0, den, 1.0), 0.0)

    def score(users: np.ndarray) -> np.ndarray:
        out = mean + bu_all[users, None] + bi_all[None, :]
        for row, u in enumerate(inner.user[users]):
            if u >= 0:
                out[row, inner.item_of_inner] += neighbour_term(int(u))
        return out

    return score


def fit_knnbaseline(p: Protocol) -> Fitted:
    surprise = _surprise()
    inner = _surprise_trainset(p)
    algo = surprise.KNNBaseline(verbose=False)  # deterministic: no random_state
    started = time.perf_counter()
    algo.fit(inner.trainset)
    fit_seconds = time.perf_counter() - started
    if not algo.sim_options.get("user_based", True):
        raise ValueError("only the user-based KNNBaseline (Surprise's default) is vectorised")
    score = _knn_baseline_scores(inner, algo)
    note = "defaults: k=40, user-based MSD similarity, ALS baselines"
    return Fitted(score, _surprise_test(algo, p), fit_seconds, note)


# --- implicit --------------------------------------------------------------------


def _implicit_matrix(p: Protocol, positive_threshold: float | None) -> Any:
    from scipy.sparse import csr_matrix

    if positive_threshold is None:
        keep = np.ones(len(p.train_r), dtype=bool)
    else:
        keep = p.train_r >= positive_threshold
    return csr_matrix(
        (np.ones(int(keep.sum()), np.float32), (p.train_u[keep], p.train_i[keep])),
        shape=(p.n_users, p.n_items),
    )


def _fit_implicit(p: Protocol, kind: str, positive_threshold: float | None) -> Fitted:
    try:
        from implicit.cpu.als import AlternatingLeastSquares
        from implicit.cpu.bpr import BayesianPersonalizedRanking
        from threadpoolctl import threadpool_limits
    except ImportError as e:
        raise Missing(f"implicit is not installed ({e}); pip install 'movrec[bench]'") from None
    matrix = _implicit_matrix(p, positive_threshold)
    with threadpool_limits(1, "blas"):  # implicit's own threads; BLAS threads only fight them
        if kind == "als":
            model: Any = AlternatingLeastSquares(factors=100, random_state=0)
        else:
            model = BayesianPersonalizedRanking(factors=100, random_state=0, num_threads=1)
        started = time.perf_counter()
        model.fit(matrix, show_progress=False)
        fit_seconds = time.perf_counter() - started
    users = np.asarray(model.user_factors, dtype=np.float64)
    items = np.asarray(model.item_factors, dtype=np.float64)
    positives = "all ratings" if positive_threshold is None else f"rating >= {positive_threshold}"
    return Fitted(lambda u: users[u] @ items.T, None, fit_seconds, f"positives: {positives}")


# --- EASE and iALS (movrec.closed_form), validated on a cut of train ---------------------


def fit_ease_peer(p: Protocol, **search: Any) -> Fitted:
    from movrec.closed_form import validated_ease

    started = time.perf_counter()
    v = validated_ease(p.train_u, p.train_i, p.train_r, p.n_users, p.n_items, **search)
    seconds = time.perf_counter() - started
    return Fitted(v.score, None, seconds, f"chosen on validation: {v.options}", v.trials)


def fit_ials_peer(p: Protocol, **search: Any) -> Fitted:
    from movrec.closed_form import validated_ials

    started = time.perf_counter()
    v = validated_ials(p.train_u, p.train_i, p.train_r, p.n_users, p.n_items, **search)
    seconds = time.perf_counter() - started
    return Fitted(v.score, None, seconds, f"chosen on validation: {v.options}", v.trials)


# --- the table -------------------------------------------------------------------


def run_baselines(
    train_df: pd.DataFrame,
    test_df: pd.DataFrame,
    which: Sequence[str] = MODELS,
    positive_threshold: float | None = 4.0,
    progress: Callable[[str], None] = lambda _msg: None,
    search: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One row per model in ``which``; a model whose package is missing gets a note.

    ``search`` overrides a validated peer's search, e.g. ``{"ials": {"grid": {...}}}``
    (closed_form.validated_ease / validated_ials keyword arguments)."""
    search = search or {}
    unknown = sorted(set(which) - set(MODELS))
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    p = Protocol.from_frames(train_df, test_df)
    fitters: dict[str, Callable[[], Fitted]] = {
        "popularity": lambda: fit_popularity(p),
        "svd": lambda: fit_svd(p),
        "svdpp": lambda: fit_svdpp(p),
        "knnbaseline": lambda: fit_knnbaseline(p),
        "als": lambda: _fit_implicit(p, "als", positive_threshold),
        "bpr": lambda: _fit_implicit(p, "bpr", positive_threshold),
        "ease": lambda: fit_ease_peer(p, **search.get("ease", {})),
        "ials": lambda: fit_ials_peer(p, **search.get("ials", {})),
    }
    rows = []
    for name in which:
        row: dict[str, Any] = {"model": name, **dict.fromkeys(COLUMNS), "fit_seconds": None}
        try:
            fitted = fitters[name]()
        except Missing as e:
            row["note"] = f"skipped: {e}"
            progress(f"{name}: {row['note']}")
            rows.append(row)
            continue
        started = time.perf_counter()
        if fitted.test_pred is not None:
            row.update(rating_metrics(fitted.test_pred, p.test_r))
        ranking = p.ranking(fitted.score_fn)
        row.update({key: ranking[key] for key in COLUMNS[2:]})
        row["n_users"] = int(ranking["n_users"])
        row["fit_seconds"] = round(fitted.fit_seconds, 3)
        row["eval_seconds"] = round(time.perf_counter() - started, 3)
        row["note"] = fitted.note
        if fitted.trials is not None:
            row["search"] = [t.as_dict() for t in fitted.trials]
        progress(f"{name}: fit {row['fit_seconds']} s, eval {row['eval_seconds']} s")
        rows.append(row)
    return rows
