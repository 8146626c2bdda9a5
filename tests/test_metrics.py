"""Metrics against values computed by hand on tiny fixtures."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from promptrec.evaluation.metrics import (
    METRICS,
    auc,
    invalid_rate,
    mae,
    parse_metric,
    ranking_metrics,
    rmse,
    summarise,
    target_ranks,
)

# Four users; the target sits at rank 1, 3, 5 and nowhere.
RANKINGS = [
    ["a", "b", "c", "d", "e"],
    ["b", "x", "a", "d", "e"],
    ["c", "d", "e", "b", "a"],
    ["b", "c", "d", "e", "f"],
]
TARGETS = ["a", "a", "a", "a"]


def test_target_ranks() -> None:
    np.testing.assert_array_equal(target_ranks(RANKINGS, TARGETS), [1, 3, 5, np.inf])


def test_hit_rate() -> None:
    assert parse_metric("HR@1")(["a", "b"], "a") == 1.0
    assert parse_metric("HR@1")(["b", "a"], "a") == 0.0
    assert parse_metric("HR@2")(["b", "a"], "a") == 1.0
    assert parse_metric("HR@5")([], "a") == 0.0


def test_ndcg() -> None:
    ndcg3 = parse_metric("NDCG@3")
    assert ndcg3(["a", "b", "c"], "a") == 1.0
    assert ndcg3(["b", "c", "a"], "a") == pytest.approx(0.5)  # 1 / log2(3 + 1)
    assert ndcg3(["b", "a"], "a") == pytest.approx(1 / math.log2(3))
    assert ndcg3(["b", "c", "d", "a"], "a") == 0.0  # rank 4 is beyond the cutoff


def test_mrr_whole_list_and_cutoff() -> None:
    assert parse_metric("MRR")(["b", "c", "d", "a"], "a") == pytest.approx(0.25)
    assert parse_metric("MRR@3")(["b", "c", "d", "a"], "a") == 0.0
    assert parse_metric("MRR@4")(["b", "c", "d", "a"], "a") == pytest.approx(0.25)
    assert parse_metric("MRR")(["b", "c"], "a") == 0.0


def test_ranking_metrics_per_user_and_summary() -> None:
    names = ("HR@1", "HR@3", "HR@5", "NDCG@3", "NDCG@5", "MRR")
    per_user = ranking_metrics(RANKINGS, TARGETS, names)
    assert list(per_user) == list(names)
    np.testing.assert_allclose(per_user["HR@1"], [1, 0, 0, 0])
    np.testing.assert_allclose(per_user["HR@3"], [1, 1, 0, 0])
    np.testing.assert_allclose(per_user["HR@5"], [1, 1, 1, 0])
    np.testing.assert_allclose(per_user["NDCG@3"], [1, 0.5, 0, 0])
    np.testing.assert_allclose(per_user["NDCG@5"], [1, 0.5, 1 / math.log2(6), 0])
    np.testing.assert_allclose(per_user["MRR"], [1, 1 / 3, 1 / 5, 0])

    summary = summarise(per_user)
    assert summary["HR@3"] == 0.5
    assert summary["MRR"] == pytest.approx((1 + 1 / 3 + 1 / 5) / 4)
    assert all(type(v) is float for v in summary.values())


def test_ranking_metrics_default_names() -> None:
    per_user = ranking_metrics(RANKINGS, TARGETS)
    assert list(per_user) == ["HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR"]
    assert all(v.shape == (4,) for v in per_user.values())


def test_ranking_metrics_rejects_mismatch_and_pointwise() -> None:
    with pytest.raises(ValueError, match="3 rankings but 4 targets"):
        ranking_metrics(RANKINGS[:3], TARGETS)
    with pytest.raises(ValueError, match="not a ranking metric"):
        ranking_metrics(RANKINGS, TARGETS, ["RMSE"])


def test_rmse_mae() -> None:
    pred, true = [3.0, 4.0, 5.0], [4.0, 4.0, 2.0]  # errors -1, 0, 3
    assert rmse(pred, true) == pytest.approx(math.sqrt((1 + 0 + 9) / 3))
    assert mae(pred, true) == pytest.approx(4 / 3)
    assert parse_metric("RMSE")(pred, true) == rmse(pred, true)
    assert parse_metric("MAE")(pred, true) == mae(pred, true)
    with pytest.raises(ValueError, match="shape"):
        rmse([1.0], [1.0, 2.0])


def test_auc_with_a_tie() -> None:
    # Positives score 0.8 and 0.4, negatives 0.4 and 0.1. Pairs (pos, neg):
    # (0.8, 0.4) 1, (0.8, 0.1) 1, (0.4, 0.4) tie 1/2, (0.4, 0.1) 1  ->  3.5 / 4.
    scores, labels = [0.8, 0.4, 0.4, 0.1], [1, 1, 0, 0]
    assert auc(scores, labels) == pytest.approx(0.875)
    assert parse_metric("AUC")(scores, labels) == pytest.approx(0.875)
    assert auc([0.9, 0.1], [True, False]) == 1.0
    assert auc([0.5, 0.5, 0.5], [1, 0, 0]) == 0.5


def test_auc_matches_sklearn() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=200).astype(float)  # many ties
    labels = rng.integers(0, 2, size=200)
    assert auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))


def test_auc_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="positive and one negative"):
        auc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="0/1"):
        auc([0.1, 0.2], [1, 2])


def test_invalid_rate() -> None:
    catalogue = pd.Index(["a", "b", "c"])
    assert invalid_rate(["a", "z", None, "b"], catalogue) == 0.5
    assert invalid_rate(["a", "b"], {"a", "b"}) == 0.0
    assert math.isnan(invalid_rate([], catalogue))


def test_parse_metric_names() -> None:
    assert parse_metric("NDCG@10").name == "NDCG@10"
    assert parse_metric("HR@5").k == 5
    assert parse_metric("MRR").name == "MRR"
    assert parse_metric("AUC").name == "AUC"
    assert {"HR", "NDCG", "MRR", "RMSE", "MAE", "AUC"} <= set(METRICS.names())


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("NDCG@0", "positive integer"),
        ("HR@-1", "positive integer"),
        ("HR@ten", "positive integer"),
        ("FOO@5", "unknown metric 'FOO'.*known: AUC, HR, MAE, MRR, NDCG, RMSE"),
        ("HR", "needs a cutoff"),
        ("RMSE@5", "takes no cutoff"),
    ],
)
def test_parse_metric_rejects(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_metric(spec)
