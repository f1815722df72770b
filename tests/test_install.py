"""movrec install / uninstall / doctor against a real database."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest
from movrec import __version__
from movrec_cli import schema

from tests.conftest import connect, table_digest

CATALOG_SNAPSHOT = """
SELECT md5(string_agg(x, '|' ORDER BY x)) FROM (
    SELECT p.oid::regprocedure::text || md5(p.prosrc) || p.xmin::text AS x
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname IN ('movrec', 'model')
    UNION ALL
    SELECT c.oid::regclass::text || c.xmin::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname IN ('movrec', 'model')
) s
"""


def test_install_twice_is_a_noop(installed: str) -> None:
    with connect(installed) as conn:
        before = conn.execute(CATALOG_SNAPSHOT).fetchone()[0]
        installs = conn.execute("SELECT count(*) FROM movrec.installs").fetchone()[0]
        result = schema.install(conn)
        assert not result.changed
        assert "nothing to do" in result.message
        assert conn.execute(CATALOG_SNAPSHOT).fetchone()[0] == before  # not even rewritten
        assert conn.execute("SELECT count(*) FROM movrec.installs").fetchone()[0] == installs


def test_install_records_version_and_settings(installed: str) -> None:
    with connect(installed) as conn:
        assert schema.installed_version(conn) == __version__
        pinned = conn.execute(
            "SELECT venv FROM movrec.installs ORDER BY install_id DESC LIMIT 1"
        ).fetchone()[0]
        assert pinned == schema.default_venv()
        assert "movrec" in conn.execute("SHOW search_path").fetchone()[0]
        # unqualified, as a psql user types it
        assert conn.execute("SELECT count(*) FROM recommend(1)").fetchone()[0] == 0


def test_every_function_and_table_is_commented(installed: str) -> None:
    with connect(installed) as conn:
        missing = conn.execute(
            """SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
               WHERE n.nspname IN ('movrec', 'model') AND obj_description(p.oid, 'pg_proc') IS NULL
               UNION ALL
               SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname IN ('movrec', 'model') AND c.relkind IN ('r', 'v')
                 AND obj_description(c.oid, 'pg_class') IS NULL"""
        ).fetchall()
    assert missing == []


def test_nothing_is_granted_to_public(installed: str) -> None:
    with connect(installed) as conn:
        public = conn.execute(
            """SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
               WHERE n.nspname = 'movrec' AND has_function_privilege('public', p.oid, 'EXECUTE')"""
        ).fetchall()
    assert public == []


def test_doctor_reports_the_venv_and_thread_cap(installed: str) -> None:
    with connect(installed) as conn:
        rows = {r[0]: r for r in conn.execute("SELECT * FROM movrec.doctor()").fetchall()}
    assert rows["venv"][1] is True and schema.default_venv() in rows["venv"][2]
    assert rows["threads"][1] is True and "OPENBLAS_NUM_THREADS=1" in rows["threads"][2]
    assert rows["pgvector"][1] is True
    assert rows["torch"][1] is True
    assert rows["champion"][1] is False and rows["champion"][3]  # not trained: says how to fix


def test_uninstall_keeps_data_and_reinstall_restores(new_database: Callable[[str], str]) -> None:
    dsn = new_database("t_uninstall")
    with connect(dsn) as conn:
        schema.install(conn)
        conn.execute("INSERT INTO movrec.movies (movie_id, title) VALUES (1, 'Alien')")
        conn.execute("INSERT INTO movrec.watch_events (user_id, movie_id, rating) VALUES (1, 1, 4)")
        message = schema.uninstall(conn)
        assert "data tables kept" in message
        assert conn.execute("SELECT count(*) FROM movrec.watch_events").fetchone()[0] == 1
        assert (
            conn.execute("SELECT to_regprocedure('movrec.recommend(integer, integer)')").fetchone()[
                0
            ]
            is None
        )
        assert schema.installed_version(conn) is None
        assert schema.install(conn).changed
        assert conn.execute("SELECT count(*) FROM recommend(1)").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM movrec.watch_events").fetchone()[0] == 1
        schema.uninstall(conn, drop_data=True)
        assert conn.execute("SELECT to_regnamespace('movrec')").fetchone()[0] is None


def test_failed_install_leaves_the_database_as_it_was(new_database: Callable[[str], str]) -> None:
    dsn = new_database("t_failed_install")
    with connect(dsn) as conn:
        # A foreign object in the way: model.registry without the columns movrec comments on.
        conn.execute("CREATE SCHEMA model; CREATE TABLE model.registry (x int)")
        conn.execute("INSERT INTO model.registry VALUES (1)")
        with pytest.raises(psycopg.errors.UndefinedColumn):
            schema.install(conn)
        assert conn.execute("SELECT to_regnamespace('movrec')").fetchone()[0] is None
        assert table_digest(conn, "model.registry")[0] == 1
        with pytest.raises(psycopg.errors.UndefinedObject):
            conn.execute("SHOW movrec.venv")


def test_create_extension_cascade(new_database: Callable[[str], str]) -> None:
    dsn = new_database("t_extension")
    with connect(dsn) as conn:
        available = conn.execute(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'movrec'"
        ).fetchone()
        if available is None:
            pytest.skip("extension files not installed (make install)")
        assert available[0] == __version__
        notices: list[str] = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        conn.execute("CREATE EXTENSION movrec CASCADE")
        assert conn.execute("SELECT count(*) FROM movrec.recommend(1)").fetchone()[0] == 0
        assert schema.installed_version(conn) == f"{__version__} (extension)"
        # The NOTICE names the one command that makes the unqualified names work.
        command = next(n for n in notices if "search_path" in n).split("run: ", 1)[1]
        assert command == """ALTER DATABASE t_extension SET search_path = "$user", public, movrec"""
        doctor = dict(conn.execute("SELECT check_name, ok FROM movrec.doctor()").fetchall())
        assert doctor["search_path"] is False
        # movrec install finishes the job instead of refusing: venv pinned, search_path set.
        result = schema.install(conn, venv=schema.default_venv())
        assert result.changed and "search_path" in result.message, result.message
        assert not schema.install(conn, venv=schema.default_venv()).changed
    with connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM recommend(1)").fetchone()[0] == 0
        assert dict(conn.execute("SELECT check_name, ok FROM movrec.doctor()").fetchall())[
            "search_path"
        ]


def test_doctor_runs_without_a_venv(installed: str) -> None:
    """doctor() reports an unloadable movrec as a finding instead of failing itself."""
    with connect(installed) as conn:
        conn.execute("INSERT INTO movrec.installs (version, sql_sha256) VALUES ('x', 'x')")
        conn.execute("UPDATE movrec.installs SET venv = NULL WHERE venv IS NOT NULL")
        try:
            with connect(installed) as fresh:
                rows = fresh.execute("SELECT check_name, ok, fix FROM movrec.doctor()").fetchall()
        finally:
            conn.execute("DELETE FROM movrec.installs WHERE sql_sha256 = 'x'")
            schema.install(conn)
        assert rows[0][:2] == ("venv", False) and "movrec install" in rows[0][2], rows


def test_upgrade_numbers_the_old_backups_per_user(new_database: Callable[[str], str]) -> None:
    """0.1.0's first layout (a global backup_id per archived vector) becomes the per-user ring."""
    dsn = new_database("t_upgrade_backups")
    with connect(dsn) as conn:
        schema.install(conn)
        conn.execute("""
            INSERT INTO model.registry (model_id, kind, dim, global_mean, checkpoint, serving_movie_ids,
                                        serving_matrix, default_embedding, default_bias)
            OVERRIDING SYSTEM VALUE VALUES (1, 'mf', 100, 3, '', '', '', array_fill(0, ARRAY[100]), 0);
            INSERT INTO model.user_latent_attributes (user_id, embedding, bias, model_id)
            SELECT u, array_fill(0, ARRAY[100])::vector, 0, 1 FROM generate_series(1, 2) u;
            DROP TABLE model.user_latent_attributes_backups;
            CREATE TABLE model.user_latent_attributes_backups (
                backup_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, user_id integer NOT NULL,
                embedding vector(100) NOT NULL, bias real NOT NULL, model_id bigint NOT NULL,
                archived_at timestamptz NOT NULL DEFAULT clock_timestamp());
            INSERT INTO model.user_latent_attributes_backups (user_id, embedding, bias, model_id)
            SELECT u, array_fill(0, ARRAY[100])::vector, b, 1
            FROM (VALUES (1, 0.1), (2, 0.2), (1, 0.3), (1, 0.4)) v (u, b);
            UPDATE movrec.installs SET version = '0.1.0';""")
        schema.install(conn)
        rows = conn.execute("""SELECT user_id, slot, update_seq, round(bias::numeric, 1)::float
                               FROM model.user_latent_attributes_backups ORDER BY 1, 3""").fetchall()
        assert rows == [(1, 1, 1, 0.1), (1, 2, 2, 0.3), (1, 3, 3, 0.4), (2, 1, 1, 0.2)]
        counts = conn.execute(
            "SELECT user_id, n_updates FROM model.user_latent_attributes ORDER BY 1"
        ).fetchall()
        assert counts == [(1, 3), (2, 1)]
