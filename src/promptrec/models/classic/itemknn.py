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
from itertools import pairwise
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd
import scipy.sparse as sp
from safetensors.numpy import load_file, save_file

from ...core.recommender import RECOMMENDERS, STAGES, ScoringRecommender, history_cells
from ...data.split import Split

STATE_FILE = "itemknn.json"
# Co-occurrence entries one block of the similarity computes (about 0.2 GB of work arrays).
BLOCK_PRODUCTS = 2**24
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
        rows, _ = pd.factorize(split.train["user_id"])
        x = _binary_rows(rows, cols, (int(rows.max(initial=-1)) + 1, n_items))  # (n_users, n_items)
        self.similarity_: sp.csr_matrix = self._neighbours(x)
        self.fit_info_ = {"fit_seconds": round(time.perf_counter() - start, 3)}
        return self

    def _neighbours(self, x: sp.csr_matrix) -> sp.csr_matrix:
        """The pruned (n_items, n_items) similarity of the binary (n_users, n_items) matrix ``x``.

        The co-occurrence ``x.T @ x`` is computed a block of item rows at a time and each block
        pruned to its rows' ``neighbours`` best before the next: the whole product holds every
        item pair that shares a user (10^8 and more at 10^6 users), the pruned rows at most
        ``neighbours`` per item. A block is cut so that its product touches about
        ``BLOCK_PRODUCTS`` entries, so memory stays bounded as users and items grow; the time
        is that of the whole product, the sum over users of their squared history length.
        """
        n_items = x.shape[1]
        xt = x.T.tocsr()  # (n_items, n_users)
        norms = np.sqrt(np.diff(xt.indptr).astype(np.float64))  # (n_items,) sqrt(users per item)
        # Entries a row's product touches: its users' history lengths, summed.
        work = xt @ np.diff(x.indptr).astype(np.float64)  # (n_items,)
        parts = []
        for start, end in _row_blocks(work, BLOCK_PRODUCTS):
            co = (xt[start:end] @ x).tocoo()  # (end - start, n_items) co-occurrence counts
            row, col = co.row.astype(np.int64) + start, co.col.astype(np.int64)
            off = row != col
            row, col = row[off], col[off]
            sim = co.data[off] / (norms[row] * norms[col] + self.shrinkage)
            keep = _top_per_row(row, sim, self.neighbours, col)
            parts.append((row[keep], col[keep], sim[keep].astype(np.float32)))
        if not parts:  # an empty catalogue
            return sp.csr_matrix((n_items, n_items), dtype=np.float32)
        row, col, sim = (np.concatenate([p[i] for p in parts]) for i in range(3))
        return sp.csr_matrix((sim, (row, col)), shape=(n_items, n_items))

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


def _row_blocks(work: np.ndarray, budget: float) -> list[tuple[int, int]]:
    """Consecutive (start, end) row ranges whose ``work`` sums to about ``budget`` (at least one row each)."""
    n = len(work)
    cuts = np.searchsorted(np.cumsum(work), np.arange(budget, work.sum(), budget), side="right")
    bounds = np.unique(np.r_[0, np.clip(cuts, 1, n), n]).tolist()
    return list(pairwise(bounds))


def _top_per_row(rows: np.ndarray, values: np.ndarray, n: int, cols: np.ndarray | None = None) -> np.ndarray:
    """Indices of the ``n`` largest ``values`` within each row (entries given as flat arrays);
    equal values by ``cols`` (the lower first) where given, so that the cut does not depend on
    the order in which a sparse product lists a row's entries."""
    keys = (-values, rows) if cols is None else (cols, -values, rows)
    order = np.lexsort(keys)  # by row, then value descending (then column)
    sorted_rows = rows[order]
    position = np.arange(len(order)) - np.searchsorted(sorted_rows, sorted_rows)  # rank in row
    return order[position < n]


__all__ = ["ItemKNN"]
