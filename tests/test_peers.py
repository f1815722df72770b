"""The EASE and iALS peers and the time-ordered protocol, on generated data: no database."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from movrec.closed_form import fit_ease
from movrec.demo import synth
from movrec.metrics import split, time_split
from movrec_cli.baselines import run_baselines
from movrec_cli.bench_quality import protocol_rows


@pytest.fixture(scope="module")
def ratings() -> pd.DataFrame:
    """The demo's planted structure: users' genre tastes steer what they rate, and how."""
    data = synth.generate(synth.load_catalog(), n_users=300, seed=5, taste_std=2.5)
    return pd.DataFrame(
        {
            "userId": data.users.astype(np.int64),
            "movieId": data.movies.astype(np.int64),
            "rating": data.ratings.astype(np.float64),
            # shuffled times: the time-ordered split must not lean on the file's order
            "timestamp": np.random.default_rng(0).permutation(len(data.users)),
        }
    )


@pytest.fixture(scope="module")
def table(ratings: pd.DataFrame) -> dict[str, dict[str, Any]]:
    train, test = split(len(ratings))
    small = {  # a smaller search than the benchmark's, to keep the test short
        "ials": {
            "start": {"factors": 32, "reg": 10.0, "alpha": 5.0},
            "grid": {"alpha": (1.0, 5.0), "factors": (16, 32)},
            "iterations": 6,
        }
    }
    rows = run_baselines(
        ratings.iloc[train],
        ratings.iloc[test],
        which=("popularity", "ease", "ials"),
        search=small,
    )
    return {row["model"]: row for row in rows}


@pytest.mark.parametrize("peer", ["ease", "ials"])
def test_validated_peers_recover_the_planted_structure(
    table: dict[str, dict[str, Any]], peer: str
) -> None:
    row = table[peer]
    assert row["ndcg@10"] > 1.5 * table["popularity"]["ndcg@10"], (row, table["popularity"])
    assert row["recall@20"] > table["popularity"]["recall@20"]
    assert row["rmse"] is None and row["mae"] is None  # ranking only: the table says n/a
    assert row["fit_seconds"] > 0 and "chosen on validation" in row["note"]


@pytest.mark.parametrize("peer", ["ease", "ials"])
def test_validated_peers_record_their_trials(table: dict[str, dict[str, Any]], peer: str) -> None:
    trials = table[peer]["search"]
    assert len(trials) >= 3
    for t in trials:
        assert set(t) == {"options", "metrics", "seconds"} and "val_ndcg@10" in t["metrics"]
    best = max(trials, key=lambda t: t["metrics"]["val_ndcg@10"])
    chosen = table[peer]["note"]
    assert all(f"{v!r}" in chosen for k, v in best["options"].items() if k != "positives")


def test_ease_user_side_equals_the_item_side_closed_form() -> None:
    rng = np.random.default_rng(3)
    x = (rng.random((20, 60)) < 0.15).astype(np.float32)  # fewer users: the Woodbury path
    model = fit_ease(x, 7.0)
    xa = x[:, model.active].astype(np.float64)
    p = np.linalg.inv(xa.T @ xa + 7.0 * np.eye(xa.shape[1]))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    scores = model.score(np.arange(20))
    np.testing.assert_allclose(scores[:, model.active], xa @ b, atol=1e-9)
    tall = fit_ease(np.vstack([x] * 4), 7.0)  # more users than items: the item side
    assert tall.b is not None and np.allclose(np.diag(tall.b), 0.0)


def test_time_split_never_puts_a_test_rating_before_a_training_rating(
    ratings: pd.DataFrame,
) -> None:
    train, test = protocol_rows(ratings, "time")
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == len(ratings)
    tr, te = ratings.iloc[train], ratings.iloc[test]
    last_train = tr.groupby("userId")["timestamp"].max()
    first_test = te.groupby("userId")["timestamp"].min()
    assert (first_test >= last_train.reindex(first_test.index)).all()
    n = ratings.groupby("userId").size()
    expected = np.floor(n * 0.1 + 0.5).astype(int)
    assert (te.groupby("userId").size().reindex(n.index, fill_value=0) == expected).all()
    assert set(tr["userId"]) == set(ratings["userId"])  # every user keeps a history


def test_time_split_breaks_ties_by_row_order() -> None:
    users = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2])
    times = np.array([5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 1, 0])
    train, test = time_split(users, times, 0.25)
    # user 1: round(2.5) = 3, the last 3 rows of equal time; user 2: round(0.5) = 1, time 1
    assert test.tolist() == [7, 8, 9, 10]
    assert train.tolist() == [0, 1, 2, 3, 4, 5, 6, 11]


def test_seed_summary_gives_the_means_and_the_spread() -> None:
    from movrec_cli.baselines import COLUMNS
    from movrec_cli.bench_quality import seed_summary

    rows = [
        {**dict.fromkeys(COLUMNS, 0.0), "rmse": rmse, "ndcg@10": ndcg, "fit_seconds": 10.0}
        for rmse, ndcg in ((0.88, 0.09), (0.87, 0.10), (0.89, 0.08))
    ]
    row = seed_summary("hybrid", rows)
    assert row["model"] == "movrec hybrid, mean of 3 seeds"
    assert row["rmse"] == pytest.approx(0.88) and row["ndcg@10"] == pytest.approx(0.09)
    assert row["note"] == "spread (max - min) RMSE 0.0200, NDCG@10 0.0200"
