"""The Pearson maths over a RatingsIndex: neighbours, scores, the ranked top k (see movrec.cf)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from movrec.cf.index import RatingsIndex
from movrec.cf.options import CORR_EPS, SCORE_DECIMALS, Options


@dataclass
class Neighbours:
    users: np.ndarray  # user index
    corr: np.ndarray  # Pearson over the co-rated movies
    overlap: np.ndarray  # number of co-rated movies


def neighbours(ix: RatingsIndex, u: int, opt: Options) -> Neighbours:
    """The users with enough overlap and correlation, from the co-raters of u's movies only."""
    mv, hv = ix.rows_of(u)
    which, v, hy = ix.raters_of(mv)
    x = hv[which].astype(np.float64)  # half stars: every sum below is an exact integer
    y = hy.astype(np.float64)
    n_users = ix.n_users
    n = np.bincount(v, minlength=n_users).astype(np.float64)
    n[u] = 0  # not one's own neighbour
    cand = np.flatnonzero(n >= max(2, opt.min_overlap))
    if len(cand) == 0:
        return Neighbours(cand, np.zeros(0), np.zeros(0, dtype=np.int64))
    sums = [np.bincount(v, weights=w, minlength=n_users)[cand] for w in (x, y, x * x, y * y, x * y)]
    sx, sy, sxx, syy, sxy = sums
    nc = n[cand]
    var_x, var_y = nc * sxx - sx * sx, nc * syy - sy * sy  # exact: 0 means a constant rater
    cov = nc * sxy - sx * sy
    defined = (var_x > 0) & (var_y > 0)
    corr = np.zeros(len(cand))
    corr[defined] = cov[defined] / np.sqrt(var_x[defined] * var_y[defined])
    keep = defined & (corr >= opt.min_corr - CORR_EPS)
    return Neighbours(cand[keep], corr[keep], nc[keep].astype(np.int64))


@dataclass
class Scores:
    movies: np.ndarray  # movie index of every candidate
    score: np.ndarray  # predicted rating
    raters: np.ndarray  # neighbours who rated it


def score_all(ix: RatingsIndex, user_id: int, opt: Options) -> Scores:
    """Every candidate movie of a user with its prediction (none for unknown users)."""
    empty = Scores(np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0, dtype=np.int64))
    u = ix.user_index(user_id)
    if u is None or ix.n_ratings[u] == 0:
        return empty
    nb = neighbours(ix, u, opt)
    if len(nb.users) == 0:
        return empty
    w = nb.corr * nb.overlap / (nb.overlap + opt.shrinkage) if opt.shrinkage > 0 else nb.corr
    owner, movies, halves = ix.rows_of_many(nb.users)
    r = halves.astype(np.float64) * 0.5
    if opt.baseline:
        mu, b_user, b_movie = ix.baselines()
        centred = r - (mu + b_user[nb.users][owner] + b_movie[movies])
    else:
        means = ix.sum_halves[nb.users] * 0.5 / ix.n_ratings[nb.users]
        centred = r - means[owner]
    n_movies = ix.n_movies
    num = np.bincount(movies, weights=w[owner] * centred, minlength=n_movies)
    den = np.bincount(movies, weights=np.abs(w)[owner], minlength=n_movies)
    raters = np.bincount(movies, minlength=n_movies)
    raters[ix.rows_of(u)[0]] = 0  # seen
    cand = np.flatnonzero((raters >= max(1, opt.min_raters)) & (den > 0))
    if opt.baseline:
        base = mu + b_user[u] + b_movie[cand]
    else:
        base = ix.sum_halves[u] * 0.5 / ix.n_ratings[u]
    return Scores(cand, base + num[cand] / (den[cand] + opt.damping), raters[cand])


def top_k(ix: RatingsIndex, scores: Scores, k: int) -> list[tuple[int, float, int]]:
    """(movie_id, score, neighbours) best first, ties (to SCORE_DECIMALS) by movie_id."""
    ids = ix.movie_id_of(scores.movies)
    key = np.rint(scores.score * 10.0**SCORE_DECIMALS)
    order = np.lexsort((ids, -key))[:k]
    return [
        (int(m), float(s), int(c))
        for m, s, c in zip(ids[order], scores.score[order], scores.raters[order], strict=True)
    ]


def recommend(
    ix: RatingsIndex, user_id: int, opt: Options | None = None
) -> list[tuple[int, float, int]]:
    opt = opt or Options()
    return top_k(ix, score_all(ix, user_id, opt), opt.k)
