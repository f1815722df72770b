"""Training options chosen on the validation split within a time budget (``budget_s``).

The kind's defaults train first, then one-option changes, each on the same split; the one
with the best validation figure (NDCG@10 for kinds with a ranking head, else RMSE) is kept,
and every trial is recorded as ``{"options", "metrics", "seconds"}``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from movrec.train_options import TrainOptions
from movrec.training import Ratings, fit

if TYPE_CHECKING:
    from movrec.content import MovieContent
    from movrec.models import Model

# The search: each kind's defaults first, then one change at a time (the options a caller
# gave are never changed).  Ranking kinds are chosen by validation NDCG@10 (what recommend()
# orders by), the others by validation RMSE.  The kinds that serve keep dim 100: deploy
# publishes vector(100) and refuses any other width, so a narrower winner could not serve.
SEARCH_SPACE: dict[str, list[dict[str, Any]]] = {
    "mf": [{}, {"reg": 0.05}, {"reg": 0.2}, {"lr": 0.01}],
    "mlp": [{}, {"reg": 0.05}, {"reg": 0.2}, {"lr": 0.01}],
    "hybrid": [{}, {"epochs": 12}, {"lr": 0.002}, {"reg": 0.05}, {"reg": 0.2}],
    "functional": [{}, {"epochs": 12}, {"lr": 0.002}, {"reg": 0.2}],
}
SEARCH_RESERVE = 0.08  # share of the budget kept for reading, registering and deploying
ITEM_ITEM_SHARE = 0.3  # share kept for choosing a ranking head's item-item term


def search(
    data: Ratings,
    kind: str,
    opts: TrainOptions,
    given: set[str],
    started: float,
    progress: Callable[[str], None] = lambda _msg: None,
    content: MovieContent | None = None,
) -> tuple[Model, dict[str, Any], TrainOptions, list[dict[str, Any]]]:
    """Options chosen on the validation split within ``opts.budget_s`` seconds from ``started``.

    Every candidate trains on the same split; a candidate whose expected time (the last
    trial's, scaled by the epochs option) would pass the deadline is not started, and any
    one still training at the deadline stops there.  Returns (best model, its metrics, its
    options, the trials as ``[{"options", "metrics", "seconds"}]``).
    """
    ranked = opts.ranking_weight(kind) > 0
    # a ranking head's item-item term (movrec.item_item) is chosen after the search, in its share
    reserve = SEARCH_RESERVE + (ITEM_ITEM_SHARE if ranked else 0.0)
    deadline = started + opts.budget_s * (1 - reserve)
    trials: list[dict[str, Any]] = []
    best: tuple[float, Model, dict[str, Any], TrainOptions] | None = None
    last_s, last_epochs = 0.0, 1  # the last trial's seconds and its epochs option
    for change in SEARCH_SPACE.get(kind, [{}]):
        change = {k: v for k, v in change.items() if k not in given}
        if trials and not change:
            continue
        candidate = replace(opts, **change)
        expected = last_s * candidate.epochs / max(last_epochs, 1)
        if trials and time.perf_counter() + expected > deadline:
            progress(f"movrec train {kind}: search stops, {len(trials)} trial(s) within the budget")
            break
        t = time.perf_counter()
        model, metrics = fit(data, kind, candidate, progress, content, deadline=deadline)
        seconds = time.perf_counter() - t
        # scaled by the epochs option, not the epochs run: an early stop ends a candidate much
        # like the last one, and scaling 9 run of 40 allowed by 40 / 9 skipped every MF candidate
        last_s, last_epochs = seconds, candidate.epochs
        shown = {k: v for k, v in metrics.items() if k.startswith("val_") or k == "best_epoch"}
        shown["stopped_at_deadline"] = metrics.get("stopped_at_deadline", False)
        trials.append({"options": change, "metrics": shown, "seconds": round(seconds, 3)})
        value = metrics.get("val_ndcg@10") if ranked else metrics.get("val_rmse")
        score = -math.inf if value is None else (value if ranked else -value)
        if best is None or score > best[0]:
            best = (score, model, metrics, candidate)
        progress(f"movrec train {kind}: trial {len(trials)} {change or 'defaults'}: {shown}")
    assert best is not None
    _, model, metrics, chosen = best
    return model, metrics, chosen, trials
