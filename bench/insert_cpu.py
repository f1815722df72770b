"""Backend CPU per rating insert, with each of watch_events' trigger groups on or off.

    .venv/bin/python bench/insert_cpu.py DSN [--inserts 2000] [--rounds 3]

One connection runs the statement of bench/rate_online.sql (INSERT .. ON CONFLICT DO UPDATE,
random user and movie, autocommit) --inserts times per variant; the backend's user + system
CPU time (/proc/<pid>/stat, so the server must run on this machine) divided by the inserts
is the figure: robust to other load, unlike tps.  Variants: no triggers, all triggers, and
all but one group (the groups are the triggers' names up to their last word), round by round.
With --functions, also pg_stat_user_functions' self time per call for all triggers (needs
track_functions, set here for the session; wall time, so it includes waits).  Changes the
database's ratings (new random ones): run it on a benchmark copy.
"""

from __future__ import annotations

import argparse
import os
import random

import psycopg

INSERT = (
    "INSERT INTO movrec.watch_events (user_id, movie_id, rating) VALUES (%s, %s, %s) "
    "ON CONFLICT (user_id, movie_id) DO UPDATE SET rating = excluded.rating"
)
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def groups(conn: psycopg.Connection) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for (name,) in conn.execute(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = 'movrec.watch_events'::regclass "
        "AND NOT tgisinternal ORDER BY tgname"
    ):
        if name == "movrec_rerating_stamp":
            continue  # BEFORE UPDATE OF rating: part of the table's semantics
        key = name.removeprefix("movrec_")
        for suffix in ("_update", "_delete", "_truncate", "_changed", "_row"):
            key = key.removesuffix(suffix)
        out.setdefault(key, []).append(name)
    return out


def set_variant(admin: psycopg.Connection, variant: str, by_group: dict[str, list[str]]) -> None:
    admin.execute("ALTER TABLE movrec.watch_events ENABLE TRIGGER USER")
    if variant == "none":
        admin.execute("ALTER TABLE movrec.watch_events DISABLE TRIGGER USER")
    elif variant.startswith("all but "):
        for t in by_group[variant.removeprefix("all but ")]:
            admin.execute(f"ALTER TABLE movrec.watch_events DISABLE TRIGGER {t}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dsn")
    ap.add_argument("--inserts", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--functions", action="store_true")
    ap.add_argument("--only", help="comma-separated variants, e.g. none,all (default: every one)")
    ap.add_argument(
        "--seed", type=int, default=None, help="default: a new one (new pairs each run)"
    )
    a = ap.parse_args()
    rng = random.Random(a.seed)  # a rerun with the same seed re-rates (UPDATE path) instead
    with (
        psycopg.connect(a.dsn, autocommit=True) as admin,
        psycopg.connect(a.dsn, autocommit=True) as conn,
    ):
        n_users = admin.execute("SELECT max(user_id) FROM movrec.watch_events").fetchone()[0]
        n_movies = admin.execute("SELECT max(movie_id) FROM movrec.movies").fetchone()[0]
        by_group = groups(admin)
        variants = ["none", "all", *(f"all but {g}" for g in by_group)]
        if a.only:
            variants = a.only.split(",")
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        if a.functions:
            conn.execute("SET track_functions = 'all'")
            conn.execute("SELECT pg_stat_reset()")
        per: dict[str, list[float]] = {v: [] for v in variants}
        try:
            for _ in range(a.rounds):
                for v in variants:
                    set_variant(admin, v, by_group)
                    rows = [
                        (rng.randint(1, n_users), rng.randint(1, n_movies), rng.randint(1, 10) / 2)
                        for _ in range(a.inserts)
                    ]
                    for r in rows[:50]:  # warm the backend's caches for this variant
                        conn.execute(INSERT, r)
                    t0 = cpu_s(pid)
                    for r in rows[50:]:
                        conn.execute(INSERT, r)
                    per[v].append((cpu_s(pid) - t0) / (a.inserts - 50) * 1000)
        finally:
            admin.execute("ALTER TABLE movrec.watch_events ENABLE TRIGGER USER")
        base = sorted(per["none"])[len(per["none"]) // 2]
        print(f"{'variant':<28} {'ms CPU/insert (per round)':<34} {'median':>7} {'- none':>7}")
        for v in variants:
            med = sorted(per[v])[len(per[v]) // 2]
            rounds = " ".join(f"{x:.3f}" for x in per[v])
            print(f"{v:<28} {rounds:<34} {med:7.3f} {med - base:7.3f}")
        allm = sorted(per["all"])[len(per["all"]) // 2]
        for g in by_group:
            if f"all but {g}" not in per:
                continue
            m = sorted(per[f"all but {g}"])[len(per[f"all but {g}"]) // 2]
            print(f"  {g}: {allm - m:.3f} ms of the triggers' {allm - base:.3f} ms")
        if a.functions:
            for name, calls, self_ms in conn.execute(
                "SELECT funcname, calls, self_time FROM pg_stat_user_functions "
                "WHERE schemaname = 'movrec' ORDER BY self_time DESC"
            ):
                print(
                    f"  {name:<32} {calls:>8} calls {self_ms / max(calls, 1) * 1000:8.1f} us self/call"
                )


if __name__ == "__main__":
    main()
