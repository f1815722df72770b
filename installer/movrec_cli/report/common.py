"""What every section of the report shares: its constants, the Section and Model records,
and the HTML and plotly helpers."""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
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
        note = f'<p class="empty">{esc(self.empty)}</p>' if self.empty or not self.blocks else ""
        body = note + "".join(self.blocks)
        return f'<section id="{self.anchor}"><h2>{esc(self.title)}</h2>{body}</section>'


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


def esc(text: object) -> str:
    return html.escape(str(text))


def fmt(value: object, digits: int = 4) -> str:
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
        keep = [i for i in range(len(headers)) if any(fmt(r[i]) != "" for r in rows)]
        headers = [headers[i] for i in keep]
        rows = [[r[i] for i in keep] for r in rows]
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(fmt(v))}</td>" for v in r) + "</tr>" for r in rows)
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


def color_of(model_id: int) -> str:
    return PALETTE[model_id % len(PALETTE)]


# --- data --------------------------------------------------------------------------


def load_models(conn: psycopg.Connection) -> list[Model]:
    rows = conn.execute(
        "SELECT model_id, kind, dim, params, data_snapshot, metrics, duration_s, trained_at,"
        " trained_by FROM model.registry ORDER BY model_id"
    ).fetchall()
    return [Model(*r) for r in rows]


def load_deployments(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT deployment_id, model_id, deployed_at, deployed_by, reason"
        " FROM model.deployments ORDER BY deployment_id"
    ).fetchall()


def champion_of(conn: psycopg.Connection) -> int | None:
    row = conn.execute("SELECT model_id FROM model.champion").fetchone()
    return None if row is None else int(row[0])


# --- sections ----------------------------------------------------------------------
