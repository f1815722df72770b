"""movrec on a Citus cluster (a coordinator and 2 workers on this machine): the per-user tables
distributed by user_id and colocated, the catalogue, registry and champion as reference tables,
recommend() and rate() delegated to the user's node.  Checked against a single-node install of
the same data and the same model: the same answers, the same vector after a rating; a rating
lands on its user's shard (and queues the user for CF and refresh); a deploy reaches every
worker; a worker restart loses nothing.  Skipped only where Citus is neither installed nor
buildable (CITUS_SRC)."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest
from click.testing import CliRunner
from movrec_cli import schema
from movrec_cli.bench_citus import copy_model
from movrec_cli.cluster import CitusCluster
from movrec_cli.demo_data import load_demo
from movrec_cli.main import cli
from psycopg import errors

from tests.conftest import connect, table_digest

USERS = 120
UNKNOWN_USER = 987654  # no ratings, no vector: the popular fallback
DISTRIBUTED = [
    "movrec.watch_events",
    "model.user_latent_attributes",
    "model.user_latent_attributes_backups",
    "model.user_rating_stats",
    "model.model_recommendation",
    "model.user_recommendation",
    "model.cf_queue",
    "model.refresh_queue",
]
REFERENCE = [
    "movrec.movies",
    "model.registry",
    "model.deployments",
    "model.movie_latent_attributes",
    "model.movie_latent_extra",
    "model.movie_rating_stats",
    "movrec.settings",
    "movrec.installs",
]


@pytest.fixture(scope="module")
def single(new_database: Callable[[str], str]) -> str:
    """The single-node install: demo data, an MF model trained and deployed."""
    dsn = new_database("t_citus_single")
    with connect(dsn) as conn:
        schema.install(conn)
        load_demo(conn, n_users=USERS, seed=7)
        conn.execute("""SELECT movrec.train('mf', '{"epochs": 10}')""")
    return dsn


@pytest.fixture(scope="module")
def citus(citus_cluster: CitusCluster, single: str) -> str:
    """The same data on Citus (`movrec install --citus`, then the demo load through the
    distributed triggers) and the single node's model, deployed there."""
    dsn = citus_cluster.create_database("t_citus")
    with connect(dsn) as conn:
        result = schema.install(conn, citus=True)
        assert "distributed over Citus" in result.message
        load_demo(conn, n_users=USERS, seed=7)
    with connect(single) as s:
        model_id = s.execute("SELECT model_id FROM model.champion").fetchone()[0]
    copied = copy_model(single, dsn, model_id)
    with connect(dsn) as conn:
        conn.execute("SELECT movrec.deploy(%s)", (copied,))
    return dsn


def answers(conn: psycopg.Connection, users: list[int]) -> dict[str, object]:
    out: dict[str, object] = {}
    for u in [*users, UNKNOWN_USER]:
        out[f"recommend {u}"] = conn.execute(
            "SELECT movie_id, round(score::numeric, 4), round(predicted_rating::numeric, 4), source "
            "FROM movrec.recommend(%s, 10)",
            (u,),
        ).fetchall()
        out[f"drama {u}"] = conn.execute(
            "SELECT movie_id FROM movrec.recommend(%s, 5, ARRAY['Drama'])", (u,)
        ).fetchall()
        out[f"predict {u}"] = conn.execute(
            "SELECT round(movrec.predict(%s, 1)::numeric, 4)", (u,)
        ).fetchone()
    return out


def vector_of(conn: psycopg.Connection, user: int) -> tuple[object, ...]:
    return conn.execute(
        "SELECT embedding::text, round(bias::numeric, 5), n_updates FROM model.user_latent_attributes "
        "WHERE user_id = %s",
        (user,),
    ).fetchone()


def shard_node(conn: psycopg.Connection, table: str, user: int) -> tuple[str, int, str]:
    """(node socket, port, shard table name) holding ``user``'s rows of ``table``."""
    return conn.execute(
        """SELECT s.nodename, s.nodeport, s.shard_name::text FROM citus_shards s
           WHERE s.shardid = get_shard_id_for_distribution_column(%s, %s)""",
        (table, user),
    ).fetchone()


def test_layout(citus: str) -> None:
    with connect(citus) as conn:
        conn.execute("SET search_path = pg_catalog, public")  # names come out schema-qualified
        kinds = dict(
            conn.execute("SELECT table_name::text, citus_table_type FROM citus_tables").fetchall()
        )
        colocation = {
            r[0]: r[1]
            for r in conn.execute(
                "SELECT logicalrelid::regclass::text, colocationid FROM pg_dist_partition"
            ).fetchall()
        }
        assert {t: kinds.get(t) for t in DISTRIBUTED} == {t: "distributed" for t in DISTRIBUTED}
        assert {t: kinds.get(t) for t in REFERENCE} == {t: "reference" for t in REFERENCE}
        assert {colocation[t] for t in DISTRIBUTED} == {colocation["movrec.watch_events"]}
        functions = dict(
            conn.execute(
                """SELECT objid::regprocedure::text, distribution_argument_index
                   FROM pg_dist_object WHERE classid = 'pg_proc'::regclass
                     AND distribution_argument_index IS NOT NULL"""
            ).fetchall()
        )
        assert functions == {
            "movrec.recommend(integer,integer,text[],integer,integer)": 0,
            "movrec.rate(integer,integer,real)": 0,
        }
        # every movrec function is on the workers too
        assert (
            one_value(
                conn,
                """SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
               WHERE n.nspname IN ('movrec', 'model') AND NOT EXISTS (
                   SELECT FROM pg_dist_object o WHERE o.classid = 'pg_proc'::regclass
                   AND o.objid = p.oid)""",
            )
            == 0
        )
        # a rerun changes nothing
        assert one_value(conn, "SELECT movrec.distribute()") == {}


def test_the_install_script_reruns_on_citus(citus: str) -> None:
    """An upgrade reruns the whole script over the distributed tables (statement by statement:
    Citus forwards some DDL's text to the workers) and keeps the layout and the row triggers."""
    with connect(citus) as conn:
        conn.execute("DELETE FROM movrec.installs")  # as if an older release were installed
        result = schema.install(conn)
        assert "installed" in result.message
        conn.execute("SET search_path = pg_catalog, public")
        assert (
            one_value(conn, "SELECT count(*) FROM citus_tables")
            == len(DISTRIBUTED) + len(REFERENCE) + 3
        )  # (the ETL runs and the tokens)
        triggers = {
            r[0]
            for r in conn.execute(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = 'movrec.watch_events'::regclass "
                "AND NOT tgisinternal"
            )
        }
        assert triggers == {
            "movrec_online_update",
            "movrec_rerating_stamp",
            "movrec_cf_enqueue_row",
            "movrec_refresh_enqueue_row",
            "movrec_cf_enqueue_truncate_citus",
        }


def one_value(conn: psycopg.Connection, query: str, *args: object) -> object:
    return conn.execute(query, args).fetchone()[0]


def test_same_answers_as_the_single_node(single: str, citus: str) -> None:
    with connect(single) as s:
        users = [
            r[0]
            for r in s.execute(
                "SELECT user_id FROM movrec.watch_events GROUP BY user_id ORDER BY user_id LIMIT 6"
            )
        ]
        expected = answers(s, users)
    with connect(citus) as c:
        assert answers(c, users) == expected
        assert table_digest(c, "movrec.watch_events") == table_digest(
            connect(single), "movrec.watch_events"
        )


def test_a_rating_lands_on_its_shard_and_moves_the_vector(single: str, citus: str) -> None:
    user, movie, rating = 7, None, 4.5
    with connect(single) as s, connect(citus) as c:
        movie = one_value(
            s,
            "SELECT min(movie_id) FROM model.movie_latent_attributes m WHERE NOT EXISTS "
            "(SELECT FROM movrec.watch_events w WHERE w.user_id = %s AND w.movie_id = m.movie_id)",
            user,
        )
        before = vector_of(c, user)
        assert before == vector_of(s, user)
        for conn in (s, c):
            conn.execute("SELECT movrec.rate(%s::int, %s::int, %s::real)", (user, movie, rating))
        after = vector_of(c, user)
        assert after != before and after[2] == before[2] + 1
        assert after == vector_of(s, user)  # the same online step
        assert answers(c, [user]) == answers(s, [user])
        # the row is in the shard that get_shard_id_for_distribution_column names, on its node
        for table in (
            "movrec.watch_events",
            "model.user_latent_attributes",
            "model.cf_queue",
            "model.refresh_queue",
        ):
            host, port, shard = shard_node(c, table, user)
            with connect(f"host={host} port={port} user=postgres dbname=t_citus") as w:
                assert one_value(w, f"SELECT count(*) FROM {shard} WHERE user_id = %s", user) >= 1
        stats = c.execute(
            "SELECT n_ratings, sum_ratings FROM model.user_rating_stats WHERE user_id = %s", (user,)
        ).fetchone()
        assert (
            stats
            == c.execute(
                "SELECT count(*)::integer, sum(rating::float8) FROM movrec.watch_events WHERE user_id = %s",
                (user,),
            ).fetchone()
        )


CF = "SELECT rank, movie_id, round(score::numeric, 4), neighbours FROM movrec.user_to_user(%s, store => false)"
STORED_CF = (
    "SELECT user_id, rank, movie_id, round(score::numeric, 4) FROM model.user_recommendation "
    "WHERE user_id = ANY(%s) ORDER BY user_id, rank"
)
STORED_REFRESH = (
    "SELECT user_id, rank, movie_id, round(score::numeric, 4), round(predicted_rating::numeric, 4) "
    "FROM model.model_recommendation WHERE user_id = ANY(%s) ORDER BY user_id, rank"
)


def all_users(conn: psycopg.Connection) -> list[int]:
    return [
        r[0] for r in conn.execute("SELECT DISTINCT user_id FROM movrec.watch_events ORDER BY 1")
    ]


def test_user_to_user_and_refresh_as_on_the_single_node(single: str, citus: str) -> None:
    """user_to_user() and refresh_recommendations() of users with a vector: the same CF
    neighbours' recommendations and the same stored list as the single node."""
    users = [3, 4, 5, 6, 7, 8]
    with connect(single) as s, connect(citus) as c:
        expected = {u: s.execute(CF, (u,)).fetchall() for u in users}
        assert any(expected.values())  # the demo users have CF neighbours
        assert {u: c.execute(CF, (u,)).fetchall() for u in users} == expected
        assert one_value(
            c, "SELECT count(*) FROM model.user_latent_attributes WHERE user_id = ANY(%s)", users
        ) == len(users)
        for conn in (s, c):
            for u in users:
                assert one_value(conn, "SELECT movrec.refresh_recommendations(%s)", u) > 0
        assert (
            c.execute(STORED_REFRESH, (users,)).fetchall()
            == s.execute(STORED_REFRESH, (users,)).fetchall()
        )


def test_the_drains_and_the_worker_run_on_citus(single: str, citus: str) -> None:
    """cf_drain() and serving_drain() claim jobs on the users' shards: two drains in flight at
    once take different jobs, a failed job stays with its error and a backoff, and
    `movrec worker --once` empties both queues with the single node's results."""
    with connect(citus) as c:
        queued = {r[0] for r in c.execute("SELECT user_id FROM model.cf_queue")}
        assert len(queued) >= 20  # the demo load queued every rater
        a, b = psycopg.connect(citus), psycopg.connect(citus)  # each holds its batch uncommitted
        try:
            b.execute("SET statement_timeout = '120s'")
            assert one_value(a, "SELECT movrec.cf_drain(5)") == 5
            assert one_value(b, "SELECT movrec.cf_drain(5)") == 5  # not blocked by a's jobs
            a.commit()
            b.commit()
        finally:
            a.close()
            b.close()
        left = {r[0] for r in c.execute("SELECT user_id FROM model.cf_queue")}
        assert left < queued and len(queued - left) == 10  # ten jobs, none run twice

        # a failing job (a constraint its rows break) keeps its row, the next one goes through
        with connect(single) as s:
            bad, good = [u for u in sorted(left) if s.execute(CF, (u,)).fetchone()][:2]
        for u, at in ((bad, "2000-01-01"), (good, "2000-01-02")):  # the oldest two jobs
            c.execute("UPDATE model.cf_queue SET enqueued_at = %s WHERE user_id = %s", (at, u))
        c.execute(
            "ALTER TABLE model.user_recommendation ADD CONSTRAINT citus_test_fails "
            f"CHECK (user_id <> {bad}) NOT VALID"
        )
        try:
            assert one_value(c, "SELECT movrec.cf_drain(2)") == 2
            job = c.execute(
                "SELECT attempts, last_error, not_before > now() FROM model.cf_queue WHERE user_id = %s",
                (bad,),
            ).fetchone()
            assert job[0] == 1 and "citus_test_fails" in job[1] and job[2], job
            assert not c.execute(
                "SELECT FROM model.cf_queue WHERE user_id = %s", (good,)
            ).fetchone()
            assert c.execute(STORED_CF, ([good],)).fetchall()
        finally:
            c.execute("ALTER TABLE model.user_recommendation DROP CONSTRAINT citus_test_fails")
        c.execute("UPDATE model.cf_queue SET not_before = now()")

        assert one_value(c, "SELECT movrec.serving_drain(5)") == 5
        r = CliRunner().invoke(cli, ["worker", "--once", "--quiet", "--dsn", citus])
        assert r.exit_code == 0, r.output
        assert one_value(c, "SELECT count(*) FROM model.cf_queue") == 0
        assert one_value(c, "SELECT count(*) FROM model.refresh_queue") == 0
        users = all_users(c)
        stored_cf = c.execute(STORED_CF, (users,)).fetchall()
        stored_refresh = c.execute(STORED_REFRESH, (users,)).fetchall()
    with connect(single) as s:
        s.execute("SELECT movrec.user_to_user(u) FROM unnest(%s::int[]) u", (users,))
        s.execute("SELECT movrec.refresh_recommendations(u) FROM unnest(%s::int[]) u", (users,))
        assert stored_cf == s.execute(STORED_CF, (users,)).fetchall()
        assert stored_refresh == s.execute(STORED_REFRESH, (users,)).fetchall()


def test_a_rating_on_a_workers_shard_reaches_the_cf_cache(single: str, citus: str) -> None:
    """A backend's CF cache sees a rating stamped on the worker of the user's shard, with that
    worker's transaction id, even where the coordinator's ids are far ahead of it."""
    user = 9
    with connect(citus) as c:
        ahead = (
            max(
                int(r[0])
                for r in c.execute(
                    "SELECT result FROM run_command_on_workers('SELECT pg_current_xact_id()')"
                )
            )
            - int(one_value(c, "SELECT pg_current_xact_id()"))
            + 100
        )
        if ahead > 0:  # one transaction id each
            c.execute(
                f"DO $$ BEGIN FOR i IN 1..{ahead} LOOP PERFORM pg_current_xact_id(); COMMIT; "
                "END LOOP; END $$"
            )
        with connect(citus) as cached:
            before = cached.execute(CF, (user,)).fetchall()  # loads this backend's cache
            assert before
            movie = before[0][1]
            host, port, _ = shard_node(c, "movrec.watch_events", user)
            assert (host, port) != (c.info.host, c.info.port)  # on a worker
            for dsn in (single, citus):
                with connect(dsn) as conn:
                    conn.execute("SELECT movrec.rate(%s::int, %s::int, 1.0::real)", (user, movie))
            after = cached.execute(CF, (user,)).fetchall()
            assert movie not in [m for _, m, _, _ in after]  # rated now: no longer recommended
            assert one_value(cached, "SELECT (movrec.cf_cache_info() ->> 'loads')::int") == 1
    with connect(single) as s:
        assert after == s.execute(CF, (user,)).fetchall()


def truncated(dsn: str, user: int) -> tuple[object, ...]:
    """The session's CF cache loaded, then in a transaction that is rolled back, TRUNCATE
    watch_events: the statistics, the CF queue and the user's CF list that follow.  (Citus
    refuses a TRUNCATE in parallel after a read of movies, a reference table its foreign key
    names, in one transaction: the cache is loaded in a transaction of its own.)"""
    with psycopg.connect(dsn) as conn:
        assert conn.execute(CF, (user,)).fetchall()
        conn.commit()
        conn.execute("DELETE FROM model.cf_queue")
        conn.execute("TRUNCATE movrec.watch_events")
        state = (
            conn.execute(
                "SELECT user_id, n_ratings, sum_ratings, sum_squares FROM model.user_rating_stats "
                "ORDER BY user_id"
            ).fetchall(),
            all_users(conn),
            [r[0] for r in conn.execute("SELECT user_id FROM model.cf_queue ORDER BY 1")],
            conn.execute(CF, (user,)).fetchall(),
        )
        conn.rollback()
    return state


def test_truncate_zeroes_the_statistics_and_queues_everyone(single: str, citus: str) -> None:
    with connect(citus) as c:
        users = all_users(c)
        stats = table_digest(c, "model.user_rating_stats")
    state = truncated(citus, 3)
    assert state == truncated(single, 3)
    zeroed, left, queue, cf = state
    assert left == [] and cf == []
    assert {r[0] for r in zeroed if r[1:] == (0, 0, 0)} == {r[0] for r in zeroed} >= set(users)
    assert queue == users
    with connect(citus) as c:  # rolled back: nothing changed
        assert table_digest(c, "model.user_rating_stats") == stats
        assert c.execute(CF, (3,)).fetchall()


def test_a_deploy_reaches_every_worker(
    citus_cluster: CitusCluster, single: str, citus: str
) -> None:
    with connect(single) as s:
        second = s.execute("""SELECT movrec.train('mf', '{"epochs": 3, "seed": 11}')""").fetchone()[
            0
        ]
    copied = copy_model(single, citus, second)
    with connect(citus) as c:
        c.execute("SELECT movrec.deploy(%s)", (copied,))
        users = [3, 4, 5]
        expected = answers(c, users)
        assert one_value(c, "SELECT count(*) FROM model.movie_rating_stats") > 0
    for w in citus_cluster.workers:
        with connect(w.dsn("t_citus")) as conn:
            assert one_value(conn, "SELECT model_id FROM model.champion") == copied
            assert answers(conn, users) == expected
    with connect(single) as s:
        assert answers(s, users) == expected


def test_a_worker_restart_loses_nothing(citus_cluster: CitusCluster, citus: str) -> None:
    tables = [*DISTRIBUTED, "model.movie_latent_attributes", "model.registry"]
    with connect(citus) as c:
        before = {t: table_digest(c, t) for t in tables}
    worker = citus_cluster.workers[0]
    worker.stop()
    worker.start()
    with connect(citus) as c:
        assert {t: table_digest(c, t) for t in tables} == before
        c.execute("SELECT movrec.rate(11, 2, 3.5)")
        assert (
            one_value(
                c, "SELECT rating FROM movrec.watch_events WHERE user_id = 11 AND movie_id = 2"
            )
            == 3.5
        )


def test_doctor_checks_every_node(citus_cluster: CitusCluster, citus: str) -> None:
    with connect(citus) as c:
        rows = {
            r[0]: (r[1], r[2])
            for r in c.execute("SELECT check_name, ok, detail FROM movrec.doctor()")
        }
    workers = {k: v for k, v in rows.items() if k.startswith("citus worker")}
    assert len(workers) == 2, rows
    assert all(ok for ok, _ in workers.values()), workers


def test_distribute_needs_citus(installed: str) -> None:
    with (
        connect(installed) as conn,
        pytest.raises(errors.ObjectNotInPrerequisiteState, match="no Citus"),
    ):
        conn.execute("SELECT movrec.distribute()")
