"""Removing movrec removes its pg_cron jobs and this database's shared serving files.

`movrec uninstall`, `movrec uninstall --drop-data` and DROP EXTENSION movrec: cron.job rows
named movrec-* of the database go, other jobs stay; the files movrec-<system id>-<database
oid>-* under /dev/shm/movrec-<uid>/ go, other databases' files stay.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from movrec_cli import schema
from movrec_cli.cluster import Cluster

from tests.conftest import connect

SHM = Path(os.environ.get("MOVREC_SHM_DIR", "/dev/shm"))


def server_uid(conn: psycopg.Connection) -> int:
    """The OS user the server runs as (its data directory's owner)."""
    data = conn.execute("SHOW data_directory").fetchone()[0]
    return Path(data).stat().st_uid


def group_of(conn: psycopg.Connection) -> str:
    return conn.execute(
        "SELECT (SELECT system_identifier FROM pg_control_system())::text || '-' || "
        "(SELECT oid FROM pg_database WHERE datname = current_database())::text"
    ).fetchone()[0]


def shm_files(conn: psycopg.Connection, group: str | None = None) -> list[Path]:
    directory = SHM / f"movrec-{server_uid(conn)}"
    return sorted(directory.glob(f"movrec-{group or group_of(conn)}[-.]*"))


@pytest.fixture
def planted(cluster: Cluster) -> Iterator[Callable[[psycopg.Connection, str], Path]]:
    """Plants a file under the server's shm directory, owned by the server's user."""
    made: list[Path] = []

    def plant(conn: psycopg.Connection, name: str) -> Path:
        uid = server_uid(conn)
        directory = SHM / f"movrec-{uid}"
        if not directory.exists():
            directory.mkdir(mode=0o700)
            os.chown(directory, uid, pwd.getpwuid(uid).pw_gid)
        path = directory / name
        path.write_bytes(b"not a matrix")
        os.chown(path, uid, pwd.getpwuid(uid).pw_gid)
        made.append(path)
        return path

    yield plant
    for path in made:
        path.unlink(missing_ok=True)


def cron_jobs(conn: psycopg.Connection) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT jobname FROM cron.job WHERE database = current_database() ORDER BY jobname"
        )
    ]


def test_uninstall_removes_this_databases_shared_files(
    trained: str, planted: Callable[[psycopg.Connection, str], Path]
) -> None:
    with connect(trained) as conn:
        assert conn.execute("SELECT count(*) FROM movrec.recommend(1, 5)").fetchone()[0] == 5
        conn.execute("SELECT * FROM movrec.user_to_user(1, store => false)").fetchall()
        cf_ours = shm_files(conn, f"cf-{group_of(conn)}")
        assert cf_ours, "user_to_user() shared no CF index"
        ours = shm_files(conn) + cf_ours
        assert shm_files(conn), "recommend() built no shared files"
        sysid, oid = group_of(conn).split("-")
        # another database of this cluster (oid 1 is template1: a prefix of no other oid)
        # and the same oid in another cluster keep their files
        others = [
            planted(conn, f"movrec-{sysid}-1-42-0-0-0-v1-ids.npy"),
            planted(conn, f"movrec-{sysid}0-{oid}-42-0-0-0-v1-ids.npy"),
        ]
        message = schema.uninstall(conn)
        assert f"{len(ours)} shared serving file(s) removed" in message, message
        assert shm_files(conn) == [] and shm_files(conn, f"cf-{group_of(conn)}") == []
        assert all(p.exists() for p in others)
        schema.install(conn)
    with connect(trained) as conn:  # a new backend serves again, building the files afresh
        assert conn.execute("SELECT count(*) FROM movrec.recommend(1, 5)").fetchone()[0] == 5
        assert shm_files(conn)


@pytest.mark.parametrize("drop_data", [False, True])
def test_uninstall_removes_the_cron_jobs(cluster: Cluster, drop_data: bool) -> None:
    with psycopg.connect(cluster.dsn("movrec"), autocommit=True) as conn:  # cron.database_name
        schema.install(conn)
        conn.execute("SELECT movrec.cf_schedule('* * * * *', 10)")
        conn.execute(
            "SELECT cron.schedule('movrec-serving', '* * * * *', 'SELECT movrec.serving_drain()')"
        )
        conn.execute("SELECT cron.schedule('someone-else', '0 3 * * *', 'SELECT 1')")
        try:
            assert cron_jobs(conn) == ["movrec-cf-drain", "movrec-serving", "someone-else"]
            message = schema.uninstall(conn, drop_data=drop_data)
            assert "2 pg_cron job(s)" in message, message
            assert cron_jobs(conn) == ["someone-else"]
        finally:
            conn.execute("SELECT cron.unschedule(jobid) FROM cron.job WHERE database = 'movrec'")
            schema.install(conn)
            schema.uninstall(conn, drop_data=True)


def test_drop_extension_removes_cron_jobs_and_shared_files(
    cluster: Cluster, planted: Callable[[psycopg.Connection, str], Path]
) -> None:
    with psycopg.connect(cluster.dsn("movrec"), autocommit=True) as conn:  # cron.database_name
        schema.uninstall(conn, drop_data=True)
        conn.execute("CREATE EXTENSION movrec CASCADE")
        try:
            conn.execute("SELECT movrec.cf_schedule('* * * * *', 10)")
            conn.execute("SELECT cron.schedule('someone-else', '0 3 * * *', 'SELECT 1')")
            file = planted(conn, f"movrec-{group_of(conn)}-42-0-0-0-v1-ids.npy")
            lock = planted(conn, f"movrec-{group_of(conn)}.lock")
            conn.execute("DROP EXTENSION movrec")
            assert cron_jobs(conn) == ["someone-else"]
            assert not file.exists() and not lock.exists()
        finally:
            conn.execute("DROP EXTENSION IF EXISTS movrec CASCADE")
            conn.execute("SELECT cron.unschedule(jobid) FROM cron.job WHERE database = 'movrec'")
            conn.execute("DROP SCHEMA IF EXISTS movrec, model, staging, etl CASCADE")


def test_a_failed_drop_extension_keeps_the_cron_jobs(cluster: Cluster) -> None:
    """The jobs' removal is part of the DROP's transaction."""
    with psycopg.connect(cluster.dsn("movrec"), autocommit=True) as conn:
        schema.uninstall(conn, drop_data=True)
        conn.execute("CREATE EXTENSION movrec CASCADE")
        try:
            conn.execute("SELECT movrec.cf_schedule('* * * * *', 10)")
            conn.execute("CREATE VIEW public.depends_on_movrec AS SELECT * FROM movrec.movies")
            with pytest.raises(psycopg.errors.DependentObjectsStillExist):
                conn.execute("DROP EXTENSION movrec")
            assert cron_jobs(conn) == ["movrec-cf-drain"]
        finally:
            conn.execute("DROP VIEW IF EXISTS public.depends_on_movrec")
            conn.execute("DROP EXTENSION IF EXISTS movrec CASCADE")
            conn.execute("SELECT cron.unschedule(jobid) FROM cron.job WHERE database = 'movrec'")
            conn.execute("DROP SCHEMA IF EXISTS movrec, model, staging, etl CASCADE")
