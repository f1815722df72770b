"""`movrec train --nproc N`: PyTorch DDP over shards of users read from the database."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from click.testing import CliRunner
from movrec.distributed import held_out
from movrec_cli import generate, schema
from movrec_cli.main import cli

from tests.conftest import connect

PLAN = generate.Plan(n_users=600, n_movies=400, n_ratings=30_000, seed=4)
# dim 100: the published vectors' width, so the model deploys
OPTIONS = '{"epochs": 10, "dim": 100, "lr": 0.01, "batch_size": 512, "val_fraction": 0.1}'


@pytest.fixture(scope="module")
def db(new_database: Callable[[str], str]) -> str:
    dsn = new_database("t_test_ddp")
    with connect(dsn) as conn:
        schema.install(conn)
        generate.load(conn, PLAN, echo=lambda _m: None)
    return dsn


def train(dsn: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        cli, ["train", "--dsn", dsn, "--model", "mf", "--options", OPTIONS, *args]
    )
    return result.exit_code, result.output


def registered(dsn: str) -> dict:
    with connect(dsn) as conn:
        row = conn.execute(
            "SELECT metrics, params, validation_split FROM model.registry"
            " ORDER BY model_id DESC LIMIT 1"
        ).fetchone()
    return {"metrics": row[0], "params": row[1], "split": bytes(row[2])}


def test_two_processes_reach_the_rmse_of_one(db: str) -> None:
    code, out = train(db, "--nproc", "1", "--no-deploy")
    assert code == 0, out
    one = registered(db)
    code, out = train(db, "--nproc", "2")
    assert code == 0, out
    two = registered(db)
    assert two["params"]["nproc"] == 2 and one["params"]["nproc"] == 1
    # the same held-out ratings, whatever the sharding
    assert one["split"] == two["split"] and one["metrics"]["n_val"] == two["metrics"]["n_val"]
    assert two["metrics"]["val_rmse"] == pytest.approx(one["metrics"]["val_rmse"], abs=0.005)
    # it learnt something: well below the global mean's error
    assert two["metrics"]["val_rmse"] < 0.9 * two["metrics"]["baseline_val_rmse"]
    with connect(db) as conn:  # deployed, and serves
        assert conn.execute("SELECT count(*) FROM recommend(1, 5)").fetchone()[0] == 5
        (fresh,) = conn.execute(
            "SELECT value FROM movrec.evaluate((SELECT model_id FROM model.deployments"
            " ORDER BY deployment_id DESC LIMIT 1)) WHERE metric IN ('rmse', 'val_rmse')"
        ).fetchone()
    assert fresh == pytest.approx(two["metrics"]["val_rmse"], abs=1e-3)


def test_what_ddp_cannot_train_is_refused(db: str) -> None:
    with connect(db) as conn:
        before = conn.execute("SELECT count(*) FROM model.registry").fetchone()[0]
    for args in (["--model", "hybrid"], ["--solver", "als"]):
        code, out = train(db, "--nproc", "2", *args)
        assert code == 1 and "--nproc" in out and len(out.strip().splitlines()) == 1, out
    with connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM model.registry").fetchone()[0] == before


def test_the_split_does_not_depend_on_the_shard() -> None:
    users, movies = np.repeat(np.arange(1, 301), 50), np.tile(np.arange(1, 51), 300)
    whole = held_out(users, movies, seed=42, fraction=0.1)
    assert 0.07 < whole.mean() < 0.13
    odd = users % 2 == 1
    assert np.array_equal(held_out(users[odd], movies[odd], 42, 0.1), whole[odd])
    assert not np.array_equal(held_out(users, movies, 43, 0.1), whole)
