"""A new backend's first movrec.user_to_user(u) against a warm call, on a large rating set.

    .venv/bin/python bench/cf_cold_start.py --load RATINGS.npz DSN   # once: movrec installed, COPY
    .venv/bin/python bench/cf_cold_start.py DSN [--mode shared|private|held]

--load fills an emptied movrec database from an .npz of int64 ``u``, ``m`` and float32 ``r``
arrays (binary COPY, indexes rebuilt, CF statistics rebuilt).  Then, per sampled user (users
spread over the rating counts), a new connection times a trivial movrec call (PL/Python and
numpy starting in the backend), the first user_to_user(u, store => false) and the best of
three more: ``shared`` maps the copy the backends share with no other backend alive (as a
pg_cron run after an idle spell: its keeper holds it), ``unkept`` ends the keepers first (so
the copy is read from /dev/shm and checked, as before keepers), ``held`` keeps one backend
alive that holds it, ``private`` removes the pointer to the shared copy first (a full load,
as before the index was shared).
Prints each figure with the backend's memory (VmHWM, RssAnon, RssShmem in MB).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import signal
import time
from pathlib import Path

import numpy as np
import psycopg
from movrec_cli import generate, schema


def load(dsn: str, path: str) -> None:
    d = np.load(path)
    u, m, r = d["u"].astype(np.int32), d["m"].astype(np.int32), d["r"].astype(np.float32)
    with psycopg.connect(dsn, autocommit=True) as conn:
        schema.uninstall(conn, drop_data=True)
        schema.install(conn)
        n_movies = int(m.max())
        titles, years, genres = generate.synthetic_movies(n_movies, np.random.default_rng(8))
        with (
            conn.transaction(),
            conn.cursor().copy(
                "COPY movrec.movies (movie_id, title, year, genres) FROM STDIN"
            ) as cp,
        ):
            for i in range(n_movies):
                cp.write_row((i + 1, titles[i], int(years[i]), genres[i]))
        order = np.lexsort((m, u))
        u, m, r = u[order], m[order], r[order]
        starts = np.searchsorted(u, np.arange(u.min(), u.max() + 2))
        within = np.arange(len(u)) - np.repeat(starts[:-1], np.diff(starts))
        secs = generate.rating_seconds(u - 1, within, int(u.max()), n_movies // 3)
        with conn.transaction():
            conn.execute("SET LOCAL session_replication_role = replica")
            conn.execute("ALTER TABLE movrec.watch_events DROP CONSTRAINT watch_events_pkey")
            conn.execute("DROP INDEX IF EXISTS movrec.watch_events_movie_id_idx")
            with conn.cursor().copy(
                "COPY movrec.watch_events (user_id, movie_id, rating, rated_at)"
                " FROM STDIN (FORMAT binary)"
            ) as cp:
                cp.write(generate.COPY_HEADER)
                for a in range(0, len(u), 1 << 20):
                    b = a + (1 << 20)
                    cp.write(generate.binary_rows(u[a:b], m[a:b], r[a:b], secs[a:b]))
                cp.write(generate.COPY_TRAILER)
            conn.execute("ALTER TABLE movrec.watch_events ADD PRIMARY KEY (user_id, movie_id)")
            conn.execute("CREATE INDEX watch_events_movie_id_idx ON movrec.watch_events (movie_id)")
        conn.execute("SELECT movrec.cf_rebuild_stats()")
        conn.execute("ANALYZE")


def memory(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "RssAnon", "RssShmem"):
            out[key] = int(value.split()[0]) // 1024
    return out


def end_keepers() -> None:
    """End the shm_keeper processes holding CF copies, and wait until they are gone."""
    pids = set()
    for holders in glob.glob("/dev/shm/movrec-*/movrec-cf-*.holders"):
        with contextlib.suppress(OSError, ValueError):
            for line in Path(holders).read_text().splitlines():
                pid = int(line.split()[0])
                with contextlib.suppress(OSError):
                    if b"shm_keeper" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        pids.add(pid)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    while any(alive(pid) for pid in pids):
        time.sleep(0.01)


def alive(pid: int) -> bool:
    """Running (a zombie that nobody reaped yet holds nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def call(conn: psycopg.Connection, user: int) -> float:
    t = time.perf_counter()
    conn.execute("SELECT * FROM movrec.user_to_user(%s, store => false)", (user,)).fetchall()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dsn")
    ap.add_argument("--load", metavar="NPZ")
    ap.add_argument("--mode", default="shared", choices=["shared", "unkept", "private", "held"])
    ap.add_argument("--users", type=int, default=4)
    a = ap.parse_args()
    if a.load:
        load(a.dsn, a.load)
    with psycopg.connect(a.dsn, autocommit=True) as conn:
        users = [
            r[0]
            for r in conn.execute(
                "SELECT user_id FROM (SELECT user_id, ntile(5) OVER (ORDER BY n_ratings) q"
                " FROM model.user_rating_stats) s WHERE user_id % 997 = 1 ORDER BY q, user_id"
            ).fetchall()
        ]
        users = users[:: max(1, len(users) // (a.users + 1))][: a.users + 1]
        call(conn, users[0])  # a shared copy exists from here on
        holder = psycopg.connect(a.dsn, autocommit=True) if a.mode == "held" else None
        if holder is not None:
            call(holder, users[0])
    for user in users[1:]:
        if a.mode == "private":
            for p in glob.glob("/dev/shm/movrec-*/movrec-cf-*.current"):
                os.unlink(p)
        if a.mode == "unkept":
            end_keepers()
        with psycopg.connect(a.dsn, autocommit=True) as conn:
            pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
            t = time.perf_counter()
            conn.execute("SELECT movrec.cf_cache_info()")
            start = time.perf_counter() - t
            cold = call(conn, user)
            warm = min(call(conn, user) for _ in range(3))
            info = conn.execute("SELECT movrec.cf_cache_info()").fetchone()[0]  # type: ignore[index]
            print(
                f"{a.mode} user {user}: PL/Python start {start * 1000:.0f} ms, first call "
                f"{cold * 1000:.0f} ms, warm {warm * 1000:.0f} ms, first/warm {cold / warm:.1f}, "
                f"(start+first)/warm {(start + cold) / warm:.1f}; mapped {info['attached']}, "
                f"memory MB {memory(pid)}",
                flush=True,
            )
    if holder is not None:
        holder.close()


if __name__ == "__main__":
    main()
