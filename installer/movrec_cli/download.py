"""Fetch an official MovieLens archive and verify it against GroupLens' published MD5 (pooch)."""

from __future__ import annotations

import os
import shutil
import urllib.parse
import zipfile
from pathlib import Path
from typing import Any

from movrec_cli.errors import CliError

GROUPLENS = "https://files.grouplens.org/datasets/movielens/"
DATASETS = ("ml-latest-small", "ml-latest", "ml-20m", "ml-25m", "ml-1m", "ml-100k")
TIMEOUT_S = 30


def _copy_local(url: str, output_file: Any, _pooch: Any) -> None:
    """A pooch downloader for file:// URLs (a local mirror): pooch itself speaks http(s)/ftp."""
    source = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path))
    if hasattr(output_file, "write"):
        with open(source, "rb") as f:
            shutil.copyfileobj(f, output_file)
    else:
        shutil.copyfile(source, output_file)


def _downloader(url: str, progress: bool) -> Any:
    import pooch

    if url.startswith("file:"):
        return _copy_local
    return pooch.HTTPDownloader(progressbar=progress, timeout=TIMEOUT_S)


def _retrieve(url: str, into: Path, known_hash: str | None, progress: bool = False) -> Path:
    """pooch.retrieve into INTO (streamed to disk, checked against known_hash, kept on success);
    a failed download is a CliError naming the URL."""
    import pooch

    try:
        return Path(
            pooch.retrieve(
                url,
                known_hash=known_hash,
                fname=url.rsplit("/", 1)[-1],
                path=into,
                downloader=_downloader(url, progress),
            )
        )
    except ValueError as e:
        if "hash" in str(e).lower():
            raise
        raise CliError(f"cannot download {url}: {e}") from None
    except Exception as e:  # requests' errors, a missing local file
        raise CliError(
            f"cannot download {url}: {e} (offline? pass a local directory instead of --download)"
        ) from None


def download_movielens(name: str, into: Path) -> Path:
    """Download NAME.zip, verify it against NAME.zip.md5, extract into INTO; returns the data
    directory.  An archive that fails its checksum is removed (pooch) and nothing is extracted."""
    if name not in DATASETS:
        raise CliError(f"unknown MovieLens dataset {name!r}: one of {', '.join(DATASETS)}")
    base = os.environ.get("MOVREC_GROUPLENS_URL", GROUPLENS).rstrip("/") + "/"
    target = into / name
    if target.is_dir() and any(target.iterdir()):
        return target
    into.mkdir(parents=True, exist_ok=True)
    md5_file = _retrieve(f"{base}{name}.zip.md5", into, None)
    expected = md5_file.read_text().split()
    md5_file.unlink()  # fetched fresh each time: it is what the archive is checked against
    if not expected:
        raise CliError(f"{base}{name}.zip.md5 is empty: nothing to check {name}.zip against")
    try:
        zip_path = _retrieve(f"{base}{name}.zip", into, f"md5:{expected[0]}", progress=True)
    except ValueError as e:  # pooch: the hash did not match (the file is not kept)
        raise CliError(f"{name}.zip failed its checksum: {e}") from None
    with zipfile.ZipFile(zip_path) as z:
        z.extractall(into)
    return target
