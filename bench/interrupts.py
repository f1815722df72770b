"""How fast cancel and terminate reach long PL/Python jobs, and what the check costs.

    .venv/bin/python bench/interrupts.py "$(.venv/bin/movrec db dsn)" [--runs 3]

The database needs movrec with demo data or more (`make demo`); nothing is changed in it
(every job is interrupted before it commits).  Prints:

* the cost of one movrec.backend.check_interrupts() call between checks (a clock read) and
  of the prepared ``SELECT 1`` it runs at most every INTERRUPT_CHECK_S;
* per run, the seconds from pg_cancel_backend() / pg_terminate_backend() to the end of an
  MF training run of 100,000 epochs (hours, uninterrupted).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import psycopg

TRAIN = "SELECT movrec.train('mf', '{\"epochs\": 100000, \"patience\": 100000}', true)"

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


def latency(dsn: str, how: str) -> float:
    victim = psycopg.connect(dsn, autocommit=True)
    started = threading.Event()
    victim.add_notice_handler(
        lambda d: started.set() if "epoch 2/" in (d.message_primary or "") else None
    )
    ended: list[float] = []

    def run() -> None:
        try:
            victim.execute(TRAIN)
        except psycopg.Error:
            pass  # the interrupt
        ended.append(time.monotonic())

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    if not started.wait(300):
        raise SystemExit("training never reached its second epoch")
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
    args = parser.parse_args()
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        notes: list[str] = []
        conn.add_notice_handler(lambda d: notes.append(d.message_primary or ""))
        conn.execute(COST)
    _, per_call_ns, query_us, interval = next(n for n in notes if n.startswith("cost ")).split()
    print(f"check_interrupts() between checks: {per_call_ns} ns a call")
    print(f"the check itself (prepared SELECT 1): {query_us} us, at most every {interval} s")
    for how in ("pg_cancel_backend", "pg_terminate_backend"):
        runs = [latency(args.dsn, how) for _ in range(args.runs)]
        print(
            f"{how} mid-train: median {statistics.median(runs):.3f} s, "
            f"max {max(runs):.3f} s over {len(runs)} runs"
        )


if __name__ == "__main__":
    main()
