"""CTR examples in the TALLRec protocol: chronological and leak-free construction, labels, seeded
few-shot sampling, and the logistic-regression baseline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import shared_dataset
from sklearn.metrics import roc_auc_score

from promptrec.data import InteractionData
from promptrec.evaluation.ctr import CTRConfig, LogisticCTR, build_ctr_examples, ctr_auc, history_examples, sample_shots


def rated_data(n_users: int = 30, n_items: int = 40, per_user: int = 25, seed: int = 0) -> InteractionData:
    """Users rating random items at random times (with many equal timestamps); items whose number
    is even are liked (4-5), odd ones disliked (1-3), so the label has a learnable item signal."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        start = rng.integers(0, 1000)
        times = np.sort(start + rng.integers(0, 400, size=per_user) // 3 * 3)  # ties on purpose
        for t, item in zip(times, rng.choice(n_items, size=per_user, replace=False)):
            rating = rng.integers(4, 6) if item % 2 == 0 else rng.integers(1, 4)
            rows.append((f"u{u}", f"i{item}", float(t), float(rating)))
    rng.shuffle(rows)  # source order is not chronological
    items = pd.DataFrame(
        {
            "title": [f"movie {i}" for i in range(n_items)],
            "categories": [["Drama"] if i % 2 == 0 else ["Horror"] for i in range(n_items)],
        },
        index=pd.Index([f"i{i}" for i in range(n_items)], name="item_id"),
    )
    return InteractionData(pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"]), items)


def test_examples_are_chronological_and_leak_free() -> None:
    data = rated_data()
    split = build_ctr_examples(data, CTRConfig(history=10, min_history=3))
    assert len(split.train) and len(split.valid) and len(split.test)
    # Parts are cut by the target's time: every training target strictly precedes the rest.
    assert split.train["timestamp"].max() < split.t_valid <= split.valid["timestamp"].min()
    assert split.valid["timestamp"].max() < split.t_test <= split.test["timestamp"].min()
    # Per user, the chronological sequence (ties in source order) the examples must respect.
    position = {}
    for user, group in data.interactions.groupby("user_id", sort=False):
        position[user] = {item: n for n, item in enumerate(group["item_id"])}
        ratings = dict(zip(group["item_id"], group["rating"]))
        for part in (split.train, split.valid, split.test):
            for row in part[part["user_id"] == user].itertuples():
                target = position[user][row.item_id]
                # The history is exactly the ratings just before the target, in order.
                expected = list(group["item_id"])[max(0, target - 10) : target]
                assert list(row.history_items) == expected
                assert all(position[user][i] < target for i in row.history_items)
                assert list(row.history_ratings) == [ratings[i] for i in row.history_items]
    for test in split.test.itertuples():
        later_train = split.train[
            (split.train["user_id"] == test.user_id) & (split.train["timestamp"] >= test.timestamp)
        ]
        assert later_train.empty  # no training target of that user at or after a test target
        assert test.item_id not in set(later_train["item_id"])


def test_labels_history_length_and_min_history() -> None:
    data = rated_data()
    split = build_ctr_examples(data, CTRConfig(history=5, min_history=5))
    every = pd.concat([split.train, split.valid, split.test])
    assert (every["label"] == (every["rating"] > 3).astype(int)).all()
    assert every["history_items"].map(len).eq(5).all()
    counts = data.interactions.groupby("user_id").size()
    assert len(every) == int((counts - 5).clip(lower=0).sum())  # the first 5 of each user make none
    strict = build_ctr_examples(data, CTRConfig(like_threshold=4.0))
    assert (strict.train["label"] == (strict.train["rating"] > 4).astype(int)).all()


def test_ratings_3_and_4_are_the_boundary() -> None:
    rows = pd.DataFrame(
        {"user_id": ["u"] * 4, "item_id": list("abcd"), "timestamp": [1, 2, 3, 4], "rating": [3.0, 4.0, 3.0, 5.0]}
    )
    ex = history_examples(rows, history=2)
    assert ex["label"].tolist() == [0, 1, 0, 1]
    assert ex["history_items"].tolist() == [[], ["a"], ["a", "b"], ["b", "c"]]


def test_config_is_strict() -> None:
    with pytest.raises(ValueError):
        CTRConfig(histroy=3)
    with pytest.raises(ValueError, match="min_history"):
        CTRConfig(history=3, min_history=5)
    with pytest.raises(ValueError, match="explicit ratings"):
        unrated = rated_data().interactions.assign(rating=np.nan)
        build_ctr_examples(InteractionData(unrated, rated_data().items))


def test_few_shot_sampling_is_seeded() -> None:
    train = build_ctr_examples(rated_data(), CTRConfig(min_history=1)).train
    a, b = sample_shots(train, 16, seed=3), sample_shots(train, 16, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 16 and not a.duplicated(["user_id", "item_id"]).any()
    assert not sample_shots(train, 16, seed=4).equals(a)
    assert len(sample_shots(train, 0)) == len(train)
    with pytest.raises(ValueError):
        sample_shots(train, len(train) + 1)


def test_ctr_auc_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    examples = pd.DataFrame({"label": rng.integers(0, 2, 50)})
    scores = rng.normal(size=50).round(1)  # with ties
    assert ctr_auc(scores, examples) == pytest.approx(roc_auc_score(examples["label"], scores))


def test_logistic_baseline_learns_the_item_signal() -> None:
    data = rated_data(n_users=60)
    split = build_ctr_examples(data, CTRConfig(min_history=3))
    model = LogisticCTR().fit(split.train, data.items)
    assert ctr_auc(model.predict(split.test), split.test) > 0.9
    assert set(model.coefficients()) == set(LogisticCTR.FEATURES)
    # On its own training examples an item's statistics leave the example itself out: a single
    # example of an item sees the prior, not its own label.
    lone = split.train.iloc[[0]]
    one = LogisticCTR().fit(pd.concat([lone, split.train[split.train["item_id"] != lone["item_id"].iloc[0]]]), data.items)
    features = one._features(lone, leave_out=True)
    assert features[0, 2] == pytest.approx(one.prior_like_)


@pytest.mark.realdata
def test_ml100k_construction() -> None:
    from promptrec.data import load_dataset

    data = load_dataset("ml-100k", shared_dataset("ml-100k"))
    split = build_ctr_examples(data)
    summary = split.summary()
    assert (summary["train"]["examples"], summary["valid"]["examples"], summary["test"]["examples"]) == (72500, 8839, 9231)
    assert split.train["timestamp"].max() < split.valid["timestamp"].min()
    assert split.valid["timestamp"].max() < split.test["timestamp"].min()
