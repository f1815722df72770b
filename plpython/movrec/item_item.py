"""The hybrid's item-item term: EASE weights cut to each movie's strongest neighbours.

recommend() orders a user's candidates by

    ranking(u, j) + sum over the movies i the user rated of weight(i, j)

where ranking is the hybrid's ranking head and weight(i, j) = w x B_ij, B the EASE matrix
(Steck 2019: B = I - P diag(1 / diag P), P = (XᵀX + λI)⁻¹, X the binary user x movie matrix of
ratings >= POSITIVE) with each row i cut to its 128 or 256 largest |B_ij| (KEPT).  The cut keeps the
model at that many weights a movie (27k movies x 256: 6.9M weights, 83 MB) and a call's cost at
one sum over the user's rated movies' rows, where the dense B would be 2.9 GB at 27k movies.
λ, the cut and the blend w are chosen by validation NDCG@10 on the hybrid's own validation split (the
rows it never trained on), with B fitted on the hybrid's training rows; the chosen λ is then
refitted on every rating, and the weights stored with the model are w x B_ij, so serving adds
them as they are.  Measured on ml-latest-small (README, "Measured quality"): the sum lifts
the hybrid's NDCG@10 above EASE's, where either alone is below.

Pure numpy: recommend() and evaluation import this module, never torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from movrec import backend

# X's ones: every rating (None), not only ratings >= 4 as for the EASE peer: alone EASE is
# better on ratings >= 4, but added to the hybrid (which already learns what the user liked)
# the weights over everything the user watched add more (validation NDCG@10 0.1667 against
# 0.1659 on ml-latest-small, and on its test split 0.2700 against 0.2573).
POSITIVE: float | None = None
NEIGHBOURS = 256  # weights fitted per rated movie; validation keeps all or the first half
KEPT = (128, 256)  # candidate weights kept per movie
LAMBDAS = (50.0, 150.0, 500.0)
# candidate w: without TMDB content the hybrid is weaker and validation chose w 16, the
# largest of 1-16, so the grid goes on to 64
BLENDS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
# Movies with the most positives that take part: P is a MAX_MOVIES-square matrix when the
# users outnumber them (8 bytes x 12k² = 1.15 GB); the rest have no weights.
MAX_MOVIES = 12_000
CHUNK = 1024  # rows of B formed at a time


@dataclass(frozen=True)
class Neighbours:
    """Row-sparse weights: movie ``movie_ids[r]``'s neighbours are
    ``neighbour_ids[indptr[r]:indptr[r + 1]]`` with ``weights`` (already times the blend)."""

    movie_ids: np.ndarray  # int64 ascending
    indptr: np.ndarray  # int64, len(movie_ids) + 1
    neighbour_ids: np.ndarray  # int64
    weights: np.ndarray  # float32

    def __len__(self) -> int:
        return len(self.weights)

    @classmethod
    def from_triples(
        cls, movies: np.ndarray, neighbours: np.ndarray, weights: np.ndarray
    ) -> Neighbours:
        order = np.lexsort((neighbours, movies))
        movies, neighbours = (
            np.asarray(movies, np.int64)[order],
            np.asarray(neighbours, np.int64)[order],
        )
        ids, counts = np.unique(movies, return_counts=True)
        indptr = np.zeros(len(ids) + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        return cls(ids, indptr, neighbours, np.asarray(weights, np.float32)[order])

    def triples(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(movie, neighbour, weight) per weight, sorted by (movie, neighbour)."""
        return np.repeat(self.movie_ids, np.diff(self.indptr)), self.neighbour_ids, self.weights

    def pack(self) -> bytes:
        """model.registry.item_item: int32 movies, int32 neighbours, float32 weights (little
        endian), sorted by (movie, neighbour)."""
        m, n, w = self.triples()
        return b"".join(
            np.ascontiguousarray(a, dtype=t).tobytes()
            for a, t in ((m, "<i4"), (n, "<i4"), (w, "<f4"))
        )

    @classmethod
    def unpack(cls, blob: bytes) -> Neighbours:
        """The inverse of pack; CorruptCheckpoint when the length is not 12 bytes a weight."""
        from movrec.errors import CorruptCheckpoint

        if len(blob) % 12:
            raise CorruptCheckpoint(
                f"item_item is {len(blob)} bytes, not a whole number of 12-byte weights"
            )
        n = len(blob) // 12
        return cls.from_triples(
            np.frombuffer(blob, "<i4", n, 0),
            np.frombuffer(blob, "<i4", n, 4 * n),
            np.frombuffer(blob, "<f4", n, 8 * n),
        )

    def cut(self, n: int) -> Neighbours:
        """Each movie's ``n`` largest |weights| (ties: the lower neighbour id)."""
        if not len(self) or int(np.diff(self.indptr).max()) <= n:
            return self
        m, nbr, w = self.triples()
        order = np.lexsort((nbr, -np.abs(w), m))
        rank = np.arange(len(w)) - np.repeat(self.indptr[:-1], np.diff(self.indptr))
        keep = order[rank < n]
        return Neighbours.from_triples(m[keep], nbr[keep], w[keep])

    def scaled(self, w: float) -> Neighbours:
        return Neighbours(
            self.movie_ids, self.indptr, self.neighbour_ids, (self.weights * w).astype(np.float32)
        )

    def rows_of(self, seen: np.ndarray) -> np.ndarray:
        """Positions in neighbour_ids/weights of every weight of the movies in ``seen``."""
        if not len(self.movie_ids) or not len(seen):
            return np.empty(0, np.int64)
        r = np.minimum(np.searchsorted(self.movie_ids, seen), len(self.movie_ids) - 1)
        r = r[self.movie_ids[r] == seen]
        starts, counts = self.indptr[r], self.indptr[r + 1] - self.indptr[r]
        total = int(counts.sum())
        return np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(total)

    def term(self, seen: np.ndarray | Sequence[int], positions: np.ndarray, n: int) -> np.ndarray:
        """The sum over ``seen`` (movie ids the user rated) of their weights, as a float64
        vector over ``n`` columns; ``positions[k]`` is the column of ``neighbour_ids[k]``
        (-1: not a column, dropped)."""
        at = self.rows_of(np.unique(np.asarray(seen, np.int64)))
        cols = positions[at]
        keep = cols >= 0
        return np.bincount(cols[keep], self.weights[at][keep].astype(np.float64), n)


# --- fitting ------------------------------------------------------------------------------


def fit(
    users: np.ndarray,
    movies: np.ndarray,
    ratings: np.ndarray,
    lam: float,
    n: int = NEIGHBOURS,
    positive: float | None = POSITIVE,
    max_movies: int = MAX_MOVIES,
) -> Neighbours:
    """EASE's B over the ratings (those >= ``positive`` when given; ids as given), each row cut to its ``n``
    largest |B_ij| (the diagonal is 0 and never kept).  P is formed by Woodbury over the
    users when they are fewer (P = (I - Xᵀ(XXᵀ + λI)⁻¹X) / λ), else inverted over the movies;
    either way B is formed CHUNK rows at a time, so only the cut rows are ever held."""
    keep = np.ones(len(ratings), bool) if positive is None else np.asarray(ratings) >= positive
    u_ids, u = np.unique(np.asarray(users, np.int64)[keep], return_inverse=True)
    m_all, m = np.unique(np.asarray(movies, np.int64)[keep], return_inverse=True)
    if len(m_all) > max_movies:  # the most rated take part
        top = np.sort(np.argsort(-np.bincount(m, minlength=len(m_all)), kind="stable")[:max_movies])
        inside = np.full(len(m_all), -1)
        inside[top] = np.arange(len(top))
        ok = inside[m] >= 0
        u, m, m_all = u[ok], inside[m[ok]], m_all[top]
    n_items = len(m_all)
    n = min(n, n_items - 1)
    if n < 1:
        return Neighbours.from_triples(np.empty(0), np.empty(0), np.empty(0))
    if len(u_ids) < n_items:
        x = np.zeros((len(u_ids), n_items), np.float64)
        x[u, m] = 1.0
        mm = np.linalg.solve(x @ x.T + lam * np.eye(len(u_ids)), x)
        diag_p = (1.0 - (x * mm).sum(axis=0)) / lam

        def p_rows(i0: int, i1: int) -> np.ndarray:
            p = -(x[:, i0:i1].T @ mm) / lam
            p[np.arange(i1 - i0), np.arange(i0, i1)] += 1.0 / lam
            return p
    else:
        g = _gram(u, m, len(u_ids), n_items)
        g[np.diag_indices_from(g)] += lam
        inv = np.linalg.inv(g)
        del g
        diag_p = np.diag(inv).copy()

        def p_rows(i0: int, i1: int) -> np.ndarray:
            return inv[i0:i1]

    src = np.repeat(np.arange(n_items), n)
    nbr = np.empty(n_items * n, np.int64)
    val = np.empty(n_items * n, np.float32)
    for i0 in range(0, n_items, CHUNK):
        backend.check_interrupts()
        i1 = min(i0 + CHUNK, n_items)
        b = -p_rows(i0, i1) / diag_p[None, :]
        b[np.arange(i1 - i0), np.arange(i0, i1)] = 0.0
        part = np.argpartition(-np.abs(b), n - 1, axis=1)[:, :n]
        nbr[i0 * n : i1 * n] = part.ravel()
        val[i0 * n : i1 * n] = np.take_along_axis(b, part, axis=1).ravel()
    nonzero = val != 0
    return Neighbours.from_triples(m_all[src[nonzero]], m_all[nbr[nonzero]], val[nonzero])


def _gram(
    u: np.ndarray, m: np.ndarray, n_users: int, n_items: int, chunk: int = 4096
) -> np.ndarray:
    """XᵀX (float64) from the positives (u, m), a block of users at a time: X itself
    (138k users x 12k movies: 13 GB) is never formed."""
    order = np.argsort(u, kind="stable")
    u, m = u[order], m[order]
    g = np.zeros((n_items, n_items), np.float64)
    for a in range(0, n_users, chunk):
        backend.check_interrupts()
        lo, hi = np.searchsorted(u, a), np.searchsorted(u, a + chunk)
        x = np.zeros((min(chunk, n_users - a), n_items), np.float32)
        x[u[lo:hi] - a, m[lo:hi]] = 1.0
        g += (x.T @ x).astype(np.float64)
    return g


def for_model(
    model: Any,
    users: np.ndarray,
    movies: np.ndarray,
    ratings: np.ndarray,
    val_rows: np.ndarray,
    progress: Callable[[str], None] = lambda _msg: None,
    deadline: float | None = None,
    max_val_users: int = 5000,
) -> tuple[Neighbours | None, dict[str, Any]]:
    """The item-item term of a model with a ranking head (None and {} without one, and for a
    model with temporal features, which is not served), chosen
    on its validation rows ``val_rows`` (the rows it never trained on; a seeded sample of
    ``max_val_users`` of their users on large data) and refitted on every rating, within
    ``deadline`` (time.perf_counter(); see choose)."""
    from movrec.evaluation import evaluate_model

    if model.ranking_side() is None or not len(val_rows):
        return None, {}
    if getattr(model, "temporal", False):
        # never served (deploy refuses it), and its scores need the ratings' times
        return None, {}
    in_val = np.zeros(len(ratings), bool)
    in_val[val_rows] = True
    fit_rows = (users[~in_val], movies[~in_val], ratings[~in_val])
    vu, vm, vr = users[in_val], movies[in_val], ratings[in_val]
    val_users = np.unique(vu)
    if len(val_users) > max_val_users:
        picked = np.random.default_rng(0).choice(val_users, max_val_users, replace=False)
        keep = np.isin(vu, picked)
        vu, vm, vr = vu[keep], vm[keep], vr[keep]

    def score(nb: Neighbours | None) -> float:
        out = evaluate_model(model, fit_rows[:2], (vu, vm, vr), prefix="val", item_item=nb)
        return float(out["val_ndcg@10"])

    return choose(score, fit_rows, (users, movies, ratings), progress=progress, deadline=deadline)


def choose(
    score: Callable[[Neighbours | None], float],
    fit_rows: tuple[np.ndarray, np.ndarray, np.ndarray],
    all_rows: tuple[np.ndarray, np.ndarray, np.ndarray],
    lambdas: Sequence[float] = LAMBDAS,
    blends: Sequence[float] = BLENDS,
    kept: Sequence[int] = KEPT,
    progress: Callable[[str], None] = lambda _msg: None,
    deadline: float | None = None,
) -> tuple[Neighbours | None, dict[str, Any]]:
    """λ, the weights kept per movie and w by validation: ``score(neighbours)`` is the validation NDCG@10 of the model
    with those weights added (None: the model alone), the weights fitted on ``fit_rows``
    (the rows the model trained on); the best is refitted on ``all_rows``.  Returns
    (weights times w, or None when no candidate beats the model alone; what was chosen and
    every trial).  With a ``deadline``, no λ is tried that the last one's time (its fit,
    its scoring, and the refit after) says would end after it, nor the first past it."""
    started = time.perf_counter()
    alone = score(None)
    trials: list[dict[str, Any]] = []
    best: tuple[float, float, float, int] = (alone, 0.0, 0.0, 0)
    last_s = 0.0
    for lam in lambdas:
        t = time.perf_counter()
        if deadline is not None and t + 2 * last_s > deadline:
            progress(f"movrec train: item-item stops at the time budget ({len(trials)} trials)")
            break
        fitted = fit(*fit_rows, lam, max(kept))
        fit_s = time.perf_counter() - t
        for n in kept:
            nb = fitted.cut(n)
            for w in blends:
                value = score(nb.scaled(w))
                trials.append(
                    {
                        "lambda": lam,
                        "neighbours": n,
                        "w": w,
                        "val_ndcg@10": round(value, 5),
                        "fit_s": round(fit_s, 2),
                    }
                )
                if value > best[0] + 1e-4:
                    best = (value, lam, w, n)
        last_s = time.perf_counter() - t
        progress(
            f"movrec train: item-item λ {lam:g}: best val NDCG@10 "
            f"{max(t_['val_ndcg@10'] for t_ in trials if t_['lambda'] == lam):.4f} (alone {alone:.4f})"
        )
    about: dict[str, Any] = {
        "val_ndcg@10_alone": round(alone, 5),
        "positive": POSITIVE,
        "trials": trials,
    }
    if best[1] == 0.0:
        about.update(chosen=None, seconds=round(time.perf_counter() - started, 2))
        return None, about
    value, lam, w, n = best
    final = fit(*all_rows, lam, n).scaled(w)
    about.update(
        chosen={"lambda": lam, "neighbours": n, "w": w},
        **{"val_ndcg@10": round(value, 5)},
        n_weights=len(final),
        seconds=round(time.perf_counter() - started, 2),
    )
    return final, about
