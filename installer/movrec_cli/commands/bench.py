"""`movrec bench`: quality against the peers, serving speed, online learning, CF latency."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from movrec_cli.cluster import Cluster
from movrec_cli.connection import connect
from movrec_cli.errors import CliError
from movrec_cli.generate import ML20M, TRAIN_OPTIONS
from movrec_cli.options import data_option, dsn_option, json_option, movielens_small
from movrec_cli.output import note


@click.group()
def bench() -> None:
    """Benchmarks: quality against the peers, serving speed, online learning, CF latency."""


@bench.command("quality")
@dsn_option
@data_option(required=True)
@click.option("--models", default="mf,hybrid", show_default=True, help="movrec models to train")
@click.option(
    "--peers",
    default="popularity,svd,svdpp,knnbaseline,als,bpr,ease,ials",
    show_default=True,
    help="peers to run (Surprise and implicit ones need movrec[bench]); '' for none",
)
@click.option(
    "--options",
    default="{}",
    help='per-model training options, e.g. \'{"hybrid": {"epochs": 20}}\'',
)
@click.option(
    "--protocols",
    default="random,time",
    show_default=True,
    help="splits to report: random (90/10 shuffle) and/or time (each user's last 10 %)",
)
@click.option(
    "--tmdb/--no-tmdb",
    default=True,
    show_default=True,
    help="load the TMDB metadata for movrec's models (--no-tmdb: titles and genres only)",
)
@click.option(
    "--train-threads",
    type=click.IntRange(1, 256),
    default=None,
    help="movrec.settings.train_threads of the scratch database [default: all cores]; 1 on a "
    "shared machine, where two torch threads waiting on each other ran 3x slower than one",
)
@click.option(
    "--seeds",
    default="",
    help="comma-separated training seeds: each movrec model trains once per seed on the same "
    "split, then a row of the means and the spread [default: the models' own seed]",
)
@json_option("the rows", " (for `movrec report --bench FILE`)")
def bench_quality(
    dsn: str | None,
    data_dir: Path,
    models: str,
    peers: str,
    options: str,
    protocols: str,
    tmdb: bool,
    train_threads: int | None,
    seeds: str,
    json_out: Path | None,
) -> None:
    """movrec's models and the peers on one split per protocol, one table each.

    \b
    Protocols: random = ratings.csv shuffled with numpy.random.default_rng(42).permutation,
    first 90 % train, the rest test; time = per user, the last 10 % of their ratings by
    timestamp are test. movrec trains in a scratch database (movrec_bench) from the
    training rows loaded through the real loaders and ETL; the peers train on the same
    rows. Relevant = test ratings >= 4; candidates = every movie the user did not rate in
    training.
    """
    from movrec_cli import bench_quality as bq
    from movrec_cli import schema as sch

    echo = note
    if dsn is None:
        cluster = Cluster.default()
        cluster.ensure_database(bq.BENCH_DB)
        bench_dsn = cluster.dsn(bq.BENCH_DB)
    else:
        bench_dsn = dsn
    kinds = tuple(k for k in models.split(",") if k)
    try:
        seed_list = tuple(int(s) for s in seeds.split(",") if s.strip())
    except ValueError:
        raise click.BadParameter(
            f"{seeds!r} is not a comma-separated list of integers", param_hint="--seeds"
        ) from None
    which = tuple(p for p in peers.split(",") if p)
    ml = movielens_small(data_dir)
    tables: dict[str, list[dict[str, Any]]] = {}
    for protocol in (p for p in protocols.split(",") if p):
        if protocol not in bq.PROTOCOLS:
            raise click.BadParameter(f"unknown protocol {protocol!r}", param_hint="--protocols")
        rows: list[dict[str, Any]] = []
        if kinds:
            with connect(bench_dsn) as conn:
                if dsn is None:  # a scratch database: nothing of the last run stays
                    sch.uninstall(conn, drop_data=True)
                sch.install(conn)
                if train_threads is not None:
                    conn.execute("UPDATE movrec.settings SET train_threads = %s", (train_threads,))
                rows += bq.movrec_rows(
                    conn,
                    data_dir,
                    kinds,
                    json.loads(options),
                    echo,
                    protocol=protocol,
                    tmdb=tmdb,
                    seeds=seed_list,
                )
        if which:
            rows += bq.peer_table(ml / "ratings.csv", protocol, which=which, progress=echo)
        tables[protocol] = rows
        click.echo(f"\nprotocol: {protocol}; movrec models {'with' if tmdb else 'without'} TMDB")
        click.echo(bq.format_table(rows))
    if json_out is not None:
        bq.write_json(tables, json_out, data=str(data_dir), tmdb=tmdb, train_threads=train_threads)
        note(f"bench: wrote {json_out}")


@bench.command("serving")
@click.option(
    "--dsn", metavar="DSN", help="a `movrec generate` database [default: the embedded movrec_20m]"
)
@click.option("-T", "seconds", default=15, show_default=True, help="seconds per pgbench run")
@click.option("-c", "clients", default=2, show_default=True, help="pgbench clients (and threads)")
@click.option("--rounds", default=2, show_default=True, help="rounds of the insert variants")
@click.option(
    "--skip-refit", is_flag=True, help="do not measure inserts with movrec.online_update = refit"
)
@click.option(
    "--portable",
    "portable_dsn",
    metavar="DSN",
    help="compare with the portable install in this database (`movrec install --portable` "
    "there first; it gets --dsn's data and champion): recall@10, recommend and insert tps",
)
@click.option(
    "--recall-users", default=500, show_default=True, help="--portable: users sampled for recall"
)
@click.option(
    "--citus",
    is_flag=True,
    help="instead: a local Citus cluster (coordinator + 2 workers) against a single node, "
    "same generated data and model (needs Citus: `make setup` with CITUS_SRC)",
)
@click.option("--users", default=20_000, show_default=True, help="--citus: users to generate")
@click.option("--movies", default=3_000, show_default=True, help="--citus: movies to generate")
@click.option(
    "--ratings", default=1_000_000, show_default=True, help="--citus: ratings to generate"
)
def bench_serving(
    portable_dsn: str | None,
    recall_users: int,
    citus: bool,
    users: int,
    movies: int,
    ratings: int,
    **options: Any,
) -> None:
    """recommend tps/p50/p99, rating tps with the online update vs a plain insert,
    first recommend on a new connection, memory per backend (pgbench, 2 clients).

    With --portable DSN: the same against the portable install, with recall@10 of its
    top-k.  With --citus: recommend and rating tps and the per-call overhead of a local
    3-node Citus cluster against a single node, in temporary clusters (ports
    59400-59413), removed after.
    """
    if portable_dsn and citus:
        raise click.UsageError("--portable and --citus are separate benchmarks: pick one")
    if portable_dsn:
        from movrec_cli.bench_portable import run
        from movrec_cli.bench_serving import _resolve
        from movrec_cli.generate import DATABASE

        run(
            _resolve(options["dsn"], DATABASE),
            portable_dsn,
            options["seconds"],
            options["clients"],
            recall_users,
        )
        return
    if citus:
        from movrec_cli.bench_citus import run_citus

        run_citus(options["seconds"], options["clients"], users, movies, ratings)
        return
    from movrec_cli.bench_serving import run_serving

    run_serving(**options)


@bench.command("online")
@data_option(required=True)
@click.option(
    "--dsn", metavar="DSN", help="scratch database, emptied [default: the embedded movrec_online]"
)
@click.option(
    "--holdout", default=0.1, show_default=True, help="fraction of users held out of training"
)
@click.option("--train-options", default='{"epochs": 25}', show_default=True)
@click.option(
    "--refit-reg",
    default=None,
    type=float,
    help="movrec.refit_reg for the refit rows [default: its default]",
)
@click.option("--seed", default=42, show_default=True)
def bench_online(**options: Any) -> None:
    """Online learning quality: default vector, sgd, refit and full retrain after 5/10/20 ratings."""
    from movrec_cli.bench_online import run_online

    options["data_dir"] = movielens_small(options["data_dir"])
    run_online(**options)


@bench.command("cf")
@dsn_option
@data_option(
    required=False,
    extra="; the naive version reads its ratings.csv [default: only an export of watch_events]",
)
@click.option("--users", default=50, show_default=True, help="users timed in the database")
@click.option(
    "--naive-users", default=10, show_default=True, help="users timed in the naive version"
)
@click.option("--seed", default=0, show_default=True)
def bench_cf_command(
    dsn: str | None, data_dir: Path | None, users: int, naive_users: int, seed: int
) -> None:
    """Per-user latency p50/p99: movrec.user_to_user() vs the naive scan-the-file version."""
    with connect(dsn) as conn:
        from movrec_cli.bench_cf import bench_cf

        bench_cf(conn, data_dir, users, naive_users, seed)


@bench.command("scale")
@click.option(
    "--dsn",
    envvar="MOVREC_SCALE_DSN",
    metavar="DSN",
    help="target database, EMPTIED (movrec is uninstalled with its data) [default: the embedded "
    "cluster's movrec_scale, created if missing]",
)
@click.option("--users", default=ML20M[0], show_default=True)
@click.option("--movies", default=ML20M[1], show_default=True)
@click.option(
    "--ratings", default=ML20M[2], show_default=True, help="target (about; every user rates >= 20)"
)
@click.option("--seed", default=42, show_default=True)
@click.option("--mf-options", default=TRAIN_OPTIONS, show_default=True, help="movrec.train() JSON")
@click.option(
    "--hybrid-options", default=TRAIN_OPTIONS, show_default=True, help="movrec.train() JSON"
)
@click.option(
    "--citus",
    is_flag=True,
    help="run on a local Citus cluster (a coordinator and 2 workers, started in a temporary "
    "directory and removed after) instead of --dsn",
)
@click.option("--port", default=59450, show_default=True, help="first port of the --citus nodes")
@json_option("the steps")
def bench_scale(
    dsn: str | None,
    users: int,
    movies: int,
    ratings: int,
    seed: int,
    mf_options: str,
    hybrid_options: str,
    citus: bool,
    port: int,
    json_out: Path | None,
) -> None:
    """The nightly jobs end to end: generate -> train mf -> train hybrid -> deploy -> refresh
    every user -> CF for every user, with each step's time and peak memory.

    \b
    Peak memory: the step's backend (VmHWM; the server must run on this machine) and this
    process.  A failed step is shown with its error; the steps needing it are skipped.
    """
    import shutil
    import tempfile

    from movrec_cli.bench_scale import DATABASE, as_json, run_scale, table
    from movrec_cli.cluster import CitusCluster
    from movrec_cli.generate import Plan

    plan = Plan(users, movies, ratings, seed)
    home: Path | None = None
    nodes: CitusCluster | None = None
    try:
        if citus:
            home = Path(tempfile.mkdtemp(prefix="movrec-bench-scale-", dir="/tmp"))
            home.chmod(0o755)
            nodes = CitusCluster(home, port)
            nodes.start()
            target = nodes.create_database(DATABASE)
        elif dsn is None:
            cluster = Cluster.default()
            if not cluster.running():
                raise CliError("the embedded cluster is not running: `movrec db up`, or --dsn")
            cluster.ensure_database(DATABASE)
            target = cluster.dsn(DATABASE)
        else:
            target = dsn
        note(f"database: {target}")
        steps = run_scale(target, plan, mf_options, hybrid_options, citus, note)
    finally:
        if nodes is not None:
            nodes.stop()
        if home is not None:
            shutil.rmtree(home, ignore_errors=True)
    where = "Citus (coordinator + 2 workers)" if citus else "single node"
    click.echo(
        table(
            steps,
            f"movrec bench scale: {users:,} users, {movies:,} movies, ~{ratings:,} ratings, {where}",
        )
    )
    if json_out is not None:
        json_out.write_text(as_json(steps, plan, citus))


COMMANDS = [bench]
