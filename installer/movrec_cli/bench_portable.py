"""`movrec bench serving --portable DSN`: the portable install against the full one, same data.

The portable database gets the full database's movies, ratings and champion (the registry
row, deployed there by the CLI: the same checkpoint, so the same vectors).  Then, in one run:
recall@10 of the portable recommend() (exact and hnsw) against the full install's numpy
recommend() for sample users, and pgbench tps/p50/p99 of recommend(u, 10) on both, of
pgvector's unfiltered HNSW top-10 (the reference), and of a rating insert with and without
the triggers on both.
"""

from __future__ import annotations

import json
from typing import Any

import click
import numpy as np
import psycopg

from movrec_cli import inprocess
from movrec_cli.bench_serving import _row, pgbench
from movrec_cli.connection import one
from movrec_cli.errors import CliError
from movrec_cli.output import note

COPY_TABLES = (
    ("movrec.movies", "movie_id, title, year, genres"),
    ("movrec.watch_events", "user_id, movie_id, rating, rated_at"),
)
REGISTRY_COLUMNS = (
    "kind, dim, params, data_snapshot, metrics, global_mean, checkpoint, serving_movie_ids, "
    "serving_matrix, serving_ranking, default_embedding, default_bias, duration_s, validation_split, "
    "item_item"
)


def copy_data(full: psycopg.Connection, portable: psycopg.Connection) -> int:
    """Give the portable database the full one's movies, ratings and champion; returns the
    champion's model_id there.  Skips what is there already (same rating count, same model)."""
    n_full = one(full.execute("SELECT count(*) FROM movrec.watch_events"))[0]
    n_port = one(portable.execute("SELECT count(*) FROM movrec.watch_events"))[0]
    if n_full != n_port:
        note(f"copying {n_full:,} ratings into the portable database")
        with portable.transaction():
            portable.execute("TRUNCATE movrec.watch_events, movrec.movies CASCADE")
            # a bulk copy, as `movrec generate` loads: the triggers' work is redone below
            portable.execute("ALTER TABLE movrec.watch_events DISABLE TRIGGER USER")
            for table, cols in COPY_TABLES:
                with (
                    full.cursor().copy(f"COPY {table} ({cols}) TO STDOUT (FORMAT binary)") as out,
                    portable.cursor().copy(
                        f"COPY {table} ({cols}) FROM STDIN (FORMAT binary)"
                    ) as into,
                ):
                    for block in out:
                        into.write(block)
            portable.execute("ALTER TABLE movrec.watch_events ENABLE TRIGGER USER")
            portable.execute("SELECT movrec.cf_rebuild_stats()")
        portable.execute("VACUUM ANALYZE movrec.watch_events")
        portable.execute("ANALYZE movrec.movies")
    champ = one(
        full.execute(
            "SELECT model_id, trained_at FROM model.champion JOIN model.registry USING (model_id)"
        )
    )
    if champ[0] is None:
        raise CliError("the full database has no champion: train one first")
    have = portable.execute(
        "SELECT c.model_id FROM model.champion c JOIN model.registry r USING (model_id) "
        "WHERE r.trained_at = %s",
        (champ[1],),
    ).fetchone()
    if have:
        sync_user_vectors(full, portable, int(have[0]))
        return int(have[0])
    row = one(
        full.execute(
            f"SELECT {REGISTRY_COLUMNS}, trained_at FROM model.registry WHERE model_id = %s",
            (champ[0],),
        )
    )
    with portable.transaction():
        placeholders = ", ".join(["%s"] * len(row))
        model_id = one(
            portable.execute(
                f"INSERT INTO model.registry ({REGISTRY_COLUMNS}, trained_at) VALUES ({placeholders}) "
                "RETURNING model_id",
                [json.dumps(v) if isinstance(v, dict) else v for v in row],
            )
        )[0]
    note(f"deploying model {model_id} (the full database's champion {champ[0]}) in the CLI")
    inprocess.deploy(portable, int(model_id))
    sync_user_vectors(full, portable, int(model_id))
    return int(model_id)


def sync_user_vectors(
    full: psycopg.Connection, portable: psycopg.Connection, model_id: int
) -> None:
    """The full database's live user vectors (ratings since the deploy moved them) into the
    portable one, so that both rank for the same users."""
    cols = "user_id, embedding, bias"
    with portable.transaction():
        portable.execute(
            "CREATE TEMP TABLE bench_users (user_id integer, embedding vector(100), bias real) ON COMMIT DROP"
        )
        with (
            full.cursor().copy(f"COPY model.user_latent_attributes ({cols}) TO STDOUT") as out,
            portable.cursor().copy(f"COPY bench_users ({cols}) FROM STDIN") as into,
        ):
            for block in out:
                into.write(block)
        portable.execute(
            """INSERT INTO model.user_latent_attributes AS a (user_id, embedding, bias, model_id)
               SELECT user_id, embedding, bias, %s FROM bench_users
               ON CONFLICT (user_id) DO UPDATE SET embedding = excluded.embedding, bias = excluded.bias""",
            (model_id,),
        )


def _top10(conn: psycopg.Connection, users: list[int]) -> list[set[int]]:
    return [
        {r[0] for r in conn.execute("SELECT movie_id FROM movrec.recommend(%s, 10)", (u,))}
        for u in users
    ]


def recall(
    full: psycopg.Connection, portable: psycopg.Connection, users: list[int]
) -> dict[str, float]:
    """recall@10 of the portable recommend() against the full one's, per search mode."""
    want = _top10(full, users)
    out = {}
    for mode in ("exact", "hnsw"):
        portable.execute("UPDATE movrec.settings SET recommend_search = %s", (mode,))
        got = _top10(portable, users)
        hits = sum(len(w & g) for w, g in zip(want, got, strict=True))
        out[mode] = hits / max(1, sum(len(w) for w in want))
    return out


def _set_triggers(conn: psycopg.Connection, on: bool) -> None:
    conn.execute(f"ALTER TABLE movrec.watch_events {'ENABLE' if on else 'DISABLE'} TRIGGER USER")


def run(
    full_dsn: str, portable_dsn: str, seconds: int, clients: int, n_recall: int
) -> dict[str, Any]:
    """The comparison; prints a table and returns every run's figures."""
    with (
        psycopg.connect(full_dsn, autocommit=True) as full,
        psycopg.connect(portable_dsn, autocommit=True) as portable,
    ):
        copy_data(full, portable)
        n_users = int(one(full.execute("SELECT max(user_id) FROM movrec.watch_events"))[0])
        n_movies = int(one(full.execute("SELECT max(movie_id) FROM movrec.movies"))[0])
        rng = np.random.default_rng(7)
        users = sorted({int(u) for u in rng.integers(1, n_users + 1, n_recall)})
        mode_before = one(portable.execute("SELECT recommend_search FROM movrec.settings"))[0]
        results: dict[str, Any] = {
            "recall@10": recall(full, portable, users),
            "n_recall_users": len(users),
        }
        note(
            f"recall@10 against the full install's recommend(), {len(users)} users: "
            + ", ".join(f"{k} {v:.4f}" for k, v in results["recall@10"].items())
        )
        for conn in (full, portable):
            conn.execute("DROP TABLE IF EXISTS bench_plain_ratings")
            conn.execute("""CREATE TABLE bench_plain_ratings (LIKE movrec.watch_events
                            INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)""")
        v = {"n_users": n_users, "n_movies": n_movies}
        runs: list[tuple[str, str, str, str | None, bool]] = [
            ("full: recommend(user, 10)", full_dsn, "recommend.sql", None, True),
            ("portable exact: recommend(user, 10)", portable_dsn, "recommend.sql", "exact", True),
            ("portable hnsw: recommend(user, 10)", portable_dsn, "recommend.sql", "hnsw", True),
            ("pgvector HNSW top-10, unfiltered", portable_dsn, "hnsw_top10.sql", None, True),
            ("full: insert, no triggers", full_dsn, "rate_online.sql", None, False),
            ("full: insert, all triggers (sgd)", full_dsn, "rate_online.sql", None, True),
            ("portable: insert, no triggers", portable_dsn, "rate_online.sql", None, False),
            ("portable: insert, all triggers (sgd)", portable_dsn, "rate_online.sql", None, True),
        ]
        note(f"{'':<38} {'tps':>9} {'p50 ms':>8} {'p99 ms':>8} {'n':>8}   load avg before")
        try:
            for name, dsn, script, mode, triggers in runs:
                conn = full if dsn == full_dsn else portable
                _set_triggers(conn, triggers)
                if mode:
                    conn.execute("UPDATE movrec.settings SET recommend_search = %s", (mode,))
                r = pgbench(dsn, script, v, seconds, clients)
                results[name] = r
                note(_row(name, r))
        finally:
            for conn in (full, portable):
                _set_triggers(conn, True)
                conn.execute("DROP TABLE IF EXISTS bench_plain_ratings")
            portable.execute("UPDATE movrec.settings SET recommend_search = %s", (mode_before,))
    ref = results["pgvector HNSW top-10, unfiltered"]["tps"]
    for name in (
        "full: recommend(user, 10)",
        "portable exact: recommend(user, 10)",
        "portable hnsw: recommend(user, 10)",
    ):
        note(f"{name}: {results[name]['tps'] / ref:.2f} x pgvector's unfiltered HNSW top-10")
    for kind in ("full", "portable"):
        ratio = (
            results[f"{kind}: insert, all triggers (sgd)"]["tps"]
            / results[f"{kind}: insert, no triggers"]["tps"]
        )
        note(f"{kind}: insert with all triggers at {ratio:.2f} x the trigger-less insert")
    click.echo(json.dumps(results, indent=1))
    return results
