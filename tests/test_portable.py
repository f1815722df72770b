"""The portable install (managed PostgreSQL): no plpython3u, a non-superuser owner, the same API.

The behaviour tests of recommend(), predict(), rate(), the trigger and bad input run on both
installs (test_serving.py, test_online.py, test_input_bounds.py); here is what is particular
to the portable one: how it installs, that its SQL surface is the full install's, and that its
recommend() ranks as the numpy one does for the same champion on generated data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import psycopg
import pytest
from movrec import __version__
from movrec_cli import bench_portable, schema
from movrec_cli.cluster import Cluster
from movrec_cli.errors import CliError
from movrec_cli.generate import Plan, load

from tests.conftest import (
    PORTABLE_OWNER,
    connect,
    install_into,
    portable_database,
    set_settings,
    train,
)

# Functions of one install only, and why: the full install's loader and venv pin are
# PL/Python's, and its recommend() rows come from numpy without titles (_recommend joins them);
# the portable one's helpers do in SQL what numpy does in the full install.
FULL_ONLY = {
    "_activate()",
    "pin_venv(text)",
    "_recommend_numpy(integer,integer,text[],integer,integer)",
}
PORTABLE_ONLY = {
    "_float4s(bytea)",
    "_needs_cli(text,text)",
    "_recommend_item_item(bigint,vector,double precision,integer,integer[],integer[],text[],integer,"
    "integer,double precision)",
    "_recommend_model(bigint,vector,double precision,boolean,integer,integer,integer[],text[],integer,"
    "integer,double precision)",
    "_scaled(vector,double precision)",
    "publish_serving_vectors()",
    "serving_vectors_on_deploy()",
}

SURFACE = """
SELECT p.proname || substr(p.oid::regprocedure::text, strpos(p.oid::regprocedure::text, '(')),
       pg_get_function_result(p.oid), l.lanname
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_language l ON l.oid = p.prolang
WHERE n.nspname IN ('movrec', 'model')
"""


@pytest.fixture(scope="module")
def full_db(cluster: Cluster, new_database: Callable[[str], str]) -> str:
    return install_into(cluster, new_database("t_portable_full"), "full")


@pytest.fixture(scope="module")
def portable_db(cluster: Cluster, new_database: Callable[[str], str]) -> str:
    return install_into(cluster, new_database("t_portable_port"), "portable")


def _surface(dsn: str) -> dict[str, tuple[str, str]]:
    with connect(dsn) as conn:
        return {sig: (res, lang) for sig, res, lang in conn.execute(SURFACE)}


def test_same_functions_signatures_and_results_without_plpython(
    full_db: str, portable_db: str
) -> None:
    full, port = _surface(full_db), _surface(portable_db)
    assert not [s for s, (_, lang) in port.items() if lang.startswith("plpython")]
    assert set(full) - set(port) == FULL_ONLY
    assert set(port) - set(full) == PORTABLE_ONLY
    assert {s: r for s, (r, _) in full.items() if s in port} == {
        s: r for s, (r, _) in port.items() if s in full
    }
    with connect(portable_db) as conn:
        assert not conn.execute(
            "SELECT 1 FROM pg_extension WHERE extname = 'plpython3u'"
        ).fetchone()
        owner = conn.execute(
            "SELECT r.rolname, r.rolsuper FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba "
            "WHERE d.datname = current_database()"
        ).fetchone()
        assert owner == (PORTABLE_OWNER, False)
        # every movrec object is the owner's: the install ran as that role
        assert conn.execute(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'movrec' AND p.proowner <> (SELECT oid FROM pg_roles WHERE rolname = %s)",
            (PORTABLE_OWNER,),
        ).fetchone() == (0,)


def test_rerun_changes_nothing_and_kinds_do_not_mix(
    cluster: Cluster, portable_db: str, full_db: str
) -> None:
    owner = portable_database(cluster, portable_db)
    with connect(owner) as conn:
        assert not schema.install(conn, portable=True).changed
        assert schema.install_kind(conn) == "portable"
        assert schema.installed_version(conn) == f"{__version__} (portable)"
        with pytest.raises(CliError, match="holds the portable install"):
            schema.install(conn)
    with connect(full_db) as conn, pytest.raises(CliError, match="holds the full install"):
        schema.install(conn, portable=True)


@pytest.mark.parametrize(
    "call",
    [
        "SELECT movrec.train('mf')",
        "SELECT movrec.deploy((SELECT max(model_id) FROM model.registry))",
        "SELECT * FROM movrec.tokenize()",
        "SELECT * FROM movrec.user_to_user(1)",
        "SELECT movrec.cf_drain()",
        "SELECT movrec.embed_new_movies()",
    ],
)
def test_jobs_that_need_torch_name_the_cli_command(portable_trained: str, call: str) -> None:
    with connect(portable_trained) as conn, pytest.raises(psycopg.errors.FeatureNotSupported) as e:
        conn.execute(call)
    assert "portable install" in str(e.value) and "movrec " in (e.value.diag.message_hint or "")


@pytest.fixture
def roleless(cluster: Cluster, new_database: Callable[[str], str]) -> Iterator[str]:
    """An owner that may not create roles, with the two roles it is to use made beforehand."""
    dsn = new_database("t_portable_roleless")
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        for role in ("app_reader", "app_jobs", "plain_owner"):
            conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute("CREATE ROLE app_reader NOLOGIN")
        conn.execute("CREATE ROLE app_jobs NOLOGIN IN ROLE app_reader")
        conn.execute("CREATE ROLE plain_owner LOGIN PASSWORD 'pw'")
        conn.execute("ALTER DATABASE t_portable_roleless OWNER TO plain_owner")
    with connect(dsn) as conn:
        conn.execute("CREATE EXTENSION vector")
    yield psycopg.conninfo.make_conninfo(dsn, user="plain_owner", password="pw")


def test_an_owner_without_createrole_names_existing_roles(roleless: str, full_db: str) -> None:
    # (Without names, an owner without CREATEROLE gets an error naming --app-role where
    # movrec_user does not exist yet; roles are cluster-wide, and the other modules' installs
    # made it here (full_db: made before this test), so that case is not reachable in this cluster.)
    with connect(roleless) as conn:
        with pytest.raises(CliError, match="no such role"):
            schema.install(conn, portable=True, app_role="nobody_here", admin_role="app_jobs")
        assert schema.install(
            conn, portable=True, app_role="app_reader", admin_role="app_jobs"
        ).changed
        assert conn.execute(
            "SELECT has_function_privilege('app_reader', 'movrec.recommend(integer, integer, text[], integer, "
            "integer)', 'EXECUTE'), has_function_privilege('app_jobs', 'movrec.refresh_movie_stats()', 'EXECUTE'), "
            "has_function_privilege('app_reader', 'movrec.refresh_movie_stats()', 'EXECUTE'), "
            "has_function_privilege('movrec_user', 'movrec.recommend(integer, integer, text[], integer, integer)', "
            "'EXECUTE')"
        ).fetchone() == (True, True, False, False)


# --- the same champion, ranked by numpy and by plpgsql + pgvector --------------------------

GENERATED = Plan(n_users=1500, n_movies=3000, n_ratings=120_000, seed=11)


@pytest.fixture(scope="module")
def generated_pair(full_db: str, portable_db: str) -> tuple[str, str]:
    """Generated data in the full install, an MF champion trained there; the portable database
    gets the same ratings and the same champion (deployed by the CLI from its checkpoint)."""
    with connect(full_db) as conn:
        load(conn, GENERATED, lambda _: None)
        train(conn, "mf", '{"epochs": 2, "batch_size": 8192, "lr": 0.01}')
    with connect(full_db) as full, connect(portable_db) as port:
        bench_portable.copy_data(full, port)
    return full_db, portable_db


@pytest.fixture(scope="module")
def portable_trained(generated_pair: tuple[str, str]) -> str:
    return generated_pair[1]


CALLS = [
    "SELECT movie_id, score, predicted_rating, source FROM movrec.recommend(%s, 10)",
    "SELECT movie_id, score, predicted_rating, source FROM movrec.recommend(%s, 25, '{comedy,Drama}')",
    "SELECT movie_id, score, predicted_rating, source FROM movrec.recommend(%s, 10, NULL, 1990, 2005)",
]


@pytest.mark.parametrize("call", CALLS)
def test_exact_search_is_the_numpy_ranking(generated_pair: tuple[str, str], call: str) -> None:
    full_dsn, port_dsn = generated_pair
    with connect(full_dsn) as full, connect(port_dsn) as port:
        set_settings(port, recommend_search="exact")
        for user in range(1, 1500, 37):
            want = full.execute(call, (user,)).fetchall()
            got = port.execute(call, (user,)).fetchall()
            assert [r[0] for r in got] == [r[0] for r in want], user
            assert [r[3] for r in got] == [r[3] for r in want]
            flat = [x for r in got for x in r[1:3]]
            assert flat == pytest.approx([x for r in want for x in r[1:3]], abs=1e-4)


def test_hnsw_search_recall_at_10_and_always_k_rows(generated_pair: tuple[str, str]) -> None:
    full_dsn, port_dsn = generated_pair
    hits = total = 0
    with connect(full_dsn) as full, connect(port_dsn) as port:
        set_settings(port, recommend_search="hnsw")  # the default ef_search
        try:
            for user in range(1, 1500, 7):
                for call in CALLS:
                    want = {r[0] for r in full.execute(call, (user,))}
                    got = port.execute(call, (user,)).fetchall()
                    assert len(got) == len(want)  # k rows whenever k exist, filters and all
                    seen = {
                        r[0]
                        for r in port.execute(
                            "SELECT movie_id FROM movrec.watch_events WHERE user_id = %s", (user,)
                        )
                    }
                    assert not seen & {r[0] for r in got}
                    assert all(r[2] >= 3 for r in got if r[3] == "model")
                    hits += len(want & {r[0] for r in got})
                    total += len(want)
        finally:
            set_settings(port, recommend_search="exact")
    assert hits / total >= 0.98


def test_the_worker_runs_cf_in_the_cli_and_refresh_in_sql(portable_trained: str) -> None:
    from click.testing import CliRunner
    from movrec_cli.main import cli

    with connect(portable_trained) as conn:
        conn.execute("DELETE FROM model.cf_queue; DELETE FROM model.refresh_queue")
        conn.execute("DELETE FROM model.user_recommendation WHERE user_id = 3")
        conn.execute("SELECT movrec.rate(3, (SELECT min(movie_id) FROM movrec.movies), 4)")
        assert conn.execute("SELECT count(*) FROM model.cf_queue").fetchone() == (1,)
        result = CliRunner().invoke(cli, ["worker", "--once", "--quiet", "--dsn", portable_trained])
        assert result.exit_code == 0, result.output
        assert conn.execute(
            "SELECT (SELECT count(*) FROM model.cf_queue), (SELECT count(*) FROM model.refresh_queue), "
            "(SELECT count(*) FROM model.model_recommendation WHERE user_id = 3)"
        ).fetchone() == (0, 0, 150)  # each job deleted with its result


def test_tokenize_runs_in_the_cli(portable_trained: str) -> None:
    from click.testing import CliRunner
    from movrec_cli.main import cli

    result = CliRunner().invoke(cli, ["tokenize", "--dsn", portable_trained])
    assert result.exit_code == 0, result.output
    with connect(portable_trained) as conn:
        assert conn.execute(
            "SELECT count(*) > 0, count(DISTINCT field) > 1 FROM movrec.vocab"
        ).fetchone() == (True, True)


def test_evaluate_runs_in_the_cli(portable_trained: str) -> None:
    from click.testing import CliRunner
    from movrec_cli.main import cli

    with connect(portable_trained) as conn:
        model_id = conn.execute("SELECT model_id FROM model.champion").fetchone()[0]
    result = CliRunner().invoke(cli, ["evaluate", str(model_id), "--dsn", portable_trained])
    assert result.exit_code == 0, result.output
    assert "rmse" in result.output and "ndcg@10" in result.output
