"""The model registry: register a trained model, deploy (publish) a champion.

Deploy runs in the caller's transaction, so it is atomic: readers see the old
champion until it commits.  It loads the checkpoint first, so a corrupt one is
refused before anything is written, and serves what the checkpoint gives: the
registry's serving blobs are rebuilt from it (and repaired where they differ).
"""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any

import numpy as np

from movrec import backend, locks
from movrec.errors import CorruptCheckpoint, InvalidArgument, NotFound, NotServable, NullArgument
from movrec.online import vector_literal

if TYPE_CHECKING:
    from movrec.models import Model

PUBLISHED_DIM = 100  # model.*_latent_attributes.embedding is vector(100)

REGISTER_SQL = """
INSERT INTO model.registry (kind, dim, params, data_snapshot, metrics, global_mean, checkpoint,
                            serving_movie_ids, serving_matrix, default_embedding, default_bias, duration_s,
                            serving_ranking, validation_split, item_item)
VALUES ($1, $2, $3::jsonb, $4::jsonb, $5::jsonb, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
RETURNING model_id
"""


def checkpoint_bytes(model: Model) -> bytes:
    """torch.save of {kind, config, state}: plain tensors and numbers, so weights_only=True loads it."""
    import torch

    buf = io.BytesIO()
    torch.save({"kind": model.kind, "config": model.config, "state": model.state_dict()}, buf)
    return buf.getvalue()


def load_checkpoint(kind: str, blob: bytes, model_id: int | None = None) -> Model:
    """Rebuild a model from its checkpoint; anything wrong is a CorruptCheckpoint."""
    import torch

    from movrec.models import MODELS

    name = f"model {model_id}" if model_id is not None else "checkpoint"
    if kind not in MODELS:
        raise CorruptCheckpoint(f"{name} has unknown kind {kind!r}")
    try:
        saved = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        if saved.get("kind") != kind:
            raise ValueError(
                f"checkpoint holds a {saved.get('kind')!r} model, the registry says {kind!r}"
            )
        return MODELS[kind].from_state_dict(saved["state"], saved["config"])
    except Exception as e:  # torch raises many kinds for a damaged file
        raise CorruptCheckpoint(
            f"checkpoint of {name} cannot be loaded: {type(e).__name__}: {str(e)[:200]}",
            hint="nothing was changed; deploy another model (movrec deploy ID)",
        ) from None


def serving_blobs(model: Model) -> tuple[bytes, bytes, list[float], float]:
    """What backends cache: movie ids, [vector | bias] matrix, default user vector and bias."""
    ids, vectors, bias = model.movie_side()
    _, user_vectors, user_bias = model.user_side()
    matrix = np.hstack([vectors.numpy(), bias.numpy()[:, None]]).astype(np.float32)
    return (
        ids.numpy().astype(np.int32).tobytes(),
        matrix.tobytes(),
        user_vectors.numpy().mean(axis=0).astype(np.float32).tolist(),
        float(user_bias.mean()),
    )


def register(
    model: Model,
    kind: str,
    params: dict[str, Any],
    snapshot: dict[str, Any],
    metrics: dict[str, Any],
    duration_s: float,
    validation_split: bytes | None = None,
    item_item: bytes | None = None,
) -> int:
    """Insert the registry row; ``validation_split`` is evaluation.pack_split() of the held-out
    ratings (what evaluate() scores later), None when not recorded; ``item_item`` is
    item_item.Neighbours.pack() of the weights recommend() adds, None for none."""
    ids, matrix, default_embedding, default_bias = serving_blobs(model)
    sql = REGISTER_SQL
    if not _has_column("item_item"):
        # the package is upgraded before the SQL: the model is stored without its weights
        sql = sql.replace(", item_item)", ")").replace(", $15)", ")")
        item_item = None
    if not _has_column("validation_split"):
        # A registry installed by an older release (the package is upgraded before the SQL
        # is): the row is stored without its split, and evaluate() says it has none.
        sql = sql.replace(", validation_split)", ")").replace(", $14)", ")")
        validation_split = None
    ranking = model.ranking_side()
    ranking_blob = ranking.numpy().astype(np.float32).tobytes() if ranking is not None else None
    types = [
        "text",
        "int4",
        "text",
        "text",
        "text",
        "float4",
        "bytea",
        "bytea",
        "bytea",
        "float4[]",
        "float4",
        "float4",
        "bytea",
        "bytea",
        "bytea",
    ]
    values = [
        kind,
        int(model.movie_side()[1].shape[1]),
        json.dumps(params),
        json.dumps(snapshot),
        json.dumps(metrics),
        float(model.global_mean),
        checkpoint_bytes(model),
        ids,
        matrix,
        default_embedding,
        default_bias,
        duration_s,
        ranking_blob,
        validation_split,
        item_item,
    ]
    if "item_item" not in sql:
        types, values = types[:-1], values[:-1]
    if validation_split is None and "validation_split" not in sql:
        types, values = types[:-1], values[:-1]
    row = backend.execute(sql, types, values)
    return int(row[0]["model_id"])


def _has_column(name: str) -> bool:
    """Whether model.registry has the column (validation_split, item_item: 0.3.0 and later)."""
    row = backend.execute(
        "SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'model.registry'::regclass "
        "AND attname = $1 AND NOT attisdropped) AS present",
        ["text"],
        [name],
    )
    return bool(row[0]["present"])


PUBLISH_MOVIES_SQL = """
INSERT INTO model.movie_latent_attributes (movie_id, embedding, bias, model_id)
SELECT id, e::vector, b, $4 FROM unnest($1::int4[], $2::text[], $3::float4[]) AS t(id, e, b)
"""

PUBLISH_USERS_SQL = """
INSERT INTO model.user_latent_attributes AS ula (user_id, embedding, bias, model_id, updated_at)
SELECT id, e::vector, b, $4, now() FROM unnest($1::int4[], $2::text[], $3::float4[]) AS t(id, e, b)
ON CONFLICT (user_id) DO UPDATE
SET embedding = excluded.embedding, bias = excluded.bias, model_id = excluded.model_id,
    updated_at = excluded.updated_at
"""

# Users who joined after training keep a row, reset to the new model's default vector.
RESET_OTHERS_SQL = """
UPDATE model.user_latent_attributes
SET embedding = $1::vector, bias = $2, model_id = $3, updated_at = now()
WHERE model_id <> $3
"""


SERVING_SQL = """
SELECT serving_movie_ids, serving_matrix, serving_ranking, default_embedding, default_bias
FROM model.registry WHERE model_id = $1
"""
REPAIR_SQL = """
UPDATE model.registry
SET serving_movie_ids = $2, serving_matrix = $3, serving_ranking = $4, default_embedding = $5,
    default_bias = $6
WHERE model_id = $1
"""
# Stored serving values agree with the checkpoint's when within this (float32 arithmetic may
# round differently on another device or thread count).
SERVING_RTOL, SERVING_ATOL = 1e-4, 1e-5


def _unservable(ids: np.ndarray, matrix: np.ndarray, default: np.ndarray, ranking: Any) -> str:
    """What makes a serving state unusable ('' when nothing does)."""
    if not len(ids):
        return "it has no movies"
    if np.any(np.diff(ids) <= 0):
        return "its movie ids are not strictly ascending"
    if matrix.shape[0] != len(ids) or matrix.shape[1] != len(default) + 1:
        return f"its movie matrix has shape {matrix.shape} for {len(ids)} movies"
    for what, a in (("movie matrix", matrix), ("default vector", default), ("ranking", ranking)):
        if a is not None and not np.isfinite(a).all():
            return f"its {what} holds NaN or infinite values"
    if ranking is not None and ranking.shape[0] != len(ids):
        return f"its ranking matrix has {ranking.shape[0]} rows for {len(ids)} movies"
    return ""


def _stored_damage(stored: dict[str, Any], built: tuple[Any, ...]) -> str:
    """How the registry's stored serving blobs differ from the rebuilt ones ('' when they agree)."""
    ids, matrix, default_embedding, default_bias, ranking = built
    if stored["serving_movie_ids"] != ids:
        return "serving_movie_ids"
    pairs = [
        ("serving_matrix", stored["serving_matrix"], matrix),
        ("serving_ranking", stored["serving_ranking"], ranking),
    ]
    for column, have, want in pairs:
        if (have is None) != (want is None):
            return column
        if want is None:
            continue
        if len(have) != len(want):
            return f"{column} ({len(have)} bytes instead of {len(want)})"
        a, b = np.frombuffer(have, np.float32), np.frombuffer(want, np.float32)
        if not np.allclose(a, b, rtol=SERVING_RTOL, atol=SERVING_ATOL):
            return column
    stored_default = np.asarray(stored["default_embedding"] or [], dtype=np.float64)
    if stored_default.shape != (len(default_embedding),) or not np.allclose(
        stored_default, default_embedding, rtol=SERVING_RTOL, atol=SERVING_ATOL
    ):
        return "default_embedding"
    if stored["default_bias"] is None or not np.isclose(
        stored["default_bias"], default_bias, rtol=SERVING_RTOL, atol=SERVING_ATOL
    ):
        return "default_bias"
    return ""


def verify_serving(model_id: int, model: Model) -> tuple[list[float], float]:
    """Make the registry row's serving blobs (what recommend() and predict() read) the ones
    the checkpoint gives, and return the default user vector and bias.

    The blobs are rebuilt from the checkpoint; stored blobs that differ (truncated, zeroed,
    edited) are replaced, with a WARNING.  A checkpoint whose serving state cannot serve
    (NaN or infinite values, no movies, inconsistent shapes) is a CorruptCheckpoint: the
    deploy fails and nothing is changed.
    """
    ids, matrix, default_embedding, default_bias = serving_blobs(model)
    ranking_side = model.ranking_side()
    ranking_array = None if ranking_side is None else ranking_side.numpy().astype(np.float32)
    ranking = None if ranking_array is None else ranking_array.tobytes()
    id_array = np.frombuffer(ids, np.int32)
    problem = (
        "it has no movies"
        if not len(id_array)
        else _unservable(
            id_array,
            np.frombuffer(matrix, np.float32).reshape(len(id_array), -1),
            np.asarray(default_embedding, dtype=np.float32),
            ranking_array,
        )
    )
    if not problem and not np.isfinite(default_bias):
        problem = "its default bias is not finite"
    if problem:
        raise CorruptCheckpoint(
            f"model {model_id} cannot serve: {problem}",
            hint="nothing was changed; the champion stays. Retrain, or deploy another model",
        )
    stored = backend.execute(SERVING_SQL, ["int8"], [model_id])[0]
    damage = _stored_damage(stored, (ids, matrix, default_embedding, default_bias, ranking))
    if damage:
        backend.warning(
            f"movrec deploy: model {model_id}'s stored {damage} did not match its checkpoint; "
            "rebuilt from the checkpoint"
        )
        backend.execute(
            REPAIR_SQL,
            ["int8", "bytea", "bytea", "bytea", "float4[]", "float4"],
            [model_id, ids, matrix, ranking, default_embedding, default_bias],
        )
    return default_embedding, default_bias


def _publish(sql: str, ids: Any, vectors: Any, bias: Any, model_id: int) -> None:
    literals = []
    for i, v in enumerate(vectors.numpy()):  # seconds for 100k+ users: a cancel must get in
        if i % 4096 == 0:
            backend.check_interrupts()
        literals.append(vector_literal(v))
    backend.execute(
        sql,
        ["int4[]", "text[]", "float4[]", "int8"],
        [ids.tolist(), literals, bias.tolist(), model_id],
    )


PUBLISH_NEIGHBOURS_SQL = """
INSERT INTO model.movie_neighbours (movie_id, neighbour_id, model_id, weight)
SELECT m, n, $4, w FROM unnest($1::int4[], $2::int4[], $3::float4[]) AS t(m, n, w)
"""


def _publish_neighbours(model_id: int) -> None:
    """The portable install's model.movie_neighbours: the model's item-item weights (none for
    a model without).  The full install has no such table: its backends read the registry."""
    if not backend.execute("SELECT to_regclass('model.movie_neighbours') IS NOT NULL AS t")[0]["t"]:
        return
    backend.execute("DELETE FROM model.movie_neighbours")
    if not _has_column("item_item"):
        return
    blob = backend.execute(
        "SELECT item_item FROM model.registry WHERE model_id = $1", ["int8"], [model_id]
    )[0]["item_item"]
    if blob is None:
        return
    from movrec.item_item import Neighbours

    m, n, w = Neighbours.unpack(bytes(blob)).triples()
    backend.execute(
        PUBLISH_NEIGHBOURS_SQL,
        ["int4[]", "int4[]", "float4[]", "int8"],
        [m.tolist(), n.tolist(), w.tolist(), model_id],
    )


def deploy_model(model_id: int, reason: str = "deploy") -> int:
    # Deploys take turns, and each reads the registry after its turn came (a new snapshot
    # per statement), so the later one publishes over the earlier one's committed rows.
    backend.execute("SELECT pg_advisory_xact_lock($1, 0)", ["int4"], [locks.DEPLOY])
    rows = backend.execute(
        "SELECT kind, dim, checkpoint FROM model.registry WHERE model_id = $1", ["int8"], [model_id]
    )
    if not rows:
        raise NotFound(
            f"model {model_id} is not in model.registry",
            hint="SELECT model_id, kind, metrics FROM model.registry",
        )
    kind, dim = rows[0]["kind"], rows[0]["dim"]
    if dim != PUBLISHED_DIM:
        raise InvalidArgument(
            f"model {model_id} has dim {dim}; published vectors are vector({PUBLISHED_DIM})"
        )
    model = load_checkpoint(kind, rows[0]["checkpoint"], model_id)
    if not model.deployable:
        raise InvalidArgument(
            f"model {model_id} is a {kind} model, an experimental baseline that cannot serve",
            hint="serving multiplies a user vector with movie vectors; deploy mf or hybrid",
        )
    if getattr(model, "temporal", False):
        # recommend() and predict() do not compute the temporal terms at the user's query
        # time, so serving this model would not be the model that was evaluated
        raise NotServable(
            f"model {model_id} has temporal features (the temporal option), which recommend() "
            "and predict() do not serve",
            hint="it is for offline evaluation (movrec bench quality); deploy a model trained "
            "without temporal",
        )
    default_embedding, default_bias = verify_serving(model_id, model)
    backend.notice(f"movrec deploy: publishing model {model_id} ({kind})")
    backend.execute("DELETE FROM model.movie_latent_attributes")
    _publish(PUBLISH_MOVIES_SQL, *model.movie_side(), model_id)
    _publish(PUBLISH_USERS_SQL, *model.user_side(), model_id)
    backend.execute(
        RESET_OTHERS_SQL,
        ["text", "float4", "int8"],
        [vector_literal(np.asarray(default_embedding)), default_bias, model_id],
    )
    _publish_neighbours(model_id)
    backend.execute(
        "INSERT INTO model.deployments (model_id, reason) VALUES ($1, $2)",
        ["int8", "text"],
        [model_id, reason],
    )
    # On Citus a trigger on model.deployments would run on every node's copy: deploy does
    # what it does, once (sql/87_citus.sql).
    # (a database still on an older release's SQL has neither function: never distributed)
    if (
        backend.execute("SELECT to_regprocedure('movrec._distributed()') IS NOT NULL AS known")[0][
            "known"
        ]
        and backend.execute("SELECT movrec._distributed() AS d")[0]["d"]
    ):
        backend.execute("SELECT movrec._follow_champion()")
    # Build the shared serving matrix and its top-k index now, so that no request after the
    # deploy pays for it (0.3-1 s at 27k movies); backends map the files on their next call.
    # Only a head start: whatever goes wrong here, the first request builds them instead.
    # (Not from the CLI's process: its backends are elsewhere, and a portable install has none.)
    if not backend.in_server():
        return model_id
    from movrec import serving

    try:
        serving.current_champion()
    except Exception as e:  # any failure but a cancel: never fail a deploy over a cache
        if backend.is_interrupt(e):
            raise
        backend.notice(f"movrec deploy: serving cache not prepared ({e}); the first request will")
    return model_id


@backend.sql_entry
def deploy(model_id: int | None) -> int:
    if model_id is None:
        raise NullArgument("model_id must not be NULL")
    return deploy_model(model_id)
