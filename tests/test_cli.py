"""The CLI's surface: every command documented, and one error path for every failure.

Errors are made for real (an unreachable server, a database refusing a call) and read
back through click's CliRunner: one line on stderr with the message, the SQLSTATE and
the hint, exit code 1; usage errors exit 2; never a Python traceback.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from movrec_cli.main import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def walk(
    group: click.Group, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, command in sorted(group.commands.items()):
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from walk(command, (*path, name))


def command_section() -> list[str]:
    """The lines of README's code block under '## The `movrec` command'."""
    text = README.read_text()
    section = text.split("## The `movrec` command", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_every_command_has_help_text() -> None:
    commands = list(walk(cli))
    assert len(commands) > 20
    missing = [" ".join(p) for p, c in commands if not (c.help or c.short_help or "").strip()]
    assert missing == []


def test_every_command_is_named_in_the_readme() -> None:
    lines = command_section()
    missing = []
    for path, _ in walk(cli):
        owners = [ln for ln in lines if re.match(rf"movrec {re.escape(path[0])}\b", ln)]
        if len(path) > 1:
            # a subcommand: named on its group's line(s), as a word
            owners = [ln for ln in owners if re.search(rf"(?<![\w-]){re.escape(path[-1])}\b", ln)]
        if not owners:
            missing.append(" ".join(path))
    assert missing == []


def run(*args: str) -> click.testing.Result:
    return CliRunner().invoke(cli, list(args))


def assert_one_error_line(result: click.testing.Result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def test_an_unreachable_server_is_one_line(tmp_path: Path) -> None:
    line = assert_one_error_line(run("status", "--dsn", f"host={tmp_path} port=1 dbname=x"))
    assert "cannot connect" in line and str(tmp_path) in line


def test_a_database_error_carries_its_sqlstate_and_hint(installed: str) -> None:
    # the plpgsql front door refuses an unknown model with no_data_found and a hint
    line = assert_one_error_line(run("deploy", "--dsn", installed, "987654"))
    assert line == (
        "Error: deploy(): model 987654 is not in model.registry "
        "(SQLSTATE P0002; hint: SELECT model_id, kind, metrics FROM model.registry)"
    )


def test_an_error_from_python_in_the_backend_keeps_its_sqlstate(installed: str) -> None:
    # no model is deployed: raised by movrec's Python in the backend, as 55000
    line = assert_one_error_line(run("explain", "--dsn", installed, "1", "1"))
    assert "no model is deployed" in line and line.endswith("(SQLSTATE 55000)")


def test_a_cli_check_is_one_line_without_sqlstate(installed: str) -> None:
    line = assert_one_error_line(run("deploy", "--dsn", installed))
    assert line == "Error: give exactly one of MODEL_ID, --best [METRIC], --rollback"


@pytest.mark.parametrize("args", [["no-such-command"], ["recommend", "not-a-number"]])
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.stderr
