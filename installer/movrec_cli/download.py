"""Fetch an official MovieLens archive and verify it against GroupLens' published MD5."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from movrec_cli.errors import CliError

GROUPLENS = "https://files.grouplens.org/datasets/movielens/"
DATASETS = ("ml-latest-small", "ml-latest", "ml-20m", "ml-25m", "ml-1m", "ml-100k")


def _fetch(url: str, timeout: float = 30) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # http(s) and file URLs
            return response.read()
    except (urllib.error.URLError, OSError) as e:
        raise CliError(
            f"cannot download {url}: {getattr(e, 'reason', e)} "
            "(offline? pass a local directory instead of --download)"
        ) from None


def download_movielens(name: str, into: Path) -> Path:
    """Download NAME.zip and NAME.zip.md5, verify, extract into INTO; returns the data directory."""
    if name not in DATASETS:
        raise CliError(f"unknown MovieLens dataset {name!r}: one of {', '.join(DATASETS)}")
    base = os.environ.get("MOVREC_GROUPLENS_URL", GROUPLENS).rstrip("/") + "/"
    target = into / name
    if target.is_dir() and any(target.iterdir()):
        return target
    archive = _fetch(f"{base}{name}.zip")
    expected = _fetch(f"{base}{name}.zip.md5").decode().split()
    digest = hashlib.md5(archive).hexdigest()  # GroupLens publishes MD5 only
    if digest not in expected:
        raise CliError(
            f"{name}.zip failed its checksum: md5 {digest}, GroupLens says {' '.join(expected)}"
        )
    into.mkdir(parents=True, exist_ok=True)
    zip_path = into / f"{name}.zip"
    zip_path.write_bytes(archive)
    with zipfile.ZipFile(zip_path) as z:
        z.extractall(into)
    return target
