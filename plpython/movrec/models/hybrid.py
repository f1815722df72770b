"""The hybrid model: a content sub-network for movies, factorised with user vectors.

HybridModel: a movie sub-network turns content (pooled token embeddings of
title, overview, cast, genres, keywords, companies, countries; normalised
numbers; a movie-id embedding) into a 100-d movie vector and a bias.  The
prediction is the live user vector times that vector, plus biases.  A movie
with no ratings still gets a vector from its content: cold start.

Ranking mode adds a second head on the same sub-network: a ranking vector and
prior, trained with a sampled softmax over movies on what users watched.
recommend() orders by <user, ranking vector> + prior; predicted ratings keep
coming from the rating head.  Both heads share the one user vector, so the
online update moves both.

The experimental baselines built on it live in functional.py and mlp.py.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from movrec import temporal as tf
from movrec.content import NUMERIC, MovieContent
from movrec.models.base import UserEmbeddings
from movrec.tokenizer import FIELDS

# Per rating: (user index, age bin, drift bin, calendar year of the rating, recent flag),
# movrec.temporal's features.
TimeRows = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

# The ranking loss's logits are (rows x candidates) and autograd keeps several copies of
# them: unbounded, a batch of 65,536 with in-batch negatives asked for 17 GB a copy and
# the kernel killed the backend, which restarts the whole server.  Past these bounds the
# batch's first IN_BATCH_MAX movies serve as in-batch candidates (the batch is shuffled,
# so they are a uniform draw of its movies; the logQ correction counts that many) and the
# ranking loss averages over the first rows that keep rows x candidates <= RANKING_LOGITS.
IN_BATCH_MAX = 4096
RANKING_LOGITS = 1 << 25


class ContentEncoder(nn.Module):
    """Content -> hidden features: mean-pooled token embeddings per field, numeric features."""

    def __init__(
        self, vocab_sizes: dict[str, int], field_dim: int, hidden: int, dropout: float
    ) -> None:
        super().__init__()
        self.fields = [f for f in FIELDS if vocab_sizes.get(f, 2) > 2]
        self.embeddings = nn.ModuleDict(
            {
                f: nn.EmbeddingBag(vocab_sizes[f], field_dim, mode="mean", padding_idx=0)
                for f in self.fields
            }
        )
        width = field_dim * len(self.fields) + 2 * len(NUMERIC)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout))

    def forward(self, tokens: dict[str, torch.Tensor], numeric: torch.Tensor) -> torch.Tensor:
        parts = [self.embeddings[f](tokens[f]) for f in self.fields]
        return self.mlp(torch.cat([*parts, numeric], dim=1))


class HybridModel(UserEmbeddings):
    kind: ClassVar[str] = "hybrid"
    deployable: ClassVar[bool] = True
    uses_id_embedding: ClassVar[bool] = True
    config: dict[str, Any]
    global_mean: torch.Tensor
    movie_ids: torch.Tensor
    numeric: torch.Tensor
    numeric_mean: torch.Tensor
    numeric_std: torch.Tensor
    train_counts: torch.Tensor
    # with temporal features only (config["temporal"])
    movie_year: torch.Tensor
    age_lookup: torch.Tensor
    age_rating: nn.Parameter
    drift_rating: nn.Parameter
    age_rank: nn.Parameter
    recent_bias: nn.Embedding

    def __init__(
        self,
        user_ids: torch.Tensor,
        movie_ids: torch.Tensor,
        content: MovieContent,
        dim: int = 100,
        global_mean: float = 3.5,
        ranking: bool = True,
        field_dim: int = 32,
        hidden: int = 256,
        dropout: float = 0.1,
        numeric_stats: tuple[np.ndarray, np.ndarray] | None = None,
        temporal: bool = False,
    ) -> None:
        super().__init__()
        content = content.select(movie_ids.numpy())
        mean, std = numeric_stats or content.numeric_stats()
        self.config = {
            "dim": dim,
            "ranking": ranking,
            "field_dim": field_dim,
            "hidden": hidden,
            "dropout": dropout,
            "vocab_sizes": dict(content.vocab_sizes),
            "rank_blend": 0.0,
            "rank_popularity": 0.0,
            "temporal": temporal,
        }
        self.register_buffer("global_mean", torch.tensor(float(global_mean)))
        self.register_buffer("user_ids", user_ids.to(torch.int64))
        self.register_buffer("movie_ids", movie_ids.to(torch.int64))
        self.register_buffer("numeric_mean", torch.tensor(mean, dtype=torch.float64))
        self.register_buffer("numeric_std", torch.tensor(std, dtype=torch.float64))
        self.register_buffer("numeric", torch.from_numpy(content.numeric(mean, std)))
        # ratings per movie in training: the popularity term of the published ranking
        self.register_buffer("train_counts", torch.zeros(len(movie_ids)))
        for f in FIELDS:
            self.register_buffer(f"tokens_{f}", torch.from_numpy(content.tokens[f]))
        self.user_embedding = nn.Embedding(len(user_ids), dim)
        self.user_bias = nn.Embedding(len(user_ids), 1)
        nn.init.normal_(self.user_embedding.weight, std=0.05)
        nn.init.zeros_(self.user_bias.weight)
        self.encoder = ContentEncoder(content.vocab_sizes, field_dim, hidden, dropout)
        self.rating_head = nn.Linear(hidden, dim + 1)
        nn.init.normal_(self.rating_head.weight, std=0.01)
        nn.init.zeros_(self.rating_head.bias)
        if self.uses_id_embedding:
            self.movie_embedding = nn.Embedding(len(movie_ids), dim)
            self.movie_bias = nn.Embedding(len(movie_ids), 1)
            nn.init.normal_(self.movie_embedding.weight, std=0.05)
            nn.init.zeros_(self.movie_bias.weight)
        self.ranking_head: nn.Linear | None = nn.Linear(hidden, dim + 1) if ranking else None
        if ranking and self.uses_id_embedding:
            # what a movie's content cannot say about who watches it: free per-movie terms
            self.ranking_embedding = nn.Embedding(len(movie_ids), dim + 1)
            nn.init.normal_(self.ranking_embedding.weight, std=0.05)
        if temporal:
            # movrec.temporal's features: a rating offset per movie-age bin and per bin of the
            # time since the user's first rating, and a ranking-prior offset per age bin
            year = np.asarray(content.raw_numeric[:, NUMERIC.index("year")], np.float64)
            self.register_buffer("movie_year", torch.from_numpy(year.copy()))
            self.register_buffer("age_lookup", torch.from_numpy(tf.AGE_LOOKUP), persistent=False)
            self.age_rating = nn.Parameter(torch.zeros(tf.N_AGE))
            self.drift_rating = nn.Parameter(torch.zeros(tf.N_DRIFT))
            self.age_rank = nn.Parameter(torch.zeros(tf.N_AGE))
            # a user's bias over their latest ratings (temporal.recent_rows), on top of
            # user_bias: where a user's ratings drift, the recent ones say more about the next
            self.recent_bias = nn.Embedding(len(user_ids), 1)
            nn.init.zeros_(self.recent_bias.weight)

    # -- the movie sub-network ------------------------------------------------
    def _hidden(self, movies: torch.Tensor) -> torch.Tensor:
        tokens = {f: getattr(self, f"tokens_{f}")[movies] for f in self.encoder.fields}
        return self.encoder(tokens, self.numeric[movies])

    def movie_repr(
        self, movies: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(rating vectors, biases, [ranking vectors | prior] or None) for movie indices."""
        h = self._hidden(movies)
        out = self.rating_head(h)
        vec, bias = out[:, :-1], out[:, -1]
        if self.uses_id_embedding:
            vec = vec + self.movie_embedding(movies)
            bias = bias + self.movie_bias(movies).squeeze(-1)
        rank = self._ranking(h, movies) if self.ranking_head is not None else None
        return vec, bias, rank

    def _ranking(self, h: torch.Tensor, movies: torch.Tensor) -> torch.Tensor:
        assert self.ranking_head is not None  # movie_repr asks only a model with the head
        rank = self.ranking_head(h)
        if self.uses_id_embedding:
            rank = rank + self.ranking_embedding(movies)
        return rank

    def forward(self, users: torch.Tensor, movies: torch.Tensor) -> torch.Tensor:
        vec, bias, _ = self.movie_repr(movies)
        return (
            (self.user_embedding(users) * vec).sum(-1)
            + self.user_bias(users).squeeze(-1)
            + bias
            + self.global_mean
        )

    @property
    def temporal(self) -> bool:
        return bool(self.config.get("temporal", False))

    def time_offset(self, times: TimeRows | None) -> torch.Tensor | float:
        """The temporal rating terms of rows (0 without temporal features)."""
        if not self.temporal or times is None:
            return 0.0
        users, age, drift, _, recent = times
        return (
            self.age_rating[age]
            + self.drift_rating[drift]
            + recent * self.recent_bias(users).squeeze(-1)
        )

    def _age_bins(self, year: torch.Tensor, movies: torch.Tensor) -> torch.Tensor:
        """(rows, movies) age bins of ``movies`` at each row's calendar year (temporal.age_bin)."""
        age = year[:, None] - self.movie_year[movies][None, :]
        known = torch.isfinite(age)
        idx = torch.nan_to_num(age, nan=0.0).clamp(-1, 32).long() + 1
        return torch.where(known, self.age_lookup[idx], torch.zeros_like(idx))

    def regularizer(self, users: torch.Tensor, movies: torch.Tensor) -> torch.Tensor:
        reg = (self.user_embedding(users) ** 2).sum(-1) + 0.1 * self.user_bias(users).squeeze(
            -1
        ) ** 2
        if self.temporal:
            reg = reg + 0.1 * self.recent_bias(users).squeeze(-1) ** 2
        if self.uses_id_embedding:
            reg = (
                reg
                + (self.movie_embedding(movies) ** 2).sum(-1)
                + 0.1 * self.movie_bias(movies).squeeze(-1) ** 2
            )
        return reg

    def joint_loss(
        self,
        users: torch.Tensor,
        movies: torch.Tensor,
        ratings: torch.Tensor,
        negatives: torch.Tensor,
        log_q: torch.Tensor | None,
        weights: torch.Tensor | None = None,
        in_batch: bool = False,
        times: TimeRows | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(rating MSE, sampled-softmax ranking loss) with one pass of the sub-network over
        the distinct movies of the batch and its negatives (popular movies recur: about
        2,100 distinct of 3,072 on ml-latest-small, a third less encoder work)."""
        distinct, where = torch.unique(torch.cat([movies, negatives]), return_inverse=True)
        vec, bias, rank = self.movie_repr(distinct)
        assert rank is not None
        at, neg_at = where[: len(movies)], where[len(movies) :]
        u = self.user_embedding(users)
        pred = (
            (u * vec[at]).sum(-1)
            + self.user_bias(users).squeeze(-1)
            + bias[at]
            + self.global_mean
            + (0.0 if times is None else self.time_offset(times))
        )
        mse = ((pred - ratings) ** 2).mean()
        if in_batch:
            # the batch's other movies are negatives too, at no extra sub-network cost;
            # log_q then counts both ways a movie can be among the candidates
            negatives = torch.cat([movies[:IN_BATCH_MAX], negatives])
            neg_at = torch.cat([at[:IN_BATCH_MAX], neg_at])
        rows = min(len(movies), max(1, RANKING_LOGITS // max(1, len(negatives))))
        extra: tuple[torch.Tensor, torch.Tensor] | None = None
        if times is not None and self.temporal:
            # each row's candidates are aged at that row's time, as serving ages them at the
            # user's query time
            # the candidates' priors per distinct rating year (a few), then per row: a gather
            # of rows, not a (rows x candidates) scatter into the 9 age terms on the way back
            years, row_year = torch.unique(times[3][:rows], return_inverse=True)
            extra = (
                self.age_rank[times[1][:rows]],
                self.age_rank[self._age_bins(years, negatives)][row_year],
            )
        args = (u[:rows], movies[:rows], rank[at[:rows]], negatives, rank[neg_at], log_q)
        ce = self._sampled_softmax(*args) if extra is None else self._sampled_softmax(*args, extra)
        return mse, (ce if weights is None else ce * weights[:rows]).mean()

    def _sampled_softmax(
        self,
        u: torch.Tensor,
        movies: torch.Tensor,
        pos: torch.Tensor,
        negatives: torch.Tensor,
        neg: torch.Tensor,
        log_q: torch.Tensor | None,
        extra: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Each watched movie against sampled movies (``neg``: their [ranking vector | prior]).

        ``log_q`` is the log sampling probability of every movie; subtracting it
        from the logits (the logQ correction) keeps the estimate unbiased however
        the negatives were drawn.  Without it, popular negatives would push
        popular movies down, and those are what users watch most.
        """
        logit_pos = (u * pos[:, :-1]).sum(-1) + pos[:, -1]
        logit_neg = u @ neg[:, :-1].T + neg[:, -1]
        if extra is not None:  # temporal prior terms: (rows,) and (rows, candidates)
            logit_pos = logit_pos + extra[0]
            logit_neg = logit_neg + extra[1]
        if log_q is not None:
            logit_pos = logit_pos - log_q[movies]
            logit_neg = logit_neg - log_q[negatives]
        logit_neg = logit_neg.masked_fill(
            negatives[None, :] == movies[:, None], -1e9
        )  # accidental hits
        logits = torch.cat([logit_pos[:, None], logit_neg], dim=1)
        return nn.functional.cross_entropy(
            logits, torch.zeros(len(u), dtype=torch.long, device=logits.device), reduction="none"
        )

    def ranking_regularizer(self, movies: torch.Tensor) -> torch.Tensor:
        if not self.uses_id_embedding or self.ranking_head is None:
            return torch.zeros((), device=movies.device)
        return (self.ranking_embedding(movies) ** 2).sum(-1).mean()

    # -- what deploy publishes ---------------------------------------------------
    @torch.no_grad()
    def all_movies(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        was = self.training
        self.eval()
        out = self.movie_repr(torch.arange(len(self.movie_ids)))
        self.train(was)
        return out

    def movie_side(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        vec, bias, _ = self.all_movies()
        return self.movie_ids, vec, bias

    def ranking_side(self) -> torch.Tensor | None:
        """(n_movies, dim + 1) [ranking vector | prior], or None without a ranking head.

        With rank_blend = b, the published ranking is ranking score + b x predicted
        rating: per user, <u, G + bQ> + (c + b x movie bias) differs from it by a
        constant, so the blend is baked into the matrix and serving is unchanged.
        rank_popularity = p adds p x log(1 + training ratings) to each movie's prior.
        """
        return self.ranking_from(*self.all_movies())

    def ranking_from(
        self, vec: torch.Tensor, bias: torch.Tensor, rank: torch.Tensor | None
    ) -> torch.Tensor | None:
        """ranking_side() from the sub-network's output for all movies (all_movies())."""
        out = self._blend(vec, bias, rank)
        popularity = float(self.config.get("rank_popularity", 0.0))
        if out is None or popularity == 0.0:
            return out
        return torch.cat(
            [out[:, :-1], (out[:, -1] + popularity * torch.log1p(self.train_counts))[:, None]], 1
        )

    def _blend(
        self, vec: torch.Tensor, bias: torch.Tensor, rank: torch.Tensor | None
    ) -> torch.Tensor | None:
        blend = float(self.config.get("rank_blend", 0.0))
        if rank is None or blend == 0.0:
            return rank
        return torch.cat([rank[:, :-1] + blend * vec, (rank[:, -1] + blend * bias)[:, None]], dim=1)

    @torch.no_grad()
    def temporal_side(self) -> dict[str, np.ndarray] | None:
        """What serving adds for a user at query time t (movrec.temporal), or None without
        temporal features: ``movie_year`` per movie (NaN unknown); ``age_rating`` and
        ``drift_rating``, the rating offsets per bin; ``age_rank``, the ranking offsets per age
        bin with the published blend baked in (rank_blend x age_rating), as ranking_side()
        bakes it into the matrix; ``recent_bias``, per user of user_side(), added to the user's
        bias (the query time is the user's latest rating: always recent).  The drift and recent
        offsets are the same for every movie of a user, so they change predicted ratings (and
        the 3-star filter), not the order."""
        if not self.temporal:
            return None
        blend = float(self.config.get("rank_blend", 0.0))
        return {
            "movie_year": self.movie_year.cpu().numpy().copy(),
            "age_rating": self.age_rating.detach().cpu().numpy().astype(np.float64),
            "drift_rating": self.drift_rating.detach().cpu().numpy().astype(np.float64),
            "age_rank": (self.age_rank + blend * self.age_rating).detach().cpu().numpy(),
            "recent_bias": self.recent_bias.weight[:, 0].detach().cpu().numpy().astype(np.float64),
        }

    @torch.no_grad()
    def content_side(
        self, tokens: dict[str, torch.Tensor], numeric: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(vectors, biases, ranking) from content alone, no movie-id terms: what a movie
        without ratings gets (cold start); ranking carries the same blend as ranking_side()."""
        was = self.training
        self.eval()
        h = self.encoder(tokens, numeric)
        out = self.rating_head(h)
        vec, bias = out[:, :-1], out[:, -1]
        rank = self.ranking_head(h) if self.ranking_head is not None else None
        self.train(was)
        return vec, bias, self._blend(vec, bias, rank)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], config: dict[str, Any]) -> HybridModel:
        ids = state["movie_ids"].numpy()
        content = MovieContent(
            ids,
            {f: state[f"tokens_{f}"].numpy() for f in FIELDS},
            dict(config["vocab_sizes"]),
            np.zeros((len(ids), len(NUMERIC))),
        )
        model = cls(
            state["user_ids"],
            state["movie_ids"],
            content,
            dim=config["dim"],
            global_mean=float(state["global_mean"]),
            ranking=config["ranking"],
            field_dim=config["field_dim"],
            hidden=config["hidden"],
            dropout=config["dropout"],
            numeric_stats=(state["numeric_mean"].numpy(), state["numeric_std"].numpy()),
            temporal=bool(config.get("temporal", False)),
        )
        state = dict(state)
        state.setdefault("train_counts", torch.zeros(len(ids)))  # checkpoints before 0.1.0's end
        model.load_state_dict(state)
        model.config["rank_blend"] = float(config.get("rank_blend", 0.0))
        model.config["rank_popularity"] = float(config.get("rank_popularity", 0.0))
        return model
