"""recommend(), predict(), explain() and the precomputed recommendations: numpy in the backend.

Caches (module globals, so per backend; none is ever written to the database, so
recommend() runs on a hot standby):

* the champion's movie side (:class:`MovieSide`), keyed by the champion's
  model_id and by (count, max movie_id) of its rows in model.movie_latent_extra
  (movies embedded after deploy, see coldstart.py): a deploy or a newly
  embedded movie is picked up on the next call;
* the catalogue's metadata for the filters (:class:`Catalogue`: a genre bitmask
  and the year per movie), keyed by max(movie_id) of movrec.movies (movies are
  added with new ids) and reloaded after ``CATALOGUE_TTL_S`` seconds anyway (an
  edited genre or year of an existing movie shows up within that);
* the popularity ranking (:class:`Popularity`) from model.movie_rating_stats,
  keyed by its refreshed_at (movrec.refresh_movie_stats() rewrites the table).

The fallback chain, per row (every row says which source gave it):

1. ``model``: the user's vector of the champion;
2. ``cf``: the user's Pearson CF rows in model.user_recommendation;
3. ``model`` with the champion's default vector, for a user who rated but has no
   vector of this champion (ratings bulk-loaded after the deploy);
4. ``popular``: damped mean rating ``(sum + 10 * mu) / (n + 10)``.

A later source only fills what the earlier ones left of k, skipping movies already
chosen.  Every source skips movies the user rated and movies outside the filters;
when the user has a vector, a movie the model knows and predicts below
movrec.min_predicted_rating (3 stars) is skipped by every source, so fill rows
from cf and popular are movies the model cannot score (added after training).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from movrec import backend, jobs, shared
from movrec.errors import InvalidArgument, NoChampion, NotFound, NullArgument
from movrec.scoring import BoundIndex, MovieSide, clip_rating, top_k

POPULARITY_DAMPING = 10  # ratings' worth of prior pulled toward the global mean
EXPLAIN_DAMPING = 5  # explain(): the user's baseline is their mean, damped toward the global mean
REFRESH_K = 150  # model.model_recommendation keeps at most this many rows per user
CATALOGUE_TTL_S = 60.0
DEFAULT_MIN_PREDICTED = 3.0  # the design's filter: recommend only movies predicted >= 3 stars
LOCK_CLASS = 28022  # pg_advisory_xact_lock(LOCK_CLASS, user_id): one refresh of a user at a time
SHARED_LOCK_CLASS = 28023  # (SHARED_LOCK_CLASS, hash of a shared name): its one builder

Row = tuple[int, str, float, float, str]

_champion: MovieSide | None = None
_champion_key: tuple[int, int, int] | None = None
_catalogue: Catalogue | None = None
_popularity: Popularity | None = None
_aligned: dict[tuple[Any, ...], np.ndarray] = {}  # (champion key, catalogue key) -> positions

USER_STATE_SQL = """
SELECT c.model_id AS champion,
       u.embedding::real[] AS embedding, u.bias, u.model_id,
       (SELECT coalesce(array_agg(w.movie_id), '{}') FROM movrec.watch_events w
         WHERE w.user_id = $1) AS seen,
       current_setting('movrec.min_predicted_rating', true) AS min_predicted,
       x.n AS n_extra, x.max_id AS max_extra,
       (SELECT max(m.movie_id) FROM movrec.movies m) AS max_movie
FROM (SELECT (SELECT model_id FROM model.deployments ORDER BY deployment_id DESC LIMIT 1) AS model_id) c
LEFT JOIN model.user_latent_attributes u ON u.user_id = $1
LEFT JOIN LATERAL (SELECT count(*) AS n, coalesce(max(e.movie_id), 0) AS max_id
                   FROM model.movie_latent_extra e WHERE e.model_id = c.model_id) x ON true
"""

CHAMPION_KEY_SQL = """
SELECT c.model_id, x.n AS n_extra, x.max_id AS max_extra
FROM (SELECT model_id FROM model.deployments ORDER BY deployment_id DESC LIMIT 1) c
CROSS JOIN LATERAL (SELECT count(*) AS n, coalesce(max(e.movie_id), 0) AS max_id
                    FROM model.movie_latent_extra e WHERE e.model_id = c.model_id) x
"""

CHAMPION_SQL = """
SELECT model_id, xmin::text AS row_version, global_mean, default_embedding, default_bias
FROM model.registry WHERE model_id = $1
"""
CHAMPION_BLOBS_SQL = """
SELECT serving_movie_ids, serving_matrix, serving_ranking FROM model.registry WHERE model_id = $1
"""

EXTRA_SQL = """
SELECT movie_id, embedding AS e, bias, ranking AS r
FROM model.movie_latent_extra WHERE model_id = $1 ORDER BY movie_id
"""

CATALOGUE_SQL = "SELECT movie_id, year, genres FROM movrec.movies ORDER BY movie_id"

STATS_VERSION_SQL = "SELECT refreshed_at::text AS v FROM model.movie_rating_stats LIMIT 1"
STATS_SQL = (
    "SELECT movie_id, n_ratings, sum_ratings FROM model.movie_rating_stats ORDER BY movie_id"
)
# Only where movrec.refresh_movie_stats() never ran (a database without a deploy): small.
LIVE_STATS_SQL = """
SELECT movie_id, count(*) AS n_ratings, sum(rating::float8) AS sum_ratings
FROM movrec.watch_events GROUP BY movie_id ORDER BY movie_id
"""

# Bumped whenever what champion() shares changes, so no backend maps files of an older layout.
SHARED_LAYOUT = 2
# Users whose vectors choose the champion's index head (movrec.scoring.BoundIndex.build).
PROBES_SQL = """
SELECT embedding::real[] AS e FROM model.user_latent_attributes WHERE model_id = $1 LIMIT 64
"""
CF_SQL = "SELECT movie_id, score FROM model.user_recommendation WHERE user_id = $1 ORDER BY rank"
TITLES_SQL = "SELECT movie_id, title FROM movrec.movies WHERE movie_id = ANY($1)"
# Names this database's shared matrices apart from other clusters' and databases' in /dev/shm.
DATABASE_SQL = """
SELECT (SELECT system_identifier FROM pg_control_system())::text || '-' ||
       (SELECT oid FROM pg_database WHERE datname = current_database())::text AS name
"""


# --- pure numpy: the caches --------------------------------------------------------


def with_extra(
    base: MovieSide,
    ids: np.ndarray,
    vectors: np.ndarray,
    bias: np.ndarray,
    ranking: np.ndarray | None,
) -> MovieSide:
    """The champion's movie side plus movies embedded after deploy, sorted by movie id.

    A movie already in the base matrix keeps its trained row.  Without a ranking
    row for an extra movie (a model without a ranking head) ranking stays None.
    """
    new = ~np.isin(ids, base.movie_ids)
    if not new.any():
        return base
    ids, vectors, bias = ids[new], vectors[new], bias[new]
    all_ids = np.concatenate([base.movie_ids.astype(np.int32), ids.astype(np.int32)])
    order = np.argsort(all_ids, kind="stable")
    rank = None
    if base.ranking is not None and ranking is not None:
        rank = np.vstack([base.ranking, ranking[new].astype(np.float32)])[order]
    return MovieSide(
        model_id=base.model_id,
        movie_ids=all_ids[order],
        vectors=np.ascontiguousarray(np.vstack([base.vectors, vectors.astype(np.float32)])[order]),
        bias=np.concatenate([base.bias, bias.astype(np.float32)])[order],
        global_mean=base.global_mean,
        default_embedding=base.default_embedding,
        default_bias=base.default_bias,
        ranking=None if rank is None else np.ascontiguousarray(rank),
    )


@dataclass(frozen=True)
class Catalogue:
    """Per movie: a genre bitmask (any number of genres, 64 a word) and the year (0: unknown)."""

    key: int  # max(movie_id) when loaded
    loaded_at: float
    movie_ids: np.ndarray  # int64, ascending
    genre_bits: np.ndarray  # uint64 (n, words)
    year: np.ndarray  # int32 (n,)
    genre_index: dict[str, int] = field(default_factory=dict)  # casefolded name -> bit
    genre_names: list[str] = field(default_factory=list)  # bit -> name as first spelled

    @classmethod
    def build(
        cls,
        key: int,
        movie_ids: Sequence[int],
        years: Sequence[int | None],
        genres: Sequence[Sequence[str] | None],
    ) -> Catalogue:
        index: dict[str, int] = {}
        names: list[str] = []
        for gs in genres:
            for g in gs or ():
                if g.casefold() not in index:
                    index[g.casefold()] = len(names)
                    names.append(g)
        words = max(1, (len(index) + 63) // 64)
        bits = np.zeros((len(movie_ids), words), dtype=np.uint64)
        for i, gs in enumerate(genres):
            for g in gs or ():
                b = index[g.casefold()]
                bits[i, b // 64] |= np.uint64(1) << np.uint64(b % 64)
        return cls(
            key=key,
            loaded_at=time.monotonic(),
            movie_ids=np.asarray(movie_ids, dtype=np.int64),
            genre_bits=bits,
            year=np.asarray([y or 0 for y in years], dtype=np.int32),
            genre_index=index,
            genre_names=names,
        )

    def positions(self, movie_ids: np.ndarray | Sequence[int]) -> np.ndarray:
        ids = np.asarray(movie_ids, dtype=np.int64)
        if not len(self.movie_ids):
            return np.full(len(ids), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.movie_ids, ids), len(self.movie_ids) - 1)
        return np.where(self.movie_ids[pos] == ids, pos, -1)

    def mask(
        self, genres: Sequence[str] | None, min_year: int | None, max_year: int | None
    ) -> np.ndarray:
        """Which catalogue rows pass: ANY of the genres (case-insensitive), years inclusive.

        A movie without a year fails any year bound.  An unknown genre is an error
        (a typo would otherwise silently return nothing).
        """
        ok = np.ones(len(self.movie_ids), dtype=bool)
        if genres is not None:
            unknown = [g for g in genres if g.casefold() not in self.genre_index]
            if unknown:
                raise InvalidArgument(
                    f"unknown genre(s): {', '.join(unknown)}",
                    hint="known genres: " + ", ".join(sorted(self.genre_names)),
                )
            query = np.zeros(self.genre_bits.shape[1], dtype=np.uint64)
            for g in genres:
                b = self.genre_index[g.casefold()]
                query[b // 64] |= np.uint64(1) << np.uint64(b % 64)
            ok &= (self.genre_bits & query).any(axis=1)
        if min_year is not None:
            ok &= self.year >= min_year
        if max_year is not None:
            ok &= (self.year <= max_year) & (self.year > 0)
        return ok

    def allowed(self, movie_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """mask (over catalogue rows) looked up for movie ids; a movie not in the catalogue fails."""
        pos = self.positions(movie_ids)
        return (pos >= 0) & mask[np.maximum(pos, 0)]


@dataclass(frozen=True)
class Popularity:
    version: str | None  # refreshed_at of model.movie_rating_stats; None: computed live
    movie_ids: np.ndarray  # int64, ascending
    score: np.ndarray  # float64 damped mean rating

    @classmethod
    def build(
        cls,
        version: str | None,
        movie_ids: Sequence[int],
        n: Sequence[float],
        sums: Sequence[float],
        damping: float = POPULARITY_DAMPING,
    ) -> Popularity:
        """score = (sum + damping * mu) / (n + damping), mu the mean of all ratings."""
        n_a = np.asarray(n, dtype=np.float64)
        s_a = np.asarray(sums, dtype=np.float64)
        mu = float(s_a.sum() / n_a.sum()) if n_a.sum() > 0 else 3.0
        return cls(
            version,
            np.asarray(movie_ids, dtype=np.int64),
            (s_a + damping * mu) / (n_a + damping),
        )


# --- loading the caches -----------------------------------------------------------


def champion(model_id: int | None, n_extra: int = 0, max_extra: int = 0) -> MovieSide | None:
    """The deployed model's movie side (with its extra movies), loaded once per backend per key
    and mapped from the copy all backends share (see movrec.shared)."""
    global _champion, _champion_key
    if model_id is None:
        return None
    key = (int(model_id), int(n_extra or 0), int(max_extra or 0))
    if _champion is None or _champion_key != key:
        r = backend.execute(CHAMPION_SQL, ["int8"], [model_id])[0]
        name = f"{_database()}-{key[0]}-{r['row_version']}-{key[1]}-{key[2]}-v{SHARED_LAYOUT}"

        def from_registry() -> dict[str, np.ndarray]:  # only when no backend shared it yet
            side = _load_side(r, key[1])
            probes = [x["e"] for x in backend.execute(PROBES_SQL, ["int8"], [r["model_id"]])]
            index = BoundIndex.build(
                side.order_matrix,
                np.asarray(probes or [r["default_embedding"]], dtype=np.float32),
            )
            empty = {f"index_{p}": np.empty(0, np.float32) for p in BoundIndex.PARTS}
            return {
                "ids": side.movie_ids,
                "m": _stacked(side),
                **(index.arrays() if index is not None else empty),
            }

        parts = ("ids", "m", *(f"index_{p}" for p in BoundIndex.PARTS))
        # The builder's lock is one the server sees (the build runs SQL), taken without
        # waiting: the others watch for its files (movrec.shared).
        arrays = shared.shared_arrays(
            name,
            parts,
            from_registry,
            group=_database(),
            lock=lambda: backend.try_advisory_xact_lock(SHARED_LOCK_CLASS, name),
        )
        ids, m = arrays["ids"], arrays["m"]
        dim = len(r["default_embedding"])
        _champion = MovieSide(
            model_id=int(r["model_id"]),
            movie_ids=ids,
            vectors=m[:, :dim],
            bias=m[:, dim],
            global_mean=float(r["global_mean"]),
            default_embedding=np.asarray(r["default_embedding"], dtype=np.float32),
            default_bias=float(r["default_bias"]),
            ranking=m[:, dim + 1 :] if m.shape[1] > dim + 1 else None,
            index=BoundIndex.from_arrays(arrays),
            rating_matrix=m[:, : dim + 1],
        )
        _champion_key = key
    return _champion


def _stacked(side: MovieSide) -> np.ndarray:
    """[vectors | bias | ranking vector | prior] per movie: one float32 matrix to share."""
    parts = [side.vectors, side.bias[:, None]]
    if side.ranking is not None:
        parts.append(side.ranking)
    return np.hstack(parts).astype(np.float32)


def _load_side(r: dict[str, Any], n_extra: int) -> MovieSide:
    """The champion's movie side from its registry row, plus movies embedded after deploy."""
    blobs = backend.execute(CHAMPION_BLOBS_SQL, ["int8"], [r["model_id"]])[0]
    side = MovieSide.from_blobs(
        r["model_id"],
        blobs["serving_movie_ids"],
        blobs["serving_matrix"],
        r["global_mean"],
        r["default_embedding"],
        r["default_bias"],
        blobs["serving_ranking"],
    )
    if not n_extra:
        return side
    rows = backend.execute(EXTRA_SQL, ["int8"], [r["model_id"]])
    if not rows:
        return side
    ranking = (
        np.asarray([x["r"] for x in rows], dtype=np.float32).reshape(len(rows), -1)
        if all(x["r"] is not None for x in rows)
        else None
    )
    return with_extra(
        side,
        np.asarray([x["movie_id"] for x in rows], dtype=np.int64),
        np.asarray([x["e"] for x in rows], dtype=np.float32).reshape(len(rows), side.dim),
        np.asarray([x["bias"] for x in rows], dtype=np.float32),
        ranking,
    )


_database_name: str | None = None


def _database() -> str:
    global _database_name
    if _database_name is None:
        _database_name = backend.execute(DATABASE_SQL)[0]["name"]
    return _database_name


def current_champion() -> MovieSide | None:
    rows = backend.execute(CHAMPION_KEY_SQL)
    if not rows:
        return None
    r = rows[0]
    return champion(r["model_id"], r["n_extra"], r["max_extra"])


def catalogue(max_movie: int | None) -> Catalogue:
    global _catalogue
    key = int(max_movie or 0)
    c = _catalogue
    if c is None or c.key != key or time.monotonic() - c.loaded_at > CATALOGUE_TTL_S:
        rows = backend.execute(CATALOGUE_SQL)
        c = _catalogue = Catalogue.build(
            key,
            [r["movie_id"] for r in rows],
            [r["year"] for r in rows],
            [r["genres"] for r in rows],
        )
    return c


def popularity() -> Popularity:
    global _popularity
    rows = backend.execute(STATS_VERSION_SQL)
    version = rows[0]["v"] if rows else None
    if version is not None and _popularity is not None and _popularity.version == version:
        return _popularity
    stats = backend.execute(STATS_SQL if version is not None else LIVE_STATS_SQL)
    pop = Popularity.build(
        version,
        [r["movie_id"] for r in stats],
        [r["n_ratings"] for r in stats],
        [r["sum_ratings"] for r in stats],
    )
    if version is not None:
        _popularity = pop
    return pop


def _aligned_positions(champ: MovieSide, cat: Catalogue) -> np.ndarray:
    """Catalogue row of each of the champion's movies (-1: not in the catalogue), cached."""
    key = (_champion_key, champ.model_id, len(champ.movie_ids), cat.key, cat.loaded_at)
    pos = _aligned.get(key)
    if pos is None:
        _aligned.clear()
        pos = _aligned[key] = cat.positions(champ.movie_ids)
    return pos


# --- the user's state -------------------------------------------------------------


@dataclass
class UserState:
    champ: MovieSide | None
    vector: np.ndarray | None  # the user's own vector of the champion
    bias: float
    seen: list[int]
    min_predicted: float
    max_movie: int | None

    def default_vector(self) -> tuple[np.ndarray, float] | None:
        """A rater without a vector of the champion is scored with the default (mean) vector."""
        if self.champ is None or self.vector is not None or not self.seen:
            return None
        return self.champ.default_embedding, self.champ.default_bias


def _user_state(user_id: int) -> UserState:
    r = backend.execute(USER_STATE_SQL, ["int4"], [user_id])[0]
    min_predicted = float(r["min_predicted"]) if r["min_predicted"] else DEFAULT_MIN_PREDICTED
    champ = champion(r["champion"], r["n_extra"], r["max_extra"])
    seen = r["seen"] or []
    own = None
    bias = 0.0
    if champ is not None and r["embedding"] is not None and r["model_id"] == champ.model_id:
        own, bias = np.asarray(r["embedding"], dtype=np.float32), float(r["bias"])
    return UserState(champ, own, bias, seen, min_predicted, r["max_movie"])


def _check_user(user_id: Any) -> None:
    if user_id is None:
        raise NullArgument("user_id must not be NULL")


# --- recommend --------------------------------------------------------------------


@dataclass
class _Picker:
    """Collects rows across the sources: skips seen, chosen, filtered and model-rejected movies."""

    k: int
    state: UserState
    cat_mask: np.ndarray | None  # filters over catalogue rows; None: no filter
    cat: Catalogue | None
    user: tuple[np.ndarray, float] | None  # the user's own vector: rejects movies predicted < 3
    chosen: dict[int, tuple[float, float, str]] = field(default_factory=dict)

    @property
    def missing(self) -> int:
        return self.k - len(self.chosen)

    def acceptable(self, ids: np.ndarray) -> np.ndarray:
        ok = ~np.isin(ids, np.asarray(self.state.seen, dtype=np.int64))
        if self.chosen:
            ok &= ~np.isin(ids, np.fromiter(self.chosen, dtype=np.int64))
        if self.cat_mask is not None and self.cat is not None:
            ok &= self.cat.allowed(ids, self.cat_mask)
        champ = self.state.champ
        if self.user is not None and champ is not None:
            pos = champ.positions(ids)
            known = pos >= 0
            predicted = np.full(len(ids), np.inf, dtype=np.float32)
            predicted[known] = champ.predicted_at(*self.user, pos[known])
            ok &= predicted >= self.state.min_predicted
        return ok

    def add_model(self, u: np.ndarray, b_u: float) -> None:
        champ = self.state.champ
        assert champ is not None
        bad = np.zeros(len(champ.movie_ids), dtype=bool)
        seen_pos = champ.positions(self.state.seen)
        bad[seen_pos[seen_pos >= 0]] = True
        if self.chosen:
            pos = champ.positions(list(self.chosen))
            bad[pos[pos >= 0]] = True
        if self.cat_mask is not None and self.cat is not None:
            aligned = _aligned_positions(champ, self.cat)
            bad |= ~((aligned >= 0) & self.cat_mask[np.maximum(aligned, 0)])
        want = self.missing
        exclude = np.flatnonzero(bad)
        if champ.ranking is None:
            # Ordered by the predicted rating itself: the k best, then the >= 3 stars filter
            # (a best movie below 3 stars means every later one is below it too).
            best = champ.best(u, want, exclude)
            predicted = champ.predicted_at(u, b_u, best)
            keep = predicted >= self.state.min_predicted
            best, kept = best[keep], predicted[keep]
            scores = kept
        else:
            # Ordered by the ranking head; the >= 3 stars filter needs predicted ratings only
            # for the best-ranked candidates, so take a few more than wanted and widen the
            # window while too many of them fail it.
            window = 2 * want + 16
            while True:
                cand = champ.best(u, window, exclude)
                predicted = champ.predicted_at(u, b_u, cand)
                good = np.flatnonzero(predicted >= self.state.min_predicted)
                if len(good) >= want or len(cand) < window:
                    break
                window *= 4
            best, kept = cand[good[:want]], predicted[good[:want]]
            rank = champ.ranking[best]
            scores = rank[:, :-1] @ u + rank[:, -1]
        for m, s, p in zip(champ.movie_ids[best], scores, kept, strict=True):
            self.chosen[int(m)] = (float(s), float(clip_rating(p)), "model")

    def add_ranked(self, ids: np.ndarray, scores: np.ndarray, source: str) -> None:
        """Candidates in the order given (best first)."""
        if self.missing <= 0 or not len(ids):
            return
        keep = np.flatnonzero(self.acceptable(ids))[: self.missing]
        for i in keep:
            s = float(scores[i])
            self.chosen[int(ids[i])] = (s, float(clip_rating(s)), source)

    def add_popular(self) -> None:
        if self.missing <= 0:
            return
        pop = popularity()
        ok = self.acceptable(pop.movie_ids)
        best = top_k(pop.score, self.missing, exclude=np.flatnonzero(~ok))
        for m, s in zip(pop.movie_ids[best], pop.score[best], strict=True):
            self.chosen[int(m)] = (float(s), float(s), "popular")


@backend.sql_entry
def recommend(
    user_id: int | None,
    k: int | None,
    genres: list[str] | None = None,
    min_year: int | None = None,
    max_year: int | None = None,
) -> list[Row]:
    _check_user(user_id)
    if k is None or k < 1:
        raise InvalidArgument(f"k must be a positive number of movies, got {k}")
    if genres is not None and (not genres or any(g is None for g in genres)):
        raise InvalidArgument("genres must be NULL or a non-empty array without NULLs")
    state = _user_state(user_id)
    filtered = genres is not None or min_year is not None or max_year is not None
    cat = catalogue(state.max_movie) if filtered else None
    cat_mask = cat.mask(genres, min_year, max_year) if cat is not None else None
    champ = state.champ
    own = (state.vector, state.bias) if champ is not None and state.vector is not None else None
    picker = _Picker(k, state, cat_mask, cat, own)

    if own is not None:  # 1. the user's own vector
        picker.add_model(*own)
    if picker.missing > 0:  # 2. Pearson CF rows
        rows = backend.execute(CF_SQL, ["int4"], [user_id])
        if rows:
            picker.add_ranked(
                np.asarray([r["movie_id"] for r in rows], dtype=np.int64),
                np.asarray([r["score"] for r in rows], dtype=np.float64),
                "cf",
            )
    default = state.default_vector()
    if picker.missing > 0 and default is not None:  # 3. a rater without a vector: the mean user
        picker.add_model(*default)
    picker.add_popular()  # 4. damped mean rating
    return _with_titles(picker.chosen)


def _with_titles(chosen: dict[int, tuple[float, float, str]]) -> list[Row]:
    if not chosen:
        return []
    titles = {
        r["movie_id"]: r["title"] for r in backend.execute(TITLES_SQL, ["int4[]"], [list(chosen)])
    }
    return [
        (m, titles[m], s, p, src)
        for m, (s, p, src) in chosen.items()
        if m in titles  # a movie deleted from the catalogue since training
    ]


# --- predict ------------------------------------------------------------------------


def _vector_or_default(state: UserState) -> tuple[np.ndarray, float]:
    assert state.champ is not None
    if state.vector is not None:
        return state.vector, state.bias
    return state.champ.default_embedding, state.champ.default_bias


@backend.sql_entry
def predict(user_id: int | None, movie_id: int | None) -> float:
    _check_user(user_id)
    if movie_id is None:
        raise NullArgument("movie_id must not be NULL")
    state = _user_state(user_id)
    champ = state.champ
    if champ is None:
        raise NoChampion(
            "no model is deployed", hint="train one: SELECT movrec.train('mf') or `movrec train`"
        )
    pos = int(champ.positions([movie_id])[0])
    if pos < 0:
        raise NotFound(f"movie {movie_id} is not known to model {champ.model_id}")
    u, b_u = _vector_or_default(state)
    return float(clip_rating(champ.vectors[pos] @ u + champ.bias[pos] + b_u + champ.global_mean))


@backend.sql_entry
def predict_many(user_ids: list[int], movie_ids: list[int]) -> list[tuple[int, int, float | None]]:
    """Batch predict: one query for the users' vectors, numpy for the rest."""
    champ = current_champion()
    assert champ is not None  # the plpgsql front door checked
    rows = backend.execute(
        "SELECT user_id, embedding::real[] AS e, bias FROM model.user_latent_attributes "
        "WHERE user_id = ANY($1) AND model_id = $2",
        ["int4[]", "int8"],
        [list(set(user_ids)), champ.model_id],
    )
    vectors = {r["user_id"]: (np.asarray(r["e"], dtype=np.float32), float(r["bias"])) for r in rows}
    pos = champ.positions(movie_ids)
    out: list[tuple[int, int, float | None]] = []
    for u, m, p in zip(user_ids, movie_ids, pos, strict=True):
        if p < 0 or u is None:
            out.append((u, m, None))
            continue
        vec, bias = vectors.get(u, (champ.default_embedding, champ.default_bias))
        score = float(champ.vectors[p] @ vec + champ.bias[p] + bias + champ.global_mean)
        out.append((u, m, float(clip_rating(score))))
    return out


# --- explain ------------------------------------------------------------------------

RATED_SQL = """
SELECT w.movie_id, w.rating::float8 AS rating, m.title
FROM movrec.watch_events w JOIN movrec.movies m USING (movie_id) WHERE w.user_id = $1
"""


def closeness(similarity: float) -> str:
    if similarity >= 0.5:
        return "close to"
    if similarity >= 0.2:
        return "somewhat like"
    return "a little like"


def explain_rows(
    vectors: np.ndarray,
    candidate: np.ndarray,
    ratings: np.ndarray,
    baseline: float,
    k: int,
) -> list[tuple[int, float, float]]:
    """(row, cosine similarity, contribution) of the k rated movies that most support the candidate.

    contribution = cos(rated movie's vector, candidate's vector) * (rating - baseline):
    a movie the user liked (above their baseline) that is like the candidate
    counts for it; only positive contributions are returned, largest first.
    """
    norms = np.linalg.norm(vectors, axis=1) * float(np.linalg.norm(candidate))
    sims = (vectors @ candidate) / np.where(norms > 0, norms, 1.0)
    contrib = sims * (ratings - baseline)
    order = np.argsort(-contrib, kind="stable")
    return [(int(i), float(sims[i]), float(contrib[i])) for i in order[:k] if contrib[i] > 0]


@backend.sql_entry
def explain(
    user_id: int | None, movie_id: int | None, k: int | None = 3
) -> list[tuple[int, str, float, float, float, str]]:
    """The user's rated movies that contribute most to the candidate's score, in words.

    Rule: contribution = cosine(rated movie, candidate) * (rating - baseline), with
    the model's rating vectors and baseline = the user's mean rating damped toward
    the global mean, (sum + 5 * mu) / (n + 5).  Rated movies the model does not know
    are left out.
    """
    _check_user(user_id)
    if movie_id is None:
        raise NullArgument("movie_id must not be NULL")
    if k is None or k < 1:
        raise InvalidArgument(f"k must be at least 1, got {k}")
    champ = current_champion()
    if champ is None:
        raise NoChampion("no model is deployed", hint="train one: SELECT movrec.train('hybrid')")
    cpos = int(champ.positions([movie_id])[0])
    if cpos < 0:
        raise NotFound(f"movie {movie_id} is not known to model {champ.model_id}")
    title = backend.execute(
        "SELECT title FROM movrec.movies WHERE movie_id = $1", ["int4"], [movie_id]
    )
    cand_title = title[0]["title"] if title else f"movie {movie_id}"
    rated = backend.execute(RATED_SQL, ["int4"], [user_id])
    if not rated:
        return []
    ratings = np.asarray([r["rating"] for r in rated], dtype=np.float64)
    baseline = float(
        (ratings.sum() + EXPLAIN_DAMPING * champ.global_mean) / (len(ratings) + EXPLAIN_DAMPING)
    )
    pos = champ.positions([r["movie_id"] for r in rated])
    known = np.flatnonzero((pos >= 0) & (np.asarray([r["movie_id"] for r in rated]) != movie_id))
    if not len(known):
        return []
    out = []
    for i, sim, contrib in explain_rows(
        champ.vectors[pos[known]].astype(np.float64),
        champ.vectors[cpos].astype(np.float64),
        ratings[known],
        baseline,
        k,
    ):
        r = rated[int(known[i])]
        reason = (
            f"You rated {r['title']} {r['rating']:.1f} (your average is about {baseline:.1f}); "
            f"it is {closeness(sim)} {cand_title} (similarity {sim:.2f})"
        )
        out.append((int(r["movie_id"]), r["title"], float(r["rating"]), sim, contrib, reason))
    return out


# --- precomputed recommendations: model.model_recommendation ---------------------------

REFRESH_STATE_SQL = """
SELECT t.user_id, u.embedding::real[] AS embedding, u.bias, u.model_id,
       ARRAY(SELECT w.movie_id FROM movrec.watch_events w WHERE w.user_id = t.user_id) AS seen,
       current_setting('movrec.min_predicted_rating', true) AS min_predicted
FROM unnest($1::int4[]) AS t(user_id)
LEFT JOIN model.user_latent_attributes u USING (user_id)
"""

REFRESH_LOCK_SQL = f"""
SELECT count(pg_advisory_xact_lock({LOCK_CLASS}, u))
FROM (SELECT DISTINCT u FROM unnest($1::int4[]) AS t(u) ORDER BY u) s
"""

REFRESH_DELETE_SQL = "DELETE FROM model.model_recommendation WHERE user_id = ANY($1)"
REFRESH_INSERT_SQL = """
INSERT INTO model.model_recommendation (user_id, rank, movie_id, score, predicted_rating, model_id, computed_at)
SELECT u, r, m, s, p, $6, clock_timestamp()
FROM unnest($1::int4[], $2::int2[], $3::int4[], $4::float4[], $5::float4[]) AS t(u, r, m, s, p)
"""

REFRESH_CHUNK = 64  # users scored in one matrix product


def top_for_users(
    champ: MovieSide,
    vectors: np.ndarray,
    biases: np.ndarray,
    seen: Sequence[Sequence[int]],
    k: int,
    min_predicted: float,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per user: (positions, ranking scores, predicted ratings) of the top k, as recommend() ranks."""
    out = []
    for start in range(0, len(vectors), REFRESH_CHUNK):
        u = vectors[start : start + REFRESH_CHUNK]
        b = biases[start : start + REFRESH_CHUNK]
        predicted = u @ champ.vectors.T + champ.bias + (b[:, None] + champ.global_mean)
        scores = (
            predicted
            if champ.ranking is None
            else u @ champ.ranking[:, :-1].T + champ.ranking[:, -1]
        )
        for i in range(len(u)):
            pos = champ.positions(seen[start + i])
            exclude = np.concatenate([pos[pos >= 0], np.flatnonzero(predicted[i] < min_predicted)])
            best = top_k(scores[i], k, exclude=exclude)
            out.append((best, scores[i][best], predicted[i][best]))
    return out


def refresh_many(user_ids: Sequence[int]) -> int:
    """Replace the users' rows of model.model_recommendation (at most 150 each); returns rows written.

    In the caller's transaction, so readers see a user's old rows or new rows,
    never a mix; an advisory lock per user serialises concurrent refreshes.
    A user without a vector of the champion who rated gets the default vector's
    list (as recommend()); a user who never rated gets no rows.
    """
    ids = sorted({int(u) for u in user_ids if u is not None})
    if not ids:
        return 0
    champ = current_champion()
    backend.execute(REFRESH_LOCK_SQL, ["int4[]"], [ids])
    backend.execute(REFRESH_DELETE_SQL, ["int4[]"], [ids])
    if champ is None:
        return 0
    rows = backend.execute(REFRESH_STATE_SQL, ["int4[]"], [ids])
    users, vecs, biases, seen = [], [], [], []
    min_predicted = DEFAULT_MIN_PREDICTED
    for r in rows:
        if r["min_predicted"]:
            min_predicted = float(r["min_predicted"])
        if r["embedding"] is not None and r["model_id"] == champ.model_id:
            vecs.append(np.asarray(r["embedding"], dtype=np.float32))
            biases.append(float(r["bias"]))
        elif r["seen"]:
            vecs.append(champ.default_embedding)
            biases.append(champ.default_bias)
        else:
            continue
        users.append(r["user_id"])
        seen.append(r["seen"] or [])
    if not users:
        return 0
    tops = top_for_users(
        champ,
        np.vstack(vecs).astype(np.float32),
        np.asarray(biases, dtype=np.float32),
        seen,
        REFRESH_K,
        min_predicted,
    )
    cols: tuple[list[Any], ...] = ([], [], [], [], [])
    for user, (best, scores, predicted) in zip(users, tops, strict=True):
        n = len(best)
        cols[0].extend([user] * n)
        cols[1].extend(range(1, n + 1))
        cols[2].extend(champ.movie_ids[best].tolist())
        cols[3].extend(scores.astype(np.float64).tolist())
        cols[4].extend(np.clip(predicted, 0.5, 5.0).astype(np.float64).tolist())
    backend.execute(
        REFRESH_INSERT_SQL,
        ["int4[]", "int2[]", "int4[]", "float4[]", "float4[]", "int8"],
        [*cols, champ.model_id],
    )
    return len(cols[0])


@backend.sql_entry
def refresh_from_sql(user_ids: list[int] | None) -> int:
    if user_ids is None:
        raise NullArgument("user_id must not be NULL")
    return refresh_many(user_ids)


# --- the refresh queue ----------------------------------------------------------------

# The job remembers the user's vector row version (xmin) when it is claimed; it is
# deleted only if that row did not change since and no rating holds it (a rating in
# flight locks it FOR UPDATE in the online trigger, then enqueues the user again).
CLAIM_SQL = """
SELECT q.user_id,
       (SELECT u.xmin::text FROM model.user_latent_attributes u WHERE u.user_id = q.user_id) AS version
FROM model.refresh_queue q
WHERE q.not_before <= clock_timestamp() AND q.user_id <> ALL($1)
ORDER BY q.enqueued_at, q.user_id
LIMIT 1
FOR UPDATE OF q SKIP LOCKED
"""

FINISH_SQL = """
WITH cur AS (
    SELECT u.xmin::text AS v FROM model.user_latent_attributes u WHERE u.user_id = $1 FOR SHARE SKIP LOCKED
)
DELETE FROM model.refresh_queue q
WHERE q.user_id = $1
  AND ($2::text IS NULL AND NOT EXISTS (SELECT FROM model.user_latent_attributes u WHERE u.user_id = $1)
       OR (SELECT v FROM cur) = $2::text)
"""


QUEUE = jobs.JobQueue("refresh", "model.refresh_queue", CLAIM_SQL, FINISH_SQL, "version", "text")


@backend.sql_entry
def drain_from_sql(max_jobs: int | None) -> int:
    """Refresh up to max_jobs queued users, each in a subtransaction; returns jobs attempted."""
    return jobs.drain(QUEUE, max_jobs, lambda user_id: refresh_many([user_id]))
