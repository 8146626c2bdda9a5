"""Rating prediction: RMSE and MAE of a model's predicted ratings on held-out rated interactions.

Any object with ``predict_rating(user_ids, item_ids) -> np.ndarray`` can be evaluated: the
biased MF baseline (:class:`~promptrec.models.classic.biased_mf.BiasedMF`) and the P5 model trained on
the rating family alike.

Which ratings are held out depends on the split the model was fitted on.

- **Leave-one-out** (:func:`promptrec.data.leave_one_out`, the project's default). Each user's
  interactions are ordered by timestamp, equal timestamps keeping the order of the source file.
  A user with at least three interactions has the last one held out as the ``"test"`` target and
  the one before as the ``"valid"`` target; the rest is training data. Users with fewer than three
  interactions are all training and never evaluated. :func:`evaluate_ratings` scores the
  ``stage`` targets that carry a rating (targets without one are skipped and counted in
  ``unrated_targets``), so on MovieLens-100K, where every interaction is rated, the test set is
  the last rating of each of the 943 users: one rating per user, the most recent.
- **Random 80/20** (:func:`random_split_ratings`, the classic rating-prediction setting). The
  rated interactions are shuffled with a seeded generator; a ``test_fraction`` of them is the
  ``"test"`` table and ``valid_fraction`` of the rest the ``"valid"`` table (for early stopping
  only); the remainder is training data. Users have any number of test ratings, and a test user
  or item may have no training rating at all (the model then uses its fallback prediction).

Each predicted rating ``r̂_n`` is compared with the true rating ``r_n`` over the ``N`` evaluated
ratings: ``RMSE = sqrt(1/N sum_n (r̂_n - r_n)^2)`` and ``MAE = 1/N sum_n |r̂_n - r_n|`` (every
rating weighs the same, so a user with many test ratings counts more; under leave-one-out each
user has one). For reference the same metrics are given for the global-mean predictor
``r̂_n = μ``, ``μ`` being the mean rating of ``split.train``: a model that does not beat it has
learnt nothing about users or items.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd

from ..core.recommender import check_stage
from ..data.base import InteractionData
from ..data.split import Split
from .metrics import mae, rmse


class RatingPredictor(Protocol):
    def predict_rating(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """One predicted rating per ``(user_ids[n], item_ids[n])`` pair."""
        ...


def evaluate_ratings(
    model: RatingPredictor, split: Split, stage: str = "test"
) -> tuple[dict[str, Any], pd.DataFrame]:
    """RMSE and MAE of ``model.predict_rating`` on the rated ``stage`` targets of ``split``.

    Returns ``(summary, per_user)``:

    - ``summary``: ``RMSE``, ``MAE``, ``global_mean`` (``μ``, the mean training rating),
      ``global_mean_RMSE``, ``global_mean_MAE`` (the same metrics for predicting ``μ``),
      ``n_ratings``, ``n_users``, ``unrated_targets`` (``stage`` targets skipped for lack of a
      rating), ``eval_seconds`` (wall time inside ``predict_rating``) and ``stage``.
    - ``per_user``: one row per evaluated user in order of first appearance among the targets:
      ``user_id``, ``n_ratings``, ``squared_error`` and ``absolute_error`` (the means over that
      user's ratings; under leave-one-out, the errors of the user's single test rating). These
      are the paired values for significance tests between two models on the same split.
    """
    check_stage(stage)
    targets = split.targets(stage)
    rated = targets[targets["rating"].notna()]
    if rated.empty:
        raise ValueError(f"no {stage} target carries a rating: nothing to evaluate")
    users = rated["user_id"].to_numpy(dtype=object)
    truth = rated["rating"].to_numpy(dtype=float)

    start = time.perf_counter()
    pred = np.asarray(model.predict_rating(list(users), list(rated["item_id"])), dtype=float)
    elapsed = time.perf_counter() - start
    if pred.shape != truth.shape:
        raise ValueError(f"predict_rating returned shape {pred.shape}, expected {truth.shape}")
    if not np.isfinite(pred).all():
        raise ValueError("predict_rating returned non-finite ratings")

    train_ratings = split.train["rating"].dropna()
    if train_ratings.empty:
        raise ValueError("split.train has no rating: the global-mean baseline is undefined")
    mean = float(train_ratings.mean())
    errors = pd.DataFrame(
        {"user_id": users, "squared_error": (pred - truth) ** 2, "absolute_error": np.abs(pred - truth)}
    )
    per_user = (
        errors.groupby("user_id", sort=False)
        .agg(
            n_ratings=("squared_error", "size"),
            squared_error=("squared_error", "mean"),
            absolute_error=("absolute_error", "mean"),
        )
        .reset_index()
    )
    summary: dict[str, Any] = {
        "RMSE": rmse(pred, truth),
        "MAE": mae(pred, truth),
        "global_mean": mean,
        "global_mean_RMSE": rmse(np.full_like(truth, mean), truth),
        "global_mean_MAE": mae(np.full_like(truth, mean), truth),
        "n_ratings": len(truth),
        "n_users": len(per_user),
        "unrated_targets": len(targets) - len(rated),
        "eval_seconds": round(elapsed, 4),
        "stage": stage,
    }
    return summary, per_user


def random_split_ratings(
    data: InteractionData, test_fraction: float = 0.2, seed: int = 0, valid_fraction: float = 0.1
) -> Split:
    """The classic random split of the rated interactions (module doc), as a :class:`Split`.

    Of the ``N`` rated interactions, a seeded random ``round(test_fraction * N)`` form ``test``
    and ``round(valid_fraction * rest)`` of the others ``valid``; ``train`` holds the remaining
    rated interactions plus every unrated one. With the defaults on MovieLens-100K: 20,000 test,
    8,000 validation and 72,000 training ratings, so the model learns from 72 % of the data and
    uses the 10 % slice of the 80 % training part only to decide when to stop.

    Every table keeps the rows' order in ``data.interactions`` (chronological per user), so
    ``split.history(stage)`` is each user's training (``"valid"``) or training plus validation
    (``"test"``) items. ``valid`` and ``test`` hold any number of rows per user: the split is for
    rating evaluation (:func:`evaluate_ratings`), not for leave-one-out ranking.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction!r}")
    df = data.interactions
    rated = np.flatnonzero(df["rating"].notna().to_numpy())
    if len(rated) == 0:
        raise ValueError(f"dataset {data.name!r} has no ratings to split")
    shuffled = np.random.default_rng(seed).permutation(rated)
    n_test = round(test_fraction * len(rated))
    n_valid = round(valid_fraction * (len(rated) - n_test))
    part = np.zeros(len(df), dtype=np.int8)  # 0 train, 1 valid, 2 test
    part[shuffled[:n_test]] = 2
    part[shuffled[n_test : n_test + n_valid]] = 1
    return Split(
        data=data,
        train=df[part == 0].reset_index(drop=True),
        valid=df[part == 1].reset_index(drop=True),
        test=df[part == 2].reset_index(drop=True),
    )


__all__ = ["RatingPredictor", "evaluate_ratings", "random_split_ratings"]
