"""Backend CPU time per call of recommend() against its PL/Python floor, and where it goes.

    .venv/bin/python bench/recommend_cpu.py DSN [--rounds 8] [--calls 150] [--profile 600]

DSN: a `movrec generate` database with a champion (bench serving's data).  Each case has its
own connection; the cases take turns, ``--calls`` calls each for random users, for
``--rounds`` rounds.  The time is the backend's own CPU time (``/proc/<pid>/schedstat``,
nanoseconds on a CPU), which other work on the machine inflates far less than wall time;
each case's ratio to the floor is taken round by round (the median is printed), so a change
in the machine's load between rounds cancels out.
Cases: ``recommend(u, 10)`` for users with a vector; the floor of `movrec bench serving` (a
PL/Python function that fetches the user's rated movies through a prepared plan and returns
10 constant rows); pgvector's unfiltered HNSW top-10; recommend() with a genre filter; for a
rater without a vector (the default vector's path) and for a user who rated nothing
(popular).  The rater without a vector is made in a transaction that is rolled back.

``--profile N`` then prints cProfile's top entries over N recommend(u, 10) calls made inside
one backend (a DO block: the nested PL/Python calls are profiled with the caller).

The database server must run on this machine (the backend's /proc entry is read).
"""

from __future__ import annotations

import argparse
import random
import statistics
from pathlib import Path

import psycopg

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

HNSW_SQL = """
SELECT a.movie_id FROM model.movie_latent_attributes a
ORDER BY a.embedding <=> (SELECT u.embedding FROM model.user_latent_attributes u
                          WHERE u.user_id = %s)
LIMIT 10
"""

PROFILE_SQL = """
DO $$
import cProfile, io, pstats, random
plan = plpy.prepare("SELECT * FROM movrec.recommend($1, 10)", ["int4"])
plpy.execute(plan, [1])
rng = random.Random(7)
prof = cProfile.Profile()
prof.enable()
for _ in range({n}):
    plpy.execute(plan, [rng.randint(1, {n_users})])
prof.disable()
out = io.StringIO()
pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(40)
plpy.notice(out.getvalue())
$$ LANGUAGE plpython3u
"""


def cpu_ns(pid: int) -> int:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dsn")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--calls", type=int, default=150, help="calls per case and round")
    ap.add_argument("--profile", type=int, default=0, help="cProfile over N calls (0: none)")
    a = ap.parse_args()
    rng = random.Random(7)
    with psycopg.connect(a.dsn, autocommit=True) as conn:
        conn.execute(FLOOR_SQL)
        n_users = conn.execute("SELECT max(user_id) FROM movrec.watch_events").fetchone()[0]
        genre = conn.execute("SELECT genres[1] FROM movrec.movies LIMIT 1").fetchone()[0]
        movie = conn.execute("SELECT min(movie_id) FROM movrec.movies").fetchone()[0]
    rec = "SELECT * FROM movrec.recommend(%s, 10)"
    no_vector = n_users + 1
    cases = [
        ("floor", "SELECT * FROM movrec_bench.floor(%s)", lambda: rng.randint(1, n_users)),
        ("recommend(u, 10)", rec, lambda: rng.randint(1, n_users)),
        ("pgvector HNSW top-10", HNSW_SQL, lambda: rng.randint(1, n_users)),
        (
            f"recommend(u, 10, '{{{genre}}}')",
            f"SELECT * FROM movrec.recommend(%s, 10, ARRAY['{genre}'])",
            lambda: rng.randint(1, n_users),
        ),
        ("recommend(), rater without a vector", rec, lambda: no_vector),
        ("recommend(), user who rated nothing", rec, lambda: n_users + 1000 + rng.randint(1, 9999)),
    ]
    # One connection per case, each warm; the cases take turns, round by round, so that each
    # round's figures share the machine's state, and the ratio to the floor is taken per round.
    conns = []
    for name, sql, user in cases:
        conn = psycopg.connect(a.dsn)
        if "without a vector" in name:  # in this session's open transaction, rolled back
            conn.execute("SET session_replication_role = replica")  # no trigger: no vector
            conn.execute(
                "INSERT INTO movrec.watch_events (user_id, movie_id, rating, rated_at) "
                "VALUES (%s, %s, 4, now())",
                (no_vector, movie),
            )
            conn.execute("SET session_replication_role = origin")
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        for _ in range(20):
            conn.execute(sql, (user(),)).fetchall()
        conns.append((name, sql, user, conn, pid))
    cpu: dict[str, list[float]] = {name: [] for name, *_ in cases}
    for _ in range(a.rounds):
        for name, sql, user, conn, pid in conns:
            args = [(user(),) for _ in range(a.calls)]
            before = cpu_ns(pid)
            for arg in args:
                conn.execute(sql, arg).fetchall()
            cpu[name].append((cpu_ns(pid) - before) / 1e3 / a.calls)
    for *_, conn, _ in conns:
        conn.rollback()
        conn.close()
    floor = cpu["floor"]
    print(f"backend CPU per call, median of {a.rounds} rounds of {a.calls} calls")
    print(f"{'case':<40} {'CPU us':>8} {'x floor':>8}")
    for name, v in cpu.items():
        ratio = statistics.median(x / f for x, f in zip(v, floor, strict=True))
        print(f"{name:<40} {statistics.median(v):>8.0f} {ratio:>8.2f}")
    if a.profile:
        with psycopg.connect(a.dsn, autocommit=True) as conn:
            conn.add_notice_handler(lambda d: print(d.message_primary))
            conn.execute(PROFILE_SQL.format(n=a.profile, n_users=n_users))
    with psycopg.connect(a.dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS movrec_bench CASCADE")


if __name__ == "__main__":
    main()
