"""The CLI's one error path: every failure is one line on stderr and a non-zero exit.

``CliError`` is a problem the user can fix (its message says what and how).
``MovrecGroup`` is the top-level command group: it turns a ``psycopg.Error`` (from
any command, e.g. a movrec function refusing an argument) and a movrec error
raised in this process into a ``CliError`` whose line carries the message, the
SQLSTATE and the hint.  Exit codes: 1 for these, 2 for usage errors (click's).
"""

from __future__ import annotations

from typing import Any

import click
import psycopg
from movrec.errors import MovrecError


class CliError(click.ClickException):
    """A problem the user can fix; printed as ``Error: <message>``, exit code 1."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


def one_line(text: str) -> str:
    """Collapse whitespace runs (libpq messages span lines) into single spaces."""
    return " ".join(text.split())


def describe(error: BaseException) -> str:
    """message (SQLSTATE xxxxx; hint: ...) for a database or movrec error."""
    message, sqlstate, hint = str(error), None, None
    if isinstance(error, psycopg.Error):
        diag = error.diag
        message = diag.message_primary or str(error)
        sqlstate = error.sqlstate or diag.sqlstate
        hint = diag.message_hint
    elif isinstance(error, MovrecError):
        sqlstate, hint = error.sqlstate, error.hint
    extra = [f"SQLSTATE {sqlstate}"] if sqlstate else []
    if hint:
        extra.append(f"hint: {hint}")
    message = one_line(message) or type(error).__name__
    return f"{message} ({'; '.join(extra)})" if extra else message


class MovrecGroup(click.Group):
    """A click group whose commands' database and movrec errors end as one line, exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (psycopg.Error, MovrecError) as e:
            raise CliError(describe(e)) from None
