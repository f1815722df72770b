"""`movrec db`: the embedded PostgreSQL cluster in ./.movrec (MOVREC_HOME)."""

from __future__ import annotations

import click

from movrec_cli.cluster import Cluster, Standby


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


@db.group("standby")
def db_standby() -> None:
    """A local hot standby of the embedded cluster (tests, demos): MOVREC_HOME/standby."""


@db_standby.command("up")
def standby_up() -> None:
    """Copy the running cluster once (pg_basebackup -R) and start the copy as a standby."""
    standby = Standby.of(Cluster.default())
    if standby.init():
        click.echo(f"copied the primary into {standby.data}")
    standby.start()
    click.echo(f"standby running on port {standby.port}, socket {standby.socket_dir}")


@db_standby.command("down")
@click.option(
    "--remove", is_flag=True, help="Also delete the copy (the next `up` makes a new one)."
)
def standby_down(remove: bool) -> None:
    """Stop the standby (its copy stays, and catches up when started again)."""
    standby = Standby.of(Cluster.default())
    if remove:
        click.echo("removed" if standby.remove() else "no standby")
    else:
        click.echo("stopped" if standby.stop() else "not running")


@db_standby.command("status")
def standby_status() -> None:
    """Say whether the standby runs, where, and how many bytes of WAL its replay trails."""
    s = Standby.of(Cluster.default())
    if not s.running():
        click.echo(f"{'stopped' if s.initialized() else 'not created'}: {s.data} port {s.port}")
        return
    lag = s.replay_lag_bytes() if s.primary is not None and s.primary.running() else None
    behind = "not streaming" if lag is None else f"replay {lag} bytes behind the primary"
    click.echo(f"running: {s.data} port {s.port} ({behind}); dsn: {s.dsn()}")


@db_standby.command("dsn")
def standby_dsn() -> None:
    """Print the standby's connection string (for psql "$(movrec db standby dsn)")."""
    click.echo(Standby.of(Cluster.default()).dsn())


COMMANDS = [db]
