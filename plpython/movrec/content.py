"""Movie content as model input: token arrays per field and normalised numeric features.

Pure numpy; the hybrid model turns it into tensors.  The normalisation
constants travel with the model (in its checkpoint), so a movie added later
is encoded exactly like the training movies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from movrec.tokenizer import FIELDS

# MovieLens' genre vocabulary, in its own (alphabetical) order; ml-100k's flags follow it.
GENRES = (
    "Action",
    "Adventure",
    "Animation",
    "Children",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
NUMERIC = ("year", "runtime", "popularity", "vote_average", "vote_count")
LOG_SCALED = {"runtime", "popularity", "vote_count"}  # heavy-tailed: log1p before z-scoring


@dataclass
class MovieContent:
    movie_ids: np.ndarray  # int64, ascending
    tokens: dict[str, np.ndarray]  # field -> (n, length) int64
    vocab_sizes: dict[str, int]  # field -> size including PAD and UNK
    raw_numeric: np.ndarray  # (n, len(NUMERIC)) float64, NaN where missing

    def numeric(self, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        """z-scored features then missing flags: (n, 2 * len(NUMERIC)) float32."""
        x = self.raw_numeric.copy()
        for j, name in enumerate(NUMERIC):
            if name in LOG_SCALED:
                x[:, j] = np.log1p(np.maximum(x[:, j], 0))
        missing = np.isnan(x)
        z = np.where(missing, 0.0, (x - mean) / std)
        return np.hstack([z, missing]).astype(np.float32)

    def numeric_stats(self) -> tuple[np.ndarray, np.ndarray]:
        x = self.raw_numeric.copy()
        for j, name in enumerate(NUMERIC):
            if name in LOG_SCALED:
                x[:, j] = np.log1p(np.maximum(x[:, j], 0))
        mean = np.nan_to_num(np.nanmean(x, axis=0)) if len(x) else np.zeros(len(NUMERIC))
        std = np.nan_to_num(np.nanstd(x, axis=0), nan=1.0) if len(x) else np.ones(len(NUMERIC))
        return mean, np.where(std > 1e-9, std, 1.0)

    def select(self, movie_ids: np.ndarray) -> MovieContent:
        """Rows for these ids, in this order; movies without content get PAD tokens and NaNs."""
        pos = np.searchsorted(self.movie_ids, movie_ids)
        pos = np.minimum(pos, max(len(self.movie_ids) - 1, 0))
        found = (
            (self.movie_ids[pos] == movie_ids)
            if len(self.movie_ids)
            else np.zeros(len(movie_ids), bool)
        )
        tokens = {}
        for f, arr in self.tokens.items():
            out = np.zeros((len(movie_ids), arr.shape[1]), dtype=np.int64)
            out[found] = arr[pos[found]]
            tokens[f] = out
        numeric = np.full((len(movie_ids), len(NUMERIC)), np.nan)
        numeric[found] = self.raw_numeric[pos[found]]
        return MovieContent(
            np.asarray(movie_ids, dtype=np.int64), tokens, dict(self.vocab_sizes), numeric
        )


def empty(movie_ids: np.ndarray) -> MovieContent:
    """No content at all (nothing tokenized): every field PAD, every number missing."""
    tokens = {
        f: np.zeros((len(movie_ids), spec.length), dtype=np.int64) for f, spec in FIELDS.items()
    }
    return MovieContent(
        np.asarray(movie_ids, dtype=np.int64),
        tokens,
        {f: 2 for f in FIELDS},
        np.full((len(movie_ids), len(NUMERIC)), np.nan),
    )


# --- SQL glue ---------------------------------------------------------------------


def read_content() -> MovieContent:
    """movrec.movies + movrec.movie_tokens -> MovieContent (all movies)."""
    import plpy  # type: ignore[import-not-found]

    rows = plpy.execute(
        "SELECT movie_id, year::float8 AS year, runtime::float8 AS runtime, popularity::float8 AS popularity, "
        "vote_average::float8 AS vote_average, vote_count::float8 AS vote_count "
        "FROM movrec.movies ORDER BY movie_id"
    )
    ids = np.array([r["movie_id"] for r in rows], dtype=np.int64)
    numeric = np.array(
        [[np.nan if r[c] is None else r[c] for c in NUMERIC] for r in rows], dtype=np.float64
    ).reshape(len(rows), len(NUMERIC))
    content = empty(ids)
    content.raw_numeric = numeric
    sizes = {
        r["field"]: int(r["n"]) + 2
        for r in plpy.execute(
            "SELECT field, max(token_id) - 1 AS n FROM movrec.vocab GROUP BY field"
        )
    }
    content.vocab_sizes.update(sizes)
    for f, spec in FIELDS.items():
        if f not in sizes:
            continue
        for r in plpy.execute(
            plpy.prepare(
                "SELECT movie_id, token_ids FROM movrec.movie_tokens WHERE field = $1", ["text"]
            ),
            [f],
        ):
            i = int(np.searchsorted(ids, r["movie_id"]))
            if i < len(ids) and ids[i] == r["movie_id"]:
                t = r["token_ids"][: spec.length]
                content.tokens[f][i, : len(t)] = t
    return content
