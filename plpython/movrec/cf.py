"""User-to-user Pearson collaborative filtering, computed in the backend (issue 6).

Definitions
-----------
``movrec_cli.cf_naive`` is the plain-Python reference of exactly these; the tests
hold the two to 1e-6.

* **Co-rated set** ``I(u, v)``: the movies both u and v rated.
* **Correlation**: Pearson over ``I(u, v)``, each user centred on their mean over
  ``I(u, v)`` only (the classic design)::

      corr(u, v) = sum_i (r_ui - m_u)(r_vi - m_v) / sqrt(sum_i (r_ui - m_u)^2 * sum_i (r_vi - m_v)^2)

  When either sum of squares is 0 (a constant rater on the co-rated set) the
  correlation is undefined and v is not a neighbour.
* **Neighbours** of u: users v != u with ``|I(u, v)| >= min_overlap`` (14) and
  ``corr >= min_corr`` (0.65).  A correlation within ``CORR_EPS`` (1e-12) below
  min_corr counts as reaching it, so rounding in the last bit cannot decide.
* **Candidates**: movies u has not rated that at least ``min_raters`` (1)
  neighbours rated.  "Rated highly" needs no threshold of its own: a movie the
  neighbours rated below their means scores below u's mean and ranks low.
* **Prediction** for candidate m::

      p(u, m) = mean_u + sum_n w_n (r_nm - mean_n) / sum_n |w_n|

  over the neighbours n who rated m; ``mean_u`` and ``mean_n`` are the users'
  overall means (all their ratings, not the co-rated set), ``w_n = corr(u, n)``.
* **Ranking**: p descending, then movie_id ascending; scores equal to 9 decimals
  (``SCORE_DECIMALS``) are ties.  The top ``k`` (150) are kept, ranks 1..k.

Options, off by default (defaults give the design's results unchanged):

* ``shrinkage`` lambda > 0: ``w_n = corr * |I| / (|I| + lambda)``, so a
  correlation over few co-rated movies weighs less.  The neighbour test still uses
  the raw correlation: shrinkage changes scores, never coverage.
* ``damping`` delta > 0: divide by ``sum_n |w_n| + delta`` instead, which pulls the
  neighbours' correction toward the centre when few or weak neighbours rated m.
  Not in the issue: added because the measurement showed that shrinkage alone
  cannot help here (with one neighbour rating m, its weight cancels in the ratio).
* ``baseline``: centre on baseline estimates instead of means, ``b_um = mu + b_u +
  b_m`` (``mu`` the global mean; ``b_m = sum(r - mu) / (25 + n_m)`` over m's raters,
  then ``b_u = sum(r - mu - b_m) / (10 + n_u)`` over u's ratings), and predict
  ``b_um + sum_n w_n (r_nm - b_nm) / sum_n |w_n|``.

How it is fast
--------------
Ratings live in the backend as a sparse matrix in both orientations (per user: the
movies and ratings, CSR; per movie: the users and ratings, CSC), as numpy arrays of
dense indices with ratings stored as int8 half stars.  For a target u, the users who
share a movie with u come from the CSC slices of u's movies, as (user, rating)
triples; six ``bincount``s over those triples give each co-rater's overlap n and
the sums X, Y, XX, YY, XY over the co-rated set, and

    corr = (n XY - X Y) / sqrt((n XX - X^2)(n YY - Y^2)).

In half-star units these sums are integers, exact in float64, so a zero variance is
exactly 0.  Users who share nothing with u are never touched.  The neighbours' rows
come from the CSR, and three more ``bincount``s over movies give the numerator, the
denominator and the count of every candidate.  No Python loop runs over users.

Cache and invalidation rule
---------------------------
The matrix is loaded once per backend (one statement, ``array_send`` blobs read
with ``np.frombuffer``) and then refreshed incrementally at the start of every
call.  The rating triggers stamp ``model.user_rating_stats.changed_xid`` with the
writing transaction's id.  Each refresh (one statement, one snapshot) records that
snapshot's xmin as the watermark and reloads the users whose ``changed_xid`` is at
or above the previous watermark: a change the previous snapshot could not see was
made by a transaction at or above its xmin, so none is missed (some are re-read,
which is harmless).  Users changed by the calling transaction itself are
*tentative*: loaded, so the call sees its own writes, and reloaded by the next
refresh whether the transaction commits or rolls back.  Reloaded users are overlaid
on the base arrays (their base rows are masked); the overlay is merged into new base
arrays when it grows past ``COMPACT_FRACTION`` of the ratings, and a refresh that
finds more than ``RELOAD_FRACTION`` of the users changed (an ETL publish) reloads
everything.  A bulk change that bypasses the triggers must run
``movrec.cf_rebuild_stats()``, which stamps every user.  Any error while the cache
is being changed drops it; the next call loads afresh.

Queue
-----
``cf_drain`` claims a job (``FOR UPDATE SKIP LOCKED``), reads the user's
``n_changes``, runs the job in a subtransaction, and deletes the job only if
``n_changes`` is unchanged, checked under ``FOR SHARE SKIP LOCKED`` on the stats
row.  A rating that arrives while the job runs either bumps ``n_changes`` (seen),
holds the stats row (skipped: the job stays), or comes after the check and then
waits on that share lock, finds the job deleted, and enqueues a fresh one.  A kept
job is not claimed again in the same call; the rating's NOTIFY, sent whether or not
its user was already queued, wakes the workers when it commits.  So a rating is
never left without a later job, and a job's result and its deletion
commit together: a crash, a cancel or a restart rolls both back and the job runs
again.  A failing job keeps its row with ``attempts``, ``last_error`` and a
backoff (``not_before``) of 2^(attempts-1) seconds, at most an hour.  A cancel
(SQLSTATE class 57: Ctrl-C on the worker, statement_timeout) is not a job failure:
it aborts the whole call, so the batch rolls back and stays queued untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from movrec import backend, jobs
from movrec.errors import InvalidArgument, NullArgument

CORR_EPS = 1e-12
SCORE_DECIMALS = 9
BASELINE_REG_MOVIE = 25.0
BASELINE_REG_USER = 10.0
MAX_K = 150

# A refresh that finds more than this share of the users changed reloads everything.
RELOAD_FRACTION = 0.05
RELOAD_MIN_USERS = 1000
# The overlay of reloaded users is merged into the base arrays past this share of ratings.
COMPACT_FRACTION = 0.05
COMPACT_MIN_RATINGS = 50_000


@dataclass(frozen=True)
class Options:
    """The knobs of movrec.user_to_user(); the defaults are the design's."""

    min_corr: float = 0.65
    min_overlap: int = 14
    min_raters: int = 1
    shrinkage: float = 0.0
    damping: float = 0.0
    baseline: bool = False
    k: int = MAX_K


EMPTY_I32 = np.zeros(0, dtype=np.int32)
EMPTY_I8 = np.zeros(0, dtype=np.int8)


def _ptr(index: np.ndarray, n: int) -> np.ndarray:
    """Row pointers of a CSR whose rows are `index` (sorted): row i is ptr[i]:ptr[i+1]."""
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(index, minlength=n), out=ptr[1:])
    return ptr


def _gather(ptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of all entries of `rows` in a CSR, and which of `rows` each belongs to."""
    starts = ptr[rows]
    lengths = ptr[rows + 1] - starts
    total = int(lengths.sum())
    owner = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
    # entry j of row r sits at starts[r] + (j - first entry of r in the output)
    offsets = np.cumsum(lengths) - lengths
    positions = np.arange(total, dtype=np.int64) - np.repeat(offsets - starts, lengths)
    return positions, owner


def _dense_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct ids, each id's index among them).

    Ids from the database are compact (1..N), so a lookup table does in 0.1 s what
    np.unique's sort does in 6 s at 20M ratings; sparse ids fall back to the sort.
    """
    if len(ids) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int32)
    lo, hi = int(ids.min()), int(ids.max())
    if lo >= 0 and hi < max(4 * len(ids), 1 << 20):
        present = np.zeros(hi + 1, dtype=bool)
        present[ids] = True
        index = np.cumsum(present, dtype=np.int64) - 1
        return np.flatnonzero(present), index[ids].astype(np.int32)
    distinct, inverse = np.unique(ids, return_inverse=True)
    return distinct, inverse.astype(np.int32)


def _order_by(keys: np.ndarray) -> np.ndarray:
    """np.argsort(keys, kind="stable") for keys in [0, 2**32), as 16-bit radix passes.

    NumPy radix-sorts 16-bit keys: two such passes (low half, then high half) take
    1 s at 20M where a comparison sort of the keys takes 3 to 7 s.
    """
    keys = np.asarray(keys, dtype=np.int64)
    if len(keys) == 0 or keys.max() < 1 << 16:
        return np.argsort(keys.astype(np.uint16), kind="stable")
    low = np.argsort((keys & 0xFFFF).astype(np.uint16), kind="stable")
    high = np.argsort((keys[low] >> 16).astype(np.uint16), kind="stable")
    return low[high]


def to_halves(ratings: np.ndarray) -> np.ndarray:
    """Ratings as int8 half stars; anything else is refused (the sums rely on it)."""
    doubled = np.asarray(ratings, dtype=np.float64) * 2.0
    halves = np.rint(doubled)
    if len(halves) and (np.any(halves != doubled) or halves.min() < 0 or halves.max() > 127):
        raise ValueError("ratings must be half stars between 0 and 63.5")
    return halves.astype(np.int8)


class RatingsIndex:
    """Ratings as a sparse matrix in both orientations, with an overlay of changed users.

    Users and movies get dense indices: the base ones in ascending id order, those
    first seen in a refresh appended.  Pure numpy: the tests and the quality
    evaluation build it from arrays outside PostgreSQL (``from_arrays``).
    """

    def __init__(self, users: np.ndarray, movies: np.ndarray, halves: np.ndarray) -> None:
        """Ratings as parallel arrays, one row per (user, movie): no duplicates."""
        users = np.asarray(users, dtype=np.int64)
        movies = np.asarray(movies, dtype=np.int64)
        halves = np.asarray(halves, dtype=np.int8)
        self.user_ids, ui = _dense_ids(users)
        self.movie_ids, mi = _dense_ids(movies)
        self._n_base_users, self._n_base_movies = len(self.user_ids), len(self.movie_ids)
        self._extra_users: dict[int, int] = {}
        self._extra_movies: dict[int, int] = {}
        # Row order within a user or a movie does not matter: every sum over it is of
        # integers (half stars), or feeds a prediction only to the last bit.
        by_user = _order_by(ui)
        self.u_ptr = _ptr(ui, self._n_base_users)
        self.u_movie, self.u_half = mi[by_user], halves[by_user]
        by_movie = _order_by(mi)
        self.m_ptr = _ptr(mi, self._n_base_movies)
        self.m_user, self.m_half = ui[by_movie], halves[by_movie]
        # per user: number of ratings and their sum in half stars (exact integers)
        self.n_ratings = np.bincount(ui, minlength=self._n_base_users).astype(np.int64)
        self.sum_halves = np.bincount(ui, weights=halves, minlength=self._n_base_users).astype(
            np.int64
        )
        self.stale = np.zeros(self._n_base_users, dtype=bool)  # base rows masked by the overlay
        self.overrides: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._overlay: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.override_ratings = 0
        self.version = 0  # bumped by every change: keys the baseline cache
        self._baselines: tuple[int, float, np.ndarray, np.ndarray] | None = None
        # set by the SQL glue
        self.watermark = "0"
        self.tentative: set[int] = set()

    @classmethod
    def from_arrays(
        cls, users: np.ndarray, movies: np.ndarray, ratings: np.ndarray
    ) -> RatingsIndex:
        return cls(users, movies, to_halves(ratings))

    # --- sizes and ids --------------------------------------------------------

    @property
    def n_users(self) -> int:
        return len(self.n_ratings)

    @property
    def n_movies(self) -> int:
        return self._n_base_movies + len(self._extra_movies)

    @property
    def nnz(self) -> int:
        return int(self.n_ratings.sum())

    def user_index(self, user_id: int) -> int | None:
        i = int(np.searchsorted(self.user_ids, user_id))
        if i < self._n_base_users and self.user_ids[i] == user_id:
            return i
        return self._extra_users.get(int(user_id))

    def _user_index_or_new(self, user_id: int) -> int:
        i = self.user_index(user_id)
        if i is None:
            i = self._extra_users[int(user_id)] = self.n_users
            self.n_ratings = np.append(self.n_ratings, 0)
            self.sum_halves = np.append(self.sum_halves, 0)
            self.stale = np.append(self.stale, True)
        return i

    def movie_indices(self, movie_ids: np.ndarray, create: bool = False) -> np.ndarray:
        """Dense indices of movie ids: -1 for unknown ones, or (create) new ones appended."""
        ids = np.asarray(movie_ids, dtype=np.int64)
        pos = np.searchsorted(self.movie_ids, ids)
        known = np.zeros(len(ids), dtype=bool)
        inside = pos < self._n_base_movies
        known[inside] = self.movie_ids[pos[inside]] == ids[inside]
        out = np.where(known, pos, -1).astype(np.int32)
        for j in np.flatnonzero(~known):
            m = int(ids[j])
            if m not in self._extra_movies:
                if not create:
                    continue
                self._extra_movies[m] = self.n_movies
            out[j] = self._extra_movies[m]
        return out

    def movie_id_of(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64)
        if not self._extra_movies:
            return self.movie_ids[index]
        extra = np.zeros(len(self._extra_movies), dtype=np.int64)
        for m, i in self._extra_movies.items():
            extra[i - self._n_base_movies] = m
        return np.concatenate([self.movie_ids, extra])[index]

    def user_id_of(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64)
        if not self._extra_users:
            return self.user_ids[index]
        extra = np.zeros(len(self._extra_users), dtype=np.int64)
        for u, i in self._extra_users.items():
            extra[i - self._n_base_users] = u
        return np.concatenate([self.user_ids, extra])[index]

    # --- reading ----------------------------------------------------------------

    def rows_of(self, u: int) -> tuple[np.ndarray, np.ndarray]:
        """User u's (movie index, half stars)."""
        if u in self.overrides:
            return self.overrides[u]
        return (
            self.u_movie[self.u_ptr[u] : self.u_ptr[u + 1]],
            self.u_half[self.u_ptr[u] : self.u_ptr[u + 1]],
        )

    def rows_of_many(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All ratings of `users`: (which of `users`, movie index, half stars)."""
        users = np.asarray(users, dtype=np.int64)
        stale = self.stale[users]
        base = np.flatnonzero(~stale)
        positions, owner = _gather(self.u_ptr, users[base])
        parts_owner, parts_movie, parts_half = (
            [base[owner]],
            [self.u_movie[positions]],
            [self.u_half[positions]],
        )
        for k in np.flatnonzero(stale):
            mv, hv = self.overrides.get(int(users[k]), (EMPTY_I32, EMPTY_I8))
            parts_owner.append(np.full(len(mv), k, dtype=np.int64))
            parts_movie.append(mv)
            parts_half.append(hv)
        return np.concatenate(parts_owner), np.concatenate(parts_movie), np.concatenate(parts_half)

    def raters_of(self, movies: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All ratings of `movies`: (which of `movies`, user index, half stars)."""
        movies = np.asarray(movies, dtype=np.int64)
        base_movies = np.flatnonzero(movies < self._n_base_movies)
        positions, owner = _gather(self.m_ptr, movies[base_movies])
        which, users, halves = base_movies[owner], self.m_user[positions], self.m_half[positions]
        if not self.overrides:
            return which, users, halves
        keep = ~self.stale[users]
        which, users, halves = which[keep], users[keep], halves[keep]
        o_user, o_movie, o_half = self._overlay_arrays()
        slot = np.full(self.n_movies, -1, dtype=np.int64)
        slot[movies] = np.arange(len(movies))
        hit = slot[o_movie]
        mine = hit >= 0
        return (
            np.concatenate([which, hit[mine]]),
            np.concatenate([users, o_user[mine]]),
            np.concatenate([halves, o_half[mine]]),
        )

    def _overlay_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The overlay as flat (user, movie, half) arrays, rebuilt after each change."""
        if self._overlay is None:
            items = list(self.overrides.items())
            self._overlay = (
                np.concatenate(
                    [np.full(len(mv), u, dtype=np.int32) for u, (mv, _) in items] or [EMPTY_I32]
                ),
                np.concatenate([mv for _, (mv, _) in items] or [EMPTY_I32]),
                np.concatenate([hv for _, (_, hv) in items] or [EMPTY_I8]),
            )
        return self._overlay

    def coo(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every current rating as (user index, movie index, half stars)."""
        users = np.repeat(np.arange(self._n_base_users, dtype=np.int32), np.diff(self.u_ptr))
        keep = ~self.stale[users]
        o_user, o_movie, o_half = self._overlay_arrays()
        return (
            np.concatenate([users[keep], o_user]),
            np.concatenate([self.u_movie[keep], o_movie]),
            np.concatenate([self.u_half[keep], o_half]),
        )

    # --- changing ----------------------------------------------------------------

    def replace_users(
        self, user_ids: list[int], users: np.ndarray, movies: np.ndarray, halves: np.ndarray
    ) -> None:
        """Set the ratings of `user_ids` to the given rows (users absent from them: none)."""
        users = np.asarray(users, dtype=np.int64)
        movie_index = self.movie_indices(movies, create=True)
        order = np.lexsort((movie_index, users))
        users, movie_index, halves = users[order], movie_index[order], np.asarray(halves)[order]
        bounds = (
            np.searchsorted(users, user_ids, side="left"),
            np.searchsorted(users, user_ids, side="right"),
        )
        for uid, lo, hi in zip(user_ids, *bounds, strict=True):
            u = self._user_index_or_new(int(uid))
            mv, hv = movie_index[lo:hi].astype(np.int32), halves[lo:hi].astype(np.int8)
            if u in self.overrides:
                self.override_ratings -= len(self.overrides[u][0])
            self.overrides[u] = (mv, hv)
            self.override_ratings += len(mv)
            self.stale[u] = True
            self.n_ratings[u] = len(mv)
            self.sum_halves[u] = int(hv.sum(dtype=np.int64))
        self._overlay = None
        self.version += 1
        if self.override_ratings > max(COMPACT_MIN_RATINGS, COMPACT_FRACTION * self.nnz):
            self.compact()

    def compact(self) -> None:
        """Merge the overlay into new base arrays (the same ratings, no overlay)."""
        users, movies, halves = self.coo()
        fresh = RatingsIndex(self.user_id_of(users), self.movie_id_of(movies), halves)
        fresh.watermark, fresh.tentative, fresh.version = (
            self.watermark,
            self.tentative,
            self.version + 1,
        )
        self.__dict__.update(fresh.__dict__)

    # --- baselines -----------------------------------------------------------------

    def baselines(self) -> tuple[float, np.ndarray, np.ndarray]:
        """(mu, b_user per user index, b_movie per movie index), cached per version."""
        if self._baselines is None or self._baselines[0] != self.version:
            users, movies, halves = self.coo()
            r = halves.astype(np.float64) * 0.5
            mu = float(r.mean()) if len(r) else 0.0
            n_movie = np.bincount(movies, minlength=self.n_movies)
            b_movie = np.bincount(movies, weights=r - mu, minlength=self.n_movies) / (
                BASELINE_REG_MOVIE + n_movie
            )
            b_user = np.bincount(
                users, weights=r - mu - b_movie[movies], minlength=self.n_users
            ) / (BASELINE_REG_USER + np.bincount(users, minlength=self.n_users))
            self._baselines = (self.version, mu, b_user, b_movie)
        return self._baselines[1], self._baselines[2], self._baselines[3]


# --- the computation -------------------------------------------------------------


@dataclass
class Neighbours:
    users: np.ndarray  # user index
    corr: np.ndarray  # Pearson over the co-rated movies
    overlap: np.ndarray  # number of co-rated movies


def neighbours(ix: RatingsIndex, u: int, opt: Options) -> Neighbours:
    """The users with enough overlap and correlation, from the co-raters of u's movies only."""
    mv, hv = ix.rows_of(u)
    which, v, hy = ix.raters_of(mv)
    x = hv[which].astype(np.float64)  # half stars: every sum below is an exact integer
    y = hy.astype(np.float64)
    n_users = ix.n_users
    n = np.bincount(v, minlength=n_users).astype(np.float64)
    n[u] = 0  # not one's own neighbour
    cand = np.flatnonzero(n >= max(2, opt.min_overlap))
    if len(cand) == 0:
        return Neighbours(cand, np.zeros(0), np.zeros(0, dtype=np.int64))
    sums = [np.bincount(v, weights=w, minlength=n_users)[cand] for w in (x, y, x * x, y * y, x * y)]
    sx, sy, sxx, syy, sxy = sums
    nc = n[cand]
    var_x, var_y = nc * sxx - sx * sx, nc * syy - sy * sy  # exact: 0 means a constant rater
    cov = nc * sxy - sx * sy
    defined = (var_x > 0) & (var_y > 0)
    corr = np.zeros(len(cand))
    corr[defined] = cov[defined] / np.sqrt(var_x[defined] * var_y[defined])
    keep = defined & (corr >= opt.min_corr - CORR_EPS)
    return Neighbours(cand[keep], corr[keep], nc[keep].astype(np.int64))


@dataclass
class Scores:
    movies: np.ndarray  # movie index of every candidate
    score: np.ndarray  # predicted rating
    raters: np.ndarray  # neighbours who rated it


def score_all(ix: RatingsIndex, user_id: int, opt: Options) -> Scores:
    """Every candidate movie of a user with its prediction (none for unknown users)."""
    empty = Scores(np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0, dtype=np.int64))
    u = ix.user_index(user_id)
    if u is None or ix.n_ratings[u] == 0:
        return empty
    nb = neighbours(ix, u, opt)
    if len(nb.users) == 0:
        return empty
    w = nb.corr * nb.overlap / (nb.overlap + opt.shrinkage) if opt.shrinkage > 0 else nb.corr
    owner, movies, halves = ix.rows_of_many(nb.users)
    r = halves.astype(np.float64) * 0.5
    if opt.baseline:
        mu, b_user, b_movie = ix.baselines()
        centred = r - (mu + b_user[nb.users][owner] + b_movie[movies])
    else:
        means = ix.sum_halves[nb.users] * 0.5 / ix.n_ratings[nb.users]
        centred = r - means[owner]
    n_movies = ix.n_movies
    num = np.bincount(movies, weights=w[owner] * centred, minlength=n_movies)
    den = np.bincount(movies, weights=np.abs(w)[owner], minlength=n_movies)
    raters = np.bincount(movies, minlength=n_movies)
    raters[ix.rows_of(u)[0]] = 0  # seen
    cand = np.flatnonzero((raters >= max(1, opt.min_raters)) & (den > 0))
    if opt.baseline:
        base = mu + b_user[u] + b_movie[cand]
    else:
        base = ix.sum_halves[u] * 0.5 / ix.n_ratings[u]
    return Scores(cand, base + num[cand] / (den[cand] + opt.damping), raters[cand])


def top_k(ix: RatingsIndex, scores: Scores, k: int) -> list[tuple[int, float, int]]:
    """(movie_id, score, neighbours) best first, ties (to SCORE_DECIMALS) by movie_id."""
    ids = ix.movie_id_of(scores.movies)
    key = np.rint(scores.score * 10.0**SCORE_DECIMALS)
    order = np.lexsort((ids, -key))[:k]
    return [
        (int(m), float(s), int(c))
        for m, s, c in zip(ids[order], scores.score[order], scores.raters[order], strict=True)
    ]


def recommend(
    ix: RatingsIndex, user_id: int, opt: Options | None = None
) -> list[tuple[int, float, int]]:
    opt = opt or Options()
    return top_k(ix, score_all(ix, user_id, opt), opt.k)


# --- in the backend: the cache -----------------------------------------------------

_index: RatingsIndex | None = None
_loads = 0  # full loads in this backend (a refresh that reloads everything counts)

LOAD_SQL = """
SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS xmin,
       (SELECT coalesce(array_agg(s.user_id), '{}') FROM model.user_rating_stats s
         WHERE s.changed_xid = pg_current_xact_id_if_assigned()) AS tentative,
       array_send(coalesce(array_agg(w.user_id), '{}')) AS users,
       array_send(coalesce(array_agg(w.movie_id), '{}')) AS movies,
       array_send(coalesce(array_agg((w.rating * 2)::int2), '{}')) AS halves
FROM movrec.watch_events w
"""

# One statement, so the watermark and the rows come from one snapshot.  The rows
# are fetched only when few enough users changed; otherwise the caller reloads all.
REFRESH_SQL = """
WITH changed AS MATERIALIZED (
    SELECT s.user_id, s.changed_xid = pg_current_xact_id_if_assigned() AS own
    FROM model.user_rating_stats s
    WHERE s.changed_xid >= $1::xid8 OR s.user_id = ANY($2)
)
SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS xmin,
       (SELECT count(*) FROM changed) AS n_changed,
       (SELECT coalesce(array_agg(user_id), '{}') FROM changed) AS changed,
       (SELECT coalesce(array_agg(user_id), '{}') FROM changed WHERE own) AS tentative,
       d.users, d.movies, d.halves
FROM (SELECT array_send(coalesce(array_agg(w.user_id), '{}')) AS users,
             array_send(coalesce(array_agg(w.movie_id), '{}')) AS movies,
             array_send(coalesce(array_agg((w.rating * 2)::int2), '{}')) AS halves
      FROM movrec.watch_events w
      WHERE w.user_id IN (SELECT user_id FROM changed) AND (SELECT count(*) FROM changed) <= $3) d
"""


def unpack_array(blob: bytes, dtype: str) -> np.ndarray:
    """A one-dimensional array_send() blob without NULLs as numpy (dtype big-endian, e.g. '>i4')."""
    if int.from_bytes(blob[0:4], "big") == 0:  # no dimensions: empty
        return np.zeros(0, dtype=np.dtype(dtype).newbyteorder("="))
    n = int.from_bytes(blob[12:16], "big")
    # header: ndim, has-nulls flag, element type, then length and lower bound of the dimension;
    # each element: its byte length (int4) and the value
    elements = np.frombuffer(
        blob, dtype=np.dtype([("len", ">i4"), ("v", dtype)]), count=n, offset=20
    )
    return elements["v"].astype(np.dtype(dtype).newbyteorder("="))


def _load_all() -> RatingsIndex:
    global _loads
    _loads += 1
    r = backend.execute(LOAD_SQL)[0]
    ix = RatingsIndex(
        unpack_array(r["users"], ">i4"),
        unpack_array(r["movies"], ">i4"),
        unpack_array(r["halves"], ">i2").astype(np.int8),
    )
    ix.watermark, ix.tentative = r["xmin"], set(r["tentative"])
    return ix


def _refresh(ix: RatingsIndex) -> RatingsIndex:
    """Bring the cache up to date (see the invalidation rule above); may reload it all."""
    limit = max(RELOAD_MIN_USERS, int(RELOAD_FRACTION * ix.n_users))
    r = backend.execute(
        REFRESH_SQL, ["text", "int4[]", "int8"], [ix.watermark, sorted(ix.tentative), limit]
    )[0]
    if r["n_changed"] > limit:
        return _load_all()
    if r["n_changed"]:
        ix.replace_users(
            r["changed"],
            unpack_array(r["users"], ">i4"),
            unpack_array(r["movies"], ">i4"),
            unpack_array(r["halves"], ">i2"),
        )
    ix.watermark, ix.tentative = r["xmin"], set(r["tentative"])
    return ix


def current_index() -> RatingsIndex:
    """This backend's ratings, refreshed; loaded on first use."""
    global _index
    try:
        _index = _load_all() if _index is None else _refresh(_index)
    except BaseException:
        _index = None  # half-changed: start again next time
        raise
    return _index


def cache_info() -> dict[str, Any]:
    """What this backend holds (for tests and `movrec cf status`)."""
    if _index is None:
        return {"loaded": False}
    return {
        "loaded": True,
        "loads": _loads,
        "users": _index.n_users,
        "movies": _index.n_movies,
        "ratings": _index.nnz,
        "overlay_users": len(_index.overrides),
        "overlay_ratings": _index.override_ratings,
        "version": _index.version,
        "watermark": _index.watermark,
    }


# --- in the backend: entry points ---------------------------------------------------

TITLES_SQL = "SELECT movie_id, title FROM movrec.movies WHERE movie_id = ANY($1)"
LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtext('movrec.user_recommendation'), $1)"
DELETE_SQL = "DELETE FROM model.user_recommendation WHERE user_id = $1"
INSERT_SQL = """
INSERT INTO model.user_recommendation (user_id, rank, movie_id, score)
SELECT $1, t.rank, t.movie_id, t.score
FROM unnest($2::int4[], $3::float4[]) WITH ORDINALITY AS t(movie_id, score, rank)
"""


def check_options(
    user_id: int | None,
    min_corr: float | None,
    min_overlap: int | None,
    min_raters: int | None,
    shrinkage: float | None,
    damping: float | None,
    baseline: bool | None,
) -> Options:
    """Options from SQL arguments (the plpgsql front door checks the same, with plain errors)."""
    if user_id is None:
        raise NullArgument("user_id must not be NULL")
    if min_corr is None or not -1.0 <= min_corr <= 1.0:
        raise InvalidArgument(f"min_corr must be between -1 and 1, got {min_corr}")
    if min_overlap is None or min_overlap < 2:
        raise InvalidArgument(f"min_overlap must be at least 2, got {min_overlap}")
    if min_raters is None or min_raters < 1:
        raise InvalidArgument(f"min_raters must be at least 1, got {min_raters}")
    if shrinkage is None or shrinkage < 0:
        raise InvalidArgument(f"shrinkage must be >= 0, got {shrinkage}")
    if damping is None or damping < 0:
        raise InvalidArgument(f"damping must be >= 0, got {damping}")
    return Options(
        min_corr=float(min_corr),
        min_overlap=int(min_overlap),
        min_raters=int(min_raters),
        shrinkage=float(shrinkage),
        damping=float(damping),
        baseline=bool(baseline),
    )


def store(user_id: int, recs: list[tuple[int, float, int]]) -> None:
    """Replace the user's rows of model.user_recommendation (in the caller's transaction).

    The advisory lock serialises two computations of one user (the worker and
    `movrec cf refresh`): the second deletes what the first committed.
    """
    backend.execute(LOCK_SQL, ["int4"], [user_id])
    backend.execute(DELETE_SQL, ["int4"], [user_id])
    if recs:
        backend.execute(
            INSERT_SQL,
            ["int4", "int4[]", "float4[]"],
            [user_id, [m for m, _, _ in recs], [s for _, s, _ in recs]],
        )


def run_user(user_id: int, opt: Options, save: bool = True) -> list[tuple[int, float, int]]:
    recs = recommend(current_index(), user_id, opt)
    if save:
        store(user_id, recs)
    return recs


@backend.sql_entry
def user_to_user_from_sql(
    user_id: int | None,
    min_corr: float | None,
    min_overlap: int | None,
    min_raters: int | None,
    shrinkage: float | None,
    damping: float | None,
    baseline: bool | None,
    save: bool | None,
) -> list[tuple[int, int, str | None, float, int]]:
    opt = check_options(user_id, min_corr, min_overlap, min_raters, shrinkage, damping, baseline)
    recs = run_user(int(user_id), opt, save is not False)  # type: ignore[arg-type]
    titles = {
        r["movie_id"]: r["title"]
        for r in backend.execute(TITLES_SQL, ["int4[]"], [[m for m, _, _ in recs]])
    }
    return [(rank, m, titles.get(m), s, c) for rank, (m, s, c) in enumerate(recs, start=1)]


# A user already attempted in this call is not claimed again: its job stays for
# the next call when a rating was in flight (see Queue above).
CLAIM_SQL = """
SELECT q.user_id, q.attempts,
       (SELECT s.n_changes FROM model.user_rating_stats s WHERE s.user_id = q.user_id) AS n_changes
FROM model.cf_queue q
WHERE q.not_before <= clock_timestamp() AND q.user_id <> ALL($1)
ORDER BY q.enqueued_at, q.user_id
LIMIT 1
FOR UPDATE OF q SKIP LOCKED
"""

# Delete the job only if the user's ratings did not change since it was claimed;
# a stats row locked by a rating in flight counts as changed (see Queue above).
FINISH_SQL = """
WITH now_stats AS (
    SELECT s.n_changes FROM model.user_rating_stats s WHERE s.user_id = $1 FOR SHARE SKIP LOCKED
)
DELETE FROM model.cf_queue q
WHERE q.user_id = $1
  AND ($2::int8 IS NULL AND NOT EXISTS (SELECT FROM model.user_rating_stats s WHERE s.user_id = $1)
       OR (SELECT n_changes FROM now_stats) = $2::int8)
"""


QUEUE = jobs.JobQueue("cf", "model.cf_queue", CLAIM_SQL, FINISH_SQL, "n_changes", "int8")


@backend.sql_entry
def drain_from_sql(max_jobs: int | None) -> int:
    """Run up to max_jobs queued users; returns how many jobs were attempted."""
    opt = Options()
    return jobs.drain(QUEUE, max_jobs, lambda user_id: run_user(user_id, opt))
