"""`movrec report`: one HTML page with plots of the registry, drawn as inline SVG.

No plotting library: three small chart kinds (lines, bars, histogram) are
enough, and the page opens anywhere, offline.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import psycopg

from movrec_cli.connection import one

W, H, PAD = 560, 260, 40
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")


def _scale(
    values: Sequence[float] | np.ndarray, lo: float, hi: float, out_lo: float, out_hi: float
) -> list[float]:
    span = (hi - lo) or 1.0
    return [out_lo + (v - lo) / span * (out_hi - out_lo) for v in values]


def _frame(title: str, body: str, y_lo: float, y_hi: float) -> str:
    ticks = "".join(
        f'<text x="{PAD - 4}" y="{y:.0f}" text-anchor="end" font-size="10">{v:.3g}</text>'
        for v, y in zip(
            np.linspace(y_lo, y_hi, 5),
            _scale(np.linspace(y_lo, y_hi, 5), y_lo, y_hi, H - PAD, PAD),
            strict=True,
        )
    )
    return (
        f"<figure><figcaption>{html.escape(title)}</figcaption>"
        f'<svg width="{W}" height="{H}" role="img" aria-label="{html.escape(title)}">'
        f'<rect x="{PAD}" y="{PAD}" width="{W - 2 * PAD}" height="{H - 2 * PAD}" fill="none" stroke="#ccc"/>'
        f"{ticks}{body}</svg></figure>"
    )


def line_chart(title: str, series: dict[str, list[float]]) -> str:
    values = [v for s in series.values() for v in s if v is not None]
    if not values:
        return ""
    lo, hi = min(values), max(values)
    n = max(len(s) for s in series.values())
    body = []
    for i, (name, s) in enumerate(series.items()):
        xs = _scale(list(range(len(s))), 0, max(n - 1, 1), PAD, W - PAD)
        ys = _scale(s, lo, hi, H - PAD, PAD)
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))
        color = COLORS[i % len(COLORS)]
        body.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"/>')
        body.append(
            f'<text x="{W - PAD + 4}" y="{PAD + 12 * i + 10}" font-size="10" fill="{color}">'
            f"{html.escape(name)}</text>"
        )
    return _frame(title, "".join(body), lo, hi)


def bar_chart(title: str, bars: dict[str, float]) -> str:
    if not bars:
        return ""
    hi = max(bars.values()) * 1.1 or 1.0
    width = (W - 2 * PAD) / len(bars)
    body = []
    for i, (name, v) in enumerate(bars.items()):
        h = (v / hi) * (H - 2 * PAD)
        x = PAD + i * width
        body.append(
            f'<rect x="{x + 4:.1f}" y="{H - PAD - h:.1f}" width="{width - 8:.1f}" height="{h:.1f}" '
            f'fill="{COLORS[i % len(COLORS)]}"><title>{html.escape(name)}: {v:.4f}</title></rect>'
        )
        body.append(
            f'<text x="{x + width / 2:.1f}" y="{H - PAD + 12}" font-size="9" text-anchor="middle">'
            f"{html.escape(name[:14])}</text>"
        )
    return _frame(title, "".join(body), 0, hi)


def histogram(title: str, values: np.ndarray, bins: int = 30) -> str:
    if len(values) == 0:
        return ""
    counts, edges = np.histogram(values, bins=bins)
    return bar_chart(title, {f"{edges[i]:.2f}": float(c) for i, c in enumerate(counts)})


def write_report(conn: psycopg.Connection, path: Path) -> Path:
    models = conn.execute(
        "SELECT model_id, kind, metrics, trained_at FROM model.registry ORDER BY model_id"
    ).fetchall()
    champion = conn.execute("SELECT model_id FROM model.champion").fetchone()
    parts = [
        f"<h1>movrec report</h1><p>{len(models)} registered models; champion: "
        f"{champion[0] if champion else 'none'}</p>"
    ]
    curves = {
        f"#{m} {k}": [h.get("val_rmse") for h in met.get("history", [])] for m, k, met, _ in models
    }
    parts.append(line_chart("Validation RMSE by epoch", {k: v for k, v in curves.items() if v}))
    for metric in ("val_rmse", "val_ndcg@10"):
        bars = {
            f"#{m} {k}": float(met[metric])
            for m, k, met, _ in models
            if met.get(metric) is not None
        }
        parts.append(bar_chart(f"{metric} across registry models", bars))
    if champion:
        blob, ranking, ids = one(
            conn.execute(
                "SELECT serving_matrix, serving_ranking, serving_movie_ids FROM model.registry WHERE model_id = %s",
                champion,
            )
        )
        n = len(np.frombuffer(ids, dtype=np.int32))
        matrix = np.frombuffer(blob, dtype=np.float32).reshape(n, -1)
        users = conn.execute(
            "SELECT embedding::real[], bias FROM model.user_latent_attributes "
            "ORDER BY user_id LIMIT 200"
        ).fetchall()
        mean = one(
            conn.execute("SELECT global_mean FROM model.registry WHERE model_id = %s", champion)
        )[0]
        if users:
            u = np.array([r[0] for r in users], dtype=np.float32)
            b = np.array([r[1] for r in users], dtype=np.float32)
            predicted = u @ matrix[:, :-1].T + matrix[:, -1] + b[:, None] + mean
            parts.append(
                histogram("Predicted ratings, champion, 200 users x all movies", predicted.ravel())
            )
    rows = "".join(
        f"<tr><td>{m}</td><td>{html.escape(k)}</td>"
        + "".join(
            f"<td>{met.get(c, ''):.4f}</td>" if isinstance(met.get(c), float) else "<td></td>"
            for c in ("val_rmse", "val_mae", "val_ndcg@10", "val_recall@20")
        )
        + f"<td>{t:%Y-%m-%d %H:%M}</td></tr>"
        for m, k, met, t in models
    )
    parts.append(
        "<h2>Registry</h2><table><tr><th>id</th><th>kind</th><th>val RMSE</th><th>val MAE</th>"
        f"<th>val NDCG@10</th><th>val Recall@20</th><th>trained</th></tr>{rows}</table>"
    )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>movrec report</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:60em}figure{display:inline-block;margin:1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}"
        "</style></head><body>" + "".join(parts) + "</body></html>"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
