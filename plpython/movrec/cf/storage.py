"""model.user_recommendation: computing a user's CF rows and storing them; the SQL entry point."""

from __future__ import annotations

import math

from movrec import backend, locks
from movrec.cf.cache import current_index
from movrec.cf.compute import recommend
from movrec.cf.options import Options
from movrec.errors import InvalidArgument, NullArgument
from movrec.titles import titles

LOCK_SQL = f"SELECT pg_advisory_xact_lock({locks.CF_USER_SQL}, $1)"
DELETE_SQL = "DELETE FROM model.user_recommendation WHERE user_id = $1"
INSERT_SQL = """
INSERT INTO model.user_recommendation (user_id, rank, movie_id, score)
SELECT $1, t.rank, t.movie_id, t.score
FROM unnest($2::int4[], $3::float4[]) WITH ORDINALITY AS t(movie_id, score, rank)
"""


def check_options(
    user_id: int | None,
    min_corr: float | None,
    min_overlap: int | None,
    min_raters: int | None,
    shrinkage: float | None,
    damping: float | None,
    baseline: bool | None,
) -> Options:
    """Options from SQL arguments (the plpgsql front door checks the same, with plain errors)."""
    if user_id is None:
        raise NullArgument("user_id must not be NULL")
    if min_corr is None or not -1.0 <= min_corr <= 1.0:
        raise InvalidArgument(f"min_corr must be between -1 and 1, got {min_corr}")
    if min_overlap is None or min_overlap < 2:
        raise InvalidArgument(f"min_overlap must be at least 2, got {min_overlap}")
    if min_raters is None or min_raters < 1:
        raise InvalidArgument(f"min_raters must be at least 1, got {min_raters}")
    # NaN compares false with everything: `not x >= 0` refuses it, `x < 0` would not
    if shrinkage is None or not 0 <= shrinkage < math.inf:
        raise InvalidArgument(f"shrinkage must be a finite number >= 0, got {shrinkage}")
    if damping is None or not 0 <= damping < math.inf:
        raise InvalidArgument(f"damping must be a finite number >= 0, got {damping}")
    return Options(
        min_corr=float(min_corr),
        min_overlap=int(min_overlap),
        min_raters=int(min_raters),
        shrinkage=float(shrinkage),
        damping=float(damping),
        baseline=bool(baseline),
    )


def store(user_id: int, recs: list[tuple[int, float, int]]) -> None:
    """Replace the user's rows of model.user_recommendation (in the caller's transaction).

    The advisory lock serialises two computations of one user (the worker and
    `movrec cf refresh`): the second deletes what the first committed.
    """
    backend.execute(LOCK_SQL, ["int4"], [user_id])
    backend.execute(DELETE_SQL, ["int4"], [user_id])
    if recs:
        backend.execute(
            INSERT_SQL,
            ["int4", "int4[]", "float4[]"],
            [user_id, [m for m, _, _ in recs], [s for _, s, _ in recs]],
        )


def run_user(user_id: int, opt: Options, save: bool = True) -> list[tuple[int, float, int]]:
    recs = recommend(current_index(), user_id, opt)
    if save:
        store(user_id, recs)
    return recs


@backend.sql_entry
def user_to_user_from_sql(
    user_id: int | None,
    min_corr: float | None,
    min_overlap: int | None,
    min_raters: int | None,
    shrinkage: float | None,
    damping: float | None,
    baseline: bool | None,
    save: bool | None,
) -> list[tuple[int, int, str | None, float, int]]:
    opt = check_options(user_id, min_corr, min_overlap, min_raters, shrinkage, damping, baseline)
    assert user_id is not None  # check_options refused NULL
    recs = run_user(int(user_id), opt, save is not False)
    names = titles(m for m, _, _ in recs)
    return [(rank, m, names.get(m), s, c) for rank, (m, s, c) in enumerate(recs, start=1)]
