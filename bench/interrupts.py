"""How fast cancel and terminate reach long PL/Python jobs, and what the check costs.

    .venv/bin/python bench/interrupts.py "$(.venv/bin/movrec db dsn)" [--runs 3]
    .venv/bin/python bench/interrupts.py DSN --jobs deploy,tokenize,cf_drain,refresh_batch,serving_drain

The database needs movrec with demo data or more (`make demo`; for the jobs other than
train, a database big enough that they run for a while, e.g. `movrec generate`, with a
champion); nothing is changed in it (every job is interrupted before it commits, and the
queue rows a drain needs are written in the job's own transaction).  Prints:

* the cost of one movrec.backend.check_interrupts() call between checks (a clock read) and
  of the prepared ``SELECT 1`` it runs at most every INTERRUPT_CHECK_S;
* per job and run, the seconds from pg_cancel_backend() / pg_terminate_backend() to the end
  of the statement: train is an MF run of 100,000 epochs (hours, uninterrupted),
  interrupted in its second epoch; the others are interrupted SETTLE_S after they started.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import psycopg

TRAIN = "SELECT movrec.train('mf', '{\"epochs\": 100000, \"patience\": 100000}', true)"
SETTLE_S = 3.0
BATCH = 4096  # users a drain or batch refresh takes at most
USERS = f"(SELECT user_id FROM model.user_latent_attributes ORDER BY user_id LIMIT {BATCH})"
# Each job's SQL, one transaction (a simple-query string): what an interrupt rolls back.
JOBS = {
    "train": TRAIN,
    "deploy": "SELECT movrec.deploy((SELECT model_id FROM model.champion))",
    "tokenize": "SELECT count(*) FROM movrec.tokenize()",
    "cf_drain": f"INSERT INTO model.cf_queue (user_id) SELECT * FROM {USERS} u ON CONFLICT DO NOTHING; "
    f"SELECT movrec.cf_drain({BATCH})",
    "refresh_batch": f"SELECT movrec.refresh_recommendations_batch(ARRAY{USERS})",
    "serving_drain": f"INSERT INTO model.refresh_queue (user_id) SELECT * FROM {USERS} u "
    f"ON CONFLICT DO NOTHING; SELECT movrec.serving_drain({BATCH})",
}

COST = """
DO $$
GD.get('movrec') or plpy.execute('SELECT movrec._activate()')
import time
from movrec import backend
n = 1_000_000
t = time.perf_counter()
for _ in range(n):
    backend.check_interrupts()
limited = (time.perf_counter() - t) / n
p = backend.plan('SELECT 1')
m = 20_000
t = time.perf_counter()
for _ in range(m):
    plpy.execute(p)
query = (time.perf_counter() - t) / m
plpy.notice(f'cost {limited * 1e9:.0f} {query * 1e6:.1f} {backend.INTERRUPT_CHECK_S}')
$$ LANGUAGE plpython3u
"""


def latency(dsn: str, how: str, job: str = "train") -> float:
    """Seconds from ``how`` to the end of the job's statement."""
    victim = psycopg.connect(dsn, autocommit=True)
    started = threading.Event()
    victim.add_notice_handler(
        lambda d: started.set() if "epoch 2/" in (d.message_primary or "") else None
    )
    ended: list[float] = []

    def run() -> None:
        try:
            victim.execute(JOBS[job])
        except psycopg.Error:
            pass  # the interrupt
        ended.append(time.monotonic())

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    if job == "train":
        if not started.wait(300):
            raise SystemExit("training never reached its second epoch")
    else:
        worker.join(SETTLE_S)
        if not worker.is_alive():
            raise SystemExit(f"{job} ended within {SETTLE_S} s: the database is too small")
    with psycopg.connect(dsn, autocommit=True) as killer:
        sent = time.monotonic()
        killer.execute(f"SELECT {how}(%s)", (victim.info.backend_pid,))
    worker.join(600)
    victim.close()
    return ended[0] - sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dsn")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--jobs", default="train", help=f"comma-separated, of: {', '.join(JOBS)} (default train)"
    )
    args = parser.parse_args()
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        notes: list[str] = []
        conn.add_notice_handler(lambda d: notes.append(d.message_primary or ""))
        conn.execute(COST)
    _, per_call_ns, query_us, interval = next(n for n in notes if n.startswith("cost ")).split()
    print(f"check_interrupts() between checks: {per_call_ns} ns a call")
    print(f"the check itself (prepared SELECT 1): {query_us} us, at most every {interval} s")
    for job in args.jobs.split(","):
        for how in ("pg_cancel_backend", "pg_terminate_backend"):
            runs = [latency(args.dsn, how, job) for _ in range(args.runs)]
            print(
                f"{how} mid-{job}: median {statistics.median(runs):.3f} s, "
                f"max {max(runs):.3f} s over {len(runs)} runs"
            )


if __name__ == "__main__":
    main()
