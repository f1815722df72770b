"""Temporal features from ``rated_at``: pure numpy, shared by training, evaluation and serving.

Times are Unix epoch seconds (``extract(epoch FROM rated_at)``); a movie's release year is
its ``movies.year`` (NaN where unknown).

Features of a rating made at time t by user u of movie m:

``age_bin(t, year_m)``
    the movie's age at rating time, ``a = floor(calendar year of t) - year_m``, binned:
    0 unknown year; 1 a < 0 (released after t: "from the future"); 2 a = 0; 3 a = 1;
    4 a in 2..3; 5 a in 4..7; 6 a in 8..15; 7 a in 16..31; 8 a >= 32.
``recent``
    whether the rating is among the user's latest ``RECENT`` (50) ratings by time (ties by row
    order); the user's query time is always recent.
``drift_bin(t - first_u)``
    time since the user's first rating, in days d: 0 d < 1; 1 d < 7; 2 d < 30; 3 d < 90;
    4 d < 365; 5 d < 1095; 6 otherwise.

The query time of a user, at serving and when evaluating a model the way it is served, is
their latest stored rating's time (``query_times``): a pure function of stored data, so a
recommendation does not depend on when it is asked for, and no future is seen.
"""

from __future__ import annotations

import numpy as np

SECONDS_PER_YEAR = 365.2425 * 86_400.0  # the mean Gregorian year
DAY = 86_400.0
N_AGE = 9
N_DRIFT = 7
RECENT = 50
# age a (clipped to [-1, 32]) -> bin: AGE_LOOKUP[a + 1]
AGE_LOOKUP = np.array(
    [1, 2, 3, 4, 4, *[5] * 4, *[6] * 8, *[7] * 16, 8], dtype=np.int64
)  # a = -1, 0, 1, 2..3, 4..7, 8..15, 16..31, 32
DRIFT_DAYS = np.array([1.0, 7.0, 30.0, 90.0, 365.0, 1095.0])


def calendar_year(t: np.ndarray | float) -> np.ndarray:
    """The calendar year (integer, as float64) of epoch seconds ``t``."""
    return np.floor(1970.0 + np.asarray(t, dtype=np.float64) / SECONDS_PER_YEAR)


def age_bin(year_of_t: np.ndarray, movie_year: np.ndarray) -> np.ndarray:
    """Bins of the movie's age (module docstring); arguments broadcast (e.g. users x movies)."""
    age = np.asarray(year_of_t, dtype=np.float64) - np.asarray(movie_year, dtype=np.float64)
    known = np.isfinite(age)
    idx = np.clip(np.where(known, age, 0.0), -1, 32).astype(np.int64) + 1
    return np.where(known, AGE_LOOKUP[idx], 0)


def drift_bin(since_first_s: np.ndarray) -> np.ndarray:
    """Bins of the time since the user's first rating (module docstring)."""
    days = np.asarray(since_first_s, dtype=np.float64) / DAY
    return np.searchsorted(DRIFT_DAYS, days, side="right").astype(np.int64)


def user_times(users: np.ndarray, times: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """(first, latest) rating time per user index 0..n_users-1 (NaN for users without rows)."""
    users = np.asarray(users, dtype=np.int64)
    times = np.asarray(times, dtype=np.float64)
    first = np.full(n_users, np.inf)
    latest = np.full(n_users, -np.inf)
    np.minimum.at(first, users, times)
    np.maximum.at(latest, users, times)
    first[~np.isfinite(first)] = np.nan
    latest[~np.isfinite(latest)] = np.nan
    return first, latest


def row_features(
    users: np.ndarray, movie_years: np.ndarray, times: np.ndarray, first: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per rating: (age bin, drift bin, calendar year of the rating); ``movie_years`` and
    ``first`` are per row's movie and per user index."""
    year = calendar_year(times)
    return age_bin(year, movie_years), drift_bin(times - first[users]), year


def rank_offsets(side: dict[str, np.ndarray], query_years: np.ndarray) -> np.ndarray:
    """(users, movies) ranking offsets ``age_rank[age_bin(query year, movie year)]`` of a
    model's temporal_side() for users with these query calendar years."""
    bins = age_bin(np.asarray(query_years, np.float64)[:, None], side["movie_year"][None, :])
    return side["age_rank"][bins]


def rating_offsets(
    side: dict[str, np.ndarray], query_years: np.ndarray, since_first_s: np.ndarray
) -> np.ndarray:
    """(users, movies) rating offsets at the users' query times: the age term of each movie
    plus the user's drift term (``since_first_s``: query time minus their first rating)."""
    bins = age_bin(np.asarray(query_years, np.float64)[:, None], side["movie_year"][None, :])
    drift = side["drift_rating"][drift_bin(since_first_s)]
    return side["age_rating"][bins] + drift[:, None]


def recent_rows(users: np.ndarray, times: np.ndarray, k: int = RECENT) -> np.ndarray:
    """Per rating: whether it is among its user's latest ``k`` ratings by time (ties in time
    broken by row order, later rows later)."""
    users, times = np.asarray(users), np.asarray(times)
    order = np.lexsort((np.arange(len(users)), times, users))
    _, starts, counts = np.unique(users[order], return_index=True, return_counts=True)
    from_end = np.repeat(starts + counts, counts) - 1 - np.arange(len(users))
    out = np.zeros(len(users), bool)
    out[order] = from_end < k
    return out
