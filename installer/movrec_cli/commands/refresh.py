"""`movrec refresh`: recompute the stored recommendations (model.model_recommendation)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import click
import psycopg

from movrec_cli import inprocess, schema
from movrec_cli.connection import connect, one
from movrec_cli.errors import CliError
from movrec_cli.options import EPILOG, dsn_option
from movrec_cli.output import note, progress

ALL_USERS_SQL = """
SELECT user_id FROM model.user_latent_attributes
UNION SELECT DISTINCT user_id FROM movrec.watch_events
ORDER BY 1
"""


def batches(users: Sequence[int], size: int) -> list[list[int]]:
    return [list(users[i : i + size]) for i in range(0, len(users), size)]


@click.command(epilog=EPILOG)
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
        if one(conn.execute("SELECT count(*) FROM model.champion"))[0] == 0:
            raise CliError("no model is deployed: train one first (`movrec train`)")
        if drain:
            total, started = 0, time.perf_counter()
            queued = one(conn.execute("SELECT count(*) FROM model.refresh_queue"))[0]
            with progress(None, "refresh --drain", total=queued, unit="job") as bar:
                while n := one(conn.execute("SELECT movrec.serving_drain(%s)", (batch_size,)))[0]:
                    total += n
                    bar.update(n)
            left = one(conn.execute("SELECT count(*) FROM model.refresh_queue"))[0]
            click.echo(
                f"{total} queued users refreshed in {time.perf_counter() - started:.1f} s; "
                f"{left} jobs left (failed ones wait for their backoff)"
            )
            return
        if not skip_embed:
            try:
                if schema.install_kind(conn) == "portable":  # torch runs here, not there
                    n = inprocess.embed_new_movies(conn)
                else:
                    n = one(conn.execute("SELECT movrec.embed_new_movies()"))[0]
                note(f"embedded {n} new movie(s)")
            except psycopg.Error as e:  # e.g. a checkpoint this code cannot load: refresh anyway
                note(f"warning: new movies not embedded: {e.diag.message_primary}")
            except CliError as e:  # the same, from the CLI's own process
                note(f"warning: new movies not embedded: {e}")
        if not skip_stats:
            n = one(conn.execute("SELECT movrec.refresh_movie_stats()"))[0]
            note(f"popularity statistics for {n} movies")
        users = list(user_ids) or [r[0] for r in conn.execute(ALL_USERS_SQL)]
        rows, started = 0, time.perf_counter()
        with progress(None, "refresh", total=len(users), unit="user") as bar:
            for batch in batches(users, batch_size):
                rows += one(
                    conn.execute(
                        "SELECT movrec.refresh_recommendations_batch(%s::int4[])", (batch,)
                    )
                )[0]
                bar.update(len(batch))
    elapsed = time.perf_counter() - started
    click.echo(
        f"{len(users)} users in {elapsed:.1f} s ({len(users) / max(elapsed, 1e-9):.0f} users/s); "
        f"{rows} rows in model.model_recommendation"
    )


COMMANDS = [refresh]
