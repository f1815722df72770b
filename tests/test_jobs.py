"""Background jobs: the worker drains every queue, stale jobs are pruned, pg_cron schedules
them all, and movrec.status shows what to alert on."""

from __future__ import annotations

import psycopg
from click.testing import CliRunner
from movrec_cli import schema
from movrec_cli.cluster import DATABASE, Cluster
from movrec_cli.main import cli

from tests.conftest import connect

GONE = 999_999  # a user without any rating


def status(conn: psycopg.Connection) -> dict[str, tuple]:
    return {r[0]: r[1:] for r in conn.execute("SELECT * FROM movrec.status").fetchall()}


def test_worker_drains_every_queue_and_prunes(trained: str) -> None:
    with connect(trained) as conn:
        conn.execute("SELECT movrec.rate(7, m, 4) FROM generate_series(1, 3) m")
        conn.execute("SELECT movrec.rate(8, 5, 2)")
        conn.execute(f"INSERT INTO model.cf_queue (user_id) VALUES ({GONE})")
        conn.execute(f"INSERT INTO model.refresh_queue (user_id) VALUES ({GONE})")
        before = status(conn)
        assert before["refresh_queue"][0] >= 3 and before["cf_queue"][0] >= 3
        assert before["refresh_queue"][1] is not None  # the oldest job's age
        r = CliRunner().invoke(cli, ["worker", "--once", "--dsn", trained])
        assert r.exit_code == 0, r.output
        assert "pruned 2 jobs" in r.output
        after = status(conn)
        assert after["refresh_queue"][:2] == (0, None), after
        assert after["cf_queue"][:2] == (0, None), after
        assert conn.execute("SELECT count(*) FROM model.model_recommendation WHERE user_id = 8")
        assert conn.execute("SELECT movrec.prune_queues()").fetchone()[0] == 0


def test_status_names_the_champion_and_its_data(trained: str) -> None:
    with connect(trained) as conn:
        model_id = conn.execute("SELECT model_id FROM model.champion").fetchone()[0]
        value, age, detail = status(conn)["champion"]
        assert value == model_id and age is not None
        assert "mf, trained" in detail and "ratings of 200 movies" in detail
        # the champion's row stays short: per-epoch metrics live in the registry only
        row = conn.execute("SELECT c::text FROM model.champion c").fetchone()[0]
        assert len(row) < 600, row
        assert "history" not in conn.execute("SELECT metrics FROM model.champion").fetchone()[0]
        assert conn.execute(
            "SELECT jsonb_array_length(metrics->'history') > 0 FROM model.registry "
            "WHERE model_id = %s",
            (model_id,),
        ).fetchone()[0]
    r = CliRunner().invoke(cli, ["status", "--dsn", trained])
    assert r.exit_code == 0 and "refresh_queue" in r.output and "champion" in r.output, r.output


def test_schedule_registers_every_queue_with_pg_cron(cluster: Cluster) -> None:
    """The harness's cluster loads pg_cron for the database `movrec` (cron.database_name).
    That database is emptied, never dropped: dropping it would take pg_cron's launcher with it."""
    dsn = cluster.dsn(DATABASE)
    with connect(dsn) as conn:
        schema.uninstall(conn, drop_data=True)
        schema.install(conn)
        jobs = conn.execute("SELECT job_name, command FROM movrec.schedule()").fetchall()
        assert dict(jobs) == {
            "movrec-cf-drain": "SELECT movrec.cf_drain(100)",
            "movrec-serving-drain": "SELECT movrec.serving_drain(100)",
            "movrec-prune-queues": "SELECT movrec.prune_queues()",
            "movrec-retrain": "SELECT * FROM movrec.retrain_and_promote()",
        }
        # again: replaced, not doubled
        conn.execute("SELECT * FROM movrec.schedule('*/5 * * * *', 50)")
        assert conn.execute(
            "SELECT count(*), min(schedule) FROM cron.job WHERE jobname LIKE 'movrec-%'"
        ).fetchone() == (4, "*/5 * * * *")
        # the retrain keeps its nightly time: a drain schedule is not a training schedule
        assert conn.execute(
            "SELECT schedule FROM cron.job WHERE jobname = 'movrec-retrain'"
        ).fetchone() == ("0 3 * * *",)
        assert {k for k in status(conn) if k.startswith("cron ")} == {
            f"cron {name}" for name, _ in jobs
        }
        assert conn.execute("SELECT movrec.unschedule()").fetchone()[0] == 4
        assert conn.execute("SELECT count(*) FROM cron.job").fetchone()[0] == 0
