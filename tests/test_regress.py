"""The SQL regression suite (test/sql/*.sql against test/expected/*.out) on the harness's cluster.

It runs `make installcheck`, the same target a developer runs against `movrec db up`, so the
database it prepares (movrec_regress: `movrec install`, the demo data) and the pg_regress
options are the Makefile's alone.  Results go to a temporary directory, not the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from movrec_cli.cluster import Cluster
from psycopg.conninfo import conninfo_to_dict

ROOT = Path(__file__).resolve().parents[1]


def test_sql_regression_suite(cluster: Cluster, tmp_path: Path) -> None:
    assert shutil.which("make"), (
        "make is needed to run the pg_regress suite (make setup installs it)"
    )
    dsn = conninfo_to_dict(cluster.dsn("postgres"))
    env = {
        **os.environ,
        "PGHOST": str(dsn["host"]),
        "PGPORT": str(dsn["port"]),
        "PGUSER": str(dsn["user"]),
    }
    env.pop("PGDATABASE", None)
    r = subprocess.run(
        [
            "make",
            "-s",
            "--no-print-directory",
            "installcheck",
            f"REGRESS_OUTPUTDIR={tmp_path}",
            f"MOVREC={Path(sys.executable).parent / 'movrec'}",  # this venv's CLI
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    diffs = tmp_path / "regression.diffs"
    assert r.returncode == 0, f"pg_regress failed:\n{r.stdout}\n{r.stderr}\n" + (
        diffs.read_text(errors="replace") if diffs.exists() else "(no regression.diffs)"
    )
