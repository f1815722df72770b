"""The README's first steps work as typed.

The shell and SQL examples of the README's opening, its "Quick start" and its "Using it from psql"
sections are read from README.md at test time (no copy is kept here) and run, in order, against
the harness's cluster: the shell lines through bash with MOVREC_HOME/MOVREC_PORT naming that
cluster (so `movrec db up` and `movrec db dsn` find it), the SQL blocks through psql on the
database the quick start filled.  `make` lines (setup, demo, test) are left out: the harness
already did the setup, and the demo and the test suite are not examples to run here.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from movrec_cli import schema
from movrec_cli.cluster import DATABASE, Cluster

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# "" is the text before the first section: the example at the top.
SECTIONS = ("", "Quick start", "Using it from psql")


@dataclass
class Block:
    section: str
    lang: str
    body: str


def readme_blocks() -> list[Block]:
    """Fenced blocks of README.md with the level-2 section each stands in."""
    blocks: list[Block] = []
    section, lang, body = "", None, []
    for line in README.read_text(encoding="utf-8").splitlines():
        if lang is None and line.startswith("## "):
            section = line[3:].strip()
        elif line.startswith("```"):
            if lang is None:
                lang, body = line[3:].strip(), []
            else:
                blocks.append(Block(section, lang, "\n".join(body)))
                lang = None
        elif lang is not None:
            body.append(line)
    return [b for b in blocks if b.section in SECTIONS]


def shell_lines(block: Block) -> list[str]:
    """The commands of a shell block: an `sh` block's lines, or a plain block's `$ ` lines
    (the rest of a plain block is output)."""
    if block.lang == "sh":
        lines = block.body.splitlines()
    elif block.lang == "":
        lines = [line[2:] for line in block.body.splitlines() if line.startswith("$ ")]
    else:
        return []
    return [line for line in lines if line.strip() and not re.match(r"\s*make\b", line)]


def shown_output(block: Block) -> list[str]:
    """A plain block's output lines (what the README says the command prints)."""
    return [line for line in block.body.splitlines() if not line.startswith("$ ")]


def headers(psql_output: list[str]) -> list[str]:
    return [h.strip() for h in psql_output[0].split("|")]


def test_readme_has_the_examples() -> None:
    blocks = readme_blocks()
    assert any(b.section == "Quick start" and shell_lines(b) for b in blocks)
    assert any(b.section == "Using it from psql" and b.lang == "sql" for b in blocks)
    assert any(b.section == "" and shell_lines(b) for b in blocks)


@pytest.fixture(scope="module")
def env(cluster: Cluster) -> dict[str, str]:
    """The quick start's database, emptied, on the harness's cluster (never dropped: it is
    pg_cron's cron.database_name, and dropping it would take pg_cron's launcher with it)."""
    with psycopg.connect(cluster.dsn(DATABASE), autocommit=True) as conn:
        schema.uninstall(conn, drop_data=True)
    e = {k: v for k, v in os.environ.items() if not k.startswith(("MOVREC_", "PG"))}
    e.update(MOVREC_HOME=str(cluster.home), MOVREC_PORT=str(cluster.port))
    return e


def bash(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + script],
        cwd=ROOT,
        env=env,
        text=True,
        capture_output=True,
        timeout=900,
        check=False,
    )


def test_readme_examples_run_as_typed(env: dict[str, str]) -> None:
    blocks = readme_blocks()
    quick = [line for b in blocks if b.section == "Quick start" for line in shell_lines(b)]
    top = next(b for b in blocks if b.section == "" and shell_lines(b))
    # One shell, as a reader types it: `. .venv/bin/activate` holds for the lines after it.
    script = "\n".join(quick) + "\necho '--- top ---'\n" + "\n".join(shell_lines(top))
    r = bash(script, env)
    assert r.returncode == 0, f"README shell example failed:\n{script}\n{r.stdout}\n{r.stderr}"
    out = r.stdout.split("--- top ---\n", 1)[1].splitlines()
    # The example at the top prints what the README shows: the same columns and as many rows.
    shown = shown_output(top)
    assert headers(out) == headers(shown), out
    assert len([x for x in out if "|" in x]) == len([x for x in shown if "|" in x]), out

    for i, block in enumerate(b for b in blocks if b.lang == "sql"):
        sql_file = Path(f"/tmp/movrec-readme-{os.getpid()}-{i}.sql")
        sql_file.write_text(block.body + "\n", encoding="utf-8")
        sql_file.chmod(0o644)
        try:
            r = bash(
                f'. .venv/bin/activate\npsql "$(movrec db dsn)" -X -v ON_ERROR_STOP=1 -f {sql_file}',
                env,
            )
        finally:
            sql_file.unlink()
        assert r.returncode == 0, f"README SQL example failed:\n{block.body}\n{r.stdout}{r.stderr}"
