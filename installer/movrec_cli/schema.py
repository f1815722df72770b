"""Install, upgrade and uninstall movrec's SQL in a database.

One transaction each: a failure leaves the database as it was.  A rerun with
the same version, SQL and venv changes nothing.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import psycopg
from movrec import __version__
from psycopg import sql

from movrec_cli.errors import CliError


def sql_script() -> str:
    """The ordered sql/*.sql files (installer/movrec_cli/sql links to sql/)."""
    folder = resources.files("movrec_cli").joinpath("sql")
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    if not files:
        raise CliError("movrec's SQL files are missing from this installation")
    return "\n".join(f.read_text(encoding="utf-8") for f in files)


def default_venv() -> str:
    """The venv this CLI runs from: the backends load the same movrec."""
    return str(Path(sys.prefix).resolve())


@dataclass
class InstallResult:
    version: str
    changed: bool
    message: str


def _last_install(conn: psycopg.Connection) -> tuple[str, str, str] | None:
    if conn.execute("SELECT to_regclass('movrec.installs')").fetchone()[0] is None:  # type: ignore[index]
        return None
    return conn.execute(
        "SELECT version, sql_sha256, venv FROM movrec.installs ORDER BY install_id DESC LIMIT 1"
    ).fetchone()


def _db_setting(conn: psycopg.Connection, name: str) -> str | None:
    rows = conn.execute(
        """SELECT split_part(s, '=', 1), substr(s, strpos(s, '=') + 1)
           FROM pg_db_role_setting d, unnest(d.setconfig) s, pg_database db
           WHERE d.setdatabase = db.oid AND d.setrole = 0 AND db.datname = current_database()"""
    ).fetchall()
    return dict(rows).get(name)  # type: ignore[call-overload]


def install(conn: psycopg.Connection, venv: str | None = None) -> InstallResult:
    venv = venv or default_venv()
    script = sql_script()
    sha = hashlib.sha256(script.encode()).hexdigest()
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'movrec'").fetchone():
        raise CliError(
            "movrec is managed by CREATE EXTENSION in this database: "
            "use ALTER EXTENSION movrec UPDATE"
        )
    with conn.transaction():
        conn.execute("SET LOCAL client_min_messages = warning")  # no 'already exists' noise
        last = _last_install(conn)
        search_path = _db_setting(conn, "search_path")
        if (
            last == (__version__, sha, venv)
            and _db_setting(conn, "movrec.venv") == venv
            and search_path
            and "movrec" in search_path
        ):
            return InstallResult(
                __version__, False, f"movrec {__version__} is installed; nothing to do"
            )
        for ext in ("plpython3u", "vector"):
            try:
                with conn.transaction():
                    conn.execute(
                        sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(ext))
                    )
            except psycopg.Error as e:
                raise CliError(
                    f"CREATE EXTENSION {ext} failed: {str(e).strip()} (run `make setup`)"
                ) from None
        conn.execute(script)
        db = sql.Identifier(conn.info.dbname)
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET movrec.venv = {}").format(db, sql.Literal(venv))
        )
        if not search_path or "movrec" not in search_path:
            new_path = f"{search_path}, movrec" if search_path else '"$user", public, movrec'
            conn.execute(
                sql.SQL("ALTER DATABASE {} SET search_path = {}").format(db, sql.SQL(new_path))
            )
            search_path = new_path
        # ALTER DATABASE reaches new sessions only; this one gets the same now.
        conn.execute(
            "SELECT set_config('movrec.venv', %s, false), set_config('search_path', %s, false)",
            (venv, search_path),
        )
        conn.execute(
            "INSERT INTO movrec.installs (version, sql_sha256, venv) VALUES (%s, %s, %s)",
            (__version__, sha, venv),
        )
    verb = "upgraded" if last and last[0] != "-" else "installed"
    return InstallResult(__version__, True, f"movrec {__version__} {verb} (venv {venv})")


def uninstall(conn: psycopg.Connection, drop_data: bool = False) -> str:
    with conn.transaction():
        conn.execute("SET LOCAL client_min_messages = warning")
        if drop_data:
            conn.execute("DROP SCHEMA IF EXISTS movrec, model, staging, etl CASCADE")
            conn.execute(
                sql.SQL("ALTER DATABASE {} RESET movrec.venv").format(
                    sql.Identifier(conn.info.dbname)
                )
            )
            return "movrec removed with its data (schemas movrec, model, staging and etl dropped)"
        functions = conn.execute(
            """SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
               WHERE n.nspname IN ('movrec', 'model', 'staging', 'etl')"""
        ).fetchall()
        for (signature,) in functions:  # triggers go with their function (CASCADE)
            conn.execute(sql.SQL("DROP ROUTINE IF EXISTS {} CASCADE").format(sql.SQL(signature)))
        conn.execute(
            sql.SQL("ALTER DATABASE {} RESET movrec.venv").format(sql.Identifier(conn.info.dbname))
        )
        if _last_install(conn) is not None:
            conn.execute(
                "INSERT INTO movrec.installs (version, sql_sha256) VALUES ('-', 'uninstalled')"
            )
    return f"movrec functions, procedures and triggers removed ({len(functions)}); data tables kept"


def installed_version(conn: psycopg.Connection) -> str | None:
    ext = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'movrec'").fetchone()
    if ext:
        return f"{ext[0]} (extension)"
    last = _last_install(conn)
    return last[0] if last and last[0] != "-" else None
