"""Evaluation metrics on tiny hand-made cases with known answers: no database needed."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from movrec.metrics import ranking_metrics, rating_metrics, split, top_k_indices


def fixed_scores(matrix: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    def score(users: np.ndarray) -> np.ndarray:
        return matrix[users]

    return score


def rank(
    matrix: list[list[float]] | np.ndarray,
    train: list[tuple[int, int]],
    test: list[tuple[int, int, float]],
    ks: tuple[int, ...] = (1, 2, 3),
    **kw: Any,
) -> dict[str, float]:
    """train: [(user, item)], test: [(user, item, rating)]."""
    scores = np.asarray(matrix, dtype=np.float64)
    tu = np.array([u for u, _ in train], dtype=np.int64)
    ti = np.array([i for _, i in train], dtype=np.int64)
    su, si, sr = (np.array(c) for c in zip(*test, strict=True))
    return ranking_metrics(
        fixed_scores(scores), tu, ti, su, si, sr, scores.shape[0], scores.shape[1], ks=ks, **kw
    )


def test_rating_metrics() -> None:
    out = rating_metrics(np.array([3.0, 4.0, 5.0]), np.array([4.0, 4.0, 3.0]))
    assert out["rmse"] == pytest.approx(math.sqrt(5 / 3))
    assert out["mae"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        rating_metrics(np.array([1.0]), np.array([1.0, 2.0]))


def test_split_is_the_protocol_permutation_and_deterministic() -> None:
    train, test = split(1000)
    perm = np.random.default_rng(42).permutation(1000)
    assert train.tolist() == perm[:900].tolist() and test.tolist() == perm[900:].tolist()
    again = split(1000)
    assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])
    assert not np.array_equal(train, split(1000, seed=1)[0])
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(1000))
    assert len(split(100_836)[0]) == 90_752


def test_top_k_indices_best_first() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.7], [4.0, 3.0, 2.0, 1.0]])
    assert top_k_indices(scores, 3).tolist() == [[1, 3, 2], [0, 1, 2]]
    assert top_k_indices(scores, 9).tolist() == [[1, 3, 2, 0], [0, 1, 2, 3]]


def test_perfect_ranking_scores_one() -> None:
    # user 0 likes items 1 and 3, and the scores put them first
    out = rank([[0.0, 5.0, 1.0, 4.0, 2.0]], [], [(0, 1, 5.0), (0, 3, 4.0)], ks=(2,))
    assert out["ndcg@2"] == pytest.approx(1.0)
    assert out["precision@2"] == pytest.approx(1.0)
    assert out["recall@2"] == pytest.approx(1.0)
    assert out["n_users"] == 1


def test_known_dcg_and_ideal_uses_min_relevant_k() -> None:
    # ranking 0,1,2,3,4; relevant items 1 and 4 (ranks 2 and 5), item 2 rated 3.5: not relevant
    test = [(0, 1, 4.0), (0, 4, 4.5), (0, 2, 3.5)]
    out = rank([[5.0, 4.0, 3.0, 2.0, 1.0]], [], test, ks=(3, 5))
    idcg = 1 + 1 / math.log2(3)  # two relevant items: min(2, k) ideal ones
    assert out["ndcg@3"] == pytest.approx((1 / math.log2(3)) / idcg)
    assert out["ndcg@5"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(6)) / idcg)
    assert out["precision@3"] == pytest.approx(1 / 3)
    assert out["recall@3"] == pytest.approx(1 / 2)
    assert out["recall@5"] == pytest.approx(1.0)
    assert out["precision@5"] == pytest.approx(2 / 5)


def test_training_items_are_masked() -> None:
    # item 0 scores highest but was rated in training: item 1 moves to rank 1
    out = rank([[9.0, 5.0, 1.0, 0.0]], [(0, 0)], [(0, 1, 5.0)], ks=(1,))
    assert out["ndcg@1"] == pytest.approx(1.0) and out["precision@1"] == pytest.approx(1.0)
    # the same rating by another user masks nothing for user 0
    matrix = [[9.0, 5.0, 1.0, 0.0], [9.0, 5.0, 1.0, 0.0]]
    unmasked = rank(matrix, [(1, 0)], [(0, 1, 5.0)], ks=(1,))
    assert unmasked["ndcg@1"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="train_users"):
        rank([[1.0, 2.0]], [(1, 0)], [(0, 1, 5.0)])


def test_users_without_relevant_items_are_skipped_and_users_averaged() -> None:
    matrix = [[3.0, 2.0, 1.0], [1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]
    # user 0: hit at rank 1; user 1: relevant item 0 at rank 3; user 2: only a 2-star test rating
    out = rank(matrix, [(2, 1)], [(0, 0, 4.0), (1, 0, 5.0), (2, 0, 2.0)], ks=(1, 3))
    assert out["n_users"] == 2
    assert out["precision@1"] == pytest.approx(0.5)
    assert out["ndcg@3"] == pytest.approx((1.0 + 0.5) / 2)


def test_batches_and_nan_scores() -> None:
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(50, 30))
    train = [(u, i) for u in range(50) for i in rng.choice(30, 5, replace=False)]
    test = [(u, int(i), 4.0) for u in range(50) for i in rng.choice(30, 3, replace=False)]
    whole = rank(matrix, train, test, ks=(10,), batch=1000)
    batched = rank(matrix, train, test, ks=(10,), batch=7)
    assert whole == pytest.approx(batched)
    matrix[:, 0] = np.nan  # NaN is the worst score, never a crash
    assert rank(matrix, train, test, ks=(10,))["n_users"] == whole["n_users"]
