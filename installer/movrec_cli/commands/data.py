"""`movrec load`, `etl`, `tokenize`: raw files into the staging tables, then the catalogue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from movrec_cli import inprocess, schema
from movrec_cli.connection import connect, one
from movrec_cli.errors import CliError
from movrec_cli.options import EPILOG, dsn_option
from movrec_cli.output import note, progress_bytes, table


@click.group()
def load() -> None:
    """Load data into movrec.movies and movrec.watch_events."""


@load.command("demo")
@dsn_option
@click.option("--users", default=600, show_default=True, help="synthetic users to generate")
@click.option("--seed", default=42, show_default=True)
def load_demo_cmd(dsn: str | None, users: int, seed: int) -> None:
    """The demo set: 200 hand-typed films and synthetic ratings with planted tastes."""
    from movrec_cli.demo_data import load_demo

    with connect(dsn) as conn:
        movies, ratings = load_demo(conn, users, seed)
    click.echo(f"demo data: {movies} movies, {ratings} new ratings")


def _progress_bar(paths: list[Path], label: str) -> Any:
    from movrec_cli.loaders import total_bytes

    return progress_bytes(total_bytes(paths), label)


def _print_load(result: Any) -> None:
    if result.skipped:
        click.echo(
            f"{result.source}: these files are already loaded; nothing to do (--force reloads)"
        )
        return
    counts = ", ".join(f"{name} {n}" for name, n in result.rows.items())
    click.echo(
        f"{result.source} ({result.layout}): {counts}; {len(result.rejects)} rows quarantined"
    )
    for r in result.rejects[:10]:
        note(f"  {r.file}:{r.line} {r.column or ''} {r.reason}")
    if len(result.rejects) > 10:
        note(f"  ... SELECT * FROM movrec.quarantine for all {len(result.rejects)}")


@load.command("movielens")
@dsn_option
@click.argument("directory", metavar="DIR")
@click.option(
    "--download",
    is_flag=True,
    help="DIR is a dataset name (ml-latest-small, ml-25m, ...): fetch it from GroupLens, verify its MD5",
)
@click.option(
    "--into",
    type=click.Path(path_type=Path),
    default=Path(".movrec/downloads"),
    show_default=True,
    help="where --download puts the archive",
)
@click.option("--force", is_flag=True, help="reload even if these exact files were loaded before")
def load_movielens_cmd(
    dsn: str | None, directory: str, download: bool, into: Path, force: bool
) -> None:
    """Load a MovieLens directory into staging tables.

    \b
    Layouts: ml-latest, ml-latest-small, ml-20m, ml-25m (ratings.csv, movies.csv,
    links.csv, tags.csv); ml-1m (*.dat, '::'-separated, latin-1); ml-100k (u.data, u.item).
    Malformed rows go to movrec.quarantine with file, line, column and reason.
    """
    from movrec_cli import loaders
    from movrec_cli.download import download_movielens

    path = download_movielens(directory, into) if download else Path(directory)
    if not path.is_dir():
        raise CliError(f"no such directory: {path}")
    _, files = loaders.movielens_files(path)
    with (
        connect(dsn) as conn,
        _progress_bar([p for p, _ in files], f"movielens {path.name}") as bar,
    ):
        result = loaders.load_movielens(conn, path, bar.update, force)
    _print_load(result)


@load.command("tmdb")
@dsn_option
@click.argument("movies_file", metavar="FILE", type=click.Path(path_type=Path))
@click.option(
    "--credits", type=click.Path(path_type=Path), help="tmdb_5000_credits.csv (cast and crew)"
)
@click.option("--force", is_flag=True, help="reload even if these exact files were loaded before")
def load_tmdb_cmd(dsn: str | None, movies_file: Path, credits: Path | None, force: bool) -> None:
    """Load tmdb_5000_movies.csv (and its credits file) into staging tables."""
    from movrec_cli import loaders

    paths = [p for p in (movies_file, credits) if p is not None and p.is_file()]
    with connect(dsn) as conn, _progress_bar(paths, "tmdb") as bar:
        results = loaders.load_tmdb(conn, movies_file, credits, bar.update, force)
    for result in results:
        _print_load(result)


@click.command(epilog=EPILOG)
@dsn_option
@click.option(
    "--min-movie-ratings",
    default=5,
    show_default=True,
    help="stage 3: drop movies rated fewer times",
)
@click.option(
    "--min-user-ratings",
    default=5,
    show_default=True,
    help="stage 3: drop users with fewer ratings",
)
@click.option(
    "--max-user-ratings",
    default=600,
    show_default=True,
    help="stage 4: drop users with more ratings",
)
@click.option(
    "--require-tmdb/--no-require-tmdb",
    default=None,
    help="stage 2: keep only movies with TMDB metadata [default: when TMDB data is loaded]",
)
@click.option(
    "--export",
    "export_dir",
    type=click.Path(path_type=Path),
    help="also write each stage's tables as CSV bundles DIR/stage1 .. DIR/stage4",
)
@click.option(
    "--export-only",
    is_flag=True,
    help="with --export: write the last run's stage tables without running the ETL again",
)
@click.option("--report", is_flag=True, help="print the last run's report and exit")
@click.option(
    "--force",
    is_flag=True,
    help="publish even an empty result or one removing > 50 % of movies/ratings",
)
def etl(
    dsn: str | None,
    min_movie_ratings: int,
    min_user_ratings: int,
    max_user_ratings: int,
    require_tmdb: bool | None,
    export_dir: Path | None,
    export_only: bool,
    report: bool,
    force: bool,
) -> None:
    """Run the four ETL stages on the loaded files and publish movies and watch_events.

    \b
    1 clean links       drop null and duplicate links
    2 cross-filter      keep ratings and movies present in ratings, links and TMDB
    3 prune and remap   drop rare movies and tiny profiles; compact ids 1..N
    4 super-raters      drop users with more than --max-user-ratings ratings
    publish             swap the result into movies and watch_events in one transaction

    Each stage writes a row to movrec.etl_runs; `movrec etl --report` prints the last run.

    \b
    Examples:
      movrec etl                              run and publish
      movrec etl --export out/                run, publish, write out/stage1 .. out/stage4
      movrec etl --export out/ --export-only  only write the last run's tables (no rerun)
    """
    from movrec_cli import pipeline

    if export_only and not export_dir:
        raise CliError("--export-only needs --export DIR")
    with connect(dsn) as conn:
        if export_only:
            if one(conn.execute("SELECT count(*) FROM movrec.etl_runs"))[0] == 0:
                raise CliError("no ETL run to export: run `movrec etl` first")
            assert export_dir is not None
            for path in pipeline.export_stages(conn, export_dir):
                note(f"wrote {path}")
        elif not report:
            pipeline.run_etl(
                conn,
                min_movie_ratings,
                min_user_ratings,
                max_user_ratings,
                require_tmdb,
                echo=note,
                force=force,
            )
            if export_dir:
                for path in pipeline.export_stages(conn, export_dir):
                    note(f"wrote {path}")
        rows = pipeline.last_report(conn)
    click.echo(table(rows, ["run", "stage", "output", "rows in", "rows out", "removed", "ms"]))


@click.command(epilog=EPILOG)
@dsn_option
@click.option(
    "--options",
    default="{}",
    show_default=True,
    help='per-field overrides, e.g. \'{"overview": {"length": 128, "min_freq": 3}}\'',
)
@click.option(
    "--export",
    "export_dir",
    type=click.Path(path_type=Path),
    help="also write DIR/title.pt, overview.pt, ... (torch.save) and DIR/vocab.json",
)
def tokenize(dsn: str | None, options: str, export_dir: Path | None) -> None:
    """Tokenize movie content into per-field vocabularies and id arrays (in the database)."""
    from movrec_cli import pipeline

    with connect(dsn) as conn:
        if schema.install_kind(conn) == "portable":  # no PL/Python there: tokenize here
            rows = inprocess.tokenize(conn, options)
        else:
            rows = conn.execute("SELECT * FROM movrec.tokenize(%s::jsonb)", (options,)).fetchall()
        click.echo(table(rows, ["field", "vocab size", "length", "unk rate"]))
        if export_dir:
            for path in pipeline.export_tokens(conn, export_dir):
                note(f"wrote {path}")


COMMANDS = [load, etl, tokenize]
