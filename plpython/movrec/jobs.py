"""Draining a per-user job queue exactly once (the CF queue, the refresh queue).

A queue names its tables; the SQL is written once here.  CLAIM locks one due job
with FOR UPDATE SKIP LOCKED (so workers run in parallel) and returns the user and a
version of their state; FINISH deletes the job only if that version did not change
meanwhile (a rating that arrived mid-job keeps it queued); FAIL records the error
and backs off.
Each job runs in a subtransaction: a failure rolls back that job alone, while a
cancel or shutdown (SQLSTATE class 57) rolls back the whole call, queue included.

On Citus the queue is distributed by user_id, and Citus locks rows only in a statement
that goes to one shard: the claim reads due users without a lock (over every shard,
oldest first) and then locks each job alone, FOR UPDATE SKIP LOCKED filtered by its
user_id (a router statement on the user's shard).  A job another drain holds, or
finished meanwhile, is passed over; so two drains still never run one job.  Every
other statement here filters by one user_id already, and none calls a volatile or
stable function beside a column (Citus refuses those in an UPDATE): the clock is read
first and passed in.
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
    def candidates_sql(self) -> str:
        """Citus: $1 int4[] users to pass over, $2 int4 how many -> user_id of due jobs, oldest
        first, read without a lock (claim_one_sql locks each)."""
        return f"""
SELECT q.user_id
FROM {self.table} q
WHERE q.not_before <= clock_timestamp() AND q.user_id <> ALL($1)
ORDER BY q.enqueued_at, q.user_id
LIMIT $2
"""

    @property
    def claim_one_sql(self) -> str:
        """Citus: $1 user -> one row when this call now holds that user's due job, none when
        another call holds it or it is gone (a router statement on the user's shard)."""
        return f"""
SELECT q.user_id
FROM {self.table} q
WHERE q.user_id = $1 AND q.not_before <= clock_timestamp()
FOR UPDATE OF q SKIP LOCKED
"""

    @property
    def version_one_sql(self) -> str:
        """Citus: $1 user -> the version of their state (no row: no state row)."""
        return (
            f"SELECT {self.version_sql} AS version FROM {self.state_table} s WHERE s.user_id = $1"
        )

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
        """$1 user, $2 error, $3 the clock (epoch seconds): keep the job with its error; back off
        exponentially, at most an hour."""
        return f"""
UPDATE {self.table}
SET attempts = attempts + 1, last_error = $2, last_attempt_at = to_timestamp($3),
    not_before = to_timestamp($3 + least(3600, 2 ^ attempts))
WHERE user_id = $1
"""


# A job holds a row lock and an advisory lock per user until the caller commits; the server's
# lock table holds max_locks_per_transaction x max_connections (6,400 by default) for every
# session together, so one call takes at most this many jobs.
MAX_JOBS = 4096


CLOCK_SQL = "SELECT extract(epoch FROM clock_timestamp())::float8 AS t"


def _claim(
    queue: JobQueue, attempted: list[int], passed: list[int], candidates: list[int], room: int
) -> tuple[int, object] | None:
    """One server: lock one due job not attempted yet -> (user, version), or None."""
    rows = backend.execute(queue.claim_sql, ["int4[]"], [attempted])
    return (rows[0]["user_id"], rows[0]["version"]) if rows else None


def _claim_distributed(
    queue: JobQueue, attempted: list[int], passed: list[int], candidates: list[int], room: int
) -> tuple[int, object] | None:
    """Citus: the next due job this call can lock -> (user, version), or None when none is
    left.  ``candidates`` (read ahead, at most ``room``) and ``passed`` (held by another call)
    persist between calls of one drain."""
    while True:
        if not candidates:
            with backend.one_connection_per_node():
                rows = backend.execute(
                    queue.candidates_sql, ["int4[]", "int4"], [attempted + passed, room]
                )
            if not rows:
                return None
            candidates.extend(r["user_id"] for r in rows)
        user_id = candidates.pop(0)
        if backend.execute(queue.claim_one_sql, ["int4"], [user_id]):
            rows = backend.execute(queue.version_one_sql, ["int4"], [user_id])
            return user_id, rows[0]["version"] if rows else None
        passed.append(user_id)


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
    claim = _claim_distributed if backend.distributed() else _claim
    passed: list[int] = []  # (Citus) due jobs another call held
    candidates: list[int] = []
    while len(attempted) < max_jobs:
        backend.check_interrupts()
        claimed = claim(queue, attempted, passed, candidates, max_jobs - len(attempted))
        if claimed is None:
            break
        user_id, version = claimed
        attempted.append(user_id)
        try:
            with plpy.subtransaction():
                work(user_id)
        except Exception as e:  # the subtransaction is rolled back; the job stays with its error
            if backend.is_interrupt(e):
                raise  # a cancel (Ctrl-C, statement_timeout) or shutdown: the whole call rolls back
            message = f"{type(e).__name__}: {e}"
            clock = backend.execute(CLOCK_SQL)[0]["t"]
            backend.execute(
                queue.fail_sql, ["int4", "text", "float8"], [user_id, message[:2000], clock]
            )
            plpy.warning(f"{queue.name} job for user {user_id} failed: {message}")
        else:
            backend.execute(queue.finish_sql, ["int4", queue.version_type], [user_id, version])
    return len(attempted)
