"""The movrec command line.

Every command that talks to a database takes --dsn, else MOVREC_DSN, else the
embedded cluster (`movrec db up`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import psycopg
from movrec import __version__

from movrec_cli import bench_serving, schema
from movrec_cli import generate as generate_mod
from movrec_cli.cf_commands import bench_cf_command, cf, worker
from movrec_cli.cluster import Cluster
from movrec_cli.connection import connect
from movrec_cli.errors import CliError
from movrec_cli.refresh import explain as explain_cmd
from movrec_cli.refresh import refresh, similar

dsn_option = click.option(
    "--dsn",
    envvar="MOVREC_DSN",
    metavar="DSN",
    help="libpq connection string [env MOVREC_DSN; default: the embedded cluster]",
)


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [
        [("" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)) for v in r]
        for r in rows
    ]
    widths = [
        max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(c) for c in cells)])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="movrec")
def cli() -> None:
    """movrec: a movie recommender that runs inside PostgreSQL.

    \b
    Quick start:
      movrec db up            start the embedded cluster (.movrec/)
      movrec install          install or upgrade the SQL
      movrec load demo        load the demo catalogue and ratings
      movrec train            train and deploy the base model
      psql "$(movrec db dsn)" -c 'SELECT * FROM recommend(1)'
    """


# --- embedded cluster -------------------------------------------------------


@cli.group()
def db() -> None:
    """Run the embedded PostgreSQL cluster (MOVREC_HOME, default ./.movrec)."""


@db.command("up")
def db_up() -> None:
    """Create (once) and start the embedded cluster, and its `movrec` database."""
    cluster = Cluster.default()
    if cluster.init():
        click.echo(f"initialised a cluster in {cluster.data}")
    cluster.start()
    click.echo(f"running on port {cluster.port}, socket {cluster.socket_dir}")


@db.command("down")
def db_down() -> None:
    """Stop the embedded cluster (its data stays)."""
    click.echo("stopped" if Cluster.default().stop() else "not running")


@db.command("status")
def db_status() -> None:
    """Say whether the embedded cluster runs, and where."""
    c = Cluster.default()
    state = "running" if c.running() else ("stopped" if c.initialized() else "not created")
    click.echo(f"{state}: {c.data} port {c.port}")


@db.command("dsn")
def db_dsn() -> None:
    """Print the embedded cluster's connection string (for psql "$(movrec db dsn)")."""
    click.echo(Cluster.default().dsn())


# --- SQL lifecycle ----------------------------------------------------------


@cli.command()
@dsn_option
@click.option(
    "--venv", metavar="PATH", help="venv the backends load movrec from [default: this CLI's]"
)
def install(dsn: str | None, venv: str | None) -> None:
    """Install or upgrade movrec's SQL in one transaction; a rerun changes nothing.

    Also sets, for the database, movrec.venv (where backends find the movrec
    package) and a search_path that includes movrec.
    """
    with connect(dsn) as conn:
        try:
            click.echo(schema.install(conn, venv).message)
        except psycopg.Error as e:
            raise CliError(f"install failed, the database is unchanged: {str(e).strip()}") from None


@cli.command()
@dsn_option
@click.option(
    "--drop-data", is_flag=True, help="also drop the movrec and model schemas with all data"
)
def uninstall(dsn: str | None, drop_data: bool) -> None:
    """Remove movrec's functions and triggers; tables stay unless --drop-data."""
    with connect(dsn) as conn:
        click.echo(schema.uninstall(conn, drop_data))


@cli.command()
@dsn_option
def status(dsn: str | None) -> None:
    """Installed version, row counts and the deployed model."""
    with connect(dsn) as conn:
        version = schema.installed_version(conn)
        click.echo(f"installed: {version or 'no'}")
        if conn.execute("SELECT to_regclass('movrec.watch_events')").fetchone()[0] is None:
            return
        counts = conn.execute(
            """SELECT (SELECT count(*) FROM movrec.movies), (SELECT count(*) FROM movrec.watch_events),
                      (SELECT count(DISTINCT user_id) FROM movrec.watch_events),
                      (SELECT count(*) FROM model.user_latent_attributes),
                      (SELECT count(*) FROM model.registry)"""
        ).fetchone()
        click.echo(
            "movies: {}  ratings: {}  users: {}  user vectors: {}  registered models: {}".format(
                *counts
            )
        )
        champ = conn.execute(
            "SELECT model_id, kind, metrics->>'val_rmse', deployed_at FROM model.champion"
        ).fetchone()
        click.echo(
            f"champion: model {champ[0]} ({champ[1]}), val RMSE {float(champ[2]):.4f}, deployed {champ[3]:%Y-%m-%d %H:%M}"
            if champ
            else "champion: none (movrec train)"
        )


@cli.command()
@dsn_option
def doctor(dsn: str | None) -> None:
    """Check the backend: Python, packages, torch/CUDA, pgvector, threads, venv."""
    with connect(dsn) as conn:
        rows = conn.execute("SELECT check_name, ok, detail, fix FROM movrec.doctor()").fetchall()
    for name, ok, detail, fix in rows:
        click.echo(
            f"{'ok ' if ok else 'BAD'} {name:<9} {detail}" + (f"\n    fix: {fix}" if fix else "")
        )
    if not all(r[1] for r in rows):
        raise SystemExit(1)


# --- data and models ----------------------------------------------------------


@cli.group()
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

    return click.progressbar(
        length=total_bytes(paths), label=label, file=sys.stderr, show_eta=False
    )


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
        click.echo(f"  {r.file}:{r.line} {r.column or ''} {r.reason}", err=True)
    if len(result.rejects) > 10:
        click.echo(f"  ... SELECT * FROM movrec.quarantine for all {len(result.rejects)}", err=True)


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


@cli.command()
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
    """
    from movrec_cli import pipeline

    with connect(dsn) as conn:
        if not report:
            pipeline.run_etl(
                conn,
                min_movie_ratings,
                min_user_ratings,
                max_user_ratings,
                require_tmdb,
                echo=lambda m: click.echo(m, err=True),
                force=force,
            )
            if export_dir:
                for path in pipeline.export_stages(conn, export_dir):
                    click.echo(f"wrote {path}", err=True)
        rows = pipeline.last_report(conn)
    click.echo(table(rows, ["run", "stage", "output", "rows in", "rows out", "removed", "ms"]))


@cli.command()
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
        rows = conn.execute("SELECT * FROM movrec.tokenize(%s::jsonb)", (options,)).fetchall()
        click.echo(table(rows, ["field", "vocab size", "length", "unk rate"]))
        if export_dir:
            for path in pipeline.export_tokens(conn, export_dir):
                click.echo(f"wrote {path}", err=True)


@cli.command()
@dsn_option
@click.option(
    "--model",
    "kind",
    default="hybrid",
    show_default=True,
    type=click.Choice(["hybrid", "mf", "functional", "mlp"]),
    help="hybrid: content sub-network + ranking head; mf: matrix factorisation; "
    "functional, mlp: experimental baselines",
)
@click.option("--epochs", type=int)
@click.option("--dim", type=int)
@click.option("--lr", type=float)
@click.option("--seed", type=int)
@click.option("--reg", type=float)
@click.option("--batch-size", type=int)
@click.option(
    "--ranking", type=float, help="weight of the ranking loss (0: rank by predicted rating)"
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--no-deploy", is_flag=True, help="register the model without making it the champion")
def train(dsn: str | None, kind: str, no_deploy: bool, **options: Any) -> None:
    """Train a model in the database (SELECT movrec.train(...)); progress on stderr."""
    opts = {k: v for k, v in options.items() if v is not None}
    with connect(dsn) as conn:
        model_id = conn.execute(
            "SELECT movrec.train(%s, %s::jsonb, %s)", (kind, json.dumps(opts), not no_deploy)
        ).fetchone()[0]
        metrics = conn.execute(
            "SELECT metrics FROM model.registry WHERE model_id = %s", (model_id,)
        ).fetchone()[0]
    click.echo(
        f"model {model_id}: val RMSE {metrics['val_rmse']:.4f}, MAE {metrics['val_mae']:.4f} "
        f"(global mean RMSE {metrics['baseline_val_rmse']:.4f})"
        + ("" if no_deploy else ", deployed")
    )


@cli.command()
@dsn_option
@click.argument("model_id", type=int, required=False)
@click.option(
    "--best",
    "best_metric",
    is_flag=False,
    flag_value="val_rmse",
    default=None,
    metavar="[METRIC]",
    help="deploy the registered model with the best METRIC (default val_rmse; e.g. val_ndcg@10)",
)
@click.option("--rollback", is_flag=True, help="go back to the previous champion")
def deploy(dsn: str | None, model_id: int | None, best_metric: str | None, rollback: bool) -> None:
    """Make MODEL_ID the champion (atomic; serving sees it on its next call)."""
    if (
        sum(x is not None and x is not False for x in (model_id, best_metric, rollback or None))
        != 1
    ):
        raise CliError("give exactly one of MODEL_ID, --best [METRIC], --rollback")
    with connect(dsn) as conn:
        if rollback:
            model_id = conn.execute("SELECT movrec.rollback()").fetchone()[0]
        elif best_metric:
            model_id = conn.execute("SELECT movrec.deploy_best(%s)", (best_metric,)).fetchone()[0]
        else:
            conn.execute("SELECT movrec.deploy(%s)", (model_id,))
    click.echo(f"model {model_id} deployed")


@cli.command()
@dsn_option
@click.argument("model_id", type=int)
@click.option(
    "--test-table",
    metavar="TABLE",
    help="(user_id, movie_id, rating) rows [default: its validation split]",
)
def evaluate(dsn: str | None, model_id: int, test_table: str | None) -> None:
    """RMSE, MAE, Precision@10, Recall@10/20, NDCG@10 of MODEL_ID (stored in the registry)."""
    with connect(dsn) as conn:
        rows = conn.execute(
            "SELECT * FROM movrec.evaluate(%s, %s)", (model_id, test_table)
        ).fetchall()
    click.echo(table(rows, ["metric", "value"]))


@cli.command()
@dsn_option
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=Path("reports/movrec.html"),
    show_default=True,
)
def report(dsn: str | None, output: Path) -> None:
    """Write an HTML page with plots: learning curves, metrics across models, score distribution."""
    from movrec_cli.report import write_report

    with connect(dsn) as conn:
        click.echo(f"wrote {write_report(conn, output)}")


@cli.group()
def bench() -> None:
    """Benchmarks: quality against the peers, serving speed, online learning."""


@bench.command("quality")
@dsn_option
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(path_type=Path, exists=True),
    help="folder with ml-latest-small/ (and tmdb-5000/), e.g. ../shared/data; read, never copied",
)
@click.option("--models", default="mf,hybrid", show_default=True, help="movrec models to train")
@click.option(
    "--peers",
    default="popularity,svd,svdpp,knnbaseline,als,bpr",
    show_default=True,
    help="peers to run (needs movrec[bench]); '' for none",
)
@click.option(
    "--options",
    default="{}",
    help='per-model training options, e.g. \'{"hybrid": {"epochs": 20}}\'',
)
def bench_quality(dsn: str | None, data_dir: Path, models: str, peers: str, options: str) -> None:
    """movrec's models and the peers on one split, in one table.

    \b
    Protocol: ratings.csv shuffled with numpy.random.default_rng(42).permutation,
    first 90 % train, the rest test. movrec trains in a scratch database
    (movrec_bench) from the training 90 % loaded through the real loaders and ETL;
    the peers train on the same rows. Relevant = test ratings >= 4; candidates =
    every movie the user did not rate in training.
    """
    from movrec_cli import bench_quality as bq
    from movrec_cli import schema as sch
    from movrec_cli.cluster import Cluster

    echo = lambda m: click.echo(m, err=True)  # noqa: E731
    if dsn is None:
        cluster = Cluster.default()
        cluster.ensure_database(bq.BENCH_DB)
        bench_dsn = cluster.dsn(bq.BENCH_DB)
    else:
        bench_dsn = dsn
    rows = []
    with connect(bench_dsn) as conn:
        if dsn is None:
            sch.uninstall(conn, drop_data=True)
        sch.install(conn)
        kinds = tuple(k for k in models.split(",") if k)
        rows += bq.movrec_rows(conn, data_dir, kinds, json.loads(options), progress=echo)
    ml = data_dir / "ml-latest-small" if (data_dir / "ml-latest-small").is_dir() else data_dir
    which = tuple(p for p in peers.split(",") if p)
    if which:
        rows += bq.peer_table(ml / "ratings.csv", which=which, progress=echo)
    click.echo(bq.format_table(rows))


@cli.command()
@dsn_option
@click.argument("user_id", type=int)
@click.option("-k", default=10, show_default=True)
@click.option(
    "--genre", "genres", multiple=True, help="only movies with any of these genres (repeatable)"
)
@click.option("--min-year", type=int)
@click.option("--max-year", type=int)
def recommend(
    dsn: str | None,
    user_id: int,
    k: int,
    genres: tuple[str, ...],
    min_year: int | None,
    max_year: int | None,
) -> None:
    """Print USER_ID's top-k unseen movies."""
    with connect(dsn) as conn:
        rows = conn.execute(
            "SELECT * FROM movrec.recommend(%s, %s, genres => %s, min_year => %s, max_year => %s)",
            (user_id, k, list(genres) or None, min_year, max_year),
        ).fetchall()
    click.echo(table(rows, ["movie_id", "title", "score", "predicted", "source"]))


@cli.command()
@dsn_option
def demo(dsn: str | None) -> None:
    """The whole path end to end: cluster, install, data, train, recommend, learn online."""
    from movrec_cli.walkthrough import run

    run(dsn)


cli.add_command(generate_mod.generate)
bench.add_command(bench_serving.bench_serving)
bench.add_command(bench_serving.bench_online)
cli.add_command(cf)
cli.add_command(worker)
cli.add_command(refresh)
cli.add_command(similar)
cli.add_command(explain_cmd, "explain")
bench.add_command(bench_cf_command, "cf")


def main() -> None:  # pragma: no cover
    cli()
