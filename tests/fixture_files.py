"""Small input files for the loader and ETL tests, written at test time.

Nothing here comes from a real dataset: ids, timestamps, numbers and overviews
are made up; titles and cast names are common knowledge. Each anomaly is
planted, and tests/test_pipeline.py asserts the counts each one causes:

- ml-latest/: the csv layout, with a duplicate link, a null tmdbId, a tmdbId
  claimed twice, a rating of an unknown movie, a duplicate rating (the later
  wins), and a movie without a TMDB row. Malformed rows: a non-integer movieId,
  a non-number rating, a rating outside the scale, a short row, and a tag that
  is not valid UTF-8. Titles have articles, accents, CJK and an emoji.
- ml-1m/: ``::``-separated latin-1 ``.dat`` files with one bad rating.
- ml-100k/: tab-separated ``u.data`` and pipe-separated latin-1 ``u.item`` with
  one rating outside the scale.
- tmdb/: the TMDB 5000 header; one row with bad JSON, one with a non-numeric
  popularity; a credits file with one row of bad JSON.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from movrec_cli.loaders import TMDB_HEADER

T0 = 1_000_000_000  # made-up epoch seconds


def _write(path: Path, content: str | bytes, encoding: str = "utf-8") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode(encoding) if isinstance(content, str) else content)


def _csv(rows: list[list[object]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _ml_latest(root: Path) -> None:
    _write(
        root / "movies.csv",
        """movieId,title,genres
1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy
2,"American President, The (1995)",Comedy|Drama|Romance
3,Amélie (Fabuleux destin d'Amélie Poulain) (2001),Comedy|Romance
4,千と千尋の神隠し (2001),Animation|Fantasy
5,Heat (1995),Action|Crime|Thriller
6,Alien (1979),Horror|Sci-Fi
7,Se7en 🔪 (1995),Mystery|Thriller
8,Casablanca (1942),Drama|Romance
9,"Good, the Bad and the Ugly, The (Buono, il brutto, il cattivo, Il) (1966)",Action|Adventure|Western
10,Brazil (1985),Fantasy|Sci-Fi
11,Fargo (1996),Comedy|Crime|Drama|Thriller
12,Vertigo (1958),Drama|Mystery|Romance|Thriller
13,Unrated Film (2000),(no genres listed)
x,Broken Row (2000),Drama
""",
    )
    links = ["movieId,imdbId,tmdbId"] + [f"{m},{9000000 + m:07d},{100 + m}" for m in range(1, 11)]
    links.insert(4, links[3])  # movie 3 twice
    links += ["11,9000011,", "12,9000012,105", "13,9000013,113", "abc,xyz,1"]
    _write(root / "links.csv", "\n".join(links) + "\n")
    ratings = {
        1: [1, 2, 3, 4, 5],
        2: [1, 2, 3, 4, 5, 6, 7],
        3: [1, 2],
        4: [1, 3, 5, 10],
        5: [2, 4, 6, 11, 12],
        6: [1, 2, 3, 99],
        7: [1, 8, 9],
    }
    lines = ["userId,movieId,rating,timestamp"]
    for u, movies in ratings.items():
        for i, m in enumerate(movies):
            lines.append(
                f"{u},{m},{[3.0, 4.5, 2.0, 5.0, 0.5, 3.5, 4.0][(u + m) % 7]},{T0 + 100 * u + i}"
            )
    lines.insert(2, f"1,1,1.5,{T0 + 999}")  # duplicate (1, 1), later: it wins
    lines += [f"1,2,abc,{T0}", f"1,3,7.0,{T0}", "5,5"]
    _write(root / "ratings.csv", "\n".join(lines) + "\n")
    _write(
        root / "tags.csv",
        f'userId,movieId,tag,timestamp\n1,1,pixar,{T0}\n2,5,"heist, classic",{T0}\n'.encode()
        + f"3,1,caf\xff,{T0}\n".encode("latin-1"),
    )


def _ml_1m(root: Path) -> None:
    _write(
        root / "ratings.dat",
        f"1::1::5::{T0}\n1::2::3::{T0 + 1}\n2::1::4::{T0 + 2}\n2::2::x::{T0 + 3}\n",
    )
    _write(
        root / "movies.dat",
        "1::Amélie (2001)::Comedy|Romance\n"
        "2::City of Lost Children, The (Cité des enfants perdus, La) (1995)::Adventure|Sci-Fi\n",
        "latin-1",
    )


def _ml_100k(root: Path) -> None:
    _write(
        root / "u.data",
        f"901\t242\t3\t{T0}\n902\t302\t3\t{T0 + 1}\n903\t242\t1\t{T0 + 2}\n1\t2\t9\t1\n",
    )
    comedy = "0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0"
    crime = "0|0|0|0|0|0|1|0|1|0|0|0|0|0|0|0|0|0|0"
    _write(
        root / "u.item",
        f"242|Kolya (1996)|01-Jan-1996||http://example.invalid/242|{comedy}\n"
        f"302|L.A. Confidential (1997)|01-Jan-1997||http://example.invalid/302|{crime}\n"
        f"303|Café au lait (1993)|01-Jan-1993||http://example.invalid/303|{crime}\n",
        "latin-1",
    )


def _tmdb(root: Path) -> None:
    def names(*items: str) -> str:
        return json.dumps([{"id": i, "name": n} for i, n in enumerate(items)])

    def countries(*items: str) -> str:
        return json.dumps([{"iso_3166_1": c[:2].upper(), "name": c} for c in items])

    usa = countries("United States of America")
    movies = [  # tmdb id, title, genres, keywords, companies, countries, overview, year
        (
            101,
            "Toy Story",
            names("Animation", "Comedy", "Family"),
            names("toy", "friendship"),
            names("Pixar Animation Studios"),
            usa,
            "Toys come alive when nobody watches.",
            1995,
        ),
        (
            102,
            "The American President",
            names("Comedy", "Drama", "Romance"),
            names("president"),
            names("Castle Rock Entertainment"),
            usa,
            "A president falls for a lobbyist.",
            1995,
        ),
        (
            103,
            "Amélie",
            names("Comedy", "Romance"),
            names("paris", "friendship"),
            names("Studio A"),
            countries("France", "Germany"),
            "Une serveuse à Montmartre aide les autres en secret.",
            2001,
        ),
        (
            104,
            "Spirited Away",
            names("Animation", "Family", "Fantasy"),
            names("spirit"),
            names("Studio Ghibli"),
            countries("Japan"),
            "千尋は不思議な町に迷い込む。 A girl is lost in a town of spirits.",
            2001,
        ),
        (
            105,
            "Heat",
            names("Action", "Crime", "Drama", "Thriller"),
            names("heist", "los angeles"),
            names("Studio B", "Studio C"),
            usa,
            "A thief and a detective circle each other.",
            1995,
        ),
        (
            106,
            "Alien",
            names("Horror", "Action", "Science Fiction"),
            names("spaceship", "alien"),
            names("Studio D"),
            countries("United Kingdom", "United States of America"),
            "A crew answers a signal from a dead planet.",
            1979,
        ),
        (
            107,
            "Se7en",
            names("Crime", "Mystery", "Thriller"),
            names("serial killer", "detective"),
            names("New Line Cinema"),
            usa,
            "Two detectives 🔪 follow a killer's seven clues.",
            1995,
        ),
        (
            108,
            "Casablanca",
            names("Drama", "Romance"),
            names("casablanca"),
            names("Warner Bros."),
            usa,
            "A bar owner meets an old love in wartime Morocco.",
            1942,
        ),
        (
            109,
            "The Good, the Bad and the Ugly",
            names("Western"),
            names("gold", "bounty hunter"),
            names("Studio E"),
            countries("Italy"),
            "Three gunmen race for buried gold.",
            1966,
        ),
        (113, "Unrated Film", "[]", "[]", "[]", "[]", "", None),
    ]
    rows: list[list[object]] = [list(TMDB_HEADER)]
    for i, (tid, title, genres, keywords, companies, where, overview, year) in enumerate(movies):
        rows.append(
            [
                "1000",
                genres,
                "",
                tid,
                keywords,
                "en",
                title,
                overview,
                f"{10 + i}.5",
                companies,
                where,
                f"{year}-01-01" if year else "",
                "2000",
                "" if year is None else 100 + i,
                "[]",
                "Released",
                "",
                title,
                "0" if year is None else f"{6 + i % 3}.{i}",
                0 if year is None else 100 * (i + 1),
            ]
        )
    rows.append(
        [
            "0",
            '[{"id": 1, "name": "Drama"',
            "",
            150,
            "[]",
            "en",
            "Bad Json",
            "",
            "1.0",
            "[]",
            "[]",
            "",
            "0",
            "90",
            "[]",
            "Released",
            "",
            "Bad Json",
            "5",
            "1",
        ]
    )
    rows.append(
        [
            "0",
            "[]",
            "",
            151,
            "[]",
            "en",
            "Bad Number",
            "",
            "lots",
            "[]",
            "[]",
            "",
            "0",
            "90",
            "[]",
            "Released",
            "",
            "Bad Number",
            "5",
            "1",
        ]
    )
    _write(root / "tmdb_5000_movies.csv", _csv(rows))

    def cast(*people: str) -> str:
        return json.dumps([{"cast_id": i, "name": n, "order": i} for i, n in enumerate(people)])

    def crew(director: str) -> str:
        return json.dumps(
            [{"job": "Director", "name": director}, {"job": "Editor", "name": "Someone Else"}]
        )

    _write(
        root / "tmdb_5000_credits.csv",
        _csv(
            [
                ["movie_id", "title", "cast", "crew"],
                [101, "Toy Story", cast("Tom Hanks", "Tim Allen"), crew("John Lasseter")],
                [
                    105,
                    "Heat",
                    cast("Al Pacino", "Robert De Niro", "Val Kilmer"),
                    crew("Michael Mann"),
                ],
                [
                    103,
                    "Amélie",
                    cast("Audrey Tautou", "Mathieu Kassovitz"),
                    crew("Jean-Pierre Jeunet"),
                ],
                [107, "Se7en", cast("Brad Pitt", "Morgan Freeman"), crew("David Fincher")],
                [109, "The Good, the Bad and the Ugly", "not json", "[]"],
            ]
        ),
    )


def write(root: Path) -> Path:
    """Write every fixture under ROOT (ml-latest/, ml-1m/, ml-100k/, tmdb/); returns ROOT."""
    _ml_latest(root / "ml-latest")
    _ml_1m(root / "ml-1m")
    _ml_100k(root / "ml-100k")
    _tmdb(root / "tmdb")
    return root
