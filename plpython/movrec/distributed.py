"""Data-parallel training of the mf model with PyTorch DDP: one process per shard of users.

Each of ``world`` processes holds the ratings of the users with ``user_id % world == rank``
(read by the caller, e.g. ``movrec train --nproc N``) and a full replica of the model; DDP
averages the gradients of every step across the processes (gloo on CPU, NCCL on CUDA), so
the replicas stay equal.  A step takes ``batch_size / world`` rows from every shard: one
global step sees ``batch_size`` rows, as one process's step does, and an epoch has the same
number of steps, so the learning rate and schedule of a single-process run carry over.

The validation split is a hash of (user, movie, seed), not a permutation of row numbers:
a row is held out whatever the number of processes and whichever shard reads it, so runs
with 1 and N processes are scored on the same ratings.  Validation figures are summed over
the shards; early stopping then decides the same in every process.

Only the rating objective with Adam (the mf model's default): ALS is exact per user and
per movie and shards by itself differently; the hybrid's ranking head samples negatives
over every movie and calibrates on the whole validation split.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from movrec.errors import InvalidArgument, NotEnoughData
from movrec.evaluation import pack_split, rows_fingerprint
from movrec.metrics import rating_metrics
from movrec.train_options import TrainOptions
from movrec.training import MIN_RATINGS, build_model

KINDS = ("mf",)
_MIX1, _MIX2, _GOLDEN = (
    np.uint64(0xBF58476D1CE4E5B9),
    np.uint64(0x94D049BB133111EB),
    np.uint64(0x9E3779B97F4A7C15),
)


@dataclass
class Shard:
    users: np.ndarray  # int64 ids, this process's users only
    movies: np.ndarray  # int64 ids
    ratings: np.ndarray  # float32


def held_out(users: np.ndarray, movies: np.ndarray, seed: int, fraction: float) -> np.ndarray:
    """Whether each (user, movie) is a validation row: splitmix64 of the pair and the seed
    below ``fraction`` of 2**64, so the same pair is held out in any shard and any run."""
    x = (np.asarray(users, dtype=np.uint64) << np.uint64(32)) | np.asarray(movies, np.uint64)
    x = x + np.uint64((seed + 1) * int(_GOLDEN) % 2**64)  # Python ints: no overflow warning
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) < fraction * float(1 << 53)


def check(kind: str, opts: TrainOptions, world: int) -> None:
    """What a DDP run cannot do, refused before any process starts (InvalidArgument)."""
    if kind not in KINDS:
        raise InvalidArgument(
            f"--nproc trains the mf model only, not {kind!r}",
            hint="train the others in one process (leave out --nproc)",
        )
    if opts.solver != "adam":
        raise InvalidArgument(
            f"--nproc averages Adam's gradients; solver {opts.solver!r} runs in one process",
            hint='leave out --nproc, or train with "solver": "adam"',
        )
    if opts.searched:
        raise InvalidArgument(
            "--nproc runs the options given, not a budgeted search",
            hint="pass --budget-s 0 with the options to use",
        )
    if world < 1:
        raise InvalidArgument(f"--nproc must be at least 1, got {world}")


def _sum(values: list[float], device: str) -> list[float]:
    """The element-wise sum of ``values`` over all processes (float64)."""
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return [float(v) for v in t.cpu()]


def _union(ids: np.ndarray) -> np.ndarray:
    """The sorted union of every process's ``ids``."""
    import torch.distributed as dist

    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, np.unique(ids))
    return np.unique(np.concatenate(parts))


def fit_shard(
    shard: Shard, kind: str, opts: TrainOptions, device: str, progress: Any = print
) -> tuple[Any, dict[str, Any], tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
    """Train this process's replica on its shard, in step with the others (the process group
    is initialised); returns (model on CPU, metrics, and on rank 0 all ratings gathered as
    (users, movies, ratings) for the registry's fingerprint and split; None elsewhere).
    Every process returns the same model and metrics."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    rank, world = dist.get_rank(), dist.get_world_size()
    started = time.perf_counter()
    torch.manual_seed(opts.seed)
    val = held_out(shard.users, shard.movies, opts.seed, opts.val_fraction)
    user_ids, movie_ids = _union(shard.users), _union(shard.movies)
    u_idx = np.searchsorted(user_ids, shard.users)
    m_idx = np.searchsorted(movie_ids, shard.movies)
    tr_rows, va_rows = np.flatnonzero(~val), np.flatnonzero(val)
    r_sum, n_train, n_val, n_all = _sum(
        [
            float(shard.ratings[tr_rows].sum(dtype=np.float64)),
            len(tr_rows),
            len(va_rows),
            len(shard.ratings),
        ],
        device,
    )
    if n_all < MIN_RATINGS or n_train == 0:
        raise NotEnoughData(f"need at least {MIN_RATINGS} ratings to train, have {int(n_all)}")
    mean = r_sum / n_train
    model = build_model(kind, user_ids, movie_ids, mean, opts, None).to(device)
    ddp = DistributedDataParallel(model, device_ids=[device] if device.startswith("cuda") else None)
    optimizer = torch.optim.Adam(ddp.parameters(), lr=opts.lr, fused=True)
    steps = max(1, math.ceil(n_train / opts.batch_size))  # per epoch, as one process takes
    total_steps = opts.epochs * steps
    scheduler = (
        torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / total_steps, 1.0)))
        )
        if opts.schedule == "cosine"
        else None
    )
    U = torch.from_numpy(u_idx.astype(np.int64)).to(device)
    M = torch.from_numpy(m_idx.astype(np.int64)).to(device)
    R = torch.from_numpy(shard.ratings.astype(np.float32)).to(device)
    tr, va = torch.from_numpy(tr_rows).to(device), torch.from_numpy(va_rows).to(device)
    gen = torch.Generator(device="cpu").manual_seed(opts.seed * 1000 + rank)
    base = (
        rating_metrics(np.full(len(va_rows), mean), shard.ratings[va_rows]) if len(va_rows) else {}
    )
    b_sse, b_sae = _sum(
        [base.get("rmse", 0.0) ** 2 * len(va_rows), base.get("mae", 0.0) * len(va_rows)], device
    )

    def validate() -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            pred = model(U[va], M[va]).clamp(0.5, 5.0)
            err = pred - R[va]
            sse, sae = float((err.double() ** 2).sum()), float(err.double().abs().sum())
        model.train()
        sse, sae = _sum([sse, sae], device)
        return {"rmse": math.sqrt(sse / n_val), "mae": sae / n_val} if n_val else {}

    history: list[dict[str, Any]] = []
    best_value, best_epoch = math.inf, 0
    best: dict[str, float] = {}
    best_state: dict[str, Any] = {}
    cosine = opts.schedule == "cosine"
    metrics_now: dict[str, float] = {}
    for epoch in range(1, opts.epochs + 1):
        order = tr[torch.randperm(len(tr), generator=gen).to(device)]
        sse = 0.0
        for batch in torch.tensor_split(order, steps):  # the same number of steps everywhere
            u, m, r = U[batch], M[batch], R[batch]
            n = max(1, len(batch))
            loss_sum = ((ddp(u, m) - r) ** 2).sum()
            objective = loss_sum / n + opts.reg * model.regularizer(u, m).sum() / n
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            sse += float(loss_sum.detach())
        (sse,) = _sum([sse], device)
        metrics_now = validate()
        history.append(
            {
                "epoch": epoch,
                "train_rmse": round(math.sqrt(sse / n_train), 5),
                **{f"val_{k}": round(v, 5) for k, v in metrics_now.items()},
            }
        )
        if rank == 0:
            shown = " ".join(f"{k} {v:.4f}" for k, v in history[-1].items() if k != "epoch")
            progress(
                f"movrec train {kind} (DDP, {world} processes): epoch {epoch}/{opts.epochs} "
                f"{shown} ({time.perf_counter() - started:.1f} s)"
            )
        if cosine or not metrics_now:
            continue
        if metrics_now["rmse"] < best_value - 1e-4:
            best_value, best_epoch, best = metrics_now["rmse"], epoch, metrics_now
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= opts.patience:
            if rank == 0:
                progress(f"movrec train {kind}: early stop, best epoch {best_epoch}")
            break
    if best_state:
        model.load_state_dict(best_state)
    else:
        best_epoch, best = len(history), metrics_now
    gathered: list[Any] = [None] * world if rank == 0 else []
    dist.gather_object(
        (shard.users, shard.movies, shard.ratings), gathered if rank == 0 else None, dst=0
    )
    everything = (
        tuple(np.concatenate([g[i] for g in gathered]) for i in range(3)) if rank == 0 else None
    )
    metrics: dict[str, Any] = {
        "val_rmse": best.get("rmse"),
        "val_mae": best.get("mae"),
        "best_epoch": best_epoch,
        "baseline_val_rmse": math.sqrt(b_sse / n_val) if n_val else None,
        "baseline_val_mae": b_sae / n_val if n_val else None,
        "n_train": int(n_train),
        "n_val": int(n_val),
        "device": device,
        "nproc": world,
        "split": "hash",
        "train_seconds": round(time.perf_counter() - started, 3),
        "history": history,
    }
    return model.cpu().eval(), metrics, everything  # type: ignore[return-value]


def registry_parts(
    everything: tuple[np.ndarray, np.ndarray, np.ndarray], opts: TrainOptions
) -> tuple[dict[str, Any], bytes]:
    """(the snapshot's figures computed from the ratings, the packed validation split)."""
    users, movies, ratings = everything
    val = held_out(users, movies, opts.seed, opts.val_fraction)
    snapshot = {
        "n_users": int(len(np.unique(users))),
        "n_movies": int(len(np.unique(movies))),
        "rows_sha256": rows_fingerprint(users, movies, ratings),
    }
    return snapshot, pack_split(users[val], movies[val], ratings[val])
