"""`movrec train`, `deploy`, `evaluate`, `retrain`, `report`: the model registry from the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from movrec.training import TrainOptions

from movrec_cli import ddp, inprocess, schema
from movrec_cli.connection import connect, one, resolve_dsn
from movrec_cli.errors import CliError
from movrec_cli.options import EPILOG, dsn_option
from movrec_cli.output import table

KINDS = ("hybrid", "mf", "functional", "mlp")
_TRAIN_HELP = {
    "epochs": "passes over the training ratings",
    "dim": "latent dimension",
    "lr": "learning rate (Adam)",
    "reg": "L2 regularisation",
    "batch_size": "ratings per step",
    "seed": "seed of the split and the initialisation",
    "ranking": "weight of the ranking loss (0: rank by predicted rating)",
    "device": "auto, cpu or cuda",
    "solver": "adam (minibatches) or als (exact alternating solves; mf only)",
}


def _defaults(name: str) -> str:
    """`hybrid/functional 8, mf/mlp 40`: a training option's default for each model kind."""
    by_value: dict[Any, list[str]] = {}
    for kind in KINDS:
        opts = TrainOptions.for_kind(kind)
        value = opts.ranking_weight(kind) if name == "ranking" else getattr(opts, name)
        by_value.setdefault(value, []).append(kind)
    if len(by_value) == 1:
        return str(next(iter(by_value)))
    return ", ".join(f"{'/'.join(kinds)} {value}" for value, kinds in by_value.items())


def _options_object(text: str) -> dict[str, Any]:
    """--options: a JSON object, or a one-line error."""
    try:
        opts = json.loads(text)
    except json.JSONDecodeError as e:
        raise CliError(f"--options is not JSON: {e}") from None
    if not isinstance(opts, dict):
        raise CliError("--options must be a JSON object, e.g. '{\"epochs\": 5}'")
    return opts


def _train_option(name: str, type_: Any) -> Any:
    return click.option(
        f"--{name.replace('_', '-')}",
        name,
        type=type_,
        help=f"{_TRAIN_HELP[name]} [default: {_defaults(name)}]",
    )


@click.command(epilog=EPILOG)
@dsn_option
@click.option(
    "--model",
    "kind",
    default="hybrid",
    show_default=True,
    type=click.Choice(KINDS),
    help="hybrid: content sub-network + ranking head; mf: matrix factorisation; "
    "functional, mlp: experimental baselines",
)
@_train_option("epochs", int)
@_train_option("dim", int)
@_train_option("lr", float)
@_train_option("reg", float)
@_train_option("batch_size", int)
@_train_option("seed", int)
@_train_option("ranking", float)
@_train_option("device", click.Choice(["auto", "cpu", "cuda"]))
@_train_option("solver", click.Choice(["adam", "als"]))
@click.option(
    "--options",
    "options_json",
    metavar="JSON",
    default="{}",
    help='any training option of movrec.train(), e.g. \'{"schedule": "constant", '
    '"patience": 3}\'; the flags above win',
)
@click.option(
    "--budget-s",
    "budget_s",
    type=click.FloatRange(min=0),
    default=None,
    help="seconds to choose the options you did not give on the validation split (the trials "
    "are kept in the registry's params->'search'); 0: one run with the kind's defaults "
    "[default: movrec.settings.train_budget_s, 120]",
)
@click.option("--no-deploy", is_flag=True, help="register the model without making it the champion")
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    default=None,
    help="train mf with this many PyTorch DDP processes here (gloo on CPU, NCCL on CUDA), each "
    "reading its shard of users; runs the options given (no --budget-s search)",
)
def train(
    dsn: str | None,
    kind: str,
    no_deploy: bool,
    options_json: str,
    nproc: int | None,
    **options: Any,
) -> None:
    """Train a model in the database (SELECT movrec.train(KIND, OPTIONS, deploy)); in a
    portable install (no PL/Python there) in this process, with the same code.

    Progress arrives as NOTICEs on stderr, one per epoch.  Defaults differ per
    kind (shown per option); an unknown option is an error listing the known ones.

    \b
    Examples:
      movrec train --model mf                  seconds on the demo data
      movrec train --epochs 4 --seed 1         the hybrid, shorter
      movrec train --model mf --options '{"val_fraction": 0.1}' --no-deploy
    """
    opts = _options_object(options_json)
    opts.update({k: v for k, v in options.items() if v is not None})
    with connect(dsn) as conn:
        if nproc is not None:
            model_id = ddp.train(conn, resolve_dsn(dsn), kind, opts, not no_deploy, nproc)
        elif schema.install_kind(conn) == "portable":  # no PL/Python there: torch runs here
            model_id = inprocess.train(conn, kind, json.dumps(opts), not no_deploy)
        else:
            model_id = one(
                conn.execute(
                    "SELECT movrec.train(%s, %s::jsonb, %s)",
                    (kind, json.dumps(opts), not no_deploy),
                )
            )[0]
        metrics = one(
            conn.execute("SELECT metrics FROM model.registry WHERE model_id = %s", (model_id,))
        )[0]
    click.echo(
        f"model {model_id}: val RMSE {metrics['val_rmse']:.4f}, MAE {metrics['val_mae']:.4f} "
        f"(global mean RMSE {metrics['baseline_val_rmse']:.4f})"
        + ("" if no_deploy else ", deployed")
    )


@click.command(epilog=EPILOG)
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
        portable = schema.install_kind(conn) == "portable"  # no PL/Python: torch runs here
        if rollback:
            if portable:
                model_id = inprocess.rollback(conn)
            else:
                model_id = one(conn.execute("SELECT movrec.rollback()"))[0]
        elif best_metric:
            if portable:
                model_id = inprocess.deploy_best(conn, best_metric)
            else:
                model_id = one(conn.execute("SELECT movrec.deploy_best(%s)", (best_metric,)))[0]
        elif portable:
            assert model_id is not None
            inprocess.deploy(conn, model_id)
        else:
            conn.execute("SELECT movrec.deploy(%s)", (model_id,))
    click.echo(f"model {model_id} deployed")


@click.command(epilog=EPILOG)
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
        if schema.install_kind(conn) == "portable":  # torch runs here, not there
            rows = inprocess.evaluate(conn, model_id, test_table)
        else:
            rows = conn.execute(
                "SELECT * FROM movrec.evaluate(%s, %s)", (model_id, test_table)
            ).fetchall()
    click.echo(table(rows, ["metric", "value"]))


@click.command(epilog=EPILOG)
@dsn_option
@click.option(
    "--model",
    "kind",
    type=click.Choice(KINDS),
    help="kind to train [default: the champion's, with its options]",
)
@click.option(
    "--options",
    "options_json",
    metavar="JSON",
    default=None,
    help="training options over the champion's, e.g. '{\"epochs\": 20}'",
)
def retrain(dsn: str | None, kind: str | None, options_json: str | None) -> None:
    """Train a new model on the current data and deploy it only if it beats the champion
    (SELECT * FROM movrec.retrain_and_promote(KIND, OPTIONS)).

    Both are scored by `evaluate` on the same validation split of the current
    data: NDCG@10 for kinds with a ranking head, else RMSE.  A model that loses
    stays registered, not deployed, with the reason in its metrics.retrain.
    `movrec schedule` runs this nightly with pg_cron.

    \b
    Examples:
      movrec retrain                            the champion's kind and options
      movrec retrain --options '{"epochs": 40}'
    """
    if options_json is not None:
        _options_object(options_json)  # refused here, before connecting
    with connect(dsn) as conn:
        row = one(
            conn.execute(
                "SELECT model_id, promoted, reason FROM movrec.retrain_and_promote(%s, %s::jsonb)",
                (kind, options_json),
            )
        )
    click.echo(f"model {row[0]}: {row[2]}")


@click.command(epilog=EPILOG)
@dsn_option
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=Path("reports/movrec.html"),
    show_default=True,
    help="the HTML file to write",
)
@click.option(
    "--bench",
    "bench_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    metavar="FILE",
    help="a `movrec bench quality --json FILE` result to show as the peer table (repeatable)",
)
def report(dsn: str | None, output: Path, bench_files: tuple[Path, ...]) -> None:
    """Write one self-contained HTML page (plotly, works offline): learning curves per
    dataset, the models compared (parameters, durations, deployments), evaluate results,
    search trials, the peer table, coverage and popularity bias of recommend(), per-genre
    and cold vs heavy users, the ETL funnel, CF, online learning and serving.  A section
    with no data yet says what would fill it.

    \b
    Examples:
      movrec report && xdg-open reports/movrec.html
      movrec bench quality --data DIR --json bench.json && movrec report --bench bench.json
    """
    from movrec_cli.report import write_report

    with connect(dsn) as conn:
        try:
            path = write_report(conn, output, bench_files)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CliError(f"--bench: not a bench quality JSON file: {e}") from None
        click.echo(f"wrote {path}")


COMMANDS = [train, deploy, evaluate, retrain, report]
