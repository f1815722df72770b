"""Hot standby serving: a streaming replica of the primary answers the read calls from the
rows it replayed, sees a deploy and a rating once replayed, waits for a write by LSN
(movrec.wait_for_lsn), and refuses the writing calls with 25006, naming its primary."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest
from movrec_cli.cluster import Cluster, Standby
from psycopg import errors

from tests.conftest import connect

USERS_SQL = "SELECT user_id FROM movrec.watch_events GROUP BY user_id ORDER BY user_id LIMIT 5"
UNKNOWN_USER = 987654  # no ratings, no vector: the default vector / popular fallbacks


def current_lsn(primary: str) -> str:
    with connect(primary) as p:
        return p.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]


def caught_up(primary: str, standby: str) -> None:
    """Wait until the standby has replayed everything the primary committed so far."""
    lsn = current_lsn(primary)
    deadline = time.monotonic() + 60
    while True:  # a database created on the primary appears on the standby once replayed
        try:
            with connect(standby) as s:
                assert s.execute("SELECT movrec.wait_for_lsn(%s, 60000)", (lsn,)).fetchone()[0]
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="module")
def pair(trained: str, standby: Standby) -> tuple[str, str]:
    """(primary DSN, standby DSN) of the trained database, the standby caught up."""
    dbname = psycopg.conninfo.conninfo_to_dict(trained)["dbname"]
    standby_dsn = standby.dsn(str(dbname))
    caught_up(trained, standby_dsn)
    with connect(standby_dsn) as s:
        assert s.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
    return trained, standby_dsn


@pytest.fixture
def sessions(pair: tuple[str, str]) -> Iterator[tuple[psycopg.Connection, psycopg.Connection]]:
    with connect(pair[0]) as p, connect(pair[1]) as s:
        yield p, s


def answers(conn: psycopg.Connection, users: list[int], movies: list[int]) -> dict[str, object]:
    """What the read calls answer for these users and movies."""
    out: dict[str, object] = {}
    for u in [*users, UNKNOWN_USER]:
        out[f"recommend {u}"] = conn.execute(
            "SELECT movie_id, score, predicted_rating, source FROM movrec.recommend(%s, 10)", (u,)
        ).fetchall()
        out[f"recommend {u} drama"] = conn.execute(
            "SELECT movie_id, score FROM movrec.recommend(%s, 5, ARRAY['Drama'])", (u,)
        ).fetchall()
        for m in movies:
            out[f"predict {u} {m}"] = conn.execute(
                "SELECT movrec.predict(%s, %s)", (u, m)
            ).fetchone()
            out[f"explain {u} {m}"] = conn.execute(
                "SELECT rated_movie_id, contribution, reason FROM movrec.explain(%s, %s)", (u, m)
            ).fetchall()
    for m in movies:
        out[f"similar {m}"] = conn.execute(
            "SELECT movie_id, similarity FROM movrec.similar_movies(%s, 10)", (m,)
        ).fetchall()
    out["batch"] = conn.execute(
        "SELECT * FROM movrec.predict(%s::int[], %s::int[])",
        ([u for u in users for _ in movies], [m for _ in users for m in movies]),
    ).fetchall()
    return out


def sample(conn: psycopg.Connection) -> tuple[list[int], list[int]]:
    users = [r[0] for r in conn.execute(USERS_SQL)]
    movies = [
        r[0]
        for r in conn.execute(
            "SELECT movie_id FROM model.movie_latent_attributes ORDER BY movie_id LIMIT 3"
        )
    ]
    return users, movies


def test_standby_answers_as_the_primary(sessions) -> None:
    primary, standby = sessions
    users, movies = sample(primary)
    on_primary = answers(primary, users, movies)
    on_standby = answers(standby, users, movies)
    assert on_standby == on_primary
    assert all(on_primary[f"recommend {u}"] for u in users)  # not an empty comparison


def test_a_rating_on_the_primary_changes_the_users_recommendations_on_the_standby(
    sessions,
) -> None:
    primary, standby = sessions
    user = sample(primary)[0][1]
    before = standby.execute("SELECT movie_id FROM movrec.recommend(%s, 10)", (user,)).fetchall()
    top = before[0][0]
    primary.execute("SELECT movrec.rate(%s, %s, 0.5)", (user, top))
    lsn = primary.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
    # read-your-writes: the same session of the standby, its caches warm from before
    assert standby.execute("SELECT movrec.wait_for_lsn(%s, 30000)", (lsn,)).fetchone()[0] is True
    assert standby.execute(
        "SELECT rating FROM movrec.watch_events WHERE user_id = %s AND movie_id = %s", (user, top)
    ).fetchone() == (0.5,)
    after = standby.execute(
        "SELECT movie_id, score, source FROM movrec.recommend(%s, 10)", (user,)
    ).fetchall()
    assert top not in [r[0] for r in after]  # rated now: no longer recommended
    assert (
        after
        == primary.execute(
            "SELECT movie_id, score, source FROM movrec.recommend(%s, 10)", (user,)
        ).fetchall()
    )
    vector = "SELECT embedding::text FROM model.user_latent_attributes WHERE user_id = %s"
    assert (
        standby.execute(vector, (user,)).fetchone() == primary.execute(vector, (user,)).fetchone()
    )


def test_a_deploy_on_the_primary_is_served_by_the_standby_once_replayed(sessions) -> None:
    primary, standby = sessions
    users, movies = sample(primary)
    old = answers(standby, users, movies)  # this standby session keeps its caches
    new_model = primary.execute(
        """SELECT movrec.train('mf', '{"epochs": 5, "seed": 11}', deploy => false)"""
    ).fetchone()[0]
    primary.execute("SELECT movrec.deploy(%s)", (new_model,))
    lsn = primary.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
    assert standby.execute("SELECT movrec.wait_for_lsn(%s, 60000)", (lsn,)).fetchone()[0]
    assert standby.execute("SELECT model_id FROM model.champion").fetchone() == (new_model,)
    served = answers(standby, users, movies)
    assert served == answers(primary, users, movies)
    assert served != old
    assert served[f"recommend {users[0]}"] != old[f"recommend {users[0]}"]


def test_wait_for_lsn(sessions, pair: tuple[str, str]) -> None:
    primary, standby = sessions
    lsn = primary.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    # a primary has every write it committed
    assert primary.execute("SELECT movrec.wait_for_lsn('FFFFFFFF/0', 0)").fetchone() == (True,)
    assert standby.execute("SELECT movrec.wait_for_lsn(%s, 30000)", (lsn,)).fetchone() == (True,)
    # an LSN the primary has not written yet: the wait gives up, saying how far it got
    ahead = primary.execute("SELECT pg_current_wal_lsn() + 1e12").fetchone()[0]
    started = time.monotonic()
    with pytest.raises(
        errors.QueryCanceled, match="replayed up to [0-9A-F]+/[0-9A-F]+, not yet to"
    ):
        standby.execute("SELECT movrec.wait_for_lsn(%s, 200)", (ahead,))
    assert time.monotonic() - started >= 0.2
    with pytest.raises(errors.NullValueNotAllowed):
        standby.execute("SELECT movrec.wait_for_lsn(NULL, 100)")
    with pytest.raises(errors.NullValueNotAllowed):
        standby.execute("SELECT movrec.wait_for_lsn(%s, NULL)", (lsn,))
    with pytest.raises(errors.InvalidParameterValue, match="timeout_ms"):
        standby.execute("SELECT movrec.wait_for_lsn(%s, -1)", (lsn,))
    # the application's own role may wait
    standby.execute("SET ROLE movrec_user")
    assert standby.execute("SELECT movrec.wait_for_lsn(%s, 1000)", (lsn,)).fetchone() == (True,)


REFUSED = {
    "train()": "SELECT movrec.train('mf', '{{\"epochs\": 1}}')",
    "deploy()": "SELECT movrec.deploy((SELECT model_id FROM model.champion))",
    "rollback()": "SELECT movrec.rollback()",
    "deploy_best()": "SELECT movrec.deploy_best()",
    "evaluate()": "SELECT * FROM movrec.evaluate((SELECT model_id FROM model.champion))",
    "rate()": "SELECT movrec.rate({user}, {movie}, 4)",
    "cf_drain()": "SELECT movrec.cf_drain()",
    "cf_rebuild_stats()": "SELECT movrec.cf_rebuild_stats()",
    "serving_drain()": "SELECT movrec.serving_drain()",
    "refresh_recommendations()": "SELECT movrec.refresh_recommendations({user})",
    "forget_user()": "SELECT movrec.forget_user({user})",
    "etl()": "CALL movrec.etl()",
}


@pytest.mark.parametrize("call", sorted(REFUSED))
def test_the_standby_refuses_writes_naming_the_primary(
    sessions, cluster: Cluster, call: str
) -> None:
    primary, standby = sessions
    user, movie = primary.execute(
        "SELECT user_id, movie_id FROM movrec.watch_events ORDER BY 1, 2 LIMIT 1"
    ).fetchone()
    with pytest.raises(errors.ReadOnlySqlTransaction) as refused:
        standby.execute(REFUSED[call].format(user=user, movie=movie))
    message = refused.value.diag.message_primary or ""
    assert message.startswith(f"{call}: this server is a read-only hot standby")
    assert f"host={cluster.socket_dir} port={cluster.port}" in message
    assert "wait_for_lsn" in (refused.value.diag.message_hint or "")


def test_the_application_is_told_where_the_primary_is(sessions, cluster: Cluster) -> None:
    """pg_stat_wal_receiver hides the sender from roles without pg_read_all_stats; the
    guard reads it as the owner."""
    primary, standby = sessions
    user, movie = primary.execute(
        "SELECT user_id, movie_id FROM movrec.watch_events ORDER BY 1, 2 LIMIT 1"
    ).fetchone()
    standby.execute("SET ROLE movrec_user")
    assert standby.execute("SELECT sender_port FROM pg_stat_wal_receiver").fetchone() in (
        None,
        (None,),
    )
    with pytest.raises(errors.ReadOnlySqlTransaction, match=f"port={cluster.port}"):
        standby.execute("SELECT movrec.rate(%s, %s, 4)", (user, movie))
    # a plain INSERT is refused by the server itself
    with pytest.raises(errors.ReadOnlySqlTransaction):
        standby.execute(
            "INSERT INTO movrec.watch_events (user_id, movie_id, rating) VALUES (%s, %s, 4)",
            (UNKNOWN_USER, movie),
        )
