"""What serving needs to know about one user: their vector of the champion, what they rated."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from movrec import backend
from movrec.errors import NullArgument
from movrec.scoring import MovieSide
from movrec.serving.caches import champion

# Recommend only movies predicted at least this many stars (movrec.min_predicted_rating overrides).
DEFAULT_MIN_PREDICTED = 3.0

# One statement per call.  The vector and the seen list cross SPI as bytea (pgvector's binary
# form; the ids as concatenated big-endian int4), which numpy reads in place: a real[] or int[]
# becomes one Python object per element first.  No parameter but the user id: with one that
# a custom plan could fold away (a flag), the plan cache prefers custom plans and plans this
# statement again on every call (measured: 3x the CPU of the generic plan).
USER_STATE_SQL = """
SELECT c.model_id AS champion,
       vector_send(u.embedding) AS embedding, u.bias, u.model_id,
       (SELECT string_agg(int4send(w.movie_id), ''::bytea) FROM movrec.watch_events w
         WHERE w.user_id = $1) AS seen,
       current_setting('movrec.min_predicted_rating', true) AS min_predicted,
       x.n AS n_extra, x.max_id AS max_extra,
       (SELECT max(m.movie_id) FROM movrec.movies m) AS max_movie
FROM (SELECT (SELECT model_id FROM model.deployments ORDER BY deployment_id DESC LIMIT 1) AS model_id) c
LEFT JOIN model.user_latent_attributes u ON u.user_id = $1
LEFT JOIN LATERAL (SELECT count(*) AS n, coalesce(max(e.movie_id), 0) AS max_id
                   FROM model.movie_latent_extra e WHERE e.model_id = c.model_id) x ON true
"""
VECTOR_HEADER = 4  # pgvector's binary form: int16 dim, int16 unused, then big-endian float4s
NO_MOVIES = np.empty(0, dtype=np.int64)


@dataclass
class UserState:
    champ: MovieSide | None
    vector: np.ndarray | None  # the user's own vector of the champion
    bias: float
    seen: np.ndarray  # int64 movie ids the user rated
    min_predicted: float
    max_movie: int | None  # the catalogue's max(movie_id)

    def default_vector(self) -> tuple[np.ndarray, float] | None:
        """A rater without a vector of the champion is scored with the default (mean) vector."""
        if self.champ is None or self.vector is not None or not len(self.seen):
            return None
        return self.champ.default_embedding, self.champ.default_bias


def user_state(user_id: int) -> UserState:
    r = backend.execute(USER_STATE_SQL, ["int4"], [user_id])[0]
    min_predicted = float(r["min_predicted"]) if r["min_predicted"] else DEFAULT_MIN_PREDICTED
    champ = champion(r["champion"], r["n_extra"], r["max_extra"])
    seen = r["seen"]
    seen = np.frombuffer(seen, dtype=">i4").astype(np.int64) if seen else NO_MOVIES
    own = None
    bias = 0.0
    if champ is not None and r["embedding"] is not None and r["model_id"] == champ.model_id:
        own = np.frombuffer(r["embedding"], dtype=">f4", offset=VECTOR_HEADER).astype(np.float32)
        bias = float(r["bias"])
    return UserState(champ, own, bias, seen, min_predicted, r["max_movie"])


def check_user(user_id: int | None) -> int:
    """The user id of a call; NULL is refused."""
    if user_id is None:
        raise NullArgument("user_id must not be NULL")
    return user_id
