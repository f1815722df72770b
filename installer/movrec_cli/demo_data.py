"""Load the project's demo data (hand-typed catalogue, synthetic ratings) with COPY."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
from movrec.demo import synth

EPOCH = datetime(2020, 1, 1, tzinfo=UTC)


def load_demo(conn: psycopg.Connection, n_users: int = 600, seed: int = 42) -> tuple[int, int]:
    """Idempotent: movies are upserted, ratings of existing (user, movie) pairs kept.

    Bulk ratings skip the online-update trigger (a model trained afterwards
    learns them); rows that already exist are left as they are.
    """
    movies = synth.load_catalog()
    data = synth.generate(movies, n_users=n_users, seed=seed)
    with conn.transaction():
        conn.execute(
            "CREATE TEMP TABLE demo_movies (LIKE movrec.movies INCLUDING DEFAULTS) ON COMMIT DROP"
        )
        with conn.cursor().copy(
            "COPY demo_movies (movie_id, title, year, genres) FROM STDIN"
        ) as copy:
            for m in movies:
                copy.write_row((m.movie_id, m.title, m.year, list(m.genres)))
        conn.execute("""INSERT INTO movrec.movies (movie_id, title, year, genres)
                        SELECT movie_id, title, year, genres FROM demo_movies
                        ON CONFLICT (movie_id) DO UPDATE
                        SET title = excluded.title, year = excluded.year, genres = excluded.genres""")
        conn.execute("CREATE TEMP TABLE demo_ratings (LIKE movrec.watch_events) ON COMMIT DROP")
        with conn.cursor().copy(
            "COPY demo_ratings (user_id, movie_id, rating, rated_at) FROM STDIN"
        ) as copy:
            for u, m, r, s in zip(
                data.users.tolist(),
                data.movies.tolist(),
                data.ratings.tolist(),
                data.seconds.tolist(),
                strict=True,
            ):
                copy.write_row((u, m, r, EPOCH + timedelta(seconds=s)))
        conn.execute("ALTER TABLE movrec.watch_events DISABLE TRIGGER movrec_online_update")
        inserted = conn.execute("""INSERT INTO movrec.watch_events SELECT * FROM demo_ratings
                                   ON CONFLICT (user_id, movie_id) DO NOTHING""").rowcount
        conn.execute("ALTER TABLE movrec.watch_events ENABLE TRIGGER movrec_online_update")
    return len(movies), inserted
