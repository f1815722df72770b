"""Faults: damaged shared serving files, a deploy racing ratings, damaged serving blobs, NULL
genres.  Each asserts no backend dies, no answer is wrong and nothing stored is lost."""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time
from pathlib import Path

import psycopg
import pytest
from movrec.serving import caches

from tests.conftest import connect, stop_keepers

USERS = (5, 9, 11)


def answers(conn: psycopg.Connection, users: tuple[int, ...] = USERS) -> dict[int, list]:
    """recommend() per user, the movie ids and their predicted ratings rounded."""
    return {
        u: [
            (m, round(p, 4))
            for m, p in conn.execute(
                "SELECT movie_id, predicted_rating FROM recommend(%s, 10)", (u,)
            ).fetchall()
        ]
        for u in users
    }


def champion(conn: psycopg.Connection) -> int:
    return conn.execute(
        "SELECT model_id FROM model.deployments ORDER BY deployment_id DESC LIMIT 1"
    ).fetchone()[0]


# --- shared serving files --------------------------------------------------------------


def shared_files(conn: psycopg.Connection) -> list[Path]:
    """This database's files in the server user's shared directory (none of other clusters')."""
    name = conn.execute(caches.DATABASE_SQL).fetchone()[0]
    return sorted(Path("/dev/shm").glob(f"movrec-*/movrec-{name}-*"))


def memfds(conn: psycopg.Connection) -> frozenset[int]:
    """The inodes of the movrec memfds the session's backend holds (one per shared copy)."""
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(fd).startswith("/memfd:movrec-"):
                found.add(fd.stat().st_ino)
    assert found, f"backend {pid} holds no shared copy"
    return frozenset(found)


def truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(0)


def overwrite(path: Path) -> None:
    """The same size, other bytes, in place (what a stray writer or a bad disk does)."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.write(b"\x00\x00\xa0\x40" * (size // 4) + b"\x00" * (size % 4))  # 5.0 as float32


@pytest.mark.parametrize("damage", [truncate, overwrite])
def test_damaged_shared_files_never_crash_or_mislead(trained: str, damage: object) -> None:
    with connect(trained) as c:
        started = c.execute("SELECT pg_postmaster_start_time()").fetchone()[0]
        want = answers(c)
    sessions = [connect(trained) for _ in range(3)]
    try:
        for s in sessions:
            assert answers(s) == want  # every backend now serves the shared copy
        assert len({memfds(s) for s in sessions}) == 1, "the backends hold different copies"
        with connect(trained) as c:
            files = shared_files(c)
        assert files, "the backends shared no file: the test would not test anything"
        for path in files:
            damage(path)  # type: ignore[operator]
        for s in sessions:  # the same backends, still connected, still right
            assert answers(s) == want
        with connect(trained) as fresh:
            assert answers(fresh) == want
        # with no backend left to copy from, a new one must not trust the damaged files either
        for s in sessions:
            s.close()
        with connect(trained) as c:
            gone = time.monotonic() + 10
            while (
                time.monotonic() < gone
                and c.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                ).fetchone()[0]
                > 1
            ):
                time.sleep(0.05)
            files = shared_files(c)
        stop_keepers(files)
        for path in files:
            damage(path)  # type: ignore[operator]
        with connect(trained) as fresh:
            assert answers(fresh) == want
            assert fresh.execute("SELECT pg_postmaster_start_time()").fetchone()[0] == started
    finally:
        for s in sessions:
            s.close()


# --- a deploy racing ratings -----------------------------------------------------------


def vectors(conn: psycopg.Connection, users: tuple[int, ...]) -> dict[int, tuple[str, int]]:
    return dict(
        (u, (e, m))
        for u, e, m in conn.execute(
            "SELECT user_id, embedding::text, model_id FROM model.user_latent_attributes"
            " WHERE user_id = ANY(%s)",
            (list(users),),
        ).fetchall()
    )


def test_a_rating_racing_a_deploy_keeps_the_deployed_vector(trained: str) -> None:
    with connect(trained) as c:
        old = champion(c)
        new = c.execute(
            """SELECT movrec.train('mf', '{"epochs": 3, "seed": 3}', false)"""
        ).fetchone()[0]
        c.execute("SELECT movrec.deploy(%s)", (new,))
        published = vectors(c, USERS)  # what deploying `new` publishes (from its checkpoint)
        c.execute("SELECT movrec.deploy(%s)", (old,))
        movie = {
            u: c.execute(
                "SELECT movie_id FROM model.movie_latent_attributes x WHERE NOT EXISTS"
                " (SELECT FROM movrec.watch_events w WHERE w.user_id = %s AND w.movie_id = x.movie_id)"
                " ORDER BY movie_id LIMIT 1",
                (u,),
            ).fetchone()[0]
            for u in USERS
        }
    errors: list[BaseException] = []

    def rate(u: int) -> None:
        try:
            with connect(trained) as r:
                r.execute("SELECT movrec.rate(%s, %s, 4.5)", (u, movie[u]))
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    with connect(trained) as deployer, connect(trained) as watch:
        deployer.execute("BEGIN")
        deployer.execute("SELECT movrec.deploy(%s)", (new,))  # held open: every user row locked
        threads = [threading.Thread(target=rate, args=(u,)) for u in USERS]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while watch.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query LIKE '%%movrec.rate%%'"
        ).fetchone()[0] < len(USERS):
            assert time.monotonic() < deadline, "the ratings never waited for the deploy"
            assert not errors, errors
            time.sleep(0.05)
        deployer.execute("COMMIT")
        for t in threads:
            t.join(60)
        assert not errors, errors
        after = vectors(watch, USERS)
        for u in USERS:
            assert after[u][1] == new, f"user {u}'s vector is labelled with model {after[u][1]}"
            archived = watch.execute(
                "SELECT b.embedding::text, b.model_id FROM model.user_latent_attributes_backups b"
                " JOIN model.user_latent_attributes a USING (user_id)"
                " WHERE b.user_id = %s AND b.update_seq = a.n_updates",
                (u,),
            ).fetchone()
            assert archived == published[u]  # the step started from the deployed vector
            assert after[u][0] != published[u][0]  # and moved it


# --- deploy verifies the serving blobs it publishes -------------------------------------

DAMAGE = {
    "short": "substring(serving_matrix FROM 1 FOR length(serving_matrix) - 4)",
    "zeros": "decode(repeat('00', length(serving_matrix)), 'hex')",
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_deploy_rebuilds_damaged_serving_blobs(trained: str, damage: str) -> None:
    with connect(trained) as c:
        model = champion(c)
        c.execute("SELECT movrec.deploy(%s)", (model,))  # a deploy resets what ratings moved
        want = answers(c)
        digest = "SELECT md5(serving_matrix) FROM model.registry WHERE model_id = %s"
        good = c.execute(digest, (model,)).fetchone()[0]
        c.execute(
            f"UPDATE model.registry SET serving_matrix = {DAMAGE[damage]} WHERE model_id = %s",
            (model,),
        )
        warnings: list[str] = []
        c.add_notice_handler(lambda d: warnings.append(f"{d.severity}: {d.message_primary}"))
        c.execute("SELECT movrec.deploy(%s)", (model,))
        assert any(w.startswith("WARNING") and "serving_matrix" in w for w in warnings), warnings
        assert c.execute(digest, (model,)).fetchone()[0] == good
    with connect(trained) as fresh:
        assert answers(fresh) == want


def test_a_checkpoint_that_cannot_serve_is_refused_and_the_champion_stays(trained: str) -> None:
    import torch

    with connect(trained) as c:
        old = champion(c)
        want = answers(c)
        model = c.execute(
            """SELECT movrec.train('mf', '{"epochs": 2, "seed": 4}', false)"""
        ).fetchone()[0]
        blob = c.execute(
            "SELECT checkpoint FROM model.registry WHERE model_id = %s", (model,)
        ).fetchone()[0]
        saved = torch.load(io.BytesIO(blob), weights_only=True)
        for tensor in saved["state"].values():
            if tensor.is_floating_point() and tensor.dim() == 2:
                tensor[0, 0] = float("nan")
        buf = io.BytesIO()
        torch.save(saved, buf)
        c.execute(
            "UPDATE model.registry SET checkpoint = %s WHERE model_id = %s",
            (buf.getvalue(), model),
        )
        deployments = c.execute("SELECT count(*) FROM model.deployments").fetchone()[0]
        with pytest.raises(psycopg.errors.DataCorrupted, match=f"model {model} cannot serve"):
            c.execute("SELECT movrec.deploy(%s)", (model,))
        assert champion(c) == old
        assert c.execute("SELECT count(*) FROM model.deployments").fetchone()[0] == deployments
    with connect(trained) as fresh:
        assert answers(fresh) == want


# --- NULL genre elements -----------------------------------------------------------------


def test_a_null_genre_element_breaks_no_filter(trained: str) -> None:
    with connect(trained) as c:
        top = c.execute("SELECT max(movie_id) FROM movrec.movies").fetchone()[0]
        c.execute(
            "INSERT INTO movrec.movies (movie_id, title, genres) VALUES"
            " (%s, 'Null Genre', '{NULL}'), (%s, 'Null And Drama', '{NULL,Drama}')",
            (top + 1, top + 2),
        )
    with connect(trained) as fresh:
        rows = fresh.execute(
            "SELECT r.movie_id, m.genres FROM recommend(5, 10, genres => '{Drama}') r"
            " JOIN movrec.movies m USING (movie_id)"
        ).fetchall()
        assert rows and all("Drama" in genres for _, genres in rows)


def test_catalogue_skips_null_genre_elements() -> None:
    cat = caches.Catalogue.build(3, [1, 2, 3], [2000, None, 1999], [[None], [None, "Drama"], None])
    assert cat.genre_names == ["Drama"]
    assert cat.mask(["drama"], None, None).tolist() == [False, True, False]
