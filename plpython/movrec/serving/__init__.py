"""Serving in the backend, numpy only: recommend(), predict(), explain() and the stored lists.

``caches``     the champion's movie side, the catalogue's filters, popularity (per backend)
``user``       one user's vector of the champion and what they rated
``recommend``  recommend() and its fallback chain (model, cf, default vector, popular)
``predict``    predict() and predict_many()
``explain``    explain(): the rated movies that support a candidate
``refresh``    model.model_recommendation, the top 150 per user
``queue``      the refresh queue that ratings feed

The SQL bodies call the names re-exported here (``from movrec import serving;
serving.recommend(...)``), so moving code between these modules never edits SQL.
"""

from movrec.serving.caches import (
    Catalogue,
    Popularity,
    catalogue,
    champion,
    current_champion,
    popularity,
    with_extra,
)
from movrec.serving.explain import explain, explain_rows
from movrec.serving.predict import predict, predict_many
from movrec.serving.queue import QUEUE, drain_from_sql
from movrec.serving.recommend import recommend, recommend_rows
from movrec.serving.refresh import refresh_from_sql, refresh_many, top_for_users
from movrec.serving.user import UserState, user_state

__all__ = [
    "QUEUE",
    "Catalogue",
    "Popularity",
    "UserState",
    "catalogue",
    "champion",
    "current_champion",
    "drain_from_sql",
    "explain",
    "explain_rows",
    "popularity",
    "predict",
    "predict_many",
    "recommend",
    "recommend_rows",
    "refresh_from_sql",
    "refresh_many",
    "top_for_users",
    "user_state",
    "with_extra",
]
