"""What a queued job and a user_to_user() call cost on a local Citus cluster against one node.

    .venv/bin/python bench/citus_jobs.py [--users 300] [--calls 40]

Starts, in temporary directories, a single node and a Citus coordinator with 2 workers
(Citus installed: `make setup`), loads the same demo data into both (`movrec install`, and
`--citus` there), trains a small MF model on each, queues every user for CF and for a
refresh, and times, in one session per install with its CF cache loaded:
cf_drain(all users), serving_drain(all users), and --calls user_to_user(u, store => false)
calls.  Prints ms per job and per call and the Citus / single-node ratios.  A local cluster
shares one machine's cores: the ratios show what Citus's extra round trips cost, not what
separate machines would gain.  Removes its clusters at the end.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import psycopg
from movrec_cli import schema
from movrec_cli.cluster import CitusCluster, Cluster
from movrec_cli.demo_data import load_demo


def prepare(dsn: str, users: int, citus: bool) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        schema.install(conn, citus=citus)
        load_demo(conn, n_users=users, seed=7)
        conn.execute("""SELECT movrec.train('mf', '{"epochs": 3}')""")


def measure(dsn: str, calls: int) -> dict[str, float]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for queue in ("model.cf_queue", "model.refresh_queue"):
            conn.execute(f"DELETE FROM {queue}")
            conn.execute(
                f"INSERT INTO {queue} (user_id) SELECT user_id FROM model.user_rating_stats"
            )
        users = [
            r[0] for r in conn.execute("SELECT user_id FROM model.user_rating_stats ORDER BY 1")
        ]
        conn.execute("SELECT count(*) FROM movrec.user_to_user(%s, store => false)", (users[0],))
        out = {}
        for name, sql in (
            ("cf job", "SELECT movrec.cf_drain(%s)"),
            ("refresh job", "SELECT movrec.serving_drain(%s)"),
        ):
            t = time.perf_counter()
            n = conn.execute(sql, (len(users),)).fetchone()[0]
            out[name] = (time.perf_counter() - t) / n * 1000
        t = time.perf_counter()
        for u in users[:calls]:
            conn.execute("SELECT count(*) FROM movrec.user_to_user(%s, store => false)", (u,))
        out["user_to_user call"] = (time.perf_counter() - t) / min(calls, len(users)) * 1000
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--users", type=int, default=300)
    p.add_argument("--calls", type=int, default=40)
    p.add_argument("--port", type=int, default=59700)
    args = p.parse_args()
    home = Path(tempfile.mkdtemp(prefix="movrec-bench-citus-jobs-", dir="/tmp"))
    home.chmod(0o755)
    (home / "single").mkdir()
    single = Cluster(home / "single", port=args.port)
    citus = CitusCluster(home / "citus", port=args.port + 1)
    (home / "citus").mkdir()
    try:
        single.init()
        single.start()
        citus.start()
        with psycopg.connect(single.dsn("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        prepare(single.dsn("bench"), args.users, citus=False)
        prepare(citus.create_database("bench"), args.users, citus=True)
        one = measure(single.dsn("bench"), args.calls)
        many = measure(citus.dsn("bench"), args.calls)
        print(
            f"{args.users} demo users; ms per job or call, single node / Citus (3 nodes, one machine):"
        )
        for name in one:
            print(
                f"  {name:18} {one[name]:7.1f} / {many[name]:7.1f}   {many[name] / one[name]:.1f}x"
            )
    finally:
        citus.stop()
        single.stop()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
