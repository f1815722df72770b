"""The rating trigger: new users get the default vector, then one online step.

Concurrency: the user's row is locked (SELECT .. FOR UPDATE) before it is read,
so parallel ratings by the same user serialise and no update is lost.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from movrec import backend, serving
from movrec.scoring import sgd_step

LOCK_SQL = """
SELECT embedding::real[] AS embedding, bias, model_id,
       coalesce(current_setting('movrec.online_lr', true), '') AS lr,
       coalesce(current_setting('movrec.online_reg', true), '') AS reg
FROM model.user_latent_attributes WHERE user_id = $1 FOR UPDATE
"""

NEW_USER_SQL = """
INSERT INTO model.user_latent_attributes (user_id, embedding, bias, model_id)
VALUES ($1, $2::vector, $3, $4) ON CONFLICT (user_id) DO NOTHING
"""

# Archive the current vector and write the new one in one statement.
UPDATE_SQL = """
WITH archived AS (
    INSERT INTO model.user_latent_attributes_backups (user_id, embedding, bias, model_id)
    SELECT user_id, embedding, bias, model_id FROM model.user_latent_attributes WHERE user_id = $1
)
UPDATE model.user_latent_attributes
SET embedding = $2::vector, bias = $3, model_id = $4, updated_at = now()
WHERE user_id = $1
"""

DEFAULT_LR = 0.05
DEFAULT_REG = 0.02


def vector_literal(v: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in v.tolist()) + "]"


def on_rating(td: dict[str, Any]) -> None:
    new, old = td["new"], td["old"]
    if td["event"] == "UPDATE" and old["rating"] == new["rating"]:
        return None
    champ = serving.current_champion()
    if champ is None:  # nothing deployed yet: ratings are just stored
        return None
    user_id, movie_id, rating = new["user_id"], new["movie_id"], float(new["rating"])

    rows = backend.execute(LOCK_SQL, ["int4"], [user_id])
    if not rows:
        backend.execute(
            NEW_USER_SQL,
            ["int4", "text", "float4", "int8"],
            [user_id, vector_literal(champ.default_embedding), champ.default_bias, champ.model_id],
        )
        rows = backend.execute(LOCK_SQL, ["int4"], [user_id])
    r = rows[0]
    if r["model_id"] == champ.model_id:
        u, b_u = np.asarray(r["embedding"], dtype=np.float32), float(r["bias"])
    else:  # a vector of an older model: start again from this model's default
        u, b_u = champ.default_embedding, champ.default_bias

    pos = int(champ.positions([movie_id])[0])
    if pos < 0:  # a movie the champion has never seen has no vector to learn from
        return None
    lr = float(r["lr"]) if r["lr"] else DEFAULT_LR
    reg = float(r["reg"]) if r["reg"] else DEFAULT_REG
    new_u, new_b = sgd_step(
        u, b_u, champ.vectors[pos], float(champ.bias[pos]), champ.global_mean, rating, lr, reg
    )
    backend.execute(
        UPDATE_SQL,
        ["int4", "text", "float4", "int8"],
        [user_id, vector_literal(new_u), new_b, champ.model_id],
    )
    return None
