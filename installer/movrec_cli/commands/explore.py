"""`movrec recommend`, `similar`, `explain`: reading what the deployed model says."""

from __future__ import annotations

import click

from movrec_cli.connection import connect
from movrec_cli.options import EPILOG, dsn_option
from movrec_cli.output import table


@click.command(epilog=EPILOG)
@dsn_option
@click.argument("user_id", type=int)
@click.option("-k", default=10, show_default=True)
@click.option(
    "--genres",
    "--genre",
    "genres",
    multiple=True,
    help="only movies with any of these genres (repeatable; recommend()'s genres)",
)
@click.option("--min-year", type=int)
@click.option("--max-year", type=int)
def recommend(
    dsn: str | None,
    user_id: int,
    k: int,
    genres: tuple[str, ...],
    min_year: int | None,
    max_year: int | None,
) -> None:
    """Print USER_ID's top-k unseen movies (SELECT * FROM recommend(...)), best first.

    \b
    Examples:
      movrec recommend 7 -k 3
      movrec recommend 7 --genres Comedy --genres Drama --min-year 1990
    """
    with connect(dsn) as conn:
        cur = conn.execute(
            "SELECT * FROM movrec.recommend(%s, %s, genres => %s, min_year => %s, max_year => %s)",
            (user_id, k, list(genres) or None, min_year, max_year),
        )
        rows = cur.fetchall()
    # The headers are recommend()'s own column names, so the CLI and SQL say the same.
    click.echo(table(rows, [c.name for c in cur.description or ()]))


@click.command()
@dsn_option
@click.argument("movie_id", type=int)
@click.option("-k", default=10, show_default=True)
def similar(dsn: str | None, movie_id: int, k: int) -> None:
    """The k movies whose vectors are nearest to MOVIE_ID's (cosine)."""
    with connect(dsn) as conn:
        rows = conn.execute("SELECT * FROM movrec.similar_movies(%s, %s)", (movie_id, k)).fetchall()
    click.echo(table(rows, ["movie_id", "title", "similarity"]))


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


COMMANDS = [recommend, similar, explain]
