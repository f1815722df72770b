"""`movrec bench serving --citus`: recommend and rating tps on a local Citus cluster (a
coordinator and 2 workers) against a single node, with the same generated data and the same
model.

All nodes share this machine's cores, so a local cluster shows what Citus costs per call (the
coordinator plans each call and hands it to the user's node over a connection), never what it
gains: more machines and more data than one machine holds.  The table gives the per-call
overhead in ms (mean latency on Citus minus on the single node).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import psycopg
from psycopg.types.json import Jsonb

from movrec_cli import generate, schema
from movrec_cli.bench_serving import load_average, pgbench
from movrec_cli.cluster import CitusCluster, Cluster
from movrec_cli.connection import one
from movrec_cli.output import note

DATABASE = "movrec_citus_bench"
# A model's registry row, but for its generated id and stamps: what copy_model carries over.
REGISTRY_COLUMNS = (
    "kind, dim, params, data_snapshot, metrics, global_mean, checkpoint, serving_movie_ids, "
    "serving_matrix, serving_ranking, default_embedding, default_bias, duration_s"
)


def copy_model(source: str, target: str, model_id: int) -> int:
    """Register model ``model_id`` of the database ``source`` in ``target`` (the same
    checkpoint, serving blobs and catalogue stamp) and return its id there."""
    with psycopg.connect(source) as s:
        row = s.execute(
            f"SELECT {REGISTRY_COLUMNS} FROM model.registry WHERE model_id = %s", (model_id,)
        ).fetchone()
    if row is None:
        raise ValueError(f"model {model_id} is not in the source's registry")
    values = [Jsonb(v) if isinstance(v, dict) else v for v in row]
    with psycopg.connect(target, autocommit=True) as t:
        return int(
            one(
                t.execute(
                    f"INSERT INTO model.registry ({REGISTRY_COLUMNS}) VALUES "
                    f"({', '.join(['%s'] * len(values))}) RETURNING model_id",
                    values,
                )
            )[0]
        )


def _prepare(dsn: str, plan: generate.Plan, citus: bool) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        schema.install(conn)
        generate.load(conn, plan, lambda _: None)
        if citus:  # the data goes into the shards as the tables are distributed
            schema.install(conn, citus=True)


def run_citus(seconds: int, clients: int, n_users: int, n_movies: int, n_ratings: int) -> None:
    """Start a single node and a 3-node Citus cluster in a temporary directory, load the same
    generated data into both, train MF on the single node and deploy that model on both, then
    pgbench recommend() and a rating through the triggers on each; prints a table and JSON."""
    home = Path(tempfile.mkdtemp(prefix="movrec-bench-citus-", dir="/tmp"))
    home.chmod(0o755)
    single = Cluster(home / "single", 59400)
    cluster = CitusCluster(home / "citus", 59410)
    plan = generate.Plan(n_users, n_movies, n_ratings, seed=7)
    results: dict[str, Any] = {"plan": plan.__dict__, "clients": clients, "seconds": seconds}
    try:
        t = time.perf_counter()
        single.init()
        single.start()
        cluster.start()
        single.ensure_database(DATABASE)
        single_dsn = single.dsn(DATABASE)
        citus_dsn = cluster.create_database(DATABASE)
        note(
            f"clusters up in {time.perf_counter() - t:.0f} s (single node; coordinator + 2 workers)"
        )
        t = time.perf_counter()
        _prepare(single_dsn, plan, citus=False)
        _prepare(citus_dsn, plan, citus=True)
        note(
            f"{n_users:,} users, {n_movies:,} movies, {n_ratings:,} ratings loaded into both in "
            f"{time.perf_counter() - t:.0f} s"
        )
        with psycopg.connect(single_dsn, autocommit=True) as conn:
            model_id = one(
                conn.execute("SELECT movrec.train('mf', %s)", (generate.TRAIN_OPTIONS,))
            )[0]
        copied = copy_model(single_dsn, citus_dsn, model_id)
        with psycopg.connect(citus_dsn, autocommit=True) as conn:
            conn.execute("SELECT movrec.deploy(%s)", (copied,))
        variables = {"n_users": n_users, "n_movies": n_movies}
        runs = [
            ("recommend(user, 10)", "recommend.sql"),
            ("rating (all triggers)", "rate_online.sql"),
        ]
        for _, script in runs:  # warm-up: caches, shared matrices, connections between nodes
            for dsn in (single_dsn, citus_dsn):
                pgbench(dsn, script, variables, 3, clients)
        header = (
            f"{'':<24} {'single tps':>10} {'Citus tps':>10} {'single ms':>10} {'Citus ms':>10} "
            f"{'overhead ms':>12}   load avg"
        )
        note(header)
        for name, script in runs:
            one_node = pgbench(single_dsn, script, variables, seconds, clients)
            three = pgbench(citus_dsn, script, variables, seconds, clients)
            overhead = three["mean_ms"] - one_node["mean_ms"]
            results[name] = {"single": one_node, "citus": three, "overhead_ms": overhead}
            note(
                f"{name:<24} {one_node['tps']:>10,.0f} {three['tps']:>10,.0f} "
                f"{one_node['mean_ms']:>10.2f} {three['mean_ms']:>10.2f} {overhead:>12.2f}   "
                f"{load_average()}"
            )
        note(
            "a local cluster shares one machine's cores: this is Citus's per-call overhead, not its "
            "gain (that needs more machines)"
        )
    finally:
        cluster.stop()
        single.stop()
        shutil.rmtree(home, ignore_errors=True)
    click.echo(json.dumps(results, indent=1))
