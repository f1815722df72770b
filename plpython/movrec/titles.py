"""Movie titles by id, the one query every result with titles uses."""

from __future__ import annotations

from collections.abc import Iterable

from movrec import backend

TITLES_SQL = "SELECT movie_id, title FROM movrec.movies WHERE movie_id = ANY($1)"


def titles(movie_ids: Iterable[int]) -> dict[int, str]:
    """movie_id -> title for the ids still in the catalogue (deleted movies are absent)."""
    ids = list(movie_ids)
    if not ids:
        return {}
    return {r["movie_id"]: r["title"] for r in backend.execute(TITLES_SQL, ["int4[]"], [ids])}
