"""Rating prediction: the RMSE/MAE harness against hand-computed values, the random ratings split,
and biased MF's known answers (a noisy low-rank matrix is recovered; clipping; fallbacks; save/load).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import cyclic_data

from promptrec.core.recommender import build_recommender, load_recommender
from promptrec.data import InteractionData, Split, leave_one_out
from promptrec.evaluation.rating import evaluate_ratings, random_split_ratings

SMALL = {"factors": 4, "lr": 0.02, "reg": 0.01, "epochs": 60, "batch_size": 128, "progress": False}


def frame(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=["user_id", "item_id", "rating"])
    return table.assign(timestamp=np.arange(len(rows), dtype=float))


class TableModel:
    """A stub predictor answering from a fixed ``(user, item) -> rating`` table."""

    def __init__(self, table: dict[tuple[str, str], float]) -> None:
        self.table = table

    def predict_rating(self, user_ids: list[str], item_ids: list[str]) -> np.ndarray:
        return np.array([self.table[u, i] for u, i in zip(user_ids, item_ids)])


def low_rank_data(n_users: int = 60, n_items: int = 40, noise: float = 0.1) -> InteractionData:
    """Ratings ``3 + b_u + b_i + <p_u, q_i> + noise`` (rank 2) on a random 60 % of the cells.

    The catalogue also holds an item nobody rated, ``"i-unrated"``.
    """
    rng = np.random.default_rng(0)
    p, q = rng.normal(size=(n_users, 2)), rng.normal(size=(n_items, 2))
    b_u, b_i = rng.normal(0, 0.5, n_users), rng.normal(0, 0.5, n_items)
    users, items = np.nonzero(rng.random((n_users, n_items)) < 0.6)
    true = 3 + b_u[users] + b_i[items] + 0.5 * (p[users] * q[items]).sum(1)
    ratings = true + rng.normal(0, noise, len(users))
    rows = [(f"u{u}", f"i{i}", r) for u, i, r in zip(users, items, ratings)]
    items_table = pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)] + ["i-unrated"]})
    return InteractionData(frame(rows), items_table)


@pytest.fixture(scope="module")
def low_rank_fit():
    split = random_split_ratings(low_rank_data(), test_fraction=0.2, seed=0)
    return split, build_recommender("biased_mf", **SMALL).fit(split)


# -- the harness ---------------------------------------------------------------------------------
def test_rmse_and_mae_are_the_hand_computed_values() -> None:
    # Training ratings 2, 4, 3, 3 -> mu = 3. Test: 4 ratings; errors 0, +1, -2, +1 (stub model).
    train = frame([("a", "x", 2.0), ("b", "y", 4.0), ("c", "x", 3.0), ("d", "y", 3.0)])
    test = frame([("a", "y", 4.0), ("b", "x", 2.0), ("c", "y", 5.0), ("d", "x", 1.0)])
    data = InteractionData(pd.concat([train, test]), pd.DataFrame({"item_id": ["x", "y"]}))
    split = Split(data=data, train=train, valid=test.iloc[:0], test=test)
    model = TableModel({("a", "y"): 4.0, ("b", "x"): 3.0, ("c", "y"): 3.0, ("d", "x"): 2.0})

    summary, per_user = evaluate_ratings(model, split)
    assert summary["RMSE"] == pytest.approx(math.sqrt((0 + 1 + 4 + 1) / 4))
    assert summary["MAE"] == pytest.approx((0 + 1 + 2 + 1) / 4)
    # Global mean 3 against 4, 2, 5, 1: errors 1, 1, 2, 2.
    assert summary["global_mean"] == 3.0
    assert summary["global_mean_RMSE"] == pytest.approx(math.sqrt((1 + 1 + 4 + 4) / 4))
    assert summary["global_mean_MAE"] == pytest.approx(1.5)
    assert (summary["n_ratings"], summary["n_users"], summary["unrated_targets"]) == (4, 4, 0)
    assert summary["stage"] == "test" and summary["eval_seconds"] >= 0
    assert per_user["user_id"].tolist() == ["a", "b", "c", "d"]
    assert per_user["squared_error"].tolist() == [0.0, 1.0, 4.0, 1.0]
    assert per_user["absolute_error"].tolist() == [0.0, 1.0, 2.0, 1.0]
    assert per_user["n_ratings"].tolist() == [1, 1, 1, 1]


def test_unrated_targets_are_skipped_and_counted() -> None:
    train = frame([("a", "x", 2.0), ("b", "y", 4.0)])
    test = frame([("a", "y", 4.0), ("b", "x", float("nan"))])
    data = InteractionData(pd.concat([train, test]), pd.DataFrame({"item_id": ["x", "y"]}))
    split = Split(data=data, train=train, valid=test, test=test)
    summary, per_user = evaluate_ratings(TableModel({("a", "y"): 3.5}), split, stage="valid")
    assert summary["n_ratings"] == 1 and summary["unrated_targets"] == 1
    assert summary["RMSE"] == pytest.approx(0.5) and per_user["user_id"].tolist() == ["a"]
    with pytest.raises(ValueError, match="stage"):
        evaluate_ratings(TableModel({}), split, stage="train")


def test_random_split_is_seeded_disjoint_and_sized() -> None:
    data = low_rank_data()
    n = len(data.interactions)
    split = random_split_ratings(data, test_fraction=0.2, seed=3)
    n_test = round(0.2 * n)
    assert (len(split.test), len(split.valid)) == (n_test, round(0.1 * (n - n_test)))
    assert len(split.train) + len(split.valid) + len(split.test) == n
    keys = [set(zip(t["user_id"], t["item_id"])) for t in (split.train, split.valid, split.test)]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    again = random_split_ratings(data, test_fraction=0.2, seed=3)
    pd.testing.assert_frame_equal(split.test, again.test)
    assert not split.test.equals(random_split_ratings(data, test_fraction=0.2, seed=4).test)
    with pytest.raises(ValueError, match="no ratings"):
        random_split_ratings(cyclic_data())


# -- biased MF -----------------------------------------------------------------------------------
def test_biased_mf_recovers_a_noisy_low_rank_matrix(low_rank_fit) -> None:
    split, model = low_rank_fit
    summary, _ = evaluate_ratings(model, split)
    # The noise has sd 0.1 and the global mean misses by ~1: the structure was learnt.
    assert summary["global_mean_RMSE"] > 0.8
    assert summary["RMSE"] < 0.25 * summary["global_mean_RMSE"]
    assert model.fit_info_["best_valid_RMSE"] < 0.3


def test_predictions_are_clipped_to_the_training_range(low_rank_fit) -> None:
    split, model = low_rank_fit
    low, high = split.train["rating"].min(), split.train["rating"].max()
    assert model.rating_range_ == (low, high)
    users = list(model.users_)
    raw = model._scores(users, model._history(users, "test"))  # unclipped r_hat of every (user, item)
    assert raw.max() > high or raw.min() < low  # some predictions do leave the range...
    pairs = pd.MultiIndex.from_product([users, list(model.items_)])
    pred = model.predict_rating(pairs.get_level_values(0), pairs.get_level_values(1))
    assert pred.min() >= low and pred.max() <= high  # ...and predict_rating clips them
    np.testing.assert_allclose(pred, np.clip(raw.ravel(), low, high), atol=1e-5)


def test_unknown_users_and_items_fall_back_to_the_known_biases(low_rank_fit) -> None:
    _, model = low_rank_fit
    net = model.net_
    mean = net.mean.item()
    b_u = net.user_bias[model._user_position.get_loc("u0")].item()
    b_i = net.item_bias[model._position.get_loc("i0")].item()
    pred = model.predict_rating(
        ["nobody", "u0", "u0", "nobody"], ["i0", "no-item", "i-unrated", "no-item"]
    )
    np.testing.assert_allclose(pred, [mean + b_i, mean + b_u, mean + b_u, mean], rtol=1e-6)
    # A cold-start user ranks items by mu + b_i.
    recs = model.recommend(["nobody"], k=3, stage="test")
    best = np.argsort(-net.item_bias.detach().numpy(), kind="stable")[:3]
    assert recs["item_id"].tolist() == model.items_[best].tolist()


def test_save_and_load_give_identical_predictions(low_rank_fit, tmp_path) -> None:
    split, model = low_rank_fit
    model.save_pretrained(tmp_path / "mf")
    restored = load_recommender(tmp_path / "mf")
    users = [*split.test["user_id"], "nobody"]
    items = [*split.test["item_id"], "i0"]
    np.testing.assert_array_equal(
        restored.predict_rating(users, items), model.predict_rating(users, items)
    )
    assert restored.rating_range_ == model.rating_range_ and restored.fit_info_ == model.fit_info_


def test_fit_rejects_data_without_ratings() -> None:
    with pytest.raises(ValueError, match="explicit ratings"):
        build_recommender("biased_mf", progress=False).fit(leave_one_out(cyclic_data()))


def test_predict_before_fit() -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        build_recommender("biased_mf").predict_rating(["u"], ["i"])


def test_leave_one_out_evaluation_and_seeding() -> None:
    data = low_rank_data()
    split = leave_one_out(data)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    model = build_recommender("biased_mf", **{**SMALL, "epochs": 5}).fit(split)
    assert torch.equal(torch.rand(3), expected)  # the caller's torch RNG is left alone
    summary, per_user = evaluate_ratings(model, split, stage="test")
    assert summary["n_ratings"] == summary["n_users"] == data.n_users == len(per_user)
    again = build_recommender("biased_mf", **{**SMALL, "epochs": 5}).fit(split)
    users, items = list(split.test["user_id"]), list(split.test["item_id"])
    np.testing.assert_array_equal(again.predict_rating(users, items), model.predict_rating(users, items))
    with pytest.raises(ValueError, match="user ids but"):
        model.predict_rating(users, items[:-1])
