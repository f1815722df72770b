"""Serving maintenance from the command line: `movrec refresh`, `movrec similar`, `movrec explain`.

To register (main.py)::

    from movrec_cli.refresh import explain, refresh, similar
    cli.add_command(refresh)
    cli.add_command(similar)
    cli.add_command(explain)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import click
import psycopg

from movrec_cli.connection import connect
from movrec_cli.errors import CliError

# The same option as main.dsn_option (main imports this module, so it cannot be imported here).
dsn_option = click.option(
    "--dsn",
    envvar="MOVREC_DSN",
    metavar="DSN",
    help="libpq connection string [env MOVREC_DSN; default: the embedded cluster]",
)

ALL_USERS_SQL = """
SELECT user_id FROM model.user_latent_attributes
UNION SELECT DISTINCT user_id FROM movrec.watch_events
ORDER BY 1
"""


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    from movrec_cli.main import table  # main imports this module: import at call time

    return table(rows, headers)


def batches(users: Sequence[int], size: int) -> list[list[int]]:
    return [list(users[i : i + size]) for i in range(0, len(users), size)]


@click.command()
@dsn_option
@click.option("--user", "user_ids", type=int, multiple=True, help="only this user (repeatable)")
@click.option(
    "--batch-size", default=200, show_default=True, help="users per transaction (one batch each)"
)
@click.option("--drain", is_flag=True, help="only run the queue (model.refresh_queue) and exit")
@click.option(
    "--skip-embed", is_flag=True, help="do not embed new movies (movrec.embed_new_movies) first"
)
@click.option("--skip-stats", is_flag=True, help="do not rewrite model.movie_rating_stats first")
def refresh(
    dsn: str | None,
    user_ids: tuple[int, ...],
    batch_size: int,
    drain: bool,
    skip_embed: bool,
    skip_stats: bool,
) -> None:
    """Recompute model.model_recommendation (top 150 per user) for every user, or --user.

    \b
    Steps: embed movies added since the champion was trained (content models),
    rewrite the popularity statistics, then refresh users in batches, each batch
    one transaction (readers see a user's old list or new list, never a mix).
    With --drain: refresh only the users queued by ratings, until the queue is empty.
    """
    if batch_size < 1:
        raise CliError("--batch-size must be at least 1")
    with connect(dsn) as conn:
        if conn.execute("SELECT count(*) FROM model.champion").fetchone()[0] == 0:
            raise CliError("no model is deployed: train one first (`movrec train`)")
        if drain:
            total, started = 0, time.perf_counter()
            while n := conn.execute("SELECT movrec.serving_drain(%s)", (batch_size,)).fetchone()[0]:
                total += n
                click.echo(f"drained {total} jobs", err=True)
            left = conn.execute("SELECT count(*) FROM model.refresh_queue").fetchone()[0]
            click.echo(
                f"{total} queued users refreshed in {time.perf_counter() - started:.1f} s; "
                f"{left} jobs left (failed ones wait for their backoff)"
            )
            return
        if not skip_embed:
            try:
                n = conn.execute("SELECT movrec.embed_new_movies()").fetchone()[0]
                click.echo(f"embedded {n} new movie(s)", err=True)
            except psycopg.Error as e:  # e.g. a checkpoint this code cannot load: refresh anyway
                click.echo(f"warning: new movies not embedded: {e.diag.message_primary}", err=True)
        if not skip_stats:
            n = conn.execute("SELECT movrec.refresh_movie_stats()").fetchone()[0]
            click.echo(f"popularity statistics for {n} movies", err=True)
        users = list(user_ids) or [r[0] for r in conn.execute(ALL_USERS_SQL)]
        rows, started = 0, time.perf_counter()
        with click.progressbar(
            batches(users, batch_size),
            label="refresh",
            file=sys.stderr,
            show_pos=True,
            item_show_func=lambda b: f"users {b[0]}..{b[-1]}" if b else "",
        ) as bar:
            for batch in bar:
                rows += conn.execute(
                    "SELECT movrec.refresh_recommendations_batch(%s::int4[])", (batch,)
                ).fetchone()[0]
    elapsed = time.perf_counter() - started
    click.echo(
        f"{len(users)} users in {elapsed:.1f} s ({len(users) / max(elapsed, 1e-9):.0f} users/s); "
        f"{rows} rows in model.model_recommendation"
    )


@click.command()
@dsn_option
@click.argument("movie_id", type=int)
@click.option("-k", default=10, show_default=True)
def similar(dsn: str | None, movie_id: int, k: int) -> None:
    """The k movies whose vectors are nearest to MOVIE_ID's (cosine)."""
    with connect(dsn) as conn:
        rows = conn.execute("SELECT * FROM movrec.similar_movies(%s, %s)", (movie_id, k)).fetchall()
    click.echo(_table(rows, ["movie_id", "title", "similarity"]))


@click.command()
@dsn_option
@click.argument("user_id", type=int)
@click.argument("movie_id", type=int)
@click.option("-k", default=3, show_default=True)
def explain(dsn: str | None, user_id: int, movie_id: int, k: int) -> None:
    """Why MOVIE_ID suits USER_ID: the rated movies that contribute most."""
    with connect(dsn) as conn:
        rows = conn.execute(
            "SELECT reason FROM movrec.explain(%s, %s, %s)", (user_id, movie_id, k)
        ).fetchall()
    if not rows:
        click.echo("no rated movie supports it (nothing the user liked is close to it)")
    for (reason,) in rows:
        click.echo(reason)
