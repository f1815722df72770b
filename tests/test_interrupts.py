"""Cancel and terminate reach long PL/Python jobs: a job ends within seconds, nothing changed.

Python work in a backend runs without PostgreSQL's interrupt checks; the jobs call
movrec.backend.check_interrupts() every batch.  These tests start a job that would run for
hours, interrupt it from another session and check that it ends well within 5 s (a generous
bound: bench/interrupts.py measures the latency) and that nothing it would write changed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import psycopg
import pytest
from movrec_cli import schema
from movrec_cli.generate import Plan, load

from tests.conftest import connect, table_digest

# What a training run with deploy writes; a cancelled or terminated run writes none of it.
WRITTEN = (
    "model.registry",
    "model.deployments",
    "model.user_latent_attributes",
    "model.movie_latent_attributes",
    "model.model_recommendation",
)

# An MF run of 100,000 epochs without early stopping, one rating a step: days on the demo
# data, and each epoch long enough (tens of seconds) that the per-epoch NOTICE, a plpy call
# that would also let an interrupt in, does not come in time.
ENDLESS_TRAIN = (
    """SELECT movrec.train('mf', '{"epochs": 100000, "patience": 100000, "batch_size": 1}')"""
)
# Its first NOTICE comes once the ratings are read; the epochs start a moment later.
TRAIN_STARTED = "ratings,"
BOUND_S = 5.0


def digests(conn: psycopg.Connection) -> dict[str, tuple[int, str]]:
    return {t: table_digest(conn, t) for t in WRITTEN}


def interrupted(
    dsn: str,
    sql: str,
    started: str | Callable[[psycopg.Connection, int], bool],
    how: str,
    settle: float = 0.0,
) -> tuple[float, BaseException | None]:
    """Run ``sql`` in a new session; ``settle`` seconds after it started, call ``how``
    (pg_cancel_backend or pg_terminate_backend) on it from another session.  It has started
    when a NOTICE containing ``started`` arrived or, for a callable, once
    ``started(other session, its pid)`` holds (polled).
    Returns (seconds from the interrupt to the statement's end, what the statement raised)."""
    victim = connect(dsn)
    seen = threading.Event()
    if isinstance(started, str):
        text = started
        victim.add_notice_handler(
            lambda d: seen.set() if text in (d.message_primary or "") else None
        )
    pid = victim.info.backend_pid
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            victim.execute(sql)
        except BaseException as e:  # what the interrupt raised, checked by the caller
            outcome["error"] = e
        outcome["ended"] = time.monotonic()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    try:
        if callable(started):
            with connect(dsn) as watcher:
                deadline = time.monotonic() + 180
                while worker.is_alive() and not started(watcher, pid):
                    assert time.monotonic() < deadline, "the job never started"
                    time.sleep(0.05)
        else:
            assert seen.wait(180), f"the job never reached {started!r}"
        time.sleep(settle)
        assert worker.is_alive(), f"the job ended before it was interrupted: {outcome}"
        with connect(dsn) as killer:
            sent = time.monotonic()
            assert killer.execute(f"SELECT {how}(%s)", (pid,)).fetchone()[0]
        worker.join(60)
        assert not worker.is_alive(), f"{how} did not end the job within 60 s"
        with connect(dsn) as check:  # the backend is gone or idle, not still running the job
            deadline = time.monotonic() + 10
            while check.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND state = 'active'", (pid,)
            ).fetchone()[0]:
                assert time.monotonic() < deadline, "the backend is still running the job"
                time.sleep(0.05)
    finally:
        victim.close()
    error = outcome.get("error")
    return float(outcome["ended"]) - sent, error if isinstance(error, BaseException) else None  # type: ignore[arg-type]


@pytest.mark.parametrize("how", ["pg_cancel_backend", "pg_terminate_backend"])
def test_training_ends_within_seconds_of_an_interrupt(trained: str, how: str) -> None:
    with connect(trained) as conn:
        before = digests(conn)
    latency, error = interrupted(trained, ENDLESS_TRAIN, TRAIN_STARTED, how, settle=3.0)
    print(f"\n{how} mid-train: the job ended {latency:.3f} s later")
    assert latency < BOUND_S
    if how == "pg_cancel_backend":
        assert isinstance(error, psycopg.errors.QueryCanceled), error
    else:
        assert isinstance(error, psycopg.OperationalError), error
    with connect(trained) as conn:
        assert digests(conn) == before
        assert conn.execute("SELECT movrec.recommend(1, 3)").fetchall()  # still serving


def python_loop(check: bool) -> str:
    """A DO block that spins in Python for 60 s, calling check_interrupts() or not."""
    call = "backend.check_interrupts()" if check else "pass"
    return (
        "DO $$\n"
        "GD.get('movrec') or plpy.execute('SELECT movrec._activate()')\n"
        "import time\n"
        "from movrec import backend\n"
        "end = time.monotonic() + 60\n"
        "plpy.notice('spinning')\n"
        "while time.monotonic() < end:\n"
        f"    {call}\n"
        "$$ LANGUAGE plpython3u"
    )


def test_check_interrupts_lets_a_cancel_into_pure_python(trained: str) -> None:
    latency, error = interrupted(trained, python_loop(True), "spinning", "pg_cancel_backend")
    assert isinstance(error, psycopg.errors.QueryCanceled), error
    assert latency < BOUND_S


def test_without_the_check_a_cancel_waits_for_the_python_loop(trained: str) -> None:
    """The reason for check_interrupts(): the same loop without it ignores the cancel."""
    sql = python_loop(False).replace("+ 60", "+ 8")
    latency, _error = interrupted(trained, sql, "spinning", "pg_cancel_backend")
    assert latency > BOUND_S


# --- mid-ETL -----------------------------------------------------------------------------

# What CALL movrec.etl() writes: the catalogue, the ratings, their archives, the id maps,
# the run's report rows and the per-user statistics its statements update.
ETL_WRITES = (
    "movrec.movies",
    "movrec.watch_events",
    "movrec.watch_events_archive",
    "movrec.movies_archive",
    "movrec.movie_ids",
    "movrec.user_ids",
    "movrec.etl_runs",
    "model.user_rating_stats",
    "model.cf_queue",
)


def test_terminating_a_publish_midway_changes_nothing(
    new_database: Callable[[str], str],
) -> None:
    """A backend terminated inside CALL movrec.etl(), while its publish is writing (it has
    archived the leaving movie's ratings and waits for a movie row another session holds),
    leaves every table as it was: the whole ETL is one transaction."""
    from tests.test_pipeline import fresh, load_all

    conn = fresh(new_database, "t_interrupts_etl")
    load_all(conn)
    etl = "CALL movrec.etl(NULL, 2, 3, 5)"
    conn.execute(etl)
    conn.execute("SELECT movrec.rate(1, 2, 4)")  # a live rating the rerun keeps
    # the rerun's files lose one movie: the publish archives it and its ratings
    leaving, ml_id, staying = conn.execute(
        """SELECT m.movie_id, m.ml_movie_id, (SELECT min(movie_id) FROM movrec.movies)
           FROM movrec.movies m ORDER BY (SELECT count(*) FROM movrec.watch_events w
                                          WHERE w.movie_id = m.movie_id), m.movie_id DESC LIMIT 1"""
    ).fetchone()
    assert leaving != staying
    conn.execute("DELETE FROM staging.ml_movies WHERE movie_id = %s", (ml_id,))
    before = {t: table_digest(conn, t) for t in ETL_WRITES}

    def publishing(watcher: psycopg.Connection, pid: int) -> bool:
        """The victim is in the publish: it wrote the archive and waits for a row lock."""
        return bool(
            watcher.execute(
                """SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock')
                      AND EXISTS (SELECT FROM pg_locks WHERE pid = %s AND granted
                                  AND relation = 'movrec.watch_events_archive'::regclass
                                  AND mode = 'RowExclusiveLock')""",
                (pid, pid),
            ).fetchone()[0]
        )

    # a staying movie's row, held in another session: the publish's upsert waits for it
    with connect(conn.info.dsn) as blocker, blocker.transaction():
        blocker.execute("SELECT FROM movrec.movies WHERE movie_id = %s FOR UPDATE", (staying,))
        latency, error = interrupted(conn.info.dsn, etl, publishing, "pg_terminate_backend")
    print(f"\npg_terminate_backend mid-publish: the call ended {latency:.3f} s later")
    assert isinstance(error, psycopg.OperationalError), error
    assert latency < BOUND_S
    assert {t: table_digest(conn, t) for t in ETL_WRITES} == before
    # and the next run publishes as if nothing had happened
    conn.execute(etl)
    assert (
        conn.execute(
            "SELECT count(*) FROM movrec.movies WHERE movie_id = %s", (leaving,)
        ).fetchone()[0]
        == 0
    )


# --- long jobs: deploy, tokenize, CF drain, batch refresh --------------------------------

# A synthetic catalogue (movrec_cli.generate: binary COPY, seconds of numpy) big enough that
# each job below runs for well over 30 s uninterrupted; README "What happens when things
# fail" gives the measured durations.  One module-scoped database serves every job: each is
# interrupted before it commits, so none changes what the next one starts from.
BIG = Plan(n_users=40_000, n_movies=60_000, n_ratings=800_000, seed=3)
QUICK_MF = '{"epochs": 1, "batch_size": 65536, "lr": 0.01}'
BATCH = 4096  # users a drain or batch refresh takes at most (movrec.jobs.MAX_JOBS)
OVERVIEW_WORDS = 100  # words of synthetic overview per movie, for the tokenizer


# Building that database takes minutes (the first deploy publishes 60,000 movie vectors into
# an HNSW index: 28 minutes on a 2-core machine at load average 10), so these tests run when
# asked: MOVREC_LONG_TESTS=1.
LONG_TESTS = os.environ.get("MOVREC_LONG_TESTS") == "1"


@pytest.fixture(scope="module")
def big(new_database: Callable[[str], str]) -> dict[str, object]:
    dsn = new_database("t_interrupts_big")
    with connect(dsn) as conn:
        schema.install(conn)
        load(conn, BIG, lambda _message: None)
        # overviews of OVERVIEW_WORDS words from a 5,000-word vocabulary, different per movie
        conn.execute(
            """UPDATE movrec.movies m SET overview = (
                   SELECT string_agg('w' || ((m.movie_id * 7919 + i * 104729) %% 5000), ' ')
                   FROM generate_series(1, %s) AS i)""",
            (OVERVIEW_WORDS,),
        )
        champion = conn.execute("SELECT movrec.train('mf', %s)", (QUICK_MF,)).fetchone()[0]
        conn.execute("SELECT count(*) FROM movrec.tokenize()")  # the vocabulary a rerun replaces
        users = [
            u
            for (u,) in conn.execute(
                "SELECT user_id FROM model.user_rating_stats ORDER BY user_id LIMIT %s", (BATCH,)
            )
        ]
        for queue in ("model.cf_queue", "model.refresh_queue"):
            conn.execute(
                f"INSERT INTO {queue} (user_id) SELECT unnest(%s::int[]) ON CONFLICT DO NOTHING",
                (users,),
            )
    return {"dsn": dsn, "champion": champion, "users": users}


# job: (its statement, the tables it writes: none may change when it is terminated)
LONG_JOBS = {
    "deploy": (
        "SELECT movrec.deploy(%(champion)s)",
        (
            "model.deployments",
            "model.user_latent_attributes",
            "model.movie_latent_attributes",
            "model.registry",
        ),
    ),
    "tokenize": ("SELECT count(*) FROM movrec.tokenize()", ("movrec.vocab", "movrec.movie_tokens")),
    "cf_drain": (
        f"SELECT movrec.cf_drain({BATCH})",
        ("model.cf_queue", "model.user_recommendation"),
    ),
    "refresh_batch": (
        "SELECT movrec.refresh_recommendations_batch(%(users)s)",
        ("model.model_recommendation", "model.refresh_queue"),
    ),
    "serving_drain": (
        f"SELECT movrec.serving_drain({BATCH})",
        ("model.model_recommendation", "model.refresh_queue"),
    ),
}


def running_for(seconds: float) -> Callable[[psycopg.Connection, int], bool]:
    """A start test for interrupted(): the backend has run its statement for ``seconds``."""

    def started(watcher: psycopg.Connection, pid: int) -> bool:
        return bool(
            watcher.execute(
                """SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = %s AND state = 'active'
                                  AND clock_timestamp() - query_start > make_interval(secs => %s))""",
                (pid, seconds),
            ).fetchone()[0]
        )

    return started


@pytest.mark.skipif(not LONG_TESTS, reason="builds a large database: set MOVREC_LONG_TESTS=1")
@pytest.mark.parametrize("job", sorted(LONG_JOBS))
def test_long_jobs_end_within_seconds_of_a_terminate(big: dict[str, object], job: str) -> None:
    sql, tables = LONG_JOBS[job]
    dsn = str(big["dsn"])
    with connect(dsn) as conn:
        text = psycopg.ClientCursor(conn).mogrify(sql, big)
        before = {t: table_digest(conn, t) for t in tables}
    latency, error = interrupted(dsn, text, running_for(3.0), "pg_terminate_backend")
    print(f"\npg_terminate_backend mid-{job}: the job ended {latency:.3f} s later")
    assert isinstance(error, psycopg.OperationalError), error
    assert latency < BOUND_S
    with connect(dsn) as conn:
        assert {t: table_digest(conn, t) for t in tables} == before
