"""What the CLI prints: results on stdout, progress and notes on stderr, tables."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

import click
import numpy as np

T = TypeVar("T")


def note(message: str) -> None:
    """A progress or diagnostic line: stderr, so stdout stays the result."""
    click.echo(message, err=True)


def table(
    rows: Sequence[Sequence[Any]],
    headers: Sequence[str],
    *,
    style: str = "simple",
    align: Sequence[str] | None = None,
) -> str:
    """The one text-table printer of the CLI (tabulate): left-aligned columns under a dashed
    header by default, floats to 3 decimals, None blank.  ``style`` is a tabulate format
    ("github": Markdown); ``align`` per column ("left", "right") where numbers should line up."""
    import tabulate as tabulate_module
    from tabulate import tabulate

    # columns as wide as their widest cell (tabulate pads headers by 2 by default)
    tabulate_module.MIN_PADDING = 0
    cells = [
        [("" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)) for v in r]
        for r in rows
    ]
    text = tabulate(
        cells,
        headers=list(headers),
        tablefmt=style,
        disable_numparse=True,
        stralign="left",
        colalign=list(align) if align else None,
    )
    return "\n".join(line.rstrip() for line in text.splitlines())


class _Lines:
    """A file for tqdm when stderr is not a terminal: each refresh becomes one plain line
    (no carriage returns in a log), and tqdm's mininterval spaces them a few seconds apart."""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            sys.stderr.write(line + "\n")

    def flush(self) -> None:
        sys.stderr.flush()


NON_TTY_INTERVAL_S = 5.0


def _bar(**kwargs: Any) -> Any:
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    return tqdm(
        file=sys.stderr if tty else _Lines(),
        mininterval=0.1 if tty else NON_TTY_INTERVAL_S,
        # nothing drawn for jobs that end at once (a load that is already done shows no 0 %)
        delay=0.5,
        dynamic_ncols=tty,
        ncols=None if tty else 100,
        **kwargs,
    )


@contextlib.contextmanager
def progress(
    items: Iterable[T] | None = None,
    label: str = "",
    *,
    total: float | None = None,
    unit: str = "it",
    unit_scale: bool = False,
) -> Iterator[Any]:
    """The one progress bar of the CLI (tqdm, on stderr): rate and ETA on a terminal, a line
    every few seconds otherwise.  Iterate over the yielded bar, or call .update(n); a job that
    finishes shows 100 % (a byte count that undercounts does not stop at 99 %)."""
    if total is None and items is not None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    bar = _bar(iterable=items, desc=label, total=total, unit=unit, unit_scale=unit_scale)
    try:
        yield bar
        if bar.total and bar.n < bar.total:
            bar.update(bar.total - bar.n)
    finally:
        bar.close()


def progress_bytes(length: int, label: str) -> Any:
    """A byte-count bar (call .update(n) as bytes are read)."""
    return progress(None, label, total=length, unit="B", unit_scale=True)


def percentiles(ms: Sequence[float]) -> tuple[float, float, float]:
    """(p50, p99, mean) of timings."""
    a = np.asarray(ms, dtype=np.float64)
    return float(np.percentile(a, 50)), float(np.percentile(a, 99)), float(a.mean())
