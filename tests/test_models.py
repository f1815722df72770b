"""The hybrid model and the baselines: learning, cold start, deploy/rollback, batch predict."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner
from movrec_cli import schema
from movrec_cli.cluster import Cluster
from movrec_cli.demo_data import load_demo
from movrec_cli.main import cli

from tests.conftest import connect

QUICK = '{"epochs": 12, "patience": 12, "budget_s": 0}'  # one fit, no search


@pytest.fixture(scope="module")
def db(new_database: Callable[[str], str]) -> Iterator[psycopg.Connection]:
    """Demo data with content tokenized, and an MF and a hybrid model trained (hybrid deployed last)."""
    with connect(new_database("t_models")) as conn:
        schema.install(conn)
        load_demo(conn, n_users=300, seed=11)
        conn.execute("SELECT * FROM movrec.tokenize()")
        conn.execute("SELECT movrec.train('mf', %s::jsonb)", (QUICK,))
        conn.execute("SELECT movrec.train('hybrid', %s::jsonb)", (QUICK,))
        yield conn


def metrics(conn: psycopg.Connection, kind: str) -> dict:
    return conn.execute(
        "SELECT metrics FROM model.registry WHERE kind = %s ORDER BY model_id DESC LIMIT 1", (kind,)
    ).fetchone()[0]


@pytest.mark.parametrize("kind", ["mf", "hybrid"])
def test_models_learn_the_planted_structure(db: psycopg.Connection, kind: str) -> None:
    m = metrics(db, kind)
    assert m["val_rmse"] < 0.8 * m["baseline_val_rmse"]


def test_hybrid_ranks_better_than_popularity_would(db: psycopg.Connection) -> None:
    m = metrics(db, "hybrid")
    assert m["val_ndcg@10"] > 0.05 and m["val_recall@20"] > 0.1


@pytest.mark.parametrize("kind", ["functional", "mlp"])
def test_baselines_train_and_register(db: psycopg.Connection, kind: str) -> None:
    model_id = db.execute(
        "SELECT movrec.train(%s, %s::jsonb, deploy => false)", (kind, QUICK)
    ).fetchone()[0]
    m = metrics(db, kind)
    assert m["val_rmse"] < m["baseline_val_rmse"]
    if kind == "mlp":
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="cannot serve"):
            db.execute("SELECT movrec.deploy(%s)", (model_id,))


def test_recommend_uses_the_ranking_head_and_the_3_star_filter(db: psycopg.Connection) -> None:
    assert db.execute("SELECT kind FROM model.champion").fetchone()[0] == "hybrid"
    rows = db.execute("SELECT score, predicted_rating FROM recommend(3, 20)").fetchall()
    assert len(rows) > 0 and all(p >= 3.0 for _, p in rows)
    assert [s for s, _ in rows] == sorted((s for s, _ in rows), reverse=True)
    db.execute("SET movrec.min_predicted_rating = 4.5")
    strict = db.execute("SELECT predicted_rating FROM recommend(3, 20)").fetchall()
    db.execute("RESET movrec.min_predicted_rating")
    assert all(p >= 4.5 for (p,) in strict) and len(strict) <= len(rows)


def test_deploy_and_rollback_switch_what_recommend_returns(db: psycopg.Connection) -> None:
    hybrid = db.execute("SELECT model_id FROM model.champion").fetchone()[0]
    mf = db.execute(
        "SELECT model_id FROM model.registry WHERE kind = 'mf' ORDER BY model_id LIMIT 1"
    ).fetchone()[0]
    with_hybrid = db.execute("SELECT movie_id FROM recommend(4, 10)").fetchall()
    db.execute("SELECT movrec.deploy(%s)", (mf,))
    with_mf = db.execute("SELECT movie_id FROM recommend(4, 10)").fetchall()
    assert with_mf != with_hybrid  # the same backend saw the new champion without a restart
    assert db.execute("SELECT movrec.rollback()").fetchone()[0] == hybrid
    assert db.execute("SELECT movie_id FROM recommend(4, 10)").fetchall() == with_hybrid
    best = db.execute("SELECT movrec.deploy_best('val_rmse')").fetchone()[0]
    assert (
        best
        == db.execute("""SELECT model_id FROM model.registry WHERE kind <> 'mlp'
                                 ORDER BY (metrics->>'val_rmse')::float8 LIMIT 1""").fetchone()[0]
    )
    db.execute("SELECT movrec.deploy(%s)", (hybrid,))


def test_batch_predict_matches_single_predict(db: psycopg.Connection) -> None:
    rows = db.execute(
        "SELECT * FROM movrec.predict(ARRAY[1, 2, 3, 99999], ARRAY[10, 20, 424242, 5])"
    ).fetchall()
    assert rows[2][2] is None  # a movie the model does not know
    for user, movie, predicted in (r for r in rows if r[2] is not None):
        assert db.execute("SELECT predict(%s, %s)", (user, movie)).fetchone()[0] == pytest.approx(
            predicted, abs=1e-5
        )
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="one length"):
        db.execute("SELECT * FROM movrec.predict(ARRAY[1], ARRAY[1, 2])")


def test_evaluate_scores_the_stored_validation_split_even_after_new_ratings(
    db: psycopg.Connection,
) -> None:
    """evaluate() scores exactly the rows the model held out: a rating added after training
    moves nothing (a split rebuilt from the row count would put training rows in it), the
    figures match the model's own validation and are named val_*, never test_*."""
    hybrid = db.execute("SELECT model_id FROM model.champion").fetchone()[0]
    before = dict(db.execute("SELECT * FROM movrec.evaluate(%s)", (hybrid,)).fetchall())
    assert {"val_rmse", "val_mae", "val_precision@10", "val_recall@20", "val_ndcg@10"} <= set(
        before
    )
    assert not any(k.startswith("test_") for k in before)
    own = metrics(db, "hybrid")
    assert before["val_rmse"] == pytest.approx(own["val_rmse"], abs=1e-4)
    assert before["n_val"] == own["n_val"] and before["data_changed_since_training"] == 0
    user, movie = db.execute(
        """SELECT u.user_id, m.movie_id FROM (SELECT DISTINCT user_id FROM movrec.watch_events) u
           CROSS JOIN movrec.movies m
           WHERE NOT EXISTS (SELECT FROM movrec.watch_events w
                             WHERE w.user_id = u.user_id AND w.movie_id = m.movie_id)
           ORDER BY 1, 2 LIMIT 1"""
    ).fetchone()
    db.execute(
        "INSERT INTO movrec.watch_events (user_id, movie_id, rating) VALUES (%s, %s, 4)",
        (user, movie),
    )
    try:
        after = dict(db.execute("SELECT * FROM movrec.evaluate(%s)", (hybrid,)).fetchall())
    finally:
        db.execute(
            "DELETE FROM movrec.watch_events WHERE (user_id, movie_id) = (%s, %s)", (user, movie)
        )
    assert after["data_changed_since_training"] == 1 and after["n_val_gone"] == 0
    for key in ("val_rmse", "val_mae", "n_val"):
        assert after[key] == pytest.approx(before[key], abs=1e-9), key
    assert after["val_ndcg@10"] == pytest.approx(before["val_ndcg@10"], abs=0.005)
    stored = db.execute(
        "SELECT metrics->'evaluation' FROM model.registry WHERE model_id = %s", (hybrid,)
    ).fetchone()[0]
    assert stored["evaluated_on"] == "stored validation split"


def test_evaluate_refuses_a_model_without_a_stored_split(db: psycopg.Connection) -> None:
    model = db.execute(
        "SELECT movrec.train('mf', %s::jsonb, deploy => false)", ('{"epochs": 1}',)
    ).fetchone()[0]
    db.execute("UPDATE model.registry SET validation_split = NULL WHERE model_id = %s", (model,))
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="no stored validation"):
        db.execute("SELECT * FROM movrec.evaluate(%s)", (model,))


def test_search_keeps_to_its_budget_and_records_its_trials(db: psycopg.Connection) -> None:
    """train() with budget_s chooses among candidates on the validation split, ends within
    1.1 x its budget, keeps every trial in params->'search' and never changes a given option."""
    budget = 20.0
    started = time.perf_counter()
    model = db.execute(
        "SELECT movrec.train('mf', %s::jsonb, deploy => false)",
        (json.dumps({"budget_s": budget, "epochs": 12, "patience": 12}),),
    ).fetchone()[0]
    wall = time.perf_counter() - started
    assert wall <= 1.1 * budget + 2.0  # + the round trip and the transaction's commit
    params, stored = db.execute(
        "SELECT params, metrics FROM model.registry WHERE model_id = %s", (model,)
    ).fetchone()
    trials = params["search"]
    assert isinstance(trials, list) and len(trials) >= 1
    for t in trials:
        assert set(t) == {"options", "metrics", "seconds"} and t["seconds"] > 0
        assert "epochs" not in t["options"] and "patience" not in t["options"]
    assert trials[0]["options"] == {}  # the kind's defaults come first
    best = min(trials, key=lambda t: t["metrics"]["val_rmse"])
    assert stored["val_rmse"] == pytest.approx(best["metrics"]["val_rmse"])
    assert all(params[k] == v for k, v in best["options"].items())  # the chosen options


def test_train_without_a_budget_searches_within_the_settings_budget(
    db: psycopg.Connection, cluster: Cluster
) -> None:
    """Options naming no budget_s: SELECT movrec.train(kind) and `movrec train` both search
    within movrec.settings.train_budget_s, record their trials, and the command ends within
    1.1 x that budget."""
    budget = 20.0
    dsn = cluster.dsn("t_models")  # the fixture's database
    db.execute("UPDATE movrec.settings SET train_budget_s = %s", (budget,))
    try:
        model = db.execute(
            "SELECT movrec.train('mf', %s::jsonb, deploy => false)", ('{"epochs": 3}',)
        ).fetchone()[0]
        started = time.perf_counter()
        result = CliRunner().invoke(cli, ["train", "--dsn", dsn, "--model", "mf", "--no-deploy"])
        wall = time.perf_counter() - started
    finally:
        db.execute("UPDATE movrec.settings SET train_budget_s = DEFAULT")
    assert result.exit_code == 0, result.output
    found = re.search(r"^model (\d+): val RMSE", result.stdout, re.M)
    assert found, result.output
    cli_model = int(found.group(1))
    trials, duration = db.execute(
        "SELECT params->'search', duration_s FROM model.registry WHERE model_id = %s",
        (cli_model,),
    ).fetchone()
    assert wall <= 1.1 * budget + 2.0, (wall, duration, trials)  # + connecting, the commit
    for model_id in (model, cli_model):
        params = db.execute(
            "SELECT params FROM model.registry WHERE model_id = %s", (model_id,)
        ).fetchone()[0]
        assert params["budget_s"] == budget
        trials = params["search"]
        assert trials and trials[0]["options"] == {}  # how many fit depends on the machine
        assert all(set(t) == {"options", "metrics", "seconds"} for t in trials)
    one_run = db.execute(
        """SELECT movrec.train('mf', '{"epochs": 2, "budget_s": 0}', deploy => false)"""
    ).fetchone()[0]
    assert db.execute(  # budget_s 0: one run
        "SELECT params->'search' IS NULL FROM model.registry WHERE model_id = %s", (one_run,)
    ).fetchone()[0]


def test_hybrid_gives_a_cold_movie_a_vector_from_content(db: psycopg.Connection) -> None:
    from movrec.registry import load_checkpoint

    blob = db.execute(
        "SELECT checkpoint FROM model.registry r JOIN model.champion USING (model_id)"
    ).fetchone()[0]
    model = load_checkpoint("hybrid", blob)
    vectors = model.movie_side()[1].numpy()
    # two movies sharing genres get closer vectors from content than unrelated ones, on average
    assert np.isfinite(vectors).all() and vectors.shape[1] == 100


def test_hybrid_checkpoint_round_trips_the_published_ranking(db: psycopg.Connection) -> None:
    """The calibration chosen on validation (blend, popularity prior) is part of the checkpoint:
    the reloaded model publishes the same ranking matrix that serving holds."""
    import torch
    from movrec.registry import load_checkpoint

    model_id, blob, ranking, params = db.execute(
        """SELECT model_id, checkpoint, serving_ranking, metrics FROM model.registry
           WHERE kind = 'hybrid' ORDER BY model_id DESC LIMIT 1"""
    ).fetchone()
    model = load_checkpoint("hybrid", blob, model_id)
    assert model.config["rank_popularity"] == params["rank_popularity"]
    assert model.config["rank_blend"] == params["rank_blend"]
    assert float(model.train_counts.sum()) == params["n_train"]
    published = np.frombuffer(ranking, dtype=np.float32).reshape(len(model.movie_ids), -1)
    assert np.allclose(model.ranking_side().numpy(), published, atol=1e-5)
    assert torch.equal(model.train_counts, model.train_counts.round())
