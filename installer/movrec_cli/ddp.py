"""`movrec train --nproc N`: N processes train one mf model with PyTorch DDP (movrec.distributed).

This process exports a snapshot (``pg_export_snapshot()``) and holds it while the workers
read; each worker reads its shard of users (``user_id % N = rank``) with binary COPY in
that snapshot, so all shards are of the same ratings whatever is written meanwhile.  Rank 0
gathers what the registry row records (the fingerprint of every rating, the held-out split),
registers the model and deploys it over its connection with the full install's own code (as
a portable install's training does, movrec_cli.inprocess).  `SELECT movrec.train()` stays
one process.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from movrec_cli.errors import CliError
from movrec_cli.output import note

SNAPSHOT_ID = re.compile(r"^[0-9A-F]+-[0-9A-F]+-[0-9]+$")
# One row of `COPY (SELECT int4, int4, float4) TO STDOUT (FORMAT binary)`.
ROW = np.dtype(
    [
        ("n", ">i2"),
        ("l1", ">i4"),
        ("user", ">i4"),
        ("l2", ">i4"),
        ("movie", ">i4"),
        ("l3", ">i4"),
        ("rating", ">f4"),
    ]
)
HEADER_BYTES = 19  # signature (11), flags (4), header extension length (4, zero)
CHUNK_ROWS = 1 << 20  # parsed as they arrive: the raw COPY bytes never all sit in memory


def read_shard(conn: psycopg.Connection, rank: int, world: int) -> Any:
    """This process's users' ratings (``user_id % world = rank``), sorted by (user, movie)."""
    from movrec.distributed import Shard

    sql = (
        "COPY (SELECT user_id::int4, movie_id::int4, rating::float4 FROM movrec.watch_events"
        f" WHERE user_id % {int(world)} = {int(rank)}) TO STDOUT (FORMAT binary)"
    )
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    pending = bytearray()
    header = True
    with conn.cursor().copy(sql) as copy:
        for data in copy:
            pending += data
            if header:
                if len(pending) < HEADER_BYTES:
                    continue
                del pending[:HEADER_BYTES]
                header = False
            whole = (len(pending) // ROW.itemsize) * ROW.itemsize
            if whole >= CHUNK_ROWS * ROW.itemsize:
                parts.append(_columns(bytes(pending[:whole])))
                del pending[:whole]
    if bytes(pending[-2:]) != b"\xff\xff" or (len(pending) - 2) % ROW.itemsize:
        raise CliError("the ratings' binary COPY ended mid-row")
    parts.append(_columns(bytes(pending[:-2])))
    users, movies, ratings = (np.concatenate([p[i] for p in parts]) for i in range(3))
    order = np.lexsort((movies, users))
    return Shard(users[order], movies[order], ratings[order])


def _columns(raw: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = np.frombuffer(raw, dtype=ROW)
    if len(rows) and (np.any(rows["n"] != 3) or np.any(rows["l3"] != 4)):
        raise CliError("unexpected row in the ratings' binary COPY")
    return (
        rows["user"].astype(np.int64),
        rows["movie"].astype(np.int64),
        rows["rating"].astype(np.float32),
    )


def _worker(
    rank: int,
    world: int,
    dsn: str,
    snapshot_id: str,
    snapshot: dict[str, Any],
    kind: str,
    options: dict[str, Any],
    deploy: bool,
    port: int,
    out: str,
) -> None:
    """One DDP process: its shard, its replica; rank 0 writes the model id to ``out``."""
    import torch
    import torch.distributed as dist
    from movrec.distributed import fit_shard
    from movrec.train_options import TrainOptions

    cuda = torch.cuda.is_available() and options.get("device", "auto") != "cpu"
    device = f"cuda:{rank % torch.cuda.device_count()}" if cuda else "cpu"
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group(
        "nccl" if cuda else "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
    )
    try:
        opts = TrainOptions.parse({**options, "device": "cuda" if cuda else "cpu"}, kind)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot_id}'")
            shard = read_shard(conn, rank, world)
            conn.execute("COMMIT")
        model, metrics, everything = fit_shard(shard, kind, opts, device, progress=note)
        if rank == 0:
            assert everything is not None
            Path(out).write_text(
                json.dumps(_register(dsn, model, kind, opts, snapshot, metrics, everything, deploy))
            )
    finally:
        dist.destroy_process_group()


def _register(
    dsn: str,
    model: Any,
    kind: str,
    opts: Any,
    snapshot: dict[str, Any],
    metrics: dict[str, Any],
    everything: tuple[np.ndarray, np.ndarray, np.ndarray],
    deploy: bool,
) -> int:
    from dataclasses import asdict

    from movrec import registry
    from movrec.distributed import registry_parts

    from movrec_cli import inprocess

    figures, split = registry_parts(everything, opts)
    with psycopg.connect(dsn, autocommit=True) as conn, inprocess.backend(conn) as plpy:
        plpy.execute("SELECT movrec._require_primary('train()')")
        params = {**asdict(opts), "nproc": metrics["nproc"]}
        model_id = registry.register(
            model,
            kind,
            params,
            {**snapshot, **figures},
            metrics,
            duration_s=metrics["train_seconds"],
            validation_split=split,
        )
        if deploy:
            registry.deploy_model(model_id)
    return int(model_id)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def train(
    conn: psycopg.Connection, dsn: str, kind: str, options: dict[str, Any], deploy: bool, nproc: int
) -> int:
    """Train ``kind`` with ``nproc`` DDP processes over the ratings ``conn`` sees now; the
    registered model's id.  Options are checked before any process starts."""
    import torch.multiprocessing as mp
    from movrec import errors
    from movrec.distributed import check
    from movrec.train_options import TrainOptions

    try:
        opts = TrainOptions.parse(options, kind)
        check(kind, opts, nproc)
    except errors.MovrecError as e:
        hint = f" (hint: {e.hint})" if getattr(e, "hint", None) else ""
        raise CliError(f"{e}{hint}") from None
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    try:
        snapshot_id = str(conn.execute("SELECT pg_export_snapshot()").fetchone()[0])  # type: ignore[index]
        if not SNAPSHOT_ID.match(snapshot_id):
            raise CliError(f"unexpected snapshot id {snapshot_id!r}")
        n, max_rated_at = conn.execute(
            "SELECT count(*), max(rated_at)::text FROM movrec.watch_events"
        ).fetchone()  # type: ignore[misc]
        snapshot = {"n_ratings": int(n), "max_rated_at": max_rated_at}
        with tempfile.TemporaryDirectory(prefix="movrec-ddp-") as tmp:
            out = str(Path(tmp) / "model_id.json")
            try:
                mp.spawn(
                    _worker,
                    args=(
                        nproc,
                        dsn,
                        snapshot_id,
                        snapshot,
                        kind,
                        options,
                        deploy,
                        _free_port(),
                        out,
                    ),
                    nprocs=nproc,
                    join=True,
                )
            except mp.ProcessRaisedException as e:
                last = str(e).strip().splitlines()[-1]
                raise CliError(f"a DDP training process failed: {last}") from None
            except mp.ProcessExitedException as e:
                raise CliError(f"a DDP training process died: {e}") from None
            return int(json.loads(Path(out).read_text()))
    finally:
        conn.execute("COMMIT")
