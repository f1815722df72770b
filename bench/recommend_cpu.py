"""Backend CPU time per call of recommend() against its PL/Python floor, and where it goes.

    .venv/bin/python bench/recommend_cpu.py DSN [--calls 2000] [--profile 600]

DSN: a `movrec generate` database with a champion (bench serving's data).  Each case runs
``--calls`` times on one connection for random users; the time is the backend's own CPU time
(``/proc/<pid>/schedstat``, nanoseconds on a CPU), which other work on the machine does not
inflate the way it inflates wall time, so cases of one run compare even on a loaded machine.
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
import time
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


def per_call(
    conn: psycopg.Connection, sql: str, args: list[tuple[int, ...]]
) -> tuple[float, float]:
    """(backend CPU us, wall us) per call, after one untimed call to warm the caches."""
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    conn.execute(sql, args[0]).fetchall()
    cpu, wall = cpu_ns(pid), time.perf_counter()
    for a in args:
        conn.execute(sql, a).fetchall()
    return (cpu_ns(pid) - cpu) / 1e3 / len(args), (time.perf_counter() - wall) * 1e6 / len(args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dsn")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--profile", type=int, default=0, help="cProfile over N calls (0: none)")
    a = ap.parse_args()
    rng = random.Random(7)
    with psycopg.connect(a.dsn, autocommit=True) as conn:
        conn.execute(FLOOR_SQL)
        n_users = conn.execute("SELECT max(user_id) FROM movrec.watch_events").fetchone()[0]
        genre = conn.execute("SELECT genres[1] FROM movrec.movies LIMIT 1").fetchone()[0]
        movie = conn.execute("SELECT min(movie_id) FROM movrec.movies").fetchone()[0]
    users = [(rng.randint(1, n_users),) for _ in range(a.calls)]
    cold = [(n_users + 1000 + i,) for i in range(a.calls)]
    rec = "SELECT * FROM movrec.recommend(%s, 10)"
    cases = [
        ("recommend(u, 10)", rec, users),
        ("floor", "SELECT * FROM movrec_bench.floor(%s)", users),
        ("pgvector HNSW top-10", HNSW_SQL, users),
        (f"recommend(u, 10, '{{{genre}}}')", f"{rec[:-4]}10, ARRAY['{genre}'])", users),
        ("recommend(), rater without a vector", rec, [(n_users + 1,)] * a.calls),
        ("recommend(), user who rated nothing", rec, cold),
    ]
    results = {}
    for name, sql, args in cases:
        # each case on a fresh connection with warm caches: no case pays another's misses
        with psycopg.connect(a.dsn) as conn:
            if "without a vector" in name:
                conn.execute("SET session_replication_role = replica")  # no trigger: no vector
                conn.execute(
                    "INSERT INTO movrec.watch_events (user_id, movie_id, rating, rated_at) "
                    "VALUES (%s, %s, 4, now())",
                    (n_users + 1, movie),
                )
                conn.execute("SET session_replication_role = origin")
            results[name] = per_call(conn, sql, args)
            conn.rollback()
    floor = results["floor"][0]
    print(f"{'case':<40} {'CPU us':>8} {'wall us':>8} {'x floor':>8}")
    for name, (cpu, wall) in results.items():
        print(f"{name:<40} {cpu:>8.0f} {wall:>8.0f} {cpu / floor:>8.2f}")
    if a.profile:
        with psycopg.connect(a.dsn, autocommit=True) as conn:
            conn.add_notice_handler(lambda d: print(d.message_primary))
            conn.execute(PROFILE_SQL.format(n=a.profile, n_users=n_users))
    with psycopg.connect(a.dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS movrec_bench CASCADE")


if __name__ == "__main__":
    main()
