"""What the CLI prints: results on stdout, progress and notes on stderr, tables."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import click
import numpy as np

T = TypeVar("T")


def note(message: str) -> None:
    """A progress or diagnostic line: stderr, so stdout stays the result."""
    click.echo(message, err=True)


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """Rows as left-aligned columns under a dashed header; floats to 3 decimals, None blank."""
    cells = [
        [("" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)) for v in r]
        for r in rows
    ]
    widths = [
        max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]

    def line(vals: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(vals, widths, strict=True)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(c) for c in cells)])


def progress(items: Iterable[T], label: str, **kwargs: Any) -> Any:
    """A click progress bar on stderr over items (a context manager yielding them)."""
    return click.progressbar(items, label=label, file=sys.stderr, show_pos=True, **kwargs)


def progress_bytes(length: int, label: str) -> Any:
    """A click progress bar on stderr over a byte count (call .update(n) as bytes are read)."""
    return click.progressbar(length=length, label=label, file=sys.stderr, show_eta=False)


def percentiles(ms: Sequence[float]) -> tuple[float, float, float]:
    """(p50, p99, mean) of timings."""
    a = np.asarray(ms, dtype=np.float64)
    return float(np.percentile(a, 50)), float(np.percentile(a, 99)), float(a.mean())
