"""The ratings as a sparse matrix in both orientations, with an overlay of changed users.

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
"""

from __future__ import annotations

import numpy as np

from movrec.cf.options import BASELINE_REG_MOVIE, BASELINE_REG_USER

# The overlay of reloaded users is merged into the base arrays past this share of ratings.
COMPACT_FRACTION = 0.05
COMPACT_MIN_RATINGS = 50_000

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
        self.watermark: str | list[str | None] = "0"  # (Citus: per node group, cf/cache.py)
        self.tentative: set[int] = set()
        self.erasures = 0  # model.cf_erasures.n_erasures the arrays were read with

    @classmethod
    def from_arrays(
        cls, users: np.ndarray, movies: np.ndarray, ratings: np.ndarray
    ) -> RatingsIndex:
        return cls(users, movies, to_halves(ratings))

    # --- sharing the base arrays ----------------------------------------------

    # The base arrays a RatingsIndex without an overlay is made of (``base_arrays``).
    BASE_PARTS = (
        "user_ids",
        "movie_ids",
        "u_ptr",
        "u_movie",
        "u_half",
        "m_ptr",
        "m_user",
        "m_half",
        "n_ratings",
        "sum_halves",
    )

    def base_arrays(self) -> dict[str, np.ndarray]:
        """The base arrays by name (BASE_PARTS); only an index without an overlay has them
        all (ValueError otherwise: its current ratings are not in them alone)."""
        if self.overrides or self._extra_users or self._extra_movies:
            raise ValueError("an index with an overlay has no base arrays of its own")
        return {part: getattr(self, part) for part in self.BASE_PARTS}

    @classmethod
    def from_base_arrays(cls, arrays: dict[str, np.ndarray]) -> RatingsIndex:
        """The index whose base arrays these are (``base_arrays``), without sorting anything.

        The large arrays are used as they are (read-only views of a shared copy are fine:
        nothing writes to them); the per-user counts, which the overlay changes, are
        copied."""
        ix = cls.__new__(cls)
        for part in cls.BASE_PARTS:
            setattr(ix, part, arrays[part])
        ix.n_ratings = np.array(arrays["n_ratings"], dtype=np.int64)
        ix.sum_halves = np.array(arrays["sum_halves"], dtype=np.int64)
        ix._n_base_users, ix._n_base_movies = len(ix.user_ids), len(ix.movie_ids)
        n_user_rows = len(ix.u_movie)
        if (
            len(ix.u_ptr) != ix._n_base_users + 1
            or len(ix.m_ptr) != ix._n_base_movies + 1
            or len(ix.n_ratings) != ix._n_base_users
            or len(ix.sum_halves) != ix._n_base_users
            or not len(ix.u_half) == len(ix.m_user) == len(ix.m_half) == n_user_rows
            or int(ix.u_ptr[-1]) != n_user_rows
            or int(ix.m_ptr[-1]) != n_user_rows
        ):
            raise ValueError("the base arrays do not fit together")
        ix._extra_users, ix._extra_movies = {}, {}
        ix.stale = np.zeros(ix._n_base_users, dtype=bool)
        ix.overrides, ix._overlay, ix.override_ratings = {}, None, 0
        ix.version, ix._baselines = 0, None
        ix.watermark, ix.tentative, ix.erasures = "0", set(), 0
        return ix

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
        fresh.watermark, fresh.tentative, fresh.erasures, fresh.version = (
            self.watermark,
            self.tentative,
            self.erasures,
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
