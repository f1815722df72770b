"""User-to-user Pearson CF: the database against the plain-Python reference, the
statistics the triggers keep, the backend cache, and the queue's exactly-once draining.

Data (one database for the module): generated users with planted tastes on movies
1..300, and a hand-made fixture on movies 1001..1060 (identical users, ties, a
constant rater, users sharing 13 and 14 movies, a user who shares nothing).  The
two never share a movie, so neither changes the other's neighbours.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner
from movrec import cf, shared
from movrec.cf import cache as cf_cache
from movrec_cli import cf_naive, schema
from movrec_cli.bench_cf import bench_cf
from movrec_cli.cluster import Cluster, bindir
from movrec_cli.commands.worker import worker

from tests.conftest import alive, connect, keepers, stop_keepers

GENERATED_USERS = range(1, 161)
FIXTURE_MOVIES = range(1001, 1061)
TOL = 1e-6

RECS = "SELECT movie_id, score, neighbours FROM movrec.user_to_user(%s, store => %s)"
STORED = (
    "SELECT rank, movie_id, score FROM model.user_recommendation WHERE user_id = %s ORDER BY rank"
)
STATS_MISMATCHES = """
SELECT count(*) FROM (
    SELECT user_id, count(*)::integer AS n, sum(rating::float8) AS s, sum(rating::float8 ^ 2) AS ss
    FROM movrec.watch_events GROUP BY user_id) f
FULL JOIN (SELECT user_id, n_ratings AS n, sum_ratings AS s, sum_squares AS ss
           FROM model.user_rating_stats WHERE n_ratings <> 0) st USING (user_id)
WHERE (f.n, f.s, f.ss) IS DISTINCT FROM (st.n, st.s, st.ss)
"""


def generated_ratings(seed: int = 6) -> list[tuple[int, int, float]]:
    """Users in four taste groups over 300 movies, popular movies rated more (planted overlap)."""
    rng = np.random.default_rng(seed)
    taste = rng.normal(size=(4, 300))
    popularity = 1.0 / np.arange(1, 301) ** 0.7
    popularity /= popularity.sum()
    rows = []
    for u in GENERATED_USERS:
        group = u % 4
        movies = rng.choice(300, size=int(rng.integers(15, 140)), replace=False, p=popularity)
        raw = 3.0 + 1.1 * taste[group, movies] + rng.normal(scale=0.6, size=len(movies))
        ratings = np.clip(np.round(raw * 2) / 2, 0.5, 5.0)
        rows += [(u, int(m) + 1, float(r)) for m, r in zip(movies, ratings, strict=True)]
    return rows


def fixture_ratings() -> list[tuple[int, int, float]]:
    base = [1001 + i for i in range(20)]
    values = [1.0, 2.5, 4.0, 5.0, 3.0, 0.5, 4.5, 2.0, 3.5, 1.5] * 2
    rows = []
    # 9001 and 9002 rate the same 20 movies identically (correlation exactly 1); 9002 and
    # 9003 also rate 1021..1024 with one value each: equal scores, ranked by movie_id
    for u in (9001, 9002, 9003):
        rows += [(u, m, v) for m, v in zip(base, values, strict=True)]
    rows += [(u, m, 4.0) for u in (9002, 9003) for m in (1024, 1021, 1023, 1022)]
    rows += [(9003, 1025, 5.0)]
    rows += [(9010, m, 4.0) for m in base + [1026, 1027]]  # constant rater: zero variance
    rows += [(9030, m, v) for m, v in zip(base[:13], values[:13], strict=True)]  # 13 shared
    rows += [(9030, 1030, 5.0)]
    rows += [(9031, m, v) for m, v in zip(base[:14], values[:14], strict=True)]  # 14 shared
    rows += [(9031, 1031, 5.0)]
    rows += [(9020, m, 3.0 + (m % 3) / 2) for m in range(1040, 1060)]  # shares nothing
    return rows


@pytest.fixture(scope="module")
def db(new_database: Callable[[str], str]) -> str:
    dsn = new_database("t_test_cf")
    with connect(dsn) as conn:
        schema.install(conn)
        conn.execute(
            """INSERT INTO movrec.movies (movie_id, title)
               SELECT i, 'movie ' || i FROM generate_series(1, 300) i
               UNION ALL SELECT i, 'fixture ' || i FROM generate_series(1001, 1099) i"""
        )
        with conn.cursor().copy(
            "COPY movrec.watch_events (user_id, movie_id, rating) FROM STDIN"
        ) as cp:
            for row in generated_ratings() + fixture_ratings():
                cp.write_row(row)
    return dsn


def ratings_of(conn: psycopg.Connection) -> dict[int, dict[int, float]]:
    out: dict[int, dict[int, float]] = {}
    for u, m, r in conn.execute("SELECT user_id, movie_id, rating FROM movrec.watch_events"):
        out.setdefault(u, {})[m] = float(r)
    return out


def assert_same(got: list[tuple[int, float, int]], want: list[tuple[int, float, int]]) -> None:
    assert [m for m, _, _ in got] == [m for m, _, _ in want]
    assert [n for _, _, n in got] == [n for _, _, n in want]
    assert np.allclose([s for _, s, _ in got], [s for _, s, _ in want], atol=TOL, rtol=0)


def recs(conn: psycopg.Connection, user: int, store: bool = False) -> list[tuple[int, float, int]]:
    return conn.execute(RECS, (user, store)).fetchall()


def other_users(conn: psycopg.Connection, users: list[int]) -> None:
    """Nothing queued but `users` (the loads and earlier tests queue everyone)."""
    conn.execute("DELETE FROM model.cf_queue")
    conn.execute("INSERT INTO model.cf_queue (user_id) SELECT unnest(%s::int[])", (users,))


# --- the computation ---------------------------------------------------------------


def test_generated_data_matches_the_reference(db: str) -> None:
    with connect(db) as conn:
        ratings = ratings_of(conn)
        with_neighbours = 0
        for user in GENERATED_USERS:
            got, want = recs(conn, user), cf_naive.recommend(ratings, user)
            assert_same(got, want)
            with_neighbours += bool(want)
        assert with_neighbours > 100  # the planted tastes give most users neighbours
        assert max(len(cf_naive.recommend(ratings, u)) for u in GENERATED_USERS) == 150
        options = [
            {"shrinkage": 25.0},
            {"baseline": True},
            {"damping": 1.5, "min_raters": 2},
            {"min_corr": -1.0, "min_overlap": 5},
        ]
        for opt in options:
            for user in list(GENERATED_USERS)[::8]:
                args = ", ".join(f"{k} => %({k})s" for k in opt)
                got = conn.execute(
                    f"SELECT movie_id, score, neighbours FROM movrec.user_to_user(%(u)s, {args}, store => false)",
                    {"u": user, **opt},
                ).fetchall()
                assert_same(got, cf_naive.recommend(ratings, user, cf_naive.Options(**opt)))


def test_fixture_ties_constant_raters_and_no_overlap(db: str) -> None:
    with connect(db) as conn:
        ratings = ratings_of(conn)
        for user in (9001, 9002, 9003, 9010, 9020, 9030, 9031):
            assert_same(recs(conn, user), cf_naive.recommend(ratings, user))
        nbrs = cf_naive.neighbours(ratings, 9001, cf_naive.Options())
        assert set(nbrs) == {9002, 9003, 9031}  # not 9010 (constant), 9030 (13 shared), 9020
        assert nbrs[9002][0] == 1.0
        top = recs(conn, 9001)
        # 1021..1024 tie (4.0 from both 9002 and 9003): together, by movie_id, one score
        order = [m for m, _, _ in top]
        at = order.index(1021)
        assert order[at : at + 4] == [1021, 1022, 1023, 1024]
        assert len({s for _, s, _ in top[at : at + 4]}) == 1
        assert {1025, 1031} <= set(order[:at])  # rated 5 by one neighbour each: higher
        assert recs(conn, 9010) == []  # constant rater: no correlation is defined
        assert recs(conn, 9020) == []  # no overlap with anyone
        assert recs(conn, 424242) == []  # unknown user


def test_arguments_are_checked(db: str) -> None:
    with connect(db) as conn:
        for call, state in [
            ("user_to_user(NULL)", "22004"),
            ("user_to_user(1, min_corr => 2)", "22023"),
            ("user_to_user(1, min_overlap => 1)", "22023"),
            ("user_to_user(1, shrinkage => -1)", "22023"),
            ("cf_drain(0)", "22023"),
        ]:
            with pytest.raises(psycopg.Error) as err:
                conn.execute(f"SELECT * FROM movrec.{call}")
            assert err.value.sqlstate == state, call


def test_top_150_replaced_atomically(db: str) -> None:
    with connect(db) as a, connect(db) as b:
        ratings = ratings_of(a)
        ratings_user = next(
            u for u in GENERATED_USERS if len(cf_naive.recommend(ratings, u)) == 150
        )
        a.execute("SELECT count(*) FROM movrec.user_to_user(%s)", (ratings_user,))
        before = b.execute(STORED, (ratings_user,)).fetchall()
        assert [r[0] for r in before] == list(range(1, 151))
        with a.transaction():
            n = a.execute(
                "SELECT count(*) FROM movrec.user_to_user(%s, min_corr => 0.9)", (ratings_user,)
            ).fetchone()[0]
            assert 0 < n < 150
            assert b.execute(STORED, (ratings_user,)).fetchall() == before  # old rows until commit
        after = b.execute(STORED, (ratings_user,)).fetchall()
        assert [r[0] for r in after] == list(range(1, n + 1))  # nothing left of the 150


# --- statistics, trigger, cache ---------------------------------------------------------


def test_trigger_keeps_statistics_and_enqueues_once(db: str) -> None:
    with connect(db) as conn, connect(db) as listener:
        listener.execute("LISTEN movrec_cf")
        conn.execute("DELETE FROM model.cf_queue")
        user = 5001
        for m in (1, 2, 3):
            conn.execute(
                "INSERT INTO movrec.watch_events (user_id, movie_id, rating) VALUES (%s, %s, 4)",
                (user, m),
            )
        first = conn.execute(
            "SELECT enqueued_at FROM model.cf_queue WHERE user_id = %s", (user,)
        ).fetchone()
        conn.execute(
            "INSERT INTO movrec.watch_events (user_id, movie_id, rating) VALUES (%s, 4, 1), (%s, 5, 2.5), (5002, 4, 5)",
            (user, user),
        )
        queued = conn.execute(
            "SELECT user_id, enqueued_at FROM model.cf_queue ORDER BY 1"
        ).fetchall()
        assert queued == [(user, first[0]), (5002, queued[1][1])]  # one row each, the first kept
        assert list(listener.notifies(timeout=1, stop_after=1))
        stats = "SELECT n_ratings, sum_ratings, sum_squares, mean_rating, n_changes FROM model.user_rating_stats WHERE user_id = %s"
        assert conn.execute(stats, (user,)).fetchone() == (5, 15.5, 3 * 16 + 1 + 6.25, 3.1, 4)
        # same-value re-rating (movrec.rate sets rated_at): no change, no job (CF or refresh)
        conn.execute("DELETE FROM model.cf_queue; DELETE FROM model.refresh_queue")
        conn.execute("SELECT movrec.rate(%s, 1, 4)", (user,))
        assert conn.execute(stats, (user,)).fetchone()[4] == 4
        assert conn.execute("SELECT count(*) FROM model.cf_queue").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM model.refresh_queue").fetchone()[0] == 0
        # updates (a rating, a user id), deletes, a multi-row update
        conn.execute(
            "UPDATE movrec.watch_events SET rating = 2 WHERE user_id = %s AND movie_id = 1", (user,)
        )
        conn.execute(
            "UPDATE movrec.watch_events SET user_id = 5003 WHERE user_id = %s AND movie_id = 2",
            (user,),
        )
        conn.execute("DELETE FROM movrec.watch_events WHERE user_id = 5002")
        conn.execute(
            "UPDATE movrec.watch_events SET rating = 6 - rating WHERE user_id = %s", (user,)
        )
        assert conn.execute(STATS_MISMATCHES).fetchone()[0] == 0
        assert conn.execute(stats, (5002,)).fetchone()[:4] == (0, 0, 0, None)  # row kept, zeroed
        assert {r[0] for r in conn.execute("SELECT user_id FROM model.cf_queue")} == {
            user,
            5002,
            5003,
        }
        # a row that drifted (a load that bypassed the triggers) is found and repaired
        conn.execute("UPDATE model.user_rating_stats SET sum_ratings = 0 WHERE user_id = 9001")
        conn.execute("DELETE FROM model.user_rating_stats WHERE user_id = 9002")
        assert conn.execute("SELECT movrec.cf_rebuild_stats()").fetchone()[0] == 2
        assert conn.execute(STATS_MISMATCHES).fetchone()[0] == 0
        assert (
            conn.execute(
                "SELECT count(*) FROM model.cf_queue WHERE user_id IN (9001, 9002)"
            ).fetchone()[0]
            == 2
        )
        conn.execute("DELETE FROM movrec.watch_events WHERE user_id BETWEEN 5001 AND 5003")


def test_cache_is_refreshed_incrementally(db: str) -> None:
    target = 9001
    for path in cf_files_of(db):  # no shared copy to map: w loads from the database
        if path.suffix == ".current":
            path.unlink()
    with connect(db) as w, connect(db) as other:
        assert_same(recs(w, target), cf_naive.recommend(ratings_of(w), target))
        # a new neighbour (copy of 9001 plus a new movie), a new movie, a re-rating, a deletion
        other.execute(
            """INSERT INTO movrec.watch_events (user_id, movie_id, rating)
               SELECT 9050, movie_id, rating FROM movrec.watch_events WHERE user_id = 9001
               UNION ALL SELECT 9050, 1099, 5"""
        )
        other.execute(
            "UPDATE movrec.watch_events SET rating = 0.5 WHERE user_id = 9003 AND movie_id = 1025"
        )
        other.execute("DELETE FROM movrec.watch_events WHERE user_id = 9031 AND movie_id = 1031")
        got = recs(w, target)
        assert_same(got, cf_naive.recommend(ratings_of(w), target))
        assert 1099 in [m for m, _, _ in got]
        info = w.execute("SELECT movrec.cf_cache_info()").fetchone()[0]
        assert info["loads"] == 1 and info["overlay_users"] == 3  # overlaid, not reloaded
        # the calling transaction's own ratings count, and are forgotten on rollback
        with w.transaction(force_rollback=True):
            w.execute(
                "INSERT INTO movrec.watch_events (user_id, movie_id, rating) VALUES (9002, 1098, 5)"
            )
            inside = recs(w, target)
            assert 1098 in [m for m, _, _ in inside]
            assert_same(inside, cf_naive.recommend(ratings_of(w), target))
        assert_same(recs(w, target), cf_naive.recommend(ratings_of(w), target))
        other.execute("DELETE FROM movrec.watch_events WHERE user_id = 9050")
        other.execute(
            "UPDATE movrec.watch_events SET rating = 5 WHERE user_id = 9003 AND movie_id = 1025"
        )
        other.execute(
            "INSERT INTO movrec.watch_events (user_id, movie_id, rating) VALUES (9031, 1031, 5)"
        )
        assert_same(recs(w, target), cf_naive.recommend(ratings_of(w), target))


def test_overlay_and_compaction_match_a_fresh_index() -> None:
    rows = generated_ratings(seed=11)
    users, movies, ratings = (np.array(c) for c in zip(*rows, strict=True))
    ix = cf.RatingsIndex.from_arrays(users, movies, ratings)
    table: dict[int, dict[int, float]] = {}
    for u, m, r in rows:
        table.setdefault(u, {})[m] = r
    rng = np.random.default_rng(3)
    for step in range(4):
        changed = [int(u) for u in rng.choice(160, size=12, replace=False) + 1] + [700 + step]
        for u in changed:
            picked = (
                rng.choice(310, size=int(rng.integers(0, 60)), replace=False) + 1
            )  # 301..310: new
            table[u] = {int(m): float(rng.integers(1, 11)) / 2 for m in picked}
        flat = [(u, m, r) for u in changed for m, r in table[u].items()]
        cu, cm, cr = (np.array(c) for c in zip(*flat, strict=True))
        ix.replace_users(changed, cu, cm, cf.to_halves(cr))
        table = {u: r for u, r in table.items() if r}
        if step == 2:
            ix.compact()
            assert not ix.overrides
        for user in [*list(GENERATED_USERS)[::5], 700 + step]:
            assert_same(cf.recommend(ix, user), cf_naive.recommend(table, user))


# --- the queue ------------------------------------------------------------------------


@pytest.fixture
def log(db: str) -> Iterator[Callable[[], list[tuple[int, int]]]]:
    """Every write of a user's recommendations: (user, transaction)."""
    with connect(db) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS public.cf_log (user_id integer, xid xid8)")
        conn.execute("TRUNCATE public.cf_log")
        conn.execute(
            """CREATE OR REPLACE FUNCTION public.cf_log() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN INSERT INTO public.cf_log VALUES (NEW.user_id, pg_current_xact_id()); RETURN NULL; END $$"""
        )
        conn.execute(
            """CREATE OR REPLACE TRIGGER cf_log AFTER INSERT ON model.user_recommendation
               FOR EACH ROW WHEN (NEW.rank = 1) EXECUTE FUNCTION public.cf_log()"""
        )
        yield lambda: conn.execute(
            "SELECT user_id, xid::text::bigint FROM public.cf_log ORDER BY 1"
        ).fetchall()
        conn.execute("DROP TRIGGER cf_log ON model.user_recommendation")


def users_with_recs(conn: psycopg.Connection, n: int) -> list[int]:
    ratings = ratings_of(conn)
    return [u for u in GENERATED_USERS if cf_naive.recommend(ratings, u)][:n]


@pytest.fixture(scope="module")
def some_users(db: str) -> list[int]:
    """Ten generated users who get recommendations."""
    with connect(db) as conn:
        return users_with_recs(conn, 10)


def test_two_workers_skip_each_others_jobs(db: str, log: Callable[[], list]) -> None:
    with connect(db) as a, connect(db) as b:
        users = users_with_recs(a, 40)
        other_users(a, users)
        b.execute("SET statement_timeout = '10s'")  # waiting on a's jobs would fail the test
        with a.transaction():
            assert a.execute("SELECT movrec.cf_drain(5)").fetchone()[0] == 5
            assert b.execute("SELECT movrec.cf_drain(1000)").fetchone()[0] == len(users) - 5
        assert a.execute("SELECT count(*) FROM model.cf_queue").fetchone()[0] == 0
        written = log()
        assert sorted(u for u, _ in written) == sorted(users)  # each user once
        assert len({x for _, x in written}) == 2  # in two transactions


def test_parallel_workers_run_each_job_once(db: str, log: Callable[[], list]) -> None:
    with connect(db) as conn:
        users = users_with_recs(conn, 80)
        other_users(conn, users)
    counts: list[int] = []

    def work() -> None:
        with connect(db) as c:
            n = 0
            while (k := c.execute("SELECT movrec.cf_drain(1)").fetchone()[0]) > 0:
                n += k
            counts.append(n)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(counts) == len(users)
    assert sorted(u for u, _ in log()) == sorted(users)


def test_rating_during_a_job_is_not_lost(db: str, some_users: list[int]) -> None:
    user = some_users[0]
    with connect(db) as a, connect(db) as b:
        # 1. the rating is in flight when the job finishes: the job stays, for the next call
        other_users(a, [user])
        with b.transaction():
            b.execute(
                "INSERT INTO movrec.watch_events (user_id, movie_id, rating) VALUES (%s, 1050, 5)",
                (user,),
            )
            assert a.execute("SELECT movrec.cf_drain(10)").fetchone()[0] == 1  # once, not ten times
            assert a.execute("SELECT user_id FROM model.cf_queue").fetchall() == [(user,)]
        assert a.execute("SELECT movrec.cf_drain(10)").fetchone()[0] == 1
        assert a.execute("SELECT count(*) FROM model.cf_queue").fetchone()[0] == 0
        # 2. the rating comes after the check, before the worker commits: it waits for the
        # worker, then queues a fresh job
        done = threading.Event()
        with a.transaction():
            other_users(a, [user])
            assert a.execute("SELECT movrec.cf_drain(1)").fetchone()[0] == 1

            def rate() -> None:
                with connect(db) as c:
                    c.execute(
                        "UPDATE movrec.watch_events SET rating = 1 WHERE user_id = %s AND movie_id = 1050",
                        (user,),
                    )
                done.set()

            t = threading.Thread(target=rate)
            t.start()
            assert not done.wait(0.5)  # blocked on the statistics row the worker holds
        t.join(10)
        assert done.is_set()
        assert a.execute("SELECT user_id FROM model.cf_queue").fetchall() == [(user,)]
        a.execute("SELECT movrec.cf_drain(10)")
        stored = [m for _, m, _ in a.execute(STORED, (user,)).fetchall()]
        assert stored == [m for m, _, _ in cf_naive.recommend(ratings_of(a), user)]
        a.execute("DELETE FROM movrec.watch_events WHERE user_id = %s AND movie_id = 1050", (user,))


def test_failing_job_is_retried_and_keeps_its_error(db: str, some_users: list[int]) -> None:
    bad, good = some_users[1:3]
    with connect(db) as conn:
        other_users(conn, [bad, good])
        conn.execute(
            f"ALTER TABLE model.user_recommendation ADD CONSTRAINT cf_test_fails CHECK (user_id <> {bad}) NOT VALID"
        )
        try:
            assert conn.execute("SELECT movrec.cf_drain(10)").fetchone()[0] == 2
            job = "SELECT user_id, attempts, last_error, not_before > now() FROM model.cf_queue"
            (row,) = conn.execute(job).fetchall()
            assert row[0] == bad and row[1] == 1 and "cf_test_fails" in row[2] and row[3]
            assert conn.execute(STORED, (good,)).fetchall()  # the other job went through
            assert conn.execute("SELECT movrec.cf_drain(10)").fetchone()[0] == 0  # backing off
            conn.execute("UPDATE model.cf_queue SET not_before = now()")
            assert conn.execute("SELECT movrec.cf_drain(10)").fetchone()[0] == 1
            assert conn.execute(job).fetchone()[1] == 2
        finally:
            conn.execute("ALTER TABLE model.user_recommendation DROP CONSTRAINT cf_test_fails")
        conn.execute("UPDATE model.cf_queue SET not_before = now()")
        assert conn.execute("SELECT movrec.cf_drain(10)").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM model.cf_queue").fetchone()[0] == 0
        assert conn.execute(STORED, (bad,)).fetchall()


def test_crash_and_restart_lose_no_job(db: str, cluster: Cluster, some_users: list[int]) -> None:
    users = some_users[3:9]
    with connect(db) as conn:
        other_users(conn, users)
        before = conn.execute(STORED, (users[0],)).fetchall()
    # a worker killed in the middle of its batch: nothing of it stays, its jobs stay
    victim = connect(db)
    try:
        victim.execute("BEGIN")
        assert victim.execute("SELECT movrec.cf_drain(3)").fetchone()[0] == 3
        with connect(db) as killer:
            killer.execute("SELECT pg_terminate_backend(%s)", (victim.info.backend_pid,))
    finally:
        victim.close()
    with connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM model.cf_queue").fetchone()[0] == 6
        assert conn.execute(STORED, (users[0],)).fetchall() == before
    # the server goes down (immediate: no shutdown checkpoint) with a batch in flight
    inflight = connect(db)
    try:
        inflight.execute("BEGIN")
        inflight.execute("SELECT movrec.cf_drain(2)")
        kept = keepers(cf_files(inflight))
        assert kept, "no keeper holds the shared index"
        r = cluster._run(
            str(bindir() / "pg_ctl"), "-D", str(cluster.data), "-l", str(cluster.logfile),
            "-m", "immediate", "-w", "restart", capture=True,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 5  # keepers end with the server that started them
        while any(alive(p) for p in kept) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(p) for p in kept), "a keeper outlived the server"
    finally:
        inflight.close()
    with connect(db) as conn:
        assert sorted(r[0] for r in conn.execute("SELECT user_id FROM model.cf_queue")) == sorted(
            users
        )
        result = CliRunner().invoke(worker, ["--dsn", db, "--once", "--batch", "4"])
        assert result.exit_code == 0, result.output
        assert conn.execute("SELECT count(*) FROM model.cf_queue").fetchone()[0] == 0


def test_ctrl_c_rolls_the_worker_batch_back(db: str, some_users: list[int]) -> None:
    user = some_users[0]
    with connect(db) as conn, connect(db) as blocker:
        other_users(conn, [user])
        # hold the user's recommendation lock, so the worker is caught in the middle of the job
        blocker.execute(
            "SELECT pg_advisory_lock(hashtext('movrec.user_recommendation'), %s)", (user,)
        )
        code = "import sys; from movrec_cli.commands.worker import worker; worker(sys.argv[1:])"
        # A suite started in the background by a non-interactive shell inherits SIGINT ignored,
        # and so would the worker: give it Ctrl-C's default, as a terminal would.
        proc = subprocess.Popen(
            [sys.executable, "-c", code, "--dsn", db],
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        waiting = """SELECT count(*) FROM pg_stat_activity
                     WHERE wait_event_type = 'Lock' AND query LIKE '%%cf_drain%%'"""
        deadline = time.monotonic() + 20
        while conn.execute(waiting).fetchone()[0] == 0:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "stopped" in err
        # not a failure of the job: untouched, still queued
        assert conn.execute("SELECT user_id, attempts FROM model.cf_queue").fetchall() == [
            (user, 0)
        ]


def test_schedule_needs_pg_cron_here(db: str) -> None:
    with connect(db) as conn:  # the test databases are not cron.database_name
        for call in ("movrec.cf_schedule()", "* FROM movrec.schedule()"):
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
                conn.execute(f"SELECT {call}")
            assert "pg_cron is not available" in str(e.value)
            assert "shared_preload_libraries" in (e.value.diag.message_hint or "")
            assert "cron.database_name" in (e.value.diag.message_hint or "")
        assert conn.execute("SELECT movrec.cf_unschedule()").fetchone()[0] is False
        assert conn.execute("SELECT movrec.unschedule()").fetchone()[0] == 0


def test_bench_runs_and_agrees(db: str) -> None:
    lines: list[str] = []
    with connect(db) as conn:
        rows = bench_cf(conn, None, users=5, naive_users=2, echo=lines.append)
    assert [r[3] for r in rows] == [5, 1, 2]
    assert "same movies in the same order" in lines[-1]


# --- the index shared across backends ------------------------------------------------------

SHARED_USERS = (9001, 9002, 9031, 7, 42, 131)


def cf_files(conn: psycopg.Connection) -> list[Path]:
    """This database's shared CF files (copies, holders, the pointer), none of others'."""
    group = conn.execute(cf_cache.GROUP_SQL).fetchone()[0]
    return sorted(Path("/dev/shm").glob(f"movrec-*/movrec-{group}[-.]*"))


def info(conn: psycopg.Connection) -> dict:
    return conn.execute("SELECT movrec.cf_cache_info()").fetchone()[0]


def all_recs(conn: psycopg.Connection) -> dict[int, list[tuple[int, float, int]]]:
    return {u: recs(conn, u) for u in SHARED_USERS}


def alone(dsn: str) -> None:
    """Wait until no other backend is connected to the database (nobody holds a memfd)."""
    with connect(dsn) as c:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
            c.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            ).fetchone()[0]
            > 1
        ):
            time.sleep(0.05)


def test_a_new_backend_maps_the_shared_index_and_agrees(db: str) -> None:
    with connect(db) as first:
        want = all_recs(first)
        assert info(first)["shared"], "the first backend shared no copy"
        for u in SHARED_USERS:
            assert_same(want[u], cf_naive.recommend(ratings_of(first), u))
        with connect(db) as second, connect(db) as writer:
            got = all_recs(second)
            i = info(second)
            assert i["attached"] == 1 and i["shared"], i
            assert got == want  # the very same numbers as the backend that loaded them
            # a change after the copy was made: the mapped copy is refreshed like a private one
            writer.execute(
                "UPDATE movrec.watch_events SET rating = 0.5 WHERE user_id = 9002 AND movie_id = 1001"
            )
            with connect(db) as third:
                for conn in (first, second, third):
                    now = all_recs(conn)
                    for u in SHARED_USERS:
                        assert_same(now[u], cf_naive.recommend(ratings_of(conn), u))
                assert info(third)["attached"] == 1
            writer.execute(
                "UPDATE movrec.watch_events SET rating = 1.0 WHERE user_id = 9002 AND movie_id = 1001"
            )


def truncate(path: Path) -> None:
    os.chmod(path, 0o600)
    with open(path, "r+b") as f:
        f.truncate(max(0, path.stat().st_size // 2))


def overwrite(path: Path) -> None:
    """The same size, other bytes, in place (a stray writer, a bad disk): every rating of the
    copy becomes 5 stars, so only the checksum can tell (the structure still fits)."""
    data = bytearray(path.read_bytes())
    found = shared._header(data, path.name[len(shared.PREFIX) : -len(".bin")])
    assert found is not None
    header, base = found
    for part, _, _, offset, nbytes in header["parts"]:
        if part in ("u_half", "m_half"):
            data[base + offset : base + offset + nbytes] = b"\x0a" * nbytes
    os.chmod(path, 0o600)
    with open(path, "r+b") as f:
        f.write(data)


def replace_pointer(path: Path) -> None:
    """The pointer replaced by one naming something that is no copy of this database."""
    path.unlink()
    path.write_bytes(b"../../etc/passwd")


@pytest.mark.parametrize(
    ("damage", "suffix"), [(truncate, ".bin"), (overwrite, ".bin"), (replace_pointer, ".current")]
)
def test_a_damaged_shared_index_is_detected_and_rebuilt(
    db: str, damage: Callable[[Path], None], suffix: str
) -> None:
    alone(db)
    with connect(db) as c:
        want = all_recs(c)  # whoever made it, a verified copy now exists
        ratings = ratings_of(c)
        holder = connect(db)
    try:
        assert all_recs(holder) == want
        files = [p for p in cf_files(holder) if p.suffix == suffix]
        assert files, "nothing shared: the test tests nothing"
        for path in files:
            damage(path)
        if suffix == ".bin":  # a live holder's sealed memfd cannot have changed: still right
            with connect(db) as fresh:
                assert all_recs(fresh) == want
                assert info(fresh)["attached"] == 1
    finally:
        holder.close()
    alone(db)  # nobody left to copy from: the damaged files must not be trusted
    stop_keepers(cf_files_of(db))
    for path in [p for p in cf_files_of(db) if p.suffix == suffix]:
        damage(path)
    with connect(db) as fresh:
        got = all_recs(fresh)
        i = info(fresh)
        assert i["attached"] == 0 and i["loads"] == 1, i  # loaded from the database
        assert i["shared"], "the rebuilt copy was not shared again"
    assert got == want
    for u in SHARED_USERS:
        assert_same(got[u], cf_naive.recommend(ratings, u))
    with connect(db) as after:  # and the next backend maps the rebuilt copy
        assert all_recs(after) == want
        assert info(after)["attached"] == 1


def test_a_keeper_holds_the_shared_index_once_every_backend_has_gone(db: str) -> None:
    alone(db)
    with connect(db) as c:
        want = all_recs(c)  # loads and shares a copy, or maps the one there is
    alone(db)
    files = cf_files_of(db)
    kept = keepers(files)
    assert kept, f"no keeper holds the shared index: {files}"
    for path in files:  # the durable copy damaged: only the keeper's memfd is still whole
        if path.suffix == ".bin":
            truncate(path)
    with connect(db) as fresh:
        assert all_recs(fresh) == want
        i = info(fresh)
        assert i["attached"] == 1 and i["loads"] == 1 and i["shared"], i
    for path in cf_files_of(db):  # the copy removed (replaced by a newer one): the keeper ends
        if path.suffix == ".bin":
            path.unlink()
    deadline = time.monotonic() + 5
    while any(alive(p) for p in kept) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in kept), "a keeper outlived the copy it keeps"


def cf_files_of(dsn: str) -> list[Path]:
    with connect(dsn) as c:
        return cf_files(c)


def test_shared_index_arrays_round_trip() -> None:
    """from_base_arrays(base_arrays()) is the same index: same answers to the last bit."""
    rows = generated_ratings(seed=3)
    users, movies, ratings = (np.array(x) for x in zip(*rows, strict=True))
    ix = cf.RatingsIndex.from_arrays(users, movies, ratings)
    copy = cf.RatingsIndex.from_base_arrays(ix.base_arrays())
    for u in (1, 2, 50, 160):
        for opt in (cf.Options(), cf.Options(baseline=True, shrinkage=10.0)):
            assert cf.recommend(copy, u, opt) == cf.recommend(ix, u, opt)
    broken = dict(ix.base_arrays(), u_ptr=ix.u_ptr[:-1])
    with pytest.raises(ValueError):
        cf.RatingsIndex.from_base_arrays(broken)
