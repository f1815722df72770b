"""Attacks as the documented roles: each must fail with a clear error and change no stored row.

The application logs in as a role that holds only movrec_user, the job runner as one that
holds only movrec_admin, both with passwords over the cluster's socket (the embedded
cluster trusts nobody by OS user but its own).
"""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
from movrec.scoring import sgd_step
from movrec_cli.cluster import Cluster, bindir
from psycopg.conninfo import make_conninfo

from tests.conftest import connect, reset_settings, table_digest

APP, OPS, PASSWORD = "movrec_test_app", "movrec_test_ops", "s3cret-for-tests"
STORED = (
    "movrec.watch_events",
    "movrec.movies",
    "movrec.settings",
    "movrec.installs",
    "model.user_latent_attributes",
    "model.user_latent_attributes_backups",
    "model.user_rating_stats",
    "model.deployments",
    "model.registry",
)
VECTOR = "SELECT embedding::real[], bias FROM model.user_latent_attributes WHERE user_id = %s"


def fingerprint(conn: psycopg.Connection) -> dict[str, tuple[int, str]]:
    return {t: table_digest(conn, t) for t in STORED}


@pytest.fixture(scope="module")
def roles(trained: str) -> dict[str, str]:
    """DSNs of a login role holding only movrec_user and one holding only movrec_admin."""
    with connect(trained) as conn:
        for name, member_of in ((APP, "movrec_user"), (OPS, "movrec_admin")):
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
                conn.execute(f"CREATE ROLE {name} LOGIN")
            conn.execute(f"ALTER ROLE {name} PASSWORD '{PASSWORD}'")
            conn.execute(f"GRANT {member_of} TO {name}")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS public.private_ratings AS SELECT * FROM movrec.watch_events"
        )
        conn.execute("REVOKE ALL ON public.private_ratings FROM PUBLIC")
    return {
        "app": make_conninfo(trained, user=APP, password=PASSWORD),
        "ops": make_conninfo(trained, user=OPS, password=PASSWORD),
    }


@pytest.fixture
def owner(trained: str) -> Iterator[psycopg.Connection]:
    with connect(trained) as c:
        yield c


@pytest.fixture
def unchanged(owner: psycopg.Connection) -> Iterator[None]:
    """The attack in the test body changes no stored row."""
    before = fingerprint(owner)
    yield
    assert fingerprint(owner) == before


def as_role(dsn: str) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=True)


def unseen(conn: psycopg.Connection, user: int, n: int) -> list[int]:
    return [
        m
        for (m,) in conn.execute(
            """SELECT movie_id FROM model.movie_latent_attributes
               WHERE movie_id NOT IN (SELECT movie_id FROM movrec.watch_events WHERE user_id = %s)
               ORDER BY movie_id LIMIT %s""",
            (user, n),
        ).fetchall()
    ]


# 1. Superuser through a session-chosen venv -----------------------------------------------


@pytest.fixture
def planted_venv() -> Iterator[tuple[Path, Path]]:
    """A venv-shaped directory whose .pth would write a marker file as the server's OS user."""
    root = Path(tempfile.mkdtemp(prefix="movrec-attack-"))
    site = root / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    marker = root / "pwned"
    (site / "evil.pth").write_text(f"import os; open({str(marker)!r}, 'w').write('ran')\n")
    for path in (root, *root.rglob("*")):
        path.chmod(0o777 if path.is_dir() else 0o666)
    yield root, marker
    subprocess.run(["rm", "-rf", str(root)], check=False)


def test_app_cannot_run_activate_or_pin_a_venv(roles: dict[str, str], unchanged: None) -> None:
    with as_role(roles["app"]) as app:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("SELECT movrec._activate()")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("SELECT movrec.pin_venv('/tmp')")
    with as_role(roles["ops"]) as ops, pytest.raises(psycopg.errors.InsufficientPrivilege):
        ops.execute("SELECT movrec.pin_venv('/tmp')")


def test_a_session_venv_is_ignored(
    roles: dict[str, str], planted_venv: tuple[Path, Path], unchanged: None
) -> None:
    venv, marker = planted_venv
    for role in ("app", "ops"):
        with as_role(roles[role]) as c:  # a new backend: movrec activates in it now
            c.execute(f"SET movrec.venv = '{venv}'")
            c.execute("SET movrec.threads = '16'")
            assert c.execute("SELECT count(*) FROM recommend(1, 5)").fetchone()[0] == 5
            assert not c.execute(
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
            ).fetchone()[0]
            if role == "ops":
                rows = {r[0]: r for r in c.execute("SELECT * FROM movrec.doctor()").fetchall()}
                assert str(venv) not in rows["venv"][2]
                assert "OPENBLAS_NUM_THREADS=1" in rows["threads"][2]
    assert not marker.exists()


def test_implementation_functions_are_not_callable(roles: dict[str, str], unchanged: None) -> None:
    with as_role(roles["app"]) as app:
        for call in (
            "SELECT * FROM movrec._recommend(1, 5, NULL, NULL, NULL)",
            "SELECT movrec._predict(1, 1)",
            "SELECT movrec.train('mf')",
            "SELECT movrec.deploy(1)",
            "SELECT movrec.cf_drain(1)",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(call)
    with as_role(roles["ops"]) as ops, pytest.raises(psycopg.errors.InsufficientPrivilege):
        ops.execute("SELECT movrec._deploy(1)")


def test_the_app_cannot_create_in_schemas_privileged_code_searches(
    roles: dict[str, str], unchanged: None
) -> None:
    """SECURITY DEFINER functions search movrec, model, public: none may take new objects."""
    with as_role(roles["app"]) as app:
        for schema in ("movrec", "model", "public"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(
                    f"CREATE FUNCTION {schema}.vector_send(int) RETURNS int LANGUAGE sql AS 'SELECT 1'"
                )


# 2. The embedded cluster trusts no other OS user ---------------------------------------------


def test_other_os_users_cannot_connect(cluster: Cluster) -> None:
    mode = stat.S_IMODE(os.stat(cluster.socket_dir).st_mode)
    assert mode == 0o700
    with psycopg.connect(cluster.dsn("postgres")) as conn:
        methods = {
            m for (m,) in conn.execute("SELECT auth_method FROM pg_hba_file_rules").fetchall()
        }
    assert "trust" not in methods and "peer" in methods
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another OS user")
    r = subprocess.run(
        ["runuser", "-u", "nobody", "--", str(bindir() / "psql"), "-h", str(cluster.socket_dir),
         "-p", str(cluster.port), "-U", "postgres", "-d", "postgres", "-w", "-c", "SELECT 1"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode != 0
    assert "Permission denied" in r.stderr or "authentication failed" in r.stderr, r.stderr


# 3. Trigger functions only run as their own triggers ---------------------------------------


TRIGGERS = {
    "movrec.on_rating()": "AFTER INSERT ON t FOR EACH ROW",
    "movrec.cf_on_ratings_changed()": "AFTER INSERT ON t REFERENCING NEW TABLE AS movrec_cf_new FOR EACH STATEMENT",
}


@pytest.mark.parametrize("function", TRIGGERS)
def test_trigger_functions_cannot_be_attached_by_the_app(
    roles: dict[str, str], unchanged: None, function: str
) -> None:
    with as_role(roles["app"]) as app:
        app.execute("CREATE TEMP TABLE t (LIKE movrec.watch_events INCLUDING DEFAULTS)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute(f"CREATE TRIGGER x {TRIGGERS[function]} EXECUTE FUNCTION {function}")


@pytest.mark.parametrize("function", TRIGGERS)
def test_trigger_functions_refuse_other_tables(owner: psycopg.Connection, function: str) -> None:
    """Even where one is attached (by the owner), it refuses to run and nothing changes."""
    before = fingerprint(owner)
    owner.execute("CREATE TEMP TABLE t (LIKE movrec.watch_events INCLUDING DEFAULTS)")
    owner.execute(f"CREATE TRIGGER x {TRIGGERS[function]} EXECUTE FUNCTION {function}")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="runs only as"):
        owner.execute(
            "INSERT INTO t (user_id, movie_id, rating) SELECT g, 1, 5 FROM generate_series(1, 50) g"
        )
    owner.execute("DROP TABLE t")
    assert fingerprint(owner) == before


# 4. Settings: only the admin's table steers privileged code ---------------------------------


def test_session_settings_do_not_steer_the_trigger(
    roles: dict[str, str], owner: psycopg.Connection
) -> None:
    user = 41
    mu = owner.execute(
        "SELECT r.global_mean FROM model.champion c JOIN model.registry r USING (model_id)"
    ).fetchone()[0]
    archived = owner.execute(
        "SELECT count(*) FROM model.user_latent_attributes_backups WHERE user_id = %s", (user,)
    ).fetchone()[0]
    with as_role(roles["app"]) as app:
        app.execute("SET movrec.online_reg = '-1000'")
        app.execute("SET movrec.online_lr = '1'")
        app.execute("SET movrec.backup_retention = '1'")
        app.execute("SET movrec.online_update = 'refit'")
        for movie, rating in zip(unseen(owner, user, 3), (5.0, 0.5, 5.0), strict=True):
            u, b = owner.execute(VECTOR, (user,)).fetchone()
            m, b_m = owner.execute(
                "SELECT embedding::real[], bias FROM model.movie_latent_attributes WHERE movie_id = %s",
                (movie,),
            ).fetchone()
            app.execute("SELECT movrec.rate(%s::int, %s::int, %s::real)", (user, movie, rating))
            want_u, want_b = sgd_step(np.asarray(u), b, np.asarray(m), b_m, mu, rating, 0.05, 0.02)
            got_u, got_b = owner.execute(VECTOR, (user,)).fetchone()
            assert np.allclose(got_u, want_u, atol=1e-5) and got_b == pytest.approx(
                want_b, abs=1e-5
            )
    after = owner.execute(
        "SELECT count(*) FROM model.user_latent_attributes_backups WHERE user_id = %s", (user,)
    ).fetchone()[0]
    assert after == min(archived + 3, 20)  # the ring of 20 (the default), not 1


def test_only_the_admin_changes_settings_and_only_to_valid_values(
    roles: dict[str, str], owner: psycopg.Connection
) -> None:
    before = table_digest(owner, "movrec.settings")
    with as_role(roles["app"]) as app, pytest.raises(psycopg.errors.InsufficientPrivilege):
        app.execute("UPDATE movrec.settings SET online_reg = -1000")
    with as_role(roles["ops"]) as ops:
        for column, value, check in (
            ("online_reg", "-1000", "online_reg_is_0_to_10"),
            ("online_lr", "NaN", "online_lr_is_above_0_up_to_1"),
            ("online_lr", "Infinity", "online_lr_is_above_0_up_to_1"),
            ("backup_retention", "-1", "backup_retention_is_0_to_10000"),
            ("threads", "0", "threads_is_1_to_64"),
            ("device", "tpu", "device_is_auto_cpu_or_cuda"),
            ("train_budget_s", "-1", "train_budget_s_is_0_to_604800"),
            ("train_budget_s", "NaN", "train_budget_s_is_0_to_604800"),
        ):
            with pytest.raises(psycopg.errors.CheckViolation, match=check):
                ops.execute(f"UPDATE movrec.settings SET {column} = %s", (value,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            ops.execute("UPDATE movrec.settings SET updated_by = 'someone else'")
        assert table_digest(owner, "movrec.settings") == before
        ops.execute("UPDATE movrec.settings SET online_lr = 0.04")
    try:
        assert owner.execute("SELECT online_lr, updated_by FROM movrec.settings").fetchone() == (
            0.04,
            OPS,
        )
    finally:
        reset_settings(owner)


# 5. Column discipline on watch_events ------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE movrec.watch_events SET user_id = 999 WHERE user_id = 2",
        "UPDATE movrec.watch_events SET etl_run = 1 WHERE user_id = 2",
        "UPDATE movrec.watch_events SET rated_at = '2001-01-01' WHERE user_id = 2",
        "INSERT INTO movrec.watch_events (user_id, movie_id, rating, etl_run) VALUES (2, 1, 4, 7)",
        "DELETE FROM movrec.watch_events WHERE user_id = 2",
        "TRUNCATE movrec.watch_events",
    ],
)
def test_the_app_writes_only_ratings(
    roles: dict[str, str], unchanged: None, statement: str
) -> None:
    with as_role(roles["app"]) as app, pytest.raises(psycopg.errors.InsufficientPrivilege):
        app.execute(statement)


def test_no_rating_from_the_future(
    roles: dict[str, str], owner: psycopg.Connection, unchanged: None
) -> None:
    movie = unseen(owner, 3, 1)[0]
    with as_role(roles["app"]) as app:
        for statement in (
            "INSERT INTO movrec.watch_events (user_id, movie_id, rating, rated_at) VALUES (3, %s, 4, '2099-01-01')",
            "INSERT INTO movrec.watch_events (user_id, movie_id, rating, rated_at) "
            "VALUES (3, %s, 4, now() + interval '1 hour')",
        ):
            with pytest.raises(
                psycopg.errors.CheckViolation, match="rated_at_is_not_in_the_future"
            ):
                app.execute(statement, (movie,))


def test_a_rerating_is_stamped_now_and_live(
    roles: dict[str, str], owner: psycopg.Connection
) -> None:
    user, movie = owner.execute(
        "SELECT user_id, movie_id FROM movrec.watch_events WHERE etl_run IS NULL AND rating <> 2 LIMIT 1"
    ).fetchone()
    owner.execute(
        "UPDATE movrec.watch_events SET rated_at = '2001-01-01', etl_run = 12 WHERE (user_id, movie_id) = (%s, %s)",
        (user, movie),
    )
    with as_role(roles["app"]) as app:
        app.execute(
            "UPDATE movrec.watch_events SET rating = 2 WHERE user_id = %s AND movie_id = %s",
            (user, movie),
        )
        app.execute(
            """INSERT INTO movrec.watch_events (user_id, movie_id, rating) VALUES (%s, %s, 2.5)
               ON CONFLICT (user_id, movie_id) DO UPDATE SET rating = excluded.rating""",
            (user, movie),
        )
    rating, etl_run, fresh = owner.execute(
        """SELECT rating, etl_run, rated_at > now() - interval '1 minute' FROM movrec.watch_events
           WHERE user_id = %s AND movie_id = %s""",
        (user, movie),
    ).fetchone()
    assert (rating, etl_run, fresh) == (2.5, None, True)


# 6. The admin role: reads only what it may, its grants work, audit names who ---------------


def test_evaluate_checks_the_callers_privilege(
    roles: dict[str, str], owner: psycopg.Connection
) -> None:
    model = owner.execute("SELECT model_id FROM model.champion").fetchone()[0]
    before = table_digest(owner, "model.registry")
    with as_role(roles["ops"]) as ops:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="private_ratings"):
            ops.execute("SELECT * FROM movrec.evaluate(%s, 'public.private_ratings')", (model,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            ops.execute("SELECT count(*) FROM public.private_ratings")
    assert table_digest(owner, "model.registry") == before


def test_admin_grants_work_and_audit_names_the_session_user(
    roles: dict[str, str], owner: psycopg.Connection
) -> None:
    with as_role(roles["ops"]) as ops:
        ops.execute("UPDATE movrec.settings SET train_threads = 2, device = 'cpu'")
        ops.execute("SELECT * FROM movrec.tokenize()")
        movie = ops.execute("SELECT movie_id FROM movrec.movie_tokens LIMIT 1").fetchone()[0]
        assert ops.execute("SELECT movrec.detokenize(%s, 'title')", (movie,)).fetchone()[0]
        ops.execute("CALL movrec.etl_clean_links()")
        model = ops.execute(
            """SELECT movrec.train('mf', '{"epochs": 2}', deploy => false)"""
        ).fetchone()[0]
        ops.execute("SELECT movrec.deploy(%s)", (model,))
        ops.execute("SELECT movrec.serving_drain(5)")
        ops.execute("SELECT movrec.cf_drain(5)")
    try:
        assert owner.execute(
            "SELECT trained_by, params ->> 'device' FROM model.registry WHERE model_id = %s",
            (model,),
        ).fetchone() == (OPS, "cpu")  # the database's default device reached training
        assert owner.execute("SELECT model_id, deployed_by FROM model.champion JOIN model.deployments USING "
                             "(deployment_id, model_id)").fetchone() == (model, OPS)  # fmt: skip
    finally:
        owner.execute("SELECT movrec.rollback()")
        reset_settings(owner)


def test_roles_have_what_the_readme_says(trained: str) -> None:
    """The role table in the README, checked against the catalogue."""
    with connect(trained) as conn:

        def can(role: str, function: str) -> bool:
            return conn.execute(
                "SELECT has_function_privilege(%s, %s, 'EXECUTE')", (role, function)
            ).fetchone()[0]

        for function in ("movrec.recommend(integer, integer, text[], integer, integer)", "movrec.rate(integer, integer, real)",
                         "movrec.predict(integer, integer)", "movrec.similar_movies(integer, integer)",
                         "movrec.explain(integer, integer, integer)", "movrec.wait_for_lsn(pg_lsn, integer)"):  # fmt: skip
            assert can("movrec_user", function) and can("movrec_admin", function)
        for function in ("movrec.train(text, jsonb, boolean)", "movrec.deploy(bigint)", "movrec.rollback()",
                         "movrec.doctor()", "movrec.serving_drain(integer)", "movrec.cf_drain(integer)"):  # fmt: skip
            assert can("movrec_admin", function) and not can("movrec_user", function)
        nobody = conn.execute(
            """SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
               WHERE n.nspname IN ('movrec', 'model')
                 AND (p.prorettype = 'trigger'::regtype OR p.proname LIKE '\\_%')
                 AND (has_function_privilege('movrec_user', p.oid, 'EXECUTE')
                      OR has_function_privilege('movrec_admin', p.oid, 'EXECUTE'))"""
        ).fetchall()
        assert nobody == []


def test_pg_cron_jobs_still_connect(cluster: Cluster) -> None:
    """pg_cron runs a job through a libpq connection as the job's owner: peer, mapped."""
    from movrec_cli import schema

    with psycopg.connect(cluster.dsn("movrec"), autocommit=True) as conn:  # cron.database_name
        schema.install(conn)
        job = conn.execute("SELECT movrec.cf_schedule('* * * * *', 10)").fetchone()[0]
        try:
            deadline = time.monotonic() + 75  # the first run is at the next minute
            status = None
            while time.monotonic() < deadline and status is None:
                time.sleep(1)
                row = conn.execute(
                    "SELECT status, return_message FROM cron.job_run_details WHERE jobid = %s "
                    "AND status IN ('succeeded', 'failed') ORDER BY runid DESC LIMIT 1",
                    (job,),
                ).fetchone()
                status = row and row[0]
            assert row is not None and row[0] == "succeeded", row
        finally:
            conn.execute("SELECT movrec.cf_unschedule()")
