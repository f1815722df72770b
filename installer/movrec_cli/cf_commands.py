"""User-to-user CF from the command line: `movrec cf ...`, `movrec worker`, `movrec bench cf`.

To register (main.py)::

    from movrec_cli.cf_commands import bench_cf_command, cf, worker
    cli.add_command(cf)
    cli.add_command(worker)
    bench.add_command(bench_cf_command, "cf")   # or call bench_cf(conn, data_dir) yourself
"""

from __future__ import annotations

import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import numpy as np
import psycopg

from movrec_cli import cf_naive
from movrec_cli.connection import connect
from movrec_cli.errors import CliError

# The same option as main.dsn_option (main imports this module, so it cannot be imported here).
dsn_option = click.option(
    "--dsn",
    envvar="MOVREC_DSN",
    metavar="DSN",
    help="libpq connection string [env MOVREC_DSN; default: the embedded cluster]",
)

USER_TO_USER_SQL = """SELECT count(*) FROM movrec.user_to_user(
    %(user)s, min_corr => %(min_corr)s, min_overlap => %(min_overlap)s, min_raters => %(min_raters)s,
    shrinkage => %(shrinkage)s, damping => %(damping)s, baseline => %(baseline)s, store => %(store)s)"""


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    from movrec_cli.main import table  # main imports this module: import at call time

    return table(rows, headers)


def _percentiles(ms: Sequence[float]) -> tuple[float, float, float]:
    a = np.asarray(ms, dtype=np.float64)
    return float(np.percentile(a, 50)), float(np.percentile(a, 99)), float(a.mean())


def _options(
    min_corr: float,
    min_overlap: int,
    min_raters: int,
    shrinkage: float,
    damping: float,
    baseline: bool,
) -> dict[str, Any]:
    return {
        "min_corr": min_corr,
        "min_overlap": min_overlap,
        "min_raters": min_raters,
        "shrinkage": shrinkage,
        "damping": damping,
        "baseline": baseline,
    }


def cf_options(fn: Any) -> Any:
    """The options of movrec.user_to_user(), with its defaults."""
    for opt in reversed(
        [
            click.option(
                "--min-corr",
                default=0.65,
                show_default=True,
                help="neighbour: correlation at least",
            ),
            click.option(
                "--min-overlap",
                default=14,
                show_default=True,
                help="neighbour: co-rated movies at least",
            ),
            click.option(
                "--min-raters",
                default=1,
                show_default=True,
                help="candidate: rated by neighbours at least",
            ),
            click.option(
                "--shrinkage",
                default=0.0,
                show_default=True,
                help="weight corr * n / (n + SHRINKAGE)",
            ),
            click.option(
                "--damping",
                default=0.0,
                show_default=True,
                help="divide by sum |weight| + DAMPING",
            ),
            click.option(
                "--baseline",
                is_flag=True,
                help="centre on baseline estimates instead of user means",
            ),
        ]
    ):
        fn = opt(fn)
    return fn


# --- movrec cf ---------------------------------------------------------------------


@click.group()
def cf() -> None:
    """User-to-user Pearson collaborative filtering (movrec.user_to_user).

    \b
    A rating enqueues its user in model.cf_queue; `movrec worker` (or pg_cron,
    `movrec cf schedule`) recomputes the user's top 150 into model.user_recommendation.
    """


@cf.command("refresh")
@dsn_option
@click.option("--user", "user_ids", type=int, multiple=True, help="this user (repeatable)")
@click.option(
    "--all", "all_users", is_flag=True, help="every user with ratings or stored recommendations"
)
@cf_options
def cf_refresh(dsn: str | None, user_ids: tuple[int, ...], all_users: bool, **options: Any) -> None:
    """Recompute users' recommendations now (each user in its own transaction).

    Queued jobs stay queued: the worker recomputes those users again, harmlessly.
    """
    if bool(user_ids) == all_users:
        raise CliError("say which users: --user N (repeatable) or --all")
    opts = _options(**options)
    with connect(dsn) as conn:
        if all_users:
            users = [
                r[0]
                for r in conn.execute(
                    """SELECT user_id FROM model.user_rating_stats WHERE n_ratings > 0
                       UNION SELECT user_id FROM model.user_recommendation ORDER BY 1"""
                )
            ]
        else:
            users = list(user_ids)
        timings, with_recs, rows = [], 0, 0
        started = time.perf_counter()
        with click.progressbar(users, label="cf refresh", file=sys.stderr, show_pos=True) as bar:
            for user in bar:
                t = time.perf_counter()
                n = conn.execute(
                    USER_TO_USER_SQL, {"user": user, "store": True, **opts}
                ).fetchone()[0]
                timings.append((time.perf_counter() - t) * 1000)
                with_recs += n > 0
                rows += n
        if len(users) == 1:
            top = conn.execute(
                """SELECT r.rank, r.movie_id, m.title, r.score FROM model.user_recommendation r
                   JOIN movrec.movies m USING (movie_id) WHERE r.user_id = %s ORDER BY r.rank LIMIT 10""",
                (users[0],),
            ).fetchall()
            click.echo(_table(top, ["rank", "movie_id", "title", "score"]))
    p50, p99, _ = _percentiles(timings) if timings else (0.0, 0.0, 0.0)
    click.echo(
        f"{len(users)} users in {time.perf_counter() - started:.1f} s ({p50:.1f} ms p50, {p99:.1f} ms p99); "
        f"{with_recs} with recommendations, {rows} rows in model.user_recommendation"
    )


@cf.command("status")
@dsn_option
def cf_status(dsn: str | None) -> None:
    """The queue, failing jobs, and the statistics table."""
    with connect(dsn) as conn:
        q = conn.execute(
            """SELECT count(*), count(*) FILTER (WHERE not_before <= now()),
                      count(*) FILTER (WHERE attempts > 0), min(enqueued_at)
               FROM model.cf_queue"""
        ).fetchone()
        s = conn.execute(
            """SELECT count(*) FILTER (WHERE n_ratings > 0), coalesce(sum(n_ratings), 0),
                      (SELECT count(DISTINCT user_id) FROM model.user_recommendation)
               FROM model.user_rating_stats"""
        ).fetchone()
        click.echo(
            f"queue: {q[0]} jobs, {q[1]} due, {q[2]} failed at least once; oldest {q[3] or '-'}"
        )
        click.echo(
            f"statistics: {s[0]} users with {s[1]} ratings; {s[2]} users have recommendations"
        )
        failing = conn.execute(
            """SELECT user_id, attempts, not_before, last_error FROM model.cf_queue
               WHERE attempts > 0 ORDER BY attempts DESC, user_id LIMIT 10"""
        ).fetchall()
        if failing:
            click.echo(_table(failing, ["user", "attempts", "retry at", "last error"]))


@cf.command("schedule")
@dsn_option
@click.option("--every", "schedule", default="* * * * *", show_default=True, help="cron schedule")
@click.option("--max-jobs", default=100, show_default=True, help="jobs per run")
@click.option("--remove", is_flag=True, help="remove the pg_cron job instead")
def cf_schedule(dsn: str | None, schedule: str, max_jobs: int, remove: bool) -> None:
    """Drain the queue from pg_cron (movrec.cf_schedule), where pg_cron is available."""
    with connect(dsn) as conn:
        if remove:
            gone = conn.execute("SELECT movrec.cf_unschedule()").fetchone()[0]
            click.echo(
                "pg_cron job movrec-cf-drain removed" if gone else "there was no pg_cron job"
            )
            return
        job = conn.execute("SELECT movrec.cf_schedule(%s, %s)", (schedule, max_jobs)).fetchone()[0]
    if job is None:
        raise CliError("pg_cron is not available in this database: run `movrec worker` instead")
    click.echo(
        f"pg_cron job {job} (movrec-cf-drain): SELECT movrec.cf_drain({max_jobs}) at '{schedule}'"
    )


@cf.command("quality")
@click.argument("data_dir", metavar="DIR", type=click.Path(path_type=Path, exists=True))
@click.option("--seed", default=42, show_default=True)
def cf_quality(data_dir: Path, seed: int) -> None:
    """Coverage and RMSE on a seeded 90/10 split of DIR/ratings.csv (numpy, outside the database)."""
    rows = quality_cf(data_dir / "ratings.csv", seed=seed)
    click.echo(
        _table(
            rows,
            [
                "variant",
                "coverage",
                "covered rows",
                "RMSE covered",
                "RMSE clipped",
                "baseline RMSE same rows",
            ],
        )
    )


# --- movrec worker -------------------------------------------------------------------


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
                    click.echo(f"worker: {str(e).strip()}; reconnecting in {wait:.0f} s", err=True)
                    time.sleep(wait)
        except KeyboardInterrupt:
            click.echo(
                "worker: stopped; a batch in flight was rolled back and stays queued", err=True
            )
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
            click.echo(f"worker: {self.unreported} jobs ({self.total} so far)", err=True)
        self.unreported, self.reported = 0, time.perf_counter()

    def summary(self) -> None:
        self.flush()
        if not self.quiet:
            elapsed = time.perf_counter() - self.started
            click.echo(f"worker: {self.total} jobs in {elapsed:.1f} s", err=True)


def _work(dsn: str | None, batch: int, once: bool, poll: float, progress: _Progress) -> None:
    """One connection's life: LISTEN, then drain whenever there may be work."""
    with connect(dsn) as conn:
        conn.execute("LISTEN movrec_cf")
        if not progress.quiet:
            pid = conn.info.backend_pid
            click.echo(f"worker: listening on movrec_cf (backend pid {pid})", err=True)
        while True:
            n = conn.execute("SELECT movrec.cf_drain(%s)", (batch,)).fetchone()[0]
            progress.add(n)
            if n >= batch:
                continue  # more may be due
            progress.flush()
            if once:
                return
            # notifications that came during cf_drain are kept by psycopg and yielded first
            for _ in conn.notifies(timeout=poll, stop_after=1):
                pass


# --- movrec bench cf ------------------------------------------------------------------


def _time_database(
    conn: psycopg.Connection, users: Sequence[int]
) -> tuple[float, list[float], dict]:
    """First call (may load the backend's cache), then one timed call per user, rolled back."""
    results: dict[int, list[tuple[int, float, int]]] = {}
    sql = "SELECT movie_id, score, neighbours FROM movrec.user_to_user(%s)"
    t = time.perf_counter()
    with conn.transaction(force_rollback=True):
        conn.execute(sql, (users[0],)).fetchall()
    first = (time.perf_counter() - t) * 1000
    timings = []
    for user in users:
        t = time.perf_counter()
        with conn.transaction(force_rollback=True):  # the write is timed, and not kept
            results[user] = conn.execute(sql, (user,)).fetchall()
        timings.append((time.perf_counter() - t) * 1000)
    return first, timings, results


def _time_naive(path: Path, users: Sequence[int]) -> tuple[list[float], dict]:
    timings, results = [], {}
    for user in users:
        t = time.perf_counter()
        results[user] = cf_naive.naive_user_to_user(path, user)
        timings.append((time.perf_counter() - t) * 1000)
    return timings, results


def _export_ratings(conn: psycopg.Connection, path: Path) -> int:
    """watch_events as a MovieLens ratings.csv (the naive version's input); returns its rows."""
    with (
        open(path, "wb") as f,
        conn.cursor().copy(
            "COPY (SELECT user_id, movie_id, rating, extract(epoch FROM rated_at)::bigint FROM movrec.watch_events) "
            "TO STDOUT WITH (FORMAT csv, HEADER true)"
        ) as copy,
    ):
        for block in copy:
            f.write(block)
    with open(path, "rb") as f:
        return sum(1 for _ in f) - 1


def bench_cf(
    conn: psycopg.Connection,
    data_dir: Path | None,
    users: int = 50,
    naive_users: int = 10,
    seed: int = 0,
    echo: Any = click.echo,
) -> list[tuple[Any, ...]]:
    """Per-user latency of movrec.user_to_user() against the naive scan-the-file version.

    Rows: (version, data, ratings, users timed, p50 ms, p99 ms, mean ms).  The naive
    version runs on DATA_DIR/ratings.csv (the raw file, its users mapped through
    movrec.user_ids) when given, and always on an export of watch_events, which is
    the database's own data: there it must also return the same recommendations,
    and the largest score difference is printed.  Works on any loaded database.
    """
    n_ratings = conn.execute("SELECT count(*) FROM movrec.watch_events").fetchone()[0]
    all_users = [
        r[0]
        for r in conn.execute(
            "SELECT user_id FROM model.user_rating_stats WHERE n_ratings > 0 ORDER BY 1"
        )
    ]
    if not all_users:
        raise CliError(
            "no ratings in this database: load and publish some first (movrec load, movrec etl)"
        )
    rng = np.random.default_rng(seed)
    sample = [int(u) for u in rng.choice(all_users, size=min(users, len(all_users)), replace=False)]
    naive_sample = sample[: max(1, min(naive_users, len(sample)))]

    first, db_ms, db_results = _time_database(conn, sample)
    rows: list[tuple[Any, ...]] = [
        (
            "database: movrec.user_to_user()",
            "watch_events",
            n_ratings,
            len(sample),
            *_percentiles(db_ms),
        ),
        ("database: first call (cache load)", "watch_events", n_ratings, 1, first, first, first),
    ]
    with tempfile.TemporaryDirectory(prefix="movrec-bench-cf-") as tmp:
        export = Path(tmp) / "ratings.csv"
        exported = _export_ratings(conn, export)
        naive_ms, naive_results = _time_naive(export, naive_sample)
        rows.append(
            (
                "naive: read file + compute",
                "same ratings (export)",
                exported,
                len(naive_sample),
                *_percentiles(naive_ms),
            )
        )
    worst, same = 0.0, True
    for user in naive_sample:
        a, b = db_results[user], naive_results[user]
        same &= [m for m, _, _ in a] == [m for m, _, _ in b]
        worst = max([worst, *(abs(x[1] - y[1]) for x, y in zip(a, b, strict=False))])
    if data_dir is not None:
        # the MovieLens folder itself, or a data folder holding ml-latest-small/
        raw = next(
            (
                p
                for p in (data_dir / "ratings.csv", data_dir / "ml-latest-small" / "ratings.csv")
                if p.is_file()
            ),
            None,
        )
        if raw is None:
            raise CliError(f"no ratings.csv in {data_dir} (nor in {data_dir / 'ml-latest-small'})")
        has_map = conn.execute("SELECT to_regclass('movrec.user_ids') IS NOT NULL").fetchone()[0]
        mapping = (
            dict(
                conn.execute(
                    "SELECT user_id, ml_user_id FROM movrec.user_ids WHERE user_id = ANY(%s)",
                    (naive_sample,),
                ).fetchall()
            )
            if has_map
            else {}
        )
        raw_users = [mapping.get(u, u) for u in naive_sample]
        with open(raw, "rb") as f:
            raw_n = sum(1 for _ in f) - 1
        raw_ms, _ = _time_naive(raw, raw_users)
        rows.append(
            ("naive: read file + compute", f"{raw}", raw_n, len(raw_users), *_percentiles(raw_ms))
        )
    echo(_table(rows, ["version", "data", "ratings", "users", "p50 ms", "p99 ms", "mean ms"]))
    echo(
        f"database vs naive on the same ratings: {'same movies in the same order' if same else 'RESULTS DIFFER'}, "
        f"largest score difference {worst:.2e}; speed-up at p50: {rows[2][4] / rows[0][4]:.0f}x"
        + (f" (vs the raw file: {rows[3][4] / rows[0][4]:.0f}x)" if data_dir is not None else "")
    )
    return rows


@click.command("cf")
@dsn_option
@click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    help="MovieLens directory whose ratings.csv the naive version reads (default: only an export of watch_events)",
)
@click.option("--users", default=50, show_default=True, help="users timed in the database")
@click.option(
    "--naive-users", default=10, show_default=True, help="users timed in the naive version"
)
@click.option("--seed", default=0, show_default=True)
def bench_cf_command(
    dsn: str | None, data_dir: Path | None, users: int, naive_users: int, seed: int
) -> None:
    """Per-user latency p50/p99: movrec.user_to_user() vs the naive scan-the-file version."""
    with connect(dsn) as conn:
        bench_cf(conn, data_dir, users, naive_users, seed)


# --- quality ------------------------------------------------------------------------------

QUALITY_VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("defaults (corr >= 0.65, overlap >= 14)", {}),
    ("shrinkage 25", {"shrinkage": 25.0}),
    ("shrinkage 100", {"shrinkage": 100.0}),
    ("baseline-centred", {"baseline": True}),
    ("baseline-centred + shrinkage 25", {"baseline": True, "shrinkage": 25.0}),
    ("damping 2", {"damping": 2.0}),
    ("baseline-centred + damping 2", {"baseline": True, "damping": 2.0}),
    (
        "baseline-centred + shrinkage 25 + damping 1",
        {"baseline": True, "shrinkage": 25.0, "damping": 1.0},
    ),
    ("corr >= 0.3, overlap >= 5", {"min_corr": 0.3, "min_overlap": 5}),
    (
        "corr >= 0.3, overlap >= 5, baseline + shrinkage 25 + damping 1",
        {"min_corr": 0.3, "min_overlap": 5, "baseline": True, "shrinkage": 25.0, "damping": 1.0},
    ),
]


def split_ratings(ratings_csv: Path, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """The issue's split: default_rng(seed).permutation of the rows, first 90% train.

    Returns (train, test) as float64 arrays of (user, movie, rating) rows in file order
    of the permutation.
    """
    import pandas as pd

    df = pd.read_csv(ratings_csv, usecols=["userId", "movieId", "rating"])
    data = df[["userId", "movieId", "rating"]].to_numpy(dtype=np.float64)
    perm = np.random.default_rng(seed).permutation(len(data))
    n_train = int(0.9 * len(data))
    return data[perm[:n_train]], data[perm[n_train:]]


def quality_cf(
    ratings_csv: Path,
    variants: Sequence[tuple[str, dict[str, Any]]] = QUALITY_VARIANTS,
    seed: int = 42,
) -> list[tuple[Any, ...]]:
    """Coverage (test rows with a prediction) and RMSE on covered rows, per variant.

    Uses movrec.cf's functions on a RatingsIndex of the training rows, so the
    numbers are those of the database version.  The last column is the RMSE, on
    the same covered rows, of the baseline alone (mu + b_u + b_m): what the
    neighbours add.
    """
    from movrec import cf

    train, test = split_ratings(ratings_csv, seed)
    ix = cf.RatingsIndex.from_arrays(
        train[:, 0].astype(np.int64), train[:, 1].astype(np.int64), train[:, 2]
    )
    mu, b_user, b_movie = ix.baselines()
    t_user, t_movie, t_rating = test[:, 0].astype(np.int64), test[:, 1].astype(np.int64), test[:, 2]
    movie_idx = ix.movie_indices(t_movie)
    user_idx = np.array(
        [ix.user_index(int(u)) if ix.user_index(int(u)) is not None else -1 for u in t_user]
    )
    baseline_pred = (
        mu
        + np.where(user_idx >= 0, b_user[np.maximum(user_idx, 0)], 0.0)
        + np.where(movie_idx >= 0, b_movie[np.maximum(movie_idx, 0)], 0.0)
    )
    order = np.argsort(t_user, kind="stable")
    bounds = np.flatnonzero(np.diff(t_user[order])) + 1
    groups = np.split(order, bounds)
    rows: list[tuple[Any, ...]] = []
    for label, overrides in variants:
        opt = cf.Options(**overrides)
        pred = np.full(len(test), np.nan)
        for rows_of_user in groups:
            scores = cf.score_all(ix, int(t_user[rows_of_user[0]]), opt)
            if len(scores.movies) == 0:
                continue
            m = movie_idx[rows_of_user]
            at = np.searchsorted(scores.movies, m)
            hit = (m >= 0) & (at < len(scores.movies))
            hit[hit] = scores.movies[at[hit]] == m[hit]
            pred[rows_of_user[hit]] = scores.score[at[hit]]
        covered = ~np.isnan(pred)
        err = pred[covered] - t_rating[covered]
        clipped = np.clip(pred[covered], 0.5, 5.0) - t_rating[covered]
        base_err = baseline_pred[covered] - t_rating[covered]
        rows.append(
            (
                label,
                f"{covered.mean():.1%}",
                int(covered.sum()),
                float(np.sqrt(np.mean(err**2))) if covered.any() else None,
                float(np.sqrt(np.mean(clipped**2))) if covered.any() else None,
                float(np.sqrt(np.mean(base_err**2))) if covered.any() else None,
            )
        )
    all_err = baseline_pred - t_rating
    rows.append(
        (
            "baseline alone (mu + b_u + b_m), all rows",
            "100.0%",
            len(test),
            float(np.sqrt(np.mean(all_err**2))),
            float(np.sqrt(np.mean((np.clip(baseline_pred, 0.5, 5) - t_rating) ** 2))),
            None,
        )
    )
    return rows
