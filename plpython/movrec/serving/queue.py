"""The refresh queue: users whose stored recommendations a rating made stale.

The job remembers the user's vector row version (xmin) when it is claimed; it is
deleted only if that row did not change since and no rating holds it (a rating in
flight locks it FOR UPDATE in the online trigger, then enqueues the user again).
"""

from __future__ import annotations

from movrec import backend, jobs
from movrec.serving.refresh import refresh_many

QUEUE = jobs.JobQueue(
    "refresh", "model.refresh_queue", "model.user_latent_attributes", "s.xmin::text", "text"
)


@backend.sql_entry
def drain_from_sql(max_jobs: int | None) -> int:
    """Refresh up to max_jobs queued users, each in a subtransaction; returns jobs attempted."""
    return jobs.drain(QUEUE, max_jobs, lambda user_id: refresh_many([user_id]))
