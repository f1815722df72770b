"""movrec's SQL: the current full install and the upgrade steps, for both install paths.

``sql/*.sql`` is the current install, in file order, and every statement in it is idempotent.
``sql/portable/*.sql`` replace the ``sql/*_python.sql`` files in the portable install (managed
PostgreSQL: no untrusted language), which shares every other file.
``sql/upgrade/movrec--A--B.sql`` holds what going from release A to B needs beyond running
the current install again: data migrations, and drops of objects that B no longer has.
An upgrade from A is the chain of steps from A to the current version, then the full install,
in one transaction (`movrec install`), or the same text as the extension script
``movrec--A--<current>.sql`` (`ALTER EXTENSION movrec UPDATE`).

Stdlib only: the Makefile runs this module to build extension/ (``python3 -m`` with no venv).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

STEP = re.compile(r"^movrec--(?P<old>[0-9.]+)--(?P<new>[0-9.]+)\.sql$")


class SqlFilesError(Exception):
    """The SQL files are missing, or no chain of upgrade steps leads to the current version."""


def _folder() -> Traversable:
    # installer/movrec_cli/sql links to the repository's sql/ (package data when installed)
    return resources.files("movrec_cli").joinpath("sql")


def _sql_files(folder: Traversable) -> list[Traversable]:
    return sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)


def full_script(folder: Traversable | None = None) -> str:
    """The ordered sql/*.sql files: the current install."""
    files = _sql_files(folder or _folder())
    if not files:
        raise SqlFilesError("movrec's SQL files are missing from this installation")
    return "\n".join(f"\n-- sql/{f.name}\n" + f.read_text(encoding="utf-8") for f in files)


# Files of the full install that need PL/Python; the portable install runs the other files of
# sql/ and, in their place, sql/portable/*.sql (named *_portable.sql), all in name order: one
# definition of every table, trigger and front door, two of the implementations behind them.
PYTHON_SUFFIX = "_python.sql"
PORTABLE_DIR = "portable"
# movrec.installs.sql_sha256 of a portable install starts with this (the full install's is the
# bare checksum): which kind a database holds.
PORTABLE_TAG = "portable:"


def portable_files(folder: Traversable | None = None) -> list[tuple[str, Traversable]]:
    """(shown name, file) of the portable install, in the order it runs."""
    folder = folder or _folder()
    own = folder.joinpath(PORTABLE_DIR)
    if not own.is_dir():
        raise SqlFilesError("movrec's portable SQL files are missing from this installation")
    files = [(f"sql/{f.name}", f) for f in _sql_files(folder) if not f.name.endswith(PYTHON_SUFFIX)]
    files += [(f"sql/{PORTABLE_DIR}/{f.name}", f) for f in _sql_files(own)]
    return sorted(files, key=lambda nf: nf[1].name)


def portable_script(folder: Traversable | None = None) -> str:
    """The portable install: SQL, plpgsql and pgvector only (no plpython3u, no superuser)."""
    return "\n".join(
        f"\n-- {name}\n" + f.read_text(encoding="utf-8") for name, f in portable_files(folder)
    )


def steps(folder: Traversable | None = None) -> dict[str, tuple[str, str]]:
    """Upgrade steps by the version they start from: {old: (new, migration SQL)}."""
    upgrade = (folder or _folder()).joinpath("upgrade")
    found: dict[str, tuple[str, str]] = {}
    if not upgrade.is_dir():
        return found
    for f in _sql_files(upgrade):
        m = STEP.match(f.name)
        if m is None:
            raise SqlFilesError(f"sql/upgrade/{f.name} is not named movrec--OLD--NEW.sql")
        found[m["old"]] = (m["new"], f"\n-- sql/upgrade/{f.name}\n" + f.read_text(encoding="utf-8"))
    return found


def upgrade_script(old: str, current: str, folder: Traversable | None = None) -> str:
    """The migrations from release ``old`` up to ``current``, then the full install."""
    chain = steps(folder)
    parts, version = [], old
    while version != current:
        if version not in chain:
            raise SqlFilesError(
                f"no upgrade path from movrec {old} to {current}: sql/upgrade has no step "
                f"from {version} (known starts: {', '.join(sorted(chain)) or 'none'})"
            )
        version, migration = chain[version]
        parts.append(migration)
        if len(parts) > len(chain):
            raise SqlFilesError(f"the upgrade steps from {old} loop")
    return "".join(parts) + full_script(folder)


def older_versions(current: str, folder: Traversable | None = None) -> Iterable[str]:
    """Every release that has a chain of steps to ``current``."""
    for old in steps(folder):
        try:
            upgrade_script(old, current, folder)
        except SqlFilesError:
            continue
        yield old


EXTENSION_HEADER = (
    "-- Generated from sql/ by `make extension`; do not edit.\n"
    '\\echo Use "{verb}" to load this file. \\quit\n'
)


def pin_venv_sql(version: str, venv: str) -> str:
    """The extension script's last statement: the venv backends load movrec from."""
    if "'" in venv:
        raise SqlFilesError("the venv path must not contain a quote")
    value = f"'{venv}'" if venv else "NULL"
    return (
        "\n-- The venv backends load movrec from, pinned when this file was built.\n"
        "INSERT INTO movrec.installs (version, sql_sha256, venv) "
        f"VALUES ('{version}', 'extension', {value});\n" + SEARCH_PATH_NOTICE
    )


# An extension script does not change the database's settings behind the DBA's back, so it
# says instead which one command makes the unqualified names (recommend(7)) resolve.
SEARCH_PATH_NOTICE = """
DO $movrec_path$
DECLARE
    path text := (SELECT substr(s, strpos(s, '=') + 1)
                  FROM pg_db_role_setting d JOIN pg_database db ON db.oid = d.setdatabase,
                       unnest(d.setconfig) s
                  WHERE db.datname = current_database() AND d.setrole = 0
                    AND split_part(s, '=', 1) = 'search_path');
BEGIN
    IF path IS NULL OR path !~ '(^|[ ,"])movrec($|[ ,"])' THEN
        -- WARNING, not NOTICE: CREATE EXTENSION runs its script at client_min_messages = warning.
        RAISE WARNING 'schema movrec is not on this database''s search_path; to call recommend(7) unqualified, run: %',
            format('ALTER DATABASE %I SET search_path = %s', current_database(),
                   coalesce(path || ', movrec', '"$user", public, movrec'))
            USING HINT = 'New sessions see it; `movrec install` does the same. '
                         'Until then the names work qualified: movrec.recommend(7).';
    END IF;
END $movrec_path$;
"""


def build_extension(out: Path, version: str, venv: str, root: Path) -> list[Path]:
    """Write movrec--VERSION.sql and movrec--OLD--VERSION.sql for every older release."""
    folder = root / "sql"
    pin = pin_venv_sql(version, venv)
    written = []
    install = out / f"movrec--{version}.sql"
    install.write_text(
        EXTENSION_HEADER.format(verb="CREATE EXTENSION movrec CASCADE") + full_script(folder) + pin
    )
    written.append(install)
    for old in older_versions(version, folder):
        path = out / f"movrec--{old}--{version}.sql"
        path.write_text(
            EXTENSION_HEADER.format(verb="ALTER EXTENSION movrec UPDATE")
            + upgrade_script(old, version, folder)
            + pin
        )
        written.append(path)
    return written


if __name__ == "__main__":  # python3 installer/movrec_cli/sqlfiles.py OUT VERSION VENV ROOT
    out_dir, ver, venv_path, repo = sys.argv[1:5]
    for p in build_extension(Path(out_dir), ver, venv_path, Path(repo)):
        print(p)


_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z_0-9]*)?\$")


def statements(script: str) -> list[str]:
    """The script's statements, one string each (comments kept with the statement they
    precede).  Splits at semicolons outside quotes, quoted identifiers, dollar quotes and
    comments.  A Citus coordinator needs them one by one: it passes the text of some DDL to
    the workers as it came, and a worker refuses several commands in one."""
    out: list[str] = []
    start = i = 0
    n = len(script)
    while i < n:
        c = script[i]
        if c == "-" and script.startswith("--", i):
            j = script.find("\n", i)
            i = n if j < 0 else j + 1
        elif c == "/" and script.startswith("/*", i):
            j = script.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c in "'\"":
            j = i + 1
            while j < n:  # a doubled quote is the quote itself
                if script[j] == c:
                    if j + 1 < n and script[j + 1] == c:
                        j += 2
                        continue
                    break
                j += 1
            i = j + 1
        elif c == "$" and (m := _DOLLAR_TAG.match(script, i)):
            j = script.find(m.group(0), m.end())
            i = n if j < 0 else j + len(m.group(0))
        elif c == ";":
            out.append(script[start : i + 1])
            start = i = i + 1
        else:
            i += 1
    rest = script[start:]
    if rest.strip() and any(
        line.strip() and not line.strip().startswith("--") for line in rest.splitlines()
    ):
        out.append(rest)
    return [s for s in out if s.strip(" \n\t;")]
