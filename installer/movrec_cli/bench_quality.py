"""Peer table on the benchmark protocol: ``python -m movrec_cli.bench_quality DIR``.

DIR holds MovieLens ``ratings.csv`` (ml-latest-small for the published numbers). The
ratings are split with ``movrec.metrics.split`` (seed 42, first 90 % train) in file
order, and every peer in ``movrec_cli.baselines`` is fitted and scored. Needs the
``bench`` extras (scikit-surprise, implicit); a missing one leaves its rows empty.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd
from movrec.metrics import split

from movrec_cli.baselines import COLUMNS, MODELS, run_baselines


def load_split(ratings_csv: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The protocol's split of a MovieLens ratings file, rows in file order."""
    ratings = pd.read_csv(
        ratings_csv,
        usecols=["userId", "movieId", "rating"],
        dtype={"userId": "int64", "movieId": "int64", "rating": "float64"},
    )
    train, test = split(len(ratings))
    return ratings.iloc[train].reset_index(drop=True), ratings.iloc[test].reset_index(drop=True)


def peer_table(ratings_csv: Path, **kwargs: Any) -> list[dict[str, Any]]:
    """Load, split, and run the peers; ``kwargs`` go to ``run_baselines``."""
    train, test = load_split(ratings_csv)
    return run_baselines(train, test, **kwargs)


def format_table(rows: list[dict[str, Any]]) -> str:
    head = ["model", *COLUMNS, "fit_s", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["model"]]
        cells += ["" if row[c] is None else f"{row[c]:.4f}" for c in COLUMNS]
        cells.append("" if row["fit_seconds"] is None else f"{row['fit_seconds']:.2f}")
        cells.append(row.get("note", ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) < 1:
        print(
            f"usage: python -m movrec_cli.bench_quality DIR_OR_RATINGS_CSV [{','.join(MODELS)}]",
            file=sys.stderr,
        )
        return 2
    path = Path(argv[0])
    csv = path / "ratings.csv" if path.is_dir() else path
    which = tuple(argv[1].split(",")) if len(argv) > 1 else MODELS
    rows = peer_table(csv, which=which, progress=lambda msg: print(msg, file=sys.stderr))
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
