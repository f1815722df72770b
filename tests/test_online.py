"""Online learning: sgd in SQL, refit (fold-in), retention, concurrency."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest
from movrec.scoring import sgd_step

from tests.conftest import INSTALL_KINDS, connect, reset_settings, set_settings

# Every test on the database fixtures runs on the full and the portable install.
INSTALL_KINDS = INSTALL_KINDS


@pytest.fixture(autouse=True)
def default_settings(trained: str) -> Iterator[None]:
    """Settings are the database's: each test starts and ends with the defaults."""
    with connect(trained) as c:
        reset_settings(c)
    yield
    with connect(trained) as c:
        reset_settings(c)


VECTOR = "SELECT embedding::real[], bias FROM model.user_latent_attributes WHERE user_id = %s"
BACKUPS = """SELECT embedding::real[], bias FROM model.user_latent_attributes_backups
             WHERE user_id = %s ORDER BY update_seq"""


def champion(conn: psycopg.Connection) -> tuple[float, np.ndarray, float]:
    mu, default, default_bias = conn.execute(
        """SELECT r.global_mean, r.default_embedding, r.default_bias
           FROM model.registry r JOIN model.champion c USING (model_id)"""
    ).fetchone()
    return mu, np.asarray(default, dtype=np.float64), default_bias


def movie_side(conn: psycopg.Connection, movies: list[int]) -> dict[int, tuple[np.ndarray, float]]:
    rows = conn.execute(
        """SELECT movie_id, embedding::real[], bias FROM model.movie_latent_attributes
           WHERE movie_id = ANY(%s)""",
        (movies,),
    ).fetchall()
    return {m: (np.asarray(e, dtype=np.float64), b) for m, e, b in rows}


def unseen_movies(conn: psycopg.Connection, user_id: int, n: int) -> list[int]:
    return [
        r[0]
        for r in conn.execute(
            """SELECT movie_id FROM model.movie_latent_attributes m WHERE NOT EXISTS
               (SELECT FROM movrec.watch_events w WHERE w.user_id = %s AND w.movie_id = m.movie_id)
               ORDER BY movie_id LIMIT %s""",
            (user_id, n),
        )
    ]


def rate(conn: psycopg.Connection, user: int, movie: int, rating: float) -> None:
    conn.execute("SELECT movrec.rate(%s::int, %s::int, %s::real)", (user, movie, rating))


def ridge_lstsq(conn: psycopg.Connection, user: int, reg: float) -> tuple[np.ndarray, float]:
    """The fold-in solved independently: least squares on rows augmented with sqrt(reg) I."""
    mu, default, default_bias = champion(conn)
    history = conn.execute(
        "SELECT movie_id, rating FROM movrec.watch_events WHERE user_id = %s", (user,)
    ).fetchall()
    side = movie_side(conn, [m for m, _ in history])
    rows = [(side[m], r) for m, r in history if m in side]
    x = np.array([np.append(v, 1.0) for (v, _), _ in rows])
    y = np.array([r - mu - b for (_, b), r in rows])
    dim = x.shape[1]
    x_aug = np.vstack([x, np.sqrt(reg) * np.eye(dim)])
    y_aug = np.concatenate([y, np.sqrt(reg) * np.append(default, default_bias)])
    sol = np.linalg.lstsq(x_aug, y_aug, rcond=None)[0]
    return sol[:-1], sol[-1]


def test_sgd_in_sql_matches_the_numpy_step(conn: psycopg.Connection) -> None:
    user = 31
    movie = unseen_movies(conn, user, 1)[0]
    mu, _, _ = champion(conn)
    u, b = conn.execute(VECTOR, (user,)).fetchone()
    m, b_m = movie_side(conn, [movie])[movie]
    rate(conn, user, movie, 4.5)
    want_u, want_b = sgd_step(np.asarray(u), b, m, b_m, mu, 4.5, 0.05, 0.02)
    got_u, got_b = conn.execute(VECTOR, (user,)).fetchone()
    assert np.allclose(got_u, want_u, atol=1e-5) and got_b == pytest.approx(want_b, abs=1e-5)


def test_one_statement_step_is_the_general_paths_to_the_bit(conn: psycopg.Connection) -> None:
    """The common case (a ring laid out for the retention) and the general path (a ring of no
    layout yet, renumbered first) store the same vector and bias from the same state."""
    fast, general = 33, 34
    movie = next(
        m for m in unseen_movies(conn, fast, 50) if m in set(unseen_movies(conn, general, 50))
    )
    conn.execute(
        """UPDATE model.user_latent_attributes a
           SET embedding = f.embedding, bias = f.bias, model_id = f.model_id, n_updates = 3,
               backup_ring = CASE WHEN a.user_id = %s THEN 20 END
           FROM model.user_latent_attributes f WHERE f.user_id = %s AND a.user_id IN (%s, %s)""",
        (fast, fast, fast, general),
    )
    for user in (fast, general):
        rate(conn, user, movie, 4.5)
    got = conn.execute(
        "SELECT embedding::text, bias, n_updates, backup_ring FROM model.user_latent_attributes "
        "WHERE user_id = ANY(%s) ORDER BY user_id",
        ([fast, general],),
    ).fetchall()
    assert got[0] == got[1] and got[0][2:] == (4, 20)


def test_refit_is_the_ridge_solution_and_moves_toward_the_rating(conn: psycopg.Connection) -> None:
    set_settings(conn, online_update="refit", refit_reg=0.7)
    user = 777201  # new: starts from the default vector
    movie = unseen_movies(conn, user, 1)[0]
    mu, default, default_bias = champion(conn)
    m, b_m = movie_side(conn, [movie])[movie]
    before = mu + default_bias + b_m + default @ m
    rate(conn, user, movie, 5)
    u, b_u = conn.execute(VECTOR, (user,)).fetchone()
    after = mu + b_u + b_m + np.asarray(u) @ m
    assert abs(after - 5) < abs(before - 5)
    # an existing user with a long history: exact against an independent solution
    user = 32
    for movie, rating in zip(unseen_movies(conn, user, 3), (1.0, 4.5, 3.0), strict=True):
        rate(conn, user, movie, rating)
    want_u, want_b = ridge_lstsq(conn, user, 0.7)
    got_u, got_b = conn.execute(VECTOR, (user,)).fetchone()
    assert np.allclose(got_u, want_u, atol=1e-4) and got_b == pytest.approx(want_b, abs=1e-4)
    assert len(conn.execute(BACKUPS, (user,)).fetchall()) >= 3  # one archive per update


def test_refit_rerating_is_consistent(conn: psycopg.Connection) -> None:
    set_settings(conn, online_update="refit")
    user = 33
    movie = unseen_movies(conn, user, 1)[0]
    rate(conn, user, movie, 1)
    rate(conn, user, movie, 5)
    assert conn.execute(
        "SELECT count(*), max(rating) FROM movrec.watch_events WHERE user_id = %s AND movie_id = %s",
        (user, movie),
    ).fetchone() == (1, 5)
    want_u, want_b = ridge_lstsq(conn, user, 10.0)  # the history with the new rating only
    got_u, got_b = conn.execute(VECTOR, (user,)).fetchone()
    assert np.allclose(got_u, want_u, atol=1e-4) and got_b == pytest.approx(want_b, abs=1e-4)


def test_unknown_mode_is_refused(conn: psycopg.Connection) -> None:
    with pytest.raises(psycopg.errors.CheckViolation, match="online_update_is_sgd_or_refit"):
        set_settings(conn, online_update="magic")


def test_retention_keeps_the_last_n(conn: psycopg.Connection) -> None:
    set_settings(conn, backup_retention=3)
    user = 35
    before = []
    for movie, rating in zip(unseen_movies(conn, user, 6), (1, 5, 2, 4, 0.5, 3), strict=True):
        before.append(conn.execute(VECTOR, (user,)).fetchone())
        rate(conn, user, movie, rating)
    kept = conn.execute(BACKUPS, (user,)).fetchall()
    assert len(kept) == 3
    for (e, b), (want_e, want_b) in zip(kept, before[-3:], strict=True):
        assert np.allclose(e, want_e) and b == pytest.approx(want_b)
    set_settings(conn, backup_retention=0)  # 0: keep everything from now on
    rate(conn, user, unseen_movies(conn, user, 1)[0], 4)
    assert len(conn.execute(BACKUPS, (user,)).fetchall()) == 4


def test_changing_retention_keeps_the_newest_archives(conn: psycopg.Connection) -> None:
    """Raising the retention keeps what the smaller ring held; lowering it keeps the newest."""
    user = 37
    movies = iter(unseen_movies(conn, user, 12))
    states = []

    def rate_with(keep: int, n: int) -> None:
        set_settings(conn, backup_retention=keep)
        for _ in range(n):
            states.append(conn.execute(VECTOR, (user,)).fetchone())
            rate(conn, user, next(movies), 4)

    def kept() -> list[tuple[list[float], float]]:
        return conn.execute(BACKUPS, (user,)).fetchall()

    def same(got: list, want: list) -> bool:
        return len(got) == len(want) and all(
            np.allclose(e, we) and b == pytest.approx(wb)
            for (e, b), (we, wb) in zip(got, want, strict=False)
        )

    rate_with(3, 5)
    assert same(kept(), states[-3:])
    rate_with(6, 2)  # the 3 kept by the smaller ring survive, 2 more join them
    assert same(kept(), states[-5:])
    rate_with(2, 1)
    assert same(kept(), states[-2:])
    seqs = conn.execute(
        "SELECT slot, update_seq FROM model.user_latent_attributes_backups WHERE user_id = %s",
        (user,),
    ).fetchall()
    assert all(slot == seq % 2 for slot, seq in seqs)


def _parallel_ratings(dsn: str, user: int, movies: list[int], mode: str) -> None:
    with connect(dsn) as c:
        set_settings(c, online_update=mode)
    barrier = threading.Barrier(len(movies))
    errors: list[BaseException] = []

    def one(movie: int) -> None:
        try:
            with connect(dsn) as c:
                barrier.wait()
                with c.transaction():
                    rate(c, user, movie, 5.0 if movie % 2 else 1.0)
                    c.execute("SELECT pg_sleep(0.02)")  # hold the row lock: the others queue
        except BaseException as e:  # any failure: reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(m,)) for m in movies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


@pytest.mark.parametrize("existing", [True, False])
def test_parallel_sgd_ratings_by_one_user_lose_nothing(
    conn: psycopg.Connection, trained: str, existing: bool
) -> None:
    user = 36 if existing else 777301
    movies = unseen_movies(conn, user, 8)
    n_before = len(conn.execute(BACKUPS, (user,)).fetchall())
    _parallel_ratings(trained, user, movies, "sgd")
    archives = conn.execute(BACKUPS, (user,)).fetchall()[n_before:]
    assert len(archives) == len(movies)
    times = [
        r[0]
        for r in conn.execute(
            """SELECT archived_at FROM model.user_latent_attributes_backups
               WHERE user_id = %s ORDER BY update_seq""",
            (user,),
        )
    ]
    assert times == sorted(times)
    # Each archive -> next state is exactly one sgd step with one of the movies, each used once:
    # the final vector is the N steps applied in lock order.
    mu, _, _ = champion(conn)
    side = movie_side(conn, movies)
    states = [(np.asarray(e), b) for e, b in archives] + [conn.execute(VECTOR, (user,)).fetchone()]
    unused = set(movies)
    for (u, b), (nxt_u, _nxt_b) in zip(states, states[1:], strict=False):
        match = [
            m
            for m in unused
            if np.allclose(
                sgd_step(u, b, *side[m], mu, 5.0 if m % 2 else 1.0, 0.05, 0.02)[0],
                nxt_u,
                atol=1e-5,
            )
        ]
        assert len(match) == 1
        unused.discard(match[0])
    assert not unused


def test_parallel_refit_ratings_end_at_the_full_history_solution(
    conn: psycopg.Connection, trained: str
) -> None:
    user = 37
    movies = unseen_movies(conn, user, 6)
    n_before = len(conn.execute(BACKUPS, (user,)).fetchall())
    _parallel_ratings(trained, user, movies, "refit")
    assert len(conn.execute(BACKUPS, (user,)).fetchall()) - n_before == len(movies)
    want_u, want_b = ridge_lstsq(conn, user, 10.0)
    got_u, got_b = conn.execute(VECTOR, (user,)).fetchone()
    assert np.allclose(got_u, want_u, atol=1e-4) and got_b == pytest.approx(want_b, abs=1e-4)
