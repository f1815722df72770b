"""Training: ratings -> numpy -> torch model -> registry (and deploy).

``fit`` is pure (arrays in, model and metrics out) so it runs the same from
SQL (``train_from_sql``), from tests and from benchmarks.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from movrec import backend
from movrec.errors import InvalidArgument, NotEnoughData

MIN_RATINGS = 10


@dataclass
class TrainOptions:
    epochs: int = 40
    dim: int = 100
    lr: float = 0.005
    reg: float = 0.05
    batch_size: int = 1024
    seed: int = 42
    val_fraction: float = 0.1
    patience: int = 3
    device: str = "auto"

    @classmethod
    def parse(cls, options: dict[str, Any] | None) -> TrainOptions:
        options = dict(options or {})
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise InvalidArgument(
                f"unknown training option(s): {', '.join(unknown)}",
                hint=f"known options: {', '.join(known)}",
            )
        defaults = cls()
        try:
            opts = cls(**{k: type(getattr(defaults, k))(v) for k, v in options.items()})
        except (TypeError, ValueError) as e:
            raise InvalidArgument(f"bad training option: {e}") from None
        if opts.epochs < 1 or opts.dim < 1 or opts.batch_size < 1 or opts.lr <= 0 or opts.reg < 0:
            raise InvalidArgument("epochs, dim, batch_size and lr must be positive, reg >= 0")
        if not 0 < opts.val_fraction < 1:
            raise InvalidArgument(f"val_fraction must be in (0, 1), got {opts.val_fraction}")
        if opts.device not in ("auto", "cpu", "cuda"):
            raise InvalidArgument(f"device must be auto, cpu or cuda, got {opts.device!r}")
        return opts


@dataclass
class Ratings:
    users: np.ndarray  # int64 ids
    movies: np.ndarray  # int64 ids
    ratings: np.ndarray  # float32

    def __len__(self) -> int:
        return len(self.ratings)


def split(n: int, seed: int, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Seeded shuffle; the first (1 - val_fraction) is training, the rest validation."""
    perm = np.random.default_rng(seed).permutation(n)
    cut = int(round(n * (1 - val_fraction)))
    return perm[:cut], perm[cut:]


def rmse_mae(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    err = pred - truth
    return float(np.sqrt(np.mean(err**2))), float(np.mean(np.abs(err)))


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise InvalidArgument("device 'cuda' requested but torch sees no CUDA device")
    return requested


def fit(
    data: Ratings,
    kind: str = "mf",
    opts: TrainOptions | None = None,
    progress: Callable[[str], None] = lambda _msg: None,
) -> tuple[Any, dict[str, Any]]:
    """Train a model on the seeded split; returns (model on CPU, metrics)."""
    import torch

    from movrec.models import MODELS

    opts = opts or TrainOptions()
    if kind not in MODELS:
        raise InvalidArgument(f"unknown model kind {kind!r}", hint=f"one of: {', '.join(MODELS)}")
    if len(data) < MIN_RATINGS:
        raise NotEnoughData(f"need at least {MIN_RATINGS} ratings to train, have {len(data)}")
    torch.manual_seed(opts.seed)
    device = pick_device(opts.device)

    user_ids, u_idx = np.unique(data.users, return_inverse=True)
    movie_ids, m_idx = np.unique(data.movies, return_inverse=True)
    train_rows, val_rows = split(len(data), opts.seed, opts.val_fraction)
    mean = float(data.ratings[train_rows].mean())

    model = MODELS[kind](
        torch.from_numpy(user_ids), torch.from_numpy(movie_ids), dim=opts.dim, global_mean=mean
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=opts.lr)
    U = torch.from_numpy(u_idx.astype(np.int64)).to(device)
    M = torch.from_numpy(m_idx.astype(np.int64)).to(device)
    R = torch.from_numpy(data.ratings.astype(np.float32)).to(device)
    tr = torch.from_numpy(train_rows).to(device)
    va = torch.from_numpy(val_rows).to(device)
    gen = torch.Generator(device="cpu").manual_seed(opts.seed)

    def evaluate(rows: torch.Tensor) -> tuple[float, float]:
        model.eval()
        with torch.no_grad():
            pred = model(U[rows], M[rows]).clamp(0.5, 5.0).cpu().numpy()
        model.train()
        return rmse_mae(pred, R[rows].cpu().numpy())

    best = (math.inf, 0.0, 0)
    best_state: dict[str, Any] = {}
    history = []
    started = time.perf_counter()
    for epoch in range(1, opts.epochs + 1):
        order = tr[torch.randperm(len(tr), generator=gen).to(device)]
        total = 0.0
        for batch in order.split(opts.batch_size):
            u, m, r = U[batch], M[batch], R[batch]
            loss = ((model(u, m) - r) ** 2).mean()
            objective = loss + opts.reg * model.regularizer(u, m).mean()
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            total += float(loss) * len(batch)
        train_rmse = math.sqrt(total / len(tr))
        val_rmse, val_mae = evaluate(va) if len(va) else (train_rmse, math.nan)
        history.append(
            {"epoch": epoch, "train_rmse": round(train_rmse, 5), "val_rmse": round(val_rmse, 5)}
        )
        progress(
            f"movrec train {kind}: epoch {epoch}/{opts.epochs} train RMSE {train_rmse:.4f} "
            f"val RMSE {val_rmse:.4f} ({time.perf_counter() - started:.1f} s)"
        )
        if val_rmse < best[0] - 1e-4:
            best = (val_rmse, val_mae, epoch)
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch - best[2] >= opts.patience:
            progress(f"movrec train {kind}: early stop, best epoch {best[2]}")
            break
    model.load_state_dict(best_state)
    model = model.cpu().eval()
    baseline_rmse, baseline_mae = rmse_mae(np.full(len(val_rows), mean), data.ratings[val_rows])
    metrics = {
        "val_rmse": best[0],
        "val_mae": best[1],
        "best_epoch": best[2],
        "baseline_val_rmse": baseline_rmse,
        "baseline_val_mae": baseline_mae,
        "n_train": len(train_rows),
        "n_val": len(val_rows),
        "device": device,
        "train_seconds": round(time.perf_counter() - started, 3),
        "history": history,
    }
    return model, metrics


# --- SQL glue ---------------------------------------------------------------

READ_SQL = """
SELECT array_agg(user_id) AS u, array_agg(movie_id) AS m, array_agg(rating) AS r
FROM movrec.watch_events GROUP BY user_id / 512
"""


def _concat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty(0, dtype)


def read_ratings() -> tuple[Ratings, dict[str, Any]]:
    """Ratings into numpy in batches (one row per block of users)."""
    import plpy  # type: ignore[import-not-found]

    users, movies, ratings = [], [], []
    cursor = plpy.cursor(READ_SQL)
    while batch := cursor.fetch(64):
        for row in batch:
            users.append(np.asarray(row["u"], dtype=np.int64))
            movies.append(np.asarray(row["m"], dtype=np.int64))
            ratings.append(np.asarray(row["r"], dtype=np.float32))
    data = Ratings(
        _concat(users, np.int64), _concat(movies, np.int64), _concat(ratings, np.float32)
    )
    snap = plpy.execute(
        "SELECT count(*) AS n, max(rated_at)::text AS max_rated_at FROM movrec.watch_events"
    )[0]
    snapshot = {
        "n_ratings": int(snap["n"]),
        "max_rated_at": snap["max_rated_at"],
        "n_users": int(len(np.unique(data.users))),
        "n_movies": int(len(np.unique(data.movies))),
    }
    return data, snapshot


@backend.sql_entry
def train_from_sql(kind: str, options: str | None, deploy: bool) -> int:
    import torch

    from movrec import registry

    try:
        opts = TrainOptions.parse(json.loads(options) if options else {})
    except json.JSONDecodeError as e:
        raise InvalidArgument(f"options is not valid JSON: {e}") from None
    torch.set_num_threads(backend.train_threads())
    started = time.perf_counter()
    data, snapshot = read_ratings()
    backend.notice(
        f"movrec train {kind}: {snapshot['n_ratings']} ratings, {snapshot['n_users']} users, "
        f"{snapshot['n_movies']} movies"
    )
    model, metrics = fit(data, kind, opts, progress=backend.notice)
    model_id = registry.register(
        model, kind, asdict(opts), snapshot, metrics, duration_s=time.perf_counter() - started
    )
    backend.notice(
        f"movrec train {kind}: model {model_id} val RMSE {metrics['val_rmse']:.4f} "
        f"(global mean {metrics['baseline_val_rmse']:.4f})"
    )
    if deploy:
        registry.deploy_model(model_id)
    return model_id
