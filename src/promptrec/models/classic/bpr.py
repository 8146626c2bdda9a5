"""BPR-MF baseline: matrix factorisation trained with Bayesian personalised ranking.

Reference:
    S. Rendle, C. Freudenthaler, Z. Gantner, L. Schmidt-Thieme. "BPR: Bayesian Personalized
    Ranking from Implicit Feedback". UAI 2009.

Model: ``x_ui = <p_u, q_i>`` with ``factors``-dimensional user and item vectors. Each epoch visits
every distinct training pair ``(u, i)`` once in a seeded random order, pairs it with an item ``j``
drawn uniformly from the catalogue and redrawn while ``u`` interacted with it in training
(rejection sampling), and minimises, averaged over a mini-batch,

    -log sigmoid(x_ui - x_uj) + reg * (|p_u|^2 + |q_i|^2 + |q_j|^2)

with Adam (the paper uses SGD on bootstrap samples; shuffled epochs with Adam is the common modern
form and converges in far fewer passes). Every ``eval_every`` epochs NDCG@10 is measured on a
seeded sample of validation users through :func:`~promptrec.evaluation.ranking.evaluate_rankings`; the
best weights are kept and training stops after ``patience`` evaluations without improvement.

Only ``split.train`` is learned from. A user's score for every item is one dot product, so
scoring a block of users is one matrix product; the history mask and the top-k are
:class:`~promptrec.core.recommender.ScoringRecommender`'s. Users unknown at fit time get the training
popularity order (score = interaction count). Items are numbered by a seeded permutation of the
catalogue, so ties never follow the (possibly leaky) item ids.
"""

from __future__ import annotations

import time
from typing import Any, Self

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ...core.recommender import RECOMMENDERS, STAGES
from ...data.split import Split
from ..torch_base import TorchRecommender, check_positive_ints, valid_sample


class MatrixFactorisation(nn.Module):
    """User and item embedding tables; a score is the dot product of the two vectors."""

    def __init__(self, n_users: int, n_items: int, factors: int) -> None:
        super().__init__()
        self.users = nn.Embedding(n_users, factors)
        self.items = nn.Embedding(n_items, factors)
        # Small random vectors: scores start near 0, where the BPR gradient is largest.
        nn.init.normal_(self.users.weight, std=0.1)
        nn.init.normal_(self.items.weight, std=0.1)

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of every item for ``users`` (B,): (B, n_items)."""
        return self.users(users) @ self.items.weight.T


@RECOMMENDERS.register("bpr")
class BPR(TorchRecommender):
    """BPR-MF (module doc for the objective and the training schedule).

    Args:
        factors: dimension of the user and item vectors.
        lr: Adam learning rate.
        reg: L2 weight on the vectors of each (u, i, j) triple, per triple.
        epochs: maximum passes over the training pairs.
        batch_size: training triples per step.
        eval_every: epochs between validation evaluations.
        patience: evaluations without a better validation NDCG@10 before stopping.
        valid_users: validation users sampled (seeded) for early stopping; None = all.
        seed: seeds initialisation, the item numbering, shuffling, negatives and the user sample.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
        progress: show a tqdm bar over epochs.
    """

    name = "bpr"

    def __init__(
        self,
        factors: int = 64,
        lr: float = 1e-3,
        reg: float = 1e-4,
        epochs: int = 200,
        batch_size: int = 1024,
        eval_every: int = 1,
        patience: int = 10,
        valid_users: int | None = 5000,
        seed: int = 0,
        device: str = "auto",
        progress: bool = True,
    ) -> None:
        super().__init__(
            lr=lr, batch_size=batch_size, epochs=epochs, patience=patience, seed=seed,
            device=device, progress=progress,
        )
        check_positive_ints(factors=factors, eval_every=eval_every)
        if reg < 0:
            raise ValueError(f"reg must be >= 0, got {reg!r}")
        if valid_users is not None and valid_users < 1:
            raise ValueError(f"valid_users must be positive or None, got {valid_users!r}")
        self.factors = factors
        self.reg = float(reg)
        self.eval_every = eval_every
        self.valid_users = valid_users

    def _new_net(self) -> MatrixFactorisation:
        return MatrixFactorisation(len(self.users_), len(self.items_), self.factors)

    # -- fitting -------------------------------------------------------------------------------
    def fit(self, split: Split) -> Self:
        start = time.perf_counter()
        rng = np.random.default_rng(self.seed)
        catalogue = split.data.items.index.astype(str).to_numpy(dtype=object)
        self.items_: np.ndarray = catalogue[rng.permutation(len(catalogue))]
        self.users_: np.ndarray = pd.unique(split.train["user_id"].to_numpy(dtype=object))
        self.histories_: dict[str, dict[str, list[str]]] = {s: split.history(s) for s in STAGES}
        self._keep_item_table(split)
        self._build_index()
        n_users, n_items = len(self.users_), len(self.items_)

        cols = self._position.get_indexer(split.train["item_id"])
        self.counts_: np.ndarray = np.bincount(cols, minlength=n_items).astype(np.float32)
        rows = self._user_position.get_indexer(split.train["user_id"])
        positives = np.unique(rows.astype(np.int64) * n_items + cols)  # sorted (u, i) keys
        users, items = np.divmod(positives, n_items)
        # A user who has every item has no negative to sample (rejection would never end).
        full = np.bincount(users, minlength=n_users) == n_items
        users, items = users[~full[users]], items[~full[users]]
        sample = valid_sample(split, self.valid_users, rng)

        with self._seeded() as device:  # torch draws the initialisation
            self.net_ = self._new_net().to(device)
            self._train(split, users, items, positives, sample, rng, device)
        self.fit_info_["fit_seconds"] = round(time.perf_counter() - start, 2)
        return self

    def _train(
        self,
        split: Split,
        users: np.ndarray,
        items: np.ndarray,
        positives: np.ndarray,
        sample: list[str],
        rng: np.random.Generator,
        device: torch.device,
    ) -> None:
        net = self.net_
        n_items = net.items.num_embeddings
        optimiser = torch.optim.Adam(net.parameters(), lr=self.lr)
        users_t, items_t = torch.from_numpy(users), torch.from_numpy(items)

        negatives = torch.zeros(0, dtype=torch.long)  # this epoch's, one per training pair

        def batch_loss(batch: torch.Tensor) -> tuple[torch.Tensor, int]:
            u, i, j = (t[batch].to(device) for t in (users_t, items_t, negatives))
            pu, qi, qj = net.users(u), net.items(i), net.items(j)  # (B, f) each
            margin = (pu * (qi - qj)).sum(-1)  # (B,) x_ui - x_uj
            l2 = pu.pow(2).sum(-1) + qi.pow(2).sum(-1) + qj.pow(2).sum(-1)  # (B,)
            return -F.logsigmoid(margin).mean() + self.reg * l2.mean(), len(batch)

        def train_epoch() -> float:
            nonlocal negatives
            # From the numpy generator every process seeds alike: the same order and negatives
            # everywhere, so the processes split one epoch between them.
            order = rng.permutation(len(users))
            negatives = torch.from_numpy(_sample_negatives(users, positives, n_items, rng))
            return self._minibatch_epoch(len(users), batch_loss, optimiser, order)

        validate = (lambda: self._valid_ndcg(split, sample)) if sample else None
        training = self._train_epochs(
            train_epoch, validate, "NDCG@10", optimiser=optimiser, eval_every=self.eval_every, numpy_rng=rng
        )
        self.fit_info_ = training.fit_info()

    def _build_index(self) -> None:
        super()._build_index()
        self._user_position = pd.Index(self.users_)  # user id -> row of the user table

    # -- prediction ----------------------------------------------------------------------------
    @torch.inference_mode()
    def _scores(self, users: list[str], seen: list[np.ndarray]) -> np.ndarray:
        """Dot products with every item (the user vector does not depend on the history)."""
        self.net_.eval()
        device = self.net_.items.weight.device
        rows = torch.from_numpy(self._user_position.get_indexer(users)).to(device)  # (B,) -1 new
        known = rows >= 0
        # (B, n_items); users unknown at fit time keep the popularity counts (cold start).
        scores = torch.from_numpy(self.counts_).to(device).repeat(len(users), 1)
        scores[known] = self.net_(rows[known])
        return scores.cpu().numpy()

    # -- persistence: users and popularity counts besides TorchRecommender's own ----------------
    def _extra_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return {"users": self.users_.tolist()}, {"counts": torch.from_numpy(self.counts_)}

    def _restore_extra(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.users_ = np.asarray(state["users"], dtype=object)
        self.counts_ = tensors.pop("counts").numpy()


def _sample_negatives(
    users: np.ndarray, positives: np.ndarray, n_items: int, rng: np.random.Generator
) -> np.ndarray:
    """One uniform item per entry of ``users`` that the user has no training interaction with.

    ``positives`` are the sorted keys ``user * n_items + item`` of the training pairs; draws that
    hit one are redrawn until none does (few rounds: users touch a tiny part of the catalogue).
    """
    negatives = rng.integers(n_items, size=len(users))
    redraw = np.arange(len(users))
    while len(redraw):
        keys = users[redraw] * n_items + negatives[redraw]
        at = np.minimum(np.searchsorted(positives, keys), len(positives) - 1)
        redraw = redraw[positives[at] == keys]
        negatives[redraw] = rng.integers(n_items, size=len(redraw))
    return negatives


__all__ = ["BPR", "MatrixFactorisation"]
