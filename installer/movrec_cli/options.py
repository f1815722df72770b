"""Options that several commands share, defined once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from movrec.cf.options import Options

F = TypeVar("F", bound=Callable[..., Any])

# The man-page tail of the main commands' --help: where the database is, and what the exit
# status means (movrec_cli.errors: one line on stderr for every failure).
EPILOG = """\b
Environment:
  MOVREC_DSN   libpq connection string used when --dsn is not given
  MOVREC_HOME  the embedded cluster's directory (default ./.movrec)
  MOVREC_PORT  the embedded cluster's port (default 54329)
Without --dsn or MOVREC_DSN, commands talk to the embedded cluster (movrec db up).

\b
Exit status:
  0  success
  1  an error (one line on stderr: message, SQLSTATE, hint)
  2  a usage error (unknown option, bad value)
"""

dsn_option = click.option(
    "--dsn",
    envvar="MOVREC_DSN",
    metavar="DSN",
    help="libpq connection string [env MOVREC_DSN; default: the embedded cluster]",
)


def data_option(*, required: bool, extra: str = "") -> Any:
    """--data, with one meaning in every bench command: the folder that holds ml-latest-small/
    (and tmdb-5000/), e.g. ../shared/data, or the ml-latest-small folder itself."""
    return click.option(
        "--data",
        "data_dir",
        required=required,
        type=click.Path(path_type=Path, exists=True, file_okay=False),
        help="folder with ml-latest-small/ (and tmdb-5000/), e.g. ../shared/data, or "
        f"ml-latest-small itself; read, never copied{extra}",
    )


def json_option(what: str, extra: str = "") -> Any:
    """--json FILE (into ``json_out``), with one meaning in every bench command: also write
    ``what`` as JSON."""
    return click.option(
        "--json",
        "json_out",
        type=click.Path(dir_okay=False, path_type=Path),
        metavar="FILE",
        help=f"also write {what} as JSON{extra}",
    )


def movielens_small(data_dir: Path) -> Path:
    """The ml-latest-small folder that --data names."""
    sub = data_dir / "ml-latest-small"
    return sub if sub.is_dir() else data_dir


# The knobs of movrec.user_to_user(), with the defaults of movrec.cf.Options.
_CF = Options()
_CF_HELP = {
    "min_corr": "neighbour: correlation at least",
    "min_overlap": "neighbour: co-rated movies at least",
    "min_raters": "candidate: rated by neighbours at least",
    "shrinkage": "weight corr * n / (n + SHRINKAGE)",
    "damping": "divide by sum |weight| + DAMPING",
}
CF_OPTIONS = (
    *(
        click.option(
            f"--{name.replace('_', '-')}", default=getattr(_CF, name), show_default=True, help=text
        )
        for name, text in _CF_HELP.items()
    ),
    click.option(
        "--baseline", is_flag=True, help="centre on baseline estimates instead of user means"
    ),
)


def cf_options(fn: F) -> F:
    """Adds the options of movrec.user_to_user(); the command gets them as keyword arguments."""
    for opt in reversed(CF_OPTIONS):
        fn = opt(fn)
    return fn
