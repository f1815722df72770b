"""Install, upgrade and uninstall movrec's SQL in a database.

One transaction each: a failure leaves the database as it was.  A rerun with
the same version, SQL and venv changes nothing.
"""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import psycopg
from movrec import __version__
from psycopg import sql

from movrec_cli import sqlfiles
from movrec_cli.connection import one
from movrec_cli.errors import CliError


def sql_script() -> str:
    """The current full install (sql/*.sql in order)."""
    try:
        return sqlfiles.full_script()
    except sqlfiles.SqlFilesError as e:
        raise CliError(str(e)) from None


def default_venv() -> str:
    """The venv this CLI runs from: the backends load the same movrec."""
    return str(Path(sys.prefix).resolve())


@dataclass
class InstallResult:
    version: str
    changed: bool
    message: str


def _has_installs(conn: psycopg.Connection) -> bool:
    return one(conn.execute("SELECT to_regclass('movrec.installs') IS NOT NULL"))[0]


def _last_install(conn: psycopg.Connection) -> tuple[str, str, str] | None:
    if not _has_installs(conn):
        return None
    return conn.execute(
        "SELECT version, sql_sha256, venv FROM movrec.installs ORDER BY install_id DESC LIMIT 1"
    ).fetchone()


def _release(conn: psycopg.Connection) -> str | None:
    """The movrec release whose SQL the database holds (None: never installed here)."""
    if not _has_installs(conn):
        return None
    row = conn.execute(
        "SELECT version FROM movrec.installs WHERE version <> '-' ORDER BY install_id DESC LIMIT 1"
    ).fetchone()
    return row[0] if row else None


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split(".") if x.isdigit())


def _script_for(release: str | None) -> str:
    """The full install, preceded by the upgrade steps from an older release."""
    if release is None or release == __version__:
        return sql_script()
    if _version_key(release) > _version_key(__version__):
        raise CliError(
            f"this database holds movrec {release}, newer than this movrec ({__version__}): "
            "install the newer movrec to manage it"
        )
    try:
        return sqlfiles.upgrade_script(release, __version__)
    except sqlfiles.SqlFilesError as e:
        raise CliError(str(e)) from None


def _db_setting(conn: psycopg.Connection, name: str) -> str | None:
    rows = conn.execute(
        """SELECT split_part(s, '=', 1), substr(s, strpos(s, '=') + 1)
           FROM pg_db_role_setting d, unnest(d.setconfig) s, pg_database db
           WHERE d.setdatabase = db.oid AND d.setrole = 0 AND db.datname = current_database()"""
    ).fetchall()
    return dict(rows).get(name)  # type: ignore[call-overload]


def _has_citus(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'citus'").fetchone() is not None


def _distributed(conn: psycopg.Connection) -> bool:
    """movrec.distribute() ran here (its tables are Citus tables)."""
    return _has_citus(conn) and bool(
        one(
            conn.execute(
                "SELECT to_regclass('movrec.watch_events') IS NOT NULL AND EXISTS (SELECT FROM "
                "pg_dist_partition WHERE logicalrelid = to_regclass('movrec.watch_events'))"
            )
        )[0]
    )


def install_kind(conn: psycopg.Connection) -> str | None:
    """'portable' or 'full' for the install this database holds (None: none)."""
    last = _last_install(conn)
    if last is None or last[0] == "-":
        return None
    return "portable" if last[1].startswith(sqlfiles.PORTABLE_TAG) else "full"


def install(
    conn: psycopg.Connection,
    venv: str | None = None,
    portable: bool = False,
    app_role: str | None = None,
    admin_role: str | None = None,
    citus: bool = False,
) -> InstallResult:
    """Install or upgrade movrec in one transaction.  ``portable``: the plpgsql install for
    managed PostgreSQL.  ``citus``: on a Citus coordinator, also lay the tables out over the
    nodes (movrec.distribute()); a database distributed before is laid out again after every
    install, which keeps the Citus layout of what it adds."""
    if portable:
        if citus:
            raise CliError("--citus is for the full install, not --portable")
        return install_portable(conn, app_role, admin_role)
    if app_role or admin_role:
        raise CliError("--app-role and --admin-role are for --portable installs")
    venv = venv or default_venv()
    if citus and not _has_citus(conn):
        raise CliError(
            "--citus: this database has no Citus extension (on a Citus coordinator: "
            "CREATE EXTENSION citus and add the workers first)"
        )
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'movrec'").fetchone():
        result = _install_extension(conn, venv)
    else:
        result = _install_script(conn, venv, force=citus and not _distributed(conn))
    if citus or _distributed(conn):
        with conn.transaction():
            conn.execute("SET LOCAL client_min_messages = warning")
            done = one(conn.execute("SELECT movrec.distribute()"))[0]
        # what distribute() set for the database's new sessions, for this one too
        conn.execute("SET citus.enable_unsafe_triggers = on")
        if done:
            result = InstallResult(
                result.version,
                True,
                result.message + f"; distributed over Citus ({len(done)} tables and functions)",
            )
    return result


def _install_script(conn: psycopg.Connection, venv: str, force: bool = False) -> InstallResult:
    with conn.transaction():
        conn.execute("SET LOCAL client_min_messages = warning")  # no 'already exists' noise
        if install_kind(conn) == "portable":
            raise CliError(
                "this database holds the portable install: rerun `movrec install --portable`, "
                "or `movrec uninstall` first to change kinds"
            )
        last = _last_install(conn)
        release = _release(conn)
        script = _script_for(release)
        sha = hashlib.sha256(script.encode()).hexdigest()
        search_path = _db_setting(conn, "search_path")
        if (
            not force
            and last == (__version__, sha, venv)
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
        if _has_citus(conn):
            # the script replaces triggers of Citus tables (87_citus.sql), and Citus forwards
            # some DDL to the workers as the text it came in: one statement at a time
            conn.execute("SET LOCAL citus.enable_unsafe_triggers = on")
            for statement in sqlfiles.statements(script):
                conn.execute(statement)
        else:
            conn.execute(script)
        db = sql.Identifier(conn.info.dbname)
        # Releases before 0.2 kept the venv in a database setting; backends now read the
        # row below (a setting is not dumped by pg_dump, and sessions could override it).
        if _db_setting(conn, "movrec.venv") is not None:
            conn.execute(sql.SQL("ALTER DATABASE {} RESET movrec.venv").format(db))
        _set_search_path(conn, search_path)
        conn.execute(
            "INSERT INTO movrec.installs (version, sql_sha256, venv) VALUES (%s, %s, %s)",
            (__version__, sha, venv),
        )
    verb = f"upgraded from {release}" if release and release != __version__ else "installed"
    return InstallResult(__version__, True, f"movrec {__version__} {verb} (venv {venv})")


# Substituted for movrec_user / movrec_admin as they are spelled there: plain lower-case names.
ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_$]{0,62}$")


def _roles_sql(
    conn: psycopg.Connection, script: str, app_role: str | None, admin_role: str | None
) -> str:
    """The script with movrec_user / movrec_admin replaced by the roles named, which must
    exist; without names, the owner must be able to create the two roles (CREATEROLE)."""
    for flag, role in (("--app-role", app_role), ("--admin-role", admin_role)):
        if role is None:
            continue
        if not ROLE_NAME.match(role):
            raise CliError(f"{flag} {role!r} is not a plain (lower-case) role name")
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            raise CliError(
                f"{flag} {role}: no such role (create it first, or let movrec create "
                "movrec_user/movrec_admin as a role with CREATEROLE)"
            )
    missing = [
        r
        for r, given in (("movrec_user", app_role), ("movrec_admin", admin_role))
        if given is None
        and not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (r,)).fetchone()
    ]
    may_create = one(
        conn.execute("SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user")
    )[0]
    if missing and not may_create:
        raise CliError(
            f"the roles {' and '.join(missing)} do not exist and {conn.info.user} may not create "
            "roles (no CREATEROLE): name existing ones with --app-role ROLE --admin-role ROLE"
        )
    for default, role in (("movrec_user", app_role), ("movrec_admin", admin_role)):
        if role is not None:
            script = re.sub(rf"\b{default}\b", role, script)
    return script


def install_portable(
    conn: psycopg.Connection, app_role: str | None = None, admin_role: str | None = None
) -> InstallResult:
    """The portable install (sql/portable): SQL, plpgsql and pgvector only, as the database's
    owner; no plpython3u, no superuser, no venv.  Idempotent like the full install."""
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'movrec'").fetchone():
        raise CliError(
            "movrec is installed here as an extension (the full install): "
            "DROP EXTENSION movrec first to install the portable one"
        )
    with conn.transaction():
        conn.execute("SET LOCAL client_min_messages = warning")
        if install_kind(conn) == "full":
            raise CliError(
                "this database holds the full install (PL/Python): `movrec install` "
                "upgrades it; `movrec uninstall` first to change kinds"
            )
        release = _release(conn)
        if release is not None and _version_key(release) > _version_key(__version__):
            raise CliError(
                f"this database holds movrec {release}, newer than this movrec "
                f"({__version__}): install the newer movrec to manage it"
            )
        try:
            script = sqlfiles.portable_script()
        except sqlfiles.SqlFilesError as e:
            raise CliError(str(e)) from None
        script = _roles_sql(conn, script, app_role, admin_role)
        sha = sqlfiles.PORTABLE_TAG + hashlib.sha256(script.encode()).hexdigest()
        search_path = _db_setting(conn, "search_path")
        if (
            _last_install(conn) == (__version__, sha, None)
            and search_path
            and "movrec" in search_path
        ):
            return InstallResult(
                __version__, False, f"movrec {__version__} (portable) is installed; nothing to do"
            )
        if not conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone():
            try:
                with conn.transaction():
                    conn.execute("CREATE EXTENSION vector")
            except psycopg.Error as e:
                raise CliError(
                    f"CREATE EXTENSION vector failed: {str(e).strip()}; on a managed host ask "
                    "for pgvector (as its admin role: CREATE EXTENSION vector), then rerun"
                ) from None
        conn.execute(script)
        _set_search_path(conn, search_path)
        conn.execute(
            "INSERT INTO movrec.installs (version, sql_sha256, venv) VALUES (%s, %s, NULL)",
            (__version__, sha),
        )
    verb = "upgraded from " + release if release and release != __version__ else "installed"
    return InstallResult(__version__, True, f"movrec {__version__} (portable) {verb}")


def _set_search_path(conn: psycopg.Connection, search_path: str | None) -> bool:
    """Add movrec to the database's search_path (and this session's); True when it changed."""
    changed = False
    if not search_path or "movrec" not in search_path:
        search_path = f"{search_path}, movrec" if search_path else '"$user", public, movrec'
        db = sql.Identifier(conn.info.dbname)
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET search_path = {}").format(db, sql.SQL(search_path))
        )
        changed = True
    # ALTER DATABASE reaches new sessions only; this one gets the same now.
    conn.execute("SELECT set_config('search_path', %s, false)", (search_path,))
    return changed


def _install_extension(conn: psycopg.Connection, venv: str) -> InstallResult:
    """A database where CREATE EXTENSION installed movrec: the extension's own upgrade path
    (ALTER EXTENSION movrec UPDATE to the newest installed files), then the venv and the
    search_path that `movrec install` sets, in one transaction."""
    with conn.transaction():
        conn.execute("SET LOCAL client_min_messages = warning")
        before = one(conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'movrec'"))[
            0
        ]
        row = conn.execute(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'movrec'"
        ).fetchone()
        if row is None:
            raise CliError(
                "movrec is installed as an extension here, but the server has no movrec extension "
                "files to update from: run `make install` on the database host"
            )
        available = row[0]
        if _version_key(available) < _version_key(before):
            raise CliError(
                f"this database holds movrec {before} (extension), newer than the installed "
                f"extension files ({available}): `make install` the newer movrec first"
            )
        done = []
        if available != before:
            conn.execute("ALTER EXTENSION movrec UPDATE")
            done.append(f"ALTER EXTENSION movrec UPDATE ({before} -> {available})")
        last = _last_install(conn)
        if last is None or last[2] != venv:
            conn.execute("SELECT movrec.pin_venv(%s)", (venv,))
            done.append(f"venv {venv} pinned")
        if _set_search_path(conn, _db_setting(conn, "search_path")):
            done.append("movrec added to the database's search_path")
    if not done:
        return InstallResult(
            available, False, f"movrec {available} (extension) is installed; nothing to do"
        )
    return InstallResult(available, True, f"movrec {available} (extension): " + "; ".join(done))


def uninstall(conn: psycopg.Connection, drop_data: bool = False) -> str:
    """Remove movrec's code (and with drop_data its schemas), its pg_cron jobs and this
    database's shared serving files (movrec.cleanup(), where this install has it)."""
    with conn.transaction():
        conn.execute("SET LOCAL client_min_messages = warning")
        cleaned = ""
        if one(conn.execute("SELECT to_regprocedure('movrec.cleanup()') IS NOT NULL"))[0]:
            cleaned = "; " + one(conn.execute("SELECT movrec.cleanup()"))[0]
        if drop_data:
            conn.execute("DROP SCHEMA IF EXISTS movrec, model, staging, etl CASCADE")
            return (
                "movrec removed with its data (schemas movrec, model, staging and etl dropped)"
                + cleaned
            )
        functions = conn.execute(
            """SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
               WHERE n.nspname IN ('movrec', 'model', 'staging', 'etl')"""
        ).fetchall()
        for (signature,) in functions:  # triggers go with their function (CASCADE)
            conn.execute(sql.SQL("DROP ROUTINE IF EXISTS {} CASCADE").format(sql.SQL(signature)))
        if _last_install(conn) is not None:
            conn.execute(
                "INSERT INTO movrec.installs (version, sql_sha256) VALUES ('-', 'uninstalled')"
            )
    return (
        f"movrec functions, procedures and triggers removed ({len(functions)}); data tables kept"
        + cleaned
    )


def installed_version(conn: psycopg.Connection) -> str | None:
    ext = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'movrec'").fetchone()
    if ext:
        return f"{ext[0]} (extension)"
    last = _last_install(conn)
    if not last or last[0] == "-":
        return None
    return f"{last[0]} (portable)" if last[1].startswith(sqlfiles.PORTABLE_TAG) else last[0]
