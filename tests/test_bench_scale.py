"""`movrec bench scale` at a tiny scale: every step runs, is timed and measured, on a single
node and on Citus; a step that fails is reported with its error and the command still finishes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from movrec_cli.main import cli

from tests.conftest import citus_missing, connect

TINY = ["--users", "150", "--movies", "120", "--ratings", "4000", "--seed", "3"]
QUICK = '{"epochs": 1, "batch_size": 1024, "lr": 0.01}'
STEPS = ["generate", "train mf", "train hybrid", "deploy", "refresh all users", "CF all users"]


def run(tmp_path: Path, *args: str) -> tuple[int, str, dict]:
    out = tmp_path / "scale.json"
    result = CliRunner().invoke(
        cli,
        [
            "bench",
            "scale",
            *TINY,
            "--mf-options",
            QUICK,
            "--hybrid-options",
            QUICK,
            "--json",
            str(out),
            *args,
        ],
    )
    return result.exit_code, result.output, json.loads(out.read_text()) if out.exists() else {}


def test_every_step_runs_on_a_single_node(
    new_database: Callable[[str], str], tmp_path: Path
) -> None:
    dsn = new_database("t_bench_scale")
    code, output, report = run(tmp_path, "--dsn", dsn)
    assert code == 0, output
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == STEPS
    for s in steps.values():
        assert s["status"] == "ok", (s["name"], s.get("detail"))
        assert s["seconds"] > 0 and s["backend_peak_mb"] > 0 and s["client_peak_mb"] > 0
        assert s["name"] in output
    with connect(dsn) as conn:  # the steps did what they say
        (users,) = conn.execute(
            "SELECT count(DISTINCT user_id) FROM movrec.watch_events"
        ).fetchone()
        (stored,) = conn.execute(
            "SELECT count(DISTINCT user_id) FROM model.model_recommendation"
        ).fetchone()
        # every user was refreshed (a user whose every rating was held out has no vector)
        assert steps["refresh all users"]["detail"].startswith(f"{users:,} users")
        assert stored >= 0.9 * users
        assert steps["CF all users"]["detail"].startswith(f"{users:,} of {users:,} users")
        assert conn.execute("SELECT count(*) FROM model.cf_queue").fetchone()[0] == 0
        kind = conn.execute(
            "SELECT r.kind FROM model.champion c JOIN model.registry r USING (model_id)"
        ).fetchone()[0]
        assert kind == "hybrid"


def test_a_failing_step_is_reported_and_the_rest_runs(
    new_database: Callable[[str], str], tmp_path: Path
) -> None:
    dsn = new_database("t_bench_scale_fail")
    code, output, report = run(tmp_path, "--dsn", dsn, "--hybrid-options", '{"no_such_option": 1}')
    assert code == 0, output
    steps = {s["name"]: s for s in report["steps"]}
    assert steps["train hybrid"]["status"] == "failed"
    assert "no_such_option" in steps["train hybrid"]["detail"]
    assert "SQLSTATE" in steps["train hybrid"]["detail"]
    # the mf model is deployed instead, and the later steps run
    assert [steps[s]["status"] for s in STEPS[3:]] == ["ok", "ok", "ok"]


@pytest.mark.skipif(bool(citus_missing()), reason="Citus is not installed here")
def test_every_step_runs_on_citus(tmp_path: Path) -> None:
    code, output, report = run(tmp_path, "--citus", "--port", "59470")
    assert code == 0, output
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == STEPS and report["citus"] is True
    # every step runs on Citus: refresh and CF read without pushed-down subqueries there
    assert [steps[s]["status"] for s in STEPS] == ["ok"] * len(STEPS), steps
