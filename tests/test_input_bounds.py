"""Every option and argument is checked: a bad value is an error naming it, nothing changes.

Integer options take integers (1.9 is refused, never truncated), float options finite
numbers (NaN and Infinity are refused, SQL front doors included), sizes are bounded to what
fits in memory and in the lock table, arrays are one-dimensional and NULL elements are
refused.  SQLSTATE 22004 (null_value_not_allowed) for a NULL, 22023
(invalid_parameter_value) for the rest; never 38000 (a raw Python exception).
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.conftest import INSTALL_KINDS, connect, table_digest

# Every test on the database fixtures runs on the full and the portable install.
INSTALL_KINDS = INSTALL_KINDS

STORED = (
    "model.registry",
    "model.deployments",
    "model.user_latent_attributes",
    "model.movie_latent_attributes",
    "model.movie_latent_extra",
    "model.model_recommendation",
    "model.user_recommendation",
    "model.cf_queue",
    "model.refresh_queue",
    "movrec.vocab",
    "movrec.movie_tokens",
    "movrec.watch_events",
)

NULL, BAD = "22004", "22023"


def train(options: str) -> tuple[str, tuple[Any, ...]]:
    return "SELECT movrec.train('mf', %s::jsonb, true)", (options,)


def tokenize(options: str) -> tuple[str, tuple[Any, ...]]:
    return "SELECT * FROM movrec.tokenize(%s::jsonb)", (options,)


def u2u(**args: Any) -> tuple[str, tuple[Any, ...]]:
    names = ", ".join(f"{k} => %s::float8" for k in args)
    return f"SELECT * FROM movrec.user_to_user(1, {names})", tuple(args.values())


# (case id, (sql, parameters), SQLSTATE, a fragment of the message: the option's name)
CASES = [
    # training options (movrec.train, TrainOptions.parse)
    ("train-epochs-fraction", train('{"epochs": 1.9}'), BAD, "epochs must be an integer"),
    ("train-epochs-zero", train('{"epochs": 0}'), BAD, "epochs must be in"),
    ("train-epochs-huge", train('{"epochs": 1000000000}'), BAD, "epochs must be in"),
    ("train-epochs-string", train('{"epochs": "10"}'), BAD, "epochs must be an integer"),
    ("train-dim-2^31", train('{"dim": 2147483648}'), BAD, "dim must be in"),
    ("train-dim-zero", train('{"dim": 0}'), BAD, "dim must be in"),
    ("train-lr-zero", train('{"lr": 0}'), BAD, "lr must be in"),
    ("train-lr-infinite", train('{"lr": 1e400}'), BAD, "lr must be a finite number"),
    ("train-reg-negative", train('{"reg": -0.1}'), BAD, "reg must be in"),
    ("train-batch-zero", train('{"batch_size": 0}'), BAD, "batch_size must be in"),
    ("train-batch-huge", train('{"batch_size": 1e12}'), BAD, "batch_size must be in"),
    ("train-seed-negative", train('{"seed": -1}'), BAD, "seed must be in"),
    ("train-val-one", train('{"val_fraction": 1}'), BAD, "val_fraction must be in"),
    ("train-val-zero", train('{"val_fraction": 0}'), BAD, "val_fraction must be in"),
    ("train-patience-zero", train('{"patience": 0}'), BAD, "patience must be in"),
    ("train-negatives", train('{"negatives": -1}'), BAD, "negatives must be in"),
    ("train-ranking", train('{"ranking": -0.5}'), BAD, "ranking must be -1"),
    ("train-dropout-one", train('{"dropout": 1}'), BAD, "dropout must be in"),
    ("train-hidden-fraction", train('{"hidden": 1.5}'), BAD, "hidden must be an integer"),
    ("train-sampling", train('{"sampling": -1}'), BAD, "sampling must be in"),
    ("train-in-batch", train('{"in_batch": 1}'), BAD, "in_batch must be true or false"),
    ("train-device", train('{"device": 1}'), BAD, "device must be a string"),
    ("train-not-object", train("[1, 2]"), BAD, "must be a JSON object"),
    ("train-unknown", train('{"epoch": 3}'), BAD, "unknown training option"),
    ("train-kind-null", ("SELECT movrec.train(NULL)", ()), NULL, "model and deploy"),
    ("train-deploy-null", ("SELECT movrec.train('mf', '{}', NULL)", ()), NULL, "deploy"),
    ("train-kind", ("SELECT movrec.train('svd')", ()), BAD, "unknown model kind"),
    # tokenizer options (movrec.tokenize)
    ("tokenize-length-negative", tokenize('{"overview": {"length": -5}}'), BAD, "overview.length"),
    ("tokenize-length-fraction", tokenize('{"title": {"length": 1.5}}'), BAD, "title.length"),
    ("tokenize-length-huge", tokenize('{"title": {"length": 100000}}'), BAD, "title.length"),
    ("tokenize-min-freq-zero", tokenize('{"cast": {"min_freq": 0}}'), BAD, "cast.min_freq"),
    ("tokenize-min-freq-bool", tokenize('{"cast": {"min_freq": true}}'), BAD, "cast.min_freq"),
    ("tokenize-not-object", tokenize("[1]"), BAD, "must be a JSON object"),
    ("tokenize-unknown-key", tokenize('{"title": {"len": 3}}'), BAD, "'title'"),
    # user_to_user: NaN and Infinity in every float argument
    ("u2u-damping-nan", u2u(damping="NaN"), BAD, "damping"),
    ("u2u-damping-infinite", u2u(damping="Infinity"), BAD, "damping"),
    ("u2u-shrinkage-nan", u2u(shrinkage="NaN"), BAD, "shrinkage"),
    ("u2u-shrinkage-infinite", u2u(shrinkage="Infinity"), BAD, "shrinkage"),
    ("u2u-min-corr-nan", u2u(min_corr="NaN"), BAD, "min_corr"),
    ("u2u-min-corr-infinite", u2u(min_corr="-Infinity"), BAD, "min_corr"),
    # recommend, predict
    ("recommend-k-zero", ("SELECT * FROM movrec.recommend(1, 0)", ()), BAD, "k must be"),
    ("recommend-k-huge", ("SELECT * FROM movrec.recommend(1, 10001)", ()), BAD, "k must be"),
    (
        "recommend-genres-null",
        ("SELECT * FROM movrec.recommend(1, 5, ARRAY[NULL]::text[])", ()),
        BAD,
        "genres",
    ),
    (
        "recommend-genres-2d",
        ("SELECT * FROM movrec.recommend(1, 5, '{{Drama},{Comedy}}'::text[])", ()),
        BAD,
        "genres",
    ),
    (
        "predict-null-user",
        ("SELECT * FROM movrec.predict(ARRAY[1, NULL], ARRAY[1, 2])", ()),
        NULL,
        "user_ids[2]",
    ),
    (
        "predict-null-movie",
        ("SELECT * FROM movrec.predict(ARRAY[1, 2], ARRAY[NULL, 2]::int[])", ()),
        NULL,
        "movie_ids[1]",
    ),
    (
        "predict-2d",
        ("SELECT * FROM movrec.predict('{{1,2},{3,4}}'::int[], '{{1,2},{3,4}}'::int[])", ()),
        BAD,
        "one-dimensional",
    ),
    # jobs: refresh, drains, cold start
    (
        "refresh-batch-null-element",
        ("SELECT movrec.refresh_recommendations_batch(ARRAY[1, NULL])", ()),
        NULL,
        "user_ids must not contain NULLs",
    ),
    (
        "refresh-batch-null",
        ("SELECT movrec.refresh_recommendations_batch(NULL)", ()),
        NULL,
        "user_ids must not be NULL",
    ),
    (
        "refresh-batch-2d",
        ("SELECT movrec.refresh_recommendations_batch('{{1,2},{3,4}}')", ()),
        BAD,
        "one-dimensional",
    ),
    (
        "refresh-batch-huge",
        (
            "SELECT movrec.refresh_recommendations_batch(ARRAY(SELECT generate_series(1, 5000)))",
            (),
        ),
        BAD,
        "at most 4096 users",
    ),
    ("cf-drain-zero", ("SELECT movrec.cf_drain(0)", ()), BAD, "max_jobs"),
    ("cf-drain-null", ("SELECT movrec.cf_drain(NULL)", ()), BAD, "max_jobs"),
    ("cf-drain-huge", ("SELECT movrec.cf_drain(100000)", ()), BAD, "max_jobs"),
    ("serving-drain-zero", ("SELECT movrec.serving_drain(0)", ()), BAD, "max_jobs"),
    ("serving-drain-huge", ("SELECT movrec.serving_drain(100000)", ()), BAD, "max_jobs"),
    ("cf-schedule-huge", ("SELECT movrec.cf_schedule('* * * * *', 100000)", ()), BAD, "max_jobs"),
    ("embed-negative", ("SELECT movrec.embed_new_movies(-1)", ()), BAD, "max_movies"),
]


# Intentionally different in the portable install: these jobs need PL/Python (torch, the CF
# matrix), so there the SQL function refuses at once with 0A000 naming the CLI command, which
# runs the same argument checks in its own process (TrainOptions.parse: the tests below).
CLI_JOBS = ("movrec.train(", "movrec.tokenize(", "movrec.cf_drain(", "movrec.embed_new_movies(")


def digests(conn: psycopg.Connection) -> dict[str, tuple[int, str]]:
    return {t: table_digest(conn, t) for t in STORED}


@pytest.fixture(scope="module")
def db(trained: str) -> str:
    with connect(trained) as conn:  # a queued job of each kind, so a drain would change them
        conn.execute("SELECT movrec.rate(1, (SELECT min(movie_id) FROM movrec.movies), 4)")
    return trained


@pytest.mark.parametrize(
    ("sql", "params", "sqlstate", "fragment"),
    [pytest.param(sql, params, state, frag, id=name) for name, (sql, params), state, frag in CASES],
)
def test_a_bad_input_is_a_clear_error_and_changes_nothing(
    db: str, install_kind: str, sql: str, params: tuple[Any, ...], sqlstate: str, fragment: str
) -> None:
    if install_kind == "portable" and any(job in sql for job in CLI_JOBS):
        sqlstate, fragment = "0A000", "portable install"
    with connect(db) as conn:
        before = digests(conn)
        with pytest.raises(psycopg.Error) as e:
            conn.execute(sql, params)
        message = e.value.diag.message_primary or ""
        assert (e.value.sqlstate, fragment in message) == (sqlstate, True), str(e.value)
        assert not message.startswith(("TypeError", "ValueError", "RuntimeError")), message
        assert digests(conn) == before


@pytest.mark.parametrize(
    ("options", "field", "value"),
    [({"epochs": 2.0}, "epochs", 2), ({"lr": 1}, "lr", 1.0), ({"dim": 4096}, "dim", 4096)],
)
def test_integral_and_boundary_values_are_accepted(options: dict, field: str, value: Any) -> None:
    from movrec.training import TrainOptions

    opts = TrainOptions.parse(options, "mf")
    assert getattr(opts, field) == value and type(getattr(opts, field)) is type(value)


@pytest.mark.parametrize(
    "options",
    [{"epochs": 1.9}, {"lr": float("nan")}, {"reg": float("inf")}, {"dropout": float("nan")}],
)
def test_train_options_refuse_fractions_and_non_finite_numbers(options: dict) -> None:
    """The CLI's path (TrainOptions.parse without SQL): NaN reaches it from Python."""
    from movrec.errors import InvalidArgument
    from movrec.training import TrainOptions

    (name,) = options
    with pytest.raises(InvalidArgument, match=name):
        TrainOptions.parse(options, "mf")
