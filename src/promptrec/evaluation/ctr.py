"""Like prediction (CTR) in the TALLRec protocol, on any dataset with explicit ratings.

Reference:
    K. Bao, J. Zhang, Y. Zhang, W. Wang, F. Feng, X. He. "TALLRec: An Effective and Efficient
    Tuning Framework to Align Large Language Model with Recommendation". RecSys 2023.

TALLRec asks a yes/no question: given the movies a user rated most recently, each marked liked
(rating > 3) or disliked, will the user like a target movie (rating > 3)? Quality is the AUC of
the predicted like scores; the few-shot settings train on 16, 64 or 256 sampled examples.

Example construction (:func:`build_ctr_examples`), exactly:

1. Only rated interactions count. Each user's ratings are taken in chronological order, ties in
   timestamp in the source file's order (as :class:`~promptrec.data.InteractionData` orders
   them; never by item id).
2. Every rating is the target of one example. Its history is the ``history`` (10) ratings the
   same user gave just before it in that order, each item with its rating, oldest first; its label
   is ``rating > like_threshold`` (3). Examples with fewer than ``min_history`` (10) earlier
   ratings are dropped, so by default every history is full, as in TALLRec.
3. Examples are split by the time of their target, for all users at once. With ``t_valid`` and
   ``t_test`` the rating timestamps at the ``1 - valid_fraction - test_fraction`` and
   ``1 - test_fraction`` quantiles (0.8 and 0.9), a target rated before ``t_valid`` makes a
   training example, one rated from ``t_valid`` to before ``t_test`` a validation example, one
   rated at ``t_test`` or later a test example. Every training target is thus strictly earlier
   than every validation and test target: no label a model learns from comes after one it is
   tested on, for that user or any other, and item statistics taken from training examples know
   nothing of the test period. A history may hold ratings from any part, since all of them were
   given before its target (they are the model's input at that moment, as in TALLRec); it never
   holds a rating given after its target.

TALLRec's own script builds the same sliding windows but keeps the last 10,000 of them in its
per-user list order and cuts that list 8:1:1 by position, which splits mostly by user rather than
by time; the construction above uses every window and cuts by time instead.

A non-LM baseline on the same examples is :class:`LogisticCTR` (module end).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..data.base import InteractionData
from .metrics import auc

EXAMPLE_COLUMNS = (
    "user_id", "item_id", "timestamp", "rating", "label", "history_items", "history_ratings", "part",
)  # fmt: skip
PARTS = ("train", "valid", "test")


class CTRConfig(BaseModel):
    """How CTR examples are built from rated interactions (module doc)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    history: int = Field(10, ge=1, description="most recent earlier ratings shown with a target")
    min_history: int = Field(10, ge=0, description="drop examples with fewer earlier ratings")
    like_threshold: float = Field(3.0, description="label = rating > like_threshold")
    valid_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of rating times for validation")
    test_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="share of rating times for test")

    @model_validator(mode="after")
    def _check(self) -> CTRConfig:
        if self.min_history > self.history:
            raise ValueError(f"min_history ({self.min_history}) cannot exceed history ({self.history})")
        if self.valid_fraction + self.test_fraction >= 1.0:
            raise ValueError("valid_fraction + test_fraction must leave room for training examples")
        return self


@dataclass
class CTRSplit:
    """Training, validation and test examples (columns :data:`EXAMPLE_COLUMNS`) and the cut times."""

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    t_valid: float  # first timestamp of the validation period
    t_test: float  # first timestamp of the test period
    config: CTRConfig

    def part(self, name: str) -> pd.DataFrame:
        if name not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, got {name!r}")
        return getattr(self, name)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"t_valid": self.t_valid, "t_test": self.t_test}
        for name in PARTS:
            rows = self.part(name)
            out[name] = {
                "examples": len(rows),
                "users": int(rows["user_id"].nunique()),
                "positive_rate": round(float(rows["label"].mean()), 4) if len(rows) else None,
            }
        return out


def history_examples(
    interactions: pd.DataFrame,
    history: int,
    min_history: int = 0,
    like_threshold: float = 3.0,
    rated_only: bool = True,
) -> pd.DataFrame:
    """One example per rated row of ``interactions``, with the user's ``history`` ratings before it.

    ``interactions`` has the columns of :class:`~promptrec.data.InteractionData` and each user's
    rows in chronological order (contiguous or not). Unrated rows (NaN rating) are skipped, both
    as targets and as history, unless ``rated_only`` is false: then they count as well, with a NaN
    rating and label. Rows with fewer than ``min_history`` earlier entries make no example.
    Returns the :data:`EXAMPLE_COLUMNS` but ``part`` (lists oldest first), in the order of
    ``interactions``; ``label`` is an integer column when every row is rated.
    """
    rated = interactions[interactions["rating"].notna()] if rated_only else interactions
    users = rated["user_id"].to_numpy(dtype=object)
    items = rated["item_id"].to_numpy(dtype=object)
    ratings = rated["rating"].to_numpy(dtype=float)
    keep = np.zeros(len(rated), dtype=bool)
    hist_items: list[list[str]] = []
    hist_ratings: list[list[float]] = []
    past: dict[str, list[int]] = {}  # user -> positions of that user's earlier rated rows
    for n, user in enumerate(users):
        seen = past.setdefault(user, [])
        if len(seen) >= min_history:
            window = seen[-history:]
            keep[n] = True
            hist_items.append([str(items[p]) for p in window])
            hist_ratings.append([float(ratings[p]) for p in window])
        seen.append(n)
    out = rated.loc[keep, ["user_id", "item_id", "timestamp", "rating"]].reset_index(drop=True)
    label = (out["rating"] > like_threshold).astype(np.int64)
    out["label"] = label if out["rating"].notna().all() else label.where(out["rating"].notna())
    out["history_items"] = pd.Series(hist_items, dtype=object)
    out["history_ratings"] = pd.Series(hist_ratings, dtype=object)
    return out


def build_ctr_examples(data: InteractionData, config: CTRConfig | None = None) -> CTRSplit:
    """Chronological, leak-free training/validation/test examples (module doc, steps 1-3)."""
    cfg = config or CTRConfig()
    if not data.has_ratings:
        raise ValueError(f"the CTR protocol needs explicit ratings; dataset {data.name!r} has none")
    examples = history_examples(data.interactions, cfg.history, cfg.min_history, cfg.like_threshold)
    times = np.sort(data.interactions["timestamp"][data.interactions["rating"].notna()].to_numpy(dtype=float))
    # Cut times are actual rating times; "before" is strict, so equal timestamps never straddle
    # the training boundary.
    t_valid = float(times[int(len(times) * (1.0 - cfg.valid_fraction - cfg.test_fraction))])
    t_test = float(times[min(int(len(times) * (1.0 - cfg.test_fraction)), len(times) - 1)])
    stamp = examples["timestamp"].to_numpy(dtype=float)
    part = np.where(stamp < t_valid, "train", np.where(stamp < t_test, "valid", "test"))
    examples["part"] = part.astype(object)
    parts = {name: examples[part == name].reset_index(drop=True) for name in PARTS}
    return CTRSplit(**parts, t_valid=t_valid, t_test=t_test, config=cfg)


def sample_shots(examples: pd.DataFrame, shots: int | None, seed: int = 0) -> pd.DataFrame:
    """``shots`` examples drawn without replacement by a seeded generator (all for ``None``/0).

    The same ``(examples, shots, seed)`` always gives the same rows; they keep their table order.
    """
    if not shots:
        return examples.reset_index(drop=True)
    if shots < 0 or shots > len(examples):
        raise ValueError(f"cannot sample {shots} shots from {len(examples)} examples")
    rows = np.sort(np.random.default_rng(seed).choice(len(examples), size=shots, replace=False))
    return examples.iloc[rows].reset_index(drop=True)


def ctr_auc(scores: np.ndarray, examples: pd.DataFrame) -> float:
    """AUC of ``scores`` (higher = more likely liked) against the examples' labels."""
    return auc(np.asarray(scores, dtype=float), examples["label"].to_numpy(dtype=float))


# -- the logistic-regression baseline -----------------------------------------------------------
def _genres(items: pd.DataFrame) -> dict[str, frozenset[str]]:
    if "categories" not in items.columns:
        return {}
    out = {}
    for item, value in items["categories"].items():
        values = value if isinstance(value, (list, tuple, np.ndarray)) else []
        out[str(item)] = frozenset(str(v) for v in values)
    return out


class LogisticCTR:
    """Logistic regression on hand-made features of a CTR example (scikit-learn).

    Features, each standardised on the training examples:

    - ``history_like_rate``: the share of liked ratings in the example's history;
    - ``history_mean_rating``: the mean rating in the history;
    - ``item_like_rate``: the target item's share of liked labels among the training examples,
      shrunk towards the training like rate with ``smoothing`` pseudo-examples;
    - ``item_mean_rating``: the item's mean training rating, shrunk likewise to the training mean;
    - ``item_log_count``: ``log(1 + n)``, ``n`` the item's training examples (popularity);
    - ``liked_genre_share`` / ``disliked_genre_share``: the share of history entries that are liked
      (disliked) and share a genre (``categories``) with the target.

    Item statistics come from the training examples only (in the few-shot settings, the sampled
    shots only). On the training examples themselves each example's own label and rating are left
    out of its item's statistics, as they would be unknown at prediction time.
    """

    FEATURES = (
        "history_like_rate", "history_mean_rating", "item_like_rate", "item_mean_rating",
        "item_log_count", "liked_genre_share", "disliked_genre_share",
    )  # fmt: skip

    def __init__(self, like_threshold: float = 3.0, smoothing: float = 5.0, c: float = 1.0, seed: int = 0) -> None:
        self.like_threshold = like_threshold
        self.smoothing = smoothing
        self.c = c
        self.seed = seed

    def fit(self, examples: pd.DataFrame, items: pd.DataFrame) -> Self:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        labels = examples["label"].to_numpy(dtype=float)
        if len(np.unique(labels)) < 2:
            raise ValueError("LogisticCTR needs liked and disliked training examples")
        self.genres_ = _genres(items)
        self.prior_like_ = float(labels.mean())
        self.prior_rating_ = float(examples["rating"].mean())
        grouped = examples.groupby("item_id")
        self.item_stats_ = pd.DataFrame(
            {"n": grouped.size(), "likes": grouped["label"].sum(), "rating_sum": grouped["rating"].sum()}
        )
        self.pipeline_ = make_pipeline(
            StandardScaler(), LogisticRegression(C=self.c, max_iter=1000, random_state=self.seed)
        )
        self.pipeline_.fit(self._features(examples, leave_out=True), labels)
        return self

    def predict(self, examples: pd.DataFrame) -> np.ndarray:
        """P(like) per example, shape ``(len(examples),)``."""
        return self.pipeline_.predict_proba(self._features(examples, leave_out=False))[:, 1]

    def coefficients(self) -> dict[str, float]:
        """The standardised features' weights."""
        weights = self.pipeline_[-1].coef_[0]
        return {name: round(float(w), 4) for name, w in zip(self.FEATURES, weights)}

    def _features(self, examples: pd.DataFrame, leave_out: bool) -> np.ndarray:
        stats = self.item_stats_.reindex(examples["item_id"]).fillna(0.0)
        n = stats["n"].to_numpy(dtype=float)
        likes = stats["likes"].to_numpy(dtype=float)
        rating_sum = stats["rating_sum"].to_numpy(dtype=float)
        if leave_out:
            n = n - 1.0
            likes = likes - examples["label"].to_numpy(dtype=float)
            rating_sum = rating_sum - examples["rating"].to_numpy(dtype=float)
        a = self.smoothing
        item_like = (likes + a * self.prior_like_) / (n + a)
        item_rating = (rating_sum + a * self.prior_rating_) / (n + a)

        rows = []
        for target, hist_items, hist_ratings in zip(
            examples["item_id"], examples["history_items"], examples["history_ratings"]
        ):
            ratings = np.asarray(hist_ratings, dtype=float)
            liked = ratings > self.like_threshold
            if len(ratings) == 0:
                rows.append((self.prior_like_, self.prior_rating_, 0.0, 0.0))
                continue
            genres = self.genres_.get(str(target), frozenset())
            shared = np.array([bool(genres & self.genres_.get(str(i), frozenset())) for i in hist_items])
            rows.append((liked.mean(), ratings.mean(), (shared & liked).mean(), (shared & ~liked).mean()))
        user = np.asarray(rows, dtype=float).reshape(-1, 4)
        return np.column_stack([user[:, 0], user[:, 1], item_like, item_rating, np.log1p(n), user[:, 2], user[:, 3]])


__all__ = [
    "EXAMPLE_COLUMNS",
    "CTRConfig",
    "CTRSplit",
    "LogisticCTR",
    "build_ctr_examples",
    "ctr_auc",
    "history_examples",
    "sample_shots",
]
