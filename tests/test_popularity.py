"""MostPopular and the evaluation harness on a tiny dataset whose answers are known by hand.

Sequences (evaluated users: train / valid / test):
    u1: a b | c | e        u2: a b | e | c        u3: a | c | f        u4: a | b | e
plus short users that only add training counts: u5 [a b], u6 [b c], u7 [c d], u8 [c d], u9 [e].
Training counts: a 5, b 4, c 3, d 2, e 1, f 0, g 0 (g is in the catalogue only).
So the popularity order is a b c d e, then f and g in seeded random order.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from promptrec.core.recommender import RECOMMENDERS, build_recommender, load_recommender
from promptrec.data import InteractionData, leave_one_out
from promptrec.evaluation.ranking import evaluate_rankings, format_table

SEQUENCES = {
    "u1": "abce",
    "u2": "abec",
    "u3": "acf",
    "u4": "abe",
    "u5": "ab",
    "u6": "bc",
    "u7": "cd",
    "u8": "cd",
    "u9": "e",
}


@pytest.fixture()
def split():
    rows = [(u, item, t) for u, seq in SEQUENCES.items() for t, item in enumerate(seq)]
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    items = pd.DataFrame({"item_id": list("abcdefg"), "title": [f"item {c}" for c in "abcdefg"]})
    return leave_one_out(InteractionData(interactions=interactions, items=items))


@pytest.fixture()
def model(split):
    return build_recommender("popularity", seed=0).fit(split)


def lists(recs: pd.DataFrame) -> dict[str, list[str]]:
    return {u: list(g) for u, g in recs.groupby("user_id", sort=False)["item_id"]}


def test_registered() -> None:
    from promptrec.models.classic.popularity import MostPopular

    assert RECOMMENDERS.get("popularity") is MostPopular


def test_known_answer_and_history_excluded(model) -> None:
    recs = model.recommend(["u1", "u3", "u4"], k=3, stage="test")
    assert list(recs.columns) == ["user_id", "item_id", "score", "rank"]
    got = lists(recs)
    assert got["u1"][:2] == ["d", "e"] and got["u1"][2] in {"f", "g"}  # history a b c
    assert got["u3"] == ["b", "d", "e"]  # history a c
    assert got["u4"] == ["c", "d", "e"]  # history a b
    assert recs["rank"].tolist() == [1, 2, 3] * 3
    assert recs.loc[recs["user_id"] == "u3", "score"].tolist() == [4.0, 2.0, 1.0]


def test_stage_picks_the_history(model) -> None:
    # For "valid" the validation item (c for u1) is not history yet, so it can be recommended.
    assert lists(model.recommend(["u1"], k=3, stage="valid"))["u1"] == ["c", "d", "e"]
    assert "c" not in lists(model.recommend(["u1"], k=3, stage="test"))["u1"]
    with pytest.raises(ValueError, match="stage"):
        model.recommend(["u1"], stage="train")


def test_cold_start_exclude_seen_off_and_k(model) -> None:
    assert lists(model.recommend(["nobody"], k=3))["nobody"] == ["a", "b", "c"]
    assert lists(model.recommend(["u1"], k=2, exclude_seen=False))["u1"] == ["a", "b"]
    # k larger than what is left: every unseen catalogue item, no more.
    recs = model.recommend(["u1"], k=10)
    assert sorted(recs["item_id"]) == ["d", "e", "f", "g"]
    with pytest.raises(ValueError, match="k must be"):
        model.recommend(["u1"], k=0)


def test_output_keeps_user_order_and_external_ids(model) -> None:
    recs = model.recommend(["u4", "u1", "nobody"], k=2)
    assert list(dict.fromkeys(recs["user_id"])) == ["u4", "u1", "nobody"]
    assert set(recs["item_id"]) <= set("abcdefg")
    assert model.recommend([], k=3).empty


def test_ties_follow_the_seed_not_the_ids() -> None:
    # 30 items nobody interacted with: their order comes only from the tie-break permutation.
    interactions = pd.DataFrame({"user_id": ["u"], "item_id": ["i00"]})
    items = pd.DataFrame({"item_id": [f"i{n:02d}" for n in range(31)]})
    split = leave_one_out(InteractionData(interactions=interactions, items=items))

    def order(seed: int) -> list[str]:
        from promptrec.models.classic.popularity import MostPopular

        return MostPopular(seed=seed).fit(split).recommend(["new"], k=31)["item_id"].tolist()

    assert order(0)[0] == "i00"  # the one counted item still comes first
    assert order(0) == order(0)
    assert order(0) != order(1)
    assert order(0)[1:] != sorted(order(0)[1:])


def test_fast_ranking_matches_the_generic_one(model) -> None:
    # MostPopular ranks by slicing its popularity order instead of scoring every item; the generic
    # ScoringRecommender path on its _scores (ties to the lower column) must give the same table.
    from promptrec.core.recommender import ScoringRecommender

    users = ["u1", "u2", "u3", "u4", "u5", "nobody"]
    for stage in ("valid", "test"):
        for k in (1, 3, 7, 10):
            for exclude_seen in (True, False):
                fast = model.recommend(users, k=k, exclude_seen=exclude_seen, stage=stage)
                generic = ScoringRecommender._recommend_block(model, users, k, model._history(users, stage), exclude_seen, None)
                pd.testing.assert_frame_equal(fast, generic)


def test_save_load_round_trip(model, split, tmp_path) -> None:
    model.save_pretrained(tmp_path / "pop")
    restored = load_recommender(tmp_path / "pop")
    assert type(restored) is type(model) and restored.seed == model.seed
    users = ["u1", "u2", "u3", "u4", "nobody"]
    for stage in ("valid", "test"):
        pd.testing.assert_frame_equal(
            restored.recommend(users, k=5, stage=stage), model.recommend(users, k=5, stage=stage)
        )
    assert not any(p.suffix == ".pkl" for p in (tmp_path / "pop").iterdir())


def test_unfitted_model_says_so() -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        build_recommender("popularity").recommend(["u1"])


def test_evaluate_rankings_test_stage(model, split) -> None:
    # Test stage, k=3: ranks u1 e->2, u2 c->1, u3 f->absent, u4 e->3.
    summary, per_user = evaluate_rankings(
        model, split, stage="test", k=3, metrics=("HR@1", "HR@3", "NDCG@3", "MRR")
    )
    assert per_user["user_id"].tolist() == ["u1", "u2", "u3", "u4"]
    assert per_user["target"].tolist() == ["e", "c", "f", "e"]
    assert per_user["rank"].tolist() == [2, 1, pd.NA, 3]
    assert summary["HR@1"] == pytest.approx(0.25)
    assert summary["HR@3"] == pytest.approx(0.75)
    assert summary["NDCG@3"] == pytest.approx((1 / math.log2(3) + 1 + 0 + 0.5) / 4)
    assert summary["MRR"] == pytest.approx((1 / 2 + 1 + 0 + 1 / 3) / 4)
    assert summary["eval_users"] == 4
    assert summary["invalid_rate"] == 0.0
    assert summary["history_violations"] == 0 and summary["history_excluded"] is True
    assert summary["eval_seconds"] > 0 and summary["users_per_second"] > 0


def test_evaluate_rankings_valid_stage_and_subset(model, split) -> None:
    # Valid stage, k=3: ranks u1 c->1, u2 e->3, u3 c->2, u4 b->1.
    summary, per_user = evaluate_rankings(
        model, split, stage="valid", k=3, metrics=("HR@3", "NDCG@3", "MRR"), batch_size=3
    )
    assert per_user["rank"].tolist() == [1, 3, 2, 1]
    assert summary["HR@3"] == 1.0
    assert summary["NDCG@3"] == pytest.approx((1 + 0.5 + 1 / math.log2(3) + 1) / 4)
    assert summary["MRR"] == pytest.approx((1 + 1 / 3 + 1 / 2 + 1) / 4)

    summary, per_user = evaluate_rankings(model, split, "valid", k=3, users=["u3"], metrics=["MRR"])
    assert per_user["user_id"].tolist() == ["u3"] and summary["MRR"] == 0.5
    with pytest.raises(ValueError, match="no valid target"):
        evaluate_rankings(model, split, "valid", k=3, users=["u9"], metrics=["MRR"])


def test_evaluate_rankings_checks_the_contract(model, split) -> None:
    with pytest.raises(ValueError, match="NDCG@5 needs at least 5"):
        evaluate_rankings(model, split, k=3, metrics=["NDCG@5"])

    class Cheater:
        """Returns the user's own history plus one id that is not a catalogue item."""

        def recommend(self, user_ids, k=10, exclude_seen=True, stage="test"):
            history = split.history(stage)
            rows = [(u, item) for u in user_ids for item in [*history[u][:1], "zzz"]]
            recs = pd.DataFrame(rows, columns=["user_id", "item_id"])
            recs["score"] = 1.0
            recs["rank"] = recs.groupby("user_id").cumcount() + 1
            return recs

    with pytest.warns(UserWarning, match="4 item"):
        summary, _ = evaluate_rankings(Cheater(), split, k=2, metrics=["HR@2"])
    assert summary["history_violations"] == 4 and summary["history_excluded"] is False
    assert summary["invalid_rate"] == 0.5

    class TooMany(Cheater):
        def recommend(self, user_ids, k=10, exclude_seen=True, stage="test"):
            return model.recommend(user_ids, k=k + 1, stage=stage)

    with pytest.raises(ValueError, match="k=2"):
        evaluate_rankings(TooMany(), split, k=2, metrics=["HR@2"])


def test_format_table(model, split) -> None:
    summary, _ = evaluate_rankings(model, split, k=3, metrics=("HR@3", "MRR"))
    table = format_table({"popularity": summary, "other": {"HR@3": 0.5}}, keys=("HR@3", "MRR"))
    assert table.splitlines() == [
        "| model      |   HR@3 |    MRR |",
        "|------------|-------:|-------:|",
        "| popularity | 0.7500 | 0.4583 |",
        "| other      | 0.5000 |      - |",
    ]


def test_large_catalogue_is_fast() -> None:
    """22k users x 12k items, histories up to 60 items: the whole evaluation stays quick."""
    import time

    rng = np.random.default_rng(0)
    n_users, n_items = 22_000, 12_000
    lengths = rng.integers(3, 60, size=n_users)
    users = np.repeat([f"u{n}" for n in range(n_users)], lengths)
    items = rng.zipf(1.3, size=len(users)) % n_items
    interactions = pd.DataFrame({"user_id": users, "item_id": [f"i{n}" for n in items]})
    catalogue = pd.DataFrame({"item_id": [f"i{n}" for n in range(n_items)]})
    split = leave_one_out(InteractionData(interactions=interactions, items=catalogue))
    model = build_recommender("popularity").fit(split)

    start = time.perf_counter()
    summary, per_user = evaluate_rankings(model, split, k=20, batch_size=4096)
    assert time.perf_counter() - start < 30
    assert summary["eval_seconds"] < 10  # the recommend() calls alone: about 1 s here
    assert summary["eval_users"] == n_users and summary["history_violations"] == 0
    assert len(per_user) == n_users
