"""Pure numpy scoring: top-k, predictions and the online gradient step.

No plpy and no torch here: these run per request inside backends and are unit
tested directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

RATING_MIN, RATING_MAX = 0.5, 5.0


@dataclass(frozen=True)
class MovieSide:
    """A deployed model's movie side: what a backend caches per champion."""

    model_id: int
    movie_ids: np.ndarray  # int32, ascending
    vectors: np.ndarray  # float32 (n, dim)
    bias: np.ndarray  # float32 (n,)
    global_mean: float
    default_embedding: np.ndarray  # float32 (dim,)
    default_bias: float
    ranking: np.ndarray | None = None  # float32 (n, dim + 1) [ranking vector | prior]
    index: BoundIndex | None = None  # over order_matrix
    rating_matrix: np.ndarray | None = None  # [vectors | bias] as one matrix, where one exists

    @classmethod
    def from_blobs(
        cls,
        model_id: int,
        movie_ids: bytes,
        matrix: bytes,
        global_mean: float,
        default_embedding: list[float],
        default_bias: float,
        ranking: bytes | None = None,
    ) -> MovieSide:
        ids = np.frombuffer(movie_ids, dtype=np.int32)
        full = np.frombuffer(matrix, dtype=np.float32).reshape(len(ids), -1)
        return cls(
            model_id=model_id,
            movie_ids=ids,
            vectors=np.ascontiguousarray(full[:, :-1]),
            bias=np.ascontiguousarray(full[:, -1]),
            global_mean=float(global_mean),
            default_embedding=np.asarray(default_embedding, dtype=np.float32),
            default_bias=float(default_bias),
            ranking=None
            if ranking is None
            else np.frombuffer(ranking, dtype=np.float32).reshape(len(ids), -1),
            rating_matrix=full,
        )

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    @cached_property
    def row_of(self) -> np.ndarray | None:
        """Dense movie id -> row (-1: unknown), where ids are dense enough (at most 8 slots a
        movie, int32: 32 bytes a movie at most): one lookup per id, where a binary search
        over the catalogue misses the cache a dozen times per id.  None for sparse ids:
        positions() searches instead."""
        if not len(self.movie_ids) or int(self.movie_ids[0]) < 0:
            return None
        top = int(self.movie_ids[-1])
        if top >= 8 * len(self.movie_ids) + 1024:
            return None
        table = np.full(top + 1, -1, dtype=np.int32)
        table[self.movie_ids] = np.arange(len(self.movie_ids), dtype=np.int32)
        return table

    def positions(self, movie_ids: np.ndarray | list[int]) -> np.ndarray:
        """Row of each movie id in the matrix, -1 for movies the model does not know."""
        ids = np.asarray(movie_ids, dtype=np.int64)
        table = self.row_of
        if table is not None:
            if not len(ids):
                return np.empty(0, dtype=np.int64)
            if ids.min() >= 0 and ids.max() < len(table):  # the usual case: one lookup
                return table[ids].astype(np.int64)
            inside = (ids >= 0) & (ids < len(table))
            return np.where(inside, table[np.where(inside, ids, 0)], -1).astype(np.int64)
        hay = np.asarray(self.movie_ids, dtype=np.int64)
        pos = np.minimum(np.searchsorted(hay, ids), len(hay) - 1)
        return np.where(hay[pos] == ids, pos, -1)

    def scores(self, user_vector: np.ndarray, user_bias: float) -> np.ndarray:
        """Predicted rating (unclipped) of every movie."""
        return self.vectors @ user_vector + self.bias + (user_bias + self.global_mean)

    def predicted_at(
        self, user_vector: np.ndarray, user_bias: float, pos: np.ndarray
    ) -> np.ndarray:
        """Predicted rating (unclipped) of the movies at rows ``pos`` only."""
        return self.vectors[pos] @ user_vector + self.bias[pos] + (user_bias + self.global_mean)

    @cached_property
    def order_matrix(self) -> np.ndarray:
        """[vector | prior] rows that recommend() orders by: the ranking head, else the rating
        side (whose order is the predicted rating's: the user's bias and the mean are constant)."""
        if self.ranking is not None:
            return self.ranking
        if self.rating_matrix is not None:
            return self.rating_matrix
        return np.hstack([self.vectors, self.bias[:, None]])

    def best(self, user_vector: np.ndarray, k: int, exclude: np.ndarray | None) -> np.ndarray:
        """Positions of the k best movies in recommend()'s order, skipping ``exclude``: what
        top_k over every score gives, from a fraction of the reads when indexed."""
        full = self.order_matrix
        user_vector = np.asarray(user_vector, dtype=full.dtype)  # one precision on both paths
        if self.index is not None:
            found = self.index.top_k(full, user_vector, k, exclude)
            if found is not None:
                return found
        return top_k(full[:, :-1] @ user_vector + full[:, -1], k, exclude=exclude)


SAMPLE_STRIDE = 16  # top_k estimates its cut-off from every 16th score
INDEX_HEADS = (16, 32, 48)  # leading rotated coordinates BoundIndex may keep, cheapest first


@dataclass(frozen=True)
class BoundIndex:
    """Exact top-k of ``M[:, :-1] @ u + M[:, -1]`` that reads a fraction of M.

    The vectors are rotated onto their singular directions (an orthonormal rotation R, so
    ``v . u = Rv . Ru``).  For each movie the first ``h`` rotated coordinates and the prior
    are kept (``head``), with the norm of the remaining ones (``tail``).  For a user,
    ``[Ru[:h], 1] @ head`` plus or minus ``tail * |Ru[h:]|`` (Cauchy-Schwarz) bounds every
    score; movies whose upper bound is below the k-th best lower bound cannot be in the top
    k, and only the others are scored exactly from M.

    ``head`` is stored transposed, (h + 1, n), one contiguous row per coordinate: the product
    is then h + 1 long axpy passes, 5x faster than n dot products of h + 1 (measured at
    26,744 x 17, float32, one BLAS thread), and its rounding differs from the row-major
    product's only within the allowance the bounds already carry.

    Trained vectors put most of their variance in few directions.  ``build`` takes the
    smallest h that prunes well for sample users: a 27k-movie head of h = 16 is 1.8 MB and
    stays in a core's L2 cache, where the whole matrix (10.8 MB) streams from memory.  When
    the bound prunes too little for some user, ``top_k`` returns None and the caller
    scores everything, so the answer never depends on the index.
    """

    rotation: np.ndarray  # float32 (d, d): rows are the singular directions, largest first
    head: np.ndarray  # float32 (h + 1, n): rows: the first h rotated coordinates, the prior
    tail: np.ndarray  # float32 (n,): norm of the rotated coordinates after h
    scale: np.ndarray  # float32 (2,): max row norm, max |prior|: the rounding allowance

    PARTS = ("rotation", "head", "tail", "scale")

    @classmethod
    def build(
        cls, matrix: np.ndarray, probes: np.ndarray | None = None, k: int = 36
    ) -> BoundIndex | None:
        """The index with the smallest head that leaves at most 1/64 of the movies (or 200)
        to score exactly for the median of ``probes`` (sample user vectors; without them
        the largest head); None where no head pays, or for catalogues under 2,048 movies."""
        n, d = matrix.shape[0], matrix.shape[1] - 1
        heads = [h for h in INDEX_HEADS if h < d]
        if n < 2048 or not heads:
            return None
        vectors = np.asarray(matrix[:, :-1], dtype=np.float64)
        prior = np.asarray(matrix[:, -1], dtype=np.float64)
        # the right singular vectors: eigenvectors of the d x d Gram matrix, largest first
        # (faster than an SVD of the n x d matrix: 30 ms instead of 700 at 27k x 100)
        _, eigenvectors = np.linalg.eigh(vectors.T @ vectors)
        vt = eigenvectors[:, ::-1].T
        rotated = vectors @ vt.T
        chosen = heads[-1]
        if probes is not None and len(probes):
            q = np.asarray(probes, dtype=np.float64) @ vt.T
            for h in heads:
                tail = np.linalg.norm(rotated[:, h:], axis=1)
                approx = rotated[:, :h] @ q[:, :h].T + prior[:, None]
                slack = tail[:, None] * np.linalg.norm(q[:, h:], axis=1)[None, :]
                floor = np.partition(approx - slack, n - k, axis=0)[n - k]
                left = np.median(((approx + slack) >= floor[None, :]).sum(axis=0))
                if left <= max(200, n / 64):
                    chosen = h
                    break
            else:
                return None
        return cls(
            rotation=vt.astype(np.float32),
            head=np.ascontiguousarray(
                np.hstack([rotated[:, :chosen], prior[:, None]]).T, dtype=np.float32
            ),
            tail=np.linalg.norm(rotated[:, chosen:], axis=1).astype(np.float32),
            scale=np.array(
                [np.linalg.norm(vectors, axis=1).max(), np.abs(prior).max()], dtype=np.float32
            ),
        )

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"index_{p}": getattr(self, p) for p in self.PARTS}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> BoundIndex | None:
        if not all(f"index_{p}" in arrays and arrays[f"index_{p}"].size for p in cls.PARTS):
            return None
        return cls(**{p: arrays[f"index_{p}"] for p in cls.PARTS})

    def top_k(
        self, matrix: np.ndarray, u: np.ndarray, k: int, exclude: np.ndarray | None
    ) -> np.ndarray | None:
        """top_k(matrix[:, :-1] @ u + matrix[:, -1], k, exclude), or None to say "score all"."""
        h, n = self.head.shape[0] - 1, self.head.shape[1]
        if k <= 0 or k * SAMPLE_STRIDE * 4 >= n:
            return None
        u = np.asarray(u, dtype=np.float32)
        ru = self.rotation @ u
        q = np.empty(h + 1, dtype=np.float32)
        q[:h], q[h] = ru[:h], 1.0
        approx = q @ self.head
        # float32 sums of d products: allow far more than their rounding error
        # (norms as square roots of dot products: np.linalg.norm is a dozen calls in Python)
        rest = ru[h:]
        slack_u = math.sqrt(float(rest @ rest))
        allowance = 1e-4 * (
            float(self.scale[0]) * math.sqrt(float(ru @ ru)) + float(self.scale[1]) + 1
        )
        slack = self.tail * np.float32(slack_u)
        slack += np.float32(allowance)
        low = approx - slack
        if exclude is not None and len(exclude):
            low[exclude] = -np.inf
        # the k-th best lower bound: from a sample first (a cut-off no higher than it), then
        # exactly among the few that pass the sample's cut-off
        sample = low[::SAMPLE_STRIDE]
        r = min(len(sample), k // SAMPLE_STRIDE + 5)
        cut = np.partition(sample, len(sample) - r)[len(sample) - r]
        if not np.isfinite(cut):
            return None
        # np.compress, not low[low >= cut]: boolean indexing is ~10x slower here
        above = np.compress(low >= cut, low)
        if len(above) < k:
            return None
        floor = np.partition(above, len(above) - k)[len(above) - k]
        high = approx
        high += slack
        if exclude is not None and len(exclude):
            high[exclude] = -np.inf
        cand = np.flatnonzero(high >= floor)
        if len(cand) * 4 > n:
            return None
        rows = matrix[cand]
        exact = rows[:, :-1] @ u + rows[:, -1]
        # top_k's order (best first, ties: lower position first) in one sort of the few left
        return cand[np.argsort(-exact, kind="stable")[:k]]


def top_k(scores: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Positions of the k best scores, best first (ties: lower position first), skipping
    ``exclude`` positions.

    A full argpartition of 27k scores costs about 0.3 ms, as much as the matrix product that
    made them.  A cut-off taken from a 1/16 sample keeps about k + 64 candidates, which are
    then sorted: about 0.03 ms.  If the cut-off keeps fewer than k, the full partition runs.
    """
    s = scores
    if exclude is not None and len(exclude):
        s = scores.copy()
        s[exclude] = -np.inf
    n = len(s)
    if k <= 0 or n == 0:
        return np.empty(0, dtype=np.int64)
    if k * SAMPLE_STRIDE * 4 < n:
        sample = s[::SAMPLE_STRIDE]
        r = min(len(sample), k // SAMPLE_STRIDE + 5)
        cut = np.partition(sample, len(sample) - r)[len(sample) - r]
        if np.isfinite(cut):
            cand = np.flatnonzero(s >= cut)
            if len(cand) >= k:
                order = np.argsort(-s[cand], kind="stable")[:k]
                return cand[order]
    finite = np.flatnonzero(np.isfinite(s))
    k = min(k, len(finite))
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    part = finite[np.argpartition(-s[finite], k - 1)[:k]] if k < len(finite) else finite
    order = np.lexsort((part, -s[part]))
    return part[order]


def clip_rating(x: np.ndarray | float) -> np.ndarray | float:
    """x within RATING_MIN..RATING_MAX (NaN stays NaN): np.clip's values, in two ufunc calls
    where np.clip's dispatch costs ~20 us a call."""
    return np.minimum(np.maximum(x, RATING_MIN), RATING_MAX)


def sgd_step(
    user_vector: np.ndarray,
    user_bias: float,
    movie_vector: np.ndarray,
    movie_bias: float,
    global_mean: float,
    rating: float,
    lr: float,
    reg: float,
) -> tuple[np.ndarray, float]:
    """One gradient step of squared error on the user side, movie side fixed.

    The step size is capped at 0.5 / (|m|^2 + 1): then one step closes at most
    half the gap, so the prediction moves toward the rating and never past it,
    whatever the movie vector's norm.
    """
    u = user_vector.astype(np.float64)
    m = movie_vector.astype(np.float64)
    err = rating - (global_mean + user_bias + movie_bias + float(u @ m))
    step = min(lr, 0.5 / (float(m @ m) + 1.0))
    new_u = u + step * (err * m - reg * u)
    new_b = user_bias + step * (err - reg * user_bias)
    return new_u.astype(np.float32), float(new_b)
