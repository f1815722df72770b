"""The per-backend caches that serving reads: the champion's movie side, the catalogue, popularity.

Module globals, so per backend; none is ever written to the database, so
recommend() runs on a hot standby:

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
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from movrec import backend, locks, shared
from movrec.errors import CorruptCheckpoint, InvalidArgument
from movrec.scoring import BoundIndex, MovieSide

POPULARITY_DAMPING = 10  # ratings' worth of prior pulled toward the global mean
CATALOGUE_TTL_S = 60.0

_champion: MovieSide | None = None
_champion_key: tuple[int, int, int] | None = None
_catalogue: Catalogue | None = None
_popularity: Popularity | None = None
_aligned: dict[tuple[Any, ...], np.ndarray] = {}  # (champion key, catalogue key) -> positions

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
SHARED_LAYOUT = 4
# Users whose vectors choose the champion's index head (movrec.scoring.BoundIndex.build).
PROBES_SQL = """
SELECT embedding::real[] AS e FROM model.user_latent_attributes WHERE model_id = $1 LIMIT 64
"""

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
        # A NULL element (genres = '{NULL}') names no genre: it is skipped, so one such row
        # cannot break the filters of every request.
        named = [[g for g in gs or () if g is not None] for gs in genres]
        index: dict[str, int] = {}
        names: list[str] = []
        for gs in named:
            for g in gs:
                if g.casefold() not in index:
                    index[g.casefold()] = len(names)
                    names.append(g)
        words = max(1, (len(index) + 63) // 64)
        bits = np.zeros((len(movie_ids), words), dtype=np.uint64)
        for i, gs in enumerate(named):
            for g in gs:
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
            lock=lambda: backend.try_advisory_xact_lock(locks.SHARED_BUILD, name),
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
    try:
        side = MovieSide.from_blobs(
            r["model_id"],
            blobs["serving_movie_ids"],
            blobs["serving_matrix"],
            r["global_mean"],
            r["default_embedding"],
            r["default_bias"],
            blobs["serving_ranking"],
        )
        if side.dim != len(r["default_embedding"]):
            raise ValueError("matrix width does not match the default vector")
    except (ValueError, TypeError):  # blobs of the wrong length: edited after the deploy
        raise CorruptCheckpoint(
            f"the serving blobs of champion model {r['model_id']} in model.registry are damaged",
            hint=f"redeploy it, which rebuilds them from its checkpoint: "
            f"SELECT movrec.deploy({r['model_id']})",
        ) from None
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


def aligned_positions(champ: MovieSide, cat: Catalogue) -> np.ndarray:
    """Catalogue row of each of the champion's movies (-1: not in the catalogue), cached."""
    key = (_champion_key, champ.model_id, len(champ.movie_ids), cat.key, cat.loaded_at)
    pos = _aligned.get(key)
    if pos is None:
        _aligned.clear()
        pos = _aligned[key] = cat.positions(champ.movie_ids)
    return pos
