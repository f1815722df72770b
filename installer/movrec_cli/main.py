"""The movrec command line: assembles the command groups of movrec_cli.commands.

Every command that talks to a database takes --dsn, else MOVREC_DSN, else the
embedded cluster (`movrec db up`).  Errors end as one line on stderr
(movrec_cli.errors.MovrecGroup).
"""

from __future__ import annotations

import click
from movrec import __version__

from movrec_cli.commands import (
    bench,
    cf,
    data,
    db,
    demo,
    explore,
    generate,
    lifecycle,
    models,
    refresh,
    worker,
)
from movrec_cli.errors import MovrecGroup

GROUPS = (db, lifecycle, data, models, explore, refresh, cf, worker, generate, bench, demo)


@click.group(cls=MovrecGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="movrec")
def cli() -> None:
    """movrec: a movie recommender that runs inside PostgreSQL.

    \b
    Quick start:
      movrec db up            start the embedded cluster (.movrec/)
      movrec install          install or upgrade the SQL
      movrec load demo        load the demo catalogue and ratings
      movrec train            train and deploy the base model
      psql "$(movrec db dsn)" -c 'SELECT * FROM recommend(1)'
    """


for _group in GROUPS:
    for _command in _group.COMMANDS:
        cli.add_command(_command)


def main() -> None:  # pragma: no cover
    cli()
