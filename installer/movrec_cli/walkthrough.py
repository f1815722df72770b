"""`movrec demo`: every step of the path, printed as it happens."""

from __future__ import annotations

import time

import click
import numpy as np

from movrec_cli import schema
from movrec_cli.cluster import Cluster
from movrec_cli.connection import connect, one
from movrec_cli.demo_data import load_demo
from movrec_cli.output import table

DEMO_USER = 7


def step(n: int, text: str) -> float:
    click.secho(f"\n[{n}/6] {text}", bold=True)
    return time.perf_counter()


def done(started: float) -> None:
    click.echo(f"      ({time.perf_counter() - started:.1f} s)")


def run(dsn: str | None) -> None:
    t = step(1, "PostgreSQL with PL/Python and pgvector")
    if dsn is None:
        cluster = Cluster.default()
        cluster.init()
        cluster.start()
        click.echo(f"embedded cluster on port {cluster.port} ({cluster.data})")
    done(t)
    with connect(dsn) as conn:
        t = step(2, "movrec install")
        click.echo(schema.install(conn).message)
        done(t)

        t = step(3, "demo data: hand-typed catalogue + synthetic users with planted tastes")
        movies, ratings = load_demo(conn)
        n = one(conn.execute("SELECT count(*), count(DISTINCT user_id) FROM movrec.watch_events"))
        click.echo(f"{movies} movies, {n[0]} ratings by {n[1]} users ({ratings} new)")
        done(t)

        t = step(
            4, "train the base matrix factorisation in the database: SELECT movrec.train('mf')"
        )
        model_id = one(conn.execute("SELECT movrec.train('mf')"))[0]
        m = one(
            conn.execute("SELECT metrics FROM model.registry WHERE model_id = %s", (model_id,))
        )[0]
        click.echo(
            f"model {model_id} deployed: validation RMSE {m['val_rmse']:.4f}, MAE {m['val_mae']:.4f} "
            f"(predicting the global mean: RMSE {m['baseline_val_rmse']:.4f})"
        )
        done(t)

        t = step(5, f"SELECT * FROM recommend({DEMO_USER})")
        before = conn.execute("SELECT * FROM recommend(%s)", (DEMO_USER,)).fetchall()
        click.echo(table(before, ["movie_id", "title", "score", "predicted_rating", "source"]))
        done(t)

        top_id, top_title = before[0][0], before[0][1]
        t = step(
            6, f"user {DEMO_USER} rates '{top_title}' 0.5 stars: the trigger moves their vector"
        )
        vec = "SELECT embedding::real[] FROM model.user_latent_attributes WHERE user_id = %s"
        u0 = np.array(one(conn.execute(vec, (DEMO_USER,)))[0])
        conn.execute(
            "INSERT INTO movrec.watch_events (user_id, movie_id, rating) VALUES (%s, %s, 0.5)",
            (DEMO_USER, top_id),
        )
        u1 = np.array(one(conn.execute(vec, (DEMO_USER,)))[0])
        archived = one(
            conn.execute(
                "SELECT count(*) FROM model.user_latent_attributes_backups WHERE user_id = %s",
                (DEMO_USER,),
            )
        )[0]
        click.echo(
            f"vector[:5] before {np.round(u0[:5], 4)}\n          after  {np.round(u1[:5], 4)}"
            f"\n|change| = {np.linalg.norm(u1 - u0):.4f}; {archived} old vector(s) archived"
        )
        after = conn.execute("SELECT * FROM recommend(%s)", (DEMO_USER,)).fetchall()
        old = {r[0]: r[3] for r in before}
        rows = [(*r[:2], old.get(r[0]), r[3], "no" if r[0] in old else "yes") for r in after]
        # Every column has a header: predicted ratings before and after, and whether the
        # movie entered the top list with this rating.
        click.echo(table(rows, ["movie_id", "title", "before", "after", "new"]))
        done(t)
