"""`movrec generate` at any number of users: every timestamp is one the schema accepts."""

from __future__ import annotations

import time

import numpy as np
from movrec_cli import generate

from tests.conftest import connect


def test_timestamps_stay_in_the_past_at_any_scale(installed: str) -> None:
    """Above ~300k users the fixed 30 minutes per user ran past today, and the schema's
    rated_at_is_not_in_the_future refused the COPY; now the last user's last rating of a
    2M-user plan lands before END_S, and PostgreSQL takes it."""
    n_users, max_per_user = 2_000_000, 9_000
    users = np.array([0, 0, n_users - 1, n_users - 1])
    within = np.array([0, 1, 0, max_per_user - 1])
    seconds = generate.rating_seconds(users, within, n_users, max_per_user)
    assert seconds.min() >= generate.START_S and seconds.max() < generate.END_S < time.time()
    assert seconds[0] < seconds[1] and seconds[2] < seconds[3]  # a user's ratings in order
    with connect(installed) as conn, conn.transaction(force_rollback=True):
        conn.execute("INSERT INTO movrec.movies (movie_id, title) VALUES (1, 'one')")
        with conn.cursor().copy(
            "COPY movrec.watch_events (user_id, movie_id, rating, rated_at)"
            " FROM STDIN (FORMAT binary)"
        ) as cp:
            cp.write(generate.COPY_HEADER)
            cp.write(
                generate.binary_rows(
                    np.array([n_users], dtype=np.int32),
                    np.array([1], dtype=np.int32),
                    np.array([4.0], dtype=np.float32),
                    seconds[3:],
                )
            )
            cp.write(generate.COPY_TRAILER)
        assert conn.execute("SELECT count(*) FROM movrec.watch_events").fetchone()[0] == 1


def test_timestamps_at_ml20m_scale_are_unchanged() -> None:
    """Up to ~175k users the steps are the fixed ones (30 min per user, 1 min per rating)."""
    users = np.arange(0, 138_493, 997)
    within = users % 8_914
    got = generate.rating_seconds(users, within, 138_493, 26_744 // 3)
    assert np.array_equal(got, generate.START_S + users * 1_800 + within * 60)
