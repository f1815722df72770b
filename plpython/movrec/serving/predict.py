"""predict() and predict_many(): the champion's predicted rating of a movie by a user."""

from __future__ import annotations

import numpy as np

from movrec import backend
from movrec.errors import InvalidArgument, NoChampion, NotFound, NullArgument
from movrec.scoring import clip_rating
from movrec.serving.caches import current_champion
from movrec.serving.user import UserState, check_user, user_state


def _vector_or_default(state: UserState) -> tuple[np.ndarray, float]:
    assert state.champ is not None
    if state.vector is not None:
        return state.vector, state.bias
    return state.champ.default_embedding, state.champ.default_bias


@backend.sql_entry
def predict(user_id: int | None, movie_id: int | None) -> float:
    user_id = check_user(user_id)
    if movie_id is None:
        raise NullArgument("movie_id must not be NULL")
    state = user_state(user_id)
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
    """Batch predict: one query for the users' vectors, numpy for the rest.  One-dimensional
    arrays of one length without NULLs (the plpgsql front door checks the same)."""
    for name, ids in (("user_ids", user_ids), ("movie_ids", movie_ids)):
        if any(isinstance(x, list) for x in ids):
            raise InvalidArgument(f"{name} must be a one-dimensional array")
        if any(x is None for x in ids):
            raise NullArgument(f"{name} must not contain NULLs")
    if len(user_ids) != len(movie_ids):
        raise InvalidArgument("user_ids and movie_ids must be arrays of one length")
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
