"""`movrec bench serving`: pgbench (scripts in bench/) against a `movrec generate` database.

With 2 clients: recommend(user, 10) tps and latency percentiles, rating inserts through
the online-update trigger (sgd and refit) against the same insert into a table without
triggers, the first recommend on a fresh connection, and the memory of a backend.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
import psycopg

from movrec_cli.connection import one
from movrec_cli.errors import CliError
from movrec_cli.output import note

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def pgbench_path() -> Path:
    """pgbench of the newest installed server (the one the embedded cluster runs), else
    of pg_config's installation, else the one on PATH."""
    from movrec_cli.cluster import bindir

    candidates: list[Path] = []
    with contextlib.suppress(CliError):
        candidates.append(bindir() / "pgbench")
    pg_config = os.environ.get("PG_CONFIG") or shutil.which("pg_config")
    if pg_config:
        r = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if r.returncode == 0:
            candidates.append(Path(r.stdout.strip()) / "pgbench")
    if on_path := shutil.which("pgbench"):
        candidates.append(Path(on_path))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise CliError("pgbench not found: install the PostgreSQL server package (`make setup`)")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _conninfo(dsn: str) -> dict[str, str]:
    return {k: str(v) for k, v in psycopg.conninfo.conninfo_to_dict(dsn).items() if v is not None}


def _resolve(dsn: str | None, database: str) -> str:
    if dsn:
        return dsn
    from movrec_cli.cluster import Cluster

    cluster = Cluster.default()
    if not cluster.running():
        raise CliError("the embedded cluster is not running: `movrec db up`")
    return cluster.dsn(database)


# --- serving -------------------------------------------------------------------


def pgbench(
    dsn: str,
    script: str,
    variables: dict[str, int],
    seconds: int,
    clients: int = 2,
    options: str = "",
) -> dict[str, Any]:
    """tps and latency percentiles (ms) of one pgbench run, from its per-transaction log."""
    info = _conninfo(dsn)
    workdir = Path(tempfile.mkdtemp(prefix="movrec-pgbench-"))
    try:
        cmd = [
            str(pgbench_path()),
            "-n",
            "-c",
            str(clients),
            "-j",
            str(clients),
            "-T",
            str(seconds),
            "-r",
            "--log",
            f"--log-prefix={workdir}/tx",
            "-f",
            str(BENCH_DIR / script),
        ]
        for k, v in variables.items():
            cmd += ["-D", f"{k}={v}"]
        for flag, key in (("-h", "host"), ("-p", "port"), ("-U", "user")):
            if key in info:
                cmd += [flag, info[key]]
        cmd.append(info.get("dbname", "postgres"))
        env = dict(os.environ)
        if options:
            env["PGOPTIONS"] = options
        load = load_average()
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if r.returncode != 0:
            raise CliError(f"pgbench failed: {r.stdout} {r.stderr}")
        tps = next(
            float(line.split("=")[1].split()[0])
            for line in r.stdout.splitlines()
            if line.startswith("tps") and "without initial connection time" in line
        )
        failed = next((line for line in r.stdout.splitlines() if "failed" in line), "")
        lat = []
        for f in workdir.glob("tx*"):
            for line in f.read_text().splitlines():
                lat.append(int(line.split()[2]) / 1000.0)  # the 3rd field: latency in us
        a = np.asarray(lat)
        return {
            "tps": tps,
            "p50_ms": float(np.percentile(a, 50)),
            "p99_ms": float(np.percentile(a, 99)),
            "mean_ms": float(a.mean()),
            "n": len(a),
            "load": load,
            "failed": failed.strip(),
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def backend_memory(pid: int) -> dict[str, int]:
    """kB from /proc/<pid>/status: VmRSS (with the shared buffers it touched), RssAnon (its own)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def first_call(dsn: str, n_users: int, tries: int = 5) -> dict[str, float]:
    """ms of the first and second recommend on new connections (median), and one backend's memory."""
    rng = np.random.default_rng(7)
    firsts, seconds, connects, mems = [], [], [], []
    for _ in range(tries):
        t = time.perf_counter()
        with psycopg.connect(dsn, autocommit=True) as conn:
            connects.append((time.perf_counter() - t) * 1000)
            pid = one(conn.execute("SELECT pg_backend_pid()"))[0]
            base = backend_memory(pid)
            uid = int(rng.integers(1, n_users + 1))
            t = time.perf_counter()
            conn.execute("SELECT * FROM movrec.recommend(%s, 10)", (uid,)).fetchall()
            firsts.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            conn.execute("SELECT * FROM movrec.recommend(%s, 10)", (uid + 1,)).fetchall()
            seconds.append((time.perf_counter() - t) * 1000)
            for _ in range(50):
                conn.execute(
                    "SELECT * FROM movrec.recommend(%s, 10)", (int(rng.integers(1, n_users + 1)),)
                )
            after = backend_memory(pid)
            mems.append((base, after))
    base, after = mems[-1]
    return {
        "connect_ms": statistics.median(connects),
        "first_recommend_ms": statistics.median(firsts),
        "first_recommend_max_ms": max(firsts),
        "second_recommend_ms": statistics.median(seconds),
        "rss_idle_kB": base.get("VmRSS", 0),
        "rss_anon_idle_kB": base.get("RssAnon", 0),
        "rss_after_kB": after.get("VmRSS", 0),
        "rss_anon_after_kB": after.get("RssAnon", 0),
        "rss_shmem_after_kB": after.get("RssShmem", 0),
    }


def _sizes(conn: psycopg.Connection) -> tuple[int, int]:
    n_users = one(conn.execute("SELECT max(user_id) FROM movrec.watch_events"))[0]
    n_movies = one(conn.execute("SELECT max(movie_id) FROM movrec.movies"))[0]
    return int(n_users), int(n_movies)


def _set_triggers(dsn: str, which: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE movrec.watch_events ENABLE TRIGGER USER")
        if which == "none":
            conn.execute("ALTER TABLE movrec.watch_events DISABLE TRIGGER USER")
        elif which == "online":
            conn.execute("ALTER TABLE movrec.watch_events DISABLE TRIGGER USER")
            conn.execute("ALTER TABLE movrec.watch_events ENABLE TRIGGER movrec_online_update")


def _set_online_update(dsn: str, mode: str) -> None:
    """The rating trigger's mode is the database's (movrec.settings), not a session's."""
    if mode:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("UPDATE movrec.settings SET online_update = %s", (mode,))


# The floor of a PL/Python recommend(): what every call pays before it scores anything (the
# call into PL/Python, one prepared fetch of the user's rated movies, rows back to SQL).
FLOOR_SQL = """
CREATE SCHEMA IF NOT EXISTS movrec_bench;
CREATE OR REPLACE FUNCTION movrec_bench.floor(uid integer)
RETURNS TABLE (movie_id integer, title text, score real, predicted_rating real, source text)
LANGUAGE plpython3u STABLE AS $$
plan = GD.get("movrec_bench_floor")
if plan is None:
    plan = GD["movrec_bench_floor"] = plpy.prepare(
        "SELECT coalesce(array_agg(movie_id), '{}') AS seen FROM movrec.watch_events "
        "WHERE user_id = $1", ["int4"])
plpy.execute(plan, [uid])
return [(i, "title", 1.0, 4.0, "model") for i in range(1, 11)]
$$
"""


def _row(name: str, r: dict[str, Any]) -> str:
    return (
        f"{name:<38} {r['tps']:>9,.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
        f"{r['n']:>8}   {r['load']}"
    )


def run_serving(dsn: str | None, seconds: int, clients: int, rounds: int, skip_refit: bool) -> None:
    """recommend tps/p50/p99, rating tps with the online update vs a plain insert,
    first recommend on a new connection, memory per backend; prints JSON of every run."""
    from movrec_cli.generate import DATABASE

    dsn = _resolve(dsn, DATABASE)
    with psycopg.connect(dsn, autocommit=True) as conn:
        n_users, n_movies = _sizes(conn)
        conn.execute("DROP TABLE IF EXISTS bench_plain_ratings")
        conn.execute("""CREATE TABLE bench_plain_ratings (LIKE movrec.watch_events
                        INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)""")
        conn.execute("""ALTER TABLE bench_plain_ratings ADD FOREIGN KEY (movie_id)
                        REFERENCES movrec.movies (movie_id)""")
        conn.execute(FLOOR_SQL)
    note(f"{n_users:,} users, {n_movies:,} movies; {clients} clients, {seconds} s each")
    v = {"n_users": n_users, "n_movies": n_movies}
    results: dict[str, dict[str, Any]] = {}
    results["first_call"] = first_call(dsn, n_users)
    fc = results["first_call"]
    note(
        f"first recommend on a new connection: {fc['first_recommend_ms']:.1f} ms "
        f"(median of 5, max {fc['first_recommend_max_ms']:.1f}; connect {fc['connect_ms']:.1f} ms; "
        f"second call {fc['second_recommend_ms']:.2f} ms)   load {load_average()}"
    )
    note(
        f"backend memory: VmRSS {fc['rss_idle_kB'] / 1024:.1f} MiB idle -> "
        f"{fc['rss_after_kB'] / 1024:.1f} MiB after 52 recommends "
        f"(RssAnon {fc['rss_anon_idle_kB'] / 1024:.1f} -> {fc['rss_anon_after_kB'] / 1024:.1f} MiB, "
        f"RssShmem {fc['rss_shmem_after_kB'] / 1024:.1f} MiB)"
    )
    # (name, script, the trigger's online_update, triggers on watch_events: all / none /
    # online only).  The inserts into watch_events pay for its 20M-row indexes (random btree
    # inserts, full-page writes); "triggers off" on the same table isolates what the triggers cost.
    sgd, refit = "sgd", "refit"
    inserts = [
        ("insert, small plain table", "rate_plain.sql", "", "all"),
        ("insert, watch_events, no triggers", "rate_online.sql", "", "none"),
        ("insert + online sgd (only trigger)", "rate_online.sql", sgd, "online"),
        ("insert + online sgd (all triggers)", "rate_online.sql", sgd, "all"),
    ]
    if not skip_refit:
        inserts.append(("insert + online refit (only trigger)", "rate_online.sql", refit, "online"))
    # Inserts into a 20M-row table are bound by WAL full-page writes of index pages, which
    # fall as pages get touched after a checkpoint: a warm-up, then the variants in rounds.
    runs = [
        ("recommend(user, 10)", "recommend.sql", "", "all"),
        ("floor: PL/Python, seen list, 10 rows", "floor.sql", "", "all"),
        ("pgvector HNSW top-10, unfiltered", "hnsw_top10_full.sql", "", "all"),
    ]
    runs += [
        (f"{name} #{i + 1}", script, options, triggers)
        for i in range(rounds)
        for name, script, options, triggers in inserts
    ]
    note(f"{'':<38} {'tps':>9} {'p50 ms':>8} {'p99 ms':>8} {'n':>8}   load avg before")
    with psycopg.connect(dsn, autocommit=True) as conn:
        mode_before = one(conn.execute("SELECT online_update FROM movrec.settings"))[0]
    try:
        _set_triggers(dsn, "none")
        pgbench(dsn, "rate_online.sql", v, max(5, seconds // 2), clients)  # warm-up
        for name, script, mode, triggers in runs:
            _set_triggers(dsn, triggers)
            _set_online_update(dsn, mode)
            r = pgbench(dsn, script, v, seconds, clients)
            results[name] = r
            failed = (
                "" if r["failed"].startswith("number of failed transactions: 0 ") else r["failed"]
            )
            note(_row(name, r) + (f"  {failed}" if failed else ""))
    finally:
        _set_triggers(dsn, "all")
        _set_online_update(dsn, mode_before)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS bench_plain_ratings")
            conn.execute("DROP SCHEMA IF EXISTS movrec_bench CASCADE")
    for line in ratios(results, rounds):
        note(line)
    click.echo(json.dumps(results, indent=1))


def ratios(results: dict[str, dict[str, Any]], rounds: int) -> list[str]:
    """recommend() against its floor and against pgvector's unfiltered HNSW top-10; inserts
    with triggers against the trigger-less insert into watch_events (round by round: each
    round's runs follow one another, so they share the machine's state)."""
    rec = results["recommend(user, 10)"]["tps"]
    lines = [
        f"recommend(user, 10): {rec / results['floor: PL/Python, seen list, 10 rows']['tps']:.2f} "
        f"x the PL/Python floor, {rec / results['pgvector HNSW top-10, unfiltered']['tps']:.2f} "
        "x pgvector's unfiltered HNSW top-10"
    ]
    for name in ("insert + online sgd (all triggers)", "insert + online sgd (only trigger)"):
        got = [
            results[f"{name} #{i + 1}"]["tps"]
            / results[f"insert, watch_events, no triggers #{i + 1}"]["tps"]
            for i in range(rounds)
        ]
        lines.append(f"{name}: {', '.join(f'{x:.2f}' for x in got)} x the trigger-less insert")
    return lines
