"""Temporal features from rated_at (the hybrid's temporal option): how they are computed, that
training picks up planted time effects, that evaluation scores a user at their latest rating,
and that a temporal model is not deployed (serving does not compute the terms)."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
import torch
from movrec import temporal
from movrec.content import NUMERIC, MovieContent
from movrec.evaluation import evaluate_model
from movrec.tokenizer import FIELDS
from movrec.training import Ratings, TrainOptions, fit

from tests.conftest import table_digest, train

YEAR = temporal.SECONDS_PER_YEAR
DAY = temporal.DAY


def at_year(year: float) -> float:
    """Epoch seconds a tenth into calendar year ``year``."""
    return (year - 1970 + 0.1) * YEAR


def test_features_follow_the_documented_bins() -> None:
    assert temporal.calendar_year(np.array([0.0, at_year(2001), at_year(2017)])).tolist() == [
        1970,
        2001,
        2017,
    ]
    ages = np.array([np.nan, -3, -1, 0, 1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 80])
    want = [0, 1, 1, 2, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8]
    assert temporal.age_bin(np.full(len(ages), 2000.0), 2000.0 - ages).tolist() == want
    days = np.array([0, 0.99, 1, 6.9, 7, 29, 30, 89, 90, 364, 365, 1094, 1095, 5000])
    assert temporal.drift_bin(days * DAY).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    first, latest = temporal.user_times(np.array([0, 0, 2, 0]), np.array([5.0, 1.0, 7.0, 3.0]), 3)
    assert first[0] == 1.0 and latest[0] == 5.0 and first[2] == latest[2] == 7.0
    assert np.isnan(first[1]) and np.isnan(latest[1])
    # the latest 2 of each user's ratings by time, ties by row order
    recent = temporal.recent_rows(
        np.array([1, 1, 1, 2, 1, 2]), np.array([3.0, 1.0, 3.0, 9.0, 0.0, 8.0]), k=2
    )
    assert recent.tolist() == [True, False, True, True, False, True]
    assert temporal.recent_rows(np.array([4, 4, 4]), np.array([1.0, 1.0, 1.0]), 1).tolist() == [
        False,
        False,
        True,
    ]
    # a rating of a 1990 movie in 2001, 400 days after the user's first: age 11, drift 5
    age, drift, year = temporal.row_features(
        np.array([0]),
        np.array([1990.0]),
        np.array([at_year(2001)]),
        np.array([at_year(2001) - 400 * DAY]),
    )
    assert (age.tolist(), drift.tolist(), year.tolist()) == ([6], [5], [2001.0])


def planted(seed: int = 0) -> tuple[Ratings, MovieContent, np.ndarray]:
    """Users rate over three years; a rating is 1 star higher once a year has passed since the
    user's first (drift bins 5 and 6), and users only rate movies released by then.  Returns
    the ratings, the movies' content (release years only) and the movies' years."""
    rng = np.random.default_rng(seed)
    n_users, n_movies, per_user = 120, 80, 40
    years = rng.integers(1995, 2012, n_movies).astype(np.float64)
    users, movies, times, ratings = [], [], [], []
    for u in range(n_users):
        start = at_year(rng.uniform(2005, 2009))
        when = np.sort(start + rng.uniform(0, 3 * YEAR, per_user))
        when[0] = start
        for t in when:
            released = np.flatnonzero(years <= temporal.calendar_year(t))
            movies.append(rng.choice(np.setdiff1d(released, movies[-per_user:] if u else [])))
            users.append(u)
            times.append(t)
            late = t - start >= 365 * DAY
            ratings.append(np.clip(2.5 + 1.0 * late + rng.normal(0, 0.3), 0.5, 5.0))
    users_a, movies_a = np.array(users, np.int64), np.array(movies, np.int64)
    keep = np.unique(users_a * 1000 + movies_a, return_index=True)[1]
    data = Ratings(
        users_a[keep],
        movies_a[keep],
        np.array(ratings, np.float32)[keep],
        np.array(times, np.float64)[keep],
    )
    raw = np.full((n_movies, len(NUMERIC)), np.nan)
    raw[:, NUMERIC.index("year")] = years
    content = MovieContent(
        np.arange(n_movies, dtype=np.int64),
        {f: np.zeros((n_movies, 1), np.int64) for f in FIELDS},
        {f: 2 for f in FIELDS},
        raw,
    )
    return data, content, years


@pytest.fixture(scope="module")
def fitted() -> tuple[Ratings, dict[bool, tuple[object, dict]]]:
    torch.set_num_threads(1)
    data, content, _ = planted()
    out = {}
    for temporal_on in (False, True):
        opts = TrainOptions.parse(
            {"temporal": temporal_on, "epochs": 12, "batch_size": 256, "lr": 0.02, "dim": 8},
            "hybrid",
        )
        out[temporal_on] = fit(data, "hybrid", opts, content=content)
    return data, out


def test_training_picks_up_a_planted_drift_and_no_future_movies(fitted) -> None:  # type: ignore[no-untyped-def]
    _, models = fitted
    model, metrics = models[True]
    side = model.temporal_side()
    assert side is not None and models[False][0].temporal_side() is None
    drift = side["drift_rating"]
    # planted: +1 star from a year after the user's first rating on (bins 5, 6)
    assert drift[5] - drift[:4].mean() > 0.5 and drift[6] - drift[:4].mean() > 0.5
    # nobody rated a movie released after the rating's year: that bin's prior is the lowest
    assert side["age_rank"][1] < side["age_rank"][2:].min()
    assert metrics["val_rmse"] < models[False][1]["val_rmse"] - 0.05


def test_evaluation_scores_a_user_at_their_latest_training_rating(fitted) -> None:  # type: ignore[no-untyped-def]
    data, models = fitted
    model, _ = models[True]
    side = model.temporal_side()
    users, movies, times = data.users, data.movies, data.times
    assert times is not None
    # hold out each user's last rating (the time-ordered protocol in miniature)
    last = np.zeros(len(users), bool)
    for u in np.unique(users):
        rows = np.flatnonzero(users == u)
        last[rows[np.argmax(times[rows])]] = True
    train_rows = ~last
    result = evaluate_model(
        model,
        (users[train_rows], movies[train_rows]),
        (users[last], movies[last], data.ratings[last].astype(np.float64)),
        train_times=times[train_rows],
    )
    # by hand: the served prediction at the user's latest *training* rating time
    user_ids, uvec, ubias = (t.numpy() for t in model.user_side())
    movie_ids, mvec, mbias = (t.numpy() for t in model.movie_side())
    pred = []
    for u, m in zip(users[last], movies[last], strict=True):
        mine = train_rows & (users == u)
        q, first = times[mine].max(), times[mine].min()
        i, j = np.searchsorted(user_ids, u), np.searchsorted(movie_ids, m)
        age = temporal.age_bin(temporal.calendar_year(q), side["movie_year"][j])
        offset = side["age_rating"][age] + side["drift_rating"][temporal.drift_bin(q - first)]
        offset += side["recent_bias"][i]  # the query time is always among the latest ratings
        pred.append(uvec[i] @ mvec[j] + ubias[i] + mbias[j] + float(model.global_mean) + offset)
    truth = data.ratings[last].astype(np.float64)
    rmse = float(np.sqrt(np.mean((np.clip(pred, 0.5, 5.0) - truth) ** 2)))
    assert result["test_rmse"] == pytest.approx(rmse, abs=1e-5)
    with pytest.raises(ValueError, match="needs train_times"):
        evaluate_model(model, (users, movies), (users[:3], movies[:3], truth[:3]))


def test_temporal_is_a_hybrid_option() -> None:
    assert TrainOptions.parse({}, "hybrid").temporal is False
    with pytest.raises(Exception, match="temporal features are a hybrid option"):
        TrainOptions.parse({"temporal": True}, "mf")


def test_a_temporal_model_is_not_deployed(conn: psycopg.Connection) -> None:
    """Serving does not compute the temporal terms at the user's query time, so a temporal
    model would not serve what was evaluated: train(deploy) and deploy() refuse it (0A000),
    nothing stored changed, the champion stays."""
    champion = conn.execute("SELECT model_id FROM model.champion").fetchone()[0]
    registry = table_digest(conn, "model.registry")
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="temporal features"):
        conn.execute("""SELECT movrec.train('hybrid', '{"temporal": true, "epochs": 1}', true)""")
    assert table_digest(conn, "model.registry") == registry
    model_id = train(conn, "hybrid", '{"temporal": true, "epochs": 1}', deploy=False)
    published = table_digest(conn, "model.movie_latent_attributes")
    with pytest.raises(psycopg.errors.FeatureNotSupported, match=f"model {model_id} has temporal"):
        conn.execute("SELECT movrec.deploy(%s)", (model_id,))
    assert conn.execute("SELECT model_id FROM model.champion").fetchone()[0] == champion
    assert table_digest(conn, "model.movie_latent_attributes") == published
    # offline evaluation works: evaluate() scores it on its stored split at the users' times
    figures = dict(conn.execute("SELECT * FROM movrec.evaluate(%s)", (model_id,)).fetchall())
    assert 0 < figures["val_rmse"] < 2 and 0 <= figures["val_ndcg@10"] <= 1
