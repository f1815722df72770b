"""recommend()'s per-call cost with the champion's item-item weights against without them.

    .venv/bin/python bench/item_item_cost.py DSN MODEL_ID [--calls 300] [--rounds 3]

MODEL_ID: a registered hybrid with weights (model.registry.item_item), e.g. the one
`movrec bench quality` leaves in movrec_bench.  A copy of its registry row without the
weights is registered; the two are deployed in turn and timed on the same users, each
round (warm: the first calls after a deploy are not counted), so the figure is a ratio
measured in one run.  Ends with the model deployed again.
"""

from __future__ import annotations

import argparse
import statistics
import time

import psycopg
from movrec_cli.bench_portable import REGISTRY_COLUMNS


def timed(conn: psycopg.Connection, users: list[int]) -> float:
    for u in users[:20]:  # warm: caches of this backend
        conn.execute("SELECT count(*) FROM movrec.recommend(%s, 10)", (u,)).fetchone()
    started = time.perf_counter()
    for u in users:
        conn.execute("SELECT count(*) FROM movrec.recommend(%s, 10)", (u,)).fetchone()
    return (time.perf_counter() - started) / len(users) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dsn")
    ap.add_argument("model_id", type=int)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    with psycopg.connect(a.dsn, autocommit=True) as conn:
        cols = REGISTRY_COLUMNS
        bare = conn.execute(
            f"INSERT INTO model.registry ({cols}) SELECT {cols.replace('item_item', 'NULL')} "
            "FROM model.registry WHERE model_id = %s RETURNING model_id",
            (a.model_id,),
        ).fetchone()[0]
        users = [
            r[0]
            for r in conn.execute(
                "SELECT user_id FROM movrec.user_ids ORDER BY hashint4(user_id) LIMIT %s",
                (a.calls,),
            )
        ]
        ms: dict[str, list[float]] = {"with": [], "without": []}
        try:
            for _ in range(a.rounds):
                for label, model in (("without", bare), ("with", a.model_id)):
                    conn.execute("SELECT movrec.deploy(%s)", (model,))
                    ms[label].append(timed(conn, users))
        finally:
            conn.execute("SELECT movrec.deploy(%s)", (a.model_id,))
        for label, values in ms.items():
            print(f"{label} item-item: median {statistics.median(values):.3f} ms a call {values}")
        print(
            f"ratio with / without: "
            f"{statistics.median(ms['with']) / statistics.median(ms['without']):.2f}"
        )


if __name__ == "__main__":
    main()
