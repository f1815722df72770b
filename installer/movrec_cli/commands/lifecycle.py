"""`movrec install`, `uninstall`, `status`, `doctor`: movrec's SQL in a database, and its health."""

from __future__ import annotations

import datetime

import click
import psycopg

from movrec_cli import schema
from movrec_cli.connection import connect, one
from movrec_cli.errors import CliError
from movrec_cli.options import EPILOG, dsn_option
from movrec_cli.output import table


@click.command(epilog=EPILOG)
@dsn_option
@click.option(
    "--venv", metavar="PATH", help="venv the backends load movrec from [default: this CLI's]"
)
@click.option(
    "--portable",
    is_flag=True,
    help="SQL, plpgsql and pgvector only, for managed PostgreSQL (no plpython3u, no superuser: "
    "the database owner suffices); training and the other jobs then run in this CLI",
)
@click.option(
    "--app-role", metavar="ROLE", help="--portable: an existing role to use as movrec_user"
)
@click.option(
    "--admin-role", metavar="ROLE", help="--portable: an existing role to use as movrec_admin"
)
@click.option(
    "--citus",
    is_flag=True,
    help="on a Citus coordinator: also distribute the tables over the nodes (movrec.distribute())",
)
def install(
    dsn: str | None,
    venv: str | None,
    portable: bool,
    app_role: str | None,
    admin_role: str | None,
    citus: bool,
) -> None:
    """Install or upgrade movrec's SQL in one transaction; a rerun changes nothing.

    Also pins the venv backends load movrec from (movrec.installs) and adds movrec
    to the database's search_path.  In a database where CREATE EXTENSION installed
    movrec, it runs ALTER EXTENSION movrec UPDATE and does the same.

    \b
    Examples:
      movrec install
      movrec install --dsn 'host=db1 dbname=app user=postgres'
      movrec install --portable --dsn 'host=x.rds.amazonaws.com dbname=app user=app_owner'
      movrec install --citus --dsn 'host=coordinator dbname=app user=postgres'
    """
    with connect(dsn) as conn:
        try:
            click.echo(
                schema.install(conn, venv, portable, app_role, admin_role, citus=citus).message
            )
        except psycopg.Error as e:
            raise CliError(f"install failed, the database is unchanged: {str(e).strip()}") from None


@click.command()
@dsn_option
@click.option(
    "--drop-data", is_flag=True, help="also drop the movrec and model schemas with all data"
)
def uninstall(dsn: str | None, drop_data: bool) -> None:
    """Remove movrec's functions and triggers; tables stay unless --drop-data."""
    with connect(dsn) as conn:
        click.echo(schema.uninstall(conn, drop_data))


@click.command(epilog=EPILOG)
@dsn_option
def status(dsn: str | None) -> None:
    """Installed version, row counts, and the view movrec.status: queue depths and the oldest
    job's age, the champion's age and data, each pg_cron job's last successful run.

    \b
    Alert on it from SQL: SELECT * FROM movrec.status WHERE item = 'refresh_queue'
    AND age > interval '10 minutes'.
    """
    with connect(dsn) as conn:
        version = schema.installed_version(conn)
        click.echo(f"installed: {version or 'no'}")
        if one(conn.execute("SELECT to_regclass('movrec.watch_events')"))[0] is None:
            return
        counts = one(
            conn.execute(
                """SELECT (SELECT count(*) FROM movrec.movies), (SELECT count(*) FROM movrec.watch_events),
                      (SELECT count(DISTINCT user_id) FROM movrec.watch_events),
                      (SELECT count(*) FROM model.user_latent_attributes),
                      (SELECT count(*) FROM model.registry)"""
            )
        )
        click.echo(
            "movies: {}  ratings: {}  users: {}  user vectors: {}  registered models: {}".format(
                *counts
            )
        )
        rows = conn.execute("SELECT item, value, age, detail FROM movrec.status").fetchall()
        if not any(r[0] == "champion" for r in rows):
            click.echo("champion: none (movrec train)")
    click.echo(
        table([(i, v, _age(a), d) for i, v, a, d in rows], ["item", "value", "age", "detail"])
    )


def _age(age: datetime.timedelta | None) -> str | None:
    if age is None:
        return None
    s = int(age.total_seconds())
    return (
        f"{s // 86400}d {s % 86400 // 3600}h"
        if s >= 86400
        else f"{s // 3600}h {s % 3600 // 60:02d}m {s % 60:02d}s"
    )


@click.command(epilog=EPILOG)
@dsn_option
def doctor(dsn: str | None) -> None:
    """Check the backend: Python, packages, torch/CUDA, pgvector, threads, venv."""
    with connect(dsn) as conn:
        rows = conn.execute("SELECT check_name, ok, detail, fix FROM movrec.doctor()").fetchall()
    for name, ok, detail, fix in rows:
        click.echo(
            f"{'ok ' if ok else 'BAD'} {name:<9} {detail}" + (f"\n    fix: {fix}" if fix else "")
        )
    if not all(r[1] for r in rows):
        raise SystemExit(1)


COMMANDS = [install, uninstall, status, doctor]
