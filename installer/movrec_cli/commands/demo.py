"""`movrec demo`: the whole path end to end, step by step."""

from __future__ import annotations

import click

from movrec_cli.options import dsn_option


@click.command()
@dsn_option
def demo(dsn: str | None) -> None:
    """The whole path end to end: cluster, install, data, train, recommend, learn online."""
    from movrec_cli.walkthrough import run

    run(dsn)


COMMANDS = [demo]
