"""movrec.doctor(): what this backend sees, each problem with its fix."""

from __future__ import annotations

import os
import sys

from movrec import __version__, backend

Row = tuple[str, bool, str, str | None]


def _venv() -> Row:
    venv = backend.installed_venv()
    if not venv:
        return (
            "venv",
            False,
            "no venv is pinned in movrec.installs",
            "movrec install (pins it), or as a superuser SELECT movrec.pin_venv('/path/.venv')",
        )
    readable = os.access(venv, os.R_OK | os.X_OK)
    return (
        "venv",
        readable,
        f"{venv} ({'readable' if readable else 'NOT readable'} by this backend's OS user)",
        None
        if readable
        else f"chmod -R a+rX {venv} (or put the venv where the server's OS user can read)",
    )


def _search_path() -> Row:
    """Whether the database's search_path names movrec (unqualified recommend(7) works)."""
    rows = backend.execute(
        """SELECT substr(s, strpos(s, '=') + 1) AS path
           FROM pg_db_role_setting d JOIN pg_database db ON db.oid = d.setdatabase,
                unnest(d.setconfig) s
           WHERE db.datname = current_database() AND d.setrole = 0
             AND split_part(s, '=', 1) = 'search_path'"""
    )
    path = rows[0]["path"] if rows else None
    ok = path is not None and "movrec" in path.replace('"', " ").replace(",", " ").split()
    return (
        "search_path",
        ok,
        f"database search_path: {path or '(server default)'}",
        None
        if ok
        else "ALTER DATABASE {} SET search_path = {} (or movrec install)".format(
            backend.execute("SELECT quote_ident(current_database()) AS d")[0]["d"],
            f"{path}, movrec" if path else '"$user", public, movrec',
        ),
    )


def _threads() -> Row:
    env = {
        v: os.environ.get(v) for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    }
    ok = all(x is not None for x in env.values())
    return (
        "threads",
        ok,
        f"movrec.settings.threads={backend.threads()} "
        + " ".join(f"{k}={v}" for k, v in env.items()),
        None if ok else "UPDATE movrec.settings SET threads = ...; new backends use it",
    )


def _torch() -> list[Row]:
    try:
        import torch
    except Exception as e:  # noqa: BLE001 - any import failure is the finding
        return [
            ("torch", False, f"cannot import torch: {e}", "pip install torch==2.13.0 into the venv")
        ]
    requested = backend.settings()["device"]
    cuda = torch.cuda.is_available()
    device = "cuda" if (requested == "cuda" or (requested == "auto" and cuda)) else "cpu"
    rows: list[Row] = [
        ("torch", True, f"torch {torch.__version__}, {torch.get_num_threads()} threads", None)
    ]
    detail = f"{torch.cuda.get_device_name(0)}" if cuda else "no CUDA device visible"
    rows.append(
        (
            "device",
            not (requested == "cuda" and not cuda),
            f"movrec.settings.device={requested} -> {device} ({detail})",
            "UPDATE movrec.settings SET device = 'auto', or run on a host with a GPU"
            if requested == "cuda" and not cuda
            else None,
        )
    )
    return rows


def checks() -> list[Row]:
    import numpy

    rows: list[Row] = [
        ("python", True, f"Python {sys.version.split()[0]} ({sys.platform})", None),
        _venv(),
        ("movrec", True, f"movrec {__version__} from {os.path.dirname(__file__)}", None),
        ("numpy", True, f"numpy {numpy.__version__}", None),
        _threads(),
        _search_path(),
    ]
    rows += _torch()
    vec = backend.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
    rows.append(
        (
            "pgvector",
            bool(vec),
            f"pgvector {vec[0]['extversion']}" if vec else "pgvector not installed",
            None if vec else "CREATE EXTENSION vector",
        )
    )
    champ = backend.execute("SELECT model_id, kind FROM model.champion")
    rows.append(
        (
            "champion",
            bool(champ),
            f"model {champ[0]['model_id']} ({champ[0]['kind']})" if champ else "no model deployed",
            None if champ else "SELECT movrec.train('mf') or `movrec train`",
        )
    )
    if champ:
        rows.append(_serving())
    rows += _citus_workers()
    return rows


# What a worker's doctor() finds, as one line: "failed/all" and the failed checks.
WORKER_DOCTOR_SQL = """
SELECT count(*) FILTER (WHERE NOT ok) || '/' || count(*)
       || coalesce(': ' || string_agg(check_name || ' (' || detail || ')', '; ') FILTER (WHERE NOT ok), '')
FROM movrec.doctor()
"""


def _citus_workers() -> list[Row]:
    """On a distributed install's coordinator, one row per Citus worker: its own doctor()
    (the rating trigger and the delegated recommend() and rate() run there)."""
    if not backend.execute("SELECT movrec._distributed() AS d")[0]["d"]:
        return []
    if not backend.execute("SELECT citus_is_coordinator() AS c")[0]["c"]:
        return []  # a worker: the coordinator's doctor() looks at every worker
    out: list[Row] = []
    for w in backend.execute(
        "SELECT nodename, nodeport, success, result FROM run_command_on_workers($1) "
        "ORDER BY nodename, nodeport",
        ["text"],
        [WORKER_DOCTOR_SQL],
    ):
        failed, _, total = str(w["result"]).partition(":")[0].partition("/")
        ok = bool(w["success"]) and failed == "0"
        detail = (
            f"all {total} checks pass"
            if ok
            else (w["result"] if w["success"] else f"unreachable: {w['result']}")
        )
        out.append(
            (
                f"citus worker {w['nodename']}:{w['nodeport']}",
                ok,
                detail,
                None
                if ok
                else "run `movrec doctor` against that node, and `movrec install --citus`",
            )
        )
    return out


def _serving() -> Row:
    """How this backend holds the champion's movie matrix, and whether its top-k is indexed."""

    from movrec import serving, shared

    side = serving.current_champion()
    if side is None:
        return ("serving", False, "the champion has no movie side", "movrec deploy ID")
    where = (
        f"mapped from {shared.private_dir()}"
        if shared.shares(side.vectors)
        else "a private copy (no usable shared memory directory)"
    )
    index = (
        f"top-k index head {side.index.head.shape[0] - 1} of {side.dim} dims"
        if side.index is not None
        else "top-k scores every movie (no index: small catalogue, or vectors that do not prune)"
    )
    return ("serving", True, f"{len(side.movie_ids)} movies x {side.dim}, {where}; {index}", None)
