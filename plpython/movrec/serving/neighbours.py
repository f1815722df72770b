"""The champion's item-item weights as recommend() adds them (movrec.item_item).

Shared like the champion's matrix (movrec.shared: one sealed copy per server, mapped by every
backend), and aligned with the champion's movie side: each weight's column is its
neighbour's row in that matrix.  The weights of a model never change once registered, so
the copy is named by the model and by the champion's movie rows (movies embedded after the
deploy shift the rows); a backend keeps the one it aligned for the champion object it serves,
so a deploy or a newly embedded movie is seen on the next call.  Nothing is written to the
database: a hot standby serves it too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from movrec import backend, locks, shared
from movrec.item_item import Neighbours
from movrec.scoring import MovieSide

ITEM_ITEM_SQL = "SELECT item_item FROM model.registry WHERE model_id = $1"
VERSION_SQL = "SELECT xmin::text AS v FROM model.registry WHERE model_id = $1"
HAS_COLUMN_SQL = """
SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'model.registry'::regclass
               AND attname = 'item_item' AND NOT attisdropped) AS present
"""
LAYOUT = 1  # bumped whenever what is shared changes


@dataclass(frozen=True)
class Aligned:
    """Row-sparse weights over the champion's rows: rated movie ``movie_ids[r]`` adds
    ``weights[k]`` to row ``columns[k]`` for k in ``indptr[r]:indptr[r + 1]``."""

    movie_ids: np.ndarray  # int64 ascending
    indptr: np.ndarray  # int64
    columns: np.ndarray  # int32, rows of the champion's matrix (-1 never stored)
    weights: np.ndarray  # float32
    n: int  # the champion's movie rows

    def term(self, seen: Sequence[int] | np.ndarray) -> np.ndarray:
        """float64 per champion row: the sum of the weights of the movies in ``seen``."""
        rows = Neighbours(self.movie_ids, self.indptr, self.columns, self.weights)
        at = rows.rows_of(np.unique(np.asarray(seen, dtype=np.int64)))
        return np.bincount(self.columns[at], self.weights[at].astype(np.float64), self.n)


_held: tuple[MovieSide, Aligned | None] | None = None
_has_column: bool | None = None


def aligned(champ: MovieSide) -> Aligned | None:
    """The champion's weights aligned with its rows; None for a model without any."""
    global _held, _has_column
    if _held is not None and _held[0] is champ:
        return _held[1]
    if _has_column is None:  # a database whose SQL is older than the package: no weights
        _has_column = bool(backend.execute(HAS_COLUMN_SQL)[0]["present"])
    found: Aligned | None = None
    if _has_column:
        found = _load(champ)
    _held = (champ, found)
    return found


def _load(champ: MovieSide) -> Aligned | None:
    from movrec.serving.caches import _database

    ids = champ.movie_ids
    group = f"{_database()}-nbr"
    tail = f"{int(ids[-1])}-{int(ids.astype(np.int64).sum())}" if len(ids) else "0-0"
    # the registry row's version: an UPDATE of its weights (a repair, a test) is a new copy
    rows = backend.execute(VERSION_SQL, ["int8"], [champ.model_id])
    version = rows[0]["v"] if rows else "0"
    name = f"{group}-{champ.model_id}-{version}-{len(ids)}-{tail}-v{LAYOUT}"
    missing = {"none": np.ones(1, np.int8)}

    def build() -> dict[str, np.ndarray]:
        rows = backend.execute(ITEM_ITEM_SQL, ["int8"], [champ.model_id])
        blob = rows[0]["item_item"] if rows else None
        if blob is None:
            return {
                **{k: np.empty(0, np.int64) for k in ("movie_ids", "indptr")},
                "columns": np.empty(0, np.int32),
                "weights": np.empty(0, np.float32),
                **missing,
            }
        nb = Neighbours.unpack(bytes(blob))
        cols = champ.positions(nb.neighbour_ids)
        keep = cols >= 0
        m, _, w = nb.triples()
        kept = Neighbours.from_triples(m[keep], cols[keep], w[keep])
        return {
            "movie_ids": kept.movie_ids,
            "indptr": kept.indptr,
            "columns": kept.neighbour_ids.astype(np.int32),
            "weights": kept.weights,
            "none": np.zeros(1, np.int8),
        }

    arrays = shared.shared_arrays(
        name,
        ("movie_ids", "indptr", "columns", "weights", "none"),
        build,
        group=group,
        lock=lambda: backend.try_advisory_xact_lock(locks.SHARED_BUILD, name),
    )
    if arrays["none"][0]:
        return None
    return Aligned(
        arrays["movie_ids"], arrays["indptr"], arrays["columns"], arrays["weights"], len(ids)
    )
