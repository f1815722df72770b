"""The rating trigger: online step, archive, new users, bad ratings."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest

from tests.conftest import table_digest

VECTOR = "SELECT embedding::real[], bias FROM model.user_latent_attributes WHERE user_id = %s"
STORED = (
    "movrec.watch_events",
    "model.user_latent_attributes",
    "model.user_latent_attributes_backups",
)


def unseen_movie(conn: psycopg.Connection, user_id: int) -> int:
    return conn.execute(
        """SELECT movie_id FROM model.movie_latent_attributes m WHERE NOT EXISTS
           (SELECT FROM movrec.watch_events w WHERE w.user_id = %s AND w.movie_id = m.movie_id)
           ORDER BY movie_id LIMIT 1""",
        (user_id,),
    ).fetchone()[0]


@pytest.mark.parametrize("rating", [0.5, 5.0])
def test_rating_moves_prediction_toward_it_and_archives(
    conn: psycopg.Connection, rating: float
) -> None:
    user = 11 if rating < 1 else 12
    movie = unseen_movie(conn, user)
    before = conn.execute("SELECT predict(%s, %s)", (user, movie)).fetchone()[0]
    old_vector, old_bias = conn.execute(VECTOR, (user,)).fetchone()
    backups = conn.execute(
        "SELECT count(*) FROM model.user_latent_attributes_backups WHERE user_id = %s", (user,)
    ).fetchone()[0]
    conn.execute(
        "INSERT INTO movrec.watch_events (user_id, movie_id, rating) VALUES (%s, %s, %s)",
        (user, movie, rating),
    )
    after = conn.execute("SELECT predict(%s, %s)", (user, movie)).fetchone()[0]
    assert abs(after - rating) < abs(before - rating)
    archived = conn.execute(
        """SELECT embedding::real[], bias FROM model.user_latent_attributes_backups
           WHERE user_id = %s ORDER BY update_seq DESC LIMIT 1""",
        (user,),
    ).fetchone()
    assert np.allclose(archived[0], old_vector) and archived[1] == pytest.approx(old_bias)
    assert (
        conn.execute(
            "SELECT count(*) FROM model.user_latent_attributes_backups WHERE user_id = %s", (user,)
        ).fetchone()[0]
        == backups + 1
    )
    assert not np.allclose(conn.execute(VECTOR, (user,)).fetchone()[0], old_vector)


def test_new_user_starts_from_the_default_vector(conn: psycopg.Connection) -> None:
    user = 777001
    assert conn.execute(VECTOR, (user,)).fetchone() is None
    default = conn.execute("""SELECT r.default_embedding, r.default_bias FROM model.registry r
                              JOIN model.champion c USING (model_id)""").fetchone()
    conn.execute(
        "INSERT INTO movrec.watch_events (user_id, movie_id, rating) VALUES (%s, 1, 4)", (user,)
    )
    first = conn.execute(
        """SELECT embedding::real[], bias FROM model.user_latent_attributes_backups
                            WHERE user_id = %s ORDER BY update_seq""",
        (user,),
    ).fetchall()
    assert len(first) == 1  # the value before the first step: the default vector
    assert np.allclose(first[0][0], default[0], atol=1e-6) and first[0][1] == pytest.approx(
        default[1]
    )
    assert conn.execute(VECTOR, (user,)).fetchone() is not None
    assert {r[0] for r in conn.execute("SELECT source FROM recommend(%s)", (user,))} == {"model"}


def test_rerating_updates_the_row_and_the_vector(conn: psycopg.Connection) -> None:
    user, movie = 13, unseen_movie(conn, 13)
    conn.execute("SELECT movrec.rate(%s, %s, 1)", (user, movie))
    v1 = conn.execute(VECTOR, (user,)).fetchone()[0]
    conn.execute("SELECT movrec.rate(%s, %s, 5)", (user, movie))
    assert (
        conn.execute(
            "SELECT rating FROM movrec.watch_events WHERE user_id = %s AND movie_id = %s",
            (user, movie),
        ).fetchone()[0]
        == 5
    )
    assert (
        conn.execute(
            "SELECT count(*) FROM movrec.watch_events WHERE user_id = %s AND movie_id = %s",
            (user, movie),
        ).fetchone()[0]
        == 1
    )
    assert not np.allclose(conn.execute(VECTOR, (user,)).fetchone()[0], v1)
    # the same rating again changes nothing and archives nothing
    backups = table_digest(conn, "model.user_latent_attributes_backups")
    conn.execute("SELECT movrec.rate(%s, %s, 5)", (user, movie))
    assert table_digest(conn, "model.user_latent_attributes_backups") == backups


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ("(14, 1, 7)", psycopg.errors.CheckViolation),
        ("(14, 1, 'NaN')", psycopg.errors.CheckViolation),
        ("(14, 1, 0)", psycopg.errors.CheckViolation),
        ("(14, 1, 3.3)", psycopg.errors.CheckViolation),
        ("(14, 1, NULL)", psycopg.errors.NotNullViolation),
        ("(NULL, 1, 3)", psycopg.errors.NotNullViolation),
        ("(-3, 1, 3)", psycopg.errors.CheckViolation),
        ("(14, 424242, 3)", psycopg.errors.ForeignKeyViolation),
    ],
)
def test_bad_rating_is_refused_and_nothing_changes(
    conn: psycopg.Connection, values: str, error: type
) -> None:
    before = [table_digest(conn, t) for t in STORED]
    with pytest.raises(error):
        conn.execute(f"INSERT INTO movrec.watch_events (user_id, movie_id, rating) VALUES {values}")
    assert [table_digest(conn, t) for t in STORED] == before


def test_rating_a_movie_the_model_does_not_know_is_stored(conn: psycopg.Connection) -> None:
    conn.execute(
        "INSERT INTO movrec.movies (movie_id, title, year) VALUES (8001, 'Brand New', 2026)"
    )
    vector = conn.execute(VECTOR, (15,)).fetchone()[0]
    conn.execute("INSERT INTO movrec.watch_events (user_id, movie_id, rating) VALUES (15, 8001, 4)")
    assert (
        conn.execute(
            "SELECT count(*) FROM movrec.watch_events WHERE user_id = 15 AND movie_id = 8001"
        ).fetchone()[0]
        == 1
    )
    assert np.allclose(conn.execute(VECTOR, (15,)).fetchone()[0], vector)  # no vector to learn from
