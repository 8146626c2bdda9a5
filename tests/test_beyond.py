"""Beyond-accuracy metrics against values computed by hand on a five-row fixture.

Catalogue a..f with categories a {x, y}, b {x}, c {y, z}, d {} (none), e {z}, f {z}.
Training interactions: u1 a b c d, u2 a b, u3 a, u4 a -> counts a 4, b 2, c 1, d 1, e 0, f 0 (8 in all).
Top lists: u1 [a, b, c], u2 [a, d], u3 [b, zzz, e] (zzz is not a catalogue item).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from promptrec.data import InteractionData, Split
from promptrec.evaluation.beyond import (
    activity_gap,
    average_popularity,
    beyond_accuracy,
    coverage,
    default_user_groups,
    exposure_gini,
    gini,
    group_means,
    intra_list_diversity,
    novelty,
    train_item_counts,
)
from promptrec.evaluation.ranking import evaluate_rankings, recommended_items
from promptrec.models.classic.popularity import MostPopular

CATEGORIES = {"a": ["x", "y"], "b": ["x"], "c": ["y", "z"], "d": [], "e": ["z"], "f": ["z"]}
TRAIN = [("u1", "a"), ("u1", "b"), ("u1", "c"), ("u1", "d"), ("u2", "a"), ("u2", "b"), ("u3", "a"), ("u4", "a")]
LISTS = {"u1": ["a", "b", "c"], "u2": ["a", "d"], "u3": ["b", "zzz", "e"]}


@pytest.fixture()
def split() -> Split:
    train = pd.DataFrame(TRAIN, columns=["user_id", "item_id"])
    items = pd.DataFrame({"item_id": list(CATEGORIES), "categories": list(CATEGORIES.values())})
    users = pd.DataFrame({"gender": ["F", "M", "F", "M"]}, index=pd.Index(["u1", "u2", "u3", "u4"], name="user_id"))
    data = InteractionData(train, items, users)
    empty = train.iloc[:0]
    return Split(data=data, train=data.interactions, valid=empty, test=empty)


@pytest.fixture()
def recs() -> pd.DataFrame:
    rows = [(u, item, rank) for u, items in LISTS.items() for rank, item in enumerate(items, 1)]
    # Shuffled rows: the metrics must not rely on the input order.
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rank"]).sample(frac=1.0, random_state=0)


def test_train_item_counts(split) -> None:
    assert train_item_counts(split).to_dict() == {"a": 4, "b": 2, "c": 1, "d": 1, "e": 0, "f": 0}


def test_coverage(split, recs) -> None:
    # a b c d e recommended (zzz is no catalogue item) out of 6.
    assert coverage(recs, split.data.items.index) == pytest.approx(5 / 6)


def test_ild_categories(split, recs) -> None:
    # u1: d(a,b) = 1 - 1/2, d(a,c) = 1 - 1/3, d(b,c) = 1 - 0  -> 13/18.
    # u2: d has no categories, no pair left -> u2 left out.  u3: only (b, e): 1 - 0 = 1.
    value = intra_list_diversity(recs, categories=split.data.items["categories"])
    assert value == pytest.approx((13 / 18 + 1) / 2)


def test_ild_embeddings(recs) -> None:
    # d is a zero vector (no direction): pairs with it are skipped.
    vectors = {"a": [1, 0], "b": [0, 1], "c": [1, 1], "d": [0, 0], "e": [-1, 0], "f": [0, 1]}
    emb = pd.DataFrame.from_dict(vectors, orient="index")
    u1 = (1 + 2 * (1 - 1 / math.sqrt(2))) / 3  # (a,b) orthogonal; (a,c), (b,c) at 45 degrees
    u3 = 1.0  # (b, e) orthogonal
    assert intra_list_diversity(recs, embeddings=emb) == pytest.approx((u1 + u3) / 2)
    with pytest.raises(ValueError, match="categories or item embeddings"):
        intra_list_diversity(recs)


def test_novelty(split, recs) -> None:
    # -log2 p: a 4/8 -> 1, b 2/8 -> 2, c 1/8 -> 3, d 1/8 -> 3, e 0 counted as 1/8 -> 3.
    # u1 (1+2+3)/3 = 2, u2 (1+3)/2 = 2, u3 (2+3)/2 = 2.5 (zzz ignored).
    assert novelty(recs, train_item_counts(split)) == pytest.approx((2 + 2 + 2.5) / 3)


def test_average_popularity(split, recs) -> None:
    # u1 (4+2+1)/3, u2 (4+1)/2, u3 (2+0)/2.
    assert average_popularity(recs, train_item_counts(split)) == pytest.approx((7 / 3 + 2.5 + 1) / 3)


def test_gini() -> None:
    assert gini([3, 3, 3]) == 0.0
    assert gini([0, 0, 0, 4]) == pytest.approx(3 / 4)  # all on one of n: (n - 1) / n
    assert math.isnan(gini([0, 0]))


def test_exposure_gini_counts_unexposed_items(split, recs) -> None:
    # Exposures a 2, b 2, c 1, d 1, e 1, f 0 -> sorted 0 1 1 1 2 2, weights 2i - 7 = -5 -3 -1 1 3 5.
    assert exposure_gini(recs, split.data.items.index) == pytest.approx(13 / (6 * 7))


def test_activity_gap_and_group_means() -> None:
    values = pd.Series([1.0, 0.0, 0.5, 0.2, 0.0], index=["u1", "u2", "u3", "u4", "u5"])
    activity = pd.Series({"u1": 10, "u2": 1, "u3": 5, "u4": 3})  # u5: none -> 0
    assert activity_gap(values, activity) == {"active": 1.0, "inactive": 0.0, "gap": 1.0}  # 1 of 5 each
    wide = activity_gap(values, activity, share=0.4)  # u1, u3 vs u5, u2
    assert wide == pytest.approx({"active": 0.75, "inactive": 0.0, "gap": 0.75})
    gender = pd.Series({"u1": "F", "u2": "M", "u3": "F", "u4": "M"})  # u5 has no label
    assert group_means(values, gender) == pytest.approx({"F": 0.75, "M": 0.1})


def test_default_user_groups() -> None:
    ages = [18, 22, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70]
    users = pd.DataFrame(
        {
            "gender": list("FM" * 6),
            "age": pd.array(ages, dtype="Int64"),
            "occupation": [f"job{i}" for i in range(12)],  # too many groups
            "country": ["x"] * 12,  # one group: nothing to compare
        },
        index=pd.Index([f"u{i}" for i in range(12)], name="user_id"),
    )
    groups = default_user_groups(users)
    assert sorted(groups) == ["age", "gender"]
    age = groups["age"]
    assert age.nunique() == 4 and age.notna().all()
    assert str(age["u0"]).startswith("[18") and str(age["u11"]).endswith("70]")
    assert default_user_groups(None) == {}


def test_beyond_accuracy_keys_and_values(split, recs) -> None:
    per_user = pd.DataFrame({"user_id": ["u1", "u2", "u3"], "NDCG@10": [1.0, 0.5, 0.25]})
    groups = default_user_groups(split.data.users)
    out = beyond_accuracy(recs, split, k=10, per_user=per_user, user_groups=groups)
    assert out["coverage@10"] == pytest.approx(5 / 6)
    assert out["ILD@10"] == pytest.approx((13 / 18 + 1) / 2)
    assert out["novelty@10"] == pytest.approx(6.5 / 3)
    assert out["gini@10"] == pytest.approx(13 / 42)
    # Activity u1 4, u2 2, u3 1: one user of three per end -> u1 (1.0) vs u3 (0.25).
    assert out["NDCG@10_gap_active_vs_inactive"] == pytest.approx(0.75)
    assert out["NDCG@10_group[gender=F]"] == pytest.approx(0.625)
    assert out["NDCG@10_group[gender=M]"] == pytest.approx(0.5)
    # The cutoff applies: top-1 lists are a, a, b.
    top1 = beyond_accuracy(recs, split, k=1)
    assert top1["coverage@1"] == pytest.approx(2 / 6)
    assert math.isnan(top1["ILD@1"])  # one item per list: no pair to measure
    with pytest.raises(ValueError, match="no column 'HR@10'"):
        beyond_accuracy(recs, split, per_user=per_user, metric="HR@10")


def test_evaluate_rankings_beyond(cyclic_split) -> None:
    model = MostPopular().fit(cyclic_split)
    plain, per_user = evaluate_rankings(model, cyclic_split, k=20)
    assert not any(key.startswith("coverage") for key in plain)
    summary, per_user = evaluate_rankings(model, cyclic_split, k=20, beyond=True)
    users = per_user["user_id"].tolist()
    recs = model.recommend(users, k=20)
    long = recommended_items(per_user)
    pd.testing.assert_frame_equal(
        long, recs[["user_id", "item_id", "rank"]].astype({"rank": np.int64}), check_dtype=False
    )
    for k in (5, 10, 20):
        top = recs[recs["rank"] <= k]
        assert summary[f"coverage@{k}"] == pytest.approx(top["item_id"].nunique() / 30)
        assert f"NDCG@{k}_gap_active_vs_inactive" in summary and f"gini@{k}" in summary
    assert summary["HR@10"] == plain["HR@10"]
