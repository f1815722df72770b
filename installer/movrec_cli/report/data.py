"""The data's sections of the report: what recommend() serves, per-genre and per-activity
error, the ETL funnel, CF, online learning and serving."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import psycopg

from movrec_cli.report.common import (
    ACTIVITY_BUCKETS,
    HEAVY,
    MAX_PREDICTED_ROWS,
    MAX_RATINGS_FOR_SPLIT,
    PALETTE,
    SAMPLE_USERS,
    TOP_K,
    Model,
    Section,
    esc,
    figure_html,
    html_table,
)


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
        f"<p>Model {champion} ({esc(champ.kind)}): {len(err):,} validation ratings of today's data "
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
