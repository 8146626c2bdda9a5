"""Evaluation metrics as small objects, each with its formula, in the ``METRICS`` registry.

Ranking metrics follow the leave-one-out protocol of the evaluation contract: every evaluated user
has exactly one held-out target item and a ranked list of recommended item ids. All of them are
functions of one number, the 1-based ``rank`` of the target in the list (``inf`` when the target is
absent), so :func:`ranking_metrics` finds each user's rank once and computes every metric from the
rank array. A list may contain ids that are not catalogue items (a generative model's invalid
output): they keep their position and simply never match the target, i.e. they count as misses.

Names are ``FAMILY@K`` (``"HR@10"``, ``"NDCG@20"``, ``"MRR@10"``) or a bare family for metrics
without a cutoff (``"MRR"``, ``"RMSE"``, ``"MAE"``, ``"AUC"``); :func:`parse_metric` turns a name
into a metric object whose ``.name`` is that string.

Ranking metrics are called as ``metric(ranked, target)``; pointwise metrics (RMSE, MAE, AUC) as
``metric(pred, true)`` on whole arrays, since they are not per-user quantities.
"""

from __future__ import annotations

from typing import ClassVar, Collection, Iterable, Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from ..core.registry import Registry

DEFAULT_RANKING_METRICS = ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR")


# -- ranking metrics ---------------------------------------------------------------------------
class RankingMetric:
    """A per-user metric of the target's 1-based rank (``inf`` when absent from the list).

    Subclasses set ``family`` and implement :meth:`from_ranks`. ``k`` is the cutoff: only the
    first ``k`` positions of the list count.
    """

    family: ClassVar[str]
    requires_k: ClassVar[bool] = True

    def __init__(self, k: int | None = None) -> None:
        if k is None and self.requires_k:
            raise ValueError(f"{self.family} needs a cutoff, e.g. '{self.family}@10'")
        if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
            raise ValueError(f"{self.family}: the cutoff K must be a positive integer, got {k!r}")
        self.k = None if k is None else int(k)
        self.name = self.family if self.k is None else f"{self.family}@{self.k}"

    def from_ranks(self, ranks: np.ndarray) -> np.ndarray:
        """Per-user values from a float array of 1-based ranks (``inf`` = not in the list)."""
        raise NotImplementedError

    def _within(self, ranks: np.ndarray) -> np.ndarray:
        return ranks <= (np.inf if self.k is None else self.k)

    def __call__(self, ranked: Sequence[str], target: str) -> float:
        return float(self.from_ranks(target_ranks([ranked], [target]))[0])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class PointwiseMetric:
    """A metric of whole prediction/truth arrays: ``metric(pred, true) -> float``."""

    family: ClassVar[str]

    def __init__(self) -> None:
        self.name = self.family

    def __call__(self, pred: Sequence[float], true: Sequence[float]) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


Metric = RankingMetric | PointwiseMetric

# family name -> metric class; parse_metric instantiates it with the cutoff, if any.
METRICS: Registry[type[RankingMetric] | type[PointwiseMetric]] = Registry("metric")


@METRICS.register("HR")
class HitRate(RankingMetric):
    """Hit rate at K: ``HR@K = 1[rank <= K]``.

    With a single held-out item this equals Recall@K (hits / relevant items, one relevant item).
    """

    family = "HR"

    def from_ranks(self, ranks: np.ndarray) -> np.ndarray:
        return self._within(ranks).astype(float)


@METRICS.register("NDCG")
class NDCG(RankingMetric):
    """Normalised discounted cumulative gain at K: ``NDCG@K = 1[rank <= K] / log2(rank + 1)``.

    DCG sums ``1 / log2(rank + 1)`` over relevant items in the top K; with a single relevant item
    the ideal DCG (that item at rank 1) is ``1 / log2(2) = 1``, so NDCG equals DCG.
    Rank 3 gives ``1 / log2(4) = 0.5``.
    """

    family = "NDCG"

    def from_ranks(self, ranks: np.ndarray) -> np.ndarray:
        # inf ranks give 1/inf = 0, so no warnings; the cutoff mask handles finite ranks beyond K.
        return np.where(self._within(ranks), 1.0 / np.log2(ranks + 1.0), 0.0)


@METRICS.register("MRR")
class MRR(RankingMetric):
    """Mean reciprocal rank: ``MRR = 1 / rank`` (0 when absent); ``MRR@K`` also 0 when ``rank > K``.

    Without a cutoff it is taken over the whole returned list, however long.
    """

    family = "MRR"
    requires_k = False

    def from_ranks(self, ranks: np.ndarray) -> np.ndarray:
        return np.where(self._within(ranks), 1.0 / ranks, 0.0)


def target_ranks(rankings: Sequence[Sequence[str]], targets: Sequence[str]) -> np.ndarray:
    """1-based rank of each user's target in that user's list, ``np.inf`` when absent.

    Shape ``(n_users,)``, float. A target listed twice counts at its first position.
    """
    if len(rankings) != len(targets):
        raise ValueError(f"{len(rankings)} rankings but {len(targets)} targets")
    ranks = np.full(len(targets), np.inf)
    for i, (ranked, target) in enumerate(zip(rankings, targets)):
        ranks[i] = next((pos for pos, item in enumerate(ranked, 1) if item == target), np.inf)
    return ranks


def ranking_metrics(
    rankings: Sequence[Sequence[str]],
    targets: Sequence[str],
    metrics: Sequence[str] = DEFAULT_RANKING_METRICS,
) -> dict[str, np.ndarray]:
    """Per-user values of each ranking metric, keyed by metric name; arrays are ``(n_users,)``."""
    parsed = [parse_metric(m) for m in metrics]
    for m in parsed:
        if not isinstance(m, RankingMetric):
            raise ValueError(f"{m.name} is not a ranking metric")
    ranks = target_ranks(rankings, targets)
    return {m.name: m.from_ranks(ranks) for m in parsed}


# -- pointwise metrics -------------------------------------------------------------------------
def _pair(pred: Sequence[float], true: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    p, t = np.asarray(pred, dtype=float), np.asarray(true, dtype=float)
    if p.shape != t.shape:
        raise ValueError(f"predictions have shape {p.shape} but truths {t.shape}")
    if p.size == 0:
        raise ValueError("no predictions to score")
    return p, t


def rmse(pred: Sequence[float], true: Sequence[float]) -> float:
    """Root mean squared error: ``sqrt(mean((pred - true)^2))``."""
    p, t = _pair(pred, true)
    return float(np.sqrt(np.mean((p - t) ** 2)))


def mae(pred: Sequence[float], true: Sequence[float]) -> float:
    """Mean absolute error: ``mean(|pred - true|)``."""
    p, t = _pair(pred, true)
    return float(np.mean(np.abs(p - t)))


def auc(scores: Sequence[float], labels: Sequence[float | bool]) -> float:
    """Area under the ROC curve, as the Mann-Whitney statistic.

    ``AUC = (R+ - n+ (n+ + 1) / 2) / (n+ n-)``, where ``R+`` is the sum of the ranks of the positive
    items' scores among all scores (ranks from ``scipy.stats.rankdata``, ties given their average
    rank). This is the probability that a random positive scores above a random negative, with a
    tied positive/negative pair counted as 1/2 (the value ``sklearn.metrics.roc_auc_score`` gives).
    Labels are 0/1 (or bool); both classes must be present.
    """
    s, y = _pair(scores, labels)
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("AUC labels must be 0/1 or bool")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs at least one positive and one negative label")
    rank_sum = rankdata(s)[y == 1].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@METRICS.register("RMSE")
class RMSE(PointwiseMetric):
    __doc__ = rmse.__doc__
    family = "RMSE"

    def __call__(self, pred: Sequence[float], true: Sequence[float]) -> float:
        return rmse(pred, true)


@METRICS.register("MAE")
class MAE(PointwiseMetric):
    __doc__ = mae.__doc__
    family = "MAE"

    def __call__(self, pred: Sequence[float], true: Sequence[float]) -> float:
        return mae(pred, true)


@METRICS.register("AUC")
class AUC(PointwiseMetric):
    __doc__ = auc.__doc__
    family = "AUC"

    def __call__(self, pred: Sequence[float], true: Sequence[float]) -> float:
        return auc(pred, true)


# -- names, summaries, validity ----------------------------------------------------------------
def parse_metric(spec: str) -> Metric:
    """``"NDCG@10"`` -> an NDCG object with cutoff 10 and ``.name == "NDCG@10"``; ``"MRR"``: MRR."""
    family, at, cutoff = spec.strip().partition("@")
    if family not in METRICS:
        known = ", ".join(METRICS.names())
        raise ValueError(f"unknown metric {family!r} in {spec!r}; known: {known}")
    cls = METRICS.get(family)
    if issubclass(cls, PointwiseMetric):
        if at:
            raise ValueError(f"{family} takes no cutoff, got {spec!r}")
        return cls()
    if not at:
        return cls()  # raises for families that need a cutoff
    try:
        k = int(cutoff)
    except ValueError:
        raise ValueError(f"the cutoff in {spec!r} must be a positive integer") from None
    return cls(k)


def summarise(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean of each per-user array, as plain floats (NaN for an empty array)."""
    return {name: float(np.mean(v)) if len(v) else float("nan") for name, v in per_user.items()}


def invalid_rate(outputs: Iterable[str | None], catalogue: Collection[str]) -> float:
    """Fraction of outputs that are not catalogue items: ``#{o : o not in catalogue} / #outputs``.

    ``None`` (an unparseable output) counts as invalid. NaN when there are no outputs.
    """
    values = pd.Series(list(outputs), dtype=object)
    if values.empty:
        return float("nan")
    return float(1.0 - values.isin(catalogue).mean())


__all__ = [
    "AUC",
    "DEFAULT_RANKING_METRICS",
    "HitRate",
    "MAE",
    "METRICS",
    "MRR",
    "Metric",
    "NDCG",
    "PointwiseMetric",
    "RMSE",
    "RankingMetric",
    "auc",
    "invalid_rate",
    "mae",
    "parse_metric",
    "ranking_metrics",
    "rmse",
    "summarise",
    "target_ranks",
]
