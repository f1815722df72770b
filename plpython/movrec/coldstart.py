"""Cold start: vectors for movies added after the champion was trained.

movrec.embed_new_movies() (a job: it imports torch; never on a request or rating
path) finds movies in movrec.movies that the champion has no vector for, encodes
their content the way training did (tokens through the stored movrec.vocab,
numbers normalised with the checkpoint's constants), runs the champion's movie
sub-network (content encoder, rating head, ranking head) and stores the result:

* model.movie_latent_extra (model_id, movie_id, embedding, bias, ranking): serving
  appends these rows to its cached champion matrix (its cache key includes their
  count and max movie_id), so the movie can be recommended at once;
* model.movie_latent_attributes: so predict(), similar_movies() and explain() know it.

A new movie has no movie-id embedding (it had no ratings to learn one), so its
vector is the content part alone: exactly what the hybrid model gives a cold movie.

Only content models (hybrid, functional) have a sub-network; an MF champion cannot
score a movie it was not trained on, and such movies wait for the next training
(recommend() may still return them from the popularity fallback once rated).

Limitation: tokens come from the current movrec.vocab.  If movrec.tokenize() ran
again after the champion was trained, ids may differ from training's; ids beyond
the checkpoint's vocabulary sizes map to UNK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from movrec import backend
from movrec.content import NUMERIC, MovieContent
from movrec.errors import InvalidArgument
from movrec.tokenizer import FIELDS, UNK, Vocabulary, tokens

if TYPE_CHECKING:
    from movrec.models import HybridModel

CONTENT_KINDS = ("hybrid", "functional")

NEW_MOVIES_SQL = """
SELECT m.*
FROM movrec.movies m
WHERE NOT EXISTS (SELECT FROM model.movie_latent_attributes a WHERE a.movie_id = m.movie_id)
  AND NOT EXISTS (SELECT FROM model.movie_latent_extra x WHERE x.model_id = $1 AND x.movie_id = m.movie_id)
ORDER BY m.movie_id
LIMIT $2
"""

INSERT_EXTRA_SQL = """
WITH t AS (
    SELECT * FROM unnest($1::int4[], $2::text[], $3::float4[], $4::text[]) AS t(movie_id, e, b, r)
), extra AS (
    INSERT INTO model.movie_latent_extra (model_id, movie_id, embedding, bias, ranking)
    SELECT $5, movie_id, e::vector::real[], b, r::real[] FROM t
    ON CONFLICT (model_id, movie_id) DO NOTHING
)
INSERT INTO model.movie_latent_attributes (movie_id, embedding, bias, model_id)
SELECT movie_id, e::vector, b, $5 FROM t
ON CONFLICT (movie_id) DO NOTHING
"""


def encode(
    movies: list[dict[str, Any]], vocabs: dict[str, dict[str, int]], vocab_sizes: dict[str, int]
) -> MovieContent:
    """Content of new movies as the model saw training movies: fixed-length ids per field."""
    ids = np.asarray([m["movie_id"] for m in movies], dtype=np.int64)
    toks: dict[str, np.ndarray] = {}
    for name, spec in FIELDS.items():
        vocab = Vocabulary(name, vocabs.get(name, {}), {})
        size = vocab_sizes.get(name, 2)
        arr = np.zeros((len(movies), spec.length), dtype=np.int64)
        for i, m in enumerate(movies):
            row = np.asarray(vocab.encode(tokens(spec, m.get(spec.column)), spec.length))
            row[row >= size] = UNK  # a token the checkpoint's embedding table has no row for
            arr[i] = row
        toks[name] = arr
    numeric = np.asarray(
        [[np.nan if m.get(c) is None else float(m[c]) for c in NUMERIC] for m in movies],
        dtype=np.float64,
    ).reshape(len(movies), len(NUMERIC))
    return MovieContent(ids, toks, dict(vocab_sizes), numeric)


def sub_network(
    model: HybridModel, content: MovieContent
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(rating vectors, biases, [ranking vector | prior] or None) from content alone."""
    import torch

    numeric = content.numeric(model.numeric_mean.numpy(), model.numeric_std.numpy())
    tokens = {f: torch.from_numpy(content.tokens[f]) for f in model.encoder.fields}
    vec, bias, rank = model.content_side(tokens, torch.from_numpy(numeric))
    return (
        vec.numpy().astype(np.float32),
        bias.numpy().astype(np.float32),
        None if rank is None else rank.numpy().astype(np.float32),
    )


def _literal(v: np.ndarray) -> str:
    return "{" + ",".join(f"{x:.7g}" for x in v.tolist()) + "}"


@backend.sql_entry
def embed_new_movies(limit: int | None = None) -> int:
    """Vectors for up to ``limit`` movies the champion lacks (NULL: all); returns how many
    were embedded."""
    if limit is not None and limit < 0:
        raise InvalidArgument(f"max_movies must be NULL (all) or >= 0, got {limit}")
    champ = backend.execute("SELECT c.model_id, c.kind FROM model.champion c")
    if not champ:
        return 0
    model_id, kind = champ[0]["model_id"], champ[0]["kind"]
    movies = [dict(r) for r in backend.execute(NEW_MOVIES_SQL, ["int8", "int8"], [model_id, limit])]
    if not movies:
        return 0
    if kind not in CONTENT_KINDS:
        backend.notice(
            f"movrec embed: {len(movies)} movie(s) have no vector, and model {model_id} ({kind}) "
            "has no content sub-network: they wait for the next training"
        )
        return 0
    from movrec.models import HybridModel
    from movrec.registry import load_checkpoint

    blob = backend.execute(
        "SELECT checkpoint FROM model.registry WHERE model_id = $1", ["int8"], [model_id]
    )[0]["checkpoint"]
    model = load_checkpoint(kind, blob, model_id)
    if not isinstance(model, HybridModel):  # only content models reach here (checked above)
        raise TypeError(f"model {model_id} of kind {kind!r} has no content sub-network")
    vocabs: dict[str, dict[str, int]] = {}
    for r in backend.execute("SELECT field, token, token_id FROM movrec.vocab"):
        vocabs.setdefault(r["field"], {})[r["token"]] = r["token_id"]
    content = encode(movies, vocabs, dict(model.config["vocab_sizes"]))
    vectors, bias, ranking = sub_network(model, content)
    from movrec.online import vector_literal

    backend.execute(
        INSERT_EXTRA_SQL,
        ["int4[]", "text[]", "float4[]", "text[]", "int8"],
        [
            content.movie_ids.tolist(),
            [vector_literal(v) for v in vectors],
            bias.astype(np.float64).tolist(),
            [None] * len(vectors) if ranking is None else [_literal(r) for r in ranking],
            model_id,
        ],
    )
    backend.notice(f"movrec embed: {len(movies)} new movie(s) embedded with model {model_id}")
    return len(movies)
