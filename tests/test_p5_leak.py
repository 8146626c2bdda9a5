"""No held-out item reaches what P5Recommender.fit learns from, checked through the real fit path
on a small synthetic split (runs everywhere; tests/test_realdata_leak.py does the same for the
index on the real Beauty data when it is present).

Spies record (1) the sequences the item indexer is fitted on, (2) every example any task family
renders during training, and (3) every rendered (prompt, target) batch handed to the LM. For each
user, their validation and test items must appear in none of them as history, target or positive
item. Negatives (a "no" item, choose candidates) are drawn from the catalogue and may be any item.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
from conftest import cyclic_data

from promptrec.models.p5.config import RunConfig
from promptrec.data import leave_one_out
from promptrec.indexing import ItemIndexer
from promptrec.models.p5.model import P5Recommender
from promptrec.prompts.tasks import TASKS

FAMILIES = {"sequential": 1.0, "sequence": 1.0, "yesno": 1.0, "choose": 1.0}


def test_fit_never_sees_validation_or_test_items(monkeypatch: pytest.MonkeyPatch) -> None:
    split = leave_one_out(cyclic_data(n_users=12, n_items=30, length=8, seed=3))
    train = split.train_sequences()
    held: dict[str, set[str]] = defaultdict(set)  # user -> their validation and test items
    for df in (split.valid, split.test):
        for u, i in zip(df["user_id"], df["item_id"]):
            held[u].add(i)
    # Cycles of 30 items walked for 8 steps: no user's held-out item is also one of their training
    # items, so any occurrence below is a leak, not a repeat.
    assert all(not held[u] & set(train[u]) for u in held) and len(held) == 12

    fitted_on: list[dict[str, list[str]]] = []
    original_fit = ItemIndexer.fit

    def spy_fit(self, train_sequences, catalogue, items=None):
        fitted_on.append({u: list(s) for u, s in train_sequences.items()})
        return original_fit(self, train_sequences, catalogue, items)

    monkeypatch.setattr(ItemIndexer, "fit", spy_fit)

    # Every family's example() is where training sequences become fields; wrap each class's own.
    examples: list[tuple[str, dict[str, str]]] = []
    for name in FAMILIES:
        cls = TASKS.get(name)

        def spy_example(self, i, rng, _orig=cls.example, _name=name):
            fields = _orig(self, i, rng)
            examples.append((_name, dict(fields)))
            return fields

        monkeypatch.setattr(cls, "example", spy_example)

    batches: list[tuple[list[str], list[str]]] = []
    original_batch = P5Recommender.training_batch

    def spy_batch(self, inputs, targets, history=None, history_from=None):
        batches.append((list(inputs), list(targets)))
        return original_batch(self, inputs, targets, history, history_from)

    monkeypatch.setattr(P5Recommender, "training_batch", spy_batch)

    cfg = RunConfig().update({
        "model.preset": "tiny", "index.method": "random", "model.user_tokens": True,  # prompts name the user
        "tasks.weights": FAMILIES, "tasks.train_candidates": 5,
        "train.epochs": 1, "train.batch_size": 16, "train.val_users": 4, "train.seed": 0,
        "eval.unconstrained_users": 0,
    })
    rec = P5Recommender(cfg).fit(split, progress=False)

    # (1) The index: fitted once, on exactly the training sequences.
    assert len(fitted_on) == 1
    assert fitted_on[0] == train
    for u, seq in fitted_on[0].items():
        assert not held[u] & set(seq), (u, seq)

    # (2) Family examples: the user token says whose they are; item texts have no spaces.
    by_token = {tok: u for u, tok in rec.user_tokens.items()}
    held_text = {u: {rec.indexer.text(i) for i in items} for u, items in held.items()}
    assert {name for name, _ in examples} == set(FAMILIES)  # every family was trained and spied on
    for name, ex in examples:
        user = by_token[ex["user"]]
        shown = ex["history"].split() + [ex["target"]] if "target" in ex else ex["history"].split()
        if ex.get("answer") == "yes":
            shown.append(ex["item"])  # the positive item of a yes/no example is a real next item
        assert not held_text[user] & set(shown), (name, user, ex)

    # (3) The rendered batches the LM trains on: one (prompt, target) per example, no item-code
    # target and no "yes" prompt that names a held-out item of the prompt's user.
    assert sum(len(inputs) for inputs, _ in batches) == len(examples)
    for inputs, targets in batches:
        for src, tgt in zip(inputs, targets):
            words = src.split()
            (user,) = {by_token[w] for w in words if w in by_token}
            assert tgt.strip() not in held_text[user], (src, tgt)
            if tgt.strip() == "yes":
                assert not held_text[user] & set(words), (src, tgt)
