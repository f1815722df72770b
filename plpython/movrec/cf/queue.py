"""model.cf_queue, drained exactly once (movrec.cf_drain, `movrec worker`, pg_cron).

``cf_drain`` claims a job (``FOR UPDATE SKIP LOCKED``), reads the user's
``n_changes``, runs the job in a subtransaction, and deletes the job only if
``n_changes`` is unchanged, checked under ``FOR SHARE SKIP LOCKED`` on the stats
row.  A rating that arrives while the job runs either bumps ``n_changes`` (seen),
holds the stats row (skipped: the job stays), or comes after the check and then
waits on that share lock, finds the job deleted, and enqueues a fresh one.  A kept
job is not claimed again in the same call; the rating's NOTIFY, sent whether or not
its user was already queued, wakes the workers when it commits.  So a rating is
never left without a later job, and a job's result and its deletion
commit together: a crash, a cancel or a restart rolls both back and the job runs
again.  A failing job keeps its row with ``attempts``, ``last_error`` and a
backoff (``not_before``) of 2^(attempts-1) seconds, at most an hour.  A cancel
(SQLSTATE class 57: Ctrl-C on the worker, statement_timeout) is not a job failure:
it aborts the whole call, so the batch rolls back and stays queued untouched.
"""

from __future__ import annotations

from movrec import backend, jobs
from movrec.cf.options import Options
from movrec.cf.storage import run_user

# A job's result depends on the user's ratings; n_changes counts every change to them.
QUEUE = jobs.JobQueue("cf", "model.cf_queue", "model.user_rating_stats", "s.n_changes", "int8")


@backend.sql_entry
def drain_from_sql(max_jobs: int | None) -> int:
    """Run up to max_jobs queued users; returns how many jobs were attempted."""
    opt = Options()
    return jobs.drain(QUEUE, max_jobs, lambda user_id: run_user(user_id, opt))
