"""Lifecycle: upgrades from earlier releases and pg_dump/pg_restore, on both install paths.

Each release is tests/fixtures/movrec--VERSION.sql (its sql/ files).  Each path installs 0.1.0,
loads data, trains and deploys, rates online, then upgrades; every row, the champion and
recommend() must come through, and the upgraded catalogue must equal a fresh install's.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from movrec import __version__
from movrec_cli import schema
from movrec_cli.cluster import Cluster, bindir
from movrec_cli.demo_data import load_demo
from psycopg import sql

from tests.conftest import connect, running_cluster

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE = FIXTURES / "movrec--0.1.0.sql"
USERS = 80

# Everything an install defines, by name rather than OID, so that two databases compare.
CATALOGUE = """
WITH ns AS (SELECT oid FROM pg_namespace WHERE nspname IN ('movrec', 'model', 'staging', 'etl'))
SELECT 'rel ' || c.oid::regclass || ' ' || c.relkind::text || ' ' || coalesce(c.reloptions::text, '')
       || ' ' || coalesce(c.relacl::text, '') || ' ' || coalesce(obj_description(c.oid, 'pg_class'), '')
FROM pg_class c WHERE c.relnamespace IN (SELECT oid FROM ns) AND c.relkind IN ('r', 'v', 'S', 'i')
UNION ALL
SELECT 'col ' || a.attrelid::regclass || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || ' ' || a.attnotnull || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '') || ' ' || a.attidentity::text
       || a.attgenerated::text || ' ' || coalesce(a.attacl::text, '') || ' '
       || coalesce(col_description(a.attrelid, a.attnum), '')
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE c.relnamespace IN (SELECT oid FROM ns) AND c.relkind IN ('r', 'v') AND a.attnum > 0
  AND NOT a.attisdropped
UNION ALL
SELECT 'con ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
FROM pg_constraint WHERE connamespace IN (SELECT oid FROM ns)
UNION ALL
SELECT 'idx ' || indexrelid::regclass || ' ' || pg_get_indexdef(indexrelid)
FROM pg_index WHERE indrelid IN (SELECT oid FROM pg_class WHERE relnamespace IN (SELECT oid FROM ns))
UNION ALL
SELECT 'fn ' || p.oid::regprocedure || ' ' || l.lanname || ' ' || md5(p.prosrc) || ' ' || p.prosecdef || ' '
       || p.provolatile::text || ' ' || coalesce(p.proconfig::text, '') || ' ' || coalesce(p.proacl::text, '') || ' '
       || coalesce(obj_description(p.oid, 'pg_proc'), '')
FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang WHERE p.pronamespace IN (SELECT oid FROM ns)
UNION ALL
SELECT 'trg ' || tgrelid::regclass || ' ' || pg_get_triggerdef(t.oid) || ' ' || tgenabled::text || ' '
       || coalesce(obj_description(t.oid, 'pg_trigger'), '')
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
WHERE c.relnamespace IN (SELECT oid FROM ns) AND NOT t.tgisinternal
UNION ALL
SELECT 'schema ' || nspname || ' ' || coalesce(nspacl::text, '') || ' ' || coalesce(obj_description(oid, 'pg_namespace'), '')
FROM pg_namespace WHERE oid IN (SELECT oid FROM ns)
ORDER BY 1
"""

# Every table of the install, with its row count and digest; sequences with where they are.
USER_TABLES = """
SELECT format('%I.%I', n.nspname, c.relname), c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname IN ('movrec', 'model', 'etl') AND c.relkind IN ('r', 'S')
  AND c.relname NOT IN ('installs', 'installs_install_id_seq')  -- an install or upgrade adds its row
ORDER BY 1
"""


# What 0.2.0 adds to rows that were there: the catalogue a model was trained on.
ADDED_TO_ROWS = {"model.registry": {"data_snapshot": "data_snapshot - 'catalogue'"}}


def columns_of(conn: psycopg.Connection, table: str) -> list[str]:
    return [
        name
        for (name,) in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
            "AND NOT attisdropped ORDER BY attnum",
            (table,),
        ).fetchall()
    ]


def contents(conn: psycopg.Connection, like: dict[str, object] | None = None) -> dict[str, object]:
    """Each table's rows (count and digest) and each sequence's position, and the answers.

    With ``like`` (an earlier result), tables are read through the columns they had then, so
    that a column an upgrade adds does not count as a change of the rows that were there."""
    out: dict[str, object] = {}
    for name, kind in conn.execute(USER_TABLES).fetchall():
        if kind == "S":
            out[name] = conn.execute(f"SELECT last_value, is_called FROM {name}").fetchone()
            continue
        cols = columns_of(conn, name)
        if like is not None:
            then = like.get(f"{name} columns")
            cols = [c for c in cols if then is None or c in then]
        exprs = [
            ADDED_TO_ROWS.get(name, {}).get(c, f'"{c}"') if like is not None else f'"{c}"'
            for c in cols
        ]
        out[f"{name} columns"] = cols
        out[name] = conn.execute(
            f"SELECT count(*), coalesce(md5(string_agg(x, '|' ORDER BY x)), '') "
            f"FROM (SELECT ROW({', '.join(exprs)})::text AS x FROM {name}) t"
        ).fetchone()
    out["recommend(7)"] = conn.execute(
        "SELECT movie_id, round(score::numeric, 4), source FROM movrec.recommend(7, 10)"
    ).fetchall()
    out["predict(7, 3)"] = conn.execute("SELECT round(movrec.predict(7, 3)::numeric, 4)").fetchone()
    out["champion"] = conn.execute("SELECT model_id, kind FROM model.champion").fetchone()
    return out


def kept(before: dict[str, object], after: dict[str, object]) -> dict[str, object]:
    """What the later state holds of what the earlier one had (an upgrade may add tables)."""
    return {k: after.get(k) for k in before}


def use(conn: psycopg.Connection) -> None:
    """What a user does with 0.1.0: data, a trained champion, ratings that move vectors."""
    load_demo(conn, n_users=USERS, seed=3)
    conn.execute("""SELECT movrec.train('mf', '{"epochs": 3, "seed": 1}')""")
    for movie, rating in ((5, 4.5), (6, 1.0), (7, 3.5)):
        conn.execute("SELECT movrec.rate(7, %s::int, %s::real)", (movie, rating))
    conn.execute("SELECT movrec.cf_drain(20)")
    conn.execute("SELECT movrec.serving_drain(20)")


def install_0_1_0(conn: psycopg.Connection) -> None:
    """What `movrec install` of 0.1.0 did: the SQL, the venv in a database setting, a row."""
    script = FIXTURE.read_text(encoding="utf-8")
    venv = schema.default_venv()
    db = sql.Identifier(conn.info.dbname)
    with conn.transaction():
        conn.execute("SET LOCAL client_min_messages = warning")
        conn.execute(
            "CREATE EXTENSION IF NOT EXISTS plpython3u; CREATE EXTENSION IF NOT EXISTS vector"
        )
        conn.execute(script)
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET movrec.venv = {}").format(db, sql.Literal(venv))
        )
        conn.execute(
            sql.SQL('ALTER DATABASE {} SET search_path = "$user", public, movrec').format(db)
        )
        conn.execute(
            "INSERT INTO movrec.installs (version, sql_sha256, venv) VALUES ('0.1.0', %s, %s)",
            (hashlib.sha256(script.encode()).hexdigest(), venv),
        )


@pytest.fixture(scope="module")
def extension_0_1_0(cluster: Cluster) -> Iterator[None]:
    """The 0.1.0 extension script beside the current ones in the share directory."""
    sharedir = subprocess.run(
        [str(bindir() / "pg_config"), "--sharedir"], capture_output=True, text=True, check=True
    ).stdout.strip()
    target = Path(sharedir) / "extension" / "movrec--0.1.0.sql"
    if not (target.parent / f"movrec--0.1.0--{__version__}.sql").exists():
        pytest.skip("extension files not installed (make install)")
    try:
        shutil.copyfile(FIXTURE, target)
    except OSError as e:
        pytest.skip(f"cannot write {target}: {e}")
    target.chmod(0o644)
    yield
    target.unlink(missing_ok=True)


def test_movrec_install_upgrades_0_1_0_and_keeps_everything(
    new_database: Callable[[str], str],
) -> None:
    dsn = new_database("t_upgrade_install")
    with connect(dsn) as conn:
        install_0_1_0(conn)
    with connect(dsn) as conn:  # a new session: the database settings apply
        use(conn)
        before = contents(conn)
        result = schema.install(conn)
        assert result.changed and "upgraded from 0.1.0" in result.message
    with connect(dsn) as conn:
        assert schema.installed_version(conn) == __version__
        assert kept(before, contents(conn, like=before)) == before
        # the database setting 0.1.0 loaded the venv from is gone: a session could set it
        assert conn.execute("SELECT current_setting('movrec.venv', true)").fetchone()[0] in (
            None,
            "",
        )
        assert conn.execute("SELECT count(*) FROM recommend(7)").fetchone()[0] == 10


def test_extension_update_from_0_1_0_keeps_everything(
    new_database: Callable[[str], str], extension_0_1_0: None
) -> None:
    dsn = new_database("t_upgrade_extension")
    with connect(dsn) as conn:
        conn.execute("CREATE EXTENSION movrec VERSION '0.1.0' CASCADE")
        conn.execute(
            f"ALTER DATABASE t_upgrade_extension SET movrec.venv = '{schema.default_venv()}'"
        )
    with connect(dsn) as conn:
        use(conn)
        before = contents(conn)
        conn.execute("ALTER EXTENSION movrec UPDATE")
        assert schema.installed_version(conn) == f"{__version__} (extension)"
    with connect(dsn) as conn:
        conn.execute("ALTER DATABASE t_upgrade_extension RESET movrec.venv")
    with connect(dsn) as conn:  # served with the venv the current script pinned
        assert kept(before, contents(conn, like=before)) == before


def install_release(conn: psycopg.Connection, version: str) -> None:
    """What `movrec install` of a release after 0.1.0 did: its SQL, the venv pinned in a row."""
    if version == "0.1.0":
        install_0_1_0(conn)
        return
    script = (FIXTURES / f"movrec--{version}.sql").read_text(encoding="utf-8")
    db = sql.Identifier(conn.info.dbname)
    with conn.transaction():
        conn.execute("SET LOCAL client_min_messages = warning")
        conn.execute(
            "CREATE EXTENSION IF NOT EXISTS plpython3u; CREATE EXTENSION IF NOT EXISTS vector"
        )
        conn.execute(script)
        conn.execute(
            sql.SQL('ALTER DATABASE {} SET search_path = "$user", public, movrec').format(db)
        )
        conn.execute(
            "INSERT INTO movrec.installs (version, sql_sha256, venv) VALUES (%s, %s, %s)",
            (version, hashlib.sha256(script.encode()).hexdigest(), schema.default_venv()),
        )


def catalogue(dsn: str) -> list[str]:
    with connect(dsn) as conn:
        conn.execute("SET search_path = pg_catalog")  # every name schema-qualified
        return [row[0] for row in conn.execute(CATALOGUE).fetchall()]


RELEASES = sorted(
    p.name.split("--")[1].removesuffix(".sql") for p in FIXTURES.glob("movrec--*.sql")
)


@pytest.mark.parametrize("release", RELEASES)
def test_upgraded_schema_is_a_fresh_install(
    new_database: Callable[[str], str], release: str
) -> None:
    assert release != __version__, "a released version's fixture must be older than the code"
    fresh, upgraded = new_database("t_schema_fresh"), new_database("t_schema_upgraded")
    with connect(fresh) as conn:
        schema.install(conn)
    with connect(upgraded) as conn:
        install_release(conn, release)
        result = schema.install(conn)
        assert result.changed and f"upgraded from {release}" in result.message
    a, b = catalogue(fresh), catalogue(upgraded)
    assert sorted(set(a) - set(b)) == [] and sorted(set(b) - set(a)) == []


def test_extension_update_is_a_fresh_create_extension(
    new_database: Callable[[str], str], extension_0_1_0: None
) -> None:
    fresh, upgraded = new_database("t_ext_fresh"), new_database("t_ext_upgraded")
    with connect(fresh) as conn:
        conn.execute("CREATE EXTENSION movrec CASCADE")
    with connect(upgraded) as conn:
        conn.execute("CREATE EXTENSION movrec VERSION '0.1.0' CASCADE")
        conn.execute("ALTER EXTENSION movrec UPDATE")
    members = """SELECT pg_describe_object(classid, objid, 0) FROM pg_depend
                 WHERE deptype = 'e' AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'movrec')
                 ORDER BY 1"""
    with connect(fresh) as c1, connect(upgraded) as c2:
        m1, m2 = c1.execute(members).fetchall(), c2.execute(members).fetchall()
        dumped = "SELECT extconfig::regclass[]::text[], extcondition FROM pg_extension WHERE extname = 'movrec'"
        d1, d2 = c1.execute(dumped).fetchone(), c2.execute(dumped).fetchone()
    assert sorted(set(m1) ^ set(m2)) == []
    assert sorted(d1[0]) == sorted(d2[0])
    a, b = catalogue(fresh), catalogue(upgraded)
    assert sorted(set(a) - set(b)) == [] and sorted(set(b) - set(a)) == []


# pg_dump / pg_restore ----------------------------------------------------------------------


def _client(c: Cluster, program: str) -> list[str]:
    return [str(bindir() / program), "-h", str(c.socket_dir), "-p", str(c.port), "-U", "postgres"]


def dump_and_restore(source: Cluster, db: str, target: Cluster, target_db: str) -> None:
    """pg_dump -Fc | pg_restore into a new database of ``target``, as a DBA would; into
    another cluster, the roles go first (pg_dumpall --globals-only)."""
    if target is not source:
        roles = subprocess.run(
            [*_client(source, "pg_dumpall"), "--globals-only"], capture_output=True, check=True
        ).stdout
        # "role postgres already exists" and the like: psql goes on past them
        subprocess.run(
            [*_client(target, "psql"), "-X", "-q", "-d", "postgres"],
            input=roles,
            capture_output=True,
            check=True,
        )
    with psycopg.connect(target.dsn("postgres"), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{target_db}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{target_db}"')
    dump = subprocess.run(
        [*_client(source, "pg_dump"), "-Fc", "-d", db], capture_output=True, check=True
    ).stdout
    restore = subprocess.run(
        [*_client(target, "pg_restore"), "--exit-on-error", "-d", target_db],
        input=dump,
        capture_output=True,
        check=False,
    )
    assert restore.returncode == 0, restore.stderr.decode()


@pytest.fixture(scope="module")
def new_cluster(cluster: Cluster) -> Iterator[Cluster]:
    """A second, empty cluster on this machine."""
    with running_cluster(cluster.port + 7, prefix="movrec-restore-") as target:
        yield target


@pytest.mark.parametrize("path", ["movrec install", "CREATE EXTENSION"])
def test_dump_and_restore_lose_nothing(
    new_database: Callable[[str], str], cluster: Cluster, new_cluster: Cluster, path: str
) -> None:
    name = "t_dump_install" if path == "movrec install" else "t_dump_extension"
    dsn = new_database(name)
    with connect(dsn) as conn:
        if path == "movrec install":
            schema.install(conn)
        else:
            conn.execute("CREATE EXTENSION movrec CASCADE")
        conn.execute("UPDATE movrec.settings SET backup_retention = 7, online_lr = 0.03")
        if not conn.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = 'movrec_test_restored'"
        ).fetchone():
            conn.execute("CREATE ROLE movrec_test_restored LOGIN PASSWORD 'restored-pw'")
        conn.execute("GRANT movrec_user TO movrec_test_restored")
        use(conn)
        before = contents(conn)
        settings = conn.execute(
            "SELECT backup_retention, online_lr FROM movrec.settings"
        ).fetchone()
    for target in (cluster, new_cluster):  # a new database, then a new cluster
        dump_and_restore(cluster, name, target, f"{name}_restored")
        with connect(target.dsn(f"{name}_restored")) as conn:
            assert contents(conn) == before
            assert (
                conn.execute("SELECT backup_retention, online_lr FROM movrec.settings").fetchone()
                == settings
            )
            # identities and sequences continue where they were: new rows do not collide
            conn.execute("SELECT movrec.rate(7, 9, 2.5)")
            conn.execute("SELECT movrec.deploy((SELECT model_id FROM model.champion))")
        app = target.dsn(f"{name}_restored").replace("user=postgres", "user=movrec_test_restored")
        with psycopg.connect(app + " password=restored-pw", autocommit=True) as conn:
            assert len(conn.execute("SELECT * FROM movrec.recommend(7, 10)").fetchall()) == 10
