"""Replay lag of a hot standby, as an application sees it: the time from a rating's commit
on the primary to the rating being readable on the standby.

    .venv/bin/python bench/standby_lag.py [--samples 30]

uses the embedded cluster (`movrec db up`, movrec installed, a model deployed) and its local
standby (`movrec db standby up`); --primary/--standby take other DSNs.  Each sample rates
one movie with a new value through movrec.rate() (the online-update trigger included),
stamps the clock after COMMIT returns, then either polls the standby (back-to-back queries)
until the new value is there, or (every other sample) reads pg_current_wal_lsn() on the
primary and calls movrec.wait_for_lsn() on the standby, as an application would.
"""

from __future__ import annotations

import argparse
import statistics
import time

import psycopg
from movrec_cli.cluster import Cluster, Standby


def main() -> None:
    primary = Cluster.default()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--primary", default=primary.dsn())
    parser.add_argument("--standby", default=Standby.of(primary).dsn())
    parser.add_argument("--samples", type=int, default=30)
    args = parser.parse_args()
    with (
        psycopg.connect(args.primary, autocommit=True) as p,
        psycopg.connect(args.standby, autocommit=True) as s,
        psycopg.connect(args.standby, autocommit=True) as waiter,
    ):
        user, movie = p.execute(
            "SELECT user_id, movie_id FROM movrec.watch_events ORDER BY user_id, movie_id LIMIT 1"
        ).fetchone()
        visible, waited = [], []
        read = (
            "SELECT rating FROM movrec.watch_events WHERE user_id = %s::int AND movie_id = %s::int"
        )
        for i in range(2 * args.samples):
            rating = 0.5 + (i % 10) * 0.5
            p.execute("SELECT movrec.rate(%s::int, %s::int, %s::real)", (user, movie, rating))
            committed = time.perf_counter()
            if i % 2 == 0:  # poll from the commit on
                while s.execute(read, (user, movie)).fetchone()[0] != rating:
                    pass
                visible.append(time.perf_counter() - committed)
            else:  # what an application waits: the LSN read, then the wait on the standby
                lsn = p.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
                waiter.execute("SELECT movrec.wait_for_lsn(%s, 10000)", (lsn,))
                waited.append(time.perf_counter() - committed)
                assert s.execute(read, (user, movie)).fetchone()[0] == rating
            time.sleep(0.05)
    for name, xs in (("commit -> visible", visible), ("wait_for_lsn", waited)):
        ms = [x * 1000 for x in xs]
        print(
            f"{name}: {len(ms)} samples, median {statistics.median(ms):.2f} ms, "
            f"max {max(ms):.2f} ms, min {min(ms):.2f} ms"
        )


if __name__ == "__main__":
    main()
