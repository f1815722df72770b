"""Loaders, quarantine, the four ETL stages, publish and export, on files tests/fixture_files.py writes."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from movrec_cli import loaders, pipeline, schema

from tests import fixture_files
from tests.conftest import connect, table_digest

# Written at import, in a temporary folder: the fixtures are generated, never committed.
FIXTURES = fixture_files.write(Path(tempfile.mkdtemp(prefix="movrec-fixtures-")))
atexit.register(shutil.rmtree, FIXTURES, True)
THRESHOLDS = {"min_movie": 2, "min_user": 3, "max_user": 5}


def fresh(new_database: Callable[[str], str], name: str) -> psycopg.Connection:
    conn = connect(new_database(name))
    schema.install(conn)
    return conn


def load_all(conn: psycopg.Connection) -> None:
    loaders.load_movielens(conn, FIXTURES / "ml-latest")
    loaders.load_tmdb(
        conn,
        FIXTURES / "tmdb" / "tmdb_5000_movies.csv",
        FIXTURES / "tmdb" / "tmdb_5000_credits.csv",
    )


def run_etl(conn: psycopg.Connection) -> int:
    return pipeline.run_etl(
        conn,
        THRESHOLDS["min_movie"],
        THRESHOLDS["min_user"],
        THRESHOLDS["max_user"],
        None,
        echo=lambda _m: None,
    )


def report(conn: psycopg.Connection, run: int) -> dict[str, tuple[int, int, dict[str, int]]]:
    rows = conn.execute(
        "SELECT output, rows_in, rows_out, removed FROM movrec.etl_runs WHERE etl_run = %s", (run,)
    ).fetchall()
    return {o: (i, n, {k: v for k, v in r.items() if v}) for o, i, n, r in rows}


@pytest.fixture(scope="module")
def loaded(new_database: Callable[[str], str]) -> psycopg.Connection:
    conn = fresh(new_database, "t_pipeline")
    load_all(conn)
    return conn


def test_loader_counts_and_quarantine(loaded: psycopg.Connection) -> None:
    counts = loaded.execute(
        """SELECT (SELECT count(*) FROM staging.ml_ratings), (SELECT count(*) FROM staging.ml_movies),
                  (SELECT count(*) FROM staging.ml_links), (SELECT count(*) FROM staging.ml_tags),
                  (SELECT count(*) FROM staging.tmdb_movies), (SELECT count(*) FROM staging.tmdb_credits)"""
    ).fetchone()
    assert counts == (31, 13, 14, 2, 10, 4)
    quarantined = loaded.execute(
        "SELECT file, line_no, column_name, reason FROM movrec.quarantine ORDER BY file, line_no"
    ).fetchall()
    assert [(f, n, c) for f, n, c, _ in quarantined] == [
        ("links.csv", 16, "movieId"),
        ("movies.csv", 15, "movieId"),
        ("ratings.csv", 33, "rating"),
        ("ratings.csv", 34, "rating"),
        ("ratings.csv", 35, None),
        ("tags.csv", 4, None),
        ("tmdb_5000_credits.csv", 6, "cast/crew"),
        ("tmdb_5000_movies.csv", 12, "genres"),
        ("tmdb_5000_movies.csv", 13, "popularity"),
    ]
    reasons = [r for *_, r in quarantined]
    assert "not an integer: 'abc'" in reasons[0]
    assert "not a number: 'abc'" in reasons[2] and "outside the 0.5..5 scale: 7.0" in reasons[3]
    assert reasons[4] == "expected 4 columns, got 2"
    assert "not valid UTF-8" in reasons[5]
    assert reasons[7].startswith("bad JSON")


def test_titles_are_cleaned_and_unicode_survives(loaded: psycopg.Connection) -> None:
    titles = dict(
        loaded.execute(
            "SELECT movie_id, title || ' ' || coalesce(year::text, '?') FROM staging.ml_movies"
        )
    )
    assert titles[2] == "The American President 1995"
    assert titles[3] == "Amélie (Fabuleux destin d'Amélie Poulain) 2001"
    assert titles[4] == "千と千尋の神隠し 2001"
    assert titles[7] == "Se7en 🔪 1995"
    assert titles[9] == "The Good, the Bad and the Ugly (Buono, il brutto, il cattivo, Il) 1966"
    genres = dict(loaded.execute("SELECT movie_id, genres FROM staging.ml_movies"))
    assert genres[13] == [] and genres[5] == ["Action", "Crime", "Thriller"]
    cast = dict(loaded.execute("SELECT tmdb_id, cast_names FROM staging.tmdb_credits"))
    assert cast[105] == ["Al Pacino", "Robert De Niro", "Val Kilmer"]


def test_reload_of_the_same_files_is_a_noop(loaded: psycopg.Connection) -> None:
    before = [
        table_digest(loaded, t) for t in ("staging.ml_ratings", "movrec.quarantine", "movrec.loads")
    ]
    assert loaders.load_movielens(loaded, FIXTURES / "ml-latest").skipped
    assert all(
        r.skipped
        for r in loaders.load_tmdb(
            loaded,
            FIXTURES / "tmdb" / "tmdb_5000_movies.csv",
            FIXTURES / "tmdb" / "tmdb_5000_credits.csv",
        )
    )
    assert [
        table_digest(loaded, t) for t in ("staging.ml_ratings", "movrec.quarantine", "movrec.loads")
    ] == before
    forced = loaders.load_movielens(loaded, FIXTURES / "ml-latest", force=True)
    assert not forced.skipped and forced.rows["ratings.csv"] == 31
    assert (
        loaded.execute("SELECT count(*) FROM movrec.quarantine").fetchone()[0] == 9
    )  # replaced, not doubled


def test_stage_by_stage_counts(loaded: psycopg.Connection) -> None:
    run = run_etl(loaded)
    r = report(loaded, run)
    assert r["etl.links1"] == (
        14,
        11,
        {"null_id": 1, "duplicate_movie_id": 1, "duplicate_tmdb_id": 1},
    )
    assert r["etl.ratings2"] == (
        31,
        26,
        {"duplicate_rating": 1, "unknown_movie": 1, "no_link": 2, "no_tmdb_metadata": 1},
    )
    assert r["etl.movies2"] == (13, 9, {"no_link": 2, "no_tmdb_metadata": 1, "no_ratings": 1})
    assert r["etl.ratings3"] == (26, 20, {"rare_movie": 3, "tiny_profile": 3})
    assert r["etl.movies3"] == (9, 6, {"rare_movie": 3})
    assert r["etl.ratings4"] == (20, 14, {"super_rater": 6})
    assert r["movrec.watch_events"][:2] == (14, 14)
    # published, with compact ids 1..N assigned in original-id order
    assert loaded.execute(
        "SELECT array_agg(movie_id ORDER BY movie_id) FROM movrec.movies"
    ).fetchone()[0] == [1, 2, 3, 4, 5, 6]
    assert loaded.execute(
        "SELECT array_agg(ml_user_id ORDER BY user_id) FROM movrec.user_ids"
    ).fetchone()[0] == [1, 2, 4, 5, 6]
    assert (
        loaded.execute("SELECT count(DISTINCT user_id) FROM movrec.watch_events").fetchone()[0] == 4
    )
    # the duplicate (1, 1): the later rating won
    assert (
        loaded.execute("""SELECT rating FROM movrec.watch_events w JOIN movrec.user_ids u USING (user_id)
                             WHERE u.ml_user_id = 1 AND w.movie_id = 1""").fetchone()[0]
        == 1.5
    )
    heat = loaded.execute(
        "SELECT title, tmdb_id, ml_movie_id, cast_names, countries FROM movrec.movies "
        "WHERE ml_movie_id = 5"
    ).fetchone()
    assert heat == (
        "Heat",
        105,
        5,
        ["Al Pacino", "Robert De Niro", "Val Kilmer"],
        ["United States of America"],
    )


def test_rerun_keeps_ids_and_live_ratings(loaded: psycopg.Connection) -> None:
    run_etl(loaded)
    loaded.execute("SELECT movrec.rate(1, 6, 4)")  # a live rating by compact user 1
    ids = loaded.execute("SELECT * FROM movrec.movie_ids ORDER BY 1").fetchall()
    run = run_etl(loaded)
    assert loaded.execute("SELECT * FROM movrec.movie_ids ORDER BY 1").fetchall() == ids
    assert loaded.execute(
        "SELECT rating, etl_run FROM movrec.watch_events WHERE user_id = 1 AND movie_id = 6"
    ).fetchone() == (4.0, None)
    assert report(loaded, run)["movrec.watch_events"][2] == {"live_ratings_kept": 1}


def test_rerun_is_atomic_for_readers(
    loaded: psycopg.Connection, new_database: Callable[[str], str]
) -> None:
    run_etl(loaded)
    before = table_digest(loaded, "movrec.watch_events")
    with connect(loaded.info.dsn) as other:
        # the swap happens inside a transaction: another session sees all-old until commit
        with loaded.transaction():
            loaded.execute("CALL movrec.etl_publish(NULL)")
            assert table_digest(other, "movrec.watch_events") == before
        assert table_digest(other, "movrec.watch_events")[0] == before[0]


def test_failed_publish_changes_nothing(loaded: psycopg.Connection) -> None:
    run_etl(loaded)
    before = [table_digest(loaded, t) for t in ("movrec.movies", "movrec.watch_events")]
    loaded.execute(
        "ALTER TABLE etl.movies4 RENAME COLUMN title TO title_gone"
    )  # breaks publish midway
    with pytest.raises(psycopg.errors.UndefinedColumn):
        loaded.execute("CALL movrec.etl_publish(NULL)")
    assert [table_digest(loaded, t) for t in ("movrec.movies", "movrec.watch_events")] == before
    run_etl(loaded)  # the stages rebuild their tables


def test_first_etl_archives_other_data_and_retires_the_model(
    new_database: Callable[[str], str],
) -> None:
    from movrec_cli.demo_data import load_demo

    conn = fresh(new_database, "t_pipeline_first")
    load_demo(conn, n_users=30)
    conn.execute("""SELECT movrec.train('mf', '{"epochs": 2}')""")
    demo_rows = conn.execute("SELECT count(*) FROM movrec.watch_events").fetchone()[0]
    load_all(conn)
    run = run_etl(conn)
    assert (
        conn.execute(
            "SELECT count(*) FROM movrec.watch_events_archive WHERE archived_by = %s", (run,)
        ).fetchone()[0]
        == demo_rows
    )
    assert conn.execute("SELECT count(*) FROM model.champion").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM model.user_latent_attributes").fetchone()[0] == 0
    assert {r[0] for r in conn.execute("SELECT source FROM recommend(1)")} == {"popular"}


def test_stages_run_alone_and_in_order(new_database: Callable[[str], str]) -> None:
    conn = fresh(new_database, "t_pipeline_order")
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="run stage 2 first"):
        conn.execute("CALL movrec.etl_prune_remap()")
    load_all(conn)
    run = conn.execute("CALL movrec.etl(NULL, 2, 3, 5)").fetchone()[0]
    assert report(conn, run)["etl.ratings4"][1] == 14


@pytest.mark.parametrize(
    ("layout", "ratings", "movies", "rejects"), [("ml-1m", 3, 2, 1), ("ml-100k", 3, 3, 1)]
)
def test_other_movielens_layouts(
    new_database: Callable[[str], str], layout: str, ratings: int, movies: int, rejects: int
) -> None:
    conn = fresh(new_database, f"t_layout_{layout.replace('-', '_')}")
    result = loaders.load_movielens(conn, FIXTURES / layout)
    assert result.layout == layout
    assert sum(result.rows.values()) == ratings + movies and len(result.rejects) == rejects
    titles = [r[0] for r in conn.execute("SELECT title FROM staging.ml_movies ORDER BY movie_id")]
    if layout == "ml-1m":
        assert titles == ["Amélie", "The City of Lost Children (Cité des enfants perdus, La)"]
        run = conn.execute("CALL movrec.etl(NULL, 1, 1)").fetchone()[
            0
        ]  # no links: TMDB not required
        assert report(conn, run)["etl.ratings4"][1] == 3
    else:
        assert titles[2] == "Café au lait"
        genres = conn.execute(
            "SELECT genres FROM staging.ml_movies WHERE movie_id = 302"
        ).fetchone()[0]
        assert genres == ["Crime", "Drama"]


def test_export_bundles(loaded: psycopg.Connection, tmp_path: Path) -> None:
    run_etl(loaded)
    written = pipeline.export_stages(loaded, tmp_path)
    assert {p.relative_to(tmp_path).as_posix() for p in written} >= {
        "stage1/links.csv",
        "stage2/ratings.csv",
        "stage3/ratings.csv",
        "stage4/movies.csv",
    }
    stage3 = (tmp_path / "stage3" / "ratings.csv").read_text().splitlines()
    assert (
        stage3[0] == "user_id,movie_id,rating" and len(stage3) == 21
    )  # no timestamps in the training bundle
    assert len((tmp_path / "stage4" / "ratings.csv").read_text().splitlines()) == 15


def test_etl_export_only_does_not_rerun(loaded: psycopg.Connection, tmp_path: Path) -> None:
    from click.testing import CliRunner
    from movrec_cli.main import cli

    run_etl(loaded)
    runs = table_digest(loaded, "movrec.etl_runs")
    dsn = loaded.info.dsn
    r = CliRunner().invoke(cli, ["etl", "--dsn", dsn, "--export", str(tmp_path), "--export-only"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "stage3" / "ratings.csv").exists()
    assert table_digest(loaded, "movrec.etl_runs") == runs  # nothing ran, nothing published
    r = CliRunner().invoke(cli, ["etl", "--dsn", dsn, "--export-only"])
    assert r.exit_code == 1 and "--export-only needs --export DIR" in r.output


def test_download_verifies_the_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib
    import zipfile

    from movrec_cli.download import download_movielens
    from movrec_cli.errors import CliError

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with zipfile.ZipFile(mirror / "ml-latest-small.zip", "w") as z:
        for f in (FIXTURES / "ml-latest").iterdir():
            z.write(f, f"ml-latest-small/{f.name}")
    digest = hashlib.md5((mirror / "ml-latest-small.zip").read_bytes()).hexdigest()
    (mirror / "ml-latest-small.zip.md5").write_text(f"{digest}  ml-latest-small.zip\n")
    monkeypatch.setenv("MOVREC_GROUPLENS_URL", mirror.as_uri())
    target = download_movielens("ml-latest-small", tmp_path / "out")
    assert (target / "ratings.csv").is_file()
    (mirror / "ml-latest-small.zip.md5").write_text("0" * 32)
    with pytest.raises(CliError, match="failed its checksum"):
        download_movielens("ml-latest-small", tmp_path / "out2")
