"""Implicit-feedback top-K models with closed-form steps, in numpy: EASE and iALS.

Both see a binary user x item matrix X (1 where the user has a positive rating) and score
every item for a user; they predict no ratings.

EASE (an item-item model): B = I - P diag(1 / diag(P)), P = (XᵀX + λI)⁻¹, so B has a zero
diagonal; a user's scores are x_u B.  Only items with a positive in X take part (the others
have an all-zero column and would get all-zero weights), and score lowest.

iALS (implicit alternating least squares): minimise
    sum over all (u, i) of c_ui (x_ui - p_u·q_i)²  +  reg (|P|² + |Q|²),   c_ui = 1 + alpha x_ui
by solving each side's least squares in turn: p_u = (QᵀQ + alpha Q_uᵀQ_u + reg I)⁻¹ (1 + alpha)
Q_uᵀ 1, Q_u the factors of the items u has a positive for (and the same for items over users),
with a few conjugate-gradient steps per row from the last alternation's factors.

``validated_*`` choose the hyper-parameters on a validation cut of the training rows (NDCG@10
by ``movrec.metrics.ranking_metrics``), then refit on all of them; each returns the chosen
options and every trial, so a reader can see what the choice was made among.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from movrec.metrics import ranking_metrics

EASE_LAMBDAS = (15.0, 50.0, 150.0, 500.0, 1500.0)
# iALS: a coordinate search from START, one option at a time over its values (factors last:
# the costly one); IALS_ITERATIONS alternations each.
IALS_START = {"factors": 64, "reg": 10.0, "alpha": 5.0}
IALS_GRID = {"alpha": (1.0, 5.0, 20.0), "reg": (1.0, 10.0, 50.0), "factors": (32, 64, 128)}
IALS_ITERATIONS = 8
CG_STEPS = 3  # conjugate-gradient steps per row and alternation


def binary_matrix(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> np.ndarray:
    """Dense float32 (n_users, n_items) with 1 at every (user, item) given."""
    x = np.zeros((n_users, n_items), dtype=np.float32)
    x[np.asarray(users, np.int64), np.asarray(items, np.int64)] = 1.0
    return x


# --- EASE -----------------------------------------------------------------------------


@dataclass
class Ease:
    """EASE for one λ over the active items; ``score`` gives scores for every item.

    With fewer users than items, P is never formed: by Woodbury,
    P = (I - Xᵀ (XXᵀ + λI)⁻¹ X) / λ, so x_u P and diag(P) need only the users x users
    matrix XXᵀ (the same numbers as the item-side inverse, to rounding).
    """

    x: np.ndarray  # (n_users, n_active) binary training matrix over the active items
    active: np.ndarray  # item indices with a positive
    n_items: int
    lam: float
    b: np.ndarray | None = None  # (n_active, n_active), the item side
    m: np.ndarray | None = None  # (XXᵀ + λI)⁻¹ X, the user side
    diag_p: np.ndarray | None = None

    def score(self, users: np.ndarray) -> np.ndarray:
        out = np.full((len(users), self.n_items), -1e9)
        xu = self.x[users].astype(np.float64)
        if self.b is not None:
            out[:, self.active] = xu @ self.b
        else:
            assert self.m is not None and self.diag_p is not None
            xp = (xu - (xu @ self.x.T) @ self.m) / self.lam
            out[:, self.active] = xu - xp / self.diag_p[None, :]
        return out


def fit_ease(x: np.ndarray, lam: float, gram_eig: Any = None) -> Ease:
    """EASE's closed form over the items with a positive in ``x``; ``gram_eig`` (from
    ``ease_eig``) lets a λ grid share one eigendecomposition."""
    active = np.flatnonzero(x.sum(axis=0) > 0)
    xa = x[:, active].astype(np.float64)
    if xa.shape[0] < xa.shape[1]:  # the user side is smaller: Woodbury (see Ease)
        values, vectors = gram_eig if gram_eig is not None else ease_eig(x)
        m = (vectors / (values + lam)) @ (vectors.T @ xa)
        diag_p = (1.0 - (xa * m).sum(axis=0)) / lam
        return Ease(xa.astype(np.float32), active, x.shape[1], lam, m=m, diag_p=diag_p)
    g = xa.T @ xa
    g[np.diag_indices_from(g)] += lam
    p = np.linalg.inv(g)
    b = -p / np.diag(p)[None, :]
    b[np.diag_indices_from(b)] = 0.0
    return Ease(xa.astype(np.float32), active, x.shape[1], lam, b=b)


def ease_eig(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigendecomposition of XXᵀ over the active items (for fit_ease's user side)."""
    xa = x[:, x.sum(axis=0) > 0].astype(np.float64)
    values, vectors = np.linalg.eigh(xa @ xa.T)
    return values, vectors


# --- iALS -----------------------------------------------------------------------------


def _csr(rows: np.ndarray, cols: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(rows, kind="stable")
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    return indptr, cols[order]


def _solve_side(
    indptr: np.ndarray,
    cols: np.ndarray,
    other: np.ndarray,
    start: np.ndarray,
    reg: float,
    alpha: float,
    steps: int = CG_STEPS,
) -> np.ndarray:
    """Each row's factors given the other side's: the module doc's per-row system
    (G + alpha Y_uᵀY_u) x_u = (1 + alpha) Y_uᵀ1, G = YᵀY + reg I, solved by ``steps``
    conjugate-gradient steps from ``start`` (the previous factors), all rows at once.

    The systems are never formed: a product with them costs one pass over the positives,
    where forming them costs k² a positive; a few steps from the last alternation's factors
    are as good as the exact solve for the ranking (Takács, Pilászy and Tikk, 2011).
    """
    # Everything is held transposed (factors x rows): sums of runs of positives along the
    # last, contiguous axis are 6 times faster than along the first.
    n_rows, k = len(indptr) - 1, other.shape[1]
    counts = np.diff(indptr)
    nonempty = counts > 0
    starts = indptr[:-1][nonempty]
    rows_of = np.repeat(np.arange(n_rows), counts)
    y = np.ascontiguousarray(other.T)[:, cols]  # (k, positives)
    gram = other.T @ other + reg * np.eye(k)

    def per_row(values: np.ndarray) -> np.ndarray:
        out = np.zeros((k, n_rows))
        if len(starts):
            out[:, nonempty] = np.add.reduceat(values, starts, axis=1)
        return out

    def apply(x: np.ndarray) -> np.ndarray:
        d = (y * x[:, rows_of]).sum(axis=0)
        return gram @ x + alpha * per_row(y * d)

    x = np.ascontiguousarray(start.T)
    r = (1.0 + alpha) * per_row(y) - apply(x)
    p = r.copy()
    rs = (r * r).sum(axis=0)
    for _ in range(steps):
        ap = apply(p)
        step = rs / np.maximum((p * ap).sum(axis=0), 1e-30)
        x += step * p
        r -= step * ap
        rs_next = (r * r).sum(axis=0)
        p = r + (rs_next / np.maximum(rs, 1e-30)) * p
        rs = rs_next
    return np.ascontiguousarray(x.T)


@dataclass
class Ials:
    users: np.ndarray
    items: np.ndarray

    def score(self, users: np.ndarray) -> np.ndarray:
        return self.users[users] @ self.items.T


def fit_ials(
    users: np.ndarray,
    items: np.ndarray,
    n_users: int,
    n_items: int,
    factors: int,
    reg: float,
    alpha: float,
    iterations: int = IALS_ITERATIONS,
    seed: int = 0,
) -> Ials:
    """iALS on the positives (users[j], items[j]); deterministic for a seed."""
    users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
    rng = np.random.default_rng(seed)
    q = rng.normal(0.0, 0.01, (n_items, factors))
    p = rng.normal(0.0, 0.01, (n_users, factors))
    by_user = _csr(users, items, n_users)
    by_item = _csr(items, users, n_items)
    for _ in range(iterations):
        p = _solve_side(*by_user, q, p, reg, alpha)
        q = _solve_side(*by_item, p, q, reg, alpha)
    return Ials(p, q)


# --- choosing by validation -----------------------------------------------------------


@dataclass
class Trial:
    options: dict[str, Any]
    metrics: dict[str, float]
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"options": self.options, "metrics": self.metrics, "seconds": round(self.seconds, 3)}


@dataclass
class Validated:
    """The refitted model, its options, and every trial made to choose them."""

    score: Callable[[np.ndarray], np.ndarray]
    options: dict[str, Any]
    trials: list[Trial] = field(default_factory=list)


def validation_cut(n: int, seed: int = 1, fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (fit, validation) of the training rows: a seeded shuffle, cut at 1 - f."""
    perm = np.random.default_rng(seed).permutation(n)
    cut = int(round(n * (1 - fraction)))
    return perm[:cut], perm[cut:]


def _positives(r: np.ndarray, threshold: float | None) -> np.ndarray:
    return np.ones(len(r), bool) if threshold is None else r >= threshold


def _val_metrics(
    score: Callable[[np.ndarray], np.ndarray],
    u: np.ndarray,
    i: np.ndarray,
    r: np.ndarray,
    fit_rows: np.ndarray,
    val_rows: np.ndarray,
    n_users: int,
    n_items: int,
) -> dict[str, float]:
    m = ranking_metrics(
        score, u[fit_rows], i[fit_rows], u[val_rows], i[val_rows], r[val_rows], n_users, n_items
    )
    return {f"val_{k}": round(v, 5) for k, v in m.items() if k != "n_users"}


def validated_ease(
    u: np.ndarray,
    i: np.ndarray,
    r: np.ndarray,
    n_users: int,
    n_items: int,
    lambdas: Sequence[float] = EASE_LAMBDAS,
    thresholds: Iterable[float | None] = (None, 4.0),
    seed: int = 1,
) -> Validated:
    """EASE with λ and the positives (every rating, or ratings >= 4) chosen by validation
    NDCG@10 on a cut of the training rows ``(u, i, r)``; refitted on all of them."""
    fit_rows, val_rows = validation_cut(len(r), seed)
    trials: list[Trial] = []
    for threshold in thresholds:
        keep = fit_rows[_positives(r[fit_rows], threshold)]
        x = binary_matrix(u[keep], i[keep], n_users, n_items)
        eig = ease_eig(x) if n_users < n_items else None
        for lam in lambdas:
            started = time.perf_counter()
            model = fit_ease(x, lam, eig)
            metrics = _val_metrics(model.score, u, i, r, fit_rows, val_rows, n_users, n_items)
            trials.append(
                Trial(
                    {"lambda": lam, "positives": threshold}, metrics, time.perf_counter() - started
                )
            )
    best = max(trials, key=lambda t: t.metrics["val_ndcg@10"])
    keep = _positives(r, best.options["positives"])
    model = fit_ease(binary_matrix(u[keep], i[keep], n_users, n_items), best.options["lambda"])
    return Validated(model.score, best.options, trials)


def validated_ials(
    u: np.ndarray,
    i: np.ndarray,
    r: np.ndarray,
    n_users: int,
    n_items: int,
    start: dict[str, Any] | None = None,
    grid: dict[str, Sequence[Any]] | None = None,
    threshold: float | None = None,
    iterations: int = IALS_ITERATIONS,
    seed: int = 1,
) -> Validated:
    """iALS with factors, reg and alpha chosen by validation NDCG@10 on a cut of the training
    rows: a coordinate search from ``start`` over ``grid``; refitted on all rows."""
    fit_rows, val_rows = validation_cut(len(r), seed)
    keep = fit_rows[_positives(r[fit_rows], threshold)]
    current = dict(start or IALS_START)
    trials: dict[tuple[Any, ...], Trial] = {}

    def trial(options: dict[str, Any]) -> Trial:
        key = tuple(sorted(options.items()))
        if key not in trials:
            started = time.perf_counter()
            model = fit_ials(u[keep], i[keep], n_users, n_items, iterations=iterations, **options)
            metrics = _val_metrics(model.score, u, i, r, fit_rows, val_rows, n_users, n_items)
            trials[key] = Trial(dict(options), metrics, time.perf_counter() - started)
        return trials[key]

    for name, values in (grid or IALS_GRID).items():
        results = [trial({**current, name: v}) for v in values]
        current = max(results, key=lambda t: t.metrics["val_ndcg@10"]).options
    keep_all = _positives(r, threshold)
    model = fit_ials(u[keep_all], i[keep_all], n_users, n_items, iterations=iterations, **current)
    options = {**current, "positives": threshold, "iterations": iterations}
    return Validated(model.score, options, list(trials.values()))
