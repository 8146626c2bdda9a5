"""Known answers for the P5 metrics beyond the all-item ranking (promptrec.models.p5.evaluation):
yes/no AUC, the sampled choose-from-candidates family and the unconstrained invalid rate.

The model is a tiny untrained P5 (only built: index, tokenizer, random LM). The outputs the extra
metrics are computed from are fixed by stubs on the instance (``score``, and ``generate_items`` with
candidates or without the trie), so each metric's value is worked out by hand below.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import cyclic_data

from promptrec.models.p5.config import RunConfig
from promptrec.data import leave_one_out
from promptrec.models.p5.model import P5Recommender

N_CANDIDATES = 6
UNCONSTRAINED = 5  # the first five evaluated users are decoded without the trie
# Rank the choose stub gives each evaluated user's target (None: left out of the answer).
CHOOSE_RANKS = [1, 2, 1, 4, 6, None, 3, 5]
# yes/no stub: P(yes) of each user's real target; every sampled negative gets NEG_SCORE.
POS_SCORES = [0.1, 0.2, 0.25, 0.3, 0.5, 0.6, 0.7, 0.8]
NEG_SCORE = 0.25


@pytest.fixture(scope="module")
def evaluated():
    split = leave_one_out(cyclic_data(n_users=8, n_items=30, length=8, seed=5))
    cfg = RunConfig().update({
        "model.preset": "tiny", "index.method": "random",
        "tasks.weights": {"sequential": 1.0, "yesno": 1.0, "choose": 1.0},
        "eval.sampled_candidates": N_CANDIDATES, "eval.unconstrained_users": UNCONSTRAINED,
        "eval.users": 0, "train.seed": 0,
    })
    rec = P5Recommender(cfg).build(split)
    users = list(split.test["user_id"])  # evaluation order: the test table's
    target = dict(zip(split.test["user_id"], split.test["item_id"]))
    history = {u: rec.history(u, "test") for u in users}
    assert len(users) == len(CHOOSE_RANKS) == len(POS_SCORES)
    catalogue = list(split.data.items.index)
    calls = {"score": [], "choose": [], "unconstrained": []}
    original = rec.generate_items  # the real decoding, for any other call

    def score(user_ids, item_ids, stage="test", batch_size=256, histories=None):
        calls["score"].append((list(user_ids), list(item_ids), stage))
        return [POS_SCORES[users.index(u)] if i == target[u] else NEG_SCORE for u, i in zip(user_ids, item_ids)]

    def generate_items(prompts, k, excluded=None, allowed=None, constrained=True):
        if allowed is not None:  # the sampled choose family; rows come in evaluation order
            out = []
            for ex, cands in zip(excluded, allowed):
                n = len(calls["choose"])
                calls["choose"].append((users[n], list(ex), list(cands)))
                others = [c for c in cands if c != target[users[n]]]
                rank = CHOOSE_RANKS[n]
                if rank is not None and target[users[n]] in cands:
                    others.insert(rank - 1, target[users[n]])
                out.append([(item, -float(r)) for r, item in enumerate(others[:k])])
            return out
        if not constrained:
            # Row n: n outputs that are no item, one history item on even rows, the rest valid
            # unseen items (10 outputs per user).
            out = []
            for _ in prompts:
                n = len(calls["unconstrained"])
                u = users[n]
                calls["unconstrained"].append(u)
                unseen = [i for i in catalogue if i not in history[u]]
                row = [None] * n + ([history[u][0]] if n % 2 == 0 else [])
                row += unseen[: k - len(row)]
                out.append([(item, -1.0) for item in row])
            return out
        return original(prompts, k, excluded=excluded, allowed=allowed, constrained=constrained)

    rec.score = score
    rec.generate_items = generate_items
    result = rec.extra_metrics(split, "test", users)
    return result, calls, users, target, history, rec


def test_yesno_auc_has_the_hand_computed_value(evaluated) -> None:
    result, calls, users, target, history, _ = evaluated
    (pair_users, items, stage), = calls["score"]
    assert stage == "test"
    # One positive (the user's test item) and one sampled negative per user, never a known item.
    assert pair_users == users + users
    assert items[: len(users)] == [target[u] for u in users]
    for u, neg in zip(users, items[len(users):]):
        assert neg != target[u] and neg not in history[u]
    # Mann-Whitney by hand: 5 positives (0.3 .. 0.8) beat every negative (0.25), one ties them
    # (0.25, counts 1/2), two lose (0.1, 0.2): (5 + 0.5) / 8. Swapped labels would give 2.5 / 8.
    assert result["yesno_AUC"] == pytest.approx(5.5 / 8)


def test_sampled_choose_includes_the_target_and_scores_known_ranks(evaluated) -> None:
    result, calls, users, target, history, _ = evaluated
    assert [u for u, _, _ in calls["choose"]] == users
    for u, excluded, cands in calls["choose"]:
        assert target[u] in cands  # the target is always among the candidates
        assert len(cands) == len(set(cands)) == N_CANDIDATES
        assert not set(cands) & set(history[u]) and excluded == history[u]
    ranks = CHOOSE_RANKS
    n = len(ranks)
    expected = {
        "HR@1": sum(r == 1 for r in ranks if r) / n,  # 2 / 8
        "HR@5": sum(r <= 5 for r in ranks if r) / n,  # 6 / 8
        "HR@10": sum(r is not None for r in ranks) / n,  # 7 / 8
        "NDCG@10": sum(1 / math.log2(r + 1) for r in ranks if r) / n,
    }
    assert expected["HR@1"] == 0.25 and expected["HR@5"] == 0.75 and expected["HR@10"] == 0.875
    for key, value in expected.items():
        assert result[f"sampled{N_CANDIDATES}_choose_{key}"] == pytest.approx(value), key


def test_unconstrained_invalid_rate_counts_every_output(evaluated) -> None:
    result, calls, users, _, _, _ = evaluated
    assert calls["unconstrained"] == users[:UNCONSTRAINED]
    assert result["unconstrained_users"] == UNCONSTRAINED
    # 50 outputs (10 per user): 0 + 1 + 2 + 3 + 4 = 10 are no item, rows 0, 2, 4 hold one history item.
    assert result["unconstrained_invalid_rate"] == pytest.approx(10 / 50)
    assert result["unconstrained_history_rate"] == pytest.approx(3 / 50)


def test_score_is_the_probability_of_yes(evaluated, monkeypatch: pytest.MonkeyPatch) -> None:
    """P5Recommender.score is P(yes) renormalised over {yes, no} at the first answer token: with
    next-token logits fixed at log 0.6 for "yes" and log 0.15 for "no" it is 0.6 / 0.75 = 0.8."""
    *_, rec = evaluated
    yes, no = rec.tokenizer.convert_tokens_to_ids(["yes", "no"])
    assert yes != no and rec.tokenizer.unk_token_id not in (yes, no)

    def logits(enc):
        out = torch.zeros(enc["input_ids"].shape[0], len(rec.tokenizer))
        out[:, yes], out[:, no] = np.log(0.6), np.log(0.15)
        return out

    monkeypatch.setattr(rec, "_next_token_logits", logits)
    values = P5Recommender.score(rec, ["user0", "nobody"], ["item1", "item2"])  # the class's, not the stub
    assert np.asarray(values) == pytest.approx([0.8, 0.8])
