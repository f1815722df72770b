"""Test harness: a real PostgreSQL cluster (PL/Python, pgvector, movrec) per run.

Each test module gets its own database, so modules do not see each other's
rows.  The cluster lives in a temporary directory that the server's OS user can
read, on a port of its own; nothing touches a system cluster.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from movrec_cli import inprocess, schema
from movrec_cli.cluster import CitusCluster, Cluster, Standby, citus_library
from movrec_cli.demo_data import load_demo

DEMO_USERS = 300


@contextlib.contextmanager
def running_cluster(port: int, prefix: str = "movrec-test-") -> Iterator[Cluster]:
    """A new cluster in a temporary directory the server's OS user can reach; removed after."""
    home = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    home.chmod(0o755)
    c = Cluster(home, port=port)
    c.init()
    c.start()
    try:
        yield c
    finally:
        c.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    with running_cluster(56000 + os.getpid() % 1000) as c:
        yield c


@pytest.fixture(scope="session")
def standby(cluster: Cluster) -> Iterator[Standby]:
    """A streaming hot standby of the session's cluster (pg_basebackup -R), started only by
    the tests that ask for it; it has every database of the primary and replays its WAL."""
    s = Standby.of(cluster, port=cluster.port + 1000)
    s.init()
    s.start()
    try:
        yield s
    finally:
        s.remove()


@pytest.fixture(scope="session")
def new_database(cluster: Cluster) -> Callable[[str], str]:
    """Factory: a fresh, empty database; returns its DSN."""

    def make(name: str) -> str:
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return cluster.dsn(name)

    return make


def connect(dsn: str) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=True)


def keepers(files: list[Path]) -> set[int]:
    """Live shm_keeper processes (plpython/movrec/shm_keeper.py) among the holders that these
    shared files' ``.holders`` files list."""
    pids = set()
    for path in files:
        if path.suffix != ".holders":
            continue
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                pid = int(line.split()[0])
                with contextlib.suppress(OSError):
                    if b"shm_keeper" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        pids.add(pid)
    return pids


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def stop_keepers(files: list[Path]) -> None:
    """End the keepers of these shared files, so that no process is left to map them from."""
    pids = keepers(files)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


INSTALL_KINDS = ("full", "portable")
# The portable install's owner in the test cluster: a database owner that may create roles,
# as on a managed host; never a superuser.
PORTABLE_OWNER = "movrec_owner"
PORTABLE_OWNER_PASSWORD = "owner-pw"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module that sets INSTALL_KINDS = conftest.INSTALL_KINDS runs its tests that use the
    database fixtures once per install kind (full: PL/Python; portable: plpgsql + pgvector)."""
    kinds = getattr(metafunc.module, "INSTALL_KINDS", None)
    if kinds and "install_kind" in metafunc.fixturenames:
        metafunc.parametrize("install_kind", kinds, indirect=True, scope="module")


@pytest.fixture(scope="module")
def install_kind(request: pytest.FixtureRequest) -> str:
    """Which install the database fixtures make: "full" unless the module asks for both."""
    return str(getattr(request, "param", "full"))


def portable_database(cluster: Cluster, dsn: str) -> str:
    """Make an empty database ready for the portable install as a managed host has it: owned
    by a non-superuser role with CREATEROLE, pgvector created by the superuser, no
    plpython3u; returns the owner's DSN."""
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        if not conn.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = %s", (PORTABLE_OWNER,)
        ).fetchone():
            conn.execute(
                f"CREATE ROLE {PORTABLE_OWNER} LOGIN CREATEROLE PASSWORD '{PORTABLE_OWNER_PASSWORD}'"
            )
        name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
        conn.execute(f'ALTER DATABASE "{name}" OWNER TO {PORTABLE_OWNER}')
    with connect(dsn) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        assert not conn.execute(
            "SELECT 1 FROM pg_extension WHERE extname = 'plpython3u'"
        ).fetchone()
    return psycopg.conninfo.make_conninfo(
        dsn, user=PORTABLE_OWNER, password=PORTABLE_OWNER_PASSWORD
    )


@pytest.fixture(scope="module")
def installed(
    cluster: Cluster,
    new_database: Callable[[str], str],
    request: pytest.FixtureRequest,
    install_kind: str,
) -> str:
    """A database with movrec installed and no data; the tests' DSN is the superuser's either way
    (the portable install itself ran as the owner, not a superuser)."""
    suffix = "" if install_kind == "full" else "_portable"
    return install_into(
        cluster, new_database(f"t_{request.module.__name__.split('.')[-1]}{suffix}"), install_kind
    )


def install_into(cluster: Cluster, dsn: str, kind: str) -> str:
    """movrec's full install (as the superuser), or the portable one (as the owner); ``dsn``.

    Its train() runs one fit with the options a test gives (train_budget_s 0): the search
    would try other options, and take minutes; the search's own tests give a budget."""
    if kind == "portable":
        with connect(portable_database(cluster, dsn)) as conn:
            schema.install(conn, portable=True)
    else:
        with connect(dsn) as conn:
            schema.install(conn)
    with connect(dsn) as conn:
        set_settings(conn, train_budget_s=0)
    return dsn


def train(
    conn: psycopg.Connection, kind: str = "mf", options: str = "{}", deploy: bool = True
) -> int:
    """movrec.train() in the database, or in this process for a portable install (what
    `movrec train` does)."""
    if schema.install_kind(conn) == "portable":
        return inprocess.train(conn, kind, options, deploy)
    return conn.execute(
        "SELECT movrec.train(%s, %s::jsonb, %s)", (kind, options, deploy)
    ).fetchone()[0]


@pytest.fixture(scope="module")
def trained(installed: str) -> str:
    """movrec installed, demo data loaded, the MF model trained and deployed."""
    with connect(installed) as conn:
        load_demo(conn, n_users=DEMO_USERS, seed=7)
        train(conn, "mf", '{"epochs": 30}')
    return installed


@pytest.fixture
def conn(trained: str) -> Iterator[psycopg.Connection]:
    """A new session on the trained database (new backend: fresh per-backend caches)."""
    with connect(trained) as c:
        yield c


def table_digest(conn: psycopg.Connection, table: str) -> tuple[int, str]:
    """Row count and an order-independent digest: proves 'nothing stored was changed'."""
    return conn.execute(
        f"SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM {table} t"
    ).fetchone()


def set_settings(conn: psycopg.Connection, **values: object) -> None:
    """UPDATE movrec.settings: what privileged code reads (session SETs are ignored)."""
    assignments = ", ".join(f"{name} = %s" for name in values)
    conn.execute(f"UPDATE movrec.settings SET {assignments}", list(values.values()))


def reset_settings(conn: psycopg.Connection) -> None:
    """The defaults, but train() as install_into leaves it: one fit (train_budget_s 0)."""
    conn.execute(
        "DELETE FROM movrec.settings; INSERT INTO movrec.settings (train_budget_s) VALUES (0)"
    )


CITUS_SRC_DEFAULT = (
    Path(__file__).resolve().parents[1].parent / "shared/vendor/citus/citus-13.2.2.tar.gz"
)


def citus_missing() -> str | None:
    """None when Citus is installed (building it from CITUS_SRC first when it is not: what
    `make setup` does); else why the Citus tests skip."""
    if citus_library() is not None:
        return None
    src = os.environ.get("CITUS_SRC") or (
        str(CITUS_SRC_DEFAULT) if CITUS_SRC_DEFAULT.is_file() else ""
    )
    if not src:
        return (
            "Citus is not installed and CITUS_SRC names no Citus source tarball "
            "(set CITUS_SRC=path/to/citus-13.2.2.tar.gz and run `make setup`, or install a Citus package)"
        )
    script = Path(__file__).resolve().parents[1] / "installer" / "citus.sh"
    r = subprocess.run(["bash", str(script)], env={**os.environ, "CITUS_SRC": src}, check=False)
    if r.returncode != 0 or citus_library() is None:
        pytest.fail(f"building Citus from {src} failed (installer/citus.sh)")
    return None


@pytest.fixture(scope="session")
def citus_cluster() -> Iterator[CitusCluster]:
    """A Citus coordinator and 2 workers on this machine (started once, removed after)."""
    if reason := citus_missing():
        pytest.skip(reason)
    home = Path(tempfile.mkdtemp(prefix="movrec-citus-", dir="/tmp"))
    home.chmod(0o755)
    c = CitusCluster(home, port=58000 + (os.getpid() % 300) * 3)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        shutil.rmtree(home, ignore_errors=True)
