"""The ground-truth user model: a calibrated probability that user u likes item i, for every pair.

Fitted on the **real** interactions (all of them: the oracle stands for the users, not for a
recommender) and kept away from every recommender under test: the simulator only ever hands them
the simulated interaction log.

Model: logistic matrix factorisation (as in implicit-feedback logistic MF, Johnson 2014, on
explicit labels here)::

    logit(u, i) = b + b_u + b_i + <p_u, q_i>

- explicit data (ratings): every rating is an observation with label ``rating >= like_threshold``
  (MovieLens: 4 stars or more), so ``P(like)`` is the chance that u would rate i highly;
- implicit data (no ratings, e.g. Amazon Beauty): interactions are likes, and ``negatives``
  unobserved items per interaction, drawn uniformly, are non-likes.

A seeded ``holdout`` share of the observations is kept out of training and cut in two halves:
the *calibration* half early-stops the training and fits a Platt scaling
``P(like) = sigmoid(a * logit + c)`` (Platt 1999), the *report* half measures the result (AUC,
log loss, Brier score, expected calibration error over 10 equal-width bins), so the reported
quality is measured on observations used for nothing else.

Known limit: the ratings of a real log are not missing at random (users rate what they chose to
watch), so the oracle's probabilities for pairs far from anything observed are extrapolations of
the factor model, not measurements.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from ..data.base import InteractionData
from .config import OracleConfig


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class Oracle:
    """Fitted ground truth over ``users`` x ``items`` (external ids; positions index the arrays)."""

    users: pd.Index
    items: pd.Index
    user_vectors: np.ndarray  # (n_users, d)
    item_vectors: np.ndarray  # (n_items, d)
    user_bias: np.ndarray  # (n_users,)
    item_bias: np.ndarray  # (n_items,)
    bias: float
    platt: tuple[float, float]  # (a, c): P = sigmoid(a * logit + c)
    info: dict[str, Any] = field(default_factory=dict)

    # -- scoring -------------------------------------------------------------------------------
    def logits(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Raw logits of pairs given as equal-shape position arrays (any shape)."""
        dot = np.einsum("...d,...d->...", self.user_vectors[users], self.item_vectors[items])
        return self.bias + self.user_bias[users] + self.item_bias[items] + dot

    def prob(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Calibrated P(like) of pairs (positions, equal shapes, e.g. (U, K) slates)."""
        a, c = self.platt
        return _sigmoid(a * self.logits(users, items) + c)

    def prob_rows(self, users: np.ndarray) -> np.ndarray:
        """P(like) of every item for each user position: (len(users), n_items)."""
        logit = (
            self.bias
            + self.user_bias[users, None]
            + self.item_bias[None, :]
            + self.user_vectors[users] @ self.item_vectors.T
        )
        a, c = self.platt
        return _sigmoid(a * logit + c)

    # -- persistence (npz of plain arrays + JSON: no pickle) -------------------------------------
    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        np.savez(
            path / "oracle.npz",
            user_vectors=self.user_vectors, item_vectors=self.item_vectors,
            user_bias=self.user_bias, item_bias=self.item_bias,
        )  # fmt: skip
        meta = {
            "users": self.users.tolist(), "items": self.items.tolist(), "bias": self.bias,
            "platt": list(self.platt), "info": self.info,
        }  # fmt: skip
        (path / "oracle.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, path: str | Path) -> "Oracle":
        path = Path(path)
        meta = json.loads((path / "oracle.json").read_text())
        arrays = np.load(path / "oracle.npz", allow_pickle=False)
        return cls(
            users=pd.Index(meta["users"], dtype=object),
            items=pd.Index(meta["items"], dtype=object),
            user_vectors=arrays["user_vectors"], item_vectors=arrays["item_vectors"],
            user_bias=arrays["user_bias"], item_bias=arrays["item_bias"],
            bias=float(meta["bias"]), platt=(float(meta["platt"][0]), float(meta["platt"][1])),
            info=meta["info"],
        )  # fmt: skip


def _observations(data: InteractionData, cfg: OracleConfig, users: pd.Index, items: pd.Index, rng):
    """(user positions, item positions, labels) of every observation the oracle learns from."""
    df = data.interactions
    u = users.get_indexer(df["user_id"])
    i = items.get_indexer(df["item_id"])
    if data.has_ratings:
        rated = df["rating"].notna().to_numpy()
        return u[rated], i[rated], (df["rating"].to_numpy()[rated] >= cfg.like_threshold).astype(np.float32)
    # Implicit: each interaction is a like; uniform unobserved items are non-likes.
    seen = set((u * len(items) + i).tolist())
    nu = np.repeat(u, cfg.negatives)
    ni = rng.integers(len(items), size=len(nu))
    fresh = np.array([a * len(items) + b not in seen for a, b in zip(nu, ni)], dtype=bool)
    nu, ni = nu[fresh], ni[fresh]
    labels = np.r_[np.ones(len(u)), np.zeros(len(nu))].astype(np.float32)
    return np.r_[u, nu], np.r_[i, ni], labels


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """``ECE = sum_b (n_b / n) |mean(y in b) - mean(p in b)|`` over equal-width bins of ``p``."""
    which = np.minimum((p * bins).astype(int), bins - 1)
    counts = np.bincount(which, minlength=bins)
    gap = np.abs(np.bincount(which, y, bins) - np.bincount(which, p, bins))
    return float(gap.sum() / max(counts.sum(), 1))


def _platt(logit: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(a, c) minimising the log loss of sigmoid(a * logit + c): Newton steps on two parameters."""
    a, c = 1.0, 0.0
    x = np.stack([logit, np.ones_like(logit)], axis=1).astype(float)  # (n, 2)
    for _ in range(50):
        p = _sigmoid(a * logit + c)
        grad = x.T @ (p - y)
        hess = x.T @ (x * (p * (1 - p))[:, None]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        a, c = a - step[0], c - step[1]
        if np.abs(step).max() < 1e-8:
            break
    return float(a), float(c)


def fit_oracle(data: InteractionData, cfg: OracleConfig | None = None) -> Oracle:
    """Fit the ground truth on ``data`` (all of it) and measure it on its held-out report half."""
    cfg = cfg or OracleConfig()
    rng = np.random.default_rng(cfg.seed)
    users = pd.Index(sorted(data.interactions["user_id"].unique()), dtype=object)
    items = pd.Index(data.items.index.astype(str), dtype=object)
    u, i, y = _observations(data, cfg, users, items, rng)
    order = rng.permutation(len(y))
    n_hold = int(round(cfg.holdout * len(y)))
    calib, report, train = order[: n_hold // 2], order[n_hold // 2 : n_hold], order[n_hold:]

    gen = torch.Generator().manual_seed(cfg.seed)
    P = torch.nn.Parameter(0.1 * torch.randn(len(users), cfg.factors, generator=gen))
    Q = torch.nn.Parameter(0.1 * torch.randn(len(items), cfg.factors, generator=gen))
    bu = torch.nn.Parameter(torch.zeros(len(users)))
    bi = torch.nn.Parameter(torch.zeros(len(items)))
    base = float(np.log(y[train].mean() / (1 - y[train].mean() + 1e-9) + 1e-9))
    b = torch.nn.Parameter(torch.tensor(base))
    params = [P, Q, bu, bi, b]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    tu, ti, ty = (torch.from_numpy(a[train]) for a in (u.astype(np.int64), i.astype(np.int64), y))
    cu, ci, cy = (torch.from_numpy(a[calib]) for a in (u.astype(np.int64), i.astype(np.int64), y))

    def logit(uu, ii):
        return b + bu[uu] + bi[ii] + (P[uu] * Q[ii]).sum(-1)

    # L2 on every row alike (a Gaussian prior per user and item), not per observation: weighted by
    # observations, an item rated once or twice keeps a near-free bias and comes out as a sure
    # like, which would send the oracle's own top lists to the rarest items.
    wu = torch.full((len(users),), 1.0 / len(users))
    wi = torch.full((len(items),), 1.0 / len(items))

    best, best_state, bad, steps = np.inf, None, 0, 0
    for steps in range(1, cfg.epochs + 1):
        opt.zero_grad()
        out = logit(tu, ti)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out, ty)
        penalty = wu @ (P.square().sum(-1) + bu**2) + wi @ (Q.square().sum(-1) + bi**2)
        (loss + cfg.reg * penalty).backward()
        opt.step()
        with torch.no_grad():
            val = float(torch.nn.functional.binary_cross_entropy_with_logits(logit(cu, ci), cy))
        if val < best - 1e-6:
            best, bad = val, 0
            best_state = [p.detach().clone() for p in params]
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    with torch.no_grad():
        for p, saved in zip(params, best_state):
            p.copy_(saved)

    oracle = Oracle(
        users=users, items=items,
        user_vectors=P.detach().numpy().astype(np.float32), item_vectors=Q.detach().numpy().astype(np.float32),
        user_bias=bu.detach().numpy().astype(np.float32), item_bias=bi.detach().numpy().astype(np.float32),
        bias=float(b.detach()), platt=(1.0, 0.0),
    )  # fmt: skip
    oracle.platt = _platt(oracle.logits(u[calib], i[calib]).astype(float), y[calib].astype(float))
    p_report = oracle.prob(u[report], i[report])
    y_report = y[report]
    oracle.info = {
        "observations": int(len(y)),
        "explicit": bool(data.has_ratings),
        "like_rate": round(float(y.mean()), 4),
        "steps": steps,
        "report_observations": int(len(report)),
        "report_auc": round(float(roc_auc_score(y_report, p_report)), 4),
        "report_log_loss": round(_log_loss(p_report, y_report), 4),
        "report_brier": round(float(np.mean((p_report - y_report) ** 2)), 4),
        "report_ece": round(expected_calibration_error(p_report, y_report), 4),
        "report_mean_prediction": round(float(p_report.mean()), 4),
        "report_like_rate": round(float(y_report.mean()), 4),
        "platt": [round(v, 4) for v in oracle.platt],
    }
    return oracle


__all__ = ["Oracle", "expected_calibration_error", "fit_oracle"]
