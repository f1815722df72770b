"""`movrec report`: one self-contained HTML page about the registry, drawn with plotly.

The page embeds plotly.js inline, so it opens offline and can be mailed as one file.
Every section is computed independently from what the database holds; a section with
nothing to show says so and what would fill it, and a section that fails says why and
the rest of the page still renders (a report is read to diagnose, so it must not break
on the state it is meant to show).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from pathlib import Path

import psycopg

from movrec_cli.report.common import Section, champion_of, esc, load_deployments, load_models
from movrec_cli.report.data import (
    section_cf,
    section_etl,
    section_online,
    section_recommendations,
    section_segments,
    section_serving,
)
from movrec_cli.report.models import (
    load_bench,
    section_bench,
    section_curves,
    section_deployments,
    section_evaluations,
    section_models,
    section_search,
)

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
    deployments = load_deployments(conn)
    champion = champion_of(conn)
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
                f'<p class="error">This section failed: {esc(type(e).__name__)}: {esc(e)}</p>'
            )
            sections.append(sec)
    champ = next((m for m in models if m.model_id == champion), None)
    ratings = conn.execute("SELECT count(*) FROM movrec.watch_events").fetchone()[0]  # type: ignore[index]
    summary = (
        f"{len(models)} registered models; champion: "
        + (f"model {champ.model_id} ({esc(champ.kind)}), {esc(champ.dataset)}" if champ else "none")
        + f"; {ratings:,} ratings now; written {dt.datetime.now():%Y-%m-%d %H:%M}"
    )
    nav = "".join(f'<a href="#{s.anchor}">{esc(s.title.split(":")[0])}</a>' for s in sections)
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
