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
CF_OPTIONS = (
    click.option(
        "--min-corr",
        default=_CF.min_corr,
        show_default=True,
        help="neighbour: correlation at least",
    ),
    click.option(
        "--min-overlap",
        default=_CF.min_overlap,
        show_default=True,
        help="neighbour: co-rated movies at least",
    ),
    click.option(
        "--min-raters",
        default=_CF.min_raters,
        show_default=True,
        help="candidate: rated by neighbours at least",
    ),
    click.option(
        "--shrinkage",
        default=_CF.shrinkage,
        show_default=True,
        help="weight corr * n / (n + SHRINKAGE)",
    ),
    click.option(
        "--damping", default=_CF.damping, show_default=True, help="divide by sum |weight| + DAMPING"
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
