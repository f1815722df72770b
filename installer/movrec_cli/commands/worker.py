"""`movrec worker`: the daemon that drains every movrec queue: model.cf_queue (LISTEN movrec_cf,
SELECT movrec.cf_drain) and model.refresh_queue (SELECT movrec.serving_drain), pruning the jobs of
users that are gone (movrec.prune_queues)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
import psycopg
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_never,
    wait_exponential,
)

from movrec_cli import inprocess, schema
from movrec_cli.connection import connect, one
from movrec_cli.errors import CliError
from movrec_cli.options import EPILOG, dsn_option
from movrec_cli.output import note, table


@contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM stops the worker like Ctrl-C (psycopg cancels the statement in flight)."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@click.command(epilog=EPILOG)
@dsn_option
@click.option("--batch", default=10, show_default=True, help="jobs per transaction (cf_drain)")
@click.option("--once", is_flag=True, help="drain the jobs that are due, then exit")
@click.option(
    "--poll",
    default=10.0,
    show_default=True,
    help="seconds to wait for a NOTIFY before looking anyway (failed jobs come due without one)",
)
@click.option("--quiet", is_flag=True, help="only errors")
def worker(dsn: str | None, batch: int, once: bool, poll: float, quiet: bool) -> None:
    """Drain every queue: CF recommendations and stored top lists of users who rated.

    \b
    Queues and the function that drains each (what `movrec schedule` runs with pg_cron):
      model.cf_queue       SELECT movrec.cf_drain(BATCH)        woken by NOTIFY movrec_cf
      model.refresh_queue  SELECT movrec.serving_drain(BATCH)   looked at every POLL seconds
    Jobs of users without any rating left are pruned (movrec.prune_queues) at start and
    every minute.  The refresh queue is drained only while a model is deployed.

    Several workers can run at once: each job is claimed with FOR UPDATE SKIP
    LOCKED and deleted in the transaction that writes its result, so a job runs
    once, and a worker that dies (or Ctrl-C, or a server restart) leaves its
    batch queued.  A lost connection is retried, except with --once.
    """
    if batch < 1:
        raise CliError("--batch must be at least 1")
    progress = _Progress(quiet)
    # A lost connection (server restart, network) is retried with a growing wait, 2 s doubling
    # to 30 s, forever: a daemon outlives its server's restarts.  --once gives up at once.
    retrying = Retrying(
        retry=retry_if_exception_type((psycopg.OperationalError, CliError)),
        wait=wait_exponential(multiplier=2, max=30),
        stop=stop_after_attempt(1) if once else stop_never,
        before_sleep=lambda state: note(
            f"worker: {_reason(state)}; reconnecting in {state.next_action.sleep:.0f} s"  # type: ignore[union-attr]
        ),
        reraise=True,
    )
    with _stop_on_sigterm():
        try:
            try:
                for attempt in retrying:
                    with attempt:
                        _work(dsn, batch, once, poll, progress)
            except (psycopg.OperationalError, CliError) as e:
                raise CliError(f"worker: {str(e).strip()}") from None
        except KeyboardInterrupt:
            note(
                "worker: stopped; the batch in flight was rolled back and stays queued"
                if progress.in_flight
                else "worker: stopped (idle: nothing was in flight)"
            )
    progress.summary()


def _reason(state: RetryCallState) -> str:
    error = state.outcome.exception() if state.outcome else None
    return str(error).strip()


class _Progress:
    """Counts jobs; prints at most one line a second."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.total = 0
        self.unreported = 0
        self.in_flight = False  # a drain statement is running (Ctrl-C rolls its batch back)
        self.started = self.reported = time.perf_counter()

    def add(self, n: int) -> None:
        self.total += n
        self.unreported += n
        if self.unreported and not self.quiet and time.perf_counter() - self.reported >= 1.0:
            self.flush()

    def flush(self) -> None:
        if self.unreported and not self.quiet:
            note(f"worker: {self.unreported} jobs ({self.total} so far)")
        self.unreported, self.reported = 0, time.perf_counter()

    def summary(self) -> None:
        self.flush()
        if not self.quiet:
            elapsed = time.perf_counter() - self.started
            note(f"worker: {self.total} jobs in {elapsed:.1f} s")


PRUNE_EVERY_S = 60.0


def _drain(conn: psycopg.Connection, statement: str, batch: int, progress: _Progress) -> int:
    progress.in_flight = True
    try:
        return int(one(conn.execute(statement, (batch,)))[0])
    finally:
        progress.in_flight = False


def _work(dsn: str | None, batch: int, once: bool, poll: float, progress: _Progress) -> None:
    """One connection's life: LISTEN, then drain every queue whenever there may be work."""
    with connect(dsn) as conn:
        conn.execute("LISTEN movrec_cf")
        portable = schema.install_kind(conn) == "portable"
        if not progress.quiet:
            pid = conn.info.backend_pid
            note(f"worker: draining model.cf_queue and model.refresh_queue (backend pid {pid})")
        pruned_at = -PRUNE_EVERY_S
        while True:
            if time.monotonic() - pruned_at >= PRUNE_EVERY_S:
                pruned = one(conn.execute("SELECT movrec.prune_queues()"))[0]
                if pruned and not progress.quiet:
                    note(f"worker: pruned {pruned} jobs of users without ratings")
                pruned_at = time.monotonic()
            if portable:  # no PL/Python there: the CF jobs run in this process
                n_cf = inprocess.cf_drain(conn, batch)
            else:
                n_cf = _drain(conn, "SELECT movrec.cf_drain(%s)", batch, progress)
            n_refresh = 0
            if one(conn.execute("SELECT count(*) FROM model.champion"))[0]:
                n_refresh = _drain(conn, "SELECT movrec.serving_drain(%s)", batch, progress)
            progress.add(n_cf + n_refresh)
            if max(n_cf, n_refresh) >= batch:
                continue  # more may be due
            progress.flush()
            if once:
                return
            # notifications that came during cf_drain are kept by psycopg and yielded first
            for _ in conn.notifies(timeout=poll, stop_after=1):
                pass


@click.command(epilog=EPILOG)
@dsn_option
@click.option("--every", "schedule", default="* * * * *", show_default=True, help="cron schedule")
@click.option("--max-jobs", default=100, show_default=True, help="jobs per run and queue")
@click.option("--remove", is_flag=True, help="remove every movrec pg_cron job instead")
def schedule(dsn: str | None, schedule: str, max_jobs: int, remove: bool) -> None:
    """Register pg_cron jobs for every queue (SELECT movrec.schedule()): what `movrec worker`
    does, run by the server.

    \b
    Jobs (scheduling again replaces them):
      movrec-cf-drain       SELECT movrec.cf_drain(MAX_JOBS)        at EVERY
      movrec-serving-drain  SELECT movrec.serving_drain(MAX_JOBS)   at EVERY
      movrec-prune-queues   SELECT movrec.prune_queues()            hourly
      movrec-retrain        SELECT * FROM movrec.retrain_and_promote()  nightly, 03:00
    The retrain deploys its model only when it beats the champion on the
    current data's validation split (`movrec retrain` runs it now).
    pg_cron must be in shared_preload_libraries, with cron.database_name this
    database (README: Jobs and monitoring); elsewhere it is an error saying so.
    `movrec status` shows each job's last successful run.
    """
    with connect(dsn) as conn:
        if remove:
            n = one(conn.execute("SELECT movrec.unschedule()"))[0]
            click.echo(f"{n} pg_cron job(s) removed")
            return
        rows = conn.execute(
            "SELECT job_name, job_id, command FROM movrec.schedule(%s, %s)", (schedule, max_jobs)
        ).fetchall()
    click.echo(table(rows, ["job", "pg_cron id", "command"]))


COMMANDS = [worker, schedule]
