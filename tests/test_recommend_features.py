"""recommend() filters and fallback chain, similar_movies(), explain(), the precomputed
recommendations and their queue, cold-start movies, the cache switching on deploy."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner
from movrec_cli import schema
from movrec_cli.commands.refresh import refresh
from movrec_cli.demo_data import load_demo

from tests.conftest import connect

NO_VECTOR_USER = 880001  # rated, but no vector (ratings bulk-loaded without the online trigger)
NEVER_RATED = 880002
NEW_MOVIE = 99001


@pytest.fixture(scope="module")
def dsn(new_database: Callable[[str], str]) -> str:
    dsn = new_database("t_recommend_features")
    with connect(dsn) as conn:
        schema.install(conn)
        load_demo(conn, n_users=200, seed=5)
        conn.execute("SELECT * FROM movrec.tokenize()")
        # all cores (the default) thrash on a shared CPU
        conn.execute("UPDATE movrec.settings SET train_threads = 4")
        conn.execute("""SELECT movrec.train('hybrid', '{"epochs": 5}')""")
    return dsn


@pytest.fixture
def db(dsn: str) -> Iterator[psycopg.Connection]:
    with connect(dsn) as conn:
        yield conn


def rows(conn: psycopg.Connection, sql: str, *args: object) -> list[tuple]:
    return conn.execute(sql, args).fetchall()


def seen(conn: psycopg.Connection, user: int) -> set[int]:
    return {
        r[0]
        for r in rows(conn, "SELECT movie_id FROM movrec.watch_events WHERE user_id = %s", user)
    }


# --- the fallback chain -----------------------------------------------------------------


def test_fallback_chain_model_cf_popular(db: psycopg.Connection) -> None:
    assert {r[4] for r in rows(db, "SELECT * FROM recommend(3, 10)")} == {"model"}
    assert {r[4] for r in rows(db, "SELECT * FROM recommend(%s, 5)", NEVER_RATED)} == {"popular"}
    # a user the model cannot serve, with Pearson CF rows: cf first, then the next sources
    db.execute("ALTER TABLE movrec.watch_events DISABLE TRIGGER movrec_online_update")
    db.execute(
        "INSERT INTO movrec.watch_events (user_id, movie_id, rating) VALUES (%s, 1, 4), (%s, 2, 2)",
        (NO_VECTOR_USER, NO_VECTOR_USER),
    )
    db.execute("ALTER TABLE movrec.watch_events ENABLE TRIGGER movrec_online_update")
    db.execute(
        """INSERT INTO model.user_recommendation (user_id, rank, movie_id, score)
           VALUES (%(u)s, 1, 30, 4.6), (%(u)s, 2, 1, 4.5), (%(u)s, 3, 31, 4.4), (%(u)s, 4, 32, 4.1)""",
        {"u": NO_VECTOR_USER},
    )
    got = rows(
        db, "SELECT movie_id, source, predicted_rating FROM recommend(%s, 6)", NO_VECTOR_USER
    )
    assert [(m, s) for m, s, _ in got[:3]] == [(30, "cf"), (31, "cf"), (32, "cf")]  # 1 was seen
    assert {s for _, s, _ in got[3:]} == {"model"}  # then the default vector (a rater)
    assert len(got) == 6 and not {m for m, _, _ in got} & {1, 2}
    # a never-rated user with CF rows: cf, then popular
    db.execute(
        "INSERT INTO model.user_recommendation (user_id, rank, movie_id, score) VALUES (%s, 1, 40, 4.2)",
        (NEVER_RATED,),
    )
    got = rows(db, "SELECT movie_id, source FROM recommend(%s, 4)", NEVER_RATED)
    assert got[0] == (40, "cf") and {s for _, s in got[1:]} == {"popular"} and len(got) == 4
    db.execute("DELETE FROM model.user_recommendation WHERE user_id = %s", (NEVER_RATED,))


def test_popular_uses_the_damped_mean_from_the_stats_table(db: psycopg.Connection) -> None:
    stats = dict(
        (m, (n, s))
        for m, n, s in rows(
            db, "SELECT movie_id, n_ratings, sum_ratings FROM model.movie_rating_stats"
        )
    )
    assert stats, "deploy fills model.movie_rating_stats"
    mu = sum(s for _, s in stats.values()) / sum(n for n, _ in stats.values())
    expect = sorted(stats, key=lambda m: (-(stats[m][1] + 10 * mu) / (stats[m][0] + 10), m))[:5]
    got = rows(db, "SELECT movie_id, score FROM recommend(%s, 5)", NEVER_RATED)
    assert [m for m, _ in got] == expect
    m0 = expect[0]
    assert got[0][1] == pytest.approx((stats[m0][1] + 10 * mu) / (stats[m0][0] + 10), rel=1e-5)


def test_recommend_is_read_only(db: psycopg.Connection) -> None:
    with db.transaction():
        db.execute("SET TRANSACTION READ ONLY")
        for user in (3, NO_VECTOR_USER, NEVER_RATED):
            rows(db, "SELECT * FROM recommend(%s, 10, genres => '{Drama}', min_year => 1990)", user)


# --- filters and exclusion ----------------------------------------------------------------


def test_filters_are_the_unfiltered_ranking_restricted(db: psycopg.Connection) -> None:
    meta = {
        m: (set(g), y) for m, g, y in rows(db, "SELECT movie_id, genres, year FROM movrec.movies")
    }
    full = [r[0] for r in rows(db, "SELECT * FROM recommend(7, 10000)")]
    assert full and not set(full) & seen(db, 7)
    for genres, lo, hi in [
        (["Comedy", "Horror"], None, None),
        (None, 1995, 2005),
        (["drama"], 2000, None),
    ]:
        got = rows(
            db,
            "SELECT movie_id, source FROM recommend(7, 8, genres => %s, min_year => %s, max_year => %s)",
            genres,
            lo,
            hi,
        )

        def ok(
            m: int, genres: list[str] | None = genres, lo: int | None = lo, hi: int | None = hi
        ) -> bool:
            g, y = meta[m]
            return (
                (genres is None or bool({x.lower() for x in g} & {x.lower() for x in genres}))
                and (lo is None or (y is not None and y >= lo))
                and (hi is None or (y is not None and y <= hi))
            )

        assert [m for m, _ in got] == [m for m in full if ok(m)][:8]
        assert got and {s for _, s in got} == {"model"}


def test_filters_apply_to_popular_too(db: psycopg.Connection) -> None:
    got = rows(
        db, "SELECT movie_id, source FROM recommend(%s, 5, '{Horror}', 1980, 1999)", NEVER_RATED
    )
    meta = dict(rows(db, "SELECT movie_id, year FROM movrec.movies WHERE 'Horror' = ANY(genres)"))
    assert got and all(s == "popular" and 1980 <= meta[m] <= 1999 for m, s in got)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("SELECT * FROM recommend(1, 5, '{Westernz}')", "unknown genre"),
        ("SELECT * FROM recommend(1, 5, '{}')", "non-empty array"),
        ("SELECT * FROM recommend(1, 5, ARRAY['Drama', NULL])", "non-empty array"),
        ("SELECT * FROM recommend(1, 5, NULL, 2010, 2000)", "after max_year"),
    ],
)
def test_bad_filters_give_a_clear_error(db: psycopg.Connection, call: str, message: str) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=message) as info:
        db.execute(call)
    assert "Traceback" not in str(info.value)


# --- similar_movies and explain --------------------------------------------------------------


def test_similar_movies_are_the_nearest_by_cosine(db: psycopg.Connection) -> None:
    got = rows(db, "SELECT movie_id, similarity FROM similar_movies(10, 5)")
    assert len(got) == 5 and 10 not in {m for m, _ in got}
    assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)
    vecs = {
        m: np.asarray(e, dtype=np.float64)
        for m, e in rows(
            db, "SELECT movie_id, embedding::real[] FROM model.movie_latent_attributes"
        )
    }
    q = vecs[10] / np.linalg.norm(vecs[10])
    cos = {m: float(v @ q / np.linalg.norm(v)) for m, v in vecs.items() if m != 10}
    best = sorted(cos, key=lambda m: -cos[m])[:5]
    assert len(set(best) & {m for m, _ in got}) >= 4  # HNSW is approximate
    assert got[0][1] == pytest.approx(cos[got[0][0]], abs=1e-4)
    with pytest.raises(psycopg.errors.NoDataFound, match="not known"):
        db.execute("SELECT * FROM similar_movies(424242)")


def test_explain_names_rated_movies_in_words(db: psycopg.Connection) -> None:
    movie = rows(db, "SELECT movie_id, title FROM recommend(7, 1)")[0]
    got = rows(db, "SELECT * FROM explain(7, %s)", movie[0])
    assert 1 <= len(got) <= 3
    ratings = dict(rows(db, "SELECT movie_id, rating FROM movrec.watch_events WHERE user_id = 7"))
    contributions = [r[4] for r in got]
    assert contributions == sorted(contributions, reverse=True) and min(contributions) > 0
    for rated_id, rated_title, rating, _similarity, _, reason in got:
        assert ratings[rated_id] == rating
        assert re.fullmatch(
            rf"You rated {re.escape(rated_title)} {rating:.1f} \(your average is about \d\.\d\); "
            rf"it is (close to|somewhat like|a little like) {re.escape(movie[1])} \(similarity -?\d\.\d\d\)",
            reason,
        ), reason


# --- model.model_recommendation and the queue ------------------------------------------------------


def test_refresh_writes_at_most_150_rows_atomically(dsn: str, db: psycopg.Connection) -> None:
    assert db.execute("SELECT movrec.refresh_recommendations(7)").fetchone()[0] > 0
    stored = rows(
        db, "SELECT rank, movie_id FROM model.model_recommendation WHERE user_id = 7 ORDER BY rank"
    )
    assert 0 < len(stored) <= 150 and [r for r, _ in stored] == list(range(1, len(stored) + 1))
    live = [r[0] for r in rows(db, "SELECT movie_id FROM recommend(7, 150)")]
    assert [m for _, m in stored] == live and not {m for _, m in stored} & seen(db, 7)
    before = rows(db, "SELECT computed_at FROM model.model_recommendation WHERE user_id = 7")
    with connect(dsn) as other, other.transaction():
        other.execute("SELECT movrec.refresh_recommendations(7)")
        # an uncommitted refresh is invisible: readers see the whole old list
        assert (
            rows(db, "SELECT computed_at FROM model.model_recommendation WHERE user_id = 7")
            == before
        )
    after = rows(db, "SELECT computed_at FROM model.model_recommendation WHERE user_id = 7")
    assert len(after) == len(before) and after != before


def test_batch_refresh_command(dsn: str, db: psycopg.Connection) -> None:
    result = CliRunner().invoke(refresh, ["--dsn", dsn, "--batch-size", "64"])
    assert result.exit_code == 0, result.output
    n_users = db.execute("SELECT count(DISTINCT user_id) FROM movrec.watch_events").fetchone()[0]
    per_user = rows(
        db, "SELECT user_id, count(*), max(rank) FROM model.model_recommendation GROUP BY user_id"
    )
    assert len(per_user) == n_users and all(0 < n == top <= 150 for _, n, top in per_user)
    assert f"{n_users} users" in result.output


def test_a_rating_queues_the_user_and_the_drain_refreshes(db: psycopg.Connection) -> None:
    db.execute("SELECT movrec.refresh_recommendations(5)")
    top = db.execute(
        "SELECT movie_id FROM model.model_recommendation WHERE user_id = 5 AND rank = 1"
    ).fetchone()[0]
    db.execute("DELETE FROM model.refresh_queue")
    db.execute("SELECT * FROM rate(5, %s, 0.5)", (top,))
    assert rows(db, "SELECT user_id FROM model.refresh_queue") == [(5,)]
    # the rating's transaction did not touch the stored list
    assert (
        db.execute(
            "SELECT count(*) FROM model.model_recommendation WHERE user_id = 5 AND movie_id = %s",
            (top,),
        ).fetchone()[0]
        == 1
    )
    assert db.execute("SELECT movrec.serving_drain(10)").fetchone()[0] == 1
    assert rows(db, "SELECT user_id FROM model.refresh_queue") == []
    assert (
        db.execute(
            "SELECT count(*) FROM model.model_recommendation WHERE user_id = 5 AND movie_id = %s",
            (top,),
        ).fetchone()[0]
        == 0
    )


def test_a_rating_during_a_drain_is_not_lost(dsn: str, db: psycopg.Connection) -> None:
    movies = [r[0] for r in rows(db, "SELECT movie_id FROM recommend(6, 2)")]
    db.execute("DELETE FROM model.refresh_queue")
    db.execute("SELECT * FROM rate(6, %s, 4)", (movies[0],))
    with connect(dsn) as drainer:
        drainer.execute("BEGIN")
        assert drainer.execute("SELECT movrec.serving_drain(10)").fetchone()[0] == 1
        # the drain's transaction is open: a rating by the same user now waits for it, then queues again
        done = threading.Event()

        def rate() -> None:
            with connect(dsn) as rater:
                rater.execute("SELECT * FROM rate(6, %s, 3.5)", (movies[1],))
            done.set()

        t = threading.Thread(target=rate)
        t.start()
        assert not done.wait(0.5)
        drainer.execute("COMMIT")
        t.join(10)
    assert done.is_set()
    assert rows(db, "SELECT user_id FROM model.refresh_queue") == [(6,)]
    db.execute("SELECT movrec.serving_drain(10)")
    assert rows(db, "SELECT user_id FROM model.refresh_queue") == []


# --- cold start and the champion cache ---------------------------------------------------------


def test_new_movie_gets_a_vector_and_is_recommended(db: psycopg.Connection) -> None:
    db.execute(
        """INSERT INTO movrec.movies (movie_id, title, year, genres)
           SELECT %s, 'The Return of ' || title, year, genres FROM movrec.movies WHERE movie_id = 10""",
        (NEW_MOVIE,),
    )
    rec = [r[0] for r in rows(db, "SELECT movie_id FROM recommend(7, 10000)")]
    assert NEW_MOVIE not in rec  # no vector yet (nothing ran on the insert path)
    assert db.execute("SELECT movrec.embed_new_movies()").fetchone()[0] == 1
    assert db.execute("SELECT movrec.embed_new_movies()").fetchone()[0] == 0  # idempotent
    users = [
        r[0]
        for r in rows(db, "SELECT DISTINCT user_id FROM movrec.watch_events ORDER BY 1 LIMIT 40")
    ]
    hits = [
        u
        for u in users
        if (NEW_MOVIE, "model") in rows(db, "SELECT movie_id, source FROM recommend(%s, 10000)", u)
    ]
    assert hits, "the new movie is recommended to someone, by the model, in the same backend"
    predicted = db.execute("SELECT predict(%s, %s)", (hits[0], NEW_MOVIE)).fetchone()[0]
    assert predicted >= 3.0
    assert NEW_MOVIE in {
        m for m, _ in rows(db, "SELECT movie_id, similarity FROM similar_movies(10, 500)")
    }


def test_cache_follows_deploys(db: psycopg.Connection) -> None:
    hybrid = db.execute("SELECT model_id FROM model.champion").fetchone()[0]
    before = rows(db, "SELECT movie_id FROM recommend(4, 10)")
    mf = db.execute("""SELECT movrec.train('mf', '{"epochs": 5}', deploy => false)""").fetchone()[0]
    db.execute("SELECT movrec.deploy(%s)", (mf,))
    with_mf = rows(db, "SELECT movie_id, source FROM recommend(4, 10000)")
    assert [m for m, _ in with_mf[:10]] != [m for (m,) in before]
    # an MF champion has no content network: the new movie cannot be scored by it
    assert db.execute("SELECT movrec.embed_new_movies()").fetchone()[0] == 0
    assert (NEW_MOVIE, "model") not in with_mf
    db.execute("SELECT movrec.deploy(%s)", (hybrid,))
    assert rows(db, "SELECT movie_id FROM recommend(4, 10)") == before
    # the hybrid champion's embedded movie is back for every path
    assert db.execute("SELECT count(*) FROM similar_movies(%s, 3)", (NEW_MOVIE,)).fetchone()[0] == 3


# --- the pure numpy parts (no database) --------------------------------------------------------


def test_catalogue_mask_any_genre_and_inclusive_years() -> None:
    from movrec.serving import Catalogue

    genres = [["Drama"], ["Comedy", "Drama"], ["Horror"], [], [f"G{i}" for i in range(70)]]
    cat = Catalogue.build(5, [1, 2, 3, 4, 5], [1990, 2000, None, 2010, 1995], genres)
    assert cat.genre_bits.shape == (5, 2)  # 73 genres: two 64-bit words
    assert cat.mask(["drama", "HORROR"], None, None).tolist() == [True, True, True, False, False]
    assert cat.mask(["G69"], None, None).tolist() == [False, False, False, False, True]
    assert cat.mask(None, 1990, 2000).tolist() == [True, True, False, False, True]
    assert cat.mask(None, None, 2010).tolist() == [True, True, False, True, True]  # NULL year fails
    assert cat.allowed(np.array([2, 3, 99]), cat.mask(["Drama"], None, None)).tolist() == [
        True,
        False,
        False,
    ]


def test_extra_movies_merge_into_the_champion_sorted() -> None:
    from movrec.scoring import MovieSide
    from movrec.serving import with_extra

    base = MovieSide(
        1,
        np.array([1, 5], dtype=np.int32),
        np.eye(2, dtype=np.float32),
        np.zeros(2, dtype=np.float32),
        3.5,
        np.zeros(2, dtype=np.float32),
        0.0,
        np.ones((2, 3), dtype=np.float32),
    )
    side = with_extra(
        base,
        np.array([3, 5]),
        np.array([[0.5, 0.5], [9, 9]], dtype=np.float32),
        np.array([0.1, 9], dtype=np.float32),
        np.full((2, 3), 2.0, dtype=np.float32),
    )
    assert side.movie_ids.tolist() == [1, 3, 5]  # 5 is trained already: its row is kept
    assert side.vectors[1].tolist() == [0.5, 0.5] and side.vectors[2].tolist() == [0.0, 1.0]
    assert side.positions([3]).tolist() == [1] and side.ranking is not None
    assert side.ranking[1].tolist() == [2.0, 2.0, 2.0]


def test_popularity_is_a_damped_mean() -> None:
    from movrec.serving import Popularity

    pop = Popularity.build("v", [1, 2, 3], [1, 100, 1000], [5.0, 450.0, 3000.0])
    mu = 3455.0 / 1101
    assert pop.score[:2].tolist() == pytest.approx([(5 + 10 * mu) / 11, (450 + 10 * mu) / 110])
    assert pop.score[1] > pop.score[0]  # a hundred 4.5s beat one lucky 5


def test_explain_words_negative_similarity_as_unlike() -> None:
    from movrec.serving.explain import closeness, explain_rows

    assert [closeness(s) for s in (0.9, 0.3, 0.1)] == ["close to", "somewhat like", "a little like"]
    assert closeness(-0.3) == "unlike" and closeness(-0.1) == "a little unlike"
    # a disliked movie unlike the candidate supports it: its reason must not say "like"
    got = explain_rows(np.array([[-1.0, 0.3]]), np.array([1.0, 0.0]), np.array([1.0]), 3.0, 1)
    assert got and got[0][1] < 0 and "like" not in closeness(got[0][1]).replace("unlike", "")


def test_explain_rule() -> None:
    from movrec.serving import explain_rows

    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    got = explain_rows(vectors, np.array([1.0, 0.0]), np.array([5.0, 5.0, 1.0]), 3.0, 3)
    # row 0: similar and liked; row 1: liked but orthogonal (0); row 2: similar but disliked (< 0)
    assert [i for i, _, _ in got] == [0] and got[0][1] == pytest.approx(1.0)
    assert got[0][2] == pytest.approx(2.0)
