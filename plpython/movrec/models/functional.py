"""FunctionalModel: the hybrid's sub-network without the movie-id embedding.

A movie is a pure function of its content: a content-only baseline.
"""

from __future__ import annotations

from typing import ClassVar

from movrec.models.hybrid import HybridModel


class FunctionalModel(HybridModel):
    """Movies are a pure function of their content: no movie-id embedding."""

    kind: ClassVar[str] = "functional"
    uses_id_embedding: ClassVar[bool] = False
