"""`movrec worker`: the daemon that drains the CF queue (LISTEN movrec_cf, SELECT movrec.cf_drain)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
import psycopg

from movrec_cli.connection import connect, one
from movrec_cli.errors import CliError
from movrec_cli.options import dsn_option
from movrec_cli.output import note


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


@click.command()
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
    """Recompute queued users' CF recommendations (LISTEN movrec_cf; SELECT movrec.cf_drain).

    Several workers can run at once: each job is claimed with FOR UPDATE SKIP
    LOCKED and deleted in the transaction that writes its result, so a job runs
    once, and a worker that dies (or Ctrl-C, or a server restart) leaves its
    batch queued.  A lost connection is retried, except with --once.
    """
    if batch < 1:
        raise CliError("--batch must be at least 1")
    progress = _Progress(quiet)
    failures = 0
    with _stop_on_sigterm():
        try:
            while True:
                try:
                    _work(dsn, batch, once, poll, progress)
                    break  # --once finished
                except (psycopg.OperationalError, CliError) as e:
                    if once:
                        raise CliError(f"worker: {str(e).strip()}") from None
                    failures += 1
                    wait = min(30.0, 2.0**failures)
                    note(f"worker: {str(e).strip()}; reconnecting in {wait:.0f} s")
                    time.sleep(wait)
        except KeyboardInterrupt:
            note("worker: stopped; a batch in flight was rolled back and stays queued")
    progress.summary()


class _Progress:
    """Counts jobs; prints at most one line a second."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.total = 0
        self.unreported = 0
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


def _work(dsn: str | None, batch: int, once: bool, poll: float, progress: _Progress) -> None:
    """One connection's life: LISTEN, then drain whenever there may be work."""
    with connect(dsn) as conn:
        conn.execute("LISTEN movrec_cf")
        if not progress.quiet:
            pid = conn.info.backend_pid
            note(f"worker: listening on movrec_cf (backend pid {pid})")
        while True:
            n = one(conn.execute("SELECT movrec.cf_drain(%s)", (batch,)))[0]
            progress.add(n)
            if n >= batch:
                continue  # more may be due
            progress.flush()
            if once:
                return
            # notifications that came during cf_drain are kept by psycopg and yielded first
            for _ in conn.notifies(timeout=poll, stop_after=1):
                pass


COMMANDS = [worker]
