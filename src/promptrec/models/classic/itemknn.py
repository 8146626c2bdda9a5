"""Item-kNN baseline: an item's score is the sum of its similarities to the user's history items.

References:
    B. Sarwar, G. Karypis, J. Konstan, J. Riedl. "Item-based collaborative filtering
    recommendation algorithms". WWW 2001.
    M. Deshpande, G. Karypis. "Item-based top-N recommendation algorithms". ACM TOIS 22(1), 2004
    (the top-N form used here: keep each item's nearest neighbours, sum over the history).

Similarity is the cosine between item columns of the binary user x item training matrix ``X``
(``split.train`` only; an item bought twice by a user counts once)::

    sim(i, j) = |U_i & U_j| / (sqrt(|U_i|) * sqrt(|U_j|) + shrinkage),   sim(i, i) = 0

with ``U_i`` the training users of item ``i``; ``shrinkage`` damps similarities resting on few
users. Each item keeps only its ``neighbours`` most similar items (one row of a sparse matrix
``S``), and a user's scores are the sparse product ``h @ S`` of the binary history row ``h`` of
the chosen stage (for ``"test"`` the validation item is part of the history, so it both feeds the
scores and is excluded from the answer).

Users without history get the training popularity order (score = interaction count). Item columns
follow a seeded permutation of the catalogue, so ties never follow the (possibly leaky) item ids.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Self

import numpy as np
import scipy.sparse as sp
from safetensors.numpy import load_file, save_file

from ...core.recommender import RECOMMENDERS, STAGES, ScoringRecommender, history_cells
from ...data.split import Split

STATE_FILE = "itemknn.json"
WEIGHTS_FILE = "itemknn.safetensors"


@RECOMMENDERS.register("itemknn")
class ItemKNN(ScoringRecommender):
    """Cosine item-item kNN on binary training interactions (module doc for the formula).

    Args:
        neighbours: similar items kept per item (rows of the similarity matrix are pruned to this).
        shrinkage: added to the cosine denominator; 0 gives the plain cosine.
        seed: seeds the permutation that orders item columns (and so breaks ties).
    """

    name = "itemknn"

    def __init__(self, neighbours: int = 100, shrinkage: float = 0.0, seed: int = 0) -> None:
        if isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 1:
            raise ValueError(f"neighbours must be a positive integer, got {neighbours!r}")
        if shrinkage < 0:
            raise ValueError(f"shrinkage must be >= 0, got {shrinkage!r}")
        self.neighbours = neighbours
        self.shrinkage = float(shrinkage)
        self.seed = seed

    def get_params(self) -> dict[str, Any]:
        return {"neighbours": self.neighbours, "shrinkage": self.shrinkage, "seed": self.seed}

    # -- fitting -------------------------------------------------------------------------------
    def fit(self, split: Split) -> Self:
        start = time.perf_counter()
        catalogue = split.data.items.index.astype(str).to_numpy(dtype=object)
        order = np.random.default_rng(self.seed).permutation(len(catalogue))
        self.items_: np.ndarray = catalogue[order]  # column j holds item items_[j]
        self.histories_: dict[str, dict[str, list[str]]] = {s: split.history(s) for s in STAGES}
        self._keep_item_table(split)
        self._build_index()
        n_items = len(self.items_)

        cols = self._position.get_indexer(split.train["item_id"])  # (n_train,)
        self.counts_: np.ndarray = np.bincount(cols, minlength=n_items).astype(np.float32)
        _, rows = np.unique(split.train["user_id"].to_numpy(dtype=str), return_inverse=True)
        x = _binary_rows(rows, cols, (int(rows.max(initial=-1)) + 1, n_items))  # (n_users, n_items)

        co = (x.T @ x).tocoo()  # (n_items, n_items) co-occurrence; diagonal = users per item
        norms = np.sqrt(co.diagonal())  # (n_items,)
        off = co.row != co.col
        row, col = co.row[off], co.col[off]
        sim = co.data[off] / (norms[row] * norms[col] + self.shrinkage)
        keep = _top_per_row(row, sim, self.neighbours)
        self.similarity_: sp.csr_matrix = sp.csr_matrix(
            (sim[keep].astype(np.float32), (row[keep], col[keep])), shape=(n_items, n_items)
        )
        self.fit_info_ = {"fit_seconds": round(time.perf_counter() - start, 3)}
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "similarity_"):
            raise RuntimeError("ItemKNN is not fitted: call fit(split) or from_pretrained(dir)")

    # -- prediction ----------------------------------------------------------------------------
    def _scores(self, users: list[str], seen: list[np.ndarray]) -> np.ndarray:
        """Summed similarity of every item to the history; popularity without one."""
        rows, cols = history_cells(seen)
        history = _binary_rows(rows, cols, (len(users), len(self.items_)))  # (B, n_items)
        scores = (history @ self.similarity_).toarray()  # (B, n_items)
        scores[np.array([len(s) == 0 for s in seen])] = self.counts_  # cold start: popularity
        return scores

    # -- persistence (JSON + safetensors: no pickle to execute on load) -------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        self._check_fitted()
        path = self._write_config(directory)
        s = self.similarity_
        save_file(
            {"data": s.data, "indices": s.indices, "indptr": s.indptr, "counts": self.counts_},
            str(path / WEIGHTS_FILE),
        )
        state = {"items": self.items_.tolist(), "histories": self.histories_}
        (path / STATE_FILE).write_text(json.dumps(state))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> Self:
        config = cls._read_config(directory)
        state = json.loads((Path(directory) / STATE_FILE).read_text())
        arrays = load_file(str(Path(directory) / WEIGHTS_FILE))
        model = cls(**config["params"])
        model.items_ = np.asarray(state["items"], dtype=object)
        model.histories_ = {s: state["histories"][s] for s in STAGES}
        model.fit_info_ = config.get("fit_info", {})
        model.counts_ = arrays["counts"]
        n = len(model.items_)
        model.similarity_ = sp.csr_matrix(
            (arrays["data"], arrays["indices"], arrays["indptr"]), shape=(n, n)
        )
        model._read_item_table(directory)
        model._build_index()
        return model


def _binary_rows(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """A 0/1 CSR matrix with ones at (rows, cols); repeated pairs still give 1."""
    m = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=shape)
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def _top_per_row(rows: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` largest ``values`` within each row (entries given as flat arrays)."""
    order = np.lexsort((-values, rows))  # by row, then value descending
    sorted_rows = rows[order]
    position = np.arange(len(order)) - np.searchsorted(sorted_rows, sorted_rows)  # rank in row
    return order[position < n]


__all__ = ["ItemKNN"]
