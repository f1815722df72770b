"""recommend(): the top k unseen movies of a user, from a chain of sources.

The fallback chain, per row (every row says which source gave it):

1. ``model``: the user's vector of the champion (a hybrid's ranking plus the item-item
   weights of the movies the user rated, movrec.item_item);
2. ``cf``: the user's Pearson CF rows in model.user_recommendation;
3. ``model`` with the champion's default vector, for a user who rated but has no
   vector of this champion (ratings bulk-loaded after the deploy);
4. ``popular``: damped mean rating ``(sum + 10 * mu) / (n + 10)``.

A later source only fills what the earlier ones left of k, skipping movies already
chosen.  Every source skips movies the user rated and movies outside the filters;
when the user has a vector, a movie the model knows and predicts below
movrec.min_predicted_rating (3 stars) is skipped by every source, so fill rows
from cf and popular are movies the model cannot score (added after training).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from movrec import backend
from movrec.errors import InvalidArgument
from movrec.scoring import clip_rating, top_k
from movrec.serving import neighbours
from movrec.serving.caches import Catalogue, aligned_positions, catalogue, popularity
from movrec.serving.user import UserState, check_user, user_state
from movrec.titles import titles

Row = tuple[int, str, float, float, str]

CF_SQL = "SELECT movie_id, score FROM model.user_recommendation WHERE user_id = $1 ORDER BY rank"


@dataclass
class _Picker:
    """Collects rows across the sources: skips seen, chosen, filtered and model-rejected movies."""

    k: int
    state: UserState
    cat_mask: np.ndarray | None  # filters over catalogue rows; None: no filter
    cat: Catalogue | None
    user: tuple[np.ndarray, float] | None  # the user's own vector: rejects movies predicted < 3
    chosen: dict[int, tuple[float, float, str]] = field(default_factory=dict)

    @property
    def missing(self) -> int:
        return self.k - len(self.chosen)

    def acceptable(self, ids: np.ndarray) -> np.ndarray:
        ok = ~_isin(ids, self.state.seen)
        if self.chosen:
            ok &= ~_isin(ids, np.fromiter(self.chosen, dtype=np.int64))
        if self.cat_mask is not None and self.cat is not None:
            ok &= self.cat.allowed(ids, self.cat_mask)
        champ = self.state.champ
        if self.user is not None and champ is not None:
            pos = champ.positions(ids)
            known = pos >= 0
            predicted = np.full(len(ids), np.inf, dtype=np.float32)
            predicted[known] = champ.predicted_at(*self.user, pos[known])
            ok &= predicted >= self.state.min_predicted
        return ok

    def add_model(self, u: np.ndarray, b_u: float) -> None:
        champ = self.state.champ
        assert champ is not None
        # the rows to skip, as positions (repeats are harmless): seen and chosen movies are a
        # few, so no mask over the whole catalogue unless a filter needs one
        skip = self.state.seen
        if self.chosen:
            skip = np.concatenate([skip, np.fromiter(self.chosen, dtype=np.int64)])
        exclude = champ.positions(skip)
        exclude = exclude[exclude >= 0]
        if self.cat_mask is not None and self.cat is not None:
            aligned = aligned_positions(champ, self.cat)
            bad = ~((aligned >= 0) & self.cat_mask[np.maximum(aligned, 0)])
            bad[exclude] = True
            exclude = np.flatnonzero(bad)
        want = self.missing
        weights = neighbours.aligned(champ) if champ.ranking is not None else None
        if weights is not None and champ.ranking is not None:
            # The ranking plus the rated movies' item-item weights: no longer one inner
            # product, so every movie is scored (the index orders the inner product only).
            rank = champ.ranking
            full = rank[:, :-1] @ np.asarray(u, dtype=rank.dtype) + rank[:, -1]
            full = full + weights.term(self.state.seen)
            best, kept = self._passing(lambda window: top_k(full, window, exclude), u, b_u, want)
            scores = full[best]
        elif champ.ranking is None:
            # Ordered by the predicted rating itself: the k best, then the >= 3 stars filter
            # (a best movie below 3 stars means every later one is below it too).
            best = champ.best(u, want, exclude)
            predicted = champ.predicted_at(u, b_u, best)
            keep = predicted >= self.state.min_predicted
            best, kept = best[keep], predicted[keep]
            scores = kept
        else:
            # Ordered by the ranking head
            best, kept = self._passing(lambda window: champ.best(u, window, exclude), u, b_u, want)
            rank = champ.ranking[best]
            scores = rank[:, :-1] @ u + rank[:, -1]
        # one clip for the k rows, and Python numbers by tolist() (one call, not one per value)
        clipped = np.asarray(clip_rating(kept)).tolist()
        for m, s, p in zip(champ.movie_ids[best].tolist(), scores.tolist(), clipped, strict=True):
            self.chosen[m] = (s, p, "model")

    def _passing(
        self, pick: Callable[[int], np.ndarray], u: np.ndarray, b_u: float, want: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The first ``want`` of the ranked candidates ``pick(window)`` that pass the >= 3 stars
        filter, and their predicted ratings.  The filter needs predicted ratings only for the
        best-ranked candidates, so take a few more than wanted and widen the window while too
        many of them fail it."""
        champ = self.state.champ
        assert champ is not None
        window = 2 * want + 16
        while True:
            cand = pick(window)
            predicted = champ.predicted_at(u, b_u, cand)
            good = np.flatnonzero(predicted >= self.state.min_predicted)
            if len(good) >= want or len(cand) < window:
                break
            window *= 4
        return cand[good[:want]], predicted[good[:want]]

    def add_ranked(self, ids: np.ndarray, scores: np.ndarray, source: str) -> None:
        """Candidates in the order given (best first)."""
        if self.missing <= 0 or not len(ids):
            return
        keep = np.flatnonzero(self.acceptable(ids))[: self.missing]
        for i in keep:
            s = float(scores[i])
            self.chosen[int(ids[i])] = (s, float(clip_rating(s)), source)

    def add_popular(self) -> None:
        if self.missing <= 0:
            return
        pop = popularity()
        ok = self.acceptable(pop.movie_ids)
        best = top_k(pop.score, self.missing, exclude=np.flatnonzero(~ok))
        for m, s in zip(pop.movie_ids[best], pop.score[best], strict=True):
            self.chosen[int(m)] = (float(s), float(s), "popular")


def _isin(ids: np.ndarray, of: np.ndarray) -> np.ndarray:
    """np.isin(ids, of) for int64 ids: a sorted search, which np.isin's setup costs more than
    for the few ids a user rated or a call chose (the answer is the same)."""
    if not len(of):
        return np.zeros(len(ids), dtype=bool)
    hay = np.sort(of)
    pos = np.minimum(np.searchsorted(hay, ids), len(hay) - 1)
    return hay[pos] == ids


@backend.sql_entry
def recommend(
    user_id: int | None,
    k: int | None,
    genres: list[str] | None = None,
    min_year: int | None = None,
    max_year: int | None = None,
) -> list[Row]:
    """recommend()'s rows with their titles, best first (movies deleted from the catalogue
    since training are left out)."""
    return _with_titles(_chosen(user_id, k, genres, min_year, max_year))


@backend.sql_entry
def recommend_rows(
    user_id: int | None,
    k: int | None,
    genres: list[str] | None = None,
    min_year: int | None = None,
    max_year: int | None = None,
) -> list[tuple[int, float, float, str]]:
    """recommend()'s rows without titles, best first: (movie_id, score, predicted_rating,
    source).  movrec._recommend() joins the titles in SQL (which also leaves out movies
    deleted since training): an index probe per row in the executor, where a lookup from
    Python costs a statement and a row-to-dict conversion per call."""
    return [
        (m, s, p, src) for m, (s, p, src) in _chosen(user_id, k, genres, min_year, max_year).items()
    ]


def _chosen(
    user_id: int | None,
    k: int | None,
    genres: list[str] | None,
    min_year: int | None,
    max_year: int | None,
) -> dict[int, tuple[float, float, str]]:
    user_id = check_user(user_id)
    if k is None or k < 1:
        raise InvalidArgument(f"k must be a positive number of movies, got {k}")
    if genres is not None and (not genres or any(g is None for g in genres)):
        raise InvalidArgument("genres must be NULL or a non-empty array without NULLs")
    filtered = genres is not None or min_year is not None or max_year is not None
    state = user_state(user_id)
    cat = catalogue(state.max_movie) if filtered else None
    cat_mask = cat.mask(genres, min_year, max_year) if cat is not None else None
    champ = state.champ
    own = (state.vector, state.bias) if champ is not None and state.vector is not None else None
    picker = _Picker(k, state, cat_mask, cat, own)

    if own is not None:  # 1. the user's own vector
        picker.add_model(*own)
    if picker.missing > 0:  # 2. Pearson CF rows
        rows = backend.execute(CF_SQL, ["int4"], [user_id])
        if rows:
            picker.add_ranked(
                np.asarray([r["movie_id"] for r in rows], dtype=np.int64),
                np.asarray([r["score"] for r in rows], dtype=np.float64),
                "cf",
            )
    default = state.default_vector()
    if picker.missing > 0 and default is not None:  # 3. a rater without a vector: the mean user
        picker.add_model(*default)
    picker.add_popular()  # 4. damped mean rating
    return picker.chosen


def _with_titles(chosen: dict[int, tuple[float, float, str]]) -> list[Row]:
    names = titles(chosen)
    return [
        (m, names[m], s, p, src)
        for m, (s, p, src) in chosen.items()
        if m in names  # a movie deleted from the catalogue since training
    ]
