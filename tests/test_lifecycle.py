"""Data lifecycle: the ETL publish guard, forgetting a user, and which model may serve which catalogue."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest

from tests.conftest import connect, table_digest
from tests.test_pipeline import fresh, load_all

GUARDED = (
    "movrec.movies",
    "movrec.watch_events",
    "movrec.watch_events_archive",
    "movrec.movies_archive",
    "model.deployments",
)


def digests(
    conn: psycopg.Connection, tables: tuple[str, ...] = GUARDED
) -> dict[str, tuple[int, str]]:
    return {t: table_digest(conn, t) for t in tables}


def etl(conn: psycopg.Connection, force: bool | None = None) -> int:
    if force is None:  # the call form from before force existed
        return conn.execute("CALL movrec.etl(NULL, 2, 3, 5)").fetchone()[0]
    return conn.execute("CALL movrec.etl(NULL, 2, 3, 5, NULL, %s)", (force,)).fetchone()[0]


# --- the ETL publish guard ---------------------------------------------------------------


@pytest.fixture(scope="module")
def published(new_database: Callable[[str], str]) -> psycopg.Connection:
    conn = fresh(new_database, "t_lifecycle_etl")
    load_all(conn)
    etl(conn)
    return conn


def test_empty_staging_is_refused_and_changes_nothing(published: psycopg.Connection) -> None:
    published.execute(
        "SELECT movrec.rate(1, 2, 4)"
    )  # a live rating the empty publish would archive
    before = digests(published)
    with published.transaction():
        saved = published.execute("SELECT count(*) FROM staging.ml_ratings").fetchone()[0]
        published.execute("CREATE TEMP TABLE saved_ratings AS SELECT * FROM staging.ml_ratings")
        published.execute("DELETE FROM staging.ml_ratings")
    try:
        with pytest.raises(psycopg.errors.DataException, match="would empty the catalogue") as e:
            etl(published)
        assert "force => true" in e.value.diag.message_hint
        assert "movrec etl --force" in e.value.diag.message_hint
        assert e.value.diag.sqlstate == "22000"
        assert digests(published) == before
    finally:
        published.execute("INSERT INTO staging.ml_ratings SELECT * FROM saved_ratings")
        published.execute("DROP TABLE saved_ratings")
    assert published.execute("SELECT count(*) FROM staging.ml_ratings").fetchone()[0] == saved


def test_removing_more_than_half_is_refused_then_forced(published: psycopg.Connection) -> None:
    run = etl(published)
    n_movies = published.execute("SELECT count(*) FROM movrec.movies").fetchone()[0]
    n_ratings = published.execute("SELECT count(*) FROM movrec.watch_events").fetchone()[0]
    # A result that keeps one movie and its ratings: most of the catalogue would go.
    keep = published.execute("SELECT min(movie_id) FROM etl.movies4").fetchone()[0]
    published.execute("DELETE FROM etl.movies4 WHERE movie_id <> %s", (keep,))
    published.execute("DELETE FROM etl.ratings4 WHERE movie_id <> %s", (keep,))
    before = digests(published)
    with pytest.raises(
        psycopg.errors.DataException, match=r"would take out \d+ of \d+ movies"
    ) as e:
        published.execute("CALL movrec.etl_publish(%s)", (run,))  # the old call form
    assert f"CALL movrec.etl_publish({run}, force => true)" in e.value.diag.message_hint
    assert digests(published) == before

    archived_movies = published.execute("SELECT count(*) FROM movrec.movies_archive").fetchone()[0]
    archived_ratings = published.execute(
        "SELECT count(*) FROM movrec.watch_events_archive"
    ).fetchone()[0]
    published.execute("CALL movrec.etl_publish(%s, force => true)", (run,))
    assert published.execute("SELECT array_agg(movie_id) FROM movrec.movies").fetchone()[0] == [
        keep
    ]
    # nothing lost: what left is archived, by this run, with a reason
    gone = published.execute(
        "SELECT count(*), min(reason), max(reason) FROM movrec.movies_archive WHERE archived_by = %s",
        (run,),
    ).fetchone()
    assert gone == (n_movies - 1, "left the etl result", "left the etl result")
    assert (
        published.execute("SELECT count(*) FROM movrec.movies_archive").fetchone()[0]
        == archived_movies + n_movies - 1
    )
    left = published.execute("SELECT count(*) FROM movrec.watch_events").fetchone()[0]
    assert (
        published.execute("SELECT count(*) FROM movrec.watch_events_archive").fetchone()[0]
        == archived_ratings + n_ratings - left
    )
    row = published.execute(
        "SELECT movie->>'title', title FROM movrec.movies_archive WHERE archived_by = %s LIMIT 1",
        (run,),
    ).fetchone()
    assert row[0] == row[1]
    etl(published, force=False)  # the full files again: the catalogue comes back
    assert published.execute("SELECT count(*) FROM movrec.movies").fetchone()[0] == n_movies


def test_force_publishes_an_empty_result_and_archives_it(
    new_database: Callable[[str], str],
) -> None:
    conn = fresh(new_database, "t_lifecycle_etl_empty")
    load_all(conn)
    etl(conn)
    movies = conn.execute("SELECT count(*) FROM movrec.movies").fetchone()[0]
    conn.execute("TRUNCATE staging.ml_ratings, staging.ml_movies")
    run = etl(conn, force=True)
    assert conn.execute("SELECT count(*) FROM movrec.movies").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM movrec.watch_events").fetchone()[0] == 0
    assert (
        conn.execute(
            "SELECT count(*) FROM movrec.movies_archive WHERE archived_by = %s", (run,)
        ).fetchone()[0]
        == movies
    )
    assert conn.execute(
        "SELECT params FROM movrec.etl_runs WHERE etl_run = %s AND output = 'movrec.movies'", (run,)
    ).fetchone()[0] == {"force": True}


def test_cli_etl_has_force() -> None:
    from click.testing import CliRunner
    from movrec_cli.main import cli

    result = CliRunner().invoke(cli, ["etl", "--help"])
    assert result.exit_code == 0 and "--force" in result.output


# --- ratings during a publish ------------------------------------------------------------


def stats_match_ratings(conn: psycopg.Connection) -> bool:
    """model.user_rating_stats agrees with watch_events: no rating counted twice or missed."""
    return conn.execute(
        """SELECT count(*) = 0 FROM (
               SELECT user_id, count(*)::integer AS n, sum(rating::float8) AS s
               FROM movrec.watch_events GROUP BY user_id
               EXCEPT SELECT user_id, n_ratings, sum_ratings FROM model.user_rating_stats
               WHERE n_ratings > 0) missing"""
    ).fetchone()[0]


def test_ratings_flow_while_a_publish_is_open(new_database: Callable[[str], str]) -> None:
    """A rerun's publish held open in one session: ratings of other users and of staying
    movies go in at once (lock_timeout would fail them otherwise), each moves its user's
    vector once, and all of them survive the publish's commit; a rating of a movie that
    leaves waits for that movie's row and then fails on the foreign key."""
    conn = fresh(new_database, "t_lifecycle_publish_online")
    load_all(conn)
    etl(conn)
    conn.execute("""SELECT movrec.train('mf', '{"epochs": 3}')""")
    run = etl(conn)  # a rerun: its stages' tables stay for the publish below
    # The rerun's result: one movie leaves (and its ratings), one rating changes in the file.
    leaving = conn.execute(
        "SELECT movie_id FROM etl.ratings4 GROUP BY movie_id ORDER BY count(*), movie_id LIMIT 1"
    ).fetchone()[0]
    conn.execute("DELETE FROM etl.ratings4 WHERE movie_id = %s", (leaving,))
    conn.execute("DELETE FROM etl.movies4 WHERE movie_id = %s", (leaving,))
    changed = conn.execute(
        """UPDATE etl.ratings4 SET rating = CASE WHEN rating = 5 THEN 1 ELSE rating + 0.5 END
           WHERE (user_id, movie_id) = (SELECT user_id, movie_id FROM etl.ratings4
                                        ORDER BY user_id, movie_id LIMIT 1)
           RETURNING user_id, movie_id, rating"""
    ).fetchone()
    n_leaving = conn.execute(
        "SELECT count(*) FROM movrec.watch_events WHERE movie_id = %s", (leaving,)
    ).fetchone()[0]
    touched = {changed[0]} | {
        u
        for (u,) in conn.execute(
            "SELECT user_id FROM movrec.watch_events WHERE movie_id = %s", (leaving,)
        )
    }
    # a user the publish does not touch re-rates one of their ETL rows (it turns live)
    rerated = conn.execute(
        """SELECT user_id, movie_id, rating FROM movrec.watch_events
           WHERE etl_run IS NOT NULL AND movie_id <> %s AND NOT (user_id = ANY(%s))
           ORDER BY user_id, movie_id LIMIT 1""",
        (leaving, list(touched)),
    ).fetchone()
    assert rerated is not None, "the fixture has no user the publish leaves alone"
    staying = conn.execute(
        "SELECT min(movie_id) FROM etl.movies4 WHERE movie_id <> %s", (rerated[1],)
    ).fetchone()[0]
    new_rating = 1.0 if rerated[2] != 1.0 else 2.0
    before = {
        u: conn.execute(
            "SELECT n_updates FROM model.user_latent_attributes WHERE user_id = %s", (u,)
        ).fetchone()
        for u in (rerated[0], 1001, 1002)
    }

    with connect(conn.info.dsn) as publisher, connect(conn.info.dsn) as rater:
        rater.execute("SET lock_timeout = '3s'")
        rater.execute("SET ROLE movrec_user")
        with publisher.transaction():
            publisher.execute("CALL movrec.etl_publish(%s, force => true)", (run,))
            # the publish has run and holds its locks until it commits
            rater.execute(
                "SELECT movrec.rate(%s::int, %s::int, %s::real)",
                (rerated[0], rerated[1], new_rating),
            )
            rater.execute("SELECT movrec.rate(1001, %s::int, 4)", (staying,))
            rater.execute(
                "INSERT INTO movrec.watch_events (user_id, movie_id, rating) VALUES (1002, %s, 3.5)",
                (staying,),
            )
            with pytest.raises(psycopg.errors.LockNotAvailable):  # waits for the movie's row
                rater.execute("SELECT movrec.rate(1003, %s::int, 4)", (leaving,))
        with pytest.raises(psycopg.errors.ForeignKeyViolation):  # the movie is gone now
            rater.execute("SELECT movrec.rate(1003, %s::int, 4)", (leaving,))

    rows = dict(
        ((u, m), (r, e))
        for u, m, r, e in conn.execute(
            "SELECT user_id, movie_id, rating, etl_run FROM movrec.watch_events"
        )
    )
    assert rows[(rerated[0], rerated[1])] == (new_rating, None)
    assert rows[(1001, staying)] == (4.0, None)
    assert rows[(1002, staying)] == (3.5, None)
    assert rows[(changed[0], changed[1])] == (changed[2], run)
    assert not any(m == leaving for _, m in rows)
    assert (
        conn.execute(
            "SELECT count(*) FROM movrec.watch_events_archive WHERE archived_by = %s AND movie_id = %s",
            (run, leaving),
        ).fetchone()[0]
        == n_leaving
    )
    # each live rating moved its user's vector exactly once; the publish's rows moved none
    for u in (rerated[0], 1001, 1002):
        n = conn.execute(
            "SELECT n_updates FROM model.user_latent_attributes WHERE user_id = %s", (u,)
        ).fetchone()[0]
        assert n == (before[u][0] if before[u] else 0) + 1, (u, before[u], n)
    assert stats_match_ratings(conn)


# --- forgetting a user -------------------------------------------------------------------

PER_USER = (
    "movrec.watch_events",
    "movrec.watch_events_archive",
    "model.user_latent_attributes",
    "model.user_latent_attributes_backups",
    "model.user_rating_stats",
    "model.model_recommendation",
    "model.user_recommendation",
    "model.cf_queue",
    "model.refresh_queue",
    "movrec.user_ids",
)


def rows_of(
    conn: psycopg.Connection, user: int, others: bool = False
) -> dict[str, tuple[int, str]]:
    op = "<>" if others else "="
    return {
        t: table_digest(conn, f"(SELECT * FROM {t} WHERE user_id {op} {int(user)})")
        for t in PER_USER
    }


def test_forget_user_erases_one_user_everywhere(conn: psycopg.Connection) -> None:
    user, ml_user = 7, 900007
    unrated = [
        m
        for (m,) in conn.execute(
            """SELECT movie_id FROM movrec.movies m WHERE NOT EXISTS
                   (SELECT FROM movrec.watch_events w WHERE w.user_id = %s AND w.movie_id = m.movie_id)
               ORDER BY movie_id LIMIT 3""",
            (user,),
        )
    ]
    for m in unrated:  # online updates: the vector moves, backups are written, queues filled
        conn.execute("SELECT movrec.rate(%s, %s, 4.5)", (user, m))
    conn.execute("SELECT movrec.refresh_recommendations(%s)", (user,))
    conn.execute("SELECT count(*) FROM movrec.user_to_user(%s, 0.0, 2)", (user,))
    conn.execute(
        """INSERT INTO movrec.watch_events_archive (user_id, movie_id, rating, rated_at, archived_by, reason)
           VALUES (%s, 1, 3, now(), 0, 'test')""",
        (user,),
    )
    conn.execute(
        "INSERT INTO movrec.user_ids (user_id, ml_user_id, etl_run) VALUES (%s, %s, 0) ON CONFLICT DO NOTHING",
        (user, ml_user),
    )
    conn.execute("INSERT INTO staging.ml_ratings VALUES (%s, 1, 4, now())", (ml_user,))
    before = rows_of(conn, user)
    assert all(n > 0 for n, _ in before.values()), before
    others = rows_of(conn, user, others=True)

    counts = conn.execute("SELECT movrec.forget_user(%s)", (user,)).fetchone()[0]

    assert rows_of(conn, user) == {t: (0, "") for t in PER_USER}
    assert rows_of(conn, user, others=True) == others
    assert (
        conn.execute(
            "SELECT count(*) FROM staging.ml_ratings WHERE user_id = %s", (ml_user,)
        ).fetchone()[0]
        == 0
    )
    for t in PER_USER:  # the report names what was there
        assert counts[t] == (before[t][0] if t != "model.user_rating_stats" else 1), (t, counts)
    assert counts["staging.ml_ratings"] == 1
    # a second request finds nothing, and says so
    again = conn.execute("SELECT movrec.forget_user(%s)", (user,)).fetchone()[0]
    assert set(again.values()) == {0}
    # the user is a stranger now: recommend() serves them like any new user
    assert conn.execute("SELECT count(*) FROM movrec.recommend(%s)", (user,)).fetchone()[0] > 0


def test_forget_user_is_for_admins_only(conn: psycopg.Connection) -> None:
    rights = conn.execute(
        """SELECT has_function_privilege('movrec_admin', 'movrec.forget_user(integer)', 'EXECUTE'),
                  has_function_privilege('movrec_user', 'movrec.forget_user(integer)', 'EXECUTE'),
                  (SELECT proacl::text FROM pg_proc WHERE oid = 'movrec.forget_user(integer)'::regprocedure),
                  (SELECT prosecdef FROM pg_proc WHERE oid = 'movrec.forget_user(integer)'::regprocedure),
                  (SELECT proconfig FROM pg_proc WHERE oid = 'movrec.forget_user(integer)'::regprocedure)"""
    ).fetchone()
    assert rights[0] and not rights[1]
    assert not any(entry.startswith("=") for entry in rights[2].strip("{}").split(","))  # no PUBLIC
    assert rights[3] and any(c.startswith("search_path=") for c in rights[4])
    with pytest.raises(psycopg.errors.NullValueNotAllowed):
        conn.execute("SELECT movrec.forget_user(NULL)")


def test_forget_user_reaches_other_sessions_caches(trained: str) -> None:
    """After forget_user(u) commits in one session, another session whose CF cache was
    loaded with u's ratings answers as a new session does: u's ratings feed no neighbour,
    score or count."""
    cf = "SELECT movie_id, score, neighbours FROM movrec.user_to_user(%s, 0.0, 5, 1, 0, 0, false, false)"
    with connect(trained) as admin, connect(trained) as other:
        v = admin.execute(
            "SELECT user_id FROM movrec.watch_events GROUP BY user_id ORDER BY count(*) DESC, user_id LIMIT 1"
        ).fetchone()[0]
        u = 9100
        # u rates as v does, and gives 5 stars to movies v has not seen: v's best neighbour
        admin.execute(
            """INSERT INTO movrec.watch_events (user_id, movie_id, rating)
               SELECT %s, movie_id, rating FROM movrec.watch_events WHERE user_id = %s
               UNION ALL
               (SELECT %s, movie_id, 5 FROM movrec.movies m WHERE NOT EXISTS
                   (SELECT FROM movrec.watch_events w WHERE w.user_id = %s AND w.movie_id = m.movie_id)
                ORDER BY movie_id LIMIT 5)""",
            (u, v, u, v),
        )
        admin.execute("SELECT movrec.refresh_movie_stats()")
        with_u = other.execute(cf, (v,)).fetchall()
        admin.execute("SELECT movrec.forget_user(%s)", (u,))
        after = other.execute(cf, (v,)).fetchall()
        # the per-movie statistics behind the popularity ranking lost u's ratings too
        assert admin.execute(
            """SELECT count(*) = 0 FROM (SELECT movie_id, n_ratings FROM model.movie_rating_stats
                   EXCEPT SELECT movie_id, count(*) FROM movrec.watch_events GROUP BY movie_id) d"""
        ).fetchone()[0]
    with connect(trained) as fresh_session:
        expected = fresh_session.execute(cf, (v,)).fetchall()
    assert with_u != expected  # u mattered to v
    assert after == expected


# --- which model may serve -----------------------------------------------------------------

TRAIN = """SELECT movrec.train('mf', '{"epochs": 2}', %s)"""


def champion(conn: psycopg.Connection) -> int | None:
    row = conn.execute("SELECT model_id FROM model.champion").fetchone()
    return row[0] if row else None


def test_rollback_walks_back_one_step_per_call(conn: psycopg.Connection) -> None:
    first = champion(conn)
    second = conn.execute(TRAIN, (True,)).fetchone()[0]
    third = conn.execute(TRAIN, (True,)).fetchone()[0]
    assert champion(conn) == third
    assert conn.execute("SELECT movrec.rollback()").fetchone()[0] == second
    assert champion(conn) == second
    assert conn.execute("SELECT movrec.rollback()").fetchone()[0] == first  # not back to third
    assert champion(conn) == first
    # further back than the history this test wrote: whatever came before, then the bottom
    while True:
        try:
            conn.execute("SELECT movrec.rollback()")
        except psycopg.errors.NoDataFound as e:
            assert "no earlier champion" in str(e)
            break
    bottom = champion(conn)
    # a deploy after rollbacks pushes on top of where the history stands
    conn.execute("SELECT movrec.deploy(%s)", (third,))
    assert conn.execute("SELECT movrec.rollback()").fetchone()[0] == bottom
    last = conn.execute(
        "SELECT reason, rolled_back_from IS NOT NULL FROM model.deployments ORDER BY deployment_id DESC LIMIT 1"
    ).fetchone()
    assert last == (f"rollback from {third}", True)
    conn.execute("SELECT movrec.deploy(%s)", (first,))


def test_registry_records_the_catalogue(conn: psycopg.Connection) -> None:
    snap = conn.execute(
        "SELECT data_snapshot -> 'catalogue', length(serving_movie_ids) / 4 FROM model.registry "
        "WHERE model_id = %s",
        (champion(conn),),
    ).fetchone()
    catalogue, n = snap
    assert catalogue["n_movies"] == n and len(catalogue["fingerprint"]) == 32
    assert catalogue["etl_run"] is None  # the demo data came without an ETL run
    ids = conn.execute(
        "SELECT movrec._model_movie_ids(serving_movie_ids) = "
        "(SELECT array_agg(movie_id ORDER BY movie_id) FROM model.movie_latent_attributes) "
        "FROM model.registry WHERE model_id = %s",
        (champion(conn),),
    ).fetchone()[0]
    assert ids


def test_a_model_of_another_catalogue_never_serves(new_database: Callable[[str], str]) -> None:
    from movrec_cli.demo_data import load_demo

    conn = fresh(new_database, "t_lifecycle_catalogue")
    load_demo(conn, n_users=30)
    demo = conn.execute(TRAIN, (True,)).fetchone()[0]
    demo_rmse = conn.execute(
        "SELECT (metrics->>'val_rmse')::float8 FROM model.registry WHERE model_id = %s", (demo,)
    ).fetchone()[0]
    load_all(conn)
    conn.execute("CALL movrec.etl(NULL, 2, 3, 5)")  # the first run: ids now mean MovieLens movies
    assert champion(conn) is None
    before = digests(
        conn, ("model.deployments", "model.movie_latent_attributes", "model.user_latent_attributes")
    )

    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="another catalogue") as e:
        conn.execute("SELECT movrec.rollback()")
    assert "movrec.train()" in e.value.diag.message_hint
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="another catalogue"):
        conn.execute("SELECT movrec.deploy_best()")
    with pytest.raises(
        psycopg.errors.ObjectNotInPrerequisiteState, match=f"model {demo} was trained"
    ):
        conn.execute("SELECT movrec.deploy(%s)", (demo,))
    assert champion(conn) is None
    assert digests(conn, tuple(before)) == before

    # a model of the current data competes alone, even with a worse metric than the demo's
    real = conn.execute(TRAIN, (False,)).fetchone()[0]
    conn.execute(
        "UPDATE model.registry SET metrics = metrics || jsonb_build_object('val_rmse', %s::float8) "
        "WHERE model_id = %s",
        (demo_rmse + 10, real),
    )
    assert conn.execute("SELECT movrec.deploy_best()").fetchone()[0] == real
    assert champion(conn) == real
    snap = conn.execute(
        "SELECT data_snapshot -> 'catalogue' ->> 'etl_run' FROM model.registry WHERE model_id = %s",
        (real,),
    ).fetchone()[0]
    assert snap is not None
    # rolling back past the retirement reaches only the demo model: refused, champion kept
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
        conn.execute("SELECT movrec.rollback()")
    assert champion(conn) == real
    # an ETL rerun keeps the ids: the model still fits
    conn.execute("CALL movrec.etl(NULL, 2, 3, 5)")
    assert conn.execute("SELECT movrec.deploy(%s)", (real,)).fetchone()[0] == real
