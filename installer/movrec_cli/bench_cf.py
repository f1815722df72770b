"""Per-user latency of movrec.user_to_user() against the naive scan-the-file version."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np
import psycopg

from movrec_cli import cf_naive
from movrec_cli.connection import one
from movrec_cli.errors import CliError
from movrec_cli.output import percentiles, table


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
    n_ratings = one(conn.execute("SELECT count(*) FROM movrec.watch_events"))[0]
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
            *percentiles(db_ms),
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
                *percentiles(naive_ms),
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
        has_map = one(conn.execute("SELECT to_regclass('movrec.user_ids') IS NOT NULL"))[0]
        mapping: dict[int, int] = (
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
            ("naive: read file + compute", f"{raw}", raw_n, len(raw_users), *percentiles(raw_ms))
        )
    echo(table(rows, ["version", "data", "ratings", "users", "p50 ms", "p99 ms", "mean ms"]))
    echo(
        f"database vs naive on the same ratings: {'same movies in the same order' if same else 'RESULTS DIFFER'}, "
        f"largest score difference {worst:.2e}; speed-up at p50: {rows[2][4] / rows[0][4]:.0f}x"
        + (f" (vs the raw file: {rows[3][4] / rows[0][4]:.0f}x)" if data_dir is not None else "")
    )
    return rows
