"""`movrec bench online`: online learning quality on ml-latest-small.

10 % of the users are held out of training; their ratings stream through the trigger
in time order; after 5, 10 and 20 of them, RMSE and NDCG@10 on the rest, for the
default vector, sgd, refit and a full retrain.
"""

from __future__ import annotations

import csv
import time
from datetime import UTC, datetime
from pathlib import Path

import click
import numpy as np
import psycopg
from movrec.metrics import ndcg

from movrec_cli.bench_serving import load_average
from movrec_cli.connection import one
from movrec_cli.output import note, table

ONLINE_DB = "movrec_online"
CHECKPOINTS = (5, 10, 20)


def _load_small(conn: psycopg.Connection, data: Path) -> tuple[np.ndarray, ...]:
    with open(data / "movies.csv", newline="", encoding="utf-8") as f:
        movies = [
            (
                int(r["movieId"]),
                r["title"] or "?",
                [] if r["genres"] == "(no genres listed)" else r["genres"].split("|"),
            )
            for r in csv.DictReader(f)
        ]
    with (
        conn.transaction(),
        conn.cursor().copy("COPY movrec.movies (movie_id, title, genres) FROM STDIN") as c,
    ):
        for row in movies:
            c.write_row(row)
    r = np.loadtxt(data / "ratings.csv", delimiter=",", skiprows=1)
    return (
        r[:, 0].astype(np.int32),
        r[:, 1].astype(np.int32),
        r[:, 2].astype(np.float32),
        r[:, 3].astype(np.int64),
    )


def _copy_ratings(
    conn: psycopg.Connection, u: np.ndarray, m: np.ndarray, r: np.ndarray, ts: np.ndarray
) -> None:
    with conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")  # no triggers: a bulk load
        with conn.cursor().copy(
            "COPY movrec.watch_events (user_id, movie_id, rating, rated_at) FROM STDIN"
        ) as c:
            for row in zip(u.tolist(), m.tolist(), r.tolist(), ts.tolist(), strict=True):
                c.write_row((row[0], row[1], row[2], datetime.fromtimestamp(row[3], UTC)))
        if one(conn.execute("SELECT to_regprocedure('movrec.cf_rebuild_stats()')"))[0]:
            conn.execute("SELECT movrec.cf_rebuild_stats()")


def _model(
    conn: psycopg.Connection,
) -> tuple[float, np.ndarray, float, dict[int, tuple[np.ndarray, float]]]:
    mu, default, default_bias = one(
        conn.execute(
            """SELECT r.global_mean, r.default_embedding, r.default_bias
           FROM model.registry r JOIN model.champion c USING (model_id)"""
        )
    )
    side = {
        mid: (np.asarray(e, dtype=np.float64), b)
        for mid, e, b in conn.execute(
            "SELECT movie_id, embedding::real[], bias FROM model.movie_latent_attributes"
        )
    }
    return mu, np.asarray(default, dtype=np.float64), default_bias, side


def _vectors(conn: psycopg.Connection, users: list[int]) -> dict[int, tuple[np.ndarray, float]]:
    return {
        uid: (np.asarray(e, dtype=np.float64), b)
        for uid, e, b in conn.execute(
            "SELECT user_id, embedding::real[], bias FROM model.user_latent_attributes WHERE user_id = ANY(%s)",
            (users,),
        )
    }


def _metrics(
    tests: dict[int, tuple[np.ndarray, np.ndarray]],
    vectors: dict[int, tuple[np.ndarray, float]],
    mu: float,
    side: dict[int, tuple[np.ndarray, float]],
) -> tuple[float, float]:
    """RMSE over all held-out test ratings, mean NDCG@10 (relevant: >= 4) ranking each user's test movies."""
    sq, n, ndcgs = 0.0, 0, []
    for uid, (movies, ratings) in tests.items():
        u, b = vectors[uid]
        known = np.array([m in side for m in movies.tolist()])
        if not known.any():
            continue
        mv = np.array([side[m][0] for m in movies[known].tolist()])
        mb = np.array([side[m][1] for m in movies[known].tolist()])
        pred = np.clip(mv @ u + mb + b + mu, 0.5, 5.0)
        truth = ratings[known]
        sq += float(((pred - truth) ** 2).sum())
        n += len(truth)
        rel = truth >= 4
        if rel.any():
            top = np.argsort(-pred, kind="stable")[:10]
            ndcgs.append(float(ndcg(rel[top], int(rel.sum()), 10)[0]))
    return float(np.sqrt(sq / n)), float(np.mean(ndcgs)) if ndcgs else float("nan")


def run_online(
    data_dir: Path,
    dsn: str | None,
    holdout: float,
    train_options: str,
    refit_reg: float | None,
    seed: int,
) -> None:
    """Online learning quality: default vector, sgd, refit and full retrain after 5/10/20 ratings."""
    from movrec.online import ridge_fold_in

    from movrec_cli import schema

    if dsn is None:
        from movrec_cli.cluster import Cluster

        cluster = Cluster.default()
        cluster.ensure_database(ONLINE_DB)
        dsn = cluster.dsn(ONLINE_DB)
    t0 = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        schema.uninstall(conn, drop_data=True)
        schema.install(conn)
        u, m, r, ts = _load_small(conn, data_dir)
        rng = np.random.default_rng(seed)
        counts = np.bincount(u)
        eligible = np.flatnonzero(counts >= max(CHECKPOINTS) + 10)  # >= 10 test ratings left
        held = np.sort(rng.choice(eligible, int(round(holdout * len(np.unique(u)))), replace=False))
        is_held = np.isin(u, held)
        _copy_ratings(conn, u[~is_held], m[~is_held], r[~is_held], ts[~is_held])
        stream: dict[int, tuple[np.ndarray, ...]] = {}
        tests: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for uid in held.tolist():
            idx = np.flatnonzero(u == uid)
            idx = idx[np.lexsort((m[idx], ts[idx]))]  # time order
            first, rest = idx[: max(CHECKPOINTS)], idx[max(CHECKPOINTS) :]
            stream[uid] = (m[first], r[first], ts[first])
            tests[uid] = (m[rest], r[rest])
        note(
            f"{len(held)} held-out users, {sum(len(t[0]) for t in tests.values())} test ratings; "
            f"training on {int((~is_held).sum())} ratings"
        )
        t = time.perf_counter()
        conn.execute("SELECT movrec.train('mf', %s)", (train_options,))
        note(f"base model trained in {time.perf_counter() - t:.1f} s")
        mu, default, default_bias, side = _model(conn)
        users = held.tolist()
        rows: dict[str, dict[int, tuple[float, float]]] = {}
        rows["default vector"] = {
            k: _metrics(tests, {uid: (default, default_bias) for uid in users}, mu, side)
            for k in CHECKPOINTS
        }

        def stream_through_trigger(mode: str) -> dict[int, tuple[float, float]]:
            out = {}
            # the trigger reads the database's settings (restored at the end), not a session's
            conn.execute("UPDATE movrec.settings SET online_update = %s", (mode,))
            if refit_reg is not None:
                conn.execute("UPDATE movrec.settings SET refit_reg = %s", (refit_reg,))
            done = 0
            tm = time.perf_counter()
            for k in CHECKPOINTS:
                with conn.pipeline():
                    for uid in users:
                        mm, rr, tt = stream[uid]
                        for j in range(done, k):
                            conn.execute(
                                "INSERT INTO movrec.watch_events (user_id, movie_id, rating, rated_at) "
                                "VALUES (%s, %s, %s, to_timestamp(%s))",
                                (uid, int(mm[j]), float(rr[j]), int(tt[j])),
                            )
                done = k
                out[k] = _metrics(tests, _vectors(conn, users), mu, side)
            note(
                f"{mode}: {len(users) * done} ratings streamed in {time.perf_counter() - tm:.1f} s"
            )
            with conn.transaction():
                conn.execute("DELETE FROM movrec.watch_events WHERE user_id = ANY(%s)", (users,))
                conn.execute(
                    "DELETE FROM model.user_latent_attributes WHERE user_id = ANY(%s)", (users,)
                )
                conn.execute(
                    "DELETE FROM model.user_latent_attributes_backups WHERE user_id = ANY(%s)",
                    (users,),
                )
            return out

        rows["sgd (trigger)"] = stream_through_trigger("sgd")
        rows["refit (trigger)"] = stream_through_trigger("refit")
        # the refit's ridge weight, swept offline with the same function
        for reg in (1.0, 3.0, 10.0, 30.0):
            res = {}
            for k in CHECKPOINTS:
                vec = {}
                for uid in users:
                    mm, rr, _ = stream[uid]
                    keep = [j for j in range(k) if int(mm[j]) in side]
                    vs = np.array([side[int(mm[j])][0] for j in keep]).reshape(len(keep), -1)
                    bs = np.array([side[int(mm[j])][1] for j in keep])
                    vec[uid] = ridge_fold_in(
                        vs if len(keep) else np.zeros((0, len(default))),
                        bs,
                        mu,
                        rr[keep],
                        default,
                        default_bias,
                        reg,
                    )
                res[k] = _metrics(tests, vec, mu, side)
            rows[f"refit numpy, reg {reg:g}"] = res
        # full retrain with the held-out users' first k ratings
        res = {}
        for k in CHECKPOINTS:
            cu, cm, cr, ct = [], [], [], []
            for uid in users:
                mm, rr, tt = stream[uid]
                cu.append(np.full(k, uid, dtype=np.int32))
                cm.append(mm[:k])
                cr.append(rr[:k])
                ct.append(tt[:k])
            _copy_ratings(
                conn, np.concatenate(cu), np.concatenate(cm), np.concatenate(cr), np.concatenate(ct)
            )
            t = time.perf_counter()
            conn.execute("SELECT movrec.train('mf', %s)", (train_options,))
            mu_k, _, _, side_k = _model(conn)
            res[k] = _metrics(tests, _vectors(conn, users), mu_k, side_k)
            note(f"full retrain with {k} ratings each: {time.perf_counter() - t:.1f} s")
            conn.execute("DELETE FROM movrec.watch_events WHERE user_id = ANY(%s)", (users,))
        rows["full retrain"] = res
    headers = ["held-out users, n ratings"]
    headers += [h for k in CHECKPOINTS for h in (f"RMSE n={k}", f"NDCG@10 n={k}")]
    cells = [
        [name, *(f"{v:.4f}" for k in CHECKPOINTS for v in res[k][:2])] for name, res in rows.items()
    ]
    click.echo(table(cells, headers, align=["left", *["right"] * (len(headers) - 1)]))
    note(f"total {time.perf_counter() - t0:.0f} s; load {load_average()}")
