"""`movrec bench serving` and `movrec bench online`.

serving: pgbench (scripts in bench/) against a `movrec generate` database with 2
clients: recommend(user, 10) tps and latency percentiles, rating inserts through the
online-update trigger (sgd and refit) against the same insert into a table without
triggers, the first recommend on a fresh connection, and the memory of a backend.

online: 10 % of ml-latest-small's users are held out of training; their ratings
stream through the trigger in time order; after 5, 10 and 20 of them, RMSE and
NDCG@10 on the rest, for the default vector, sgd, refit and a full retrain.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import click
import numpy as np
import psycopg

PGBENCH = "/usr/lib/postgresql/15/bin/pgbench"
BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
ONLINE_DB = "movrec_online"
CHECKPOINTS = (5, 10, 20)


def _echo(msg: str) -> None:
    click.echo(msg, err=True)


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _conninfo(dsn: str) -> dict[str, str]:
    return psycopg.conninfo.conninfo_to_dict(dsn)


def _resolve(dsn: str | None, database: str) -> str:
    if dsn:
        return dsn
    from movrec_cli.cluster import Cluster

    cluster = Cluster.default()
    if not cluster.running():
        raise click.ClickException("the embedded cluster is not running: `movrec db up`")
    return cluster.dsn(database)


# --- serving -------------------------------------------------------------------


def pgbench(
    dsn: str,
    script: str,
    variables: dict[str, int],
    seconds: int,
    clients: int = 2,
    options: str = "",
) -> dict[str, float]:
    """tps and latency percentiles (ms) of one pgbench run, from its per-transaction log."""
    info = _conninfo(dsn)
    workdir = Path(tempfile.mkdtemp(prefix="movrec-pgbench-"))
    try:
        cmd = [
            PGBENCH,
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
            raise click.ClickException(f"pgbench failed:\n{r.stdout}\n{r.stderr}")
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
            pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
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
    n_users = conn.execute("SELECT max(user_id) FROM movrec.watch_events").fetchone()[0]
    n_movies = conn.execute("SELECT max(movie_id) FROM movrec.movies").fetchone()[0]
    return int(n_users), int(n_movies)


def _set_triggers(dsn: str, which: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE movrec.watch_events ENABLE TRIGGER USER")
        if which == "none":
            conn.execute("ALTER TABLE movrec.watch_events DISABLE TRIGGER USER")
        elif which == "online":
            conn.execute("ALTER TABLE movrec.watch_events DISABLE TRIGGER USER")
            conn.execute("ALTER TABLE movrec.watch_events ENABLE TRIGGER movrec_online_update")


def _row(name: str, r: dict[str, float]) -> str:
    return (
        f"{name:<38} {r['tps']:>9,.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
        f"{r['n']:>8}   {r['load']}"
    )


@click.command("serving")
@click.option(
    "--dsn", metavar="DSN", help="a `movrec generate` database [default: the embedded movrec_20m]"
)
@click.option("-T", "seconds", default=15, show_default=True, help="seconds per pgbench run")
@click.option("-c", "clients", default=2, show_default=True, help="pgbench clients (and threads)")
@click.option("--rounds", default=2, show_default=True, help="rounds of the insert variants")
@click.option(
    "--skip-refit", is_flag=True, help="do not measure inserts with movrec.online_update = refit"
)
def bench_serving(
    dsn: str | None, seconds: int, clients: int, rounds: int, skip_refit: bool
) -> None:
    """recommend tps/p50/p99, rating tps with the online update vs a plain insert,
    first recommend on a new connection, memory per backend (pgbench, 2 clients)."""
    from movrec_cli.generate import DATABASE

    dsn = _resolve(dsn, DATABASE)
    with psycopg.connect(dsn, autocommit=True) as conn:
        n_users, n_movies = _sizes(conn)
        conn.execute("DROP TABLE IF EXISTS bench_plain_ratings")
        conn.execute("""CREATE TABLE bench_plain_ratings (LIKE movrec.watch_events
                        INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)""")
        conn.execute("""ALTER TABLE bench_plain_ratings ADD FOREIGN KEY (movie_id)
                        REFERENCES movrec.movies (movie_id)""")
    _echo(f"{n_users:,} users, {n_movies:,} movies; {clients} clients, {seconds} s each")
    v = {"n_users": n_users, "n_movies": n_movies}
    results: dict[str, dict] = {}
    results["first_call"] = first_call(dsn, n_users)
    fc = results["first_call"]
    _echo(
        f"first recommend on a new connection: {fc['first_recommend_ms']:.1f} ms "
        f"(median of 5, max {fc['first_recommend_max_ms']:.1f}; connect {fc['connect_ms']:.1f} ms; "
        f"second call {fc['second_recommend_ms']:.2f} ms)   load {load_average()}"
    )
    _echo(
        f"backend memory: VmRSS {fc['rss_idle_kB'] / 1024:.1f} MiB idle -> "
        f"{fc['rss_after_kB'] / 1024:.1f} MiB after 52 recommends "
        f"(RssAnon {fc['rss_anon_idle_kB'] / 1024:.1f} -> {fc['rss_anon_after_kB'] / 1024:.1f} MiB, "
        f"RssShmem {fc['rss_shmem_after_kB'] / 1024:.1f} MiB)"
    )
    # (name, script, PGOPTIONS, triggers on watch_events: all / none / online only).  The
    # inserts into watch_events pay for its 20M-row indexes (random btree inserts, full-page
    # writes); "triggers off" on the same table isolates what the triggers cost.
    sgd, refit = "-c movrec.online_update=sgd", "-c movrec.online_update=refit"
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
    runs = [("recommend(user, 10)", "recommend.sql", "", "all")]
    runs += [(f"{name} #{i + 1}", *rest) for i in range(rounds) for name, *rest in inserts]
    _echo(f"{'':<38} {'tps':>9} {'p50 ms':>8} {'p99 ms':>8} {'n':>8}   load avg before")
    try:
        _set_triggers(dsn, "none")
        pgbench(dsn, "rate_online.sql", v, max(5, seconds // 2), clients)  # warm-up
        for name, script, options, triggers in runs:
            _set_triggers(dsn, triggers)
            r = pgbench(dsn, script, v, seconds, clients, options)
            results[name] = r
            failed = (
                "" if r["failed"].startswith("number of failed transactions: 0 ") else r["failed"]
            )
            _echo(_row(name, r) + (f"  {failed}" if failed else ""))
    finally:
        _set_triggers(dsn, "all")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_plain_ratings")
    click.echo(json.dumps(results, indent=1))


# --- online ----------------------------------------------------------------------


def _load_small(conn: psycopg.Connection, data: Path) -> tuple[np.ndarray, ...]:
    with open(data / "movies.csv", newline="", encoding="utf-8") as f:
        movies = [
            (
                int(r["movieId"]),
                r["title"] or "?",
                [] if r["genres"] == "(no genres listed)" else r["genres"].split("|"),
            )
            for r in csv.DictReader(f)
        ]
    with (
        conn.transaction(),
        conn.cursor().copy("COPY movrec.movies (movie_id, title, genres) FROM STDIN") as c,
    ):
        for row in movies:
            c.write_row(row)
    r = np.loadtxt(data / "ratings.csv", delimiter=",", skiprows=1)
    return (
        r[:, 0].astype(np.int32),
        r[:, 1].astype(np.int32),
        r[:, 2].astype(np.float32),
        r[:, 3].astype(np.int64),
    )


def _copy_ratings(
    conn: psycopg.Connection, u: np.ndarray, m: np.ndarray, r: np.ndarray, ts: np.ndarray
) -> None:
    with conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")  # no triggers: a bulk load
        with conn.cursor().copy(
            "COPY movrec.watch_events (user_id, movie_id, rating, rated_at) FROM STDIN"
        ) as c:
            for row in zip(u.tolist(), m.tolist(), r.tolist(), ts.tolist(), strict=True):
                c.write_row((row[0], row[1], row[2], datetime.fromtimestamp(row[3], UTC)))
        if conn.execute("SELECT to_regprocedure('movrec.cf_rebuild_stats()')").fetchone()[0]:
            conn.execute("SELECT movrec.cf_rebuild_stats()")


def _model(
    conn: psycopg.Connection,
) -> tuple[float, np.ndarray, float, dict[int, tuple[np.ndarray, float]]]:
    mu, default, default_bias = conn.execute(
        """SELECT r.global_mean, r.default_embedding, r.default_bias
           FROM model.registry r JOIN model.champion c USING (model_id)"""
    ).fetchone()
    side = {
        mid: (np.asarray(e, dtype=np.float64), b)
        for mid, e, b in conn.execute(
            "SELECT movie_id, embedding::real[], bias FROM model.movie_latent_attributes"
        )
    }
    return mu, np.asarray(default, dtype=np.float64), default_bias, side


def _vectors(conn: psycopg.Connection, users: list[int]) -> dict[int, tuple[np.ndarray, float]]:
    return {
        uid: (np.asarray(e, dtype=np.float64), b)
        for uid, e, b in conn.execute(
            "SELECT user_id, embedding::real[], bias FROM model.user_latent_attributes WHERE user_id = ANY(%s)",
            (users,),
        )
    }


def _metrics(
    tests: dict[int, tuple[np.ndarray, np.ndarray]],
    vectors: dict[int, tuple[np.ndarray, float]],
    mu: float,
    side: dict[int, tuple[np.ndarray, float]],
) -> tuple[float, float]:
    """RMSE over all held-out test ratings, mean NDCG@10 (relevant: >= 4) ranking each user's test movies."""
    sq, n, ndcgs = 0.0, 0, []
    for uid, (movies, ratings) in tests.items():
        u, b = vectors[uid]
        known = np.array([m in side for m in movies.tolist()])
        if not known.any():
            continue
        mv = np.array([side[m][0] for m in movies[known].tolist()])
        mb = np.array([side[m][1] for m in movies[known].tolist()])
        pred = np.clip(mv @ u + mb + b + mu, 0.5, 5.0)
        truth = ratings[known]
        sq += float(((pred - truth) ** 2).sum())
        n += len(truth)
        rel = (truth >= 4).astype(np.float64)
        if rel.sum() > 0:
            discount = 1.0 / np.log2(np.arange(2, 12))
            top = np.argsort(-pred, kind="stable")[:10]
            ideal = np.sort(rel)[::-1][:10]
            ndcgs.append(
                float(
                    (rel[top] * discount[: len(top)]).sum() / (ideal * discount[: len(ideal)]).sum()
                )
            )
    return float(np.sqrt(sq / n)), float(np.mean(ndcgs)) if ndcgs else float("nan")


@click.command("online")
@click.option(
    "--data",
    "data_dir",
    default="/work/shared/data/ml-latest-small",
    show_default=True,
    type=click.Path(path_type=Path, exists=True),
    help="ml-latest-small folder (read, never copied)",
)
@click.option(
    "--dsn", metavar="DSN", help=f"scratch database, emptied [default: the embedded {ONLINE_DB}]"
)
@click.option(
    "--holdout", default=0.1, show_default=True, help="fraction of users held out of training"
)
@click.option("--train-options", default='{"epochs": 25}', show_default=True)
@click.option(
    "--refit-reg",
    default=None,
    type=float,
    help="movrec.refit_reg for the refit rows [default: its default]",
)
@click.option("--seed", default=42, show_default=True)
def bench_online(
    data_dir: Path,
    dsn: str | None,
    holdout: float,
    train_options: str,
    refit_reg: float | None,
    seed: int,
) -> None:
    """Online learning quality: default vector, sgd, refit and full retrain after 5/10/20 ratings."""
    from movrec.online import ridge_fold_in

    from movrec_cli import schema

    if dsn is None:
        from movrec_cli.cluster import Cluster

        cluster = Cluster.default()
        cluster.ensure_database(ONLINE_DB)
        dsn = cluster.dsn(ONLINE_DB)
    t0 = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        schema.uninstall(conn, drop_data=True)
        schema.install(conn)
        u, m, r, ts = _load_small(conn, data_dir)
        rng = np.random.default_rng(seed)
        counts = np.bincount(u)
        eligible = np.flatnonzero(counts >= max(CHECKPOINTS) + 10)  # >= 10 test ratings left
        held = np.sort(rng.choice(eligible, int(round(holdout * len(np.unique(u)))), replace=False))
        is_held = np.isin(u, held)
        _copy_ratings(conn, u[~is_held], m[~is_held], r[~is_held], ts[~is_held])
        stream: dict[int, tuple[np.ndarray, ...]] = {}
        tests: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for uid in held.tolist():
            idx = np.flatnonzero(u == uid)
            idx = idx[np.lexsort((m[idx], ts[idx]))]  # time order
            first, rest = idx[: max(CHECKPOINTS)], idx[max(CHECKPOINTS) :]
            stream[uid] = (m[first], r[first], ts[first])
            tests[uid] = (m[rest], r[rest])
        _echo(
            f"{len(held)} held-out users, {sum(len(t[0]) for t in tests.values())} test ratings; "
            f"training on {int((~is_held).sum())} ratings"
        )
        t = time.perf_counter()
        conn.execute("SELECT movrec.train('mf', %s)", (train_options,))
        _echo(f"base model trained in {time.perf_counter() - t:.1f} s")
        mu, default, default_bias, side = _model(conn)
        users = held.tolist()
        rows: dict[str, dict[int, tuple[float, float]]] = {}
        rows["default vector"] = {
            k: _metrics(tests, {uid: (default, default_bias) for uid in users}, mu, side)
            for k in CHECKPOINTS
        }

        def stream_through_trigger(mode: str) -> dict[int, tuple[float, float]]:
            out = {}
            conn.execute("SELECT set_config('movrec.online_update', %s, false)", (mode,))
            if refit_reg is not None:
                conn.execute("SELECT set_config('movrec.refit_reg', %s, false)", (str(refit_reg),))
            done = 0
            tm = time.perf_counter()
            for k in CHECKPOINTS:
                with conn.pipeline():
                    for uid in users:
                        mm, rr, tt = stream[uid]
                        for j in range(done, k):
                            conn.execute(
                                "INSERT INTO movrec.watch_events (user_id, movie_id, rating, rated_at) "
                                "VALUES (%s, %s, %s, to_timestamp(%s))",
                                (uid, int(mm[j]), float(rr[j]), int(tt[j])),
                            )
                done = k
                out[k] = _metrics(tests, _vectors(conn, users), mu, side)
            _echo(
                f"{mode}: {len(users) * done} ratings streamed in {time.perf_counter() - tm:.1f} s"
            )
            with conn.transaction():
                conn.execute("DELETE FROM movrec.watch_events WHERE user_id = ANY(%s)", (users,))
                conn.execute(
                    "DELETE FROM model.user_latent_attributes WHERE user_id = ANY(%s)", (users,)
                )
                conn.execute(
                    "DELETE FROM model.user_latent_attributes_backups WHERE user_id = ANY(%s)",
                    (users,),
                )
            return out

        rows["sgd (trigger)"] = stream_through_trigger("sgd")
        rows["refit (trigger)"] = stream_through_trigger("refit")
        # the refit's ridge weight, swept offline with the same function
        for reg in (1.0, 3.0, 10.0, 30.0):
            res = {}
            for k in CHECKPOINTS:
                vec = {}
                for uid in users:
                    mm, rr, _ = stream[uid]
                    keep = [j for j in range(k) if int(mm[j]) in side]
                    vs = np.array([side[int(mm[j])][0] for j in keep]).reshape(len(keep), -1)
                    bs = np.array([side[int(mm[j])][1] for j in keep])
                    vec[uid] = ridge_fold_in(
                        vs if len(keep) else np.zeros((0, len(default))),
                        bs,
                        mu,
                        rr[keep],
                        default,
                        default_bias,
                        reg,
                    )
                res[k] = _metrics(tests, vec, mu, side)
            rows[f"refit numpy, reg {reg:g}"] = res
        # full retrain with the held-out users' first k ratings
        res = {}
        for k in CHECKPOINTS:
            cu, cm, cr, ct = [], [], [], []
            for uid in users:
                mm, rr, tt = stream[uid]
                cu.append(np.full(k, uid, dtype=np.int32))
                cm.append(mm[:k])
                cr.append(rr[:k])
                ct.append(tt[:k])
            _copy_ratings(
                conn, np.concatenate(cu), np.concatenate(cm), np.concatenate(cr), np.concatenate(ct)
            )
            t = time.perf_counter()
            conn.execute("SELECT movrec.train('mf', %s)", (train_options,))
            mu_k, _, _, side_k = _model(conn)
            res[k] = _metrics(tests, _vectors(conn, users), mu_k, side_k)
            _echo(f"full retrain with {k} ratings each: {time.perf_counter() - t:.1f} s")
            conn.execute("DELETE FROM movrec.watch_events WHERE user_id = ANY(%s)", (users,))
        rows["full retrain"] = res
    header = "".join(f"  {f'RMSE n={k}':>9} {f'NDCG@10 n={k}':>12}" for k in CHECKPOINTS)
    click.echo(f"{'held-out users, n ratings':<26}{header}")
    for name, res in rows.items():
        click.echo(
            f"{name:<26}" + "".join(f"  {res[k][0]:9.4f} {res[k][1]:12.4f}" for k in CHECKPOINTS)
        )
    _echo(f"total {time.perf_counter() - t0:.0f} s; load {load_average()}")


@click.group("bench")
def bench() -> None:
    """Benchmarks: serving speed and online learning."""


bench.add_command(bench_serving)
bench.add_command(bench_online)
