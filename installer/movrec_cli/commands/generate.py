"""`movrec generate`: a synthetic MovieLens-20M-sized database (movrec_cli.generate)."""

from __future__ import annotations

import time

import click
import psycopg

from movrec_cli import schema
from movrec_cli.cluster import Cluster
from movrec_cli.connection import print_notice
from movrec_cli.errors import CliError
from movrec_cli.generate import DATABASE, ML20M, TRAIN_OPTIONS, Plan, load_and_train
from movrec_cli.output import note


@click.command("generate")
@click.option(
    "--dsn",
    envvar="MOVREC_GENERATE_DSN",
    metavar="DSN",
    help=f"target database (emptied: movrec is uninstalled with its data) [default: "
    f"the embedded cluster's {DATABASE}, created if missing, emptied]",
)
@click.option("--users", default=ML20M[0], show_default=True)
@click.option("--movies", default=ML20M[1], show_default=True)
@click.option(
    "--ratings", default=ML20M[2], show_default=True, help="target (about; every user rates >= 20)"
)
@click.option("--seed", default=42, show_default=True)
@click.option(
    "--train/--no-train", default=True, show_default=True, help="train and deploy MF afterwards"
)
@click.option("--train-options", default=TRAIN_OPTIONS, show_default=True)
def generate(
    dsn: str | None,
    users: int,
    movies: int,
    ratings: int,
    seed: int,
    train: bool,
    train_options: str,
) -> None:
    """A synthetic MovieLens-20M-sized dataset: power-law popularity, planted tastes.

    Loaded with binary COPY (triggers and FK checks off, indexes rebuilt after),
    then `movrec.train('mf', ...)`; prints the time of each step.
    """
    echo = note
    t0 = time.perf_counter()
    if dsn is None:
        cluster = Cluster.default()
        if not cluster.running():
            raise CliError("the embedded cluster is not running: `movrec db up`")
        cluster.ensure_database(DATABASE)
        dsn = cluster.dsn(DATABASE)
        echo(f"database {DATABASE}: {dsn}")
    plan = Plan(users, movies, ratings, seed)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.add_notice_handler(print_notice)
        t = time.perf_counter()
        schema.uninstall(conn, drop_data=True)
        schema.install(conn)
        echo(f"install: {time.perf_counter() - t:.1f} s")
        load_and_train(conn, plan, train_options if train else None, echo)
    echo(f"total: {time.perf_counter() - t0:.1f} s")
    click.echo(dsn)


COMMANDS = [generate]
