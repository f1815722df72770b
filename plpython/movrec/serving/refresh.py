"""The stored recommendations: model.model_recommendation, the top 150 per user."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from movrec import backend, locks
from movrec.errors import InvalidArgument, NullArgument
from movrec.scoring import MovieSide, top_k
from movrec.serving import neighbours
from movrec.serving.caches import current_champion
from movrec.serving.user import DEFAULT_MIN_PREDICTED

REFRESH_K = 150  # model.model_recommendation keeps at most this many rows per user

REFRESH_STATE_SQL = """
SELECT t.user_id, u.embedding::real[] AS embedding, u.bias, u.model_id,
       ARRAY(SELECT w.movie_id FROM movrec.watch_events w WHERE w.user_id = t.user_id) AS seen,
       current_setting('movrec.min_predicted_rating', true) AS min_predicted
FROM unnest($1::int4[]) AS t(user_id)
LEFT JOIN model.user_latent_attributes u USING (user_id)
"""

# On Citus a correlated subquery beside unnest() cannot be pushed down: the vectors and the
# rated movies are read by two statements over the users' shards instead, and joined here.
REFRESH_VECTORS_SQL = """
SELECT u.user_id, u.embedding::real[] AS embedding, u.bias, u.model_id
FROM model.user_latent_attributes u WHERE u.user_id = ANY($1)
"""
REFRESH_SEEN_SQL = """
SELECT w.user_id, array_agg(w.movie_id) AS seen
FROM movrec.watch_events w WHERE w.user_id = ANY($1) GROUP BY w.user_id
"""
MIN_PREDICTED_SQL = "SELECT current_setting('movrec.min_predicted_rating', true) AS min_predicted"


def refresh_state(ids: list[int]) -> list[dict[str, Any]]:
    """Per user of ``ids`` (sorted, distinct), in that order: user_id, embedding, bias, model_id
    (None without a vector), seen (the movies rated, None without ratings), min_predicted."""
    if not backend.distributed():
        return list(backend.execute(REFRESH_STATE_SQL, ["int4[]"], [ids]))
    with backend.one_connection_per_node():
        vectors = {r["user_id"]: r for r in backend.execute(REFRESH_VECTORS_SQL, ["int4[]"], [ids])}
        seen = {
            r["user_id"]: r["seen"] for r in backend.execute(REFRESH_SEEN_SQL, ["int4[]"], [ids])
        }
    min_predicted = backend.execute(MIN_PREDICTED_SQL)[0]["min_predicted"]
    none = {"embedding": None, "bias": None, "model_id": None}
    return [
        {
            **vectors.get(u, none),
            "user_id": u,
            "seen": seen.get(u),
            "min_predicted": min_predicted,
        }
        for u in ids
    ]


REFRESH_LOCK_SQL = f"""
SELECT count(pg_advisory_xact_lock({locks.REFRESH}, u))
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
    # a hybrid with item-item weights: its ranking plus the user's rated movies' weights
    weights = neighbours.aligned(champ) if champ.ranking is not None else None
    for start in range(0, len(vectors), REFRESH_CHUNK):
        backend.check_interrupts()
        u = vectors[start : start + REFRESH_CHUNK]
        b = biases[start : start + REFRESH_CHUNK]
        predicted = u @ champ.vectors.T + champ.bias + (b[:, None] + champ.global_mean)
        scores = (
            predicted
            if champ.ranking is None
            else u @ champ.ranking[:, :-1].T + champ.ranking[:, -1]
        )
        for i in range(len(u)):
            pos = champ.positions(list(seen[start + i]))
            exclude = np.concatenate([pos[pos >= 0], np.flatnonzero(predicted[i] < min_predicted)])
            row = scores[i] if weights is None else scores[i] + weights.term(seen[start + i])
            best = top_k(row, k, exclude=exclude)
            out.append((best, row[best], predicted[i][best]))
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
    rows = refresh_state(ids)
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


# One advisory lock per user for the batch's transaction: the server's lock table holds
# max_locks_per_transaction x max_connections (6,400 by default) for every session together.
MAX_BATCH = 4096


@backend.sql_entry
def refresh_from_sql(user_ids: list[int | None] | None) -> int:
    """user_ids: a one-dimensional array without NULLs of at most MAX_BATCH users."""
    if user_ids is None:
        raise NullArgument("user_ids must not be NULL")
    if any(isinstance(u, list) for u in user_ids):
        raise InvalidArgument("user_ids must be a one-dimensional array")
    if any(u is None for u in user_ids):
        raise NullArgument(f"user_ids must not contain NULLs (element {user_ids.index(None) + 1})")
    if len(user_ids) > MAX_BATCH:
        raise InvalidArgument(
            f"user_ids: at most {MAX_BATCH} users a call (one lock each), got {len(user_ids)}",
            hint="call it in batches: movrec refresh --batch-size",
        )
    return refresh_many([u for u in user_ids if u is not None])
