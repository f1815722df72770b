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
from movrec_cli.options import EPILOG

GROUPS = (db, lifecycle, data, models, explore, refresh, cf, worker, generate, bench, demo)


@click.group(
    cls=MovrecGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG
)
@click.version_option(__version__, prog_name="movrec")
def cli() -> None:
    """movrec: a movie recommender that runs inside PostgreSQL.

    Models train in the database (PL/Python + PyTorch), recommend() answers
    from the deployed champion, and every rating moves its user's vector.

    \b
    Quick start (after `make setup` and `. .venv/bin/activate`):
      movrec db up              start the embedded cluster (./.movrec, port 54329)
      movrec install            install or upgrade movrec's SQL in its database
      movrec load demo          load the demo catalogue and synthetic ratings
      movrec train --model mf   train and deploy a matrix factorisation (seconds);
                                plain `movrec train` trains the hybrid (minutes)
      movrec recommend 7        user 7's top 10
      psql "$(movrec db dsn)" -c 'SELECT * FROM recommend(7)'

    \b
    More examples:
      movrec load movielens ../shared/data/ml-latest-small && movrec etl && movrec tokenize
      movrec worker             drain the CF and refresh queues (or: movrec schedule)
      movrec status             queues, the champion, scheduled jobs
      movrec COMMAND --help     each command's options, defaults and examples
    """


for _group in GROUPS:
    for _command in _group.COMMANDS:
        cli.add_command(_command)


def main() -> None:  # pragma: no cover
    cli()
