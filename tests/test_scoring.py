"""Pure numpy scoring and the demo generator: no database needed."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from movrec import shared
from movrec.demo import synth
from movrec.scoring import BoundIndex, MovieSide, sgd_step, top_k


def test_top_k_orders_and_excludes() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.3])
    assert top_k(scores, 3).tolist() == [1, 3, 2]
    assert top_k(scores, 3, exclude=np.array([1])).tolist() == [3, 2, 4]
    assert top_k(scores, 10, exclude=np.array([0, 1, 2, 3])).tolist() == [4]


def test_top_k_agrees_with_a_full_sort_on_large_inputs() -> None:
    """The sampled cut-off (large n, small k) and the full partition give the full sort's answer."""
    rng = np.random.default_rng(3)
    for n, k, n_ex in [
        (30_000, 10, 0),
        (30_000, 10, 500),
        (30_000, 150, 29_900),
        (5_000, 7, 4_990),
    ]:
        scores = rng.integers(0, 2_000, n).astype(np.float32)  # many ties
        exclude = rng.choice(n, n_ex, replace=False)
        s = scores.astype(np.float64)
        s[exclude] = -np.inf
        want = [i for i in np.lexsort((np.arange(n), -s)) if np.isfinite(s[i])][:k]
        assert top_k(scores, k, exclude=exclude).tolist() == want
    assert top_k(np.zeros(100, np.float32), 5).tolist() == [0, 1, 2, 3, 4]


def test_movie_side_positions_mark_unknown_movies() -> None:
    side = MovieSide.from_blobs(
        1,
        np.array([2, 5, 9], np.int32).tobytes(),
        np.ones((3, 4), np.float32).tobytes(),
        3.5,
        [0.0] * 3,
        0.0,
    )
    assert side.dim == 3
    assert side.positions([5, 2, 7, 10, 1]).tolist() == [1, 0, -1, -1, -1]


def test_sgd_step_moves_prediction_toward_the_rating_without_overshoot() -> None:
    rng = np.random.default_rng(0)
    for scale in (0.01, 1.0, 10.0):  # small and huge movie vectors alike
        u, m = (
            rng.normal(0, 0.1, 100).astype(np.float32),
            rng.normal(0, scale, 100).astype(np.float32),
        )
        for rating in (0.5, 5.0):
            before = 3.5 + float(u @ m)
            new_u, new_b = sgd_step(u, 0.0, m, 0.0, 3.5, rating, lr=0.05, reg=0.0)
            after = 3.5 + new_b + float(new_u @ m)
            assert abs(after - rating) < abs(before - rating)
            assert np.sign(rating - after) == np.sign(rating - before)  # did not pass it


def test_generator_is_deterministic_and_valid() -> None:
    movies = synth.load_catalog()
    assert len(movies) == 200 and len({m.movie_id for m in movies}) == 200
    a, b = synth.generate(movies, n_users=50, seed=3), synth.generate(movies, n_users=50, seed=3)
    assert np.array_equal(a.ratings, b.ratings) and np.array_equal(a.movies, b.movies)
    assert not np.array_equal(a.ratings, synth.generate(movies, n_users=50, seed=4).ratings)
    assert set(np.unique(a.ratings * 2)) <= set(range(1, 11))
    pairs = set(zip(a.users.tolist(), a.movies.tolist(), strict=True))
    assert len(pairs) == len(a)  # one rating per user and movie


def test_shared_arrays_build_once_and_replace_older_champions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared, "SHM_ROOT", tmp_path)
    monkeypatch.setattr(shared, "KEEP_S", 0.0)  # older names go at once (normally after 10 min)
    calls = []

    def build(value: float) -> dict[str, np.ndarray]:
        calls.append(value)
        return {"ids": np.arange(3, dtype=np.int32), "m": np.full((3, 2), value, np.float32)}

    first = shared.shared_arrays("db-1-a", ("ids", "m"), lambda: build(1.0), group="db")
    again = shared.shared_arrays("db-1-a", ("ids", "m"), lambda: build(9.0), group="db")
    assert calls == [1.0] and shared.shares(again["m"]) and not again["m"].flags.writeable
    assert again["m"].tolist() == first["m"].tolist() == [[1.0, 1.0]] * 3
    other_db = shared.shared_arrays("dbx-1-a", ("ids", "m"), lambda: build(3.0), group="dbx")
    newer = shared.shared_arrays("db-2-b", ("ids", "m"), lambda: build(2.0), group="db")
    assert newer["m"][0, 0] == 2.0 and other_db["m"][0, 0] == 3.0
    private = tmp_path / f"movrec-{os.getuid()}"
    assert private.stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in private.glob("*.bin")) == [
        "movrec-db-2-b.bin",
        "movrec-dbx-1-a.bin",
    ]
    assert first["m"][0, 0] == 1.0  # a backend still holding the removed copy keeps it


def test_shared_arrays_refuse_a_directory_others_can_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/dev/shm is world-writable: a directory another user could plant files in is never
    mapped from; the backend builds private arrays instead."""
    monkeypatch.setattr(shared, "SHM_ROOT", tmp_path)
    planted = tmp_path / f"movrec-{os.getuid()}"
    planted.mkdir(mode=0o777)
    planted.chmod(0o777)
    np.save(planted / "movrec-db-1-a-m.npy", np.full((3, 2), 666.0, np.float32))
    np.save(planted / "movrec-db-1-a-ids.npy", np.arange(3, dtype=np.int32))
    got = shared.shared_arrays(
        "db-1-a",
        ("ids", "m"),
        lambda: {"ids": np.arange(3, dtype=np.int32), "m": np.ones((3, 2), np.float32)},
        group="db",
    )
    assert shared.private_dir() is None
    assert got["m"].tolist() == [[1.0, 1.0]] * 3 and not shared.shares(got["m"])


def _trained_like(n: int, d: int, rank: int, seed: int) -> np.ndarray:
    """[vectors | prior]: most variance in ``rank`` directions, as trained vectors have."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, rank)) @ rng.normal(size=(rank, d)) * 0.3
    vectors += rng.normal(scale=0.02, size=(n, d))
    return np.hstack([vectors, rng.normal(scale=0.5, size=(n, 1))]).astype(np.float32)


@pytest.mark.parametrize("rank", [8, 100])
def test_bound_index_gives_exactly_the_full_top_k(rank: int) -> None:
    matrix = _trained_like(6000, 100, rank, seed=rank)
    index = BoundIndex.build(matrix)
    assert index is not None and index.head.flags.c_contiguous
    rng = np.random.default_rng(1)
    pruned = 0
    for _ in range(40):
        u = rng.normal(size=100).astype(np.float32)
        exclude = rng.choice(6000, size=int(rng.integers(0, 300)), replace=False)
        for k in (1, 10, 36):
            want = top_k(matrix[:, :-1] @ u + matrix[:, -1], k, exclude=exclude)
            got = index.top_k(matrix, u, k, exclude)
            if got is not None:
                pruned += 1
                assert got.tolist() == want.tolist()
    if rank == 8:  # trained-like vectors always prune; a flat spectrum may fall back to all
        assert pruned == 120


def test_movie_side_best_uses_the_index_and_agrees_with_scores() -> None:
    matrix = _trained_like(5000, 100, 10, seed=3)
    side = MovieSide(
        model_id=1,
        movie_ids=np.arange(1, 5001, dtype=np.int32),
        vectors=matrix[:, :-1],
        bias=matrix[:, -1],
        global_mean=3.5,
        default_embedding=np.zeros(100, np.float32),
        default_bias=0.0,
        rating_matrix=matrix,
        index=BoundIndex.build(matrix),
    )
    u = np.random.default_rng(2).normal(size=100).astype(np.float32)
    exclude = np.arange(0, 5000, 7)
    want = top_k(side.scores(u, 0.3), 10, exclude=exclude)
    assert side.best(u, 10, exclude).tolist() == want.tolist()
    assert BoundIndex.build(matrix[:100]) is None  # too few movies to pay


def test_shared_arrays_never_wait_long_for_another_builder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backend that is not the builder watches for the builder's files, and builds a
    private copy when they do not come: a builder stuck in a transaction holds nobody up."""
    monkeypatch.setattr(shared, "SHM_ROOT", tmp_path)
    monkeypatch.setattr(shared, "WAIT_S", 0.05)

    @contextlib.contextmanager
    def someone_else_builds() -> Iterator[bool]:
        yield False

    got = shared.shared_arrays(
        "db-1-a",
        ("m",),
        lambda: {"m": np.ones(3, np.float32)},
        group="db",
        lock=someone_else_builds,
    )
    assert got["m"].tolist() == [1.0] * 3 and not shared.shares(got["m"])
    assert not list((tmp_path / f"movrec-{os.getuid()}").glob("*.bin"))  # wrote nothing


def test_shared_arrays_keep_recent_names_of_the_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deploy writes the new champion's files before it commits, while the others still
    serve the old one: a new name removes only names older than KEEP_S."""
    monkeypatch.setattr(shared, "SHM_ROOT", tmp_path)
    for name in ("db-1-a", "db-2-b"):
        shared.shared_arrays(name, ("m",), lambda: {"m": np.zeros(2, np.float32)}, group="db")
    names = sorted(p.name for p in (tmp_path / f"movrec-{os.getuid()}").glob("*.bin"))
    assert names == ["movrec-db-1-a.bin", "movrec-db-2-b.bin"]


def _forget_holders() -> None:
    """As if every process holding a copy had exited."""
    for fd in shared._held.values():
        os.close(fd)
    shared._held.clear()


@pytest.mark.parametrize("damage", ["truncate", "overwrite", "holders"])
def test_shared_arrays_never_trust_a_damaged_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    """A durable copy that was truncated or overwritten in place, or a holders file pointing
    at something else, is never used: the arrays are built again; a process still holding
    the sealed copy keeps serving it unchanged."""
    monkeypatch.setattr(shared, "SHM_ROOT", tmp_path)
    calls = []

    def build() -> dict[str, np.ndarray]:
        calls.append(1)
        return {"m": np.arange(1000, dtype=np.float32)}

    held = shared.shared_arrays("db-1-a", ("m",), build, group="db")
    private = tmp_path / f"movrec-{os.getuid()}"
    copy, holders = private / "movrec-db-1-a.bin", private / "movrec-db-1-a.holders"
    if damage == "holders":  # our own stdin, a pipe or a tty: never opened as a copy
        holders.write_text(f"{os.getpid()} 0\n1 1\njunk\n")
    else:
        copy.chmod(0o600)
        with open(copy, "r+b") as f:
            if damage == "truncate":
                f.truncate(copy.stat().st_size // 2)
            else:
                f.seek(-400, os.SEEK_END)
                f.write(np.full(100, 5.0, np.float32).tobytes())
    assert held["m"].tolist() == list(range(1000))  # the sealed copy never changes
    _forget_holders()
    try:
        again = shared.shared_arrays("db-1-a", ("m",), build, group="db")
        assert again["m"].tolist() == list(range(1000)) and len(calls) == (
            1 if damage == "holders" else 2
        )
    finally:
        _forget_holders()


def test_shared_copies_are_sealed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nobody, the owner included, can write, shrink or grow a shared copy."""
    import fcntl

    monkeypatch.setattr(shared, "SHM_ROOT", tmp_path)
    shared.shared_arrays("db-9-z", ("m",), lambda: {"m": np.ones(8, np.float32)}, group="db")
    try:
        fd = shared._held["db-9-z"]
        assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) & shared.SEALS == shared.SEALS
        with open(f"/proc/self/fd/{fd}", "r+b") as f, pytest.raises(OSError):
            f.truncate(0)
        with pytest.raises(OSError):
            os.pwrite(fd, b"x", 0)
    finally:
        _forget_holders()
