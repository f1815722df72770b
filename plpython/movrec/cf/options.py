"""The definitions' constants and the knobs of movrec.user_to_user() (see movrec.cf)."""

from __future__ import annotations

from dataclasses import dataclass

CORR_EPS = 1e-12
SCORE_DECIMALS = 9
BASELINE_REG_MOVIE = 25.0
BASELINE_REG_USER = 10.0
MAX_K = 150


@dataclass(frozen=True)
class Options:
    """The knobs of movrec.user_to_user(); the defaults are the plain definitions."""

    min_corr: float = 0.65
    min_overlap: int = 14
    min_raters: int = 1
    shrinkage: float = 0.0
    damping: float = 0.0
    baseline: bool = False
    k: int = MAX_K
