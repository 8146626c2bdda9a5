"""Biased matrix factorisation for explicit ratings: the rating-prediction baseline.

Reference:
    Y. Koren, R. Bell, C. Volinsky. "Matrix Factorization Techniques for Recommender Systems".
    IEEE Computer 42(8), 2009 (equations 3 and 5).

Model: a predicted rating is the global mean plus a user bias, an item bias and the dot product
of ``factors``-dimensional user and item vectors,

    r̂_ui = μ + b_u + b_i + <p_u, q_i>

with ``μ`` fixed to the mean training rating. Each epoch visits every rated training interaction
once in a seeded random order and minimises, averaged over a mini-batch of ratings,

    (r_ui - r̂_ui)^2 + reg * (b_u^2 + b_i^2 + |p_u|^2 + |q_i|^2)

with Adam. The penalty is charged per rating, as in the paper's stochastic gradient descent, so a
user or item with many ratings is held back in proportion to the evidence against it (the
"weighted-lambda" regularisation of ALS-WR). After every epoch the RMSE of the clipped predictions
on the rated rows of ``split.valid`` is measured; the best weights are kept and training stops
after ``patience`` epochs without improvement.

Only the rated rows of ``split.train`` are learned from; data without any rating is rejected.
:meth:`BiasedMF.predict_rating` clips ``r̂`` to the range of the training ratings. A user or item
unknown at fit time (or an item nobody rated in training) contributes neither a bias nor a
vector, so it falls back to ``μ`` plus the biases that are known. As a
:class:`~promptrec.core.recommender.ScoringRecommender` the model ranks items by ``r̂`` before clipping
(clipping is monotone, so it could only turn an order into ties at the top of the scale); items
are numbered by a seeded permutation of the catalogue, so ties never follow the item ids.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Self

import numpy as np
import pandas as pd
import torch
from torch import nn

from ...core.recommender import RECOMMENDERS, STAGES
from ...data.split import Split
from ..torch_base import TorchRecommender, check_positive_ints


class BiasedMFNet(nn.Module):
    """``r̂ = μ + b_u + b_i + <p_u, q_i>``; row ``-1`` of an index means "unknown" (no term)."""

    def __init__(self, n_users: int, n_items: int, factors: int, mean: float = 0.0) -> None:
        super().__init__()
        self.user_factors = nn.Parameter(torch.randn(n_users, factors) * 0.1)
        self.item_factors = nn.Parameter(torch.randn(n_items, factors) * 0.1)
        self.user_bias = nn.Parameter(torch.zeros(n_users))
        self.item_bias = nn.Parameter(torch.zeros(n_items))
        self.register_buffer("mean", torch.tensor(float(mean)))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Predicted ratings of the pairs ``(users[b], items[b])`` (B,), indices all known."""
        dot = (self.user_factors[users] * self.item_factors[items]).sum(-1)  # (B,)
        return self.mean + self.user_bias[users] + self.item_bias[items] + dot

    def predict(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Like ``forward`` (B,), but an index of -1 drops that side's bias and the dot product."""
        ku, ki = users >= 0, items >= 0
        u, i = users.clamp(min=0), items.clamp(min=0)  # any valid row; masked out below
        dot = (self.user_factors[u] * self.item_factors[i]).sum(-1)  # (B,)
        return (
            self.mean
            + torch.where(ku, self.user_bias[u], 0.0)
            + torch.where(ki, self.item_bias[i], 0.0)
            + torch.where(ku & ki, dot, 0.0)
        )

    def all_items(self, users: torch.Tensor) -> torch.Tensor:
        """Predicted ratings of every item for known ``users`` (B,): (B, n_items)."""
        dots = self.user_factors[users] @ self.item_factors.T  # (B, n_items)
        return self.mean + self.user_bias[users, None] + self.item_bias[None, :] + dots


@RECOMMENDERS.register("biased_mf")
class BiasedMF(TorchRecommender):
    """Biased MF on explicit ratings (module doc for the model, objective and schedule).

    Args:
        factors: dimension of the user and item vectors.
        lr: Adam learning rate.
        reg: L2 weight on the biases and vectors of each rating's user and item, per rating
            (0.1-0.13 is best on MovieLens-100K's validation ratings with 64 factors; 0.05
            overfits within a few epochs).
        epochs: maximum passes over the rated training interactions.
        batch_size: ratings per step.
        patience: epochs without a lower validation RMSE before stopping.
        seed: seeds initialisation, the item numbering and the shuffling.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
        progress: show a tqdm bar over epochs.
    """

    name = "biased_mf"

    def __init__(
        self,
        factors: int = 64,
        lr: float = 5e-3,
        reg: float = 0.1,
        epochs: int = 100,
        batch_size: int = 1024,
        patience: int = 5,
        seed: int = 0,
        device: str = "auto",
        progress: bool = True,
    ) -> None:
        super().__init__(
            lr=lr, batch_size=batch_size, epochs=epochs, patience=patience, seed=seed,
            device=device, progress=progress,
        )
        check_positive_ints(factors=factors)
        if reg < 0:
            raise ValueError(f"reg must be >= 0, got {reg!r}")
        self.factors = factors
        self.reg = float(reg)

    def _new_net(self, mean: float = 0.0) -> BiasedMFNet:
        return BiasedMFNet(len(self.users_), len(self.items_), self.factors, mean)

    # -- fitting -------------------------------------------------------------------------------
    def fit(self, split: Split) -> Self:
        start = time.perf_counter()
        train = _rated(split.train)
        if train.empty:
            raise ValueError(
                "biased_mf learns from explicit ratings, but split.train has no rating values "
                f"(dataset {split.data.name!r}: its 'rating' column is empty)"
            )
        rng = np.random.default_rng(self.seed)
        catalogue = split.data.items.index.astype(str).to_numpy(dtype=object)
        self.items_: np.ndarray = catalogue[rng.permutation(len(catalogue))]
        self.users_: np.ndarray = pd.unique(train["user_id"].to_numpy(dtype=object))
        self.histories_: dict[str, dict[str, list[str]]] = {s: split.history(s) for s in STAGES}
        self._keep_item_table(split)
        self._build_index()
        ratings = train["rating"].to_numpy(dtype=np.float32)
        # From the float64 column: the range is the scale's, not its float32 rounding.
        self.rating_range_: tuple[float, float] = (
            float(train["rating"].min()), float(train["rating"].max())
        )

        users = torch.from_numpy(self._user_position.get_indexer(train["user_id"]))
        items = torch.from_numpy(self._position.get_indexer(train["item_id"]))
        valid = _rated(split.valid)

        with self._seeded() as device:  # torch draws the initialisation
            net = self._new_net(train["rating"].mean())
            with torch.no_grad():
                # Items nobody rated in training never get a gradient: start them (and so keep
                # them) at zero, which makes their prediction the fallback mu + b_u.
                rated = torch.zeros(len(self.items_), dtype=torch.bool)
                rated[items] = True
                net.item_factors[~rated] = 0.0
            self.net_ = net.to(device)
            self._train(users, items, torch.from_numpy(ratings), valid, rng, device)
        self.fit_info_["fit_seconds"] = round(time.perf_counter() - start, 2)
        return self

    def _train(
        self,
        users: torch.Tensor,
        items: torch.Tensor,
        ratings: torch.Tensor,
        valid: pd.DataFrame,
        rng: np.random.Generator,
        device: torch.device,
    ) -> None:
        net = self.net_
        optimiser = torch.optim.Adam(net.parameters(), lr=self.lr)
        valid_truth = valid["rating"].to_numpy(dtype=float)

        def batch_loss(batch: torch.Tensor) -> tuple[torch.Tensor, int]:
            u, i, r = (t[batch].to(device) for t in (users, items, ratings))
            error = net(u, i) - r  # (B,)
            l2 = (
                net.user_bias[u].pow(2) + net.item_bias[i].pow(2)
                + net.user_factors[u].pow(2).sum(-1) + net.item_factors[i].pow(2).sum(-1)
            )  # (B,)
            return (error.pow(2) + self.reg * l2).mean(), len(batch)

        def train_epoch() -> float:
            # The numpy generator is seeded alike in every process: one order for all.
            return self._minibatch_epoch(len(ratings), batch_loss, optimiser, rng.permutation(len(ratings)))

        def valid_rmse() -> float:
            pred = self.predict_rating(valid["user_id"], valid["item_id"])
            return float(np.sqrt(np.mean((pred - valid_truth) ** 2)))

        # Without validation ratings there is nothing to stop on (the last weights are kept).
        validate = None if valid.empty else valid_rmse
        training = self._train_epochs(
            train_epoch, validate, "RMSE", optimiser=optimiser, lower_is_better=True, numpy_rng=rng
        )
        self.fit_info_ = {
            **training.fit_info(),
            "train_ratings": len(ratings),
            "valid_ratings": len(valid),
        }

    def _build_index(self) -> None:
        super()._build_index()
        self._user_position = pd.Index(self.users_)  # user id -> row of the user table

    # -- prediction ----------------------------------------------------------------------------
    @torch.inference_mode()
    def predict_rating(
        self, user_ids: Sequence[str] | pd.Series, item_ids: Sequence[str] | pd.Series
    ) -> np.ndarray:
        """``r̂_ui`` of each pair ``(user_ids[n], item_ids[n])``, clipped to the rating range.

        Unknown users or items fall back to ``μ`` plus the known biases (module doc).
        """
        self._check_fitted()
        users = [str(u) for u in user_ids]
        items = [str(i) for i in item_ids]
        if len(users) != len(items):
            raise ValueError(f"got {len(users)} user ids but {len(items)} item ids")
        device = self.net_.mean.device
        rows = torch.from_numpy(self._user_position.get_indexer(users)).to(device)  # (N,) -1 new
        cols = torch.from_numpy(self._position.get_indexer(items)).to(device)  # (N,) -1 new
        pred = self.net_.predict(rows, cols).cpu().numpy().astype(float)
        return np.clip(pred, *self.rating_range_)

    @torch.inference_mode()
    def _scores(self, users: list[str], seen: list[np.ndarray]) -> np.ndarray:
        """Unclipped ``r̂`` of every item (the user's factors do not depend on the history)."""
        net = self.net_.eval()
        rows = torch.from_numpy(self._user_position.get_indexer(users)).to(net.mean.device)
        known = rows >= 0
        # (B, n_items); users unknown at fit time get mu + b_i: the item-bias order (cold start).
        scores = (net.mean + net.item_bias).repeat(len(users), 1)
        scores[known] = net.all_items(rows[known])
        return scores.cpu().numpy()

    # -- persistence: users and the rating range besides TorchRecommender's own -----------------
    def _extra_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return {"users": self.users_.tolist(), "rating_range": list(self.rating_range_)}, {}

    def _restore_extra(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.users_ = np.asarray(state["users"], dtype=object)
        low, high = state["rating_range"]
        self.rating_range_ = (float(low), float(high))


def _rated(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of a split table that carry a rating (NaN = no rating)."""
    return rows[rows["rating"].notna()]


__all__ = ["BiasedMF", "BiasedMFNet"]
