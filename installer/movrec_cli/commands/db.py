"""`movrec db`: the embedded PostgreSQL cluster in ./.movrec (MOVREC_HOME)."""

from __future__ import annotations

import click

from movrec_cli.cluster import Cluster


@click.group()
def db() -> None:
    """Run the embedded PostgreSQL cluster (MOVREC_HOME, default ./.movrec)."""


@db.command("up")
def db_up() -> None:
    """Create (once) and start the embedded cluster, and its `movrec` database."""
    cluster = Cluster.default()
    if cluster.init():
        click.echo(f"initialised a cluster in {cluster.data}")
    cluster.start()
    click.echo(f"running on port {cluster.port}, socket {cluster.socket_dir}")


@db.command("down")
def db_down() -> None:
    """Stop the embedded cluster (its data stays)."""
    click.echo("stopped" if Cluster.default().stop() else "not running")


@db.command("status")
def db_status() -> None:
    """Say whether the embedded cluster runs, and where."""
    c = Cluster.default()
    state = "running" if c.running() else ("stopped" if c.initialized() else "not created")
    click.echo(f"{state}: {c.data} port {c.port}")


@db.command("dsn")
def db_dsn() -> None:
    """Print the embedded cluster's connection string (for psql "$(movrec db dsn)")."""
    click.echo(Cluster.default().dsn())


COMMANDS = [db]
