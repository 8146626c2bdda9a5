"""Most-popular baseline: every user gets the items with the most training interactions.

The weakest sensible recommender, and the first number an LM recommender must beat. Items are
ranked by their count of training interactions (``split.train`` only, so validation and test
events never leak in), score = that count. The whole catalogue is ranked, including items nobody
interacted with (count 0), so a user who has seen every counted item still gets ``k`` answers.

Ties are broken by a seeded random permutation, not by item id: ids may carry order information
(P5-style numbering in order of appearance puts items seen early, hence often popular or
train-side, at small ids), and breaking ties by id would smuggle that into the ranking.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd

from ...core.recommender import (
    RECOMMENDERS,
    STAGES,
    ScoringRecommender,
    history_cells,
    recommendation_frame,
)
from ...data.split import Split

STATE_FILE = "popularity.json"


@RECOMMENDERS.register("popularity")
class MostPopular(ScoringRecommender):
    """Rank items by training-interaction count; ``seed`` fixes the order among equal counts."""

    name = "popularity"
    block_size = 2048  # the work arrays are only (users, k + longest history)
    dense_scores = False  # no (users, n_items) array here, except for candidate lists

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def get_params(self) -> dict[str, Any]:
        return {"seed": self.seed}

    # -- fitting -------------------------------------------------------------------------------
    def fit(self, split: Split) -> Self:
        start = time.perf_counter()
        catalogue = split.data.items.index.astype(str)
        counts = split.train["item_id"].value_counts().reindex(catalogue, fill_value=0).to_numpy()
        tiebreak = np.random.default_rng(self.seed).permutation(len(catalogue))
        order = np.lexsort((tiebreak, -counts))  # last key is primary: count desc, then tiebreak
        self.items_: np.ndarray = catalogue.to_numpy(dtype=object)[order]  # (n_items,) best first
        self.counts_: np.ndarray = counts[order].astype(np.int64)  # (n_items,)
        # The histories recommend() excludes, per stage: no Split is needed at serving time.
        self.histories_: dict[str, dict[str, list[str]]] = {s: split.history(s) for s in STAGES}
        self._keep_item_table(split)
        self._build_index()
        self.fit_info_ = {"fit_seconds": round(time.perf_counter() - start, 3)}
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "items_"):
            raise RuntimeError("MostPopular is not fitted: call fit(split) or from_pretrained(dir)")

    # -- prediction ----------------------------------------------------------------------------
    def _scores(self, users: list[str], seen: list[np.ndarray]) -> np.ndarray:
        """The counts, for every user alike; ``_recommend_block`` ranks them without this array."""
        return np.tile(self.counts_.astype(float), (len(users), 1))

    def _recommend_block(
        self,
        users: list[str],
        k: int,
        seen: list[np.ndarray],
        exclude_seen: bool,
        allowed: list[np.ndarray | None] | None,
    ) -> pd.DataFrame:
        if allowed is not None:  # candidate lists: the generic masked ranking
            return super()._recommend_block(users, k, seen, exclude_seen, allowed)
        # The generic answer without the dense (B, n_items) array: columns are in popularity order,
        # so a user's best k unseen items lie within the first k + len(history) columns, and one
        # slice as wide as the longest history in the block covers everyone.
        seen = seen if exclude_seen else []
        width = min(len(self.items_), k + max(map(len, seen), default=0))
        available = np.ones((len(users), width), dtype=bool)  # (B, width)
        rows, cols = history_cells(seen)
        inside = (cols >= 0) & (cols < width)  # -1: not in the catalogue
        available[rows[inside], cols[inside]] = False
        rank = np.cumsum(available, axis=1, dtype=np.int32)  # (B, width) rank if the item is kept
        r, c = np.nonzero(available & (rank <= k))  # row-major: by user, then by popularity
        return recommendation_frame(
            np.asarray(users, dtype=object)[r], self.items_[c], self.counts_[c], rank[r, c]
        )

    # -- persistence (JSON only: readable, and no pickle to execute on load) --------------------
    def save_pretrained(self, directory: str | Path) -> None:
        self._check_fitted()
        path = self._write_config(directory)
        state = {
            "items": self.items_.tolist(),
            "counts": self.counts_.tolist(),
            "histories": self.histories_,
        }
        (path / STATE_FILE).write_text(json.dumps(state))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> Self:
        config = cls._read_config(directory)
        state = json.loads((Path(directory) / STATE_FILE).read_text())
        model = cls(**config["params"])
        model.items_ = np.asarray(state["items"], dtype=object)
        model.counts_ = np.asarray(state["counts"], dtype=np.int64)
        model.histories_ = {s: state["histories"][s] for s in STAGES}
        model.fit_info_ = config.get("fit_info", {})
        model._read_item_table(directory)
        model._build_index()
        return model


__all__ = ["MostPopular"]
