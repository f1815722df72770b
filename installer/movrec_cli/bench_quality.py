"""Peer table on the benchmark protocol: ``python -m movrec_cli.bench_quality DIR``.

DIR holds MovieLens ``ratings.csv`` (ml-latest-small for the published numbers). The
ratings are split by one of two protocols (``PROTOCOLS``): ``random``,
``movrec.metrics.split`` (seed 42, first 90 % train) in file order; or ``time``,
``movrec.metrics.time_split`` (each user's last 10 % of ratings by timestamp are test).
Every peer in ``movrec_cli.baselines`` is fitted and scored on the split. Needs the
``bench`` extras (scikit-surprise, implicit); a missing one leaves its rows empty.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd
from movrec.metrics import split, time_split

from movrec_cli.baselines import COLUMNS, MODELS, run_baselines
from movrec_cli.connection import one
from movrec_cli.output import note, table

PROTOCOLS = ("random", "time")
PROTOCOL_TEXT = {
    "random": "ratings.csv, numpy default_rng(42) permutation, 90 % train / 10 % test",
    "time": "per user, the last 10 % of their ratings by time are test",
}


def protocol_rows(ratings: pd.DataFrame, protocol: str = "random") -> tuple[Any, Any]:
    """Row positions (train, test) of a ratings frame under a protocol (module docstring)."""
    if protocol == "random":
        return split(len(ratings))
    if protocol == "time":
        return time_split(ratings["userId"].to_numpy(), ratings["timestamp"].to_numpy())
    raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")


def load_split(ratings_csv: Path, protocol: str = "random") -> tuple[pd.DataFrame, pd.DataFrame]:
    """The protocol's split of a MovieLens ratings file, rows in file order."""
    ratings = pd.read_csv(
        ratings_csv,
        usecols=["userId", "movieId", "rating", "timestamp"],
        dtype={"userId": "int64", "movieId": "int64", "rating": "float64", "timestamp": "int64"},
    )
    train, test = protocol_rows(ratings, protocol)
    return ratings.iloc[train].reset_index(drop=True), ratings.iloc[test].reset_index(drop=True)


def peer_table(ratings_csv: Path, protocol: str = "random", **kwargs: Any) -> list[dict[str, Any]]:
    """Load, split, and run the peers; ``kwargs`` go to ``run_baselines``."""
    train, test = load_split(ratings_csv, protocol)
    return run_baselines(train, test, **kwargs)


def format_table(rows: list[dict[str, Any]]) -> str:
    """The peer table as Markdown (what the README quotes), 4 decimals, fit time 2."""
    head = ["model", *COLUMNS, "fit_s", "note"]
    cells = [
        [
            row["model"],
            *("n/a" if row[c] is None else f"{row[c]:.4f}" for c in COLUMNS),
            "" if row["fit_seconds"] is None else f"{row['fit_seconds']:.2f}",
            row.get("note", ""),
        ]
        for row in rows
    ]
    return table(cells, head, style="github")


def write_json(tables: dict[str, list[dict[str, Any]]], path: Path, **about: Any) -> Path:
    """Each protocol's rows as `{"protocols": ..., "rows": [...]}` for `movrec report --bench
    FILE`; with more than one protocol, each row's model names its protocol."""
    import datetime as dt
    import json

    several = len(tables) > 1
    rows = [
        {**row, "model": f"{row['model']} ({protocol})" if several else row["model"]}
        for protocol, protocol_rows in tables.items()
        for row in protocol_rows
    ]
    doc = {
        "protocols": {p: PROTOCOL_TEXT.get(p, p) for p in tables},
        "written_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **about,
        "rows": rows,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=str), encoding="utf-8")
    return path


def main(argv: list[str]) -> int:
    if len(argv) < 1:
        note(
            "usage: python -m movrec_cli.bench_quality DIR_OR_RATINGS_CSV "
            f"[{','.join(MODELS)}] [{'|'.join(PROTOCOLS)}]"
        )
        return 2
    path = Path(argv[0])
    csv = path / "ratings.csv" if path.is_dir() else path
    which = tuple(argv[1].split(",")) if len(argv) > 1 else MODELS
    protocol = argv[2] if len(argv) > 2 else "random"
    rows = peer_table(csv, protocol, which=which, progress=note)
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


# --- movrec's own models, trained in the database on the same split ----------------

BENCH_DB = "movrec_bench"


def _compact(conn: Any, table: str, column: str) -> dict[int, int]:
    key = "movie_id" if table == "movrec.movie_ids" else "user_id"
    return dict(conn.execute(f"SELECT {column}, {key} FROM {table}").fetchall())


def _search_note(params: dict[str, Any]) -> str:
    """What the budgeted search tried and kept, for the table's note ('' without a search)."""
    trials = params.get("search") or []
    if not trials:
        return ""
    kept = max(
        (t for t in trials if all(params.get(k) == v for k, v in t["options"].items())),
        key=lambda t: len(t["options"]),
    )
    return f"; search: {len(trials)} trials, kept {kept['options'] or 'the defaults'}"


def _item_item_note(params: dict[str, Any]) -> str:
    """What the item-item choice kept ('' for a model without one)."""
    about = params.get("item_item") or {}
    chosen = about.get("chosen")
    if not about:
        return ""
    if not chosen:
        return "; item-item: none beat the ranking alone"
    return (
        f"; item-item λ {chosen['lambda']:g}, w {chosen['w']:g}, {chosen['neighbours']} a movie "
        f"({about['n_weights']} weights, {about['seconds']:.0f} s)"
    )


def movrec_rows(
    conn: Any,
    data_dir: Path,
    kinds: tuple[str, ...],
    options: dict[str, Any],
    progress: Any = print,
    protocol: str = "random",
    tmdb: bool = True,
    seeds: tuple[int, ...] = (),
) -> list[dict[str, Any]]:
    """Load the training 90 % through the real loaders and ETL, train `kinds` in the database,
    and evaluate each on the raw test rows mapped through the ETL's id maps.

    The ETL runs with permissive thresholds (no pruning, TMDB optional) so it removes
    as few rows as possible; ``tmdb=False`` skips loading TMDB (titles and genres only); test
    rows it could not map are predicted with the training mean and reported as n_test_unknown.
    With ``seeds``, every kind trains once per seed (its ``seed`` option) on the one data load,
    and with more than one a row of the means follows (``seed_summary``).
    """
    import json
    import shutil
    import tempfile
    import time

    import numpy as np
    from movrec.evaluation import evaluate_model
    from movrec.item_item import Neighbours
    from movrec.registry import load_checkpoint

    from movrec_cli import loaders, pipeline

    ml = data_dir / "ml-latest-small" if (data_dir / "ml-latest-small").is_dir() else data_dir
    tmdb_csv = next(iter(data_dir.glob("tmdb*/tmdb_5000_movies.csv")), None) if tmdb else None
    train, test = load_split(ml / "ratings.csv", protocol)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        full = pd.read_csv(ml / "ratings.csv")
        _, test_rows = protocol_rows(full, protocol)
        full.drop(index=test_rows).to_csv(Path(tmp) / "ratings.csv", index=False)
        for name in ("movies.csv", "links.csv"):
            shutil.copy(ml / name, Path(tmp) / name)
        loaders.load_movielens(conn, Path(tmp), force=True)
    if tmdb_csv is not None:
        loaders.load_tmdb(conn, tmdb_csv, force=True)
    pipeline.run_etl(conn, 1, 1, 10**9, False, echo=progress)
    conn.execute("SELECT * FROM movrec.tokenize()")
    progress(f"bench: data ready in {time.perf_counter() - started:.1f} s")

    movies, users = (
        _compact(conn, "movrec.movie_ids", "ml_movie_id"),
        _compact(conn, "movrec.user_ids", "ml_user_id"),
    )
    # every raw movie is a candidate, as for the peers; raw movies the ETL did not map get
    # ids above the compact range, which no model knows, so they rank last
    raw_movies = np.unique(np.concatenate([train.movieId.to_numpy(), test.movieId.to_numpy()]))
    offset = max(movies.values()) + 1
    m_of = {m: movies.get(m, offset + i) for i, m in enumerate(raw_movies)}
    u_of = {u: users.get(u, -1 - i) for i, u in enumerate(np.unique(test.userId))}
    te_u = np.array([u_of[u] for u in test.userId])
    te_m = np.array([m_of[m] for m in test.movieId])
    tr = conn.execute(
        "SELECT array_agg(user_id), array_agg(movie_id), "
        "array_agg(extract(epoch FROM rated_at)::float8) FROM movrec.watch_events"
    ).fetchone()
    train_ids = (np.asarray(tr[0]), np.asarray(tr[1]))
    train_times = np.asarray(tr[2], dtype=np.float64)
    counts = train.movieId.value_counts()
    rare = test.movieId.map(counts).fillna(0).between(1, 4).to_numpy()

    rows = []
    for kind, seed in [(k, s) for k in kinds for s in (seeds or (None,))]:
        t = time.perf_counter()
        kind_options = dict(options.get(kind, {}))
        if seed is not None:
            kind_options["seed"] = seed
        model_id = one(
            conn.execute(
                "SELECT movrec.train(%s, %s::jsonb, deploy => false)",
                (kind, json.dumps(kind_options)),
            )
        )[0]
        seconds = time.perf_counter() - t
        blob, params, ii_blob = conn.execute(
            "SELECT checkpoint, params, item_item FROM model.registry WHERE model_id = %s",
            (model_id,),
        ).fetchone()
        searched = _search_note(params) + _item_item_note(params)
        model = load_checkpoint(kind, blob, model_id)
        weights = Neighbours.unpack(bytes(ii_blob)) if ii_blob is not None else None
        result = evaluate_model(
            model,
            train_ids,
            (te_u, te_m, test.rating.to_numpy()),
            movie_space=np.array(sorted(m_of.values())),
            item_item=weights,
            train_times=train_times,
        )
        rare_result = evaluate_model(
            model,
            train_ids,
            (te_u[rare], te_m[rare], test.rating.to_numpy()[rare]),
            movie_space=np.array(sorted(m_of.values())),
            item_item=weights,
            train_times=train_times,
        )
        if weights is not None:  # the ranking head alone, for the note
            alone = evaluate_model(
                model,
                train_ids,
                (te_u, te_m, test.rating.to_numpy()),
                movie_space=np.array(sorted(m_of.values())),
            )
            searched += f"; without item-item NDCG@10 {alone['test_ndcg@10']:.4f}"
        rows.append(
            {
                "model": f"movrec {kind} (#{model_id}"
                + ("" if seed is None else f", seed {seed}")
                + ")",
                "rmse": result["test_rmse"],
                "mae": result["test_mae"],
                "precision@10": result["test_precision@10"],
                "recall@10": result["test_recall@10"],
                "recall@20": result["test_recall@20"],
                "ndcg@10": result["test_ndcg@10"],
                "fit_seconds": seconds,
                "note": f"rare-movie RMSE {rare_result['test_rmse']:.4f} ({int(rare.sum())} rows); "
                f"{result['n_test_unknown']} test rows unmapped{searched}",
            }
        )
        progress(f"bench: {rows[-1]}")
        if seeds and len(seeds) > 1 and seed == seeds[-1]:
            rows.append(seed_summary(kind, rows[-len(seeds) :]))
    return rows


def seed_summary(kind: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One row: the mean over seeds of every metric, and in its note the spread (max - min)
    of RMSE and NDCG@10, the figure a difference between two options must exceed."""
    import numpy as np

    mean = {c: float(np.mean([r[c] for r in rows])) for c in (*COLUMNS, "fit_seconds")}
    spread = {c: max(r[c] for r in rows) - min(r[c] for r in rows) for c in ("rmse", "ndcg@10")}
    return {
        "model": f"movrec {kind}, mean of {len(rows)} seeds",
        **mean,
        "note": f"spread (max - min) RMSE {spread['rmse']:.4f}, NDCG@10 {spread['ndcg@10']:.4f}",
    }
