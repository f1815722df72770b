"""Training in the database, the registry and deploy."""

from __future__ import annotations

import io

import psycopg
import pytest
import torch
from movrec.models import MatrixFactorization
from movrec.registry import load_checkpoint


def test_training_recovers_the_planted_structure(conn: psycopg.Connection) -> None:
    kind, params, metrics, snapshot = conn.execute(
        "SELECT kind, params, metrics, data_snapshot FROM model.registry ORDER BY model_id LIMIT 1"
    ).fetchone()
    assert kind == "mf" and params["seed"] == 42 and params["dim"] == 100
    # The planted taste term is most of the variance: a model that learned it is far below the mean.
    assert metrics["val_rmse"] < 0.75 * metrics["baseline_val_rmse"]
    assert metrics["val_mae"] < metrics["baseline_val_mae"]
    assert (
        snapshot["n_ratings"]
        == conn.execute("SELECT count(*) FROM movrec.watch_events").fetchone()[0]
    )


def test_deploy_publishes_vectors(conn: psycopg.Connection) -> None:
    model_id = conn.execute("SELECT model_id FROM model.champion").fetchone()[0]
    users, movies = conn.execute(
        """SELECT (SELECT count(*) FROM model.user_latent_attributes WHERE model_id = %(m)s),
                  (SELECT count(*) FROM model.movie_latent_attributes WHERE model_id = %(m)s)""",
        {"m": model_id},
    ).fetchone()
    assert (
        users
        == conn.execute("SELECT count(DISTINCT user_id) FROM movrec.watch_events").fetchone()[0]
    )
    assert (
        movies
        == conn.execute("SELECT count(DISTINCT movie_id) FROM movrec.watch_events").fetchone()[0]
    )
    # pgvector serves them: the movie closest to itself is itself
    nearest = conn.execute(
        """SELECT b.movie_id FROM model.movie_latent_attributes a, model.movie_latent_attributes b
           WHERE a.movie_id = 1 ORDER BY a.embedding <-> b.embedding LIMIT 1"""
    ).fetchone()[0]
    assert nearest == 1


def test_training_is_reproducible(conn: psycopg.Connection) -> None:
    first = conn.execute(
        "SELECT metrics->'val_rmse' FROM model.registry ORDER BY model_id LIMIT 1"
    ).fetchone()[0]
    again = conn.execute(
        """SELECT movrec.train('mf', '{"epochs": 30}', deploy => false)"""
    ).fetchone()[0]
    assert conn.execute(
        "SELECT metrics->'val_rmse' FROM model.registry WHERE model_id = %s", (again,)
    ).fetchone()[0] == pytest.approx(first, abs=1e-6)


def test_checkpoint_round_trips(conn: psycopg.Connection) -> None:
    (blob,) = conn.execute(
        "SELECT checkpoint FROM model.registry ORDER BY model_id LIMIT 1"
    ).fetchone()
    model = load_checkpoint("mf", blob)
    assert isinstance(model, MatrixFactorization)
    state = torch.load(io.BytesIO(blob), weights_only=True)["state"]
    assert torch.equal(
        model.state_dict()["movie_embedding.weight"], state["movie_embedding.weight"]
    )
    predicted = conn.execute("SELECT predict(1, 1)").fetchone()[0]
    u = int((model.user_ids == 1).nonzero()[0, 0])
    m = int((model.movie_ids == 1).nonzero()[0, 0])
    with torch.no_grad():
        offline = float(model(torch.tensor([u]), torch.tensor([m])).clamp(0.5, 5))
    assert predicted == pytest.approx(offline, abs=1e-3)


def test_corrupt_checkpoint_is_refused_and_champion_stays(conn: psycopg.Connection) -> None:
    champion = conn.execute("SELECT model_id FROM model.champion").fetchone()[0]
    before = conn.execute("SELECT movie_id FROM recommend(3)").fetchall()
    bad = conn.execute(
        """INSERT INTO model.registry (kind, dim, global_mean, checkpoint, serving_movie_ids, serving_matrix,
                                       default_embedding, default_bias)
           SELECT kind, dim, global_mean, substring(checkpoint from 1 for 200), serving_movie_ids,
                  serving_matrix, default_embedding, default_bias FROM model.registry WHERE model_id = %s
           RETURNING model_id""",
        (champion,),
    ).fetchone()[0]
    with pytest.raises(
        psycopg.errors.DataCorrupted, match=f"checkpoint of model {bad} cannot be loaded"
    ):
        conn.execute("SELECT movrec.deploy(%s)", (bad,))
    assert conn.execute("SELECT model_id FROM model.champion").fetchone()[0] == champion
    assert conn.execute("SELECT movie_id FROM recommend(3)").fetchall() == before


def test_bad_training_options_are_refused(conn: psycopg.Connection) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown training option"):
        conn.execute("""SELECT movrec.train('mf', '{"epoch": 3}')""")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown model kind"):
        conn.execute("SELECT movrec.train('nope')")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="epochs"):
        conn.execute("""SELECT movrec.train('mf', '{"epochs": 0}')""")
    with pytest.raises(
        psycopg.errors.InvalidParameterValue, match="in_batch must be true or false"
    ):
        conn.execute("""SELECT movrec.train('hybrid', '{"in_batch": "no"}')""")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="schedule must be"):
        conn.execute("""SELECT movrec.train('hybrid', '{"schedule": "linear"}')""")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="unless in_batch"):
        conn.execute("""SELECT movrec.train('hybrid', '{"in_batch": false, "negatives": 0}')""")


def test_options_start_from_the_kind_defaults() -> None:
    from movrec.training import TrainOptions

    hybrid = TrainOptions.parse({"seed": 3}, "hybrid")
    assert (hybrid.schedule, hybrid.in_batch, hybrid.epochs, hybrid.seed) == ("cosine", True, 8, 3)
    mf = TrainOptions.parse({}, "mf")
    assert (mf.schedule, mf.epochs) == ("constant", 40)
    assert TrainOptions.parse({"schedule": "constant"}, "hybrid").schedule == "constant"
    sampled = TrainOptions.parse({"in_batch": False}, "hybrid")
    assert (sampled.in_batch, sampled.negatives) == (False, 1024)
    with pytest.raises(Exception, match="epochs must be an integer"):
        TrainOptions.parse({"epochs": True}, "mf")


def test_training_without_validation_rows_runs_every_epoch() -> None:
    """Ten ratings leave no validation split: nothing to stop early on, so all epochs run."""
    import numpy as np
    from movrec.training import Ratings, TrainOptions, fit

    data = Ratings(
        np.arange(10, dtype=np.int64) % 3,
        np.arange(10, dtype=np.int64) % 4,
        np.linspace(1, 5, 10).astype(np.float32),
    )
    _, metrics = fit(data, "mf", TrainOptions.parse({"epochs": 5, "dim": 4}))
    assert metrics["n_val"] == 0 and len(metrics["history"]) == 5 and metrics["best_epoch"] == 5


def test_the_ranking_loss_stays_bounded_at_any_batch_size() -> None:
    """A batch of 70,000 with in-batch negatives would ask for 70,000 x 70,000 logits (20 GB
    a copy; the kernel killed the backend, restarting the server): the candidates and the
    rows the ranking loss averages over are capped."""
    from types import SimpleNamespace

    from movrec.models import HybridModel
    from movrec.models.hybrid import IN_BATCH_MAX, RANKING_LOGITS

    n_users, n_movies, batch, dim = 1000, 500, 70_000, 4
    seen: list[tuple[int, int]] = []

    def softmax(u, movies, pos, negatives, neg, log_q):  # type: ignore[no-untyped-def]
        seen.append((len(u), len(negatives)))
        assert len(pos) == len(u) == len(movies) and len(neg) == len(negatives)
        return torch.zeros(len(u))

    def movie_repr(distinct):  # type: ignore[no-untyped-def]
        return (
            torch.zeros(len(distinct), dim),
            torch.zeros(len(distinct)),
            torch.zeros(len(distinct), dim + 1),
        )

    fake = SimpleNamespace(
        movie_repr=movie_repr,
        user_embedding=torch.nn.Embedding(n_users, dim),
        user_bias=torch.nn.Embedding(n_users, 1),
        global_mean=torch.tensor(3.5),
        _sampled_softmax=softmax,
    )
    g = torch.Generator().manual_seed(0)
    users = torch.randint(n_users, (batch,), generator=g)
    movies = torch.randint(n_movies, (batch,), generator=g)
    ratings = torch.full((batch,), 4.0)
    HybridModel.joint_loss(
        fake,  # type: ignore[arg-type]
        users,
        movies,
        ratings,
        torch.empty(0, dtype=torch.long),
        None,
        torch.ones(batch),
        True,
    )
    ((rows, candidates),) = seen
    assert candidates == IN_BATCH_MAX and rows * candidates <= RANKING_LOGITS and rows > 0
    # a small batch is unchanged: every row, every movie of the batch
    seen.clear()
    HybridModel.joint_loss(
        fake,  # type: ignore[arg-type]
        users[:1024],
        movies[:1024],
        ratings[:1024],
        torch.empty(0, dtype=torch.long),
        None,
        None,
        True,
    )
    assert seen == [(1024, 1024)]
