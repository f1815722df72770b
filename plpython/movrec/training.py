"""Training: ratings -> numpy -> torch model -> registry (and deploy).

``fit`` is pure (arrays in, model and metrics out) so it runs the same from
SQL (``train_from_sql``), from tests and from benchmarks.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from movrec import backend
from movrec.als import AlternatingLeastSquares
from movrec.content import MovieContent
from movrec.content import empty as empty_content
from movrec.errors import InvalidArgument, NotEnoughData, NullArgument
from movrec.evaluation import pack_split, rows_fingerprint
from movrec.metrics import ranking_metrics, rating_metrics, split
from movrec.train_options import TrainOptions

if TYPE_CHECKING:
    from movrec.models import Model

MIN_RATINGS = 10
DEFAULT_BUDGET_S = 120.0  # movrec.settings.train_budget_s's default, for installs without it
EPOCH_NOTICE_S = 5.0  # within an epoch, a progress NOTICE at most this often
BLENDS = (0.25, 0.5, 1.0)  # candidate weights of the predicted rating in the ranking score
POPULARITY = (0.0, 0.1, 0.2, 0.4)  # candidate weights of log(1 + ratings) in the movie's prior


@dataclass
class Ratings:
    users: np.ndarray  # int64 ids
    movies: np.ndarray  # int64 ids
    ratings: np.ndarray  # float32
    times: np.ndarray | None = None  # float64 epoch seconds of rated_at; None: not read

    def __len__(self) -> int:
        return len(self.ratings)


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise InvalidArgument("device 'cuda' requested but torch sees no CUDA device")
    return requested


def build_model(
    kind: str,
    user_ids: np.ndarray,
    movie_ids: np.ndarray,
    mean: float,
    opts: TrainOptions,
    content: MovieContent | None,
) -> Model:
    import torch

    from movrec.models import CONTENT_MODELS, MatrixFactorization

    users, movies = torch.from_numpy(user_ids), torch.from_numpy(movie_ids)
    if kind not in CONTENT_MODELS:
        return MatrixFactorization(users, movies, dim=opts.dim, global_mean=mean)
    return CONTENT_MODELS[kind](
        users,
        movies,
        content if content is not None else empty_content(movie_ids),
        dim=opts.dim,
        global_mean=mean,
        ranking=opts.ranking_weight(kind) > 0,
        field_dim=opts.field_dim,
        hidden=opts.hidden,
        dropout=opts.dropout,
        temporal=opts.temporal,
    )


class _Run:
    """One training run's state: the indexed ratings, the split, the model and its optimiser.

    ``fit`` drives it through named steps: ``epoch`` (one pass over the training rows),
    ``validate`` (the validation metrics), ``calibrate_ranking`` and ``summary``.
    """

    def __init__(
        self,
        data: Ratings,
        kind: str,
        opts: TrainOptions,
        content: MovieContent | None,
    ) -> None:
        import torch

        torch.manual_seed(opts.seed)
        self.data, self.kind, self.opts = data, kind, opts
        self.device = device = pick_device(opts.device)
        self.ranking = opts.ranking_weight(kind)
        self.user_ids, self.u_idx = np.unique(data.users, return_inverse=True)
        self.movie_ids, self.m_idx = np.unique(data.movies, return_inverse=True)
        self.train_rows, self.val_rows = split(len(data), opts.seed, 1 - opts.val_fraction)
        self.mean = float(data.ratings[self.train_rows].mean())
        self.model: Any = build_model(
            kind, self.user_ids, self.movie_ids, self.mean, opts, content
        ).to(device)
        self.als: AlternatingLeastSquares | None = None
        if opts.solver == "als":
            tr = self.train_rows
            self.als = AlternatingLeastSquares(
                self.model, self.u_idx[tr], self.m_idx[tr], data.ratings[tr], opts.reg
            )
        else:
            self._optimiser()
        self.U = torch.from_numpy(self.u_idx.astype(np.int64)).to(device)
        self.M = torch.from_numpy(self.m_idx.astype(np.int64)).to(device)
        self.R = torch.from_numpy(data.ratings.astype(np.float32)).to(device)
        self.tr = torch.from_numpy(self.train_rows).to(device)
        self.va = torch.from_numpy(self.val_rows).to(device)
        self.gen = torch.Generator(device="cpu").manual_seed(opts.seed)
        self._time_features()
        self._negative_sampling()
        self._rating_weights()

    def _optimiser(self) -> None:
        import torch

        opts = self.opts
        # fused: one kernel over all parameters instead of a dozen per tensor (42 vs 49 ms a step)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=opts.lr, fused=True)
        total_steps = opts.epochs * math.ceil(len(self.train_rows) / opts.batch_size)
        self.scheduler = (
            torch.optim.lr_scheduler.LambdaLR(
                self.optimizer,
                lambda step: 0.5 * (1 + math.cos(math.pi * min(step / total_steps, 1.0))),
            )
            if opts.schedule == "cosine"
            else None
        )

    def _time_features(self) -> None:
        """movrec.temporal's per-row features (self.T), and each user's query time for the
        validation ranking: their latest training rating, as serving takes their latest."""
        import torch

        self.T: tuple[Any, ...] | None = None
        if not getattr(self.model, "temporal", False):
            return
        from movrec import temporal

        times = self.data.times
        if times is None:
            raise InvalidArgument("temporal features need the ratings' times (rated_at)")
        n_users = len(self.user_ids)
        first, _ = temporal.user_times(self.u_idx, times, n_users)
        tr = self.train_rows
        _, self.query_time = temporal.user_times(self.u_idx[tr], times[tr], n_users)
        self.first_time = first
        years = self.model.movie_year.cpu().numpy()[self.m_idx]
        age, drift, year = temporal.row_features(self.u_idx, years, times, first)
        recent = temporal.recent_rows(self.u_idx, times).astype(np.float32)
        self.T = tuple(
            torch.from_numpy(np.ascontiguousarray(a)).to(self.device)
            for a in (self.u_idx.astype(np.int64), age, drift, year, recent)
        )

    def _rows(self, batch: Any) -> Any:
        return None if self.T is None else tuple(t[batch] for t in self.T)

    def _negative_sampling(self) -> None:
        """Negatives drawn ~ (count + 1)^sampling, and the logQ correction of the softmax."""
        import torch

        opts = self.opts
        counts = np.bincount(self.m_idx[self.train_rows], minlength=len(self.movie_ids))
        self.counts = counts.astype(np.float64)
        weights = (self.counts + 1.0) ** opts.sampling
        self.q = torch.from_numpy(weights / weights.sum())
        if opts.in_batch:
            # A movie's expected appearances among a step's candidates: the batch's movies
            # (drawn ~ rating count) plus the sampled ones; the logQ correction is its log.
            from movrec.models.hybrid import IN_BATCH_MAX

            in_batch = (self.counts + 1.0) / (self.counts + 1.0).sum()
            drawn = min(opts.batch_size, IN_BATCH_MAX)
            q_all = drawn * in_batch + opts.negatives * self.q.numpy()
            self.log_q = torch.log(torch.from_numpy(q_all)).float().to(self.device)
        else:
            self.log_q = torch.log(self.q).float().to(self.device)

    def _rating_weights(self) -> None:
        """Top-10 metrics average over users, the loss over ratings: weighting a rating by its
        user's count^-a moves the ranking loss toward the users the metric counts."""
        import torch

        opts, u_idx, train_rows = self.opts, self.u_idx, self.train_rows
        n_user = np.bincount(u_idx[train_rows], minlength=len(self.user_ids)).astype(np.float64)
        w = np.maximum(n_user[u_idx], 1.0) ** -opts.user_weighting
        w *= self.data.ratings >= opts.positive_min
        w /= w[train_rows].mean()
        self.W = torch.from_numpy(w.astype(np.float32)).to(self.device)

    def epoch(self, deadline: float | None = None) -> float:
        """One shuffled pass over the training rows (or one ALS sweep); returns the summed
        squared rating error.  A pass still running at ``deadline`` (``time.perf_counter()``
        seconds) stops after the batch then running: ``self.rows_seen`` says how far it got."""
        import torch

        self.rows_seen = len(self.tr)
        if self.als is not None:
            self.als.sweep()
            return self.als.train_sse()

        opts, model, ranking = self.opts, self.model, self.ranking
        order = self.tr[torch.randperm(len(self.tr), generator=self.gen).to(self.device)]
        total, batches, said = 0.0, order.split(opts.batch_size), time.monotonic()
        started = said
        for step, batch in enumerate(batches, 1):
            backend.check_interrupts()  # a cancel or terminate ends the run within a batch
            if deadline is not None and step > 1 and time.perf_counter() > deadline:
                self.rows_seen = (step - 1) * opts.batch_size  # the budget ends the pass here
                break
            if time.monotonic() - said >= EPOCH_NOTICE_S:  # a long epoch is not silent
                said, rate = time.monotonic(), (step - 1) / (time.monotonic() - started)
                backend.notice(
                    f"  ... batch {step}/{len(batches)} of this epoch, {rate:.1f} batches/s, "
                    f"ETA {(len(batches) - step) / rate:.0f} s"
                )
            u, m, r = self.U[batch], self.M[batch], self.R[batch]
            if ranking > 0:
                negatives = (
                    torch.multinomial(self.q, opts.negatives, replacement=True, generator=self.gen)
                    if opts.negatives > 0
                    else torch.empty(0, dtype=torch.long)
                ).to(self.device)
                loss, rank_loss = model.joint_loss(
                    u,
                    m,
                    r,
                    negatives,
                    self.log_q,
                    self.W[batch],
                    in_batch=opts.in_batch,
                    times=self._rows(batch),
                )
                objective = (
                    loss
                    + opts.reg * model.regularizer(u, m).mean()
                    + ranking * (rank_loss + opts.reg * model.ranking_regularizer(m))
                )
            elif self.T is not None:
                loss = ((model(u, m) + model.time_offset(self._rows(batch)) - r) ** 2).mean()
            else:
                loss = ((model(u, m) - r) ** 2).mean()
                objective = loss + opts.reg * model.regularizer(u, m).mean()
            self.optimizer.zero_grad(set_to_none=True)
            objective.backward()
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            total += float(loss.detach()) * len(batch)
        return total

    def validate(
        self, movie_outputs: Any = None, rating: dict[str, float] | None = None, ranked: bool = True
    ) -> dict[str, float]:
        """Validation metrics; ranking ones (top-10 over every movie: the costly part) only
        when ``ranked``.  While calibrating the ranking, ``movie_outputs``
        (model.all_movies()) and ``rating`` (RMSE and MAE, which calibration leaves alone)
        save recomputing what did not change."""
        import torch

        model, va, data = self.model, self.va, self.data
        model.eval()
        with torch.no_grad():
            if rating is not None:
                out = dict(rating)
            elif len(va):
                pred = (
                    (
                        model(self.U[va], self.M[va])
                        if self.T is None
                        else model(self.U[va], self.M[va]) + model.time_offset(self._rows(va))
                    )
                    .clamp(0.5, 5.0)
                    .cpu()
                    .numpy()
                )
                out = rating_metrics(pred, data.ratings[self.val_rows])
            else:
                out = {"rmse": math.nan, "mae": math.nan}
            if self.ranking > 0 and len(va) and ranked:
                side = (
                    model.ranking_side()
                    if movie_outputs is None
                    else model.ranking_from(*movie_outputs)
                )
                rank = side.cpu().numpy()
                users = model.user_side()[1].cpu().numpy()
                tside = model.temporal_side() if self.T is not None else None

                def score(idx: np.ndarray) -> np.ndarray:
                    out = users[idx] @ rank[:, :-1].T + rank[:, -1]
                    if tside is not None:
                        from movrec import temporal

                        years = temporal.calendar_year(self.query_time[idx])
                        out = out + temporal.rank_offsets(tside, years)
                    return out

                out.update(
                    ranking_metrics(
                        score,
                        self.u_idx[self.train_rows],
                        self.m_idx[self.train_rows],
                        self.u_idx[self.val_rows],
                        self.m_idx[self.val_rows],
                        data.ratings[self.val_rows],
                        len(self.user_ids),
                        len(self.movie_ids),
                    )
                )
        model.train()
        return out

    def calibrate_ranking(
        self, best: dict[str, float]
    ) -> tuple[dict[str, float], tuple[float, float]]:
        """Choose rank_blend and rank_popularity on the validation split; returns (metrics, choice).

        The published ranking blends in the predicted rating (rank_blend) and a popularity
        prior (rank_popularity; the sampled softmax learns popular movies' priors too flat:
        +0.01 NDCG@10 on ml-latest-small).  Both are kept in the model's config and baked
        into the published matrix.
        """
        import torch

        model = self.model
        model.train_counts.copy_(torch.from_numpy(self.counts).to(model.train_counts))
        chosen = (0.0, 0.0)
        model.eval()
        outputs = model.all_movies()
        rating = {k: best[k] for k in ("rmse", "mae")}
        for blend in BLENDS:
            for popularity in POPULARITY:
                model.config["rank_blend"], model.config["rank_popularity"] = blend, popularity
                backend.check_interrupts()
                val = self.validate(outputs, rating)
                if val["ndcg@10"] > best["ndcg@10"] + 1e-4:
                    best, chosen = val, (blend, popularity)
        model.config["rank_blend"], model.config["rank_popularity"] = chosen
        return best, chosen

    def summary(
        self, best_epoch: int, best: dict[str, float], history: list[dict[str, Any]], seconds: float
    ) -> dict[str, Any]:
        """The metrics stored in the registry: validation figures, the baseline, the run."""
        val_rows = self.val_rows
        baseline = (
            rating_metrics(np.full(len(val_rows), self.mean), self.data.ratings[val_rows])
            if len(val_rows)
            else {}
        )
        metrics: dict[str, Any] = {
            "val_rmse": best.get("rmse"),
            "val_mae": best.get("mae"),
            "best_epoch": best_epoch,
            "baseline_val_rmse": baseline.get("rmse"),
            "baseline_val_mae": baseline.get("mae"),
            "n_train": len(self.train_rows),
            "n_val": len(val_rows),
            "device": self.device,
            "train_seconds": round(seconds, 3),
            "history": history,
        }
        if self.ranking > 0:
            metrics.update(
                {f"val_{k}": v for k, v in best.items() if k not in ("rmse", "mae", "n_users")}
            )
            metrics["rank_blend"] = self.model.config["rank_blend"]
            metrics["rank_popularity"] = self.model.config["rank_popularity"]
        return metrics


def fit(
    data: Ratings,
    kind: str = "mf",
    opts: TrainOptions | None = None,
    progress: Callable[[str], None] = lambda _msg: None,
    content: MovieContent | None = None,
    deadline: float | None = None,
) -> tuple[Model, dict[str, Any]]:
    """Train on the seeded split; returns (model on CPU, metrics).

    Early stopping watches validation RMSE, or validation NDCG@10 when the
    model has a ranking head (that is what recommend() orders by).  With a ``deadline``
    (``time.perf_counter()`` seconds) no epoch starts that the last one's length says
    would end after it, and one still running at it stops there (a first epoch longer than
    the budget too); ``metrics["stopped_at_deadline"]`` says whether that cut the run.
    """
    from movrec.models import MODELS

    opts = opts or TrainOptions.for_kind(kind)
    if kind not in MODELS:
        raise InvalidArgument(f"unknown model kind {kind!r}", hint=f"one of: {', '.join(MODELS)}")
    if len(data) < MIN_RATINGS:
        raise NotEnoughData(f"need at least {MIN_RATINGS} ratings to train, have {len(data)}")
    run = _Run(data, kind, opts, content)
    ranked = run.ranking > 0
    watch = "ndcg@10" if ranked else "rmse"
    best_value, best_epoch, best_metrics = (-math.inf if ranked else math.inf), 0, {}
    best_state: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    # A cosine run goes to its end and keeps its last epoch, whose small final steps settle
    # it (choosing among late epochs by validation NDCG chose noise: one seed kept epoch 4 of
    # 7 and lost 0.01); only that epoch pays for the ranking metrics.
    cosine = opts.schedule == "cosine"
    started = time.perf_counter()
    val: dict[str, float] = {}
    stopped = False
    epoch_s = 0.0
    for epoch in range(1, opts.epochs + 1):
        if deadline is not None and epoch > 1 and time.perf_counter() + epoch_s > deadline:
            progress(f"movrec train {kind}: the time budget ends the run after epoch {epoch - 1}")
            stopped = True
            break
        epoch_started = time.perf_counter()
        total = run.epoch(deadline)
        cut = run.rows_seen < len(run.tr)  # the deadline came within the pass: no more
        stopped = stopped or cut
        last = (
            epoch == opts.epochs
            or cut
            or (
                deadline is not None
                and time.perf_counter() + 2 * (time.perf_counter() - epoch_started) > deadline
            )
        )
        val = run.validate(ranked=not cosine or last)
        epoch_s = time.perf_counter() - epoch_started
        history.append(
            {
                "epoch": epoch,
                "train_rmse": round(math.sqrt(total / max(run.rows_seen, 1)), 5),
                **{f"val_{k}": round(v, 5) for k, v in val.items() if k != "n_users"},
            }
        )
        shown = " ".join(f"{k} {v:.4f}" for k, v in history[-1].items() if k != "epoch")
        progress(
            f"movrec train {kind}: epoch {epoch}/{opts.epochs} {shown} ({time.perf_counter() - started:.1f} s)"
        )
        if cosine:
            continue
        value = val.get(watch, math.nan)
        if not math.isfinite(value):  # nothing to choose by (no validation rows): run on
            continue
        if value > best_value + 1e-4 if ranked else value < best_value - 1e-4:
            best_value, best_epoch, best_metrics = value, epoch, val
            best_state = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        elif epoch - best_epoch >= opts.patience:
            progress(f"movrec train {kind}: early stop, best epoch {best_epoch}")
            break
    if best_state:
        run.model.load_state_dict(best_state)
    else:  # cosine, or no validation figure to choose by: the last epoch
        best_epoch, best_metrics = len(history), val
        if ranked and "ndcg@10" not in best_metrics and len(run.va):  # a cosine run cut short
            best_metrics = run.validate(rating={k: val[k] for k in ("rmse", "mae")})
    if ranked and len(run.va):
        best_metrics, chosen = run.calibrate_ranking(best_metrics)
        progress(
            f"movrec train {kind}: ranking + {chosen[0]} x predicted rating + {chosen[1]} x "
            f"log(1 + ratings), val NDCG@10 {best_metrics['ndcg@10']:.4f} "
            f"({time.perf_counter() - started:.1f} s)"
        )
    run.model = run.model.cpu().eval()
    metrics = run.summary(best_epoch, best_metrics, history, time.perf_counter() - started)
    if deadline is not None:
        metrics["stopped_at_deadline"] = stopped
    return run.model, metrics


# --- SQL glue ---------------------------------------------------------------

READ_SQL = """
SELECT array_agg(user_id) AS u, array_agg(movie_id) AS m, array_agg(rating) AS r,
       array_agg(extract(epoch FROM rated_at)::float8) AS t
FROM movrec.watch_events GROUP BY user_id / 512
"""


def _concat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty(0, dtype)


def read_ratings() -> tuple[Ratings, dict[str, Any]]:
    """Ratings into numpy in batches (one row per block of users)."""
    import plpy  # type: ignore[import-not-found]

    users, movies, ratings, times = [], [], [], []
    cursor = plpy.cursor(READ_SQL)
    while batch := cursor.fetch(64):
        for row in batch:
            users.append(np.asarray(row["u"], dtype=np.int64))
            movies.append(np.asarray(row["m"], dtype=np.int64))
            ratings.append(np.asarray(row["r"], dtype=np.float32))
            times.append(np.asarray(row["t"], dtype=np.float64))
    data = Ratings(
        _concat(users, np.int64),
        _concat(movies, np.int64),
        _concat(ratings, np.float32),
        _concat(times, np.float64),
    )
    # A fixed order, so the seeded split picks the same rows whatever order the scan returned.
    order = np.lexsort((data.movies, data.users))
    assert data.times is not None
    data = Ratings(data.users[order], data.movies[order], data.ratings[order], data.times[order])
    snap = plpy.execute(
        "SELECT count(*) AS n, max(rated_at)::text AS max_rated_at FROM movrec.watch_events"
    )[0]
    snapshot = {
        "n_ratings": int(snap["n"]),
        "max_rated_at": snap["max_rated_at"],
        "n_users": int(len(np.unique(data.users))),
        "n_movies": int(len(np.unique(data.movies))),
        # evaluate() compares it with the ratings then: any rating added, removed or changed
        "rows_sha256": rows_fingerprint(data.users, data.movies, data.ratings),
    }
    return data, snapshot


@backend.sql_entry
def train_from_sql(kind: str | None, options: str | None, deploy: bool | None) -> int:
    """movrec.train(): options NULL means none; every check runs before any data is read.

    Options the caller did not give are chosen on the validation split within ``budget_s``
    seconds (``movrec.settings.train_budget_s`` when the options name none; 0: one run with
    the kind's defaults).  The whole call, importing torch included, is what the budget
    covers, from the statement's start (loading PL/Python and movrec in a new backend too)."""
    started = time.perf_counter() - backend.statement_age_s()
    import torch

    from movrec import registry
    from movrec.models import MODELS

    if kind is None or deploy is None:
        raise NullArgument("train(): model and deploy must not be NULL")
    if kind not in MODELS:
        raise InvalidArgument(f"unknown model kind {kind!r}", hint=f"one of: {', '.join(MODELS)}")
    try:
        raw = json.loads(options) if options else {}
    except json.JSONDecodeError as e:
        raise InvalidArgument(f"options is not valid JSON: {e}") from None
    if isinstance(raw, dict):  # what the options do not name, the database's settings give
        settings = backend.settings()
        defaults = {
            "device": settings["device"],
            "budget_s": settings.get("train_budget_s", DEFAULT_BUDGET_S),
        }
        raw = {**{k: v for k, v in defaults.items() if k not in raw}, **raw}
    opts = TrainOptions.parse(raw, kind)
    if opts.temporal and deploy:
        from movrec.errors import NotServable

        raise NotServable(
            "train(): a model with temporal features cannot be deployed: recommend() and "
            "predict() do not serve them",
            hint="train it with deploy => false (offline evaluation), or without temporal",
        )
    torch.set_num_threads(backend.train_threads())
    data, snapshot = read_ratings()
    backend.notice(
        f"movrec train {kind}: {snapshot['n_ratings']} ratings, {snapshot['n_users']} users, "
        f"{snapshot['n_movies']} movies"
    )
    from movrec.content import read_content
    from movrec.models import CONTENT_MODELS

    content = read_content() if kind in CONTENT_MODELS else None
    if opts.searched:
        from movrec.search import search

        given = set(raw) if isinstance(raw, dict) else set()
        model, metrics, opts, trials = search(
            data, kind, opts, given - {"budget_s", "device"}, started, backend.notice, content
        )
    else:
        model, metrics = fit(data, kind, opts, progress=backend.notice, content=content)
        trials = None
    params = asdict(opts)
    if trials is not None:
        params["search"] = trials
    _, val_rows = split(len(data), opts.seed, 1 - opts.val_fraction)  # fit's split
    held_out = pack_split(data.users[val_rows], data.movies[val_rows], data.ratings[val_rows])
    from movrec import item_item
    from movrec.search import SEARCH_RESERVE

    # the ranking head's item-item term, chosen on the same held-out rows (none without a head)
    neighbours, about = item_item.for_model(
        model,
        data.users,
        data.movies,
        data.ratings,
        val_rows,
        backend.notice,
        deadline=started + opts.budget_s * (1 - SEARCH_RESERVE) if opts.searched else None,
    )
    if about:
        params["item_item"] = about
        if neighbours is not None:
            metrics["val_ndcg@10_ranking_alone"] = metrics.get("val_ndcg@10")
            metrics["val_ndcg@10"] = about["val_ndcg@10"]
    model_id = registry.register(
        model,
        kind,
        params,
        snapshot,
        metrics,
        duration_s=time.perf_counter() - started,
        validation_split=held_out,
        item_item=neighbours.pack() if neighbours is not None else None,
    )
    backend.notice(
        f"movrec train {kind}: model {model_id} val RMSE {metrics['val_rmse']:.4f} "
        f"(global mean {metrics['baseline_val_rmse']:.4f})"
    )
    if deploy:
        registry.deploy_model(model_id)
    return model_id
