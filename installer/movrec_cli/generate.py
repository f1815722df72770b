"""`movrec generate`: a synthetic dataset at MovieLens-20M scale, loaded with binary COPY.

The taste model is plpython/movrec/demo/synth.py's (users' genre tastes, movie
quality, user bias, half-star rounding), scaled up: synthetic titles and genres for
any number of movies, power-law popularity, and candidate sampling instead of a
per-user sort over the whole catalogue, so 20M ratings take seconds of numpy.

By default it writes a separate database (movrec_20m) of the embedded cluster,
emptied (movrec uninstalled with its data) on each run, then trains and deploys a quick MF model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import psycopg
from movrec.demo.synth import GENRES, genre_matrix

from movrec_cli.connection import one

DATABASE = "movrec_20m"
# MovieLens 20M: 138,493 users, 26,744 movies, 20,000,263 ratings.
ML20M = (138_493, 26_744, 20_000_263)
# One fit with fixed options (budget_s 0: no search): scale figures are for one fit.
TRAIN_OPTIONS = '{"epochs": 3, "batch_size": 65536, "lr": 0.01, "budget_s": 0}'

PG_EPOCH_S = 946_684_800  # 2000-01-01 UTC, the zero of binary timestamptz
START_S = 1_262_304_000  # ratings start 2010-01-01 UTC
END_S = 1_577_836_800  # and end before 2020-01-01 UTC at any scale (the schema refuses the future)
USER_STEP_S = 1_800  # user u starts rating u half-hours after START_S, while that fits
RATING_STEP_S = 60  # a user's ratings a minute apart, while that fits
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
COPY_TRAILER = (-1).to_bytes(2, "big", signed=True)
ROW = np.dtype(
    [
        ("n", ">i2"),
        ("l1", ">i4"),
        ("user", ">i4"),
        ("l2", ">i4"),
        ("movie", ">i4"),
        ("l3", ">i4"),
        ("rating", ">f4"),
        ("l4", ">i4"),
        ("at", ">i8"),
    ]
)

WORDS = [
    "Night",
    "Day",
    "Return",
    "Last",
    "First",
    "Lost",
    "Secret",
    "City",
    "River",
    "Star",
    "Dark",
    "Light",
    "Blood",
    "Love",
    "War",
    "King",
    "Queen",
    "Ghost",
    "Dream",
    "Road",
    "Storm",
    "Fire",
    "Ice",
    "Shadow",
    "Silent",
    "Wild",
    "Iron",
    "Golden",
    "Broken",
    "Hidden",
    "Empire",
    "Garden",
    "Winter",
    "Summer",
    "Ocean",
    "Desert",
    "Machine",
    "Heart",
    "Stranger",
    "Mirror",
    "Island",
    "Journey",
    "Escape",
    "Promise",
    "Thunder",
]


@dataclass(frozen=True)
class Plan:
    n_users: int
    n_movies: int
    n_ratings: int
    seed: int


def synthetic_movies(
    n: int, rng: np.random.Generator
) -> tuple[list[str], np.ndarray, list[list[str]]]:
    """Titles, years and 1-3 genres (skewed toward Drama/Comedy, as MovieLens is)."""
    words = np.array(WORDS)
    w = rng.integers(0, len(words), (n, 3))
    n_words = rng.integers(1, 4, n)
    titles = [" ".join(words[w[i, : n_words[i]]]) + f" #{i + 1}" for i in range(n)]
    years = rng.integers(1920, 2016, n)
    weights = np.ones(len(GENRES))
    weights[GENRES.index("Drama")] = 6
    weights[GENRES.index("Comedy")] = 4
    weights[GENRES.index("Thriller")] = 2
    weights /= weights.sum()
    k = rng.choice([1, 2, 3], n, p=[0.4, 0.4, 0.2])
    genres = [
        sorted(rng.choice(len(GENRES), k[i], replace=False, p=weights).tolist()) for i in range(n)
    ]
    return titles, years, [[GENRES[g] for g in gs] for gs in genres]


def rating_seconds(
    users: np.ndarray, within: np.ndarray, n_users: int, max_per_user: int
) -> np.ndarray:
    """Unix seconds of each rating: user ``users`` (0-based), their ``within``-th rating.

    Every timestamp lies in [START_S, END_S), whatever the number of users: user u starts
    u * USER_STEP_S after START_S and rates every RATING_STEP_S while that fits, and both
    steps shrink to fit otherwise (the fixed 30 minutes per user ran past today, which the
    schema refuses, above about 300k users).  At up to ~175k users (ML-20M's 138,493)
    the timestamps are those of the fixed steps.  Per user they increase with ``within``.
    """
    window = END_S - START_S
    rating_step = max(1, min(RATING_STEP_S, window // (4 * max(1, max_per_user))))
    user_window = window - rating_step * max(1, max_per_user)
    user_step = min(float(USER_STEP_S), user_window / max(1, n_users))
    return (
        START_S
        + np.floor(np.asarray(users, dtype=np.float64) * user_step).astype(np.int64)
        + np.asarray(within, dtype=np.int64) * rating_step
    )


def rating_chunks(
    plan: Plan,
    genres: list[list[str]],
    block: int = 8192,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(users, movies, ratings, seconds) per block of users, sorted by user then time."""
    rng = np.random.default_rng(plan.seed)
    x = genre_matrix([tuple(g) for g in genres]).astype(np.float32)
    n_movies = plan.n_movies
    quality = rng.normal(0.0, 0.35, n_movies).astype(np.float32)
    # power-law popularity over a random order of the movies: p ~ (rank + 50)^-1.2
    rank = rng.permutation(n_movies)
    cdf = np.cumsum((rank + 50.0) ** -1.2)
    cdf /= cdf[-1]
    taste = rng.normal(0.0, 0.8, (plan.n_users, len(GENRES))).astype(np.float32)
    bias = rng.normal(0.0, 0.3, plan.n_users).astype(np.float32)
    mean = plan.n_ratings / plan.n_users
    counts = rng.lognormal(np.log(mean) - 0.5, 1.0, plan.n_users)
    counts = np.clip(counts * plan.n_ratings / counts.sum(), 20, n_movies // 3).astype(np.int64)
    for start in range(0, plan.n_users, block):
        stop = min(start + block, plan.n_users)
        want = counts[start:stop]
        # candidates: 3x what each user rates, drawn by popularity; keep the best by taste
        n_cand = 3 * want + 10
        users = np.repeat(np.arange(start, stop), n_cand)
        movies = np.searchsorted(cdf, rng.random(len(users)))
        movies = np.minimum(movies, n_movies - 1)
        key = users.astype(np.int64) * n_movies + movies
        key, first = np.unique(key, return_index=True)
        users, movies = users[first], movies[first]
        affinity = np.einsum("ij,ij->i", taste[users], x[movies])
        score = 0.7 * affinity + rng.gumbel(size=len(users)).astype(np.float32)
        order = np.lexsort((-score, users))
        users, movies, affinity = users[order], movies[order], affinity[order]
        group_start = np.searchsorted(users, np.arange(start, stop))
        within = np.arange(len(users)) - np.repeat(
            group_start, np.diff(np.append(group_start, len(users)))
        )
        keep = within < want[users - start]
        users, movies, affinity, within = users[keep], movies[keep], affinity[keep], within[keep]
        true = 3.5 + bias[users] + quality[movies] + affinity
        noisy = true + rng.normal(0.0, 0.35, len(users)).astype(np.float32)
        ratings = np.clip(np.round(noisy * 2) / 2, 0.5, 5.0).astype(np.float32)
        seconds = rating_seconds(users, within, plan.n_users, n_movies // 3)
        yield (users + 1).astype(np.int32), (movies + 1).astype(np.int32), ratings, seconds


def binary_rows(
    users: np.ndarray, movies: np.ndarray, ratings: np.ndarray, seconds: np.ndarray
) -> bytes:
    """A block of ratings as binary COPY tuples, encoded by numpy in one pass.

    Kept instead of psycopg's copy.set_types() + write_row(): on the same 1.05M generated
    ratings into an unlogged table, write_row loaded 124k rows/s and this 325k-429k rows/s
    (2.6-3.5x), a Python call per row against one array per block (20M rows: about 2.7 min
    against 50 s).
    """
    rows = np.empty(len(users), dtype=ROW)
    rows["n"] = 4
    rows["l1"] = rows["l2"] = rows["l3"] = 4
    rows["l4"] = 8
    rows["user"], rows["movie"], rows["rating"] = users, movies, ratings
    rows["at"] = (seconds - PG_EPOCH_S) * 1_000_000
    return rows.tobytes()


def load(conn: psycopg.Connection, plan: Plan, echo: Callable[[str], None]) -> dict[str, float]:
    """Movies and ratings into an installed, empty database; returns timings (s)."""
    timings: dict[str, float] = {}
    rng = np.random.default_rng(plan.seed + 1)
    t = time.perf_counter()
    titles, years, genres = synthetic_movies(plan.n_movies, rng)
    with (
        conn.transaction(),
        conn.cursor().copy("COPY movrec.movies (movie_id, title, year, genres) FROM STDIN") as copy,
    ):
        for i in range(plan.n_movies):
            copy.write_row((i + 1, titles[i], int(years[i]), genres[i]))
    timings["movies"] = time.perf_counter() - t
    echo(f"movies: {plan.n_movies:,} in {timings['movies']:.1f} s")

    t = time.perf_counter()
    gen_s = 0.0
    n = 0
    with conn.transaction():
        # Bulk load: no triggers (online update, CF statistics) and no FK checks (ids are
        # generated in range); the indexes are rebuilt once at the end.
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute("SET LOCAL maintenance_work_mem = '512MB'")
        conn.execute("ALTER TABLE movrec.watch_events DROP CONSTRAINT watch_events_pkey")
        conn.execute("DROP INDEX IF EXISTS movrec.watch_events_movie_id_idx")
        with conn.cursor().copy(
            "COPY movrec.watch_events (user_id, movie_id, rating, rated_at) FROM STDIN (FORMAT binary)"
        ) as copy:
            copy.write(COPY_HEADER)
            g = time.perf_counter()
            for chunk in rating_chunks(plan, genres):
                data = binary_rows(*chunk)
                gen_s += time.perf_counter() - g
                copy.write(data)
                n += len(chunk[0])
                g = time.perf_counter()
            copy.write(COPY_TRAILER)
        timings["ratings_generate"] = gen_s
        timings["ratings_copy"] = time.perf_counter() - t - gen_s
        echo(f"ratings: {n:,} generated in {gen_s:.1f} s, COPY {timings['ratings_copy']:.1f} s")
        t = time.perf_counter()
        conn.execute("ALTER TABLE movrec.watch_events ADD PRIMARY KEY (user_id, movie_id)")
        conn.execute("CREATE INDEX watch_events_movie_id_idx ON movrec.watch_events (movie_id)")
        timings["indexes"] = time.perf_counter() - t
        echo(f"indexes: {timings['indexes']:.1f} s")
    t = time.perf_counter()
    if one(conn.execute("SELECT to_regprocedure('movrec.cf_rebuild_stats()')"))[0]:
        conn.execute("SELECT movrec.cf_rebuild_stats()")  # the triggers were skipped
    conn.execute("VACUUM (ANALYZE) movrec.watch_events")
    conn.execute("ANALYZE movrec.movies")
    timings["analyze"] = time.perf_counter() - t
    timings["n_ratings"] = n
    echo(f"statistics and VACUUM ANALYZE: {timings['analyze']:.1f} s")
    return timings


def load_and_train(
    conn: psycopg.Connection, plan: Plan, train_options: str | None, echo: Callable[[str], None]
) -> dict[str, float]:
    """Load the plan's data into an installed movrec, then train and deploy MF with
    ``train_options`` (None: no training); returns the timings."""
    timings = load(conn, plan, echo)
    if train_options is not None:
        t = time.perf_counter()
        model_id = one(conn.execute("SELECT movrec.train('mf', %s)", (train_options,)))[0]
        timings["train_deploy"] = time.perf_counter() - t
        metrics = one(
            conn.execute("SELECT metrics FROM model.registry WHERE model_id = %s", (model_id,))
        )[0]
        echo(
            f"train + deploy mf (model {model_id}): {timings['train_deploy']:.1f} s; "
            f"val_rmse {metrics.get('val_rmse')}"
        )
    return timings
