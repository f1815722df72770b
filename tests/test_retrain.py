"""movrec.retrain_and_promote() / `movrec retrain`: a new model on the current data is deployed
only when it beats the champion, each scored on the ratings it held out; otherwise it is recorded with
the reason and the champion stays."""

from __future__ import annotations

import re

import psycopg
import pytest
from click.testing import CliRunner
from movrec_cli.demo_data import load_demo
from movrec_cli.main import cli

from tests.conftest import connect, table_digest


@pytest.fixture(scope="module")
def weak_champion(installed: str) -> str:
    """Demo data and a crippled MF champion: one epoch under a huge L2 penalty."""
    with connect(installed) as conn:
        load_demo(conn, n_users=200, seed=11)
        conn.execute("""SELECT movrec.train('mf', '{"epochs": 1, "reg": 50}')""")
    return installed


def _champion(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT model_id FROM model.champion").fetchone()[0]


def test_without_a_champion_it_needs_a_kind(installed: str) -> None:
    with connect(installed) as conn:
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
            conn.execute("SELECT * FROM movrec.retrain_and_promote()")
        assert (
            "no champion" in str(e.value)
            and "retrain_and_promote('mf')" in e.value.diag.message_hint
        )
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            conn.execute("""SELECT * FROM movrec.retrain_and_promote('mf', '[1]')""")
        assert conn.execute("SELECT count(*) FROM model.registry").fetchone()[0] == 0


def test_a_better_model_is_promoted(weak_champion: str) -> None:
    with connect(weak_champion) as conn:
        old = _champion(conn)
        row = conn.execute(
            """SELECT model_id, champion_id, promoted, metric, value, champion_value, reason
               FROM movrec.retrain_and_promote(NULL, '{"epochs": 30, "reg": 0.1}')"""
        ).fetchone()
        new, champion_id, promoted, metric, value, champion_value, reason = row
        assert (champion_id, promoted, metric) == (old, True, "val_rmse"), row
        assert value < champion_value and reason.startswith("promoted"), row
        assert _champion(conn) == new
        assert (
            conn.execute(
                "SELECT reason FROM model.deployments ORDER BY deployment_id DESC LIMIT 1"
            ).fetchone()[0]
            == "retrain_and_promote"
        )
        params, retrain = conn.execute(
            "SELECT params, metrics->'retrain' FROM model.registry WHERE model_id = %s", (new,)
        ).fetchone()
        # the champion's kind, the options given over its own, and its split
        assert params["epochs"] == 30 and params["seed"] == 42 and params["val_fraction"] == 0.05
        assert retrain["promoted"] is True and retrain["champion"] == old


def test_a_worse_model_is_recorded_and_the_champion_stays(weak_champion: str) -> None:
    with connect(weak_champion) as conn:
        champion = _champion(conn)
        before = table_digest(conn, "model.deployments")
        r = CliRunner().invoke(
            cli, ["retrain", "--dsn", weak_champion, "--options", '{"epochs": 1, "reg": 50}']
        )
        assert r.exit_code == 0, r.output
        assert "not promoted, the champion stays" in r.output, r.output
        found = re.search(r"^model (\d+): not promoted", r.output, re.M)
        assert found, r.output
        new = int(found.group(1))
        assert _champion(conn) == champion
        assert table_digest(conn, "model.deployments") == before
        retrain = conn.execute(
            "SELECT metrics->'retrain' FROM model.registry WHERE model_id = %s", (new,)
        ).fetchone()[0]
        assert retrain["promoted"] is False and retrain["champion"] == champion
        assert retrain["value"] > retrain["champion_value"], retrain
        assert "does not beat" in retrain["reason"]


def test_only_movrec_admin_may_run_it(weak_champion: str) -> None:
    with connect(weak_champion) as conn:
        allowed = dict(
            conn.execute(
                "SELECT r, has_function_privilege(r, 'movrec.retrain_and_promote(text, jsonb)', 'EXECUTE')"
                " FROM unnest(ARRAY['movrec_admin', 'movrec_user']) AS r"
            ).fetchall()
        )
        assert allowed == {"movrec_admin": True, "movrec_user": False}
        assert not conn.execute(
            "SELECT has_function_privilege('public', 'movrec.retrain_and_promote(text, jsonb)', 'EXECUTE')"
        ).fetchone()[0]


def test_a_champion_chosen_by_the_search_retrains_with_its_chosen_options(
    weak_champion: str,
) -> None:
    """A champion's params carry its search's trials (params->'search'), which are no training
    option: retraining it takes the options the search chose, and searches nothing again."""
    with connect(weak_champion) as conn:
        searched = conn.execute(
            """SELECT movrec.train('mf', '{"epochs": 2, "budget_s": 30}')"""
        ).fetchone()[0]
        chosen = conn.execute(
            "SELECT params FROM model.registry WHERE model_id = %s", (searched,)
        ).fetchone()[0]
        assert chosen["search"]  # the trials, kept with its params
        new = conn.execute(
            "SELECT model_id FROM movrec.retrain_and_promote(NULL, '{\"epochs\": 1}')"
        ).fetchone()[0]
        params = conn.execute(
            "SELECT params FROM model.registry WHERE model_id = %s", (new,)
        ).fetchone()[0]
        assert {k: params[k] for k in ("reg", "dim", "lr")} == {
            k: chosen[k] for k in ("reg", "dim", "lr")
        }
        assert [t["options"] for t in params["search"]] == [{}]  # every option was given
