"""`movrec bench scale`: the nightly jobs end to end at a chosen scale, each step's time and
peak memory, so that a nightly job can be sized.

Steps: generate (movrec_cli.generate: binary COPY into an emptied database) -> train mf ->
train hybrid -> deploy the hybrid -> refresh every user's stored recommendations -> CF for
every user (all queued, then drained).  Each database step runs in a backend of its own, so
its peak memory is that backend's high-water mark (VmHWM of /proc/<pid>/status: the server
must run on this machine; otherwise "-"); generate runs in this process, whose own peak is
its column.  On Citus the figure is the coordinator's backend (the workers' backends do
part of the work and are not counted).  A step that fails is reported with its error and
the steps that need it are skipped; the command goes on and exits 0, since what fails is a
figure of the run (another engineer's fix of CF on Citus shows up here).
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from movrec_cli import generate, schema
from movrec_cli.connection import one

DATABASE = "movrec_scale"
REFRESH_BATCH = 1024  # users per refresh_recommendations_batch() call (one transaction each)
CF_BATCH = 500  # jobs per cf_drain() call


@dataclass
class Step:
    name: str
    seconds: float | None = None
    backend_peak_mb: float | None = None
    client_peak_mb: float | None = None
    status: str = "ok"
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def backend_peak_mb(pid: int) -> float | None:
    """The peak resident memory of backend ``pid`` (MB), if the server runs here."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def client_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _message(e: BaseException) -> str:
    if isinstance(e, psycopg.Error) and e.diag.message_primary:
        state = f" [SQLSTATE {e.sqlstate}]" if e.sqlstate else ""
        return f"{e.diag.message_primary}{state}"
    return str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__


def run_step(
    name: str, dsn: str, body: Callable[[psycopg.Connection], str], steps: list[Step]
) -> Step:
    """Run ``body`` on a new connection (a new backend); record time, peaks, or the error."""
    step = Step(name)
    started = time.perf_counter()
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            pid = one(conn.execute("SELECT pg_backend_pid()"))[0]
            step.detail = body(conn)
            step.backend_peak_mb = backend_peak_mb(pid)
    except Exception as e:  # a failed step is a result of the run, not the end of it
        step.status, step.detail = "failed", _message(e)
    step.seconds = time.perf_counter() - started
    step.client_peak_mb = client_peak_mb()
    steps.append(step)
    return step


def skipped(name: str, why: str, steps: list[Step]) -> None:
    steps.append(Step(name, status="skipped", detail=why))


def run_scale(
    dsn: str,
    plan: generate.Plan,
    mf_options: str,
    hybrid_options: str,
    citus: bool,
    echo: Callable[[str], None],
) -> list[Step]:
    """The steps on ``dsn`` (emptied first: movrec uninstalled with its data); their rows."""
    steps: list[Step] = []

    def gen(conn: psycopg.Connection) -> str:
        schema.uninstall(conn, drop_data=True)
        schema.install(conn)
        generate.load(conn, plan, echo)
        if citus:  # the data goes into the shards as the tables are distributed
            schema.install(conn, citus=True)
        n = one(conn.execute("SELECT count(*) FROM movrec.watch_events"))[0]
        return f"{n:,} ratings, {plan.n_users:,} users, {plan.n_movies:,} movies"

    echo("generate ...")
    if run_step("generate", dsn, gen, steps).status != "ok":
        return steps

    models: dict[str, int] = {}
    for kind, options in (("mf", mf_options), ("hybrid", hybrid_options)):

        def train(conn: psycopg.Connection, kind: str = kind, options: str = options) -> str:
            models[kind] = one(
                conn.execute("SELECT movrec.train(%s, %s::jsonb, false)", (kind, options))
            )[0]
            m = one(
                conn.execute(
                    "SELECT metrics FROM model.registry WHERE model_id = %s", (models[kind],)
                )
            )[0]
            return f"model {models[kind]}, val RMSE {m['val_rmse']:.4f}, {options}"

        echo(f"train {kind} ...")
        run_step(f"train {kind}", dsn, train, steps)

    champion = models.get("hybrid", models.get("mf"))
    if champion is None:
        skipped("deploy", "no model was trained", steps)
    else:

        def deploy(conn: psycopg.Connection) -> str:
            conn.execute("SELECT movrec.deploy(%s)", (champion,))
            return f"model {champion}"

        echo("deploy ...")
        run_step("deploy", dsn, deploy, steps)

    if champion is None or steps[-1].status != "ok":
        skipped("refresh all users", "nothing deployed", steps)
    else:

        def refresh(conn: psycopg.Connection) -> str:
            users = [
                r[0]
                for r in conn.execute(
                    "SELECT DISTINCT user_id FROM movrec.watch_events ORDER BY 1"
                ).fetchall()
            ]
            rows = 0
            for i in range(0, len(users), REFRESH_BATCH):
                rows += one(
                    conn.execute(
                        "SELECT movrec.refresh_recommendations_batch(%s::int4[])",
                        (users[i : i + REFRESH_BATCH],),
                    )
                )[0]
            return f"{len(users):,} users, {rows:,} rows"

        echo("refresh all users ...")
        run_step("refresh all users", dsn, refresh, steps)

    def cf_all(conn: psycopg.Connection) -> str:
        conn.execute("DELETE FROM model.cf_queue")
        conn.execute(
            "INSERT INTO model.cf_queue (user_id) SELECT DISTINCT user_id FROM movrec.watch_events"
        )
        queued = one(conn.execute("SELECT count(*) FROM model.cf_queue"))[0]
        done = 0
        while n := one(conn.execute("SELECT movrec.cf_drain(%s)", (CF_BATCH,)))[0]:
            done += n
        left = one(conn.execute("SELECT count(*) FROM model.cf_queue"))[0]
        return f"{done:,} of {queued:,} users, {left:,} left in the queue"

    echo("CF for all users ...")
    run_step("CF all users", dsn, cf_all, steps)
    return steps


def table(steps: list[Step], title: str) -> str:
    """The steps as a fixed-width table."""

    def mb(v: float | None) -> str:
        return "-" if v is None else f"{v:,.0f}"

    lines = [
        title,
        f"{'step':<20} {'status':<8} {'seconds':>9} {'backend MB':>11} {'client MB':>10}  detail",
    ]
    for s in steps:
        secs = "-" if s.seconds is None else f"{s.seconds:,.1f}"
        lines.append(
            f"{s.name:<20} {s.status:<8} {secs:>9} {mb(s.backend_peak_mb):>11} "
            f"{mb(s.client_peak_mb):>10}  {s.detail}"
        )
    return "\n".join(lines)


def as_json(steps: list[Step], plan: generate.Plan, citus: bool) -> str:
    return json.dumps(
        {"plan": asdict(plan), "citus": citus, "steps": [asdict(s) for s in steps]}, indent=1
    )
