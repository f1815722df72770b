"""`movrec report`: a self-contained plotly page, every section present with or without data,
rendered in headless Chromium (Debian's chromium + chromium-driver, driven by selenium)."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from movrec_cli import bench_quality, loaders, pipeline, schema
from movrec_cli.main import cli
from movrec_cli.report import build_report

from tests import fixture_files
from tests.conftest import connect

HEADINGS = (
    "Learning curves by dataset",
    "Models compared",
    "Deployment history",
    "Evaluate results",
    "Hyper-parameter search trials",
    "Benchmark: movrec and its peers",
    "recommend(): catalogue coverage and popularity bias",
    "Per genre and cold vs heavy users (champion, validation split)",
    "ETL funnel",
    "Collaborative filtering (user to user)",
    "Online learning",
    "Serving and jobs",
)
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")


def test_every_section_says_when_it_has_no_data(installed: str) -> None:
    """An empty database: the page still has every section, each saying what would fill it."""
    with connect(installed) as conn:
        page = build_report(conn)
    for heading in HEADINGS:
        assert f"<h2>{heading}</h2>" in page.replace("&#x27;", "'"), heading
    assert "This section failed" not in page
    assert page.count('class="empty"') == len(HEADINGS)
    # self-contained: plotly.js inline, nothing fetched from elsewhere
    assert "Plotly" in page and not re.search(r"<script[^>]+src=", page)


def test_the_etl_funnel_of_the_last_run(new_database: Callable[[str], str], tmp_path: Path) -> None:
    """After an ETL run (the pipeline tests' small files) the funnel shows each stage's rows."""
    files = fixture_files.write(tmp_path)
    with connect(new_database("t_report_etl")) as conn:
        schema.install(conn)
        loaders.load_movielens(conn, files / "ml-latest")
        loaders.load_tmdb(
            conn, files / "tmdb" / "tmdb_5000_movies.csv", files / "tmdb" / "tmdb_5000_credits.csv"
        )
        run = pipeline.run_etl(conn, 2, 3, 5, None, echo=lambda _m: None)
        stages = conn.execute(
            "SELECT count(DISTINCT stage) FROM movrec.etl_runs WHERE etl_run = %s", (run,)
        ).fetchone()[0]
        page = build_report(conn)
    etl = page[page.index('<section id="etl">') :]
    etl = etl[: etl.index("</section>")]
    assert f"ETL run {run}: rows kept at each stage" in etl and '"type":"funnel"' in etl
    assert "No ETL run yet" not in etl and "This section failed" not in page
    assert etl.count("<tr>") - 1 >= stages  # a table row per stage and output


@pytest.fixture(scope="module")
def report_data(trained: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The trained database with a second model, an evaluation, a search record, online
    ratings drained by the worker (CF and stored top lists), and a bench JSON file."""
    with connect(trained) as conn:
        second = conn.execute(
            """SELECT movrec.train('mf', '{"epochs": 4, "dim": 8}', false)"""
        ).fetchone()[0]
        champion = conn.execute("SELECT model_id FROM model.champion").fetchone()[0]
        conn.execute("SELECT * FROM movrec.evaluate(%s)", (champion,))
        trials = [
            {"trial": 1, "dim": 8, "lr": 0.01, "val_rmse": 0.95},
            {"trial": 2, "dim": 16, "lr": 0.005, "val_rmse": 0.93},
        ]
        conn.execute(
            "UPDATE model.registry SET metrics = metrics || jsonb_build_object('search', %s::jsonb)"
            " WHERE model_id = %s",
            (json.dumps({"trials": trials}), second),
        )
        conn.execute(
            "SELECT movrec.rate(u, m, 4) FROM generate_series(1, 5) u, generate_series(1, 3) m"
        )
    r = CliRunner().invoke(cli, ["worker", "--once", "--quiet", "--dsn", trained])
    assert r.exit_code == 0, r.output
    bench = tmp_path_factory.mktemp("bench") / "bench.json"
    rows = [
        {
            "model": "movrec mf",
            "rmse": 0.87,
            "mae": 0.67,
            "ndcg@10": 0.041,
            "recall@20": 0.06,
            "fit_seconds": 12.5,
            "note": "",
        },
        {
            "model": "svd",
            "rmse": 0.88,
            "mae": 0.68,
            "ndcg@10": 0.035,
            "recall@20": 0.05,
            "fit_seconds": 3.1,
            "note": "surprise",
        },
        {  # a validated peer carries the search that chose its options
            "model": "ials",
            "rmse": None,
            "ndcg@10": 0.052,
            "fit_seconds": 40.0,
            "note": "chosen on validation",
            "search": [
                {"options": {"alpha": 1.0}, "metrics": {"val_ndcg@10": 0.05}, "seconds": 2.0},
                {"options": {"alpha": 4.0}, "metrics": {"val_ndcg@10": 0.06}, "seconds": 2.1},
            ],
        },
    ]
    bench_quality.write_json({"random": rows}, bench, data="test rows")
    return trained, bench


def test_report_command_writes_the_page(report_data: tuple[str, Path], tmp_path: Path) -> None:
    dsn, bench = report_data
    out = tmp_path / "r" / "movrec.html"
    r = CliRunner().invoke(cli, ["report", "--dsn", dsn, "-o", str(out), "--bench", str(bench)])
    assert r.exit_code == 0, r.output
    page = out.read_text()
    assert "This section failed" not in page
    # with data, these sections show it instead of their empty note
    for needle in (
        "svd",
        "#2 mf: 2 trials",
        "peer ials (benchmark): 2 trials",
        "options.alpha",
        "catalogue coverage",
        "RMSE per genre",
        "n_val_stored",  # an evaluate() figure (the split stored with the model)
        "users with CF recommendations",
        "users whose vector moved online",
    ):
        assert needle in page, needle
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = CliRunner().invoke(cli, ["report", "--dsn", dsn, "-o", str(out), "--bench", str(bad)])
    assert r.exit_code == 1 and "not a bench quality JSON file" in r.output, r.output


@pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (make setup installs them)",
)
def test_report_renders_in_headless_chromium(report_data: tuple[str, Path], tmp_path: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    dsn, bench = report_data
    page = tmp_path / "movrec.html"
    r = CliRunner().invoke(cli, ["report", "--dsn", dsn, "-o", str(page), "--bench", str(bench)])
    assert r.exit_code == 0, r.output

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.get(page.as_uri())
        WebDriverWait(driver, 60).until(
            lambda d: d.execute_script(
                "return document.readyState === 'complete' && window.Plotly !== undefined"
            )
        )
        headings = [h.text for h in driver.find_elements(By.TAG_NAME, "h2")]
        assert headings == list(HEADINGS), headings
        plots = driver.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")
        assert len(plots) >= 6, len(plots)
        for plot in plots:
            assert plot.find_elements(By.CSS_SELECTOR, "svg.main-svg"), plot.get_attribute("id")
            assert plot.size["width"] > 1000, plot.size  # full width, not half the page
        # the curves have data points drawn, not just axes
        assert driver.find_elements(By.CSS_SELECTOR, "#curves .scatterlayer .trace path")
        # a full-page screenshot: the window as tall as the document
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, min(int(height) + 100, 16000))
        shot = tmp_path / "report.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        if os.environ.get("MOVREC_SCREENSHOT_DIR"):
            keep = Path(os.environ["MOVREC_SCREENSHOT_DIR"])
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, keep / "report.png")
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        driver.quit()
