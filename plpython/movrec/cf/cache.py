"""This backend's RatingsIndex: loaded once, refreshed incrementally at every call.

The matrix is loaded once per backend (one statement, ``array_send`` blobs read
with ``np.frombuffer``) and then refreshed incrementally at the start of every
call.  The rating triggers stamp ``model.user_rating_stats.changed_xid`` with the
writing transaction's id.  Each refresh (one statement, one snapshot) records that
snapshot's xmin as the watermark and reloads the users whose ``changed_xid`` is at
or above the previous watermark: a change the previous snapshot could not see was
made by a transaction at or above its xmin, so none is missed (some are re-read,
which is harmless).  Users changed by the calling transaction itself are
*tentative*: loaded, so the call sees its own writes, and reloaded by the next
refresh whether the transaction commits or rolls back.  Reloaded users are overlaid
on the base arrays (their base rows are masked); the overlay is merged into new base
arrays when it grows past ``COMPACT_FRACTION`` of the ratings, and a refresh that
finds more than ``RELOAD_FRACTION`` of the users changed (an ETL publish) reloads
everything.  A bulk change that bypasses the triggers must run
``movrec.cf_rebuild_stats()``, which stamps every user.  Any error while the cache
is being changed drops it; the next call loads afresh.

On Citus every node has its own transaction ids: a user's statistics row lives on the
node of its shard and is stamped there, with that node's transaction id and its Citus
group (``changed_group``; ``cf_rebuild_stats()`` and a TRUNCATE stamp the coordinator's,
group 0).  A stamp therefore compares only with a snapshot of its own node, so the
watermark is one xmin per node group, each read (``run_command_on_all_nodes``) before
the statements that read the rows: a change those statements could not see was in
flight, or not yet begun, when that earlier snapshot was taken, so its id is at or
above that snapshot's xmin, and no change is missed.  A group that a new watermark names
and the old one did not (a node added, or one that did not answer) reloads everything.  Citus runs the
statements that read the statistics and the ratings over every shard, separately
(one statement cannot push down subqueries beside the aggregates).  The tentative users
there are all those stamped at or above the new watermark: the calling transaction's own
changes are among them (it was in flight when each node's snapshot was taken), whichever
node stamped them; the others are re-read once more, which is harmless.

An erasure (``movrec.forget_user()``) deletes the user's statistics row with their
ratings, so no ``changed_xid`` names them afterwards; instead it counts itself in
``model.cf_erasures``, which holds no user id.  Every load and refresh reads that
count in its snapshot, and a refresh that finds it changed reloads everything: a
forgotten user's ratings never feed a neighbour, a score or a baseline again once
the erasure has committed.

Sharing across backends.  Every pg_cron run and every new worker is a new backend, and
loading 20M ratings takes ~18 s, so the base arrays (CSR and CSC, no overlay) are shared
by all backends of a server through ``movrec.shared`` (sealed memfds, a checksummed
durable copy; a truncated, overwritten or replaced file is never served, only rebuilt).
A backend that loads everything, or compacts its overlay, publishes its base arrays
with the watermark, the tentative users and the erasure count they were read with; a
new backend maps the current copy and refreshes it like its own (the rule above holds
for any correct base read at a watermark, whoever read it), so its answers are those
a private load would give.  The group name holds the cluster, the database and the
postmaster's start time: a copy never outlives the server that wrote it (a restore can
rewind transaction ids).  On Citus nothing is shared: the watermark there is one xmin per
node group, and each backend loads its own.
"""

from __future__ import annotations

import math
import os
import time
import weakref
from typing import Any

import numpy as np

from movrec import backend, shared
from movrec.cf.index import RatingsIndex

# A refresh that finds more than this share of the users changed reloads everything.
RELOAD_FRACTION = 0.05
RELOAD_MIN_USERS = 1000

_index: RatingsIndex | None = None
_loads = 0  # full loads in this backend (a refresh that reloads everything counts)
_attached = 0  # of them, those that mapped another backend's shared copy
_shared_name: str | None = None  # the shared copy the base arrays of _index are, if any
_group: str | None = None
# The private base arrays last offered for sharing (weakly: a reference would keep them alive).
_tried_base: weakref.ref[np.ndarray] | None = None

# Bumped whenever what is shared changes, so no backend maps a copy of another layout.
SHARED_LAYOUT = 1
SHARED_PARTS = (*RatingsIndex.BASE_PARTS, "state", "tentative")

GROUP_SQL = f"""
SELECT 'cf-' || (SELECT system_identifier FROM pg_control_system())::text
       || '-' || (SELECT oid FROM pg_database WHERE datname = current_database())::text
       || '-' || (extract(epoch FROM pg_postmaster_start_time()) * 1000000)::bigint::text
       || '-v{SHARED_LAYOUT}' AS name
"""

ERASURES_SQL = "(SELECT coalesce(max(e.n_erasures), 0) FROM model.cf_erasures e) AS erasures"

LOAD_SQL = (
    "SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS xmin, "
    + ERASURES_SQL
    + """,
       (SELECT coalesce(array_agg(s.user_id), '{}') FROM model.user_rating_stats s
         WHERE s.changed_xid = pg_current_xact_id_if_assigned()) AS tentative,
       array_send(coalesce(array_agg(w.user_id), '{}')) AS users,
       array_send(coalesce(array_agg(w.movie_id), '{}')) AS movies,
       array_send(coalesce(array_agg((w.rating * 2)::int2), '{}')) AS halves
FROM movrec.watch_events w
"""
)

# One statement, so the watermark and the rows come from one snapshot.  The rows
# are fetched only when few enough users changed; otherwise the caller reloads all.
REFRESH_SQL = (
    """
WITH changed AS MATERIALIZED (
    SELECT s.user_id, s.changed_xid = pg_current_xact_id_if_assigned() AS own
    FROM model.user_rating_stats s
    WHERE s.changed_xid >= $1::xid8 OR s.user_id = ANY($2)
)
SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS xmin, """
    + ERASURES_SQL
    + """,
       (SELECT count(*) FROM changed) AS n_changed,
       (SELECT coalesce(array_agg(user_id), '{}') FROM changed) AS changed,
       (SELECT coalesce(array_agg(user_id), '{}') FROM changed WHERE own) AS tentative,
       d.users, d.movies, d.halves
FROM (SELECT array_send(coalesce(array_agg(w.user_id), '{}')) AS users,
             array_send(coalesce(array_agg(w.movie_id), '{}')) AS movies,
             array_send(coalesce(array_agg((w.rating * 2)::int2), '{}')) AS halves
      FROM movrec.watch_events w
      WHERE w.user_id IN (SELECT user_id FROM changed) AND (SELECT count(*) FROM changed) <= $3) d
"""
)


# Citus: asking every node for a snapshot opens a connection to each (tens of ms), so a
# backend asks at most this often; meanwhile its older watermark serves, which is never
# unsafe (it finds every change a newer one would, and some more).
WATERMARK_EVERY_S = 1.0
_watermark_at = -math.inf

# Citus: the watermark, per node group: each node's snapshot xmin, read by the node itself
# (the local one read here too: the coordinator need not be in pg_dist_node).
WATERMARKS_SQL = """
SELECT movrec._local_group() AS grp, pg_snapshot_xmin(pg_current_snapshot())::text AS xmin
UNION ALL
SELECT split_part(r.result, ':', 1)::int, split_part(r.result, ':', 2)
FROM run_command_on_all_nodes(
    'SELECT groupid || '':'' || pg_snapshot_xmin(pg_current_snapshot()) FROM pg_catalog.pg_dist_local_group') r
WHERE r.success
"""


# A stamp at or above a watermark given as text[], group g at g + 1 (a group it lacks: every
# row of it counts).
def stamp_at_or_above(param: str) -> str:
    return f"s.changed_xid >= coalesce(({param}::text[])[s.changed_group + 1], '0')::xid8"


CITUS_ERASURES_SQL = "SELECT " + ERASURES_SQL
CITUS_TENTATIVE_SQL = f"""
SELECT coalesce(array_agg(s.user_id), '{{}}') AS tentative
FROM model.user_rating_stats s WHERE {stamp_at_or_above("$1")}
"""


def citus_changed_sql(n_groups: int) -> str:
    """$1 int4[] the old watermark's groups, $2 xid8[] their xmins (n_groups each), $3 int4[]
    the tentative users, $4 text[] the new watermark -> user_id, and whether stamped at or
    above the new watermark.  One index range per group (distribute() indexes
    (changed_group, changed_xid) on Citus)."""
    ranges = " OR ".join(
        f"(s.changed_group = ($1::int4[])[{i}] AND s.changed_xid >= ($2::xid8[])[{i}])"
        for i in range(1, n_groups + 1)
    )
    return f"""
SELECT s.user_id, {stamp_at_or_above("$4")} AS recent
FROM model.user_rating_stats s
WHERE {ranges or "false"} OR s.user_id = ANY($3)
"""


CITUS_RATINGS_SQL = """
SELECT array_send(coalesce(array_agg(w.user_id), '{}')) AS users,
       array_send(coalesce(array_agg(w.movie_id), '{}')) AS movies,
       array_send(coalesce(array_agg((w.rating * 2)::int2), '{}')) AS halves
FROM movrec.watch_events w
"""
CITUS_RATINGS_OF_SQL = CITUS_RATINGS_SQL + "WHERE w.user_id = ANY($1)"


def _watermarks() -> list[str | None]:
    """Citus: the xmin of a snapshot of every node, by group (index = group), the lowest
    where one group answers twice; None for a group that did not answer."""
    marks: dict[int, int] = {}
    for r in backend.execute(WATERMARKS_SQL):
        g, x = int(r["grp"]), int(r["xmin"])
        marks[g] = min(x, marks.get(g, x))
    out: list[str | None] = [None] * (max(marks) + 1)
    for g, x in marks.items():
        out[g] = str(x)
    return out


def unpack_array(blob: bytes, dtype: str) -> np.ndarray:
    """A one-dimensional array_send() blob without NULLs as numpy (dtype big-endian, e.g. '>i4')."""
    if int.from_bytes(blob[0:4], "big") == 0:  # no dimensions: empty
        return np.zeros(0, dtype=np.dtype(dtype).newbyteorder("="))
    n = int.from_bytes(blob[12:16], "big")
    # header: ndim, has-nulls flag, element type, then length and lower bound of the dimension;
    # each element: its byte length (int4) and the value
    elements = np.frombuffer(
        blob, dtype=np.dtype([("len", ">i4"), ("v", dtype)]), count=n, offset=20
    )
    return elements["v"].astype(np.dtype(dtype).newbyteorder("="))


def _load_all() -> RatingsIndex:
    global _loads
    _loads += 1
    if backend.distributed():
        return _load_all_distributed()
    r = backend.execute(LOAD_SQL)[0]
    ix = RatingsIndex(
        unpack_array(r["users"], ">i4"),
        unpack_array(r["movies"], ">i4"),
        unpack_array(r["halves"], ">i2").astype(np.int8),
    )
    ix.watermark, ix.tentative, ix.erasures = r["xmin"], set(r["tentative"]), r["erasures"]
    return ix


def _load_all_distributed() -> RatingsIndex:
    """_load_all on Citus: the watermark first, then the rows (see above)."""
    global _watermark_at
    marks = _watermarks()
    _watermark_at = time.monotonic()
    erasures = backend.execute(CITUS_ERASURES_SQL)[0]["erasures"]
    tentative = backend.execute(CITUS_TENTATIVE_SQL, ["text[]"], [marks])[0]["tentative"]
    r = backend.execute(CITUS_RATINGS_SQL)[0]
    ix = RatingsIndex(
        unpack_array(r["users"], ">i4"),
        unpack_array(r["movies"], ">i4"),
        unpack_array(r["halves"], ">i2").astype(np.int8),
    )
    ix.watermark, ix.tentative, ix.erasures = marks, set(tentative), erasures
    return ix


def _refresh_distributed(ix: RatingsIndex, limit: int) -> RatingsIndex:
    with backend.one_connection_per_node():
        fresh = _refresh_distributed_statements(ix, limit)
    return _load_all() if fresh is None else fresh  # (a full load reads shards in parallel)


def _refresh_distributed_statements(ix: RatingsIndex, limit: int) -> RatingsIndex | None:
    """_refresh on Citus: the new watermark first (at most every WATERMARK_EVERY_S; the old
    one serves meanwhile), then the users stamped at or above the old one (and the tentative
    ones), then their ratings.  A group the old watermark lacks (a node added, or one that
    did not answer) reloads everything once the new one has it."""
    global _watermark_at
    old = ix.watermark if isinstance(ix.watermark, list) else []
    marks = old
    if time.monotonic() - _watermark_at >= WATERMARK_EVERY_S:
        fresh = _watermarks()
        _watermark_at = time.monotonic()
        # a group that did not answer now keeps its older mark (older is never unsafe)
        width = max(len(fresh), len(old))
        marks = [
            (fresh[g] if g < len(fresh) else None) or (old[g] if g < len(old) else None)
            for g in range(width)
        ]
        if any(m is not None and (g >= len(old) or old[g] is None) for g, m in enumerate(marks)):
            return None  # reload everything
    if backend.execute(CITUS_ERASURES_SQL)[0]["erasures"] != ix.erasures:
        return None  # reload everything
    groups = [g for g, m in enumerate(old) if m is not None]
    changed = backend.execute(
        citus_changed_sql(len(groups)),
        ["int4[]", "xid8[]", "int4[]", "text[]"],
        [groups, [old[g] for g in groups], sorted(ix.tentative), marks],
    )
    if len(changed) > limit:
        return None  # reload everything
    if changed:
        users = sorted(r["user_id"] for r in changed)
        d = backend.execute(CITUS_RATINGS_OF_SQL, ["int4[]"], [users])[0]
        ix.replace_users(
            users,
            unpack_array(d["users"], ">i4"),
            unpack_array(d["movies"], ">i4"),
            unpack_array(d["halves"], ">i2"),
        )
    ix.watermark, ix.tentative = marks, {r["user_id"] for r in changed if r["recent"]}
    return ix


def _group_name() -> str:
    global _group
    if _group is None:
        _group = str(backend.execute(GROUP_SQL)[0]["name"])
    return _group


def _attach_shared() -> RatingsIndex | None:
    """The index from the server's shared copy (not yet refreshed), or None (always on
    Citus, whose watermark is one xmin per node: there each backend loads its own)."""
    global _loads, _attached, _shared_name
    if backend.distributed():
        return None
    found = shared.attach_current(_group_name(), SHARED_PARTS)
    if found is None:
        return None
    name, arrays = found
    try:
        ix = RatingsIndex.from_base_arrays(arrays)
        watermark, erasures = (int(x) for x in arrays["state"])
    except (ValueError, KeyError):
        return None
    ix.watermark, ix.erasures = str(watermark), erasures
    ix.tentative = {int(u) for u in arrays["tentative"]}
    _loads, _attached, _shared_name = _loads + 1, _attached + 1, name
    return ix


def _publish(ix: RatingsIndex) -> RatingsIndex:
    """Share ix's base arrays (it has no overlay), and use the shared copy from now on."""
    global _shared_name
    if backend.distributed() or not isinstance(ix.watermark, str):
        return ix
    try:
        arrays = ix.base_arrays()
    except ValueError:  # an overlay left in it: nothing of its own to share
        return ix
    arrays["state"] = np.array([int(ix.watermark), int(ix.erasures)], dtype=np.int64)
    arrays["tentative"] = np.array(sorted(ix.tentative), dtype=np.int64)
    name = f"{_group_name()}-{ix.watermark}-{ix.erasures}-{os.getpid()}-{time.time_ns()}"
    mapped = shared.publish(_group_name(), name, arrays)
    if mapped is None:
        return ix
    shared_ix = RatingsIndex.from_base_arrays(mapped)
    shared_ix.watermark, shared_ix.tentative, shared_ix.erasures = (
        ix.watermark,
        set(ix.tentative),
        ix.erasures,
    )
    shared_ix.version = ix.version + 1
    _shared_name = name
    return shared_ix


def _refresh(ix: RatingsIndex) -> RatingsIndex:
    """Bring the cache up to date (see the invalidation rule above); may reload it all."""
    limit = max(RELOAD_MIN_USERS, int(RELOAD_FRACTION * ix.n_users))
    if backend.distributed():
        return _refresh_distributed(ix, limit)
    r = backend.execute(
        REFRESH_SQL, ["text", "int4[]", "int8"], [ix.watermark, sorted(ix.tentative), limit]
    )[0]
    if r["n_changed"] > limit or r["erasures"] != ix.erasures:
        return _load_all()
    if r["n_changed"]:
        ix.replace_users(
            r["changed"],
            unpack_array(r["users"], ">i4"),
            unpack_array(r["movies"], ">i4"),
            unpack_array(r["halves"], ">i2"),
        )
    ix.watermark, ix.tentative = r["xmin"], set(r["tentative"])
    return ix


def current_index() -> RatingsIndex:
    """This backend's ratings, refreshed; on first use mapped from the server's shared copy
    (then refreshed) or loaded from the database."""
    global _index, _shared_name, _tried_base
    try:
        if _index is None:
            attached = _attach_shared()
            ix = _load_all() if attached is None else _refresh(attached)
        else:
            ix = _refresh(_index)
        # A load or a compaction leaves private base arrays: share them (once per base).
        tried = _tried_base() if _tried_base is not None else None
        if not shared.shares(ix.u_movie) and ix.u_movie is not tried:
            _shared_name, _tried_base = None, weakref.ref(ix.u_movie)
            if not ix.overrides:
                ix = _publish(ix)
        _index = ix
    except BaseException:
        _index = None  # half-changed: start again next time
        raise
    return _index


def cache_info() -> dict[str, Any]:
    """What this backend holds (for tests and `movrec cf status`)."""
    if _index is None:
        return {"loaded": False}
    return {
        "loaded": True,
        "loads": _loads,
        "users": _index.n_users,
        "movies": _index.n_movies,
        "ratings": _index.nnz,
        "overlay_users": len(_index.overrides),
        "overlay_ratings": _index.override_ratings,
        "version": _index.version,
        "watermark": _index.watermark,
        "attached": _attached,
        "shared": _shared_name is not None and shared.shares(_index.u_movie),
    }
