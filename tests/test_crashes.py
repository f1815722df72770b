"""Crashes and races that take the whole server's backends with them, or meet in one row.

A backend killed with SIGKILL (what the OOM killer sends) makes the postmaster end every
backend and recover the cluster, so that test runs on a cluster of its own.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from movrec_cli import schema
from movrec_cli.cluster import Cluster
from movrec_cli.demo_data import load_demo

from tests.conftest import connect, running_cluster, table_digest

STORED = (
    "model.registry",
    "model.deployments",
    "model.movie_latent_attributes",
    "model.user_latent_attributes",
    "model.user_latent_attributes_backups",
    "movrec.watch_events",
)


def digests(conn: psycopg.Connection) -> dict[str, tuple[int, str]]:
    return {t: table_digest(conn, t) for t in STORED}


@pytest.fixture(scope="module")
def own_cluster(cluster: Cluster) -> Iterator[str]:
    """A cluster of this module's own, movrec installed, demo data, an MF champion."""
    with running_cluster(cluster.port + 11, prefix="movrec-crash-") as c:
        with connect(c.dsn("movrec")) as conn:
            schema.install(conn)
            load_demo(conn, n_users=120, seed=11)
            conn.execute("""SELECT movrec.train('mf', '{"epochs": 5, "seed": 1}')""")
        yield c.dsn("movrec")


def test_a_backend_killed_mid_train_loses_nothing(own_cluster: str) -> None:
    with connect(own_cluster) as conn:
        before = digests(conn)
        answers = conn.execute("SELECT movie_id FROM movrec.recommend(3, 10)").fetchall()
    failure: list[BaseException] = []

    def train() -> None:
        try:
            with connect(own_cluster) as c:
                c.execute("""SELECT movrec.train('mf', '{"epochs": 100000, "batch_size": 1}')""")
        except psycopg.Error as e:
            failure.append(e)

    worker = threading.Thread(target=train)
    worker.start()
    with connect(own_cluster) as conn:
        pid = None
        deadline = time.monotonic() + 60
        while pid is None and time.monotonic() < deadline:
            row = conn.execute(
                """SELECT pid FROM pg_stat_activity
                   WHERE query LIKE '%movrec.train(%' AND pid <> pg_backend_pid() AND state = 'active'"""
            ).fetchone()
            pid = row and row[0]
            time.sleep(0.2)
    assert pid is not None, "the training never started"
    time.sleep(2)  # well into the epochs: the model is being fitted
    os.kill(pid, signal.SIGKILL)
    worker.join(60)
    assert not worker.is_alive() and failure, "the killed training did not end its session"
    deadline = time.monotonic() + 60  # the postmaster ends every backend and recovers
    while True:
        try:
            with connect(own_cluster) as conn:
                conn.execute("SELECT 1")
            break
        except psycopg.OperationalError:
            assert time.monotonic() < deadline, "the cluster did not come back"
            time.sleep(0.5)
    with connect(own_cluster) as conn:
        assert digests(conn) == before
        assert conn.execute("SELECT movie_id FROM movrec.recommend(3, 10)").fetchall() == answers


def test_concurrent_deploys_leave_one_consistent_champion(own_cluster: str) -> None:
    with connect(own_cluster) as conn:
        models = [
            conn.execute(
                "SELECT movrec.train('mf', %s, deploy => false)", (f'{{"epochs": 3, "seed": {s}}}',)
            ).fetchone()[0]
            for s in (2, 3)
        ]
        deployments = conn.execute("SELECT count(*) FROM model.deployments").fetchone()[0]
    barrier = threading.Barrier(len(models))
    errors: list[BaseException] = []

    def deploy(model: int) -> None:
        try:
            with connect(own_cluster) as c:
                barrier.wait()
                c.execute("SELECT movrec.deploy(%s)", (model,))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=deploy, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    with connect(own_cluster) as conn:
        champion = conn.execute("SELECT model_id FROM model.champion").fetchone()[0]
        assert champion in models
        assert (
            conn.execute("SELECT count(*) FROM model.deployments").fetchone()[0] == deployments + 2
        )
        for table in ("model.movie_latent_attributes", "model.user_latent_attributes"):
            labels = conn.execute(f"SELECT DISTINCT model_id FROM {table}").fetchall()
            assert labels == [(champion,)], (table, labels)
        rows = conn.execute("SELECT count(*), count(DISTINCT source) FROM movrec.recommend(3, 10)")
        assert rows.fetchone() == (10, 1)
