"""Binary COPY of generated ratings: movrec's numpy encoder (generate.binary_rows) against
psycopg's copy.set_types() + write_row(), rows/s into an unlogged scratch table.

    .venv/bin/python bench/copy_encoder.py "$(.venv/bin/movrec db dsn)"
"""

import datetime as dt
import sys
import time

import numpy as np
import psycopg
from movrec_cli import generate as g

dsn = sys.argv[1]
plan = g.Plan(n_users=20000, n_movies=5000, n_ratings=1_000_000, seed=1)
rng = np.random.default_rng(2)
_, _, genres = g.synthetic_movies(plan.n_movies, rng)
chunks = list(g.rating_chunks(plan, genres))
n = sum(len(c[0]) for c in chunks)
print("rows", n)
UTC = dt.UTC
with psycopg.connect(dsn, autocommit=True) as conn:
    conn.execute(
        "DROP TABLE IF EXISTS copybench; CREATE UNLOGGED TABLE copybench (user_id int4, movie_id int4, rating real, rated_at timestamptz)"
    )
    res = {}
    for _round in range(2):
        for name in ("hand", "library"):
            conn.execute("TRUNCATE copybench")
            t = time.perf_counter()
            with conn.cursor().copy("COPY copybench FROM STDIN (FORMAT binary)") as copy:
                if name == "hand":
                    copy.write(g.COPY_HEADER)
                    for c in chunks:
                        copy.write(g.binary_rows(*c))
                    copy.write(g.COPY_TRAILER)
                else:
                    copy.set_types(["int4", "int4", "float4", "timestamptz"])
                    for u, m, r, s in chunks:
                        at = (s - g.PG_EPOCH_S).tolist()
                        base = dt.datetime(2000, 1, 1, tzinfo=UTC)
                        for row in zip(
                            u.tolist(),
                            m.tolist(),
                            r.tolist(),
                            [base + dt.timedelta(seconds=x) for x in at],
                            strict=True,
                        ):
                            copy.write_row(row)
            el = time.perf_counter() - t
            assert conn.execute("SELECT count(*) FROM copybench").fetchone()[0] == n
            res.setdefault(name, []).append(n / el)
    print({k: [f"{v:,.0f}" for v in vs] for k, vs in res.items()})
    conn.execute("DROP TABLE copybench")
