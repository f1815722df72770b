"""explain(): which of the user's rated movies support a candidate, in words."""

from __future__ import annotations

import numpy as np

from movrec import backend
from movrec.errors import InvalidArgument, NoChampion, NotFound, NullArgument
from movrec.serving.caches import current_champion
from movrec.serving.user import check_user

EXPLAIN_DAMPING = 5  # the user's baseline is their mean, damped toward the global mean

RATED_SQL = """
SELECT w.movie_id, w.rating::float8 AS rating, m.title
FROM movrec.watch_events w JOIN movrec.movies m USING (movie_id) WHERE w.user_id = $1
"""


def closeness(similarity: float) -> str:
    """How the reason words a cosine similarity.  A negative one is not likeness: it says
    "unlike" (a movie the user rated below their average supports a candidate unlike it)."""
    if similarity >= 0.5:
        return "close to"
    if similarity >= 0.2:
        return "somewhat like"
    if similarity >= 0:
        return "a little like"
    if similarity > -0.2:
        return "a little unlike"
    return "unlike"


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
    user_id = check_user(user_id)
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
