"""Offline evaluation: the benchmark protocol's split, rating and top-k metrics.

Pure numpy (no torch; no plpy beyond backend.check_interrupts(), which does nothing
outside a backend), so benchmarks, tests and the peers' runner share one definition of
every number.

The protocols
    ``split(n)`` (random): rows are shuffled with ``numpy.random.default_rng(42).permutation(n)``;
    the first ``round(0.9 * n)`` rows are training, the rest test.
    ``time_split(users, times)`` (time-ordered): each user's ratings sorted by time (ties by
    row order); the last ``round(0.1 * n_u)`` of a user's n_u ratings are test, so no test
    rating of a user is earlier than any of their training ratings and no model sees the
    user's future.

Rating metrics (``rating_metrics``), over test ratings
    RMSE = sqrt(mean((pred - truth)^2)),  MAE = mean(|pred - truth|).

Ranking metrics (``ranking_metrics``), per user, then averaged over users
    relevant(u)   = the items of u's *test* ratings with rating >= threshold (4.0).
    candidates(u) = every item 0..n_items-1 that u did not rate in *training*
                    (test items stay candidates; training items are masked out).
    top_k(u)      = the k highest-scoring candidates, best first (ties between equal
                    scores are broken arbitrarily but deterministically).
    hits_k(u)     = |top_k(u) ∩ relevant(u)|
    precision@k   = hits_k(u) / k          (k, even for users with fewer than k relevant)
    recall@k      = hits_k(u) / |relevant(u)|
    ndcg@k        = DCG@k / IDCG@k with binary gains,
                    DCG@k  = sum over ranks r = 1..k of [item at r is relevant] / log2(r + 1)
                    IDCG@k = sum over r = 1..min(|relevant(u)|, k) of 1 / log2(r + 1)
                    (the ideal list puts min(|relevant|, k) relevant items first).
    Users with no relevant test item are skipped; ``n_users`` reports how many were
    averaged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from movrec import backend

ScoreFn = Callable[[np.ndarray], np.ndarray]


def split(n: int, seed: int = 42, train_fraction: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, test): ``default_rng(seed).permutation(n)``, cut at ``round(n * f)``."""
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    cut = int(round(n * train_fraction))
    return perm[:cut], perm[cut:]


def time_split(
    users: np.ndarray, times: np.ndarray, test_fraction: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, test): per user, the last ``round(test_fraction * n_u)`` ratings by
    time are test (ties in time broken by row order, so the split is deterministic)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    users, times = np.asarray(users), np.asarray(times)
    order = np.lexsort((np.arange(len(users)), times, users))  # by user, then time, then row
    _, starts, counts = np.unique(users[order], return_index=True, return_counts=True)
    rank = np.arange(len(users)) - np.repeat(starts, counts)  # place within the user's history
    n_test = np.floor(counts * test_fraction + 0.5).astype(np.int64)
    is_test = rank >= np.repeat(counts - n_test, counts)
    return np.sort(order[~is_test]), np.sort(order[is_test])


def rating_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """``{"rmse": sqrt(mean(err^2)), "mae": mean(|err|)}`` with ``err = pred - truth``."""
    pred = np.asarray(pred, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if pred.shape != truth.shape or pred.ndim != 1:
        raise ValueError(
            f"pred and truth must be 1-d of one length, got {pred.shape}, {truth.shape}"
        )
    if len(pred) == 0:
        raise ValueError("no ratings to evaluate")
    err = pred - truth
    return {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err)))}


def discounts(k: int) -> np.ndarray:
    """``1 / log2(r + 1)`` for ranks r = 1..k."""
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def ndcg(hits: np.ndarray, n_relevant: np.ndarray | int, k: int) -> np.ndarray:
    """NDCG@k with binary gains, per row: the module docstring's definition.

    ``hits[i, r]`` says whether the item at rank r + 1 of list i is relevant (lists may be
    shorter than k); ``n_relevant[i] >= 1`` is how many relevant items list i could hold.
    """
    hits = np.atleast_2d(np.asarray(hits, dtype=bool))[:, :k]
    n_rel = np.broadcast_to(np.asarray(n_relevant, dtype=np.int64), (hits.shape[0],))
    disc = discounts(k)
    dcg = (hits * disc[: hits.shape[1]]).sum(axis=1)
    idcg = np.cumsum(disc)[np.minimum(n_rel, k) - 1]
    return dcg / idcg


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k largest scores, best first (``argpartition`` + sort)."""
    n = scores.shape[1]
    k = min(k, n)
    if k < n:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(n), scores.shape).copy()
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def _csr(users: np.ndarray, items: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, items sorted by user): row u's items are ``items[indptr[u]:indptr[u + 1]]``."""
    order = np.argsort(users, kind="stable")
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
    return indptr, items[order]


def _dense_rows(indptr: np.ndarray, cols: np.ndarray, rows: np.ndarray, n_cols: int) -> np.ndarray:
    """Boolean (len(rows), n_cols) matrix with True where a CSR row holds a column."""
    counts = indptr[rows + 1] - indptr[rows]
    starts = np.repeat(indptr[rows], counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    out = np.zeros((len(rows), n_cols), dtype=bool)
    out[np.repeat(np.arange(len(rows)), counts), cols[starts + offsets]] = True
    return out


def ranking_metrics(
    score_fn: ScoreFn,
    train_users: np.ndarray,
    train_items: np.ndarray,
    test_users: np.ndarray,
    test_items: np.ndarray,
    test_ratings: np.ndarray,
    n_users: int,
    n_items: int,
    threshold: float = 4.0,
    ks: Sequence[int] = (10, 20),
    batch: int = 256,
) -> dict[str, float]:
    """Precision@k, recall@k and NDCG@k as defined in this module's docstring.

    Users and items are 0-based indices (< n_users, < n_items). ``score_fn(user_idx)``
    returns a ``(len(user_idx), n_items)`` score matrix, higher is better; NaN counts
    as the worst score. Only users with a relevant test item are scored, ``batch`` at a
    time. Returns ``precision@k``, ``recall@k`` and ``ndcg@k`` for every k in ``ks``, and
    ``n_users`` (users averaged).
    """
    train_users = np.asarray(train_users, dtype=np.int64)
    train_items = np.asarray(train_items, dtype=np.int64)
    test_users = np.asarray(test_users, dtype=np.int64)
    test_items = np.asarray(test_items, dtype=np.int64)
    relevant = np.asarray(test_ratings, dtype=np.float64) >= threshold
    for name, idx, bound in (
        ("train_users", train_users, n_users),
        ("train_items", train_items, n_items),
        ("test_users", test_users, n_users),
        ("test_items", test_items, n_items),
    ):
        if len(idx) and (idx.min() < 0 or idx.max() >= bound):
            raise ValueError(f"{name} must be indices in [0, {bound})")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive, got {ks}")
    k_max = ks[-1]

    train_ptr, train_cols = _csr(train_users, train_items, n_users)
    rel_ptr, rel_cols = _csr(test_users[relevant], test_items[relevant], n_users)
    n_rel = np.diff(rel_ptr)
    users = np.flatnonzero(n_rel > 0)
    sums = {f"{name}@{k}": 0.0 for k in ks for name in ("precision", "recall", "ndcg")}

    for start in range(0, len(users), batch):
        backend.check_interrupts()  # minutes over every user on large data
        u = users[start : start + batch]
        scores = np.array(score_fn(u), dtype=np.float64)  # a copy: masking writes into it
        if scores.shape != (len(u), n_items):
            raise ValueError(f"score_fn returned {scores.shape}, expected {(len(u), n_items)}")
        scores[np.isnan(scores)] = -np.inf
        scores[_dense_rows(train_ptr, train_cols, u, n_items)] = -np.inf
        top = top_k_indices(scores, k_max)
        rel = _dense_rows(rel_ptr, rel_cols, u, n_items)
        hits = np.take_along_axis(rel, top, axis=1)
        # a masked training item can only reach the top k when a user has < k candidates
        hits &= np.isfinite(np.take_along_axis(scores, top, axis=1))
        nr = n_rel[u].astype(np.float64)
        for k in ks:
            h = hits[:, :k]
            n_hits = h.sum(axis=1)
            sums[f"precision@{k}"] += float((n_hits / k).sum())
            sums[f"recall@{k}"] += float((n_hits / nr).sum())
            sums[f"ndcg@{k}"] += float(ndcg(h, n_rel[u], k).sum())

    n = len(users)
    out = {key: (value / n if n else float("nan")) for key, value in sums.items()}
    out["n_users"] = float(n)
    return out
