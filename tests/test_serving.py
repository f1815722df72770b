"""recommend() and predict(): order, exclusion, fallbacks, bad input."""

from __future__ import annotations

import re
from collections.abc import Callable

import psycopg
import pytest
from movrec_cli.cluster import Cluster

from tests.conftest import INSTALL_KINDS, connect, install_into, train

# Every test on the database fixtures runs on the full and the portable install.
INSTALL_KINDS = INSTALL_KINDS


def test_recommend_returns_k_unseen_movies_best_first(conn: psycopg.Connection) -> None:
    rows = conn.execute(
        "SELECT movie_id, title, score, predicted_rating, source FROM recommend(5, 15)"
    ).fetchall()
    assert len(rows) == 15
    scores = [r[2] for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert {r[4] for r in rows} == {"model"}
    assert all(0.5 <= r[3] <= 5.0 for r in rows)
    seen = {
        r[0] for r in conn.execute("SELECT movie_id FROM movrec.watch_events WHERE user_id = 5")
    }
    assert seen and not seen & {r[0] for r in rows}
    titles = dict(conn.execute("SELECT movie_id, title FROM movrec.movies").fetchall())
    assert all(titles[r[0]] == r[1] for r in rows)


def test_a_movie_deleted_since_training_is_left_out(conn: psycopg.Connection) -> None:
    """The champion still scores a movie deleted from the catalogue; recommend() leaves it out
    (the full install's titles join, the portable one's), never a row without a title."""
    before = conn.execute("SELECT movie_id, title, score FROM recommend(5, 10)").fetchall()
    victim = before[0][0]
    with conn.transaction(force_rollback=True):
        # its ratings would keep the row (FK): delete the movie alone, as a restore could leave it
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute("DELETE FROM movrec.movies WHERE movie_id = %s", (victim,))
        conn.execute("SET LOCAL session_replication_role = origin")
        after = conn.execute("SELECT movie_id, title, score FROM recommend(5, 10)").fetchall()
    assert victim not in {r[0] for r in after}
    assert [r for r in before if r[0] != victim] == after[: len(before) - 1]
    assert all(r[1] is not None for r in after)


def test_recommend_scores_match_predict(conn: psycopg.Connection) -> None:
    for movie_id, _, _, predicted, _ in conn.execute("SELECT * FROM recommend(9, 5)").fetchall():
        assert conn.execute("SELECT predict(9, %s)", (movie_id,)).fetchone()[0] == pytest.approx(
            predicted, abs=1e-5
        )


def test_recommend_default_k_is_10(conn: psycopg.Connection) -> None:
    assert conn.execute("SELECT count(*) FROM recommend(5)").fetchone()[0] == 10


def test_unknown_user_gets_popular_movies(conn: psycopg.Connection) -> None:
    rows = conn.execute("SELECT movie_id, score, source FROM recommend(987654, 5)").fetchall()
    assert len(rows) == 5 and {r[2] for r in rows} == {"popular"}
    assert [r[1] for r in rows] == sorted((r[1] for r in rows), reverse=True)
    # damped mean: a movie with one 5-star rating does not beat well-rated popular ones
    conn.execute("INSERT INTO movrec.movies (movie_id, title) VALUES (9001, 'Obscure Gem')")
    conn.execute(
        "INSERT INTO movrec.watch_events (user_id, movie_id, rating) VALUES (99999, 9001, 5)"
    )
    assert 9001 not in {r[0] for r in conn.execute("SELECT movie_id FROM recommend(987654, 5)")}


def test_user_who_has_seen_everything_gets_no_rows(conn: psycopg.Connection) -> None:
    conn.execute("""INSERT INTO movrec.watch_events (user_id, movie_id, rating)
                    SELECT 4242, movie_id, 3 FROM movrec.movies ON CONFLICT DO NOTHING""")
    assert conn.execute("SELECT count(*) FROM recommend(4242)").fetchone()[0] == 0


def test_without_a_model_everyone_gets_popular(
    cluster: Cluster, new_database: Callable[[str], str], install_kind: str
) -> None:
    dsn = install_into(cluster, new_database(f"t_no_model_{install_kind}"), install_kind)
    with connect(dsn) as conn:
        conn.execute("INSERT INTO movrec.movies (movie_id, title) VALUES (1, 'Alien'), (2, 'Heat')")
        conn.execute(
            "INSERT INTO movrec.watch_events (user_id, movie_id, rating) VALUES (1, 1, 5), (2, 2, 4)"
        )
        assert conn.execute("SELECT movie_id, source FROM recommend(1)").fetchall() == [
            (2, "popular")
        ]
        assert conn.execute("SELECT count(*) FROM model.user_latent_attributes").fetchone()[0] == 0
        with pytest.raises(
            psycopg.errors.ObjectNotInPrerequisiteState, match="no model is deployed"
        ):
            conn.execute("SELECT predict(1, 2)")


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            "SELECT * FROM recommend(NULL)",
            psycopg.errors.NullValueNotAllowed,
            "user_id must not be NULL",
        ),
        (
            "SELECT * FROM recommend(1, 0)",
            psycopg.errors.InvalidParameterValue,
            "k must be between",
        ),
        (
            "SELECT * FROM recommend(1, -5)",
            psycopg.errors.InvalidParameterValue,
            "k must be between",
        ),
        (
            "SELECT * FROM recommend(1, NULL)",
            psycopg.errors.InvalidParameterValue,
            "k must be between",
        ),
        ("SELECT predict(NULL, 1)", psycopg.errors.NullValueNotAllowed, "must not be NULL"),
        ("SELECT predict(1, 424242)", psycopg.errors.NoDataFound, "movie 424242 is not known"),
        (
            "SELECT deploy(424242)",
            psycopg.errors.NoDataFound,
            "model 424242 is not in model.registry",
        ),
        ("SELECT deploy(NULL)", psycopg.errors.NoDataFound, "model NULL is not in model.registry"),
        (
            "SELECT deploy_best('no_such_metric')",
            psycopg.errors.NoDataFound,
            "no deployable model has the metric no_such_metric",
        ),
    ],
)
def test_bad_input_gives_a_clear_error(
    conn: psycopg.Connection, call: str, error: type, message: str
) -> None:
    with pytest.raises(error, match=message) as info:
        conn.execute(call)
    assert "Traceback" not in str(info.value)


def _deploy_command(dsn: str, *args: str) -> int:
    """`movrec deploy ARGS`: the model it deployed (it fails the test on an error)."""
    from click.testing import CliRunner
    from movrec_cli.main import cli

    result = CliRunner().invoke(cli, ["deploy", *args, "--dsn", dsn])
    assert result.exit_code == 0, result.output
    deployed = re.search(r"^model (\d+) deployed$", result.output, re.M)
    assert deployed, result.output
    return int(deployed.group(1))


def _serves(conn: psycopg.Connection, model_id: int) -> None:
    """model_id is the champion, its vectors are the published ones, and recommend() uses them."""
    assert conn.execute("SELECT model_id FROM model.champion").fetchone() == (model_id,)
    assert conn.execute(
        "SELECT array_agg(DISTINCT model_id) FROM model.movie_latent_attributes"
    ).fetchone() == ([model_id],)
    assert [r[0] for r in conn.execute("SELECT source FROM recommend(5, 10)")] == ["model"] * 10


def test_rollback_and_deploy_best_walk_the_history(
    trained: str, conn: psycopg.Connection, install_kind: str
) -> None:
    # `movrec deploy --rollback` / `--best` on either install: in SQL in the full one, the
    # same choice in SQL and the deploy in the CLI in the portable one
    first = conn.execute("SELECT model_id FROM model.champion").fetchone()[0]
    second = train(conn, "mf", '{"epochs": 2}')
    third = train(conn, "mf", '{"epochs": 2, "seed": 3}')
    try:
        if install_kind == "portable":  # the deploy needs torch: the SQL names the command
            with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
                conn.execute("SELECT movrec.rollback()")
            assert "movrec deploy --rollback" in (e.value.diag.message_hint or "")
            _serves(conn, third)  # nothing changed
        assert _deploy_command(trained, "--rollback") == second
        _serves(conn, second)
        assert _deploy_command(trained, "--rollback") == first  # not back to third
        _serves(conn, first)
        assert conn.execute(
            "SELECT reason, rolled_back_from IS NOT NULL FROM model.deployments "
            "ORDER BY deployment_id DESC LIMIT 1"
        ).fetchone() == (f"rollback from {second}", True)
        best = conn.execute(
            "SELECT model_id FROM model.registry WHERE model_id IN (%s, %s, %s) "
            "ORDER BY (metrics ->> 'val_rmse')::float8, model_id DESC LIMIT 1",
            (first, second, third),
        ).fetchone()[0]
        assert _deploy_command(trained, "--best", "val_rmse") == best
        _serves(conn, best)
        if install_kind == "portable":
            with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
                conn.execute("SELECT movrec.deploy_best('val_rmse')")
            assert "movrec deploy --best val_rmse" in (e.value.diag.message_hint or "")
        else:
            assert conn.execute("SELECT movrec.deploy_best('val_rmse')").fetchone() == (best,)
    finally:
        _deploy_command(trained, str(first))
