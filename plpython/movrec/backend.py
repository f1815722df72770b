"""Glue between movrec and the PL/Python runtime: activation, settings, plans, errors.

Only this module and the ``*_from_sql``/entry functions touch ``plpy``; the ML
code takes and returns numpy arrays so it runs (and is tested) outside PostgreSQL.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from movrec import __version__
from movrec.errors import MovrecError

try:  # present only inside a backend
    import plpy  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - outside PostgreSQL
    plpy = None

F = TypeVar("F", bound=Callable[..., Any])

# Per-backend state lives here (module globals persist for the backend's life).
_plans: dict[str, Any] = {}
_threads = 1


def in_server() -> bool:
    """True in a PostgreSQL backend; False where this code runs in the CLI's process over a
    connection (movrec_cli.inprocess: the portable install's jobs), or outside both."""
    return plpy is not None and not getattr(plpy, "in_cli", False)


def activate(threads: int = 1) -> str:
    """Called once per backend by movrec._activate() after thread caps are set."""
    global _threads
    _threads = max(1, threads)
    if in_server():
        from movrec import shared

        shared.keeper_parent = os.getppid()  # the postmaster: a shared copy's keeper ends with it
    return f"movrec {__version__}"


def threads() -> int:
    return _threads


def train_threads() -> int:
    """Threads for training: movrec.settings.train_threads, default all cores (a batch job)."""
    value = settings()["train_threads"]
    return int(value) if value else (os.cpu_count() or 1)


# What a database whose SQL predates movrec.settings (0.1.0, until `movrec install` or
# ALTER EXTENSION movrec UPDATE has run) trains with: the column defaults of that table.
SETTINGS_BEFORE_0_2: dict[str, Any] = {"threads": 1, "train_threads": None, "device": "auto"}


def settings() -> dict[str, Any]:
    """The row of movrec.settings.  Privileged code reads what steers it from there, never
    from a session's SET: a session could point code that runs as the owner anywhere."""
    if not execute("SELECT to_regclass('movrec.settings') IS NOT NULL AS ok")[0]["ok"]:
        return dict(SETTINGS_BEFORE_0_2)
    return dict(execute("SELECT * FROM movrec.settings")[0])


def statement_age_s() -> float:
    """Seconds since the current statement began (0 outside a server): what a backend spent
    before the Python code that asks, loading PL/Python and movrec included."""
    if not in_server():
        return 0.0
    return float(
        execute("SELECT extract(epoch FROM clock_timestamp() - statement_timestamp()) AS s")[0]["s"]
    )


def installed_venv() -> str | None:
    """The venv pinned in movrec.installs (what movrec._activate() loaded)."""
    rows = execute(
        "SELECT venv FROM movrec.installs WHERE venv IS NOT NULL ORDER BY install_id DESC LIMIT 1"
    )
    return rows[0]["venv"] if rows else None


_distributed = False


def distributed() -> bool:
    """True where movrec.distribute() laid this database out over Citus (watch_events is a
    distributed table).  Remembered once true: a distributed layout is never undone.  (Read
    from the catalogue, as movrec._distributed() does: an older release's SQL lacks it.)"""
    global _distributed
    if not _distributed and execute(CITUS_SQL)[0]["citus"]:
        _distributed = bool(execute(DISTRIBUTED_SQL)[0]["d"])
    return _distributed


CITUS_SQL = "SELECT to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL AS citus"
DISTRIBUTED_SQL = """
SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition
               WHERE logicalrelid = to_regclass('movrec.watch_events')) AS d
"""


# Citus's executor opens up to 16 connections per worker for a statement over many shards
# when its tasks are slow to start (a busy machine): for a small statement that costs more
# than its tasks (55 ms against 140 ms, 32 shards, measured on the local 3-node cluster).
POOL_SQL = "SELECT current_setting('citus.max_adaptive_executor_pool_size', true) AS v"
SET_POOL_SQL = "SELECT set_config('citus.max_adaptive_executor_pool_size', $1, true)"


@contextlib.contextmanager
def one_connection_per_node() -> Iterator[None]:
    """Citus: the statements run inside use one connection per node (the one this transaction
    already holds), then the setting is as it was.  Nothing changes without Citus."""
    before = execute(POOL_SQL)[0]["v"]
    if before is None:
        yield
        return
    execute(SET_POOL_SQL, ["text"], ["1"])
    try:
        yield
    finally:
        execute(SET_POOL_SQL, ["text"], [before])


def plan(sql: str, types: Sequence[str] = ()) -> Any:
    """A prepared plan, cached for the life of the backend."""
    key = sql
    p = _plans.get(key)
    if p is None:
        p = _plans[key] = plpy.prepare(sql, list(types))
    return p


def execute(sql: str, types: Sequence[str] = (), args: Sequence[Any] = ()) -> Any:
    return plpy.execute(plan(sql, types), list(args))


@contextlib.contextmanager
def try_advisory_xact_lock(space: int, key: str) -> Iterator[bool]:
    """True when this backend took the advisory lock (space, hash of key), held until its
    transaction ends; False when another holds it.  Never waits."""
    h = zlib.crc32(key.encode()) - 2**31  # an int4
    rows = execute("SELECT pg_try_advisory_xact_lock($1, $2) AS ok", ["int4", "int4"], [space, h])
    yield bool(rows[0]["ok"])


# How often check_interrupts() asks PostgreSQL: the latency of a cancel or terminate in long
# Python work is this plus one batch.  A trivial prepared SELECT costs a few microseconds
# (5.6 us measured by bench/interrupts.py; a call between checks 0.2 us), so at 10 a second it
# is lost in the noise.
INTERRUPT_CHECK_S = 0.1
_next_interrupt_check = 0.0


def check_interrupts() -> None:
    """Let PostgreSQL act on a pending cancel or terminate now; call it every batch of long
    Python work (training steps, tokenizing, scoring chunks).

    Python code runs without PostgreSQL's interrupt checks: a pg_cancel_backend() or
    pg_terminate_backend() waits for the next plpy call, which numpy or torch work may not
    make for minutes.  A plpy call runs the executor, which processes pending interrupts: a
    cancel raises here (as plpy.SPIError, SQLSTATE 57014) and a terminate ends the backend.
    Rate-limited by the clock (one query per INTERRUPT_CHECK_S), so calling it per batch costs
    a clock read; outside a backend it does nothing.
    """
    global _next_interrupt_check
    if plpy is None:
        return
    now = time.monotonic()
    if now < _next_interrupt_check:
        return
    _next_interrupt_check = now + INTERRUPT_CHECK_S
    plpy.execute(plan("SELECT 1"))


def is_interrupt(error: BaseException) -> bool:
    """True for a cancel, statement timeout or shutdown (SQLSTATE class 57): an error that must
    end the whole call, never be caught as one job's or one cache's failure."""
    return str(getattr(error, "sqlstate", "") or "").startswith("57")


def notice(message: str) -> None:
    if plpy is not None:
        plpy.notice(message)
    else:  # pragma: no cover
        print(message)


def warning(message: str) -> None:
    if plpy is not None:
        plpy.warning(message)
    else:  # pragma: no cover
        print(message)


def sql_entry(fn: F) -> F:
    """Turn MovrecError into a clean PostgreSQL ERROR with SQLSTATE, hint and detail."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MovrecError as e:
            extra = {k: v for k, v in (("hint", e.hint), ("detail", e.detail)) if v}
            plpy.error(str(e), sqlstate=e.sqlstate, **extra)

    return wrapper  # type: ignore[return-value]
