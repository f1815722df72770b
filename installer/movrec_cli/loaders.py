"""File loaders: MovieLens (the layouts people have) and TMDB into staging tables.

Good rows go to staging.* with COPY; a malformed row goes to movrec.quarantine
with file, line, column and reason, never silently dropped.  A load replaces
the previous load of the same source in one transaction, and loading files
whose checksum was already loaded changes nothing.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg
from movrec.content import GENRES

from movrec_cli.connection import one
from movrec_cli.errors import CliError

Progress = Callable[[int], None]  # called with bytes consumed


class BadField(Exception):
    def __init__(self, column: str | None, reason: str):
        super().__init__(reason)
        self.column = column
        self.reason = reason


@dataclass
class Reject:
    file: str
    line: int
    column: str | None
    reason: str
    raw: str


@dataclass
class FileSpec:
    """One input file: where its rows go and how a row is read."""

    name: str
    table: str
    columns: tuple[str, ...]
    parse: Callable[[list[str]], tuple[Any, ...]]
    n_fields: int
    delimiter: str = ","
    encoding: str = "utf-8"
    header: bool = True
    required: bool = True


@dataclass
class LoadResult:
    source: str
    layout: str
    skipped: bool
    rows: dict[str, int] = field(default_factory=dict)
    rejects: list[Reject] = field(default_factory=list)


# --- field parsers ------------------------------------------------------------

_SURROGATE = re.compile("[\udc80-\udcff]")


def _int(value: str, column: str, *, nullable: bool = False, positive: bool = True) -> int | None:
    value = value.strip()
    if value == "" and nullable:
        return None
    try:
        number = int(value)
    except ValueError:
        raise BadField(column, f"not an integer: {value[:40]!r}") from None
    if positive and number <= 0:
        raise BadField(column, f"must be positive: {number}")
    return number


def _float(value: str, column: str, *, nullable: bool = True) -> float | None:
    value = value.strip()
    if value == "" and nullable:
        return None
    try:
        number = float(value)
    except ValueError:
        raise BadField(column, f"not a number: {value[:40]!r}") from None
    if not math.isfinite(number):
        raise BadField(column, f"not a finite number: {value!r}")
    return number


def _rating(value: str) -> float:
    rating = _float(value, "rating", nullable=False)
    assert rating is not None
    if not 0.5 <= rating <= 5.0:
        raise BadField("rating", f"outside the 0.5..5 scale: {rating}")
    return rating


def _timestamp(value: str, column: str) -> datetime | None:
    seconds = _int(value, column, nullable=True, positive=False)
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


_TITLE_YEAR = re.compile(r"^(.*?)\s*\((\d{4})(?:\s*[-\u2013]\s*\d{0,4})?\)\s*$")
_ARTICLE = re.compile(r"^(.*), (The|A|An|Les|La|Le|L'|Il|El|Das|Der|Die|Los|Las|Det|Den)$")


def split_title(raw: str) -> tuple[str, int | None]:
    """'American President, The (1995)' -> ('The American President', 1995)."""
    raw = raw.strip()
    match = _TITLE_YEAR.match(raw)
    title, year = (match.group(1), int(match.group(2))) if match else (raw, None)
    # the article may sit before an alternative title: 'City of Lost Children, The (Cité ...)'
    head, sep, tail = title.partition(" (")
    article = _ARTICLE.match(head)
    if article:
        word = article.group(2)
        head = f"{word}{'' if word.endswith(chr(39)) else ' '}{article.group(1)}"
        title = head + sep + tail
    if not title:
        raise BadField("title", "empty title")
    if year is not None and not 1870 <= year <= 2100:
        year = None
    return title, year


def _genres(value: str) -> list[str]:
    return [g for g in value.split("|") if g and g != "(no genres listed)"]


def _names(value: str, column: str, key: str = "name") -> list[str]:
    """TMDB JSON columns: '[{"id": 28, "name": "Action"}, ...]' -> ['Action', ...]."""
    if value.strip() == "":
        return []
    try:
        items = json.loads(value)
    except json.JSONDecodeError as e:
        raise BadField(column, f"bad JSON: {e.msg} at char {e.pos}") from None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise BadField(column, "bad JSON: expected a list of objects")
    return [str(i[key]) for i in items if i.get(key)]


def _date(value: str, column: str) -> date | None:
    value = value.strip()
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise BadField(column, f"not a date: {value[:20]!r}") from None


# --- row parsers per file ---------------------------------------------------------


def _ratings(f: list[str]) -> tuple[Any, ...]:
    return (
        _int(f[0], "userId"),
        _int(f[1], "movieId"),
        _rating(f[2]),
        _timestamp(f[3], "timestamp"),
    )


def _movies(f: list[str]) -> tuple[Any, ...]:
    title, year = split_title(f[1])
    return (_int(f[0], "movieId"), title, year, _genres(f[2]))


def _links(f: list[str]) -> tuple[Any, ...]:
    return (
        _int(f[0], "movieId", nullable=True),
        f[1].strip() or None,
        _int(f[2], "tmdbId", nullable=True),
    )


def _tags(f: list[str]) -> tuple[Any, ...]:
    return (_int(f[0], "userId"), _int(f[1], "movieId"), f[2], _timestamp(f[3], "timestamp"))


_ML100K_GENRES = ("(no genres listed)", *GENRES)  # the order of u.item's 19 flags


def _ml100k_item(f: list[str]) -> tuple[Any, ...]:
    title, year = split_title(f[1])
    flags = f[5:24]
    if any(x not in ("0", "1") for x in flags):
        raise BadField("genres", "genre flags must be 0 or 1")
    return (
        _int(f[0], "movie id"),
        title,
        year,
        [
            g
            for g, x in zip(_ML100K_GENRES, flags, strict=True)
            if x == "1" and g != "(no genres listed)"
        ],
    )


RATINGS_COLS = ("user_id", "movie_id", "rating", "rated_at")
MOVIES_COLS = ("movie_id", "title", "year", "genres")

MOVIELENS_LAYOUTS: dict[str, list[FileSpec]] = {
    # ml-latest, ml-latest-small, ml-20m, ml-25m
    "csv": [
        FileSpec("ratings.csv", "staging.ml_ratings", RATINGS_COLS, _ratings, 4),
        FileSpec("movies.csv", "staging.ml_movies", MOVIES_COLS, _movies, 3),
        FileSpec(
            "links.csv",
            "staging.ml_links",
            ("movie_id", "imdb_id", "tmdb_id"),
            _links,
            3,
            required=False,
        ),
        FileSpec(
            "tags.csv",
            "staging.ml_tags",
            ("user_id", "movie_id", "tag", "tagged_at"),
            _tags,
            4,
            required=False,
        ),
    ],
    "ml-1m": [
        FileSpec(
            "ratings.dat", "staging.ml_ratings", RATINGS_COLS, _ratings, 4, "::", "latin-1", False
        ),
        FileSpec(
            "movies.dat", "staging.ml_movies", MOVIES_COLS, _movies, 3, "::", "latin-1", False
        ),
    ],
    "ml-100k": [
        FileSpec("u.data", "staging.ml_ratings", RATINGS_COLS, _ratings, 4, "\t", "latin-1", False),
        FileSpec(
            "u.item", "staging.ml_movies", MOVIES_COLS, _ml100k_item, 24, "|", "latin-1", False
        ),
    ],
}
MOVIELENS_TABLES = (
    "staging.ml_ratings",
    "staging.ml_movies",
    "staging.ml_links",
    "staging.ml_tags",
)


def detect_layout(directory: Path) -> str:
    for layout, specs in MOVIELENS_LAYOUTS.items():
        if (directory / specs[0].name).is_file():
            return layout
    raise CliError(f"{directory} holds no MovieLens ratings (ratings.csv, ratings.dat or u.data)")


# --- TMDB -----------------------------------------------------------------------

TMDB_COLUMNS = (
    "tmdb_id",
    "title",
    "original_title",
    "original_language",
    "overview",
    "tagline",
    "genres",
    "keywords",
    "companies",
    "countries",
    "release_date",
    "runtime",
    "popularity",
    "vote_average",
    "vote_count",
    "budget",
    "revenue",
)
TMDB_HEADER = (
    "budget",
    "genres",
    "homepage",
    "id",
    "keywords",
    "original_language",
    "original_title",
    "overview",
    "popularity",
    "production_companies",
    "production_countries",
    "release_date",
    "revenue",
    "runtime",
    "spoken_languages",
    "status",
    "tagline",
    "title",
    "vote_average",
    "vote_count",
)


def _tmdb(f: list[str]) -> tuple[Any, ...]:
    r = dict(zip(TMDB_HEADER, f, strict=True))
    vote_count = _int(r["vote_count"], "vote_count", nullable=True, positive=False)
    return (
        _int(r["id"], "id"),
        r["title"] or None,
        r["original_title"] or None,
        r["original_language"] or None,
        r["overview"] or None,
        r["tagline"] or None,
        _names(r["genres"], "genres"),
        _names(r["keywords"], "keywords"),
        _names(r["production_companies"], "production_companies"),
        _names(r["production_countries"], "production_countries"),
        _date(r["release_date"], "release_date"),
        _float(r["runtime"], "runtime"),
        _float(r["popularity"], "popularity"),
        _float(r["vote_average"], "vote_average"),
        vote_count,
        _int(r["budget"], "budget", nullable=True, positive=False),
        _int(r["revenue"], "revenue", nullable=True, positive=False),
    )


def _credits(f: list[str]) -> tuple[Any, ...]:
    try:
        cast = json.loads(f[2]) if f[2].strip() else []
        crew = json.loads(f[3]) if f[3].strip() else []
    except json.JSONDecodeError as e:
        raise BadField("cast/crew", f"bad JSON: {e.msg} at char {e.pos}") from None
    if not isinstance(cast, list) or not isinstance(crew, list):
        raise BadField("cast/crew", "bad JSON: expected lists")
    cast = sorted(
        (c for c in cast if isinstance(c, dict) and c.get("name")), key=lambda c: c.get("order", 0)
    )
    directors = [
        c["name"]
        for c in crew
        if isinstance(c, dict) and c.get("job") == "Director" and c.get("name")
    ]
    return (_int(f[0], "movie_id"), [c["name"] for c in cast], directors)


TMDB_SPEC = FileSpec("", "staging.tmdb_movies", TMDB_COLUMNS, _tmdb, len(TMDB_HEADER))
CREDITS_SPEC = FileSpec(
    "", "staging.tmdb_credits", ("tmdb_id", "cast_names", "directors"), _credits, 4
)


# --- the engine -------------------------------------------------------------------


def _records(
    path: Path, spec: FileSpec, progress: Progress | None
) -> Iterator[tuple[int, list[str], str]]:
    """(line number, fields, raw text) per record; CSV records may span lines."""
    with open(path, encoding=spec.encoding, errors="surrogateescape", newline="") as fh:

        def lines() -> Iterator[str]:
            for line in fh:
                if progress:
                    progress(len(line))
                yield line

        if spec.delimiter == ",":
            reader = csv.reader(lines())
            start = 1
            for fields in reader:
                raw = ",".join(fields)
                yield start, fields, raw
                start = reader.line_num + 1
        else:
            for number, line in enumerate(lines(), start=1):
                text = line.rstrip("\r\n")
                if text:
                    yield number, text.split(spec.delimiter), text


def read_file(
    path: Path, spec: FileSpec, progress: Progress | None = None
) -> Iterator[tuple[Any, ...] | Reject]:
    records = _records(path, spec, progress)
    if spec.header:
        next(records, None)
    for line, fields, raw in records:
        if _SURROGATE.search(raw):
            yield Reject(
                path.name,
                line,
                None,
                "broken encoding: not valid UTF-8",
                raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace")[:500],
            )
            continue
        if len(fields) != spec.n_fields:
            yield Reject(
                path.name,
                line,
                None,
                f"expected {spec.n_fields} columns, got {len(fields)}",
                raw[:500],
            )
            continue
        try:
            yield spec.parse(fields)
        except BadField as e:
            yield Reject(path.name, line, e.column, e.reason, raw[:500])


def checksum(paths: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    for p in paths:
        digest.update(p.name.encode())
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _load(
    conn: psycopg.Connection,
    source: str,
    layout: str,
    files: list[tuple[Path, FileSpec]],
    tables: tuple[str, ...],
    progress: Progress | None,
    force: bool,
) -> LoadResult:
    total = checksum(p for p, _ in files)
    last = conn.execute(
        "SELECT checksum FROM movrec.loads WHERE source = %s ORDER BY load_id DESC LIMIT 1",
        (source,),
    ).fetchone()
    if last and last[0] == total and not force:
        return LoadResult(source, layout, skipped=True)
    result = LoadResult(source, layout, skipped=False)
    with conn.transaction():
        conn.execute("TRUNCATE " + ", ".join(tables))
        conn.execute(
            "DELETE FROM movrec.quarantine WHERE load_id IN "
            "(SELECT load_id FROM movrec.loads WHERE source = %s)",
            (source,),
        )
        load_id = one(
            conn.execute(
                "INSERT INTO movrec.loads (source, layout, path, checksum) VALUES (%s, %s, %s, %s) RETURNING load_id",
                (source, layout, str(files[0][0].parent.resolve()), total),
            )
        )[0]
        with conn.cursor() as cur:
            for path, spec in files:
                n = 0
                with cur.copy(f"COPY {spec.table} ({', '.join(spec.columns)}) FROM STDIN") as copy:
                    for row in read_file(path, spec, progress):
                        if isinstance(row, Reject):
                            result.rejects.append(row)
                        else:
                            copy.write_row(row)
                            n += 1
                result.rows[path.name] = n
            with cur.copy(
                "COPY movrec.quarantine (load_id, file, line_no, column_name, reason, raw) "
                "FROM STDIN"
            ) as copy:
                for r in result.rejects:
                    copy.write_row((load_id, r.file, r.line, r.column, r.reason, r.raw))
        conn.execute(
            "UPDATE movrec.loads SET rows_loaded = %s, rows_quarantined = %s WHERE load_id = %s",
            (json.dumps(result.rows), len(result.rejects), load_id),
        )
    return result


def movielens_files(directory: Path) -> tuple[str, list[tuple[Path, FileSpec]]]:
    layout = detect_layout(directory)
    files = []
    for spec in MOVIELENS_LAYOUTS[layout]:
        path = directory / spec.name
        if path.is_file():
            files.append((path, spec))
        elif spec.required:
            raise CliError(f"{directory} looks like the {layout} layout but has no {spec.name}")
    return layout, files


def load_movielens(
    conn: psycopg.Connection, directory: Path, progress: Progress | None = None, force: bool = False
) -> LoadResult:
    layout, files = movielens_files(directory)
    return _load(conn, "movielens", layout, files, MOVIELENS_TABLES, progress, force)


def load_tmdb(
    conn: psycopg.Connection,
    movies: Path,
    credits: Path | None = None,
    progress: Progress | None = None,
    force: bool = False,
) -> list[LoadResult]:
    for p in (movies, credits):
        if p is not None and not p.is_file():
            raise CliError(f"no such file: {p}")
    with open(movies, encoding="utf-8", errors="replace", newline="") as fh:
        header = tuple(next(csv.reader(fh), []))
    if header != TMDB_HEADER:
        raise CliError(
            f"{movies} is not tmdb_5000_movies.csv: its header is {', '.join(header[:6])}..."
        )
    results = [
        _load(
            conn,
            "tmdb",
            "tmdb-5000",
            [(movies, TMDB_SPEC)],
            ("staging.tmdb_movies",),
            progress,
            force,
        )
    ]
    if credits is not None:
        results.append(
            _load(
                conn,
                "tmdb-credits",
                "tmdb-5000",
                [(credits, CREDITS_SPEC)],
                ("staging.tmdb_credits",),
                progress,
                force,
            )
        )
    return results


def total_bytes(paths: Iterable[Path]) -> int:
    return sum(p.stat().st_size for p in paths)
