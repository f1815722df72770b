"""recommend() over a catalogue large enough for the champion's BoundIndex: the pruned top-k
must be exactly what scoring every movie gives."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
from movrec_cli import generate

from tests.conftest import connect


@pytest.fixture(scope="module")
def big(installed: str) -> str:
    dsn = installed
    with connect(dsn) as conn:
        generate.load_and_train(
            conn,
            generate.Plan(n_users=300, n_movies=3000, n_ratings=30000, seed=5),
            '{"epochs": 40, "batch_size": 1024, "lr": 0.01}',
            echo=lambda _m: None,
        )
    return dsn


def _brute_force(conn: psycopg.Connection, user_id: int, k: int) -> list[int]:
    """The top k unseen movies predicted >= 3 stars, scoring every published vector."""
    (u, b_u), mu = (
        conn.execute(
            "SELECT embedding::real[], bias FROM model.user_latent_attributes WHERE user_id = %s",
            (user_id,),
        ).fetchone(),
        conn.execute(
            "SELECT global_mean FROM model.registry JOIN model.champion USING (model_id)"
        ).fetchone()[0],
    )
    rows = conn.execute(
        "SELECT movie_id, embedding::real[], bias FROM model.movie_latent_attributes "
        "WHERE movie_id NOT IN (SELECT movie_id FROM movrec.watch_events WHERE user_id = %s) "
        "ORDER BY movie_id",
        (user_id,),
    ).fetchall()
    ids = np.array([r[0] for r in rows])
    vectors = np.array([r[1] for r in rows], dtype=np.float64)
    predicted = vectors @ np.asarray(u, dtype=np.float64) + [r[2] for r in rows] + b_u + mu
    order = np.lexsort((ids, -predicted))
    return [int(ids[i]) for i in order if predicted[i] >= 3.0][:k]


def test_indexed_recommend_equals_scoring_every_movie(big: str) -> None:
    with connect(big) as conn:
        assert conn.execute("SELECT count(*) FROM movrec.movies").fetchone()[0] == 3000
        for user_id in (1, 17, 150, 299):
            got = [r[0] for r in conn.execute("SELECT movie_id FROM recommend(%s, 10)", (user_id,))]
            assert got == _brute_force(conn, user_id, 10)
            assert conn.execute(
                "SELECT count(*) = 10 AND bool_and(source = 'model') FROM recommend(%s, 10)",
                (user_id,),
            ).fetchone()[0]


def test_doctor_says_the_top_k_is_indexed(big: str) -> None:
    with connect(big) as conn:
        detail = conn.execute(
            "SELECT detail FROM movrec.doctor() WHERE check_name = 'serving'"
        ).fetchone()[0]
    assert "top-k index head" in detail
