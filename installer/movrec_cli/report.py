"""`movrec report`: one self-contained HTML page about the registry, drawn with plotly.

The page embeds plotly.js inline, so it opens offline and can be mailed as one file.
Every section is computed independently from what the database holds; a section with
nothing to show says so and what would fill it, and a section that fails says why and
the rest of the page still renders (a report is read to diagnose, so it must not break
on the state it is meant to show).
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

# Plotly's default qualitative palette, one colour per model across every chart
PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#7f7f7f",
    "#bcbd22",
)
PLOT_CONFIG = {"responsive": True, "displaylogo": False}
# recommend() is called for this many users (spread over the id range) for coverage and bias
SAMPLE_USERS = 200
TOP_K = 10
# The per-genre and per-user-activity figures read every rating to rebuild the split; above
# this many they are left to `movrec evaluate` instead of making the report take minutes.
MAX_RATINGS_FOR_SPLIT = 5_000_000
MAX_PREDICTED_ROWS = 50_000
ACTIVITY_BUCKETS = ((1, 19, "cold (<20)"), (20, 99, "20-99"), (100, 499, "100-499"))
HEAVY = (500, "heavy (500+)")
REGISTRY_METRICS = ("val_rmse", "val_mae", "val_ndcg@10", "val_recall@20", "val_precision@10")


@dataclass
class Section:
    """One heading of the page: its blocks of HTML, or the sentence that says why it is empty."""

    anchor: str
    title: str
    blocks: list[str] = field(default_factory=list)
    empty: str = ""

    def html(self) -> str:
        note = f'<p class="empty">{_e(self.empty)}</p>' if self.empty or not self.blocks else ""
        body = note + "".join(self.blocks)
        return f'<section id="{self.anchor}"><h2>{_e(self.title)}</h2>{body}</section>'


@dataclass
class Model:
    model_id: int
    kind: str
    dim: int
    params: dict[str, Any]
    snapshot: dict[str, Any]
    metrics: dict[str, Any]
    duration_s: float | None
    trained_at: dt.datetime
    trained_by: str

    @property
    def label(self) -> str:
        return f"#{self.model_id} {self.kind}"

    @property
    def dataset(self) -> str:
        """Which data it was trained on: the ETL run and catalogue (fingerprint), in words."""
        cat = self.snapshot.get("catalogue") or {}
        run = cat.get("etl_run")
        where = f"ETL run {run}" if run is not None else "data before any ETL run"
        fp = str(cat.get("fingerprint") or "unknown")[:8]
        n_movies = cat.get("n_movies", self.snapshot.get("n_movies", "?"))
        return f"{where}, {n_movies} movies (catalogue {fp})"


def _e(text: object) -> str:
    return html.escape(str(text))


def _fmt(value: object, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not np.isfinite(value):
            return ""
        if value.is_integer() and abs(value) >= 10:  # a count stored as a float (JSON)
            return f"{value:,.0f}"
        return f"{value:.{digits}f}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dt.datetime):
        return f"{value:%Y-%m-%d %H:%M}"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(", ", ": "), default=str)
    return str(value)


def html_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    cls: str = "",
    drop_empty: bool = False,
) -> str:
    """An HTML table; ``drop_empty`` leaves out the columns that no row has a value in."""
    if drop_empty and rows:
        keep = [i for i in range(len(headers)) if any(_fmt(r[i]) != "" for r in rows)]
        headers = [headers[i] for i in keep]
        rows = [[r[i] for i in keep] for r in rows]
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(_fmt(v))}</td>" for v in r) + "</tr>" for r in rows)
    return (
        f'<div class="scroll"><table class="{cls}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def figure_html(fig: Any, height: int = 420) -> str:
    """A plotly figure as a div that fills the page's width (plotly.js is in the page head)."""
    import plotly.io as pio

    fig.update_layout(
        height=height,
        autosize=True,
        margin={"l": 70, "r": 30, "t": 70, "b": 40},
        template="plotly_white",
        title={"x": 0, "xanchor": "left", "font": {"size": 15}},
        # beside the plot: above it the legend ran into the title, and a model's name stays whole
        legend={"orientation": "v", "x": 1.01, "y": 1, "xanchor": "left", "font": {"size": 11}},
    )
    return str(
        pio.to_html(
            fig,
            full_html=False,
            include_plotlyjs=False,
            config=PLOT_CONFIG,
            default_width="100%",
            default_height=f"{height}px",
        )
    )


def _color(model_id: int) -> str:
    return PALETTE[model_id % len(PALETTE)]


# --- data --------------------------------------------------------------------------


def load_models(conn: psycopg.Connection) -> list[Model]:
    rows = conn.execute(
        "SELECT model_id, kind, dim, params, data_snapshot, metrics, duration_s, trained_at,"
        " trained_by FROM model.registry ORDER BY model_id"
    ).fetchall()
    return [Model(*r) for r in rows]


def _deployments(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT deployment_id, model_id, deployed_at, deployed_by, reason"
        " FROM model.deployments ORDER BY deployment_id"
    ).fetchall()


def _champion(conn: psycopg.Connection) -> int | None:
    row = conn.execute("SELECT model_id FROM model.champion").fetchone()
    return None if row is None else int(row[0])


# --- sections ----------------------------------------------------------------------


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
            color = _color(m.model_id)
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
        fig.update_layout(title_text=_e(dataset))
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
    return ", ".join(f"{k}={_fmt(v, 4) if isinstance(v, float) else v}" for k, v in keep.items())


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
            f"<li><b>{_e(m.label)}</b>: {_e(_params_text(m.params))}</li>" for m in group
        )
        s.blocks.append(
            f"<h3>{_e(dataset)}</h3>"
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
            f"<h3>{_e(label)}: {len(trials)} trials</h3>" + html_table(keys, rows, "wide")
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


def _rated_users(conn: psycopg.Connection, n: int) -> list[int]:
    users = [
        r[0]
        for r in conn.execute(
            "SELECT user_id FROM movrec.watch_events GROUP BY user_id ORDER BY user_id"
        ).fetchall()
    ]
    if len(users) <= n:
        return users
    return [users[i] for i in np.linspace(0, len(users) - 1, n).astype(int)]


def section_recommendations(conn: psycopg.Connection, champion: int | None) -> Section:
    """Catalogue coverage and popularity bias of what recommend() serves to a sample of users."""
    import plotly.graph_objects as go

    s = Section("coverage", "recommend(): catalogue coverage and popularity bias")
    if champion is None:
        s.empty = "No champion deployed: recommend() serves popular movies only until one is."
        return s
    users = _rated_users(conn, SAMPLE_USERS)
    if not users:
        s.empty = "No ratings yet: nobody to recommend for."
        return s
    recs = conn.execute(
        "SELECT u, r.movie_id, r.predicted_rating, r.source FROM unnest(%s::integer[]) AS u,"
        " LATERAL movrec.recommend(u, %s) AS r",
        (users, TOP_K),
    ).fetchall()
    counts: dict[int, int] = dict(
        conn.execute(
            "SELECT movie_id, count(*) FROM movrec.watch_events GROUP BY movie_id"
        ).fetchall()
    )
    n_movies = int(conn.execute("SELECT count(*) FROM movrec.movies").fetchone()[0])  # type: ignore[index]
    # popularity percentile of every movie (100: the most rated), movies never rated at 0
    order = sorted(counts, key=lambda m: counts[m])
    pct = {m: 100.0 * (i + 1) / len(order) for i, m in enumerate(order)}
    rec_movies = [r[1] for r in recs]
    distinct = len(set(rec_movies))
    rec_pct = np.array([pct.get(m, 0.0) for m in rec_movies])
    top_decile = int(np.ceil(len(order) * 0.1))
    top_set = set(order[-top_decile:]) if top_decile else set()
    share_top = float(np.mean([m in top_set for m in rec_movies])) if rec_movies else 0.0
    sources: dict[str, int] = {}
    for r in recs:
        sources[r[3]] = sources.get(r[3], 0) + 1
    s.blocks.append(
        html_table(
            ["figure", "value"],
            [
                ["users sampled (spread over the user ids)", len(users)],
                [f"recommendations (top {TOP_K} each)", len(recs)],
                ["distinct movies recommended", distinct],
                [
                    "catalogue coverage",
                    f"{100.0 * distinct / max(n_movies, 1):.1f} % of {n_movies:,} movies",
                ],
                [
                    "mean popularity percentile of recommendations (50: no bias)",
                    float(rec_pct.mean()) if len(rec_pct) else None,
                ],
                [
                    "share from the 10 % most rated movies (10 %: no bias)",
                    f"{100 * share_top:.1f} %",
                ],
                ["sources", ", ".join(f"{k} {v}" for k, v in sorted(sources.items()))],
            ],
        )
    )
    if len(rec_pct):
        fig = go.Figure()
        fig.add_histogram(
            x=rec_pct,
            xbins={"start": 0, "end": 100, "size": 5},
            name="recommended",
            marker_color="#d62728",
            histnorm="percent",
        )
        # percentiles are uniform over the rated catalogue: without bias, 5 % in each bin
        fig.add_hline(
            y=5, line_dash="dash", line_color="#1f77b4", annotation_text="no bias: 5 % per bin"
        )
        fig.update_layout(
            title_text="Popularity of what is recommended: percentile of the movie's number of ratings",
        )
        fig.update_xaxes(
            title_text="popularity percentile (100: the most rated movie)", range=[0, 100]
        )
        fig.update_yaxes(title_text="% of items")
        s.blocks.append(figure_html(fig, height=380))
        predicted = [r[2] for r in recs if r[2] is not None]
        if predicted:
            hist = go.Figure(
                go.Histogram(
                    x=predicted,
                    xbins={"start": 0.5, "end": 5.0, "size": 0.25},
                    marker_color="#2ca02c",
                )
            )
            hist.update_layout(
                title_text=f"Predicted rating of the recommended movies (model {champion})"
            )
            hist.update_xaxes(title_text="predicted rating (stars)", range=[0.5, 5.0], dtick=0.5)
            hist.update_yaxes(title_text="recommendations")
            s.blocks.append(figure_html(hist, height=340))
    return s


def _validation_rows(
    conn: psycopg.Connection, m: Model
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The champion's validation split rebuilt over today's ratings (train_from_sql's order and
    split): (users, movies, ratings) of the validation rows and every row's user."""
    from movrec.metrics import split

    rows = conn.execute(
        "SELECT array_agg(user_id ORDER BY user_id, movie_id), array_agg(movie_id ORDER BY user_id, movie_id),"
        " array_agg(rating ORDER BY user_id, movie_id) FROM movrec.watch_events"
    ).fetchone()
    assert rows is not None
    u, mv, r = (
        np.asarray(x or [], dtype=t)
        for x, t in zip(rows, (np.int64, np.int64, np.float64), strict=True)
    )
    train, val = split(
        len(u), int(m.params.get("seed", 42)), 1 - float(m.params.get("val_fraction", 0.05))
    )
    return u[val], mv[val], r[val], u[train]


def section_segments(
    conn: psycopg.Connection, models: list[Model], champion: int | None
) -> Section:
    """The champion's error per genre and per user activity on the validation split."""
    from plotly.subplots import make_subplots

    s = Section("segments", "Per genre and cold vs heavy users (champion, validation split)")
    champ = next((m for m in models if m.model_id == champion), None)
    if champ is None:
        s.empty = "No champion deployed: nothing to break down."
        return s
    n = int(conn.execute("SELECT count(*) FROM movrec.watch_events").fetchone()[0])  # type: ignore[index]
    if n < 20:
        s.empty = "Too few ratings for a validation split."
        return s
    if n > MAX_RATINGS_FOR_SPLIT:
        s.empty = (
            f"{n:,} ratings: too many to rebuild the split here; movrec evaluate {champion} "
            "gives the overall figures."
        )
        return s
    vu, vm, vr, train_users = _validation_rows(conn, champ)
    if len(vu) > MAX_PREDICTED_ROWS:
        pick = np.random.default_rng(0).choice(len(vu), MAX_PREDICTED_ROWS, replace=False)
        vu, vm, vr = vu[pick], vm[pick], vr[pick]
    pred_rows = conn.execute(
        "SELECT * FROM movrec.predict(%s::integer[], %s::integer[])", (vu.tolist(), vm.tolist())
    ).fetchall()
    pred = np.array([np.nan if p[2] is None else p[2] for p in pred_rows], dtype=np.float64)
    ok = np.isfinite(pred)
    err = (pred - vr)[ok]
    vu_ok, vm_ok = vu[ok], vm[ok]
    if not len(err):
        s.empty = "The champion predicts none of the validation ratings."
        return s
    genres: dict[int, list[str]] = dict(
        conn.execute("SELECT movie_id, genres FROM movrec.movies").fetchall()
    )
    by_genre: dict[str, list[float]] = {}
    for e, mid in zip(err, vm_ok, strict=True):
        for g in genres.get(int(mid)) or ["(no genre)"]:
            by_genre.setdefault(g, []).append(float(e))
    per_user = dict(zip(*np.unique(train_users, return_counts=True), strict=True))
    activity = np.array([per_user.get(int(u), 0) for u in vu_ok])
    buckets = [*ACTIVITY_BUCKETS, (HEAVY[0], 10**12, HEAVY[1])]

    def rmse(x: Sequence[float] | np.ndarray) -> float:
        a = np.asarray(x)
        return float(np.sqrt(np.mean(a * a)))

    genre_rows = sorted(
        (
            (g, len(v), rmse(v), float(np.mean(np.abs(v))))
            for g, v in by_genre.items()
            if len(v) >= 5
        ),
        key=lambda t: -t[1],
    )
    bucket_rows = []
    for lo, hi, name in buckets:
        sel = (activity >= lo) & (activity <= hi)
        if sel.any():
            bucket_rows.append(
                (name, int(sel.sum()), rmse(err[sel]), float(np.mean(np.abs(err[sel]))))
            )
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.68, 0.32],
        subplot_titles=[
            "RMSE per genre (validation ratings)",
            "RMSE by the user's training ratings",
        ],
    )
    fig.add_bar(
        x=[r[0] for r in genre_rows],
        y=[r[2] for r in genre_rows],
        text=[f"{r[1]}" for r in genre_rows],
        hovertemplate="%{x}: RMSE %{y:.3f}, %{text} ratings<extra></extra>",
        marker_color="#1f77b4",
        showlegend=False,
        row=1,
        col=1,
    )
    fig.add_bar(
        x=[r[0] for r in bucket_rows],
        y=[r[2] for r in bucket_rows],
        text=[f"{r[1]}" for r in bucket_rows],
        hovertemplate="%{x}: RMSE %{y:.3f}, %{text} ratings<extra></extra>",
        marker_color="#ff7f0e",
        showlegend=False,
        row=1,
        col=2,
    )
    fig.add_hline(
        y=rmse(err), line_dash="dash", line_color="#555", annotation_text=f"all {rmse(err):.3f}"
    )
    fig.update_yaxes(title_text="RMSE", rangemode="tozero")
    fig.update_xaxes(tickangle=-40, row=1, col=1)
    s.blocks.append(
        f"<p>Model {champion} ({_e(champ.kind)}): {len(err):,} validation ratings of today's data "
        f"(the split of its seed {int(champ.params.get('seed', 42))}), predicted by predict() as served.</p>"
    )
    s.blocks.append(figure_html(fig, height=440))
    s.blocks.append(
        '<div class="row">'
        + html_table(["users with (training ratings)", "ratings", "RMSE", "MAE"], bucket_rows)
        + html_table(["genre", "ratings", "RMSE", "MAE"], genre_rows)
        + "</div>"
    )
    return s


def section_etl(conn: psycopg.Connection) -> Section:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    s = Section("etl", "ETL funnel")
    rows = conn.execute(
        "SELECT etl_run, stage, output, rows_in, rows_out, removed, duration_ms FROM movrec.etl_runs"
        " WHERE etl_run = (SELECT max(etl_run) FROM movrec.etl_runs) ORDER BY finished_at, stage, output"
    ).fetchall()
    if not rows:
        s.empty = "No ETL run yet: movrec load movielens DIR, then movrec etl."
        return s
    run = rows[0][0]
    # each stage writes its own table (etl.ratings2, etl.ratings3, ...; publish: movrec.*):
    # follow what flows through them, ratings and movies, not the table names
    flows: dict[str, list[tuple[Any, ...]]] = {}
    for r in rows:
        name = str(r[2]).split(".")[-1].rstrip("0123456789")
        entity = {"watch_events": "ratings"}.get(name, name)
        if entity in ("ratings", "movies"):
            flows.setdefault(entity, []).append(r)
    if flows:
        fig = make_subplots(
            rows=1,
            cols=len(flows),
            subplot_titles=[f"{k}: rows after each stage" for k in flows],
            horizontal_spacing=0.18,
        )
        for i, (entity, stages) in enumerate(flows.items(), start=1):
            fig.add_trace(
                go.Funnel(
                    name=entity,
                    y=["loaded", *(str(st[1]) for st in stages)],
                    x=[stages[0][3], *(st[4] for st in stages)],
                    textinfo="value+percent initial",
                    marker_color=PALETTE[i - 1],
                    showlegend=False,
                ),
                row=1,
                col=i,
            )
        fig.update_layout(title_text=f"ETL run {run}: rows kept at each stage")
        s.blocks.append(figure_html(fig, height=140 + 55 * max(len(v) + 1 for v in flows.values())))
    s.blocks.append(
        html_table(
            ["stage", "output", "rows in", "rows out", "removed", "ms"],
            [
                (
                    r[1],
                    r[2],
                    r[3],
                    r[4],
                    ", ".join(f"{k} {v}" for k, v in (r[5] or {}).items() if v),
                    f"{r[6]:.1f}",
                )
                for r in rows
            ],
        )
    )
    return s


def section_cf(conn: psycopg.Connection) -> Section:
    s = Section("cf", "Collaborative filtering (user to user)")
    users, with_cf, queued, failing, newest = conn.execute(
        "SELECT (SELECT count(DISTINCT user_id) FROM movrec.watch_events),"
        " (SELECT count(DISTINCT user_id) FROM model.user_recommendation),"
        " (SELECT count(*) FROM model.cf_queue),"
        " (SELECT count(*) FROM model.cf_queue WHERE attempts > 0),"
        " (SELECT max(computed_at) FROM model.user_recommendation)"
    ).fetchone()  # type: ignore[misc]
    if not with_cf and not queued:
        s.empty = (
            "No CF recommendations computed yet: movrec cf refresh USER, or movrec worker "
            "after ratings arrive."
        )
        return s
    s.blocks.append(
        html_table(
            ["figure", "value"],
            [
                ["users with CF recommendations", with_cf],
                ["CF coverage of users who rated", f"{100.0 * with_cf / max(users, 1):.1f} %"],
                ["jobs queued (model.cf_queue)", queued],
                ["of which failing", failing],
                ["newest CF list", newest],
            ],
        )
    )
    return s


def section_online(conn: psycopg.Connection) -> Section:
    import plotly.graph_objects as go

    s = Section("online", "Online learning")
    live, updated, total = conn.execute(
        "SELECT (SELECT count(*) FROM movrec.watch_events WHERE etl_run IS NULL AND rated_at > "
        " coalesce((SELECT max(deployed_at) FROM model.deployments), '-infinity')),"
        " (SELECT count(*) FROM model.user_latent_attributes WHERE n_updates > 0),"
        " (SELECT coalesce(sum(n_updates), 0) FROM model.user_latent_attributes)"
    ).fetchone()  # type: ignore[misc]
    if not updated:
        s.empty = (
            "No online updates yet: every rating inserted after a deploy moves its user's "
            "vector (SELECT movrec.rate(user, movie, stars))."
        )
        return s
    s.blocks.append(
        html_table(
            ["figure", "value"],
            [
                ["ratings since the last deploy", live],
                ["users whose vector moved online", updated],
                ["online updates in all", int(total)],
            ],
        )
    )
    per_user = [
        r[0]
        for r in conn.execute(
            "SELECT n_updates FROM model.user_latent_attributes WHERE n_updates > 0"
        ).fetchall()
    ]
    fig = go.Figure(go.Histogram(x=per_user, marker_color="#9467bd"))
    fig.update_layout(title_text="Online updates per user")
    fig.update_xaxes(title_text="updates of the user's vector since its deploy")
    fig.update_yaxes(title_text="users")
    s.blocks.append(figure_html(fig, height=320))
    return s


def section_serving(conn: psycopg.Connection, champion: int | None) -> Section:
    s = Section("serving", "Serving and jobs")
    status = conn.execute("SELECT item, value, age, detail FROM movrec.status").fetchall()
    stored, stored_champion, users = conn.execute(
        "SELECT (SELECT count(DISTINCT user_id) FROM model.model_recommendation),"
        " (SELECT count(DISTINCT user_id) FROM model.model_recommendation WHERE model_id = %s),"
        " (SELECT count(DISTINCT user_id) FROM movrec.watch_events)",
        (champion,),
    ).fetchone()  # type: ignore[misc]
    if not stored:
        s.empty = (
            "No stored top lists yet (model.model_recommendation): movrec refresh, or "
            "movrec worker after ratings arrive."
        )
    else:
        s.blocks.append(
            html_table(
                ["figure", "value"],
                [
                    ["users with a stored top list (model.model_recommendation)", stored],
                    ["of them from the champion", stored_champion],
                    [
                        "share of users who rated",
                        f"{100.0 * stored_champion / max(users, 1):.1f} %",
                    ],
                ],
            )
        )
    s.blocks.append(
        "<h3>movrec.status</h3>"
        + html_table(
            ["item", "value", "age", "detail"], [(i, v, str(a or ""), d) for i, v, a, d in status]
        )
    )
    return s


STYLE = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #222; }
header { background: #1f3b57; color: #fff; padding: 1.2em 2em; }
header h1 { margin: 0 0 .3em; font-size: 1.6em; }
header p { margin: 0; opacity: .9; }
nav { padding: .6em 2em; background: #eef2f6; border-bottom: 1px solid #d5dde5; font-size: .92em; }
nav a { margin-right: 1.1em; color: #1f3b57; text-decoration: none; }
main { padding: 0 2em 3em; }
section { margin: 1.6em 0; }
h2 { border-bottom: 2px solid #1f3b57; padding-bottom: .2em; font-size: 1.3em; }
h3 { font-size: 1.05em; margin: 1em 0 .4em; color: #444; }
.empty { color: #7a5b00; background: #fff8e1; border-left: 4px solid #f0b400; padding: .6em 1em; }
.scroll { overflow-x: auto; margin: .4em 0 1em; }
table { border-collapse: collapse; font-size: .88em; }
th, td { border: 1px solid #d9dee3; padding: 4px 9px; text-align: left; vertical-align: top;
         white-space: nowrap; }
table.wide { width: 100%; }
table.wide td { white-space: normal; } table.wide td:last-child { min-width: 16em; }
td:last-child { white-space: normal; }
.row { display: flex; gap: 2em; flex-wrap: wrap; align-items: flex-start; }
details { margin: .2em 0 1em; font-size: .88em; } details li { margin: .2em 0; }
th { background: #f3f5f7; position: sticky; top: 0; }
tbody tr:nth-child(even) { background: #fafbfc; }
.error { color: #a00; }
"""


def build_report(conn: psycopg.Connection, bench_files: Sequence[Path] = ()) -> str:
    """The page's HTML: plotly.js inline, one section per topic, each empty one saying why."""
    from plotly.offline import get_plotlyjs

    models = load_models(conn)
    deployments = _deployments(conn)
    champion = _champion(conn)
    bench = load_bench(bench_files)
    builders: list[tuple[str, str, Callable[[], Section]]] = [
        ("curves", "Learning curves by dataset", lambda: section_curves(models)),
        ("models", "Models compared", lambda: section_models(models, deployments, champion)),
        ("deployments", "Deployment history", lambda: section_deployments(models, deployments)),
        ("evaluate", "Evaluate results", lambda: section_evaluations(models)),
        ("search", "Hyper-parameter search trials", lambda: section_search(models, bench)),
        ("bench", "Benchmark: movrec and its peers", lambda: section_bench(bench)),
        (
            "coverage",
            "recommend(): catalogue coverage and popularity bias",
            lambda: section_recommendations(conn, champion),
        ),
        (
            "segments",
            "Per genre and cold vs heavy users (champion, validation split)",
            lambda: section_segments(conn, models, champion),
        ),
        ("etl", "ETL funnel", lambda: section_etl(conn)),
        ("cf", "Collaborative filtering (user to user)", lambda: section_cf(conn)),
        ("online", "Online learning", lambda: section_online(conn)),
        ("serving", "Serving and jobs", lambda: section_serving(conn, champion)),
    ]
    sections = []
    for anchor, title, build in builders:
        try:
            with conn.transaction():  # a failed section's statement does not abort the next
                sections.append(build())
        except Exception as e:  # noqa: BLE001 - one broken section must not lose the page
            sec = Section(anchor, title)
            sec.blocks.append(
                f'<p class="error">This section failed: {_e(type(e).__name__)}: {_e(e)}</p>'
            )
            sections.append(sec)
    champ = next((m for m in models if m.model_id == champion), None)
    ratings = conn.execute("SELECT count(*) FROM movrec.watch_events").fetchone()[0]  # type: ignore[index]
    summary = (
        f"{len(models)} registered models; champion: "
        + (f"model {champ.model_id} ({_e(champ.kind)}), {_e(champ.dataset)}" if champ else "none")
        + f"; {ratings:,} ratings now; written {dt.datetime.now():%Y-%m-%d %H:%M}"
    )
    nav = "".join(f'<a href="#{s.anchor}">{_e(s.title.split(":")[0])}</a>' for s in sections)
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<link rel='icon' href='data:,'>"
        f"<title>movrec report</title><style>{STYLE}</style>"
        f"<script>{get_plotlyjs()}</script></head><body>"
        f"<header><h1>movrec report</h1><p>{summary}</p></header><nav>{nav}</nav><main>"
        + "".join(s.html() for s in sections)
        + "</main></body></html>"
    )


def write_report(conn: psycopg.Connection, path: Path, bench_files: Sequence[Path] = ()) -> Path:
    page = build_report(conn, bench_files)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
