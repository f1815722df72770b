"""Offline prototype of an item-item term added to the hybrid's ranking (issue 14's target).

Two steps, so that the costly one (loading and training in the database) runs once a dataset:

    # 1. the bench protocol's split through the real loaders/ETL, one hybrid fit (budget_s 0),
    #    dumped with its checkpoint and its stored validation split
    .venv/bin/python bench/item_item_prototype.py dump --data ../shared/data [--no-tmdb] OUT.npz
    # 2. the candidates, chosen on the hybrid's own validation split, then scored on test
    .venv/bin/python bench/item_item_prototype.py explore OUT.npz

The candidates: (a) hybrid ranking + w x EASE's B sparsified to the top N weights of each seen
movie; (b) + w x a rank-r truncation of the dense B; (c) reciprocal rank fusion of the two
rankings.  EASE's B is fitted on the rows the hybrid trained on (its registry validation split
held out), w / N / r / λ are chosen by validation NDCG@10 on that split, and only the chosen
candidate is refitted on all training rows and scored on the test split.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def dump(data_dir: Path, tmdb: bool, out: Path) -> None:
    from movrec_cli import bench_quality as bq
    from movrec_cli import loaders, pipeline
    from movrec_cli import schema as sch
    from movrec_cli.cluster import Cluster
    from movrec_cli.connection import connect, one

    import pandas as pd

    cluster = Cluster.default()
    cluster.ensure_database(bq.BENCH_DB)
    ml = data_dir / "ml-latest-small"
    tmdb_csv = next(iter(data_dir.glob("tmdb*/tmdb_5000_movies.csv")), None) if tmdb else None
    train, test = bq.load_split(ml / "ratings.csv", "random")
    with connect(cluster.dsn(bq.BENCH_DB)) as conn:
        sch.uninstall(conn, drop_data=True)
        sch.install(conn)
        conn.execute("UPDATE movrec.settings SET train_threads = 1")
        import shutil
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            full = pd.read_csv(ml / "ratings.csv")
            _, test_rows = bq.protocol_rows(full, "random")
            full.drop(index=test_rows).to_csv(Path(tmp) / "ratings.csv", index=False)
            for name in ("movies.csv", "links.csv"):
                shutil.copy(ml / name, Path(tmp) / name)
            loaders.load_movielens(conn, Path(tmp), force=True)
        if tmdb_csv is not None:
            loaders.load_tmdb(conn, tmdb_csv, force=True)
        pipeline.run_etl(conn, 1, 1, 10**9, False, echo=print)
        conn.execute("SELECT * FROM movrec.tokenize()")
        movies = bq._compact(conn, "movrec.movie_ids", "ml_movie_id")
        users = bq._compact(conn, "movrec.user_ids", "ml_user_id")
        raw_movies = np.unique(np.concatenate([train.movieId.to_numpy(), test.movieId.to_numpy()]))
        offset = max(movies.values()) + 1
        m_of = {m: movies.get(m, offset + i) for i, m in enumerate(raw_movies)}
        u_of = {u: users.get(u, -1 - i) for i, u in enumerate(np.unique(test.userId))}
        tr = conn.execute(
            "SELECT array_agg(user_id), array_agg(movie_id), array_agg(rating) "
            "FROM movrec.watch_events"
        ).fetchone()
        t = time.perf_counter()
        model_id = one(
            conn.execute(
                "SELECT movrec.train('hybrid', '{\"budget_s\": 0}'::jsonb, deploy => false)"
            )
        )[0]
        seconds = time.perf_counter() - t
        blob, split_blob, metrics = conn.execute(
            "SELECT checkpoint, validation_split, metrics FROM model.registry WHERE model_id = %s",
            (model_id,),
        ).fetchone()
    np.savez(
        out,
        checkpoint=np.frombuffer(bytes(blob), np.uint8),
        validation_split=np.frombuffer(bytes(split_blob), np.uint8),
        train_u=np.asarray(tr[0], np.int64),
        train_m=np.asarray(tr[1], np.int64),
        train_r=np.asarray(tr[2], np.float64),
        test_u=np.array([u_of[u] for u in test.userId]),
        test_m=np.array([m_of[m] for m in test.movieId]),
        test_r=test.rating.to_numpy(),
        movie_space=np.array(sorted(m_of.values())),
        fit_seconds=seconds,
        metrics=json.dumps(metrics),
    )
    print(f"dumped model {model_id} ({seconds:.1f} s) to {out}")


# --- offline ---------------------------------------------------------------------------


class Space:
    """Users and movies of one evaluation as 0-based indices, as evaluate_model numbers them."""

    def __init__(
        self,
        model: Any,
        train: tuple[np.ndarray, np.ndarray],
        test_u: np.ndarray,
        movie_space: np.ndarray,
    ) -> None:
        from movrec.evaluation import _positions

        self.user_ids, self.users, self.user_bias = (t.numpy() for t in model.user_side())
        self.movie_ids, self.movies, self.movie_bias = (t.numpy() for t in model.movie_side())
        self.ranking = model.ranking_side().numpy()
        self.mean = float(model.global_mean)
        self.space = movie_space
        self.in_model = _positions(self.movie_ids, movie_space)
        self.all_users = np.unique(np.concatenate([train[0], test_u]))
        self.upos = _positions(self.user_ids, self.all_users)
        self.u_of = {u: i for i, u in enumerate(self.all_users)}
        self.m_index = _positions

    def hybrid(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ranking score, predicted >= 3 mask) over the space; unknown movies -1e12."""
        up = self.upos[idx]
        vecs = np.where((up >= 0)[:, None], self.users[np.maximum(up, 0)], self.users.mean(0))
        b = np.where(up >= 0, self.user_bias[np.maximum(up, 0)], self.user_bias.mean())
        pred = vecs @ self.movies.T + self.movie_bias + b[:, None] + self.mean
        rank = vecs @ self.ranking[:, :-1].T + self.ranking[:, -1]
        full = np.full((len(idx), len(self.space)), -1e12)
        ok = np.zeros((len(idx), len(self.space)), bool)
        known = self.in_model >= 0
        full[:, known] = rank[:, self.in_model[known]]
        ok[:, known] = pred[:, self.in_model[known]] >= 3.0
        return full, ok

    def index(self, u: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mp = self.m_index(self.space, m)
        keep = mp >= 0
        return np.array([self.u_of[x] for x in u[keep]], np.int64), mp[keep], keep


def ease_rows(
    x: np.ndarray, lam: float, n: int, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """EASE's B = I - P diag(1/diag P) with each row (a seen movie) cut to its n largest
    |weights|: (neighbour indices, weights), each (n_items, n).  P by Woodbury over the users
    (P = (I - Xᵀ(XXᵀ + λI)⁻¹X)/λ), formed a block of rows at a time."""
    xd = x.astype(np.float64)
    m = np.linalg.solve(xd @ xd.T + lam * np.eye(len(xd)), xd)
    diag_p = (1.0 - (xd * m).sum(axis=0)) / lam
    n_items = x.shape[1]
    idx = np.zeros((n_items, n), np.int64)
    val = np.zeros((n_items, n), np.float32)
    for i0 in range(0, n_items, chunk):
        i1 = min(i0 + chunk, n_items)
        p = -(xd[:, i0:i1].T @ m) / lam
        p[np.arange(i1 - i0), np.arange(i0, i1)] += 1.0 / lam
        b = -p / diag_p[None, :]
        b[np.arange(i1 - i0), np.arange(i0, i1)] = 0.0
        part = np.argpartition(-np.abs(b), n - 1, axis=1)[:, :n]
        idx[i0:i1] = part
        val[i0:i1] = np.take_along_axis(b, part, axis=1)
    return idx, val


def cosine_rows(x: np.ndarray, n: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Cosine item-item similarity (co-raters / sqrt(n_i n_j)), each row cut to its n largest."""
    xd = x.astype(np.float32)
    norm = np.sqrt(np.maximum(xd.sum(axis=0), 1.0))
    n_items = x.shape[1]
    idx = np.zeros((n_items, n), np.int64)
    val = np.zeros((n_items, n), np.float32)
    for i0 in range(0, n_items, chunk):
        i1 = min(i0 + chunk, n_items)
        c = (xd[:, i0:i1].T @ xd) / norm[i0:i1, None] / norm[None, :]
        c[np.arange(i1 - i0), np.arange(i0, i1)] = 0.0
        part = np.argpartition(-c, n - 1, axis=1)[:, :n]
        idx[i0:i1] = part
        val[i0:i1] = np.take_along_axis(c, part, axis=1)
    return idx, val


def top(idx: np.ndarray, val: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The n largest |weights| of rows already cut to more."""
    if n >= idx.shape[1]:
        return idx, val
    part = np.argpartition(-np.abs(val), n - 1, axis=1)[:, :n]
    return np.take_along_axis(idx, part, axis=1), np.take_along_axis(val, part, axis=1)


def apply_rows(x: np.ndarray, idx: np.ndarray, val: np.ndarray) -> np.ndarray:
    """x @ B for the row-sparse B: every user's sum of their seen movies' neighbour weights."""
    u, i = np.nonzero(x)
    n_u, n_m = x.shape
    flat = (u[:, None] * n_m + idx[i]).ravel()
    return np.bincount(flat, val[i].ravel().astype(np.float64), n_u * n_m).reshape(n_u, n_m)


def ranks(scores: np.ndarray) -> np.ndarray:
    order = np.argsort(-scores, axis=1, kind="stable")
    r = np.empty_like(order)
    np.put_along_axis(r, order, np.arange(scores.shape[1])[None, :], axis=1)
    return r


def _setup(path: Path) -> tuple[Any, ...]:
    from movrec.evaluation import unpack_split
    from movrec.registry import load_checkpoint

    d = np.load(path)
    model = load_checkpoint("hybrid", d["checkpoint"].tobytes())
    space = Space(model, (d["train_u"], d["train_m"]), d["test_u"], d["movie_space"])
    h, ok = space.hybrid(np.arange(len(space.all_users)))
    return d, space, h, ok, unpack_split(d["validation_split"].tobytes())


def _metrics(
    space: Any,
    s: np.ndarray,
    ok: np.ndarray,
    fit: tuple[np.ndarray, ...],
    ev: tuple[np.ndarray, ...],
) -> dict[str, float]:
    from movrec.metrics import ranking_metrics

    full = np.where(ok, s, s - 1e6)
    fu, fm, _ = space.index(fit[0], fit[1])
    eu, em, keep = space.index(ev[0], ev[1])
    return ranking_metrics(
        lambda i: full[i], fu, fm, eu, em, ev[2][keep], full.shape[0], full.shape[1]
    )


def _binary(
    space: Any, u: np.ndarray, m: np.ndarray, r: np.ndarray, threshold: float | None
) -> np.ndarray:
    keep = r >= threshold if threshold is not None else np.ones(len(r), bool)
    pu, pm, _ = space.index(u[keep], m[keep])
    x = np.zeros(ok_shape(space), np.float32)
    x[pu, pm] = 1.0
    return x


def ok_shape(space: Any) -> tuple[int, int]:
    return len(space.all_users), len(space.space)


WS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


def explore(path: Path) -> None:
    from movrec.closed_form import fit_ease

    d, space, h, ok, (vu, vm, vr) = _setup(path)
    tu, tm, trr = d["train_u"], d["train_m"], d["train_r"]
    val_keys = set(zip(vu.tolist(), vm.tolist(), strict=True))
    in_val = np.array([(a, b) in val_keys for a, b in zip(tu.tolist(), tm.tolist(), strict=True)])
    fit = (tu[~in_val], tm[~in_val], trr[~in_val])
    ev = (vu, vm, vr)
    print(f"train {len(tu)}, of which validation {in_val.sum()}; test {len(d['test_r'])}")
    results: list[tuple[float, str, dict[str, Any]]] = []
    base = _metrics(space, h, ok, fit, ev)["ndcg@10"]
    print(f"hybrid alone: val NDCG@10 {base:.4f}; h std {h[h > -1e11].std():.3f}", flush=True)
    for threshold in (4.0, None):
        xf = _binary(space, *fit, threshold)
        for lam in (50.0, 150.0, 500.0):
            t = time.perf_counter()
            idx, val = ease_rows(xf, lam, 256)
            fit_s = time.perf_counter() - t
            e = fit_ease(xf, lam)
            es = e.score(np.arange(xf.shape[0]))
            v_e = _metrics(space, es, np.ones_like(ok), fit, ev)["ndcg@10"]
            v_ef = _metrics(space, es, ok, fit, ev)["ndcg@10"]
            print(
                f"EASE λ {lam} pos {threshold}: val NDCG@10 {v_e:.4f} (with the >= 3 filter "
                f"{v_ef:.4f}); sparse B in {fit_s:.1f} s",
                flush=True,
            )
            for n in (32, 64, 128, 256):
                s = apply_rows(xf, *top(idx, val, n))
                print(
                    f"  N {n}: item-item alone {_metrics(space, s, ok, fit, ev)['ndcg@10']:.4f}",
                    end="",
                )
                for w in WS:
                    v = _metrics(space, h + w * s, ok, fit, ev)["ndcg@10"]
                    results.append(
                        (v, "a", {"lambda": lam, "positives": threshold, "n": n, "w": w})
                    )
                best = max((r for r in results[-len(WS) :]), key=lambda r: r[0])
                print(f"; ensemble best {best[0]:.4f} at w {best[2]['w']}", flush=True)
            for c in (10.0, 60.0):
                v = _metrics(
                    space,
                    1.0 / (c + ranks(np.where(ok, h, h - 1e6))) + 1.0 / (c + ranks(es)),
                    ok,
                    fit,
                    ev,
                )["ndcg@10"]
                results.append((v, "c", {"lambda": lam, "positives": threshold, "c": c}))
        for n in (64, 256):
            idx, val = cosine_rows(xf, n)
            s = apply_rows(xf, idx, val)
            for w in WS:
                v = _metrics(space, h + w * s, ok, fit, ev)["ndcg@10"]
                results.append((v, "b", {"cosine": True, "positives": threshold, "n": n, "w": w}))
            best = max((r for r in results[-len(WS) :]), key=lambda r: r[0])
            print(
                f"cosine kNN N {n} pos {threshold}: ensemble best {best[0]:.4f} at "
                f"w {best[2]['w']}",
                flush=True,
            )
    for cand in "abc":
        best = max((r for r in results if r[1] == cand), key=lambda r: r[0])
        print(f"best ({cand}): val NDCG@10 {best[0]:.4f} {best[2]}")
    best = max(results, key=lambda r: r[0])
    print(f"chosen by validation: {best}")
    Path(str(path) + ".trials.json").write_text(json.dumps(results))


def test_figures(path: Path, opts: dict[str, Any]) -> None:
    """The chosen (a) candidate refitted on all training rows, scored on the test split."""
    from movrec.closed_form import validated_ease

    d, space, h, ok, _ = _setup(path)
    tu, tm, trr = d["train_u"], d["train_m"], d["train_r"]
    tr = (tu, tm, trr)
    te = (d["test_u"], d["test_m"], d["test_r"])
    x = _binary(space, *tr, opts["positives"])
    t = time.perf_counter()
    idx, val = ease_rows(x, opts["lambda"], opts["n"])
    fit_s = time.perf_counter() - t
    s = apply_rows(x, idx, val)
    alone = _metrics(space, h, ok, tr, te)
    ens = _metrics(space, h + opts["w"] * s, ok, tr, te)
    fu, fm, _ = space.index(tu, tm)
    ve = validated_ease(fu, fm, trr, *ok_shape(space))
    ease = _metrics(space, ve.score(np.arange(ok.shape[0])), np.ones_like(ok), tr, te)
    print(
        f"test: hybrid alone NDCG@10 {alone['ndcg@10']:.4f}; EASE {ease['ndcg@10']:.4f} "
        f"({ve.options}); ensemble {ens['ndcg@10']:.4f} = {ens['ndcg@10'] / ease['ndcg@10']:.3f}"
        f" x EASE (P@10 {ens['precision@10']:.4f} R@10 {ens['recall@10']:.4f} "
        f"R@20 {ens['recall@20']:.4f}); sparse B in {fit_s:.1f} s, "
        f"{idx.shape[0]} x {idx.shape[1]} weights"
    )


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "dump":
        args = sys.argv[2:]
        data = Path(args[args.index("--data") + 1])
        dump(data, "--no-tmdb" not in args, Path(args[-1]))
    elif cmd == "explore":
        explore(Path(sys.argv[2]))
    elif cmd == "test":
        test_figures(Path(sys.argv[2]), json.loads(sys.argv[3]))
