"""movrec's backend code in the CLI's own process, against a database over psycopg.

The portable install (managed PostgreSQL: no PL/Python) runs training, deploy and the other
torch jobs here instead of in a backend.  That code talks to the database only through the
few calls of PL/Python's ``plpy`` module (execute, prepare, cursor, notice, warning, error,
subtransaction); :class:`Plpy` gives the same calls over one psycopg connection, so the very
functions the full install runs in a backend (``training.train_from_sql``,
``registry.deploy_model``, ...) run here unchanged.

Rows come back as plpy gives them: dicts keyed by column name, json and jsonb as text.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.string import TextLoader

from movrec_cli.errors import CliError
from movrec_cli.output import note

_PARAM = re.compile(r"\$(\d+)")


class PlpyError(Exception):
    """What plpy.error() raises here: a movrec error with its SQLSTATE (sql_entry's mapping)."""

    def __init__(self, message: str, sqlstate: str | None = None, **extra: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.hint = extra.get("hint")
        self.detail = extra.get("detail")


def _as_plpy(cur: psycopg.Cursor[Any]) -> None:
    """json and jsonb as text, as plpy hands them over (this cursor only)."""
    for kind in ("json", "jsonb"):
        cur.adapters.register_loader(kind, TextLoader)


class Plan:
    """plpy.prepare(): the statement with each $n cast to its declared type."""

    def __init__(self, sql: str, types: Sequence[str]) -> None:
        def cast(m: re.Match[str]) -> str:
            i = int(m.group(1))
            return f"({m.group(0)}::{types[i - 1]})" if i <= len(types) else m.group(0)

        self.sql = _PARAM.sub(cast, sql) if types else sql


class Cursor:
    """plpy.cursor(): rows fetched in batches from a server-side cursor."""

    def __init__(self, conn: psycopg.Connection, sql: str) -> None:
        self._cur = conn.cursor(name="movrec_inprocess", row_factory=dict_row)
        _as_plpy(self._cur)
        self._cur.execute(sql)

    def fetch(self, n: int) -> list[dict[str, Any]]:
        rows = self._cur.fetchmany(n)
        if not rows:
            self._cur.close()
        return rows


class Plpy:
    """The plpy calls movrec's backend code makes, over one psycopg connection."""

    in_cli = True  # movrec.backend.in_server() is False under it

    class SPIError(psycopg.Error):
        """plpy.SPIError: a database error (psycopg's)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn

    def prepare(self, sql: str, types: Sequence[str] | None = None) -> Plan:
        return Plan(sql, list(types or ()))

    def execute(self, query: str | Plan, args: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        sql = query.sql if isinstance(query, Plan) else query
        with psycopg.RawCursor(self.conn, row_factory=dict_row) as cur:
            _as_plpy(cur)
            cur.execute(sql, list(args) if args else None)
            return cur.fetchall() if cur.description else []

    def cursor(self, sql: str) -> Cursor:
        return Cursor(self.conn, sql)

    def subtransaction(self) -> contextlib.AbstractContextManager[Any]:
        return self.conn.transaction()

    def notice(self, message: str) -> None:
        note(message)

    def warning(self, message: str) -> None:
        note(f"WARNING: {message}")

    def error(self, message: str, sqlstate: str | None = None, **extra: str) -> None:
        raise PlpyError(message, sqlstate, **extra)


@contextlib.contextmanager
def backend(conn: psycopg.Connection) -> Iterator[Plpy]:
    """movrec's backend code talks to ``conn`` while this lasts (in one transaction of it).

    Errors leave as CliError with the SQLSTATE; the transaction is rolled back, so a failed
    job changes nothing, as in a backend."""
    from movrec import backend as movrec_backend

    shim = Plpy(conn)
    saved = movrec_backend.plpy, sys.modules.get("plpy")
    movrec_backend.plpy = shim
    sys.modules["plpy"] = shim  # type: ignore[assignment]  # the modules that import plpy
    try:
        with conn.transaction():
            yield shim
    except PlpyError as e:
        hint = f" (hint: {e.hint})" if e.hint else ""
        raise CliError(f"{e} [SQLSTATE {e.sqlstate}]{hint}") from None
    except psycopg.Error as e:
        state = f" [SQLSTATE {e.sqlstate}]" if e.sqlstate else ""
        raise CliError(f"{(e.diag.message_primary or str(e)).strip()}{state}") from None
    finally:
        movrec_backend.plpy = saved[0]
        if saved[1] is None:
            sys.modules.pop("plpy", None)
        else:
            sys.modules["plpy"] = saved[1]


def in_cli() -> bool:
    """True while movrec's backend code runs in this process (not in a PostgreSQL backend)."""
    from movrec import backend as movrec_backend

    return isinstance(movrec_backend.plpy, Plpy)


def train(conn: psycopg.Connection, kind: str, options: str, deploy: bool) -> int:
    """movrec.train() of a portable install, here: torch in this process, the registry row and
    the published vectors written over ``conn`` by the full install's own code."""
    from movrec import training

    with backend(conn) as plpy:
        plpy.execute("SELECT movrec._require_primary('train()')")
        return int(training.train_from_sql(kind, options, deploy))


def deploy(conn: psycopg.Connection, model_id: int) -> int:
    """movrec.deploy() of a portable install: the front door's checks in SQL, then the full
    install's deploy (checkpoint loaded with torch here, vectors published over ``conn``)."""
    from movrec import registry

    with backend(conn) as plpy:
        plpy.execute("SELECT movrec._require_primary('deploy()')")
        if not plpy.execute(
            plpy.prepare("SELECT 1 FROM model.registry WHERE model_id = $1", ["int8"]), [model_id]
        ):
            raise PlpyError(
                f"deploy(): model {model_id} is not in model.registry",
                "P0002",
                hint="SELECT model_id, kind, metrics FROM model.registry",
            )
        plpy.execute(
            plpy.prepare("SELECT movrec._require_current_catalogue($1, 'deploy()')", ["int8"]),
            [model_id],
        )
        return int(registry.deploy(model_id))


def rollback(conn: psycopg.Connection) -> int:
    """movrec.rollback() of a portable install: the full install's choice and bookkeeping in
    SQL (movrec._rollback_plan, movrec._rollback_record: the same errors, the same history),
    the deploy between them here; all in one transaction."""
    from movrec import registry

    with backend(conn) as plpy:
        plpy.execute("SELECT movrec._require_primary('rollback()')")
        plan = plpy.execute("SELECT * FROM movrec._rollback_plan()")[0]
        registry.deploy_model(int(plan["model_id"]))
        plpy.execute(
            plpy.prepare("SELECT movrec._rollback_record($1, $2, $3)", ["int8", "int8", "int8"]),
            [plan["undone_deployment"], plan["undone_model"], plan["previous_deployment"]],
        )
        return int(plan["model_id"])


def deploy_best(conn: psycopg.Connection, metric: str) -> int:
    """movrec.deploy_best(metric) of a portable install: the full install's choice in SQL
    (movrec._best_model: the same errors), then :func:`deploy` of that model."""
    with backend(conn) as plpy:
        plpy.execute("SELECT movrec._require_primary('deploy_best()')")
        best = plpy.execute(plpy.prepare("SELECT movrec._best_model($1) AS m", ["text"]), [metric])[
            0
        ]["m"]
    return deploy(conn, int(best))


def cf_drain(conn: psycopg.Connection, max_jobs: int) -> int:
    """movrec.cf_drain() of a portable install, here: the full install's CF drain (its sparse
    matrix cached in this process, as a backend caches it), one subtransaction per job."""
    from movrec import cf

    with backend(conn) as plpy:
        plpy.execute("SELECT movrec._require_primary('cf_drain()')")
        return int(cf.drain_from_sql(max_jobs))


def user_to_user(conn: psycopg.Connection, user_id: int, **options: Any) -> int:
    """movrec.user_to_user(user, ..., store => true) of a portable install, here; returns rows."""
    from movrec import cf

    o = options
    with backend(conn):
        rows = cf.user_to_user_from_sql(
            user_id,
            o["min_corr"],
            o["min_overlap"],
            o["min_raters"],
            o["shrinkage"],
            o["damping"],
            o["baseline"],
            o.get("store", True),
        )
        return len(rows)


def tokenize(conn: psycopg.Connection, options: str) -> list[tuple[str, int, int, float]]:
    """movrec.tokenize() of a portable install, here: the full install's tokenizer."""
    from movrec import backend as movrec_backend
    from movrec import tokenizer

    with backend(conn):
        return list(movrec_backend.sql_entry(tokenizer.tokenize_from_sql)(options))


def embed_new_movies(conn: psycopg.Connection, max_movies: int | None = None) -> int:
    """movrec.embed_new_movies() of a portable install, here (torch: the champion's movie
    sub-network); then the serving vectors follow the new rows."""
    from movrec import backend as movrec_backend
    from movrec import coldstart

    with backend(conn) as plpy:
        n = int(movrec_backend.sql_entry(coldstart.embed_new_movies)(max_movies))
        if n:
            plpy.execute("SELECT movrec.publish_serving_vectors()")
        return n


def evaluate(conn: psycopg.Connection, model_id: int, test_table: str | None) -> list[Any]:
    """movrec.evaluate() of a portable install, here; the table is read with this session's own
    rights (the front door's privilege check is the connection itself)."""
    from movrec import backend as movrec_backend
    from movrec import evaluation

    with backend(conn) as plpy:
        plpy.execute("SELECT movrec._require_primary('evaluate()')")
        table = None
        if test_table is not None:  # a name the server resolves, never text spliced as given
            table = plpy.execute(
                plpy.prepare("SELECT $1::regclass::text AS t", ["text"]), [test_table]
            )[0]["t"]
        return list(movrec_backend.sql_entry(evaluation.evaluate_from_sql)(model_id, table))
