"""Where the database is: --dsn, else MOVREC_DSN, else the embedded cluster."""

from __future__ import annotations

from typing import Any

import psycopg

from movrec_cli.cluster import Cluster
from movrec_cli.errors import CliError
from movrec_cli.output import note


def resolve_dsn(dsn: str | None) -> str:
    if dsn:
        return dsn
    cluster = Cluster.default()
    if not cluster.running():
        raise CliError(
            "no database: start the embedded one with `movrec db up`, "
            "or pass --dsn / set MOVREC_DSN"
        )
    return cluster.dsn()


def print_notice(diag: psycopg.errors.Diagnostic) -> None:
    """Server NOTICEs (training progress) go to stderr as they arrive."""
    note(diag.message_primary or "")


def connect(dsn: str | None, *, autocommit: bool = True) -> psycopg.Connection:
    resolved = resolve_dsn(dsn)
    try:
        conn = psycopg.connect(resolved, autocommit=autocommit)
    except psycopg.OperationalError as e:
        raise CliError(f"cannot connect to {resolved!r}: {str(e).strip()}") from None
    conn.add_notice_handler(print_notice)
    return conn


def one(cursor: psycopg.Cursor[Any]) -> tuple[Any, ...]:
    """The row a statement that always returns one (an aggregate, a function call) returned."""
    row = cursor.fetchone()
    if row is None:
        raise CliError("the database returned no row where a statement always returns one")
    return row
