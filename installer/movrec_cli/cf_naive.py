"""User-to-user Pearson CF in plain Python: the naive baseline and the tests' reference.

These are movrec.cf's definitions written the obvious way, with no numpy and no
cache: every call reads ``ratings.csv`` into per-user dicts, correlates the
target with every other user, and scores the movies the neighbours rated.
``movrec bench cf`` times it against the database version, and the tests check
that ``movrec.user_to_user()`` returns the same neighbours and scores.

The definitions are those of ``movrec.cf`` (read its module docstring); they are
restated here in the textbook form, which is deliberately a different
computation from the database's (co-rated means and deviations here, exact
scaled sums there), so that agreement means something:

* ``corr(u, v)`` is Pearson over the co-rated movies ``I``, each user centred on
  their mean over ``I``.  Undefined (not a neighbour) when either user's ratings
  on ``I`` are all equal.
* neighbours: ``|I| >= min_overlap`` and ``corr >= min_corr - CORR_EPS``.
* ``p(u, m) = c_u + sum_n w_n (r_nm - c_nm) / sum_n |w_n|`` over neighbours who
  rated ``m``; ``c`` is the user's overall mean, or with ``baseline`` the
  baseline estimate ``mu + b_user + b_movie``; ``w_n = corr`` or, with
  ``shrinkage`` lambda, ``corr * |I| / (|I| + lambda)``; with ``damping`` delta the
  denominator is ``sum_n |w_n| + delta``.
* rank by score (rounded to ``SCORE_DECIMALS``) descending, then movie_id.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path

# The definitions' constants and options are movrec.cf's own (one definition): a
# correlation within CORR_EPS of min_corr counts as reaching it, and scores equal to
# SCORE_DECIMALS decimals are ties (broken by movie_id), so that two correct
# implementations that round differently in the last bit still agree.
from movrec.cf.options import (
    BASELINE_REG_MOVIE,
    BASELINE_REG_USER,
    CORR_EPS,
    SCORE_DECIMALS,
    Options,
)

Ratings = Mapping[int, Mapping[int, float]]  # user -> movie -> rating

__all__ = ["Options", "naive_user_to_user", "neighbours", "predict_all", "recommend"]


def read_ratings(path: Path) -> dict[int, dict[int, float]]:
    """A MovieLens ratings.csv (userId,movieId,rating,timestamp) as user -> movie -> rating."""
    ratings: dict[int, dict[int, float]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader)  # header
        for row in reader:
            ratings.setdefault(int(row[0]), {})[int(row[1])] = float(row[2])
    return ratings


def pearson(
    a: Mapping[int, float], b: Mapping[int, float], min_overlap: int = 2
) -> tuple[float | None, int]:
    """(correlation over the co-rated movies, their number); None when undefined or too few."""
    common = a.keys() & b.keys()
    n = len(common)
    if n < max(2, min_overlap):
        return None, n
    mean_a = sum(a[m] for m in common) / n
    mean_b = sum(b[m] for m in common) / n
    sab = saa = sbb = 0.0
    for m in common:
        da, db = a[m] - mean_a, b[m] - mean_b
        sab += da * db
        saa += da * da
        sbb += db * db
    if saa == 0.0 or sbb == 0.0:  # a constant rater on the co-rated set
        return None, n
    return sab / math.sqrt(saa * sbb), n


def neighbours(ratings: Ratings, user: int, opt: Options) -> dict[int, tuple[float, int]]:
    """Neighbour -> (correlation, overlap) of the users who pass opt's thresholds."""
    mine = ratings.get(user, {})
    found: dict[int, tuple[float, int]] = {}
    for other, theirs in ratings.items():
        if other == user:
            continue
        corr, n = pearson(mine, theirs, opt.min_overlap)
        if corr is not None and corr >= opt.min_corr - CORR_EPS:
            found[other] = (corr, n)
    return found


def baselines(ratings: Ratings) -> tuple[float, dict[int, float], dict[int, float]]:
    """mu, b_user, b_movie: one pass of regularised means (movies first, then users)."""
    total = sum(len(r) for r in ratings.values())
    mu = sum(x for r in ratings.values() for x in r.values()) / total if total else 0.0
    movie_sum: dict[int, float] = {}
    movie_n: dict[int, int] = {}
    for r in ratings.values():
        for m, x in r.items():
            movie_sum[m] = movie_sum.get(m, 0.0) + (x - mu)
            movie_n[m] = movie_n.get(m, 0) + 1
    b_movie = {m: s / (BASELINE_REG_MOVIE + movie_n[m]) for m, s in movie_sum.items()}
    b_user = {
        u: sum(x - mu - b_movie[m] for m, x in r.items()) / (BASELINE_REG_USER + len(r))
        for u, r in ratings.items()
    }
    return mu, b_user, b_movie


def predict_all(ratings: Ratings, user: int, opt: Options) -> dict[int, tuple[float, int]]:
    """Every candidate movie -> (predicted score, neighbours who rated it)."""
    mine = ratings.get(user, {})
    if not mine:
        return {}
    nbrs = neighbours(ratings, user, opt)
    base = baselines(ratings) if opt.baseline else None

    def centre(u: int, m: int) -> float:
        if base is None:
            r = ratings[u]
            return sum(r.values()) / len(r)
        mu, b_user, b_movie = base
        return mu + b_user.get(u, 0.0) + b_movie.get(m, 0.0)

    num: dict[int, float] = {}
    den: dict[int, float] = {}
    count: dict[int, int] = {}
    for other, (corr, n) in nbrs.items():
        w = corr * n / (n + opt.shrinkage) if opt.shrinkage > 0 else corr
        mean_other = sum(ratings[other].values()) / len(ratings[other])
        for m, x in ratings[other].items():
            if m in mine:
                continue
            c = mean_other if base is None else centre(other, m)
            num[m] = num.get(m, 0.0) + w * (x - c)
            den[m] = den.get(m, 0.0) + abs(w)
            count[m] = count.get(m, 0) + 1
    mean_mine = sum(mine.values()) / len(mine)
    return {
        m: (
            (mean_mine if base is None else centre(user, m)) + num[m] / (den[m] + opt.damping),
            count[m],
        )
        for m in num
        if count[m] >= opt.min_raters and den[m] > 0
    }


def tie_key(score: float) -> float:
    """The score rounded to SCORE_DECIMALS the way numpy's rint does it (half to even)."""
    return float(round(score * 10.0**SCORE_DECIMALS))


def recommend(
    ratings: Ratings, user: int, opt: Options | None = None
) -> list[tuple[int, float, int]]:
    """The top k (movie_id, score, neighbours who rated it), best first, ties by movie_id."""
    opt = opt or Options()
    scored = predict_all(ratings, user, opt)
    ranked = sorted(scored.items(), key=lambda kv: (-tie_key(kv[1][0]), kv[0]))
    return [(m, s, n) for m, (s, n) in ranked[: opt.k]]


def naive_user_to_user(
    ratings_csv: Path, user: int, opt: Options | None = None
) -> list[tuple[int, float, int]]:
    """The whole naive path, as `movrec bench cf` times it: read the file, then compute."""
    return recommend(read_ratings(ratings_csv), user, opt)
