"""The registry's sections of the report: learning curves, the models compared, deployments,
evaluate results, search trials and the benchmark's peer table."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from movrec_cli.report.common import (
    Model,
    Section,
    color_of,
    esc,
    figure_html,
    fmt,
    html_table,
)


def section_curves(models: list[Model]) -> Section:
    """Train and validation curves per epoch, one figure per dataset the models were trained on."""
    from plotly.subplots import make_subplots

    s = Section("curves", "Learning curves by dataset")
    groups: dict[str, list[Model]] = {}
    for m in models:
        if m.metrics.get("history"):
            groups.setdefault(m.dataset, []).append(m)
    if not groups:
        s.empty = "No training history yet: train a model (movrec train --model mf)."
        return s
    s.blocks.append(
        "<p>Solid: validation; dotted: training. Models trained on different data are in "
        "different figures: their figures are not comparable.</p>"
    )
    for dataset, group in groups.items():
        has_ndcg = any("val_ndcg@10" in h for m in group for h in m.metrics["history"])
        fig = make_subplots(
            rows=1,
            cols=2 if has_ndcg else 1,
            subplot_titles=["RMSE (lower is better)"]
            + (["NDCG@10, validation (higher is better)"] if has_ndcg else []),
            horizontal_spacing=0.08,
        )
        for m in group:
            hist = m.metrics["history"]
            epochs = [h.get("epoch", i + 1) for i, h in enumerate(hist)]
            color = color_of(m.model_id)
            fig.add_scatter(
                x=epochs,
                y=[h.get("val_rmse") for h in hist],
                name=f"{m.label} validation",
                legendgroup=m.label,
                mode="lines+markers",
                line={"color": color},
                row=1,
                col=1,
            )
            if any("train_rmse" in h for h in hist):
                fig.add_scatter(
                    x=epochs,
                    y=[h.get("train_rmse") for h in hist],
                    name=f"{m.label} train",
                    legendgroup=m.label,
                    mode="lines",
                    line={"color": color, "dash": "dot"},
                    row=1,
                    col=1,
                )
            if has_ndcg:
                pts = [
                    (e, h["val_ndcg@10"])
                    for e, h in zip(epochs, hist, strict=True)
                    if "val_ndcg@10" in h
                ]
                if pts:
                    fig.add_scatter(
                        x=[p[0] for p in pts],
                        y=[p[1] for p in pts],
                        name=f"{m.label} NDCG@10",
                        legendgroup=m.label,
                        showlegend=False,
                        mode="lines+markers",
                        line={"color": color},
                        row=1,
                        col=2,
                    )
        fig.update_xaxes(
            title_text="epoch",
            dtick=1 if max(len(m.metrics["history"]) for m in group) <= 30 else None,
        )
        fig.update_yaxes(title_text="RMSE", row=1, col=1)
        if has_ndcg:
            fig.update_yaxes(title_text="NDCG@10", row=1, col=2)
        fig.update_layout(title_text=esc(dataset))
        s.blocks.append(figure_html(fig))
    return s


def _deploy_summary(model_id: int, deployments: list[tuple[Any, ...]]) -> str:
    mine = [d for d in deployments if d[1] == model_id]
    if not mine:
        return "never"
    last = mine[-1]
    return f"{len(mine)}x, last {last[2]:%Y-%m-%d %H:%M} ({last[4]})"


def _params_text(params: dict[str, Any], only: Sequence[str] | None = None) -> str:
    keep = {
        k: v
        for k, v in params.items()
        if k != "search" and v is not None and (only is None or k in only)
    }
    return ", ".join(f"{k}={fmt(v, 4) if isinstance(v, float) else v}" for k, v in keep.items())


def _differing(group: list[Model]) -> list[str]:
    """The parameters whose values differ between the models of a group (all when one model)."""
    keys: list[str] = []
    for m in group:
        keys += [k for k in m.params if k not in keys and k != "search"]
    if len(group) == 1:
        return keys
    return [k for k in keys if len({json.dumps(m.params.get(k), default=str) for m in group}) > 1]


def section_models(
    models: list[Model], deployments: list[tuple[Any, ...]], champion: int | None
) -> Section:
    s = Section("models", "Models compared")
    if not models:
        s.empty = "No models registered yet: train one (movrec train --model mf)."
        return s
    groups: dict[str, list[Model]] = {}
    for m in models:
        groups.setdefault(m.dataset, []).append(m)
    headers = [
        "model",
        "kind",
        "dim",
        "champion",
        "trained",
        "by",
        "duration s",
        "best epoch",
        "val RMSE",
        "val MAE",
        "val NDCG@10",
        "val Recall@20",
        "baseline RMSE",
        "deployed",
        "retrain",
        "parameters that differ",
    ]
    for dataset, group in groups.items():
        differing = _differing(group)
        rows = [
            [
                m.model_id,
                m.kind,
                m.dim,
                m.model_id == champion,
                m.trained_at,
                m.trained_by,
                None if m.duration_s is None else f"{m.duration_s:.1f}",
                m.metrics.get("best_epoch"),
                m.metrics.get("val_rmse"),
                m.metrics.get("val_mae"),
                m.metrics.get("val_ndcg@10"),
                m.metrics.get("val_recall@20"),
                m.metrics.get("baseline_val_rmse"),
                _deploy_summary(m.model_id, deployments),
                (m.metrics.get("retrain") or {}).get("reason", ""),
                _params_text(m.params, differing),
            ]
            for m in group
        ]
        every = "".join(
            f"<li><b>{esc(m.label)}</b>: {esc(_params_text(m.params))}</li>" for m in group
        )
        s.blocks.append(
            f"<h3>{esc(dataset)}</h3>"
            + html_table(headers, rows, "wide", drop_empty=True)
            + f"<details><summary>every parameter</summary><ul>{every}</ul></details>"
        )
    return s


def section_deployments(models: list[Model], deployments: list[tuple[Any, ...]]) -> Section:
    import plotly.graph_objects as go

    s = Section("deployments", "Deployment history")
    if not deployments:
        s.empty = "Nothing deployed yet: movrec deploy MODEL_ID, or train without --no-deploy."
        return s
    kinds = {m.model_id: m.kind for m in models}
    if len(deployments) < 2:  # one point on a time axis says less than the table
        s.blocks.append(
            html_table(["deployment", "model", "deployed at", "by", "reason"], deployments)
        )
        return s
    fig = go.Figure(
        go.Scatter(
            x=[d[2] for d in deployments],
            y=[
                f"#{d[1]} {kinds.get(d[1], '')}" if d[1] is not None else "retired"
                for d in deployments
            ],
            mode="lines+markers",
            line={"shape": "hv", "color": "#1f77b4"},
            text=[d[4] for d in deployments],
            hovertemplate="%{y}<br>%{x}<br>%{text}<extra></extra>",
        )
    )
    fig.update_layout(title_text="Champion over time")
    fig.update_xaxes(title_text="deployed at")
    fig.update_yaxes(title_text="champion", type="category")
    s.blocks.append(figure_html(fig, height=320))
    s.blocks.append(
        html_table(
            ["deployment", "model", "deployed at", "by", "reason"],
            list(reversed(deployments[-50:])),
        )
    )
    return s


def section_evaluations(models: list[Model]) -> Section:
    s = Section("evaluate", "Evaluate results")
    evaluated = [m for m in models if isinstance(m.metrics.get("evaluation"), dict)]
    if not evaluated:
        s.empty = "No model evaluated yet: movrec evaluate MODEL_ID (stores its figures here)."
        return s
    keys: list[str] = []
    for m in evaluated:
        for k, v in m.metrics["evaluation"].items():
            if k not in keys and isinstance(v, int | float | str):
                keys.append(k)
    # one column per model, one row per figure: a dozen figures fit down the page, not across
    rows = [[k, *(m.metrics["evaluation"].get(k) for m in evaluated)] for k in keys]
    s.blocks.append(html_table(["figure", *(m.label for m in evaluated)], rows))
    return s


def _trials(found: Any) -> list[dict[str, Any]]:
    """Trials as flat rows: a list of trials, or an object with a "trials" list; a trial's
    nested objects (its options, its metrics) become columns "options.x", "metrics.y"."""
    if isinstance(found, dict):
        found = found.get("trials")
    if not isinstance(found, list):
        return []
    rows = []
    for t in found:
        if not isinstance(t, dict):
            t = {"trial": t}
        flat: dict[str, Any] = {}
        for k, v in t.items():
            if isinstance(v, dict):
                flat.update({f"{k}.{kk}": vv for kk, vv in v.items()})
            else:
                flat[k] = v
        rows.append(flat)
    return rows


def _search_trials(m: Model) -> list[dict[str, Any]]:
    """A hyper-parameter search's trials, wherever the search recorded them (metrics or params,
    key "search")."""
    return _trials(m.metrics.get("search")) or _trials(m.params.get("search"))


def section_search(models: list[Model], bench: Sequence[dict[str, Any]] = ()) -> Section:
    s = Section("search", "Hyper-parameter search trials")
    searches = [(m.label, _search_trials(m)) for m in models]
    searches += [(f"peer {r['model']} (benchmark)", _trials(r.get("search"))) for r in bench]
    for label, trials in searches:
        if not trials:
            continue
        keys: list[str] = []
        for t in trials:
            keys += [k for k in t if k not in keys]
        rows = [[t.get(k) for k in keys] for t in trials]
        s.blocks.append(
            f"<h3>{esc(label)}: {len(trials)} trials</h3>" + html_table(keys, rows, "wide")
        )
    if not s.blocks:
        s.empty = "No hyper-parameter search recorded in the registry (or the benchmark) yet."
    return s


def load_bench(files: Sequence[Path]) -> list[dict[str, Any]]:
    """Rows of `movrec bench quality --json FILE` results (a list of rows, or {"rows": [...]})."""
    rows: list[dict[str, Any]] = []
    for f in files:
        data = json.loads(Path(f).read_text(encoding="utf-8"))
        found = data.get("rows", []) if isinstance(data, dict) else data
        rows += [r for r in found if isinstance(r, dict) and "model" in r]
    return rows


def section_bench(bench: list[dict[str, Any]]) -> Section:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    s = Section("bench", "Benchmark: movrec and its peers")
    if not bench:
        s.empty = (
            "No benchmark given: run movrec bench quality --data DIR --json bench.json, "
            "then movrec report --bench bench.json."
        )
        return s
    skip = {"model", "note", "search"}  # a peer's search trials: in the search section
    keys: list[str] = []
    for r in bench:
        keys += [k for k in r if k not in keys and k not in skip]
    s.blocks.append(
        html_table(
            ["model", *keys, "note"],
            [[r["model"], *(r.get(k) for k in keys), r.get("note", "")] for r in bench],
            "wide",
        )
    )
    shown = [
        k for k in ("rmse", "ndcg@10", "recall@20") if any(r.get(k) is not None for r in bench)
    ]
    if shown:
        fig = make_subplots(rows=1, cols=len(shown), subplot_titles=shown)
        for i, k in enumerate(shown, start=1):
            have = [r for r in bench if r.get(k) is not None]
            fig.add_trace(
                go.Bar(
                    x=[r["model"] for r in have],
                    y=[r[k] for r in have],
                    marker_color=[
                        "#d62728" if str(r["model"]).startswith("movrec") else "#1f77b4"
                        for r in have
                    ],
                    showlegend=False,
                ),
                row=1,
                col=i,
            )
        fig.update_layout(title_text="movrec (red) against the peers (blue), on one split")
        s.blocks.append(figure_html(fig, height=380))
    return s
