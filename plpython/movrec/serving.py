"""recommend() and predict(): numpy scoring against the cached champion.

The champion's movie matrix is cached per backend, keyed by its model_id, so a
deploy is picked up on the next call without a restart.  Two SPI round trips per
recommend: user state (champion id, vector, seen movies), then titles.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from movrec import backend
from movrec.errors import InvalidArgument, NotFound, NullArgument
from movrec.scoring import MovieSide, clip_rating, top_k

POPULARITY_DAMPING = 10  # ratings' worth of prior pulled toward the global mean

_champion: MovieSide | None = None

USER_STATE_SQL = """
SELECT (SELECT model_id FROM model.deployments ORDER BY deployment_id DESC LIMIT 1) AS champion,
       u.embedding::real[] AS embedding, u.bias, u.model_id,
       (SELECT coalesce(array_agg(w.movie_id), '{}') FROM movrec.watch_events w
         WHERE w.user_id = $1) AS seen,
       current_setting('movrec.min_predicted_rating', true) AS min_predicted
FROM (SELECT 1) AS one LEFT JOIN model.user_latent_attributes u ON u.user_id = $1
"""

CHAMPION_SQL = """
SELECT model_id, serving_movie_ids, serving_matrix, global_mean, default_embedding, default_bias,
       serving_ranking
FROM model.registry WHERE model_id = $1
"""

DEFAULT_MIN_PREDICTED = 3.0  # the design's filter: recommend only movies predicted >= 3 stars

POPULAR_SQL = f"""
WITH stats AS (SELECT movie_id, count(*) AS n, avg(rating) AS mean
               FROM movrec.watch_events GROUP BY movie_id),
     prior AS (SELECT coalesce(avg(rating), 3.0) AS mu FROM movrec.watch_events)
SELECT m.movie_id, m.title,
       ((s.n * s.mean + {POPULARITY_DAMPING} * p.mu) / (s.n + {POPULARITY_DAMPING}))::real AS score
FROM stats s JOIN movrec.movies m USING (movie_id) CROSS JOIN prior p
WHERE s.movie_id <> ALL($2)
ORDER BY score DESC, m.movie_id
LIMIT $1
"""

TITLES_SQL = "SELECT movie_id, title FROM movrec.movies WHERE movie_id = ANY($1)"


def champion(model_id: int | None) -> MovieSide | None:
    """The deployed model's movie side, loaded once per backend per champion."""
    global _champion
    if model_id is None:
        return None
    if _champion is None or _champion.model_id != model_id:
        rows = backend.execute(CHAMPION_SQL, ["int8"], [model_id])
        r = rows[0]
        _champion = MovieSide.from_blobs(
            r["model_id"],
            r["serving_movie_ids"],
            r["serving_matrix"],
            r["global_mean"],
            r["default_embedding"],
            r["default_bias"],
            r["serving_ranking"],
        )
    return _champion


def current_champion() -> MovieSide | None:
    rows = backend.execute(
        "SELECT model_id FROM model.deployments ORDER BY deployment_id DESC LIMIT 1"
    )
    return champion(rows[0]["model_id"]) if rows else None


_min_predicted = DEFAULT_MIN_PREDICTED


def _user_state(user_id: int) -> tuple[MovieSide | None, np.ndarray | None, float, list[int]]:
    global _min_predicted
    r = backend.execute(USER_STATE_SQL, ["int4"], [user_id])[0]
    _min_predicted = float(r["min_predicted"]) if r["min_predicted"] else DEFAULT_MIN_PREDICTED
    champ = champion(r["champion"])
    seen = r["seen"] or []
    if champ is None:
        return None, None, 0.0, seen
    if r["embedding"] is not None and r["model_id"] == champ.model_id:
        return champ, np.asarray(r["embedding"], dtype=np.float32), float(r["bias"]), seen
    if seen:  # rated, but no vector of this model yet: the default vector
        return champ, champ.default_embedding, champ.default_bias, seen
    return champ, None, 0.0, seen


def _check_user(user_id: Any) -> None:
    if user_id is None:
        raise NullArgument("user_id must not be NULL")


@backend.sql_entry
def recommend(user_id: int | None, k: int | None) -> list[tuple[int, str, float, float, str]]:
    _check_user(user_id)
    if k is None or k < 1:
        raise InvalidArgument(f"k must be a positive number of movies, got {k}")
    champ, u, b_u, seen = _user_state(user_id)
    if champ is None or u is None:
        return _popular(k, seen)
    predicted = champ.scores(u, b_u)
    scores = champ.ranking_scores(u, predicted)
    seen_pos = champ.positions(seen)
    below = np.flatnonzero(predicted < _min_predicted)
    best = top_k(scores, k, exclude=np.concatenate([seen_pos[seen_pos >= 0], below]))
    ids = champ.movie_ids[best]
    titles = {
        r["movie_id"]: r["title"] for r in backend.execute(TITLES_SQL, ["int4[]"], [ids.tolist()])
    }
    return [
        (int(m), titles[int(m)], float(s), float(clip_rating(p)), "model")
        for m, s, p in zip(ids, scores[best], predicted[best], strict=True)
        if int(m) in titles  # a movie deleted from the catalogue since training
    ]


def _popular(k: int, seen: list[int]) -> list[tuple[int, str, float, float, str]]:
    rows = backend.execute(POPULAR_SQL, ["int4", "int4[]"], [k, seen])
    return [(r["movie_id"], r["title"], r["score"], r["score"], "popular") for r in rows]


@backend.sql_entry
def predict(user_id: int | None, movie_id: int | None) -> float:
    _check_user(user_id)
    if movie_id is None:
        raise NullArgument("movie_id must not be NULL")
    champ, u, b_u, _seen = _user_state(user_id)
    if champ is None:
        from movrec.errors import NoChampion

        raise NoChampion(
            "no model is deployed", hint="train one: SELECT movrec.train('mf') or `movrec train`"
        )
    pos = int(champ.positions([movie_id])[0])
    if pos < 0:
        raise NotFound(f"movie {movie_id} is not known to model {champ.model_id}")
    if u is None:
        u, b_u = champ.default_embedding, champ.default_bias
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
