"""CLI-side errors: each one is printed as a single line and exits non-zero."""

import click


class CliError(click.ClickException):
    """A problem the user can fix; message says what and how."""
