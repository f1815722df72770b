"""Options that several commands share, defined once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click
from movrec.cf.options import Options

F = TypeVar("F", bound=Callable[..., Any])

dsn_option = click.option(
    "--dsn",
    envvar="MOVREC_DSN",
    metavar="DSN",
    help="libpq connection string [env MOVREC_DSN; default: the embedded cluster]",
)

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
