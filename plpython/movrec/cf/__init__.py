"""User-to-user Pearson collaborative filtering, computed in the backend.

Definitions
-----------
``movrec_cli.cf_naive`` is the plain-Python reference of exactly these; the tests
hold the two to 1e-6.

* **Co-rated set** ``I(u, v)``: the movies both u and v rated.
* **Correlation**: Pearson over ``I(u, v)``, each user centred on their mean over
  ``I(u, v)`` only::

      corr(u, v) = sum_i (r_ui - m_u)(r_vi - m_v) / sqrt(sum_i (r_ui - m_u)^2 * sum_i (r_vi - m_v)^2)

  When either sum of squares is 0 (a constant rater on the co-rated set) the
  correlation is undefined and v is not a neighbour.
* **Neighbours** of u: users v != u with ``|I(u, v)| >= min_overlap`` (14) and
  ``corr >= min_corr`` (0.65).  A correlation within ``CORR_EPS`` (1e-12) below
  min_corr counts as reaching it, so rounding in the last bit cannot decide.
* **Candidates**: movies u has not rated that at least ``min_raters`` (1)
  neighbours rated.  "Rated highly" needs no threshold of its own: a movie the
  neighbours rated below their means scores below u's mean and ranks low.
* **Prediction** for candidate m::

      p(u, m) = mean_u + sum_n w_n (r_nm - mean_n) / sum_n |w_n|

  over the neighbours n who rated m; ``mean_u`` and ``mean_n`` are the users'
  overall means (all their ratings, not the co-rated set), ``w_n = corr(u, n)``.
* **Ranking**: p descending, then movie_id ascending; scores equal to 9 decimals
  (``SCORE_DECIMALS``) are ties.  The top ``k`` (150) are kept, ranks 1..k.

Options, off by default (the defaults are the plain definitions above):

* ``shrinkage`` lambda > 0: ``w_n = corr * |I| / (|I| + lambda)``, so a
  correlation over few co-rated movies weighs less.  The neighbour test still uses
  the raw correlation: shrinkage changes scores, never coverage.
* ``damping`` delta > 0: divide by ``sum_n |w_n| + delta`` instead, which pulls the
  neighbours' correction toward the centre when few or weak neighbours rated m.
  Shrinkage alone cannot do this: with one neighbour rating m, its weight cancels
  in the ratio.
* ``baseline``: centre on baseline estimates instead of means, ``b_um = mu + b_u +
  b_m`` (``mu`` the global mean; ``b_m = sum(r - mu) / (25 + n_m)`` over m's raters,
  then ``b_u = sum(r - mu - b_m) / (10 + n_u)`` over u's ratings), and predict
  ``b_um + sum_n w_n (r_nm - b_nm) / sum_n |w_n|``.

Modules
-------
``options``  the definitions' constants and :class:`Options`
``index``    :class:`RatingsIndex`: the ratings as CSR and CSC, with an overlay of changed users
``compute``  the Pearson maths: neighbours, scores, the ranked top k
``cache``    this backend's index, loaded once and refreshed incrementally
``storage``  model.user_recommendation and movrec.user_to_user()'s entry point
``queue``    model.cf_queue drained exactly once

The SQL bodies call the names re-exported here (``from movrec import cf;
cf.user_to_user_from_sql(...)``), so moving code between these modules never edits SQL.
"""

from movrec.cf.cache import cache_info, current_index, unpack_array
from movrec.cf.compute import Neighbours, Scores, neighbours, recommend, score_all, top_k
from movrec.cf.index import RatingsIndex, to_halves
from movrec.cf.options import (
    BASELINE_REG_MOVIE,
    BASELINE_REG_USER,
    CORR_EPS,
    MAX_K,
    SCORE_DECIMALS,
    Options,
)
from movrec.cf.queue import QUEUE, drain_from_sql
from movrec.cf.storage import check_options, run_user, store, user_to_user_from_sql

__all__ = [
    "BASELINE_REG_MOVIE",
    "BASELINE_REG_USER",
    "CORR_EPS",
    "MAX_K",
    "QUEUE",
    "SCORE_DECIMALS",
    "Neighbours",
    "Options",
    "RatingsIndex",
    "Scores",
    "cache_info",
    "check_options",
    "current_index",
    "drain_from_sql",
    "neighbours",
    "recommend",
    "run_user",
    "score_all",
    "store",
    "to_halves",
    "top_k",
    "unpack_array",
    "user_to_user_from_sql",
]
