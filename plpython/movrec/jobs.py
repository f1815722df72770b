"""Draining a per-user job queue exactly once (the CF queue, the refresh queue).

A queue names its tables; the SQL is written once here.  CLAIM locks one due job
with FOR UPDATE SKIP LOCKED (so workers run in parallel) and returns the user and a
version of their state; FINISH deletes the job only if that version did not change
meanwhile (a rating that arrived mid-job keeps it queued); FAIL records the error
and backs off.
Each job runs in a subtransaction: a failure rolls back that job alone, while a
cancel or shutdown (SQLSTATE class 57) rolls back the whole call, queue included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from movrec import backend
from movrec.errors import InvalidArgument


@dataclass(frozen=True)
class JobQueue:
    """A per-user queue and the table whose row versions a job's result depends on.

    ``table`` has user_id, enqueued_at, attempts, last_error, last_attempt_at,
    not_before; ``state_table`` has one row per user (alias ``s``) and
    ``version_sql``, an expression over ``s``, changes whenever the user's
    result would (a counter, or ``s.xmin::text``).
    """

    name: str  # in warnings
    table: str
    state_table: str
    version_sql: str
    version_type: str  # int8 or text

    @property
    def claim_sql(self) -> str:
        """$1 int4[]: users already attempted in this call -> (user_id, version) of one due job.

        A user already attempted is not claimed again: its job stays for the next
        call when a change arrived while it ran.
        """
        return f"""
SELECT q.user_id,
       (SELECT {self.version_sql} FROM {self.state_table} s WHERE s.user_id = q.user_id) AS version
FROM {self.table} q
WHERE q.not_before <= clock_timestamp() AND q.user_id <> ALL($1)
ORDER BY q.enqueued_at, q.user_id
LIMIT 1
FOR UPDATE OF q SKIP LOCKED
"""

    @property
    def finish_sql(self) -> str:
        """$1 user, $2 version at claim: delete the job only if the version is unchanged.

        A state row locked by a change in flight counts as changed (SKIP LOCKED
        reads no version), so that change's own enqueue finds the job still there.
        """
        return f"""
WITH cur AS (
    SELECT {self.version_sql} AS v FROM {self.state_table} s WHERE s.user_id = $1 FOR SHARE SKIP LOCKED
)
DELETE FROM {self.table} q
WHERE q.user_id = $1
  AND ($2::{self.version_type} IS NULL AND NOT EXISTS (SELECT FROM {self.state_table} s WHERE s.user_id = $1)
       OR (SELECT v FROM cur) = $2::{self.version_type})
"""

    @property
    def fail_sql(self) -> str:
        """Keep the job with its error; back off exponentially, at most an hour."""
        return f"""
UPDATE {self.table}
SET attempts = attempts + 1, last_error = $2, last_attempt_at = clock_timestamp(),
    not_before = clock_timestamp() + least(3600, 2 ^ attempts) * interval '1 second'
WHERE user_id = $1
"""


# A job holds a row lock and an advisory lock per user until the caller commits; the server's
# lock table holds max_locks_per_transaction x max_connections (6,400 by default) for every
# session together, so one call takes at most this many jobs.
MAX_JOBS = 4096


def drain(queue: JobQueue, max_jobs: int | None, work: Callable[[int], object]) -> int:
    """Run up to max_jobs (1..MAX_JOBS) queued users through ``work``; returns how many were
    attempted."""
    if max_jobs is None or not 1 <= max_jobs <= MAX_JOBS:
        raise InvalidArgument(
            f"max_jobs must be between 1 and {MAX_JOBS}, got {max_jobs}",
            hint="drain in several calls (each commits its batch)",
        )
    plpy = backend.plpy
    attempted: list[int] = []
    while len(attempted) < max_jobs:
        backend.check_interrupts()
        rows = backend.execute(queue.claim_sql, ["int4[]"], [attempted])
        if not rows:
            break
        user_id, version = rows[0]["user_id"], rows[0]["version"]
        attempted.append(user_id)
        try:
            with plpy.subtransaction():
                work(user_id)
        except Exception as e:  # the subtransaction is rolled back; the job stays with its error
            if backend.is_interrupt(e):
                raise  # a cancel (Ctrl-C, statement_timeout) or shutdown: the whole call rolls back
            message = f"{type(e).__name__}: {e}"
            backend.execute(queue.fail_sql, ["int4", "text"], [user_id, message[:2000]])
            plpy.warning(f"{queue.name} job for user {user_id} failed: {message}")
        else:
            backend.execute(queue.finish_sql, ["int4", queue.version_type], [user_id, version])
    return len(attempted)
