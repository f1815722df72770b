"""Cancel and terminate reach long PL/Python jobs: a job ends within seconds, nothing changed.

Python work in a backend runs without PostgreSQL's interrupt checks; the jobs call
movrec.backend.check_interrupts() every batch.  These tests start a job that would run for
hours, interrupt it from another session and check that it ends well within 5 s (a generous
bound: bench/interrupts.py measures the latency) and that nothing it would write changed.
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

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
    dsn: str, sql: str, started: str, how: str, settle: float = 0.0
) -> tuple[float, BaseException | None]:
    """Run ``sql`` in a new session; ``settle`` seconds after a NOTICE containing ``started``
    arrived, call ``how`` (pg_cancel_backend or pg_terminate_backend) on it from another
    session.
    Returns (seconds from the interrupt to the statement's end, what the statement raised)."""
    victim = connect(dsn)
    seen = threading.Event()
    victim.add_notice_handler(
        lambda d: seen.set() if started in (d.message_primary or "") else None
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
