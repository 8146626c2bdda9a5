"""Cold-start items: the cold-item split keeps cold items out of training entirely; cold/warm
reports with exact random expectations; a tiny P5 model with semantic ids can decode cold items."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
from conftest import cyclic_data

from promptrec.data import InteractionData, cold_item_split, leave_one_out
from promptrec.models.cold_start import evaluate_cold_start, random_expected, target_groups


def random_data(n_users: int = 60, n_items: int = 50, seed: int = 0) -> InteractionData:
    """Users of 1-12 events over items with skewed popularity (some users have < 3 events)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_items + 1)
    rows = []
    for u in range(n_users):
        n = int(rng.integers(1, 13))
        for t, i in enumerate(rng.choice(n_items, size=n, replace=False, p=p / p.sum())):
            rows.append((f"u{u}", f"i{i}", t))
    items = pd.DataFrame({"item_id": [f"i{j}" for j in range(n_items)], "title": [f"film {j}" for j in range(n_items)]})
    return InteractionData(pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]), items)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_cold_item_is_ever_trained_on(seed) -> None:
    data = random_data(seed=seed)
    split = cold_item_split(data, fraction=0.1, seed=seed)
    cold = split.cold_items
    assert len(cold) == round(0.1 * data.interactions["item_id"].nunique())
    assert not cold & set(split.train["item_id"])
    assert not any(cold & set(seq) for seq in split.train_sequences().values())
    assert not any(cold & set(seq) for seq in split.history("valid").values())  # validation history = train


def test_targets_are_each_users_last_two_events_cold_or_not() -> None:
    data = random_data(seed=4)
    split = cold_item_split(data, fraction=0.2, seed=4)
    seqs = data.sequences()
    train = split.train_sequences()
    evaluated = set(split.test["user_id"])
    assert set(split.valid["user_id"]) == evaluated
    for user, seq in seqs.items():
        warm_before = [i for i in seq[:-2] if i not in split.cold_items]
        if len(seq) >= 3 and warm_before:
            assert user in evaluated
            assert split.test.set_index("user_id").loc[user, "item_id"] == seq[-1]
            assert split.valid.set_index("user_id").loc[user, "item_id"] == seq[-2]
            assert train[user] == warm_before  # earlier cold events dropped, order kept
        else:
            assert user not in evaluated  # short users, and users with nothing warm to train on
            assert train.get(user, []) == ([i for i in seq if i not in split.cold_items] if len(seq) < 3 else [])
    assert split.test["item_id"].isin(split.cold_items).any()  # cold targets do occur


def test_the_cold_draw_is_seeded_and_independent_of_row_order() -> None:
    data = random_data(seed=5)
    a = cold_item_split(data, seed=7).cold_items
    assert a == cold_item_split(data, seed=7).cold_items and a != cold_item_split(data, seed=8).cold_items
    shuffled = data.interactions.sample(frac=1.0, random_state=0).sort_values(["user_id", "timestamp"], kind="stable")
    again = InteractionData(shuffled.reset_index(drop=True), data.items)
    assert cold_item_split(again, seed=7).cold_items == a
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="fraction"):
            cold_item_split(data, fraction=bad)


def test_random_expectation_is_exact_and_matches_sampling() -> None:
    split = leave_one_out(cyclic_data(n_users=40, n_items=30, length=8))
    exp = random_expected(split, "test", k=10, metrics=("HR@10", "NDCG@10", "MRR"))
    m = 30 - 7  # candidates: the catalogue minus a test history of 7 distinct items
    assert (exp["candidates"] == m).all()
    assert exp["HR@10"].iloc[0] == pytest.approx(10 / m)
    assert exp["NDCG@10"].iloc[0] == pytest.approx(sum(1 / np.log2(r + 1) for r in range(1, 11)) / m)
    assert exp["MRR"].iloc[0] == pytest.approx(sum(1 / r for r in range(1, 11)) / m)
    # A seeded uniform shuffle of the unseen items agrees within sampling error.
    rng = np.random.default_rng(0)
    history = split.history("test")
    target = split.test.set_index("user_id")["item_id"]
    hits = []
    for _ in range(200):
        for u in target.index:
            unseen = [i for i in split.data.items.index if i not in history[u]]
            hits.append(target[u] in rng.permutation(unseen)[:10])
    assert np.mean(hits) == pytest.approx(10 / m, abs=0.01)


class Oracle:
    """Returns each user's target first, then unseen items in catalogue order."""

    def __init__(self, split) -> None:
        self.split = split

    def recommend(self, user_ids, k=10, exclude_seen=True, stage="test"):
        target = self.split.targets(stage).set_index("user_id")["item_id"]
        history = self.split.history(stage)
        rows = []
        for u in user_ids:
            rest = [i for i in self.split.data.items.index if i not in history[u] and i != target[u]]
            rows += [(u, i, -r, r) for r, i in enumerate([target[u], *rest][:k], start=1)]
        return pd.DataFrame(rows, columns=["user_id", "item_id", "score", "rank"])


def test_cold_and_warm_users_are_reported_apart() -> None:
    from promptrec.models.classic.popularity import MostPopular

    split = cold_item_split(random_data(n_users=120, seed=6), fraction=0.2, seed=1)
    groups = target_groups(split, "test")
    n_cold = int((groups == "cold").sum())
    assert 0 < n_cold < len(groups)
    res = evaluate_cold_start({"oracle": Oracle(split), "popularity": MostPopular().fit(split)}, split, k=10,
                              metrics=("HR@10", "NDCG@10"))
    assert res["users"] == {"all": len(groups), "cold": n_cold, "warm": len(groups) - n_cold}
    assert res["candidates"] == 50  # every catalogue item, no sampled candidates
    oracle = res["models"]["oracle"]
    assert oracle["cold"]["HR@10"] == oracle["warm"]["HR@10"] == 1.0
    assert oracle["cold"]["cold_share@10"] >= 0.1  # at least the target itself
    # Cold items have no training count: popularity ranks them below every counted item.
    assert res["models"]["popularity"]["cold"]["HR@10"] == 0.0
    assert res["models"]["random"]["cold"]["HR@10"] > 0
    assert res["models"]["oracle"]["summary"]["history_violations"] == 0
    again = evaluate_cold_start({"oracle": Oracle(split)}, split, k=10, metrics=("HR@10", "NDCG@10"))
    for group in ("all", "cold", "warm"):  # deterministic (timings aside)
        assert again["models"]["oracle"][group] == oracle[group]
    assert again["models"]["random"] == res["models"]["random"]


def test_a_semantic_id_model_can_decode_cold_items(tiny_text_encoder) -> None:
    from promptrec.models.p5.config import RunConfig
    from promptrec.models.p5.model import P5Recommender

    split = cold_item_split(random_data(n_users=80, seed=3), fraction=0.2, seed=0)
    config = RunConfig().update({
        "model.preset": "tiny", "index.method": "semantic",
        "index.params": {"encoder": str(tiny_text_encoder), "levels": 2, "codebook": 4},
        "train.epochs": 1, "train.batch_size": 32, "train.val_users": 10,
    })
    model = P5Recommender(config).fit(split, progress=False)
    cold = sorted(split.cold_items)
    assert not split.cold_items & {i for seq in model.train_history.values() for i in seq}
    assert set(model.catalogue()) == set(split.data.items.index)  # the trie holds every item
    # Restricted to cold items, the trie search produces them: they are reachable by decoding.
    user = split.test["user_id"].iloc[0]
    prompts = model.sequential_prompts([user], [model.history(user)])
    out = model.generate_items(prompts, 3, excluded=[model.history(user)], allowed=[cold])[0]
    assert {item for item, _ in out} <= set(cold) and len(out) == 3
    res = evaluate_cold_start({"p5": model}, split, k=10, metrics=("HR@10", "NDCG@10"))
    assert res["models"]["p5"]["summary"]["invalid_rate"] == 0
    assert res["models"]["p5"]["summary"]["history_violations"] == 0


class _Index:
    codes: ClassVar[dict[str, tuple[str, ...]]] = {
        "w0": ("<a_0>", "<b_0>", "<c_0>"), "w1": ("<a_1>", "<b_1>", "<c_0>"), "w2": ("<a_2>", "<b_1>", "<c_0>"),
        "w3": ("<a_3>", "<b_0>", "<c_0>"), "w4": ("<a_4>", "<b_0>", "<c_0>"),
        "c1": ("<a_1>", "<b_1>", "<c_1>"), "c2": ("<a_1>", "<b_1>", "<c_2>"), "c3": ("<a_2>", "<b_1>", "<c_1>"),
        "c9": ("<a_9>", "<b_9>", "<c_0>"),
    }


class _Generative:
    """A stand-in for a semantic-id P5 model: a fixed list of warm items, best first."""

    indexer = _Index()
    # "v" lists c1 only so that its exclusion from v's list can be checked.
    train_history: ClassVar[dict[str, list[str]]] = {"u": ["w0"], "v": ["w0", "c1"]}

    name = "generative"

    def get_params(self):
        return {}

    def history(self, user, stage="test"):
        return self.train_history[user]

    def recommend(self, user_ids, k=10, exclude_seen=True, stage="test", histories=None, candidates=None):
        ranked = ["w1", "w2", "w3", "w4"][:k]
        return pd.DataFrame([(u, i, -float(r), r) for u in user_ids for r, i in enumerate(ranked, start=1)],
                            columns=["user_id", "item_id", "score", "rank"])


def test_cold_items_follow_the_generated_item_with_their_code_prefix() -> None:
    from promptrec.models.cold_start import ColdPrefixRecommender

    rec = _Generative()
    cold = frozenset({"c1", "c2", "c3", "c9"})

    def lists(share, users=("u",)):
        out = ColdPrefixRecommender(rec, share=share, cold_items=cold).recommend(list(users), k=4)
        return {u: g["item_id"].tolist() for u, g in out.groupby("user_id", sort=False)}

    assert lists(0.0)["u"] == ["w1", "w2", "w3", "w4"]
    assert lists(0.25)["u"] == ["w1", "c1", "w2", "w3"]  # one cold item: round(0.25 * 4)
    assert lists(0.5)["u"] == ["w1", "c1", "c2", "w2"]  # collision order within a prefix
    assert lists(1.0)["u"] == ["w1", "c1", "c2", "w2"]  # c9's prefix was never generated
    assert lists(0.5, ["v"])["v"] == ["w1", "c2", "w2", "c3"]  # the history is excluded
    out = ColdPrefixRecommender(rec, share=0.5, cold_items=cold).recommend(["u"], k=4)
    assert out["rank"].tolist() == [1, 2, 3, 4] and out["score"].tolist() == [-1.0, -1.0, -1.0, -2.0]
    # Without an explicit set, cold = catalogue items that no training history holds.
    assert ColdPrefixRecommender(rec).cold_items == frozenset(_Index.codes) - {"w0", "c1"}
    with pytest.raises(ValueError, match="share"):
        ColdPrefixRecommender(rec, share=1.5)
