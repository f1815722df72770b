"""Every advisory-lock key movrec takes, in one place, so that no two uses collide.

Keys are two int4s, ``(class, object)``.  A class is one kind of critical section;
the object says which instance of it (a user id, a hash of a name, or 0 for one
global section).  A new lock gets a new class here, never a literal at the call site.
"""

from __future__ import annotations

# (REFRESH, user_id): one rewrite of a user's model.model_recommendation rows at a time.
# (REFRESH, 0): one rewrite of model.movie_rating_stats at a time
# (movrec.refresh_movie_stats() in sql/60_serving.sql writes this class as the literal 28022).
REFRESH = 28022

# (SHARED_BUILD, hashtext(name)): the one backend that builds a shared matrix file
# (movrec.shared); taken with pg_try_advisory_xact_lock, never waited on.
SHARED_BUILD = 28023

# (DEPLOY, 0): one deploy (or rollback) at a time.  Each rewrites every published vector;
# two at once met in the same primary keys and one failed with a unique violation.
DEPLOY = 28024

# (CF_USER, user_id): one Pearson CF computation of a user's model.user_recommendation
# rows at a time (the worker and `movrec cf refresh`).  The class is the SQL expression,
# not an int, because sessions outside Python (tests, operators) take the same key by it.
CF_USER_SQL = "hashtext('movrec.user_recommendation')"
