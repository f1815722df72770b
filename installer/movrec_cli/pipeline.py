"""Driving the ETL stages and exporting their bundles."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from movrec_cli.connection import one

STAGES = (
    ("1 clean links", "CALL movrec.etl_clean_links(%(run)s)"),
    ("2 cross-filter", "CALL movrec.etl_cross_filter(%(run)s, %(require_tmdb)s)"),
    ("3 prune and remap", "CALL movrec.etl_prune_remap(%(run)s, %(min_movie)s, %(min_user)s)"),
    ("4 drop super-raters", "CALL movrec.etl_drop_super_raters(%(run)s, %(max_user)s)"),
    ("publish", "CALL movrec.etl_publish(%(run)s, %(force)s)"),
)

# What --export writes per stage: one folder of CSV files per stage (stage1 .. stage4).
BUNDLES: dict[str, dict[str, str]] = {
    "stage1": {"links": "SELECT movie_id, imdb_id, tmdb_id FROM etl.links1 ORDER BY movie_id"},
    "stage2": {
        "ratings": "SELECT user_id, movie_id, rating, extract(epoch FROM rated_at)::bigint AS timestamp "
        "FROM etl.ratings2 ORDER BY user_id, movie_id",
        "links": "SELECT movie_id, imdb_id, tmdb_id FROM etl.links2 ORDER BY movie_id",
        "movies": "SELECT * FROM etl.movies2 ORDER BY movie_id",
    },
    "stage3": {  # the training bundle: no timestamps
        "ratings": "SELECT user_id, movie_id, rating FROM etl.ratings3 ORDER BY user_id, movie_id",
        "movies": "SELECT * FROM etl.movies3 ORDER BY movie_id",
        "movie_ids": "SELECT movie_id, ml_movie_id, tmdb_id, imdb_id FROM movrec.movie_ids ORDER BY movie_id",
        "user_ids": "SELECT user_id, ml_user_id FROM movrec.user_ids ORDER BY user_id",
    },
    "stage4": {
        "ratings": "SELECT user_id, movie_id, rating FROM etl.ratings4 ORDER BY user_id, movie_id",
        "movies": "SELECT * FROM etl.movies4 ORDER BY movie_id",
    },
}


def run_etl(
    conn: psycopg.Connection,
    min_movie: int,
    min_user: int,
    max_user: int,
    require_tmdb: bool | None,
    echo: Callable[[str], None],
    force: bool = False,
) -> int:
    """Each stage in its own transaction; publish is the atomic swap. Returns the run id."""
    run = one(conn.execute("SELECT nextval('movrec.etl_run_seq')"))[0]
    params = {
        "run": run,
        "require_tmdb": require_tmdb,
        "min_movie": min_movie,
        "min_user": min_user,
        "max_user": max_user,
        "force": force,
    }
    started = time.perf_counter()
    for n, (name, call) in enumerate(STAGES, start=1):
        t = time.perf_counter()
        with conn.transaction():
            conn.execute(call, params)
        echo(f"[{n}/{len(STAGES)}] {name}: {time.perf_counter() - t:.2f} s")
    echo(f"etl run {run}: {time.perf_counter() - started:.2f} s")
    return run


def last_report(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    return conn.execute(
        """SELECT etl_run, stage, output, rows_in, rows_out,
                  (SELECT string_agg(k || ' ' || v, ', ') FROM jsonb_each_text(removed) e(k, v) WHERE v <> '0'),
                  round(duration_ms::numeric, 1)
           FROM movrec.etl_runs WHERE etl_run = (SELECT max(etl_run) FROM movrec.etl_runs)
           ORDER BY stage, output"""
    ).fetchall()


def export_stages(conn: psycopg.Connection, directory: Path) -> list[Path]:
    written = []
    for stage, tables in BUNDLES.items():
        (directory / stage).mkdir(parents=True, exist_ok=True)
        for name, query in tables.items():
            path = directory / stage / f"{name}.csv"
            with (
                open(path, "wb") as fh,
                conn.cursor().copy(f"COPY ({query}) TO STDOUT WITH CSV HEADER") as copy,
            ):
                for block in copy:
                    fh.write(block)
            written.append(path)
    return written


def export_tokens(conn: psycopg.Connection, directory: Path) -> list[Path]:
    """FIELD.pt: int64 tensor (n_movies x length), rows in movie_ids.pt order; vocab.json."""
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    ids = [
        r[0] for r in conn.execute("SELECT DISTINCT movie_id FROM movrec.movie_tokens ORDER BY 1")
    ]
    torch.save(torch.tensor(ids, dtype=torch.int64), directory / "movie_ids.pt")
    written = [directory / "movie_ids.pt"]
    for (field,) in conn.execute(
        "SELECT DISTINCT field FROM movrec.movie_tokens ORDER BY 1"
    ).fetchall():
        rows = conn.execute(
            "SELECT token_ids FROM movrec.movie_tokens WHERE field = %s ORDER BY movie_id", (field,)
        ).fetchall()
        path = directory / f"{field}.pt"
        torch.save(torch.tensor([r[0] for r in rows], dtype=torch.int64), path)
        written.append(path)
    vocab: dict[str, dict[str, int]] = {}
    for field, token, token_id in conn.execute(
        "SELECT field, token, token_id FROM movrec.vocab ORDER BY 1, 3"
    ):
        vocab.setdefault(field, {"<pad>": 0, "<unk>": 1})[token] = token_id
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    return [*written, directory / "vocab.json"]
